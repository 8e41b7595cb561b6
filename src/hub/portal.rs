//! The caregiver portal in one call: the queues of the states a caregiver covers, their
//! conversations with unread counts, and providers' presence. After it, only deltas are pushed.

use serde::Serialize;

use std::sync::Arc;

use super::{Hub, QueueView};
use crate::auth::Principal;
use crate::error::{HubError, HubResult};
use crate::model::{Role, UsState, VisitId, VisitStatus};
use crate::protocol::{ProviderPresence, QueueSnapshot};

#[derive(Debug, Clone, Serialize)]
pub struct ConversationView {
    pub visit_id: VisitId,
    pub state: UsState,
    pub status: VisitStatus,
    pub patient_name: String,
    pub last_seq: u64,
    pub unread: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PortalSnapshot {
    pub states: Vec<UsState>,
    pub queues: Vec<QueueSnapshot>,
    pub conversations: Vec<ConversationView>,
    pub providers: Vec<ProviderPresence>,
}

impl Hub {
    /// The states a caregiver sees: their own, or all for an admin.
    pub fn covered_states(&self, who: &Principal) -> Vec<UsState> {
        match who.role {
            Role::Admin => UsState::all().collect(),
            _ => who.states.clone(),
        }
    }

    /// The portal built from `views`, the queue views the caller will send deltas against.
    pub async fn portal(&self, who: &Principal, views: &[Arc<QueueView>]) -> HubResult<PortalSnapshot> {
        who.require_role(&[Role::Provider, Role::Support, Role::Admin])?;
        let states = self.covered_states(who);
        let queues = views.iter().map(|v| v.snapshot()).collect();
        let conversations = self
            .store
            .conversations_of(&who.subject)
            .await
            .map_err(HubError::internal)?
            .into_iter()
            .map(|c| ConversationView {
                unread: c.last_seq.saturating_sub(c.read_seq),
                visit_id: c.visit_id,
                state: c.state,
                status: c.status,
                patient_name: c.patient_name,
                last_seq: c.last_seq,
            })
            .collect();
        Ok(PortalSnapshot { providers: self.presence.providers(&states), states, queues, conversations })
    }
}
