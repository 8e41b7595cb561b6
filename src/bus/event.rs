//! What travels on the bus. Events are small notifications: a node that needs the full queue
//! reads it from live state, so a queue of thousands is never copied into every message.

use serde::{Deserialize, Serialize};

use crate::model::UsState;
use crate::protocol::VisitUpdated;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BusEvent {
    /// The queue of `state` changed; `version` orders the changes.
    QueueChanged { state: UsState, version: u64 },
    /// A visit moved through its lifecycle.
    VisitUpdated(VisitUpdated),
    /// The user's access changed (deactivated, states changed): their sessions must reconnect.
    AccessChanged { subject: String },
}
