//! Who is in a visit's conversation besides its patient. Every chat message and join checks
//! it, and every participant list is built from it, so a node that is the only writer (no
//! shared live state) keeps the members of the conversations it opened in memory: a visit it
//! took in starts with none, and every later join or leave passes through here. Visits it
//! did not take in (stored before a restart) and every visit in a cluster, where other nodes
//! change members too, are read from the store.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use dashmap::DashMap;
use tokio::sync::Mutex;

use super::Hub;
use crate::error::{HubError, HubResult};
use crate::model::{AuditEntry, VisitId};
use crate::protocol::Participant;

/// Members with the time they joined, in the store's order (joined, then subject).
type Roster = Vec<(i64, Participant)>;

#[derive(Default)]
pub(super) struct Members {
    /// `None` in a cluster. A roster's lock is held across the store write that changes it,
    /// so the roster changes in the order the store did.
    rosters: Option<DashMap<VisitId, Arc<Mutex<Roster>>>>,
}

impl Members {
    pub(super) fn local() -> Members {
        Members { rosters: Some(DashMap::new()) }
    }

    /// A conversation this node just opened (a visit taken in): nobody in it yet.
    pub(super) fn opened(&self, visit_id: &str) {
        if let Some(rosters) = &self.rosters {
            rosters.insert(visit_id.to_string(), Arc::default());
        }
    }

    /// The visit is over: its members are read from the store from now on.
    pub(super) fn closed(&self, visit_id: &str) {
        if let Some(rosters) = &self.rosters {
            rosters.remove(visit_id);
        }
    }

    fn roster(&self, visit_id: &str) -> Option<Arc<Mutex<Roster>>> {
        self.rosters.as_ref()?.get(visit_id).map(|r| r.clone())
    }
}

fn admit(roster: &mut Roster, joined_ms: i64, member: &Participant) {
    let at = roster.partition_point(|(ms, p)| (*ms, p.subject.as_str()) < (joined_ms, member.subject.as_str()));
    roster.insert(at, (joined_ms, member.clone()));
}

impl Hub {
    /// The caregivers in a visit's conversation, in the order they joined.
    pub(super) async fn conversation_members(&self, visit_id: &str) -> HubResult<Vec<Participant>> {
        if let Some(roster) = self.members.roster(visit_id) {
            return Ok(roster.lock().await.iter().map(|(_, p)| p.clone()).collect());
        }
        self.store.conversation_members(visit_id).await.map_err(HubError::internal)
    }

    /// Adds a member; false when they were in already. With `record`, the audit record of the
    /// request goes in the same commit when the member is new; the second flag says whether it
    /// did.
    pub(super) async fn join_conversation(
        &self,
        visit_id: &str,
        member: &Participant,
        at: DateTime<Utc>,
        record: Option<&AuditEntry>,
    ) -> HubResult<(bool, bool)> {
        let roster = self.members.roster(visit_id);
        let mut roster = match &roster {
            Some(roster) => Some(roster.lock().await),
            None => None,
        };
        let joined = match record {
            Some(record) => self.store.join_conversation_recorded(visit_id, member, at, record).await,
            None => self.store.join_conversation(visit_id, member, at).await.map(|joined| (joined, false)),
        }
        .map_err(HubError::internal)?;
        if let (Some(roster), (true, _)) = (roster.as_mut(), joined) {
            admit(roster, crate::store::to_millis(at), member);
        }
        Ok(joined)
    }

    /// Takes a member out; false when they were not in.
    pub(super) async fn leave_conversation(&self, visit_id: &str, subject: &str) -> HubResult<bool> {
        let Some(roster) = self.members.roster(visit_id) else {
            return self.store.leave_conversation(visit_id, subject).await.map_err(HubError::internal);
        };
        let mut roster = roster.lock().await;
        let left = self.store.leave_conversation(visit_id, subject).await.map_err(HubError::internal)?;
        roster.retain(|(_, p)| p.subject != subject);
        Ok(left)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Role;

    fn member(subject: &str) -> Participant {
        Participant { subject: subject.into(), name: subject.into(), role: Role::Support }
    }

    #[test]
    fn a_roster_keeps_the_stores_order() {
        let mut roster = Roster::new();
        admit(&mut roster, 20, &member("b"));
        admit(&mut roster, 10, &member("z"));
        admit(&mut roster, 20, &member("a"));
        let order: Vec<&str> = roster.iter().map(|(_, p)| p.subject.as_str()).collect();
        assert_eq!(order, ["z", "a", "b"]);
    }

    #[test]
    fn only_conversations_opened_here_are_kept() {
        let members = Members::local();
        members.opened("v1");
        assert!(members.roster("v1").is_some());
        assert!(members.roster("v2").is_none(), "not opened here: read from the store");
        members.closed("v1");
        assert!(members.roster("v1").is_none());
        let cluster = Members::default();
        cluster.opened("v1");
        assert!(cluster.roster("v1").is_none());
    }
}
