//! What a node tells the others at each heartbeat: who is connected to it.

use serde::{Deserialize, Serialize};

use crate::model::{CaregiverKind, UsState};
use crate::protocol::PresenceStatus;

/// A caregiver online on a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceRecord {
    pub subject: String,
    pub name: String,
    pub kind: CaregiverKind,
    pub states: Vec<UsState>,
    pub status: PresenceStatus,
    /// Live visits the provider holds.
    pub live: u32,
}

/// One node's entry in the registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub node: String,
    /// Draining nodes take no new work; their clients are moving elsewhere.
    pub draining: bool,
    pub caregivers: Vec<PresenceRecord>,
    /// Visits whose patient has a socket open on the node.
    pub patients: Vec<String>,
}
