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
use crate::protocol::{ServerMessage, encode_server};

pub struct Outbound {
    metrics: Arc<Metrics>,
    queue: VecDeque<Message>,
    /// The last sequenced frames, kept for a client that resumes after losing its socket.
    window: VecDeque<(u64, Message)>,
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
    /// Cluster mode: every sequenced frame is journaled in live state too.
    pub journal: Option<SessionJournal>,
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
            self.remember(seq, &msg);
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
        self.queue.clear();
        let first_held = self.window.front().map_or(self.seq + 1, |(seq, _)| *seq);
        if last_seq > self.seq || last_seq + 1 < first_held {
            return false;
        }
        self.queue.extend(self.window.iter().filter(|(seq, _)| *seq > last_seq).map(|(_, m)| m.clone()));
        true
    }

    fn remember(&mut self, seq: u64, msg: &Message) {
        let len = match msg {
            Message::Text(t) => t.len(),
            _ => 0,
        };
        self.window.push_back((seq, msg.clone()));
        self.window_bytes += len;
        let (max_frames, max_bytes) = self.window_limits;
        while self.window.len() > max_frames || self.window_bytes > max_bytes {
            let Some((_, Message::Text(t))) = self.window.pop_front() else { break };
            self.window_bytes -= t.len();
        }
    }

    /// Queues a hub message with the next sequence number.
    pub fn push(&mut self, id: Option<&str>, msg: &ServerMessage) -> Result<(), Overflow> {
        self.seq += 1;
        let text = encode_server(self.seq, id, msg);
        if let Some(journal) = &mut self.journal {
            journal.frame(self.seq, &text);
        }
        self.metrics.messages_out.with_label_values(&[msg.kind()]).inc();
        self.metrics.outbound_queue.observe(self.queue.len() as f64);
        let msg = Message::Text(text.into());
        self.remember(self.seq, &msg);
        self.push_raw(msg)
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
                let msg = self.queue.pop_front().expect("checked non-empty");
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
