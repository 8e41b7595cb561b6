//! Open sockets per user, capped, and in total.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use dashmap::DashMap;

#[derive(Default)]
pub struct Connections {
    per_user: Arc<DashMap<String, u32>>,
    total: Arc<AtomicUsize>,
}

/// Holds one connection slot; released on drop.
pub struct ConnectionGuard {
    subject: String,
    per_user: Arc<DashMap<String, u32>>,
    total: Arc<AtomicUsize>,
}

impl Connections {
    /// A slot for `subject`, or `None` when they already hold `max`.
    pub fn acquire(&self, subject: &str, max: u32) -> Option<ConnectionGuard> {
        let mut count = self.per_user.entry(subject.to_string()).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        drop(count);
        self.total.fetch_add(1, Ordering::Relaxed);
        Some(ConnectionGuard {
            subject: subject.to_string(),
            per_user: self.per_user.clone(),
            total: self.total.clone(),
        })
    }

    pub fn open(&self) -> usize {
        self.total.load(Ordering::Relaxed)
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
}
