//! Open sockets per user, capped, and in total.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use dashmap::DashMap;

#[derive(Default)]
pub struct Connections {
    /// Keyed by the subject's one shared copy, which each guard (and its session) holds too.
    per_user: Arc<DashMap<Arc<str>, u32>>,
    total: Arc<AtomicUsize>,
}

/// Holds one connection slot; released on drop.
pub struct ConnectionGuard {
    subject: Arc<str>,
    per_user: Arc<DashMap<Arc<str>, u32>>,
    total: Arc<AtomicUsize>,
}

impl Connections {
    /// A slot for `subject`, or `None` when they already hold `max`.
    pub fn acquire(&self, subject: &str, max: u32) -> Option<ConnectionGuard> {
        let mut count = self.per_user.entry(subject.into()).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        let subject = count.key().clone();
        drop(count);
        self.total.fetch_add(1, Ordering::Relaxed);
        Some(ConnectionGuard { subject, per_user: self.per_user.clone(), total: self.total.clone() })
    }

    pub fn open(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }
}

impl ConnectionGuard {
    /// Whose slot it is: the same allocation for all of a user's connections.
    pub fn subject(&self) -> &Arc<str> {
        &self.subject
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.total.fetch_sub(1, Ordering::Relaxed);
        self.per_user.remove_if_mut(&self.subject, |_, count| {
            *count -= 1;
            *count == 0
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_user_and_releases_on_drop() {
        let c = Connections::default();
        let a = c.acquire("u", 2).unwrap();
        let _b = c.acquire("u", 2).unwrap();
        assert!(c.acquire("u", 2).is_none());
        assert!(c.acquire("v", 2).is_some());
        drop(a);
        assert!(c.acquire("u", 2).is_some());
        assert_eq!(c.open(), 1);
    }

    #[test]
    fn a_users_slots_share_one_copy_of_the_subject() {
        let c = Connections::default();
        let a = c.acquire("u", 2).unwrap();
        let b = c.acquire("u", 2).unwrap();
        assert_eq!(&**a.subject(), "u");
        assert!(Arc::ptr_eq(a.subject(), b.subject()));
        drop((a, b));
        assert!(c.per_user.is_empty(), "the last slot released removes the user");
    }
}
