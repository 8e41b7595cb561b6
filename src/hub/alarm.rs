//! What ends a session from outside its own loop: its inbox overflowed, or the node is shutting
//! down. The session's loop checks its alarm on every turn, so checking costs two atomic
//! operations; a `CancellationToken` per cause took a mutex on each poll (the shutdown token's
//! one mutex shared by every session of the node) and held a waiter for each.

use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;

/// Causes, as bits: several can be raised at once.
pub const OVERFLOW: u8 = 1;
pub const SHUTDOWN: u8 = 2;

#[derive(Default)]
pub struct Alarm {
    raised: AtomicU8,
    waker: AtomicWaker,
}

impl Alarm {
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

    pub fn is_raised(&self, cause: u8) -> bool {
        self.raised.load(Ordering::Acquire) & cause != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use std::sync::Arc;

    #[tokio::test]
    async fn a_raise_wakes_the_waiting_session_with_only_the_causes_it_watches() {
        let alarm = Arc::new(Alarm::default());
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
}
