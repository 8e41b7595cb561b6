//! Messages a client sends. Every one is a request: it carries an `id` and is answered by
//! exactly one `ack` or `error` with that id.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::messages;
use crate::model::{Role, UsState, VisitId, VisitStatus};

messages! {
    /// A client-to-hub message.
    pub enum ClientMessage {
        "ping" => Ping(Ping),
        "queue.subscribe" => QueueSubscribe(StateRef),
        "queue.unsubscribe" => QueueUnsubscribe(StateRef),
        "presence.set" => PresenceSet(PresenceSet),
        "state.set_busy" => StateSetBusy(StateSetBusy),
        "session.refresh" => SessionRefresh(SessionRefresh),
        "visit.claim" => VisitClaim(VisitRef),
        "visit.transition" => VisitTransition(VisitTransition),
        "visit.still_here" => VisitStillHere(VisitRef),
        "visit.location" => VisitLocation(VisitLocation),
        "visit.move" => VisitMove(VisitLocation),
        "signal.offer" => SignalOffer(SignalSdp),
        "signal.answer" => SignalAnswer(SignalSdp),
        "signal.candidate" => SignalCandidate(SignalCandidate),
        "signal.end_of_candidates" => SignalEndOfCandidates(SignalEnd),
        "chat.join" => ChatJoin(VisitRef),
        "chat.leave" => ChatLeave(VisitRef),
        "chat.send" => ChatSend(ChatSend),
        "chat.history" => ChatHistory(ChatHistory),
        "chat.typing" => ChatTyping(ChatTyping),
        "chat.read" => ChatRead(ChatRead),
        "chat.handoff" => ChatHandoff(ChatHandoff),
        "portal.snapshot" => PortalSnapshot(Ping),
    }
}

impl ClientMessage {
    /// The visit a request touches, if any (for authorization records).
    pub fn visit_id(&self) -> Option<&str> {
        match self {
            ClientMessage::VisitClaim(r)
            | ClientMessage::VisitStillHere(r)
            | ClientMessage::ChatJoin(r)
            | ClientMessage::ChatLeave(r) => Some(&r.visit_id),
            ClientMessage::VisitTransition(t) => Some(&t.visit_id),
            ClientMessage::VisitLocation(l) | ClientMessage::VisitMove(l) => Some(&l.visit_id),
            ClientMessage::SignalOffer(s) | ClientMessage::SignalAnswer(s) => Some(&s.visit_id),
            ClientMessage::SignalCandidate(c) => Some(&c.visit_id),
            ClientMessage::SignalEndOfCandidates(e) => Some(&e.visit_id),
            ClientMessage::ChatSend(m) => Some(&m.visit_id),
            ClientMessage::ChatHistory(h) => Some(&h.visit_id),
            ClientMessage::ChatTyping(t) => Some(&t.visit_id),
            ClientMessage::ChatRead(r) => Some(&r.visit_id),
            ClientMessage::ChatHandoff(h) => Some(&h.visit_id),
            ClientMessage::Ping(_)
            | ClientMessage::QueueSubscribe(_)
            | ClientMessage::QueueUnsubscribe(_)
            | ClientMessage::PresenceSet(_)
            | ClientMessage::StateSetBusy(_)
            | ClientMessage::SessionRefresh(_)
            | ClientMessage::PortalSnapshot(_) => None,
        }
    }

    /// The state a request touches, if any.
    pub fn state(&self) -> Option<UsState> {
        match self {
            ClientMessage::QueueSubscribe(r) | ClientMessage::QueueUnsubscribe(r) => Some(r.state),
            ClientMessage::StateSetBusy(b) => Some(b.state),
            ClientMessage::VisitLocation(l) | ClientMessage::VisitMove(l) => Some(l.state),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VisitRef {
    pub visit_id: VisitId,
}

/// A lifecycle step other than claiming: `waiting` (a provider releases a claim), `in_visit`,
/// `wrap_up`, `ended`, `cancelled`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VisitTransition {
    pub visit_id: VisitId,
    pub to: VisitStatus,
}

/// The state a patient says they are in now (`visit.location`), or the state support moves
/// the visit to (`visit.move`), which must be the patient's latest answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VisitLocation {
    pub visit_id: VisitId,
    pub state: UsState,
}

/// An SDP offer or answer. `from` is set by the hub on relay, ignored from clients.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignalSdp {
    pub visit_id: VisitId,
    pub sdp: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ice_restart: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Role>,
}

impl fmt::Debug for SignalSdp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // SDP carries addresses and fingerprints: never into a log.
        f.debug_struct("SignalSdp").field("visit_id", &self.visit_id).field("sdp_bytes", &self.sdp.len()).finish()
    }
}

/// One trickled ICE candidate (the `candidate:` attribute value of RFC 8839).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignalCandidate {
    pub visit_id: VisitId,
    pub candidate: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdp_mid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdp_m_line_index: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username_fragment: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Role>,
}

impl fmt::Debug for SignalCandidate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignalCandidate").field("visit_id", &self.visit_id).finish_non_exhaustive()
    }
}

/// No more candidates for this ICE generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignalEnd {
    pub visit_id: VisitId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Role>,
}

/// A chat message; `client_id` is chosen by the sender so a retry is stored once.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatSend {
    pub visit_id: VisitId,
    pub client_id: String,
    pub body: String,
}

impl fmt::Debug for ChatSend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatSend")
            .field("visit_id", &self.visit_id)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

/// A page of history: messages with `seq < before_seq` (newest page when absent), oldest
/// first, at most `limit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatHistory {
    pub visit_id: VisitId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before_seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatTyping {
    pub visit_id: VisitId,
    pub typing: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatRead {
    pub visit_id: VisitId,
    pub up_to_seq: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatHandoff {
    pub visit_id: VisitId,
    pub to_subject: String,
}

/// Application-level liveness check (browsers cannot send WebSocket pings).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ping {}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateRef {
    pub state: UsState,
}

/// A caregiver's availability. Online is implied by the open socket; a provider in a visit is
/// shown as such by the hub, not by the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceStatus {
    Available,
    Away,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceSet {
    pub status: PresenceStatus,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateSetBusy {
    pub state: UsState,
    pub busy: bool,
}

/// A fresh token for the same subject and role, so an open socket outlives its first token.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRefresh {
    pub token: String,
}

impl fmt::Debug for SessionRefresh {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Tokens never reach a log line.
        f.debug_struct("SessionRefresh").field("token", &"<redacted>").finish()
    }
}
