//! A session's outbound frames: stamped with the session's sequence number, queued (bounded),
//! and written by a cancel-safe flush that the session's `select!` loop can abandon at any
//! point without losing or repeating a frame.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::Arc;
use std::task::Poll;

use axum::extract::ws::{Message, WebSocket};
use futures_util::stream::SplitSink;
use futures_util::{Sink, SinkExt};

use super::journal::SessionJournal;
use crate::metrics::Metrics;
use crate::protocol::{ServerMessage, SharedFrame, encode_server};

pub struct Outbound {
    metrics: Arc<Metrics>,
    /// Allocated from the first frame and released whenever it empties: most sockets idle
    /// with nothing queued, and an empty `VecDeque` holds no memory.
    queue: VecDeque<Message>,
    /// The last sequenced frames, kept for a client that resumes after losing its socket.
    /// The `welcome` is not among them (see [`Outbound::push`]), so a session that has sent
    /// nothing else holds no window at all.
    window: VecDeque<Kept>,
    window_bytes: usize,
    window_limits: (usize, usize),
    capacity: usize,
    seq: u64,
    /// Frames handed to the socket so far; a change means the client is reading.
    written: u64,
    /// Frames handed to the socket that it has not flushed yet: the socket buffers them and
    /// writes on flush, so a flush that could not finish must be tried again even with
    /// nothing left in the queue.
    unflushed: bool,
    /// Cluster mode: every sequenced frame is journaled in live state too. Boxed: a single
    /// node's sessions carry only the empty pointer, not the journal's ~100 bytes each.
    pub journal: Option<Box<SessionJournal>>,
}

/// A frame kept for a resume, with its sequence number and its size as sent.
struct Kept {
    seq: u64,
    len: usize,
    frame: KeptFrame,
}

enum KeptFrame {
    Own(Message),
    /// An event encoded once for many sessions (a presence batch goes to every caregiver of a
    /// state): kept once for all of them and numbered again on replay, instead of a copy in
    /// every session's window.
    Shared(Arc<SharedFrame>),
}

impl Kept {
    fn message(&self) -> Message {
        match &self.frame {
            KeptFrame::Own(m) => m.clone(),
            KeptFrame::Shared(f) => Message::Text(f.with_seq(self.seq).into()),
        }
    }
}

/// A frame's size as the window counts it (sequenced frames are text).
fn text_len(msg: &Message) -> usize {
    match msg {
        Message::Text(t) => t.len(),
        _ => 0,
    }
}

/// The queue would pass its capacity: the client is not keeping up.
#[derive(Debug)]
pub struct Overflow;

impl Outbound {
    /// `window` is the most frames, and bytes, kept for resumption.
    pub fn new(capacity: usize, window: (usize, usize), metrics: Arc<Metrics>) -> Outbound {
        Outbound {
            metrics,
            queue: VecDeque::new(),
            window: VecDeque::new(),
            window_bytes: 0,
            window_limits: window,
            capacity,
            seq: 0,
            written: 0,
            unflushed: false,
            journal: None,
        }
    }

    /// Takes over a session whose frames went up to `last_seq` on another node: queues the
    /// ones its client missed (already journaled there) and numbers on from `last_seq`.
    pub fn adopt(&mut self, last_seq: u64, missed: Vec<(u64, String)>) {
        self.seq = last_seq;
        for (seq, text) in missed {
            let msg = Message::Text(text.into());
            self.remember(seq, text_len(&msg), KeptFrame::Own(msg.clone()));
            self.queue.push_back(msg);
        }
    }

    /// The sequence number of the last frame queued.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// A new socket picks up after `last_seq`: the frames after it are queued again (and
    /// anything queued for the old socket dropped). False when some of them are no longer
    /// held: nothing is replayed then.
    pub fn replay_after(&mut self, last_seq: u64) -> bool {
        self.queue = VecDeque::new();
        let first_held = self.window.front().map_or(self.seq + 1, |kept| kept.seq);
        if last_seq > self.seq || last_seq + 1 < first_held {
            return false;
        }
        self.queue.extend(self.window.iter().filter(|kept| kept.seq > last_seq).map(Kept::message));
        true
    }

    /// Keeps frame `seq` of `len` bytes, dropping the oldest past the window's limits. The
    /// limits count every frame's bytes as sent, shared or not.
    fn remember(&mut self, seq: u64, len: usize, frame: KeptFrame) {
        self.window.push_back(Kept { seq, len, frame });
        self.window_bytes += len;
        let (max_frames, max_bytes) = self.window_limits;
        while self.window.len() > max_frames || self.window_bytes > max_bytes {
            let Some(oldest) = self.window.pop_front() else { break };
            self.window_bytes -= oldest.len;
        }
    }

    /// Queues a hub message with the next sequence number.
    ///
    /// The `welcome` is numbered but not kept for replay: a client learns the session id only
    /// from it, so one that resumes has processed it (its `last_seq` is at least the
    /// welcome's), and keeping it would cost every idle session its text. A resume asking for
    /// it (`last_seq` 0) is answered `recovered: false`, as for any frame no longer held.
    pub fn push(&mut self, id: Option<&str>, msg: &ServerMessage) -> Result<(), Overflow> {
        self.seq += 1;
        let frame = self.numbered(msg.index(), encode_server(self.seq, id, msg));
        if !matches!(msg, ServerMessage::Welcome(_)) {
            self.remember(self.seq, text_len(&frame), KeptFrame::Own(frame.clone()));
        }
        self.push_raw(frame)
    }

    /// Queues an event encoded once for many sessions, numbered for this one: the same frame
    /// [`Outbound::push`] makes of its message, without serializing it again, and kept for a
    /// resume as the shared frame rather than a copy.
    pub fn push_shared(&mut self, shared: &Arc<SharedFrame>) -> Result<(), Overflow> {
        self.seq += 1;
        let frame = self.numbered(shared.index(), shared.with_seq(self.seq));
        self.remember(self.seq, text_len(&frame), KeptFrame::Shared(shared.clone()));
        self.push_raw(frame)
    }

    /// Frame `self.seq`, journaled and counted.
    fn numbered(&mut self, index: usize, text: String) -> Message {
        if let Some(journal) = &mut self.journal {
            journal.frame(self.seq, &text);
        }
        self.metrics.messages_out.inc(index);
        self.metrics.outbound_queue.observe(self.queue.len() as f64);
        Message::Text(text.into())
    }

    /// Queues a control frame (ping, close), which carries no sequence number.
    pub fn push_raw(&mut self, msg: Message) -> Result<(), Overflow> {
        if self.queue.len() >= self.capacity {
            return Err(Overflow);
        }
        self.queue.push_back(msg);
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Whether there is anything to write: queued frames, or frames the socket holds unflushed.
    pub fn needs_flush(&self) -> bool {
        !self.queue.is_empty() || self.unflushed
    }

    /// Whether there is room to take on more work (read requests, take events).
    pub fn has_room(&self) -> bool {
        self.queue.len() < self.capacity / 2
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    /// The next frame to write; the queue's storage goes with its last frame.
    fn take_next(&mut self) -> Option<Message> {
        let msg = self.queue.pop_front();
        if self.queue.is_empty() {
            self.queue = VecDeque::new();
        }
        msg
    }

    /// Writes queued frames until the queue is empty and the socket flushed. A frame leaves
    /// the queue only once the socket has taken it, so dropping this future mid-way loses
    /// nothing and sends nothing twice.
    /// Without a socket (detached) it never completes.
    pub async fn flush(&mut self, sink: &mut Option<SplitSink<WebSocket, Message>>) -> Result<(), axum::Error> {
        let Some(sink) = sink else { return std::future::pending().await };
        poll_fn(|cx| {
            while !self.queue.is_empty() {
                match sink.poll_ready_unpin(cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                }
                let msg = self.take_next().expect("checked non-empty");
                Sink::start_send(std::pin::Pin::new(&mut *sink), msg)?;
                self.written += 1;
                self.unflushed = true;
            }
            let flushed = sink.poll_flush_unpin(cx);
            if let Poll::Ready(Ok(())) = flushed {
                self.unflushed = false;
            }
            flushed
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{PROTOCOL_VERSION, SessionLimits, Welcome};

    fn outbound() -> Outbound {
        let metrics = Arc::new(Metrics::new("test"));
        Outbound::new(16, (8, 64 * 1024), metrics)
    }

    fn welcome() -> ServerMessage {
        ServerMessage::Welcome(Welcome {
            protocol: PROTOCOL_VERSION,
            session_id: "s".into(),
            role: crate::model::Role::Admin,
            subject: "a".into(),
            states: Vec::new(),
            visit_id: None,
            limits: SessionLimits {
                max_message_bytes: 1024,
                messages_per_second: 10,
                ping_interval_ms: 20_000,
                token_expires_at: 0,
            },
            recovered: None,
        })
    }

    fn ack() -> ServerMessage {
        ServerMessage::Ack(serde_json::json!({}))
    }

    fn drain(out: &mut Outbound) -> usize {
        std::iter::from_fn(|| out.take_next()).count()
    }

    #[test]
    fn an_idle_session_holds_no_queue_or_window_storage_once_its_welcome_is_written() {
        let mut out = outbound();
        out.push(None, &welcome()).unwrap();
        assert_eq!(out.window.capacity(), 0, "the welcome is not kept for replay");
        assert_eq!(drain(&mut out), 1);
        assert_eq!(out.queue.capacity(), 0, "a drained queue gives its storage back");
        out.push(None, &ack()).unwrap();
        out.push(None, &ack()).unwrap();
        assert_eq!(drain(&mut out), 2);
        assert_eq!(out.queue.capacity(), 0);
    }

    #[test]
    fn a_resume_after_the_welcome_replays_the_rest_gap_free() {
        let mut out = outbound();
        out.push(None, &welcome()).unwrap();
        drain(&mut out);
        assert!(out.replay_after(1), "nothing sent since the welcome: nothing missing");
        assert!(out.is_empty());
        for _ in 0..3 {
            out.push(None, &ack()).unwrap();
        }
        drain(&mut out);
        assert!(out.replay_after(2));
        let seqs: Vec<u64> = std::iter::from_fn(|| out.take_next())
            .map(|m| match m {
                Message::Text(t) => serde_json::from_str::<serde_json::Value>(&t).unwrap()["seq"].as_u64().unwrap(),
                other => panic!("unexpected frame {other:?}"),
            })
            .collect();
        assert_eq!(seqs, [3, 4]);
    }

    #[test]
    fn a_shared_frame_is_numbered_counted_and_kept_like_its_message() {
        let error = ServerMessage::Error(crate::protocol::ErrorBody {
            code: "rate_limited".into(),
            message: "slow down".into(),
            retry_after_secs: None,
        });
        let mut pushed = outbound();
        let mut shared = outbound();
        for out in [&mut pushed, &mut shared] {
            out.push(None, &welcome()).unwrap();
            out.push(None, &ack()).unwrap();
        }
        pushed.push(None, &error).unwrap();
        let frame = Arc::new(SharedFrame::new(&error));
        shared.push_shared(&frame).unwrap();
        assert_eq!(Arc::strong_count(&frame), 2, "kept as the shared frame, not a copy");
        let texts = |out: &mut Outbound| -> Vec<Message> { std::iter::from_fn(|| out.take_next()).collect() };
        assert_eq!(texts(&mut shared), texts(&mut pushed));
        assert_eq!(shared.seq(), 3);
        // Kept for a resume, as the pushed frame is.
        assert!(shared.replay_after(2));
        assert!(pushed.replay_after(2));
        assert_eq!(texts(&mut shared), texts(&mut pushed));
        assert_eq!(shared.len(), 0);
        // Gone from the window with the frames after it: the window holds 8 at most.
        for _ in 0..8 {
            shared.push(None, &ack()).unwrap();
        }
        assert_eq!(Arc::strong_count(&frame), 1);
        assert!(!shared.replay_after(2), "frame 3 is no longer held");
    }

    #[test]
    fn a_resume_that_never_saw_the_welcome_is_not_recovered() {
        let mut out = outbound();
        out.push(None, &welcome()).unwrap();
        out.push(None, &ack()).unwrap();
        assert!(!out.replay_after(0));
        assert!(out.is_empty(), "nothing is replayed when something is missing");
    }
}
