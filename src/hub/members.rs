//! Who is in a visit's conversation besides its patient, and which conversations each
//! caregiver is in. Every chat message and join checks them, and every participant list is
//! built from them, so a node that is the only writer (no shared live state) keeps them in
//! memory: the conversations of visits not over are loaded once at start, a visit it takes in
//! starts with none, and every later join or leave passes through here. In a cluster, where
//! other nodes change members too, they are read from the store.

use std::collections::HashSet;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use dashmap::DashMap;
use tokio::sync::Mutex;

use super::Hub;
use crate::error::{HubError, HubResult};
use crate::model::{AuditEntry, VisitId};
use crate::protocol::Participant;
use crate::store::{OpenConversation, to_millis};

/// A conversation's members with the time they joined, in the store's order (joined, then
/// subject). `closed` once the visit is over: the roster has left the map, and a change that
/// waited for its lock then finds it closed and leaves memory alone.
#[derive(Default)]
struct Roster {
    members: Vec<(i64, Participant)>,
    closed: bool,
}

#[derive(Default)]
pub(super) struct Members {
    /// `None` in a cluster. A roster's lock is held across the store write that changes it,
    /// so the roster changes in the order the store did.
    rosters: Option<DashMap<VisitId, Arc<Mutex<Roster>>>>,
    /// The conversations of visits not over each caregiver is in (single node).
    open: DashMap<String, HashSet<VisitId>>,
}

impl Members {
    /// Memory from the conversations of the visits not over (what the store holds at start).
    pub(super) fn local(conversations: Vec<OpenConversation>) -> Members {
        let members = Members { rosters: Some(DashMap::new()), open: DashMap::new() };
        let rosters = members.rosters.as_ref().expect("local");
        for (visit_id, member) in conversations {
            let roster = rosters.entry(visit_id.clone()).or_default();
            if let Some((joined, member)) = member {
                members.open.entry(member.subject.clone()).or_default().insert(visit_id);
                admit(&mut roster.try_lock().expect("nobody else holds it yet"), to_millis(joined), &member);
            }
        }
        members
    }

    /// A conversation this node just opened (a visit taken in): nobody in it yet.
    pub(super) fn opened(&self, visit_id: &str) {
        if let Some(rosters) = &self.rosters {
            rosters.insert(visit_id.to_string(), Arc::default());
        }
    }

    /// The visit is over: its conversation counts for nobody, and its members are read from
    /// the store from now on.
    pub(super) async fn closed(&self, visit_id: &str) {
        let Some((_, roster)) = self.rosters.as_ref().and_then(|r| r.remove(visit_id)) else { return };
        let mut roster = roster.lock().await;
        roster.closed = true;
        for (_, member) in &roster.members {
            self.left(&member.subject, visit_id);
        }
    }

    fn roster(&self, visit_id: &str) -> Option<Arc<Mutex<Roster>>> {
        self.rosters.as_ref()?.get(visit_id).map(|r| r.clone())
    }

    fn left(&self, subject: &str, visit_id: &str) {
        self.open.remove_if_mut(subject, |_, visits| {
            visits.remove(visit_id);
            visits.is_empty()
        });
    }

    /// How many conversations of visits not over `subject` is in, and whether `visit_id` is
    /// one of them; `None` in a cluster.
    fn open_of(&self, subject: &str, visit_id: &str) -> Option<(u32, bool)> {
        self.rosters.as_ref()?;
        Some(self.open.get(subject).map_or((0, false), |v| (v.len() as u32, v.contains(visit_id))))
    }
}

fn admit(roster: &mut Roster, joined_ms: i64, member: &Participant) {
    let key = (joined_ms, member.subject.as_str());
    let at = roster.members.partition_point(|(ms, p)| (*ms, p.subject.as_str()) < key);
    roster.members.insert(at, (joined_ms, member.clone()));
}

impl Hub {
    /// The caregivers in a visit's conversation, in the order they joined.
    pub(super) async fn conversation_members(&self, visit_id: &str) -> HubResult<Vec<Participant>> {
        if let Some(roster) = self.members.roster(visit_id) {
            let roster = roster.lock().await;
            if !roster.closed {
                return Ok(roster.members.iter().map(|(_, p)| p.clone()).collect());
            }
        }
        self.store.conversation_members(visit_id).await.map_err(HubError::internal)
    }

    /// How many conversations of visits not over `subject` is in, and whether `visit_id` is
    /// one of them.
    pub(super) async fn open_conversations(&self, subject: &str, visit_id: &str) -> HubResult<(u32, bool)> {
        if let Some(open) = self.members.open_of(subject, visit_id) {
            return Ok(open);
        }
        let open = self.store.open_conversation_ids(subject).await.map_err(HubError::internal)?;
        Ok((open.len() as u32, open.iter().any(|id| id == visit_id)))
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
        self.joining(visit_id, member, at, async {
            match record {
                Some(record) => self.store.join_conversation_recorded(visit_id, member, at, record).await,
                None => self.store.join_conversation(visit_id, member, at).await.map(|joined| (joined, false)),
            }
            .map_err(HubError::internal)
        })
        .await
    }

    /// Adds a member through `write`, a store write that says whether they were new (and
    /// whatever else it stored), holding the roster's lock across it so the roster changes in
    /// the order the store did.
    pub(super) async fn joining<T>(
        &self,
        visit_id: &str,
        member: &Participant,
        at: DateTime<Utc>,
        write: impl Future<Output = HubResult<(bool, T)>>,
    ) -> HubResult<(bool, T)> {
        let roster = self.members.roster(visit_id);
        let mut roster = match &roster {
            Some(roster) => Some(roster.lock().await),
            None => None,
        };
        let (joined, rest) = write.await?;
        if let (Some(roster), true) = (roster.as_mut(), joined)
            && !roster.closed
        {
            admit(roster, to_millis(at), member);
            self.members.open.entry(member.subject.clone()).or_default().insert(visit_id.to_string());
        }
        Ok((joined, rest))
    }

    /// Takes a member out; false when they were not in.
    pub(super) async fn leave_conversation(&self, visit_id: &str, subject: &str) -> HubResult<bool> {
        let Some(roster) = self.members.roster(visit_id) else {
            return self.store.leave_conversation(visit_id, subject).await.map_err(HubError::internal);
        };
        let mut roster = roster.lock().await;
        let left = self.store.leave_conversation(visit_id, subject).await.map_err(HubError::internal)?;
        if !roster.closed {
            roster.members.retain(|(_, p)| p.subject != subject);
            self.members.left(subject, visit_id);
        }
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

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(ms).unwrap()
    }

    #[test]
    fn a_roster_keeps_the_stores_order() {
        let mut roster = Roster::default();
        admit(&mut roster, 20, &member("b"));
        admit(&mut roster, 10, &member("z"));
        admit(&mut roster, 20, &member("a"));
        let order: Vec<&str> = roster.members.iter().map(|(_, p)| p.subject.as_str()).collect();
        assert_eq!(order, ["z", "a", "b"]);
    }

    #[tokio::test]
    async fn conversations_count_from_the_start_and_stop_counting_when_over() {
        let members = Members::local(vec![
            ("v1".into(), Some((at(20), member("sup-a")))),
            ("v1".into(), Some((at(10), member("sup-b")))),
            ("v2".into(), Some((at(30), member("sup-a")))),
            ("v3".into(), None),
        ]);
        assert_eq!(members.open_of("sup-a", "v2"), Some((2, true)));
        assert_eq!(members.open_of("sup-b", "v2"), Some((1, false)));
        assert_eq!(members.open_of("sup-c", "v1"), Some((0, false)));
        let v1 = members.roster("v1").unwrap();
        let order: Vec<String> = v1.lock().await.members.iter().map(|(_, p)| p.subject.clone()).collect();
        assert_eq!(order, ["sup-b", "sup-a"]);
        assert!(members.roster("v3").is_some(), "a visit not over without members is known too");
        assert!(members.roster("v9").is_none());

        members.closed("v1").await;
        assert!(members.roster("v1").is_none() && v1.lock().await.closed);
        assert_eq!(members.open_of("sup-a", "v1"), Some((1, false)));
        assert_eq!(members.open_of("sup-b", "v1"), Some((0, false)));
        assert!(!members.open.contains_key("sup-b"), "an empty entry is dropped");
    }

    #[test]
    fn a_cluster_node_keeps_nothing() {
        let cluster = Members::default();
        cluster.opened("v1");
        assert!(cluster.roster("v1").is_none());
        assert_eq!(cluster.open_of("sup-a", "v1"), None);
    }
}
