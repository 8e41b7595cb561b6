//! What travels on the bus. Events are small notifications: a node that needs the full queue
//! reads it from live state, so a queue of thousands is never copied into every message.

use serde::{Deserialize, Serialize};

use crate::model::{UsState, VisitId};
use crate::protocol::{
    ChatMessage, ChatParticipants, Participant, PresenceUpdated, ReadEvent, SignalCandidate, SignalEnd, SignalSdp,
    TypingEvent, VisitUpdated,
};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BusEvent {
    /// The queue of `state` changed; `version` orders the changes.
    QueueChanged {
        state: UsState,
        version: u64,
    },
    /// A visit moved through its lifecycle.
    VisitUpdated(VisitUpdated),
    /// The user's access changed (deactivated, states changed): their sessions must reconnect.
    AccessChanged {
        subject: String,
    },
    /// The video part of a visit started: each side works out its role and ICE servers.
    VisitStarted {
        visit_id: VisitId,
        patient: Participant,
        provider: Participant,
    },
    /// Signaling from one participant, for the other.
    Signal {
        from_subject: String,
        signal: Signal,
        /// When the hub received it (epoch microseconds), for relay latency.
        received_at_us: i64,
    },
    ChatMessage(ChatMessage),
    Typing(TypingEvent),
    Read(ReadEvent),
    Participants(ChatParticipants),
    /// Providers' presence changed (for caregivers covering their states), a batch at a time.
    Presence(PresenceUpdated),
    /// A conversation was handed to this subject: their sessions join it.
    ConversationAssigned {
        visit_id: VisitId,
    },
    /// A state's settings changed: every node reads them again.
    SettingsChanged {
        state: UsState,
    },
    /// Never on the wire: this node's bus missed events, so each local session starts over.
    Resync,
    /// A node takes session `session_id` over. Everything a node received on the bus before
    /// this marker is the old owner's to send; everything after, the taker's. Pub/sub hands
    /// every subscriber the same order, so the two agree on the cut.
    Handover {
        session_id: String,
        /// Names the taker's attempt, so it knows its own marker.
        token: String,
    },
}

impl BusEvent {
    /// The user whose own sessions have no use for this event (it came from them).
    pub fn sender(&self) -> Option<&str> {
        match self {
            BusEvent::Signal { from_subject, .. } => Some(from_subject),
            BusEvent::Typing(t) => Some(&t.from.subject),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Signal {
    Offer(SignalSdp),
    Answer(SignalSdp),
    Candidate(SignalCandidate),
    EndOfCandidates(SignalEnd),
}
