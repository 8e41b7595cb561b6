//! What reaches a session from outside its own loop: the bus events the router hands it, and
//! what ends it (its inbox overflowed, or the node is shutting down). One allocation and one
//! waker per session: a channel for the events (flume's, with its waiting hook) was another
//! 288 bytes for every idle session. Checking costs an atomic load, and taking an event an
//! uncontended lock; a `CancellationToken` per cause took a mutex on each poll (the shutdown
//! token's one mutex shared by every session of the node) and held a waiter for each.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;

use crate::bus::BusEvent;

/// Causes, as bits: several can be raised at once.
pub const OVERFLOW: u8 = 1;
pub const SHUTDOWN: u8 = 2;
/// A new socket is waiting for the session (it resumes); cleared as the session takes it.
pub const RESUME: u8 = 4;

pub struct Alarm {
    raised: AtomicU8,
    waker: AtomicWaker,
    /// Events not taken yet. Allocated from the first and released when drained: most
    /// sessions idle with none.
    inbox: Mutex<VecDeque<Arc<BusEvent>>>,
    /// The most events held before the session counts as slow.
    capacity: usize,
}

impl Alarm {
    pub fn new(inbox_capacity: usize) -> Alarm {
        Alarm {
            raised: AtomicU8::new(0),
            waker: AtomicWaker::new(),
            inbox: Mutex::new(VecDeque::new()),
            capacity: inbox_capacity,
        }
    }

    /// Raises `cause` and wakes the session.
    pub fn raise(&self, cause: u8) {
        self.raised.fetch_or(cause, Ordering::Release);
        self.waker.wake();
    }

    /// Ready with the raised causes among `watched`; pending (and woken by [`Alarm::raise`])
    /// while there are none.
    pub fn poll_raised(&self, cx: &mut Context<'_>, watched: u8) -> Poll<u8> {
        let raised = self.raised.load(Ordering::Acquire) & watched;
        if raised != 0 {
            return Poll::Ready(raised);
        }
        self.waker.register(cx.waker());
        // Raised between the first look and the registration: that wake went to no one.
        match self.raised.load(Ordering::Acquire) & watched {
            0 => Poll::Pending,
            raised => Poll::Ready(raised),
        }
    }

    /// Lowers `cause`: the session has dealt with it (a cause it may see again).
    pub fn clear(&self, cause: u8) {
        self.raised.fetch_and(!cause, Ordering::AcqRel);
    }

    pub fn is_raised(&self, cause: u8) -> bool {
        self.raised.load(Ordering::Acquire) & cause != 0
    }

    /// Hands the session `event` without waiting. A session whose inbox is full is slow: the
    /// event is dropped and [`OVERFLOW`] raised, which closes it.
    pub fn deliver(&self, event: &Arc<BusEvent>) {
        let mut inbox = self.inbox();
        if inbox.len() >= self.capacity {
            drop(inbox);
            self.raise(OVERFLOW);
            return;
        }
        inbox.push_back(event.clone());
        drop(inbox);
        self.waker.wake();
    }

    /// Ready with the oldest event not taken yet; pending (and woken by [`Alarm::deliver`])
    /// while there is none.
    pub fn poll_event(&self, cx: &mut Context<'_>) -> Poll<Arc<BusEvent>> {
        if let Some(event) = self.try_event() {
            return Poll::Ready(event);
        }
        self.waker.register(cx.waker());
        // Delivered between the first look and the registration: that wake went to no one.
        match self.try_event() {
            Some(event) => Poll::Ready(event),
            None => Poll::Pending,
        }
    }

    /// The oldest event not taken yet, if any, without waiting.
    pub fn try_event(&self) -> Option<Arc<BusEvent>> {
        let mut inbox = self.inbox();
        let event = inbox.pop_front();
        if inbox.is_empty() && inbox.capacity() > 0 {
            *inbox = VecDeque::new();
        }
        event
    }

    /// The lock is held only to push or pop: a panic cannot leave the queue half-changed.
    fn inbox(&self) -> MutexGuard<'_, VecDeque<Arc<BusEvent>>> {
        self.inbox.lock().unwrap_or_else(PoisonError::into_inner)
    }

    #[cfg(test)]
    pub fn inbox_capacity(&self) -> usize {
        self.inbox().capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;

    fn event() -> Arc<BusEvent> {
        Arc::new(BusEvent::AccessChanged { subject: "x".into() })
    }

    #[tokio::test]
    async fn a_raise_wakes_the_waiting_session_with_only_the_causes_it_watches() {
        let alarm = Arc::new(Alarm::new(4));
        alarm.raise(SHUTDOWN);
        let waiting = tokio::spawn({
            let alarm = alarm.clone();
            // Shutdown already raised but not watched (a drained session): only overflow ends it.
            async move { poll_fn(|cx| alarm.poll_raised(cx, OVERFLOW)).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        alarm.raise(OVERFLOW);
        assert_eq!(waiting.await.unwrap(), OVERFLOW);
        assert!(alarm.is_raised(SHUTDOWN) && alarm.is_raised(OVERFLOW));
    }

    #[tokio::test]
    async fn a_cleared_cause_waits_for_its_next_raise() {
        let alarm = Arc::new(Alarm::new(4));
        alarm.raise(RESUME);
        assert_eq!(poll_fn(|cx| alarm.poll_raised(cx, RESUME | OVERFLOW)).await, RESUME);
        alarm.clear(RESUME);
        let waiting = tokio::spawn({
            let alarm = alarm.clone();
            async move { poll_fn(|cx| alarm.poll_raised(cx, RESUME)).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        alarm.raise(RESUME);
        assert_eq!(waiting.await.unwrap(), RESUME);
    }

    #[tokio::test]
    async fn a_delivery_wakes_the_waiting_session_and_events_come_out_in_order() {
        let alarm = Arc::new(Alarm::new(4));
        let waiting = tokio::spawn({
            let alarm = alarm.clone();
            async move {
                let first = poll_fn(|cx| alarm.poll_event(cx)).await;
                let second = poll_fn(|cx| alarm.poll_event(cx)).await;
                (first, second)
            }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        let (a, b) = (event(), event());
        alarm.deliver(&a);
        alarm.deliver(&b);
        let (first, second) = waiting.await.unwrap();
        assert!(Arc::ptr_eq(&first, &a) && Arc::ptr_eq(&second, &b));
        assert_eq!(alarm.inbox_capacity(), 0, "a drained inbox gives its storage back");
        assert!(!alarm.is_raised(OVERFLOW));
    }

    #[test]
    fn a_full_inbox_drops_the_event_and_raises_overflow() {
        let alarm = Alarm::new(2);
        for _ in 0..2 {
            alarm.deliver(&event());
        }
        assert!(!alarm.is_raised(OVERFLOW));
        alarm.deliver(&event());
        assert!(alarm.is_raised(OVERFLOW));
        assert_eq!(alarm.inbox().len(), 2);
    }
}
