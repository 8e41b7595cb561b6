//! Messages a client sends. Every one is a request: it carries an `id` and is answered by
//! exactly one `ack` or `error` with that id.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::messages;
use crate::model::UsState;

messages! {
    /// A client-to-hub message.
    pub enum ClientMessage {
        "ping" => Ping(Ping),
        "queue.subscribe" => QueueSubscribe(StateRef),
        "queue.unsubscribe" => QueueUnsubscribe(StateRef),
        "presence.set" => PresenceSet(PresenceSet),
        "state.set_busy" => StateSetBusy(StateSetBusy),
        "session.refresh" => SessionRefresh(SessionRefresh),
    }
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
        f.debug_struct("SessionRefresh")
            .field("token", &"<redacted>")
            .finish()
    }
}
