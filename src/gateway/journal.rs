//! Cluster mode: every session keeps a journal in live state (its frames and what it listens
//! to), so that a node it has never seen can take it over when its client reconnects there.
//! Writes go through one batching writer per node and never hold a session up: a session
//! whose write does not fit in the writer's queue marks its journal broken, and a take-over
//! then answers `recovered: false` instead of replaying with a hole.

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::bus::Topic;
use crate::live::{JournalOp, LiveState, SessionMeta};
use crate::model::UsState;

/// Journal writes waiting for the writer, for all sessions of the node.
const WRITER_QUEUE: usize = 64 * 1024;
/// Writes sent to live state in one round.
const BATCH: usize = 512;

#[derive(Clone)]
pub struct JournalWriter {
    tx: mpsc::Sender<JournalOp>,
}

impl JournalWriter {
    pub fn start(live: Arc<dyn LiveState>) -> JournalWriter {
        let (tx, rx) = mpsc::channel(WRITER_QUEUE);
        tokio::spawn(write_loop(live, rx));
        JournalWriter { tx }
    }

    pub fn for_session(&self, session_id: &str, max_frames: usize, ttl_secs: u64) -> SessionJournal {
        SessionJournal {
            tx: self.tx.clone(),
            session_id: session_id.to_string(),
            broken: false,
            max_frames,
            ttl_secs,
            written_meta: (Vec::new(), Vec::new()),
        }
    }
}

async fn write_loop(live: Arc<dyn LiveState>, mut rx: mpsc::Receiver<JournalOp>) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        if let Err(e) = live.journal_write(&batch).await {
            // Frames missing from a journal show as a gap when it is read: no partial replay.
            tracing::warn!(error = %e, ops = batch.len(), "session journal writes lost");
        }
        batch.clear();
    }
}

/// One session's side of the journal.
pub struct SessionJournal {
    tx: mpsc::Sender<JournalOp>,
    session_id: String,
    broken: bool,
    max_frames: usize,
    ttl_secs: u64,
    /// What the meta last said (topics, boards), to write it again only on change. Kept here,
    /// not in the session: only journaled sessions need it.
    pub written_meta: (Vec<Topic>, Vec<UsState>),
}

impl SessionJournal {
    fn send(&mut self, op: JournalOp) {
        if self.tx.try_send(op).is_err() {
            self.broken = true;
        }
    }

    pub fn frame(&mut self, seq: u64, text: &str) {
        let op = JournalOp::Frame {
            session_id: self.session_id.clone(),
            seq,
            text: text.to_string(),
            max_frames: self.max_frames,
            ttl_secs: self.ttl_secs,
        };
        self.send(op);
    }

    pub fn meta(&mut self, meta: SessionMeta) {
        let op = JournalOp::Meta { session_id: self.session_id.clone(), meta, ttl_secs: self.ttl_secs };
        self.send(op);
    }

    /// This node stops sending for the session after `seq`.
    pub fn seal(&mut self, token: &str, seq: u64) {
        let op =
            JournalOp::Seal { session_id: self.session_id.clone(), token: token.to_string(), seq, broken: self.broken };
        // Sent even past a full queue: a lost seal only makes the taker wait and give up.
        let _ = self.tx.try_send(op);
    }

    /// The session is over for good.
    pub fn discard(&mut self) {
        self.send(JournalOp::Drop { session_id: self.session_id.clone() });
    }
}
