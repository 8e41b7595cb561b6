//! What travels on the bus. A queue's event carries its one change, never the queue: a node
//! whose copy missed a change reads the queue from live state, so a queue of thousands is
//! never copied into every message.

use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};

use crate::live::QueueChange;
use crate::model::{UsState, VisitId};
use crate::protocol::{
    ChatMessage, ChatParticipants, Participant, PresenceUpdated, ReadEvent, ServerMessage, SharedFrame,
    SignalCandidate, SignalEnd, SignalSdp, TypingEvent, VisitUpdated,
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BusEvent {
    /// The queue of `state` changed: the change itself, ordered by its version.
    QueueChanged {
        state: UsState,
        change: QueueChange,
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
    Presence(PresenceBatch),
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

/// A presence batch, with its `presence.updated` frame encoded once for every session on this
/// node that passes it on whole: a batch goes to every caregiver of its state, and
/// serializing (and first copying) it per session was most of what a batch cost. The
/// sessions' replay windows keep that one frame too. On the bus it is the batch alone; the
/// frame is not carried.
#[derive(Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PresenceBatch {
    pub updated: PresenceUpdated,
    #[serde(skip)]
    frame: OnceLock<Arc<SharedFrame>>,
}

impl PresenceBatch {
    pub fn new(updated: PresenceUpdated) -> PresenceBatch {
        PresenceBatch { updated, frame: OnceLock::new() }
    }

    /// The batch's frame, encoded by the first session that asks.
    pub fn frame(&self) -> &Arc<SharedFrame> {
        self.frame.get_or_init(|| Arc::new(SharedFrame::new(&ServerMessage::PresenceUpdated(self.updated.clone()))))
    }
}

/// The batch is what it says; whether its frame was encoded yet is no part of it.
impl PartialEq for PresenceBatch {
    fn eq(&self, other: &Self) -> bool {
        self.updated == other.updated
    }
}

impl Eq for PresenceBatch {}

impl std::fmt::Debug for PresenceBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.updated.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ProviderPresence, ProviderStatus};

    fn batch() -> PresenceUpdated {
        PresenceUpdated {
            providers: vec![ProviderPresence {
                subject: "dr-1".into(),
                name: "Dr. One".into(),
                status: ProviderStatus::InVisit,
                states: vec![UsState::parse("WA").unwrap()],
            }],
        }
    }

    #[test]
    fn a_presence_batch_travels_as_the_batch_alone() {
        let event = BusEvent::Presence(PresenceBatch::new(batch()));
        // Encoded once here: the frame stays on this node.
        let _ = match &event {
            BusEvent::Presence(b) => b.frame(),
            _ => unreachable!(),
        };
        let json = serde_json::to_value(&event).unwrap();
        let mut expected = serde_json::to_value(batch()).unwrap();
        expected["kind"] = "presence".into();
        assert_eq!(json, expected);
        let back: BusEvent = serde_json::from_value(json).unwrap();
        assert_eq!(back, event);
    }

    #[test]
    fn a_presence_batchs_shared_frame_is_its_own_encoding() {
        let shared = PresenceBatch::new(batch());
        let msg = ServerMessage::PresenceUpdated(batch());
        assert_eq!(shared.frame().with_seq(42), crate::protocol::encode_server(42, None, &msg));
        assert_eq!(shared.frame().index(), msg.index());
    }
}
