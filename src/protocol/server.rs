//! Messages the hub sends. Each carries a per-session `seq`; replies also carry the request id.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::messages;
use super::{SignalCandidate, SignalEnd, SignalSdp};
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
        "visit.started" => VisitStarted(VisitStarted),
        "visit.still_there" => VisitStillThere(VisitStillThere),
        "signal.offer" => SignalOffer(SignalSdp),
        "signal.answer" => SignalAnswer(SignalSdp),
        "signal.candidate" => SignalCandidate(SignalCandidate),
        "signal.end_of_candidates" => SignalEndOfCandidates(SignalEnd),
        "chat.message" => ChatMessage(ChatMessage),
        "chat.typing" => ChatTyping(TypingEvent),
        "chat.read" => ChatRead(ReadEvent),
        "chat.participants" => ChatParticipants(ChatParticipants),
        "presence.updated" => PresenceUpdated(PresenceUpdated),
        "session.resumed" => SessionResumed(SessionResumed),
    }
}

/// Sent to each side when the video part of a visit starts (and again on request after a
/// reconnect): its perfect-negotiation role and ICE servers with fresh TURN credentials.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VisitStarted {
    pub visit_id: VisitId,
    /// The polite side yields when offers collide (the patient; the provider is impolite).
    pub polite: bool,
    pub peer: Participant,
    pub ice_servers: Vec<IceServer>,
    /// When the TURN credentials stop working (epoch seconds).
    pub ice_servers_expire_at: i64,
}

/// One entry of `RTCConfiguration.iceServers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceServer {
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// "Still there?": answer with `visit.still_here` within the time or the visit is abandoned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VisitStillThere {
    pub visit_id: VisitId,
    pub respond_within_secs: u64,
}

/// Someone in a conversation, as the others see them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Participant {
    pub subject: String,
    pub name: String,
    pub role: Role,
}

/// A stored chat message. `seq` orders the conversation, from 1.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub visit_id: VisitId,
    pub seq: u64,
    pub message_id: String,
    pub client_id: String,
    pub from: Participant,
    pub body: String,
    pub sent_at: DateTime<Utc>,
}

impl std::fmt::Debug for ChatMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Message bodies never reach a log.
        f.debug_struct("ChatMessage").field("visit_id", &self.visit_id).field("seq", &self.seq).finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypingEvent {
    pub visit_id: VisitId,
    pub from: Participant,
    pub typing: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadEvent {
    pub visit_id: VisitId,
    pub by: Participant,
    pub up_to_seq: u64,
}

/// Who is in a conversation now: sent on joins, leaves and handoffs, so the patient always
/// sees who is talking to them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatParticipants {
    pub visit_id: VisitId,
    pub participants: Vec<Participant>,
}

/// Providers whose presence changed, each once with their newest presence, by subject.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceUpdated {
    pub providers: Vec<ProviderPresence>,
}

/// A provider's presence, for caregivers covering the provider's states.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderPresence {
    pub subject: String,
    pub name: String,
    pub status: ProviderStatus,
    pub states: Vec<UsState>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderStatus {
    Available,
    Away,
    InVisit,
    Offline,
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
    /// `false` when the client asked to resume a session the hub no longer holds: this is a
    /// new session, and the client reloads its state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovered: Option<bool>,
}

/// Sent on a resumed session after the frames the client missed (if `recovered`), or alone
/// when they could not all be replayed (then the client reloads its state).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionResumed {
    pub session_id: String,
    pub recovered: bool,
    /// Frames replayed before this one.
    pub replayed: u64,
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
    /// Set when the visit moved to another state's queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<UsState>,
    /// Set when the patient said they are in another state now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported_state: Option<UsState>,
}
