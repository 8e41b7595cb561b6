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

use crate::metrics::Metrics;
use crate::protocol::{ServerMessage, encode_server};

pub struct Outbound {
    metrics: Arc<Metrics>,
    queue: VecDeque<Message>,
    capacity: usize,
    seq: u64,
    /// Frames handed to the socket so far; a change means the client is reading.
    written: u64,
}

/// The queue would pass its capacity: the client is not keeping up.
#[derive(Debug)]
pub struct Overflow;

impl Outbound {
    pub fn new(capacity: usize, metrics: Arc<Metrics>) -> Outbound {
        Outbound { metrics, queue: VecDeque::new(), capacity, seq: 0, written: 0 }
    }

    /// Queues a hub message with the next sequence number.
    pub fn push(&mut self, id: Option<&str>, msg: &ServerMessage) -> Result<(), Overflow> {
        self.seq += 1;
        let text = encode_server(self.seq, id, msg);
        self.metrics.messages_out.with_label_values(&[msg.kind()]).inc();
        self.metrics.outbound_queue.observe(self.queue.len() as f64);
        self.push_raw(Message::Text(text.into()))
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
    pub async fn flush(&mut self, sink: &mut SplitSink<WebSocket, Message>) -> Result<(), axum::Error> {
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
            }
            sink.poll_flush_unpin(cx)
        })
        .await
    }
}
