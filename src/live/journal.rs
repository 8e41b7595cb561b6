//! A session's journal in live state (cluster mode): the frames it sent, with their sequence
//! numbers, and what it listens to, so another node can take the session over when its
//! client reconnects there. The owner seals the journal at the hand-over point; the taker
//! replays from it what the client missed.

use serde::{Deserialize, Serialize};

use crate::model::UsState;

/// What a session listens to, for the node that takes it over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionMeta {
    pub subject: String,
    /// The node that holds the session now.
    pub node: String,
    /// Bus topics, as `Topic`'s `Display` writes them.
    pub topics: Vec<String>,
    /// Queue boards watched.
    pub boards: Vec<UsState>,
}

/// One write to journals, batched by the node's journal writer.
#[derive(Debug, Clone)]
pub enum JournalOp {
    Meta {
        session_id: String,
        meta: SessionMeta,
        ttl_secs: u64,
    },
    Frame {
        session_id: String,
        seq: u64,
        text: String,
        max_frames: usize,
        ttl_secs: u64,
    },
    /// The owner stops here, answering the take-over named `token`: `seq` is its last frame;
    /// `broken` if some frames never made it into the journal.
    Seal {
        session_id: String,
        token: String,
        seq: u64,
        broken: bool,
    },
    /// The session ended for good.
    Drop {
        session_id: String,
    },
}

/// A sealed journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub last_seq: u64,
    pub broken: bool,
    /// The frames still held, oldest first.
    pub frames: Vec<(u64, String)>,
}

impl Sealed {
    /// The frames after `last_seen`, when every one of them is held and nothing was lost.
    pub fn missed_after(&self, last_seen: u64) -> Option<Vec<String>> {
        if self.broken || last_seen > self.last_seq {
            return None;
        }
        let missed: Vec<&(u64, String)> =
            self.frames.iter().filter(|(seq, _)| *seq > last_seen && *seq <= self.last_seq).collect();
        let complete = missed.len() as u64 == self.last_seq - last_seen
            && missed.iter().enumerate().all(|(i, (seq, _))| *seq == last_seen + 1 + i as u64);
        complete.then(|| missed.into_iter().map(|(_, text)| text.clone()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed(seqs: &[u64], last_seq: u64, broken: bool) -> Sealed {
        Sealed { last_seq, broken, frames: seqs.iter().map(|s| (*s, format!("f{s}"))).collect() }
    }

    #[test]
    fn replays_exactly_what_was_missed_or_nothing() {
        let j = sealed(&[3, 4, 5, 6], 6, false);
        assert_eq!(j.missed_after(4), Some(vec!["f5".to_string(), "f6".to_string()]));
        assert_eq!(j.missed_after(6), Some(vec![]));
        assert_eq!(j.missed_after(1), None, "frame 2 is no longer held");
        assert_eq!(j.missed_after(7), None, "the client claims more than was sent");
        assert_eq!(sealed(&[3, 5, 6], 6, false).missed_after(2), None, "a hole");
        assert_eq!(sealed(&[3, 4, 5, 6], 6, true).missed_after(4), None, "broken journal");
    }
}
