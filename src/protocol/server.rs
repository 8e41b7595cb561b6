//! Messages the hub sends. Each carries a per-session `seq`; replies also carry the request id.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::messages;
use crate::hub::Staffing;
use crate::model::{Role, UsState, VisitId, VisitStatus};

messages! {
    /// A hub-to-client message.
    pub enum ServerMessage {
        "welcome" => Welcome(Welcome),
        "ack" => Ack(serde_json::Value),
        "error" => Error(ErrorBody),
        "queue.position" => QueuePosition(QueuePosition),
        "queue.snapshot" => QueueSnapshot(QueueSnapshot),
        "queue.delta" => QueueDelta(QueueDelta),
        "visit.updated" => VisitUpdated(VisitUpdated),
    }
}

/// First message on every socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    pub protocol: u32,
    pub session_id: String,
    pub role: Role,
    pub subject: String,
    /// States a caregiver covers (empty for patients and admins, who are not state-scoped).
    pub states: Vec<UsState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visit_id: Option<VisitId>,
    pub limits: SessionLimits,
}

/// Limits the hub applies to this session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionLimits {
    pub max_message_bytes: usize,
    pub messages_per_second: u32,
    pub ping_interval_ms: u64,
    pub token_expires_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_secs: Option<u64>,
}

/// A waiting patient's place in line (latest value: intermediate updates may be skipped).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuePosition {
    pub visit_id: VisitId,
    pub state: UsState,
    pub position: u32,
    pub queue_length: u32,
    pub estimated_wait_secs: u64,
}

/// One waiting visit as a caregiver covering its state sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueEntry {
    pub visit_id: VisitId,
    pub position: u32,
    pub display_name: String,
    pub reason: String,
    pub enqueued_at: DateTime<Utc>,
    pub estimated_wait_secs: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSnapshot {
    pub state: UsState,
    pub version: u64,
    pub busy: bool,
    pub staffing: Staffing,
    pub visits: Vec<QueueEntry>,
}

/// Changes since the last snapshot or delta of this state. Apply `removed`, then `added`
/// (each at its `position`); the visits' order is their position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueDelta {
    pub state: UsState,
    pub version: u64,
    pub busy: bool,
    pub staffing: Staffing,
    pub added: Vec<QueueEntry>,
    pub removed: Vec<VisitId>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VisitUpdated {
    pub visit_id: VisitId,
    pub status: VisitStatus,
    pub at: DateTime<Utc>,
}
