//! Live state of a single node: plain memory, nothing shared.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use dashmap::DashMap;

use super::address_buckets::AddressBuckets;
use super::{
    AddressKey, AddressQuota, INTAKE_IN_FLIGHT_MS, JournalOp, LiveState, LockGuard, NodeRecord, Pushed, QueueChange,
    QueueLoad, QueueStep, Registry, Sealed, SessionMeta,
};
use crate::hub::queues::QueuedVisit;
use crate::hub::{Learned, LearnedMeans};
use crate::model::UsState;

#[derive(Default)]
struct StateQueue {
    entries: Vec<Arc<QueuedVisit>>,
    version: u64,
    /// Admissions while busy (ms), oldest first.
    busy: VecDeque<i64>,
    learned: LearnedMeans,
    /// Intakes in flight: (arrival ms, visit id), in the order they were reserved.
    in_flight: Vec<(i64, String)>,
}

impl StateQueue {
    /// Ends `visit_id`'s intake in flight; how many in flight arrived before it (none if it had
    /// none).
    fn land(&mut self, visit_id: &str) -> u32 {
        let Some(i) = self.in_flight.iter().position(|(_, id)| id == visit_id) else { return 0 };
        let (at_ms, id) = self.in_flight.remove(i);
        self.in_flight.iter().filter(|(t, other)| (*t, other.as_str()) < (at_ms, id.as_str())).count() as u32
    }

    /// The next version, for a change just made.
    fn change(&mut self, step: QueueStep) -> QueueChange {
        self.version += 1;
        QueueChange { version: self.version, step, learned: self.learned }
    }
}

const HOUR_MS: i64 = 3_600_000;

type Locks = Arc<DashMap<String, Arc<tokio::sync::Mutex<()>>>>;

/// A held lock; the last holder takes the lock's entry away, so names (a visit's chat, a
/// provider's claims) do not pile up.
struct MemoryLock {
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
    name: String,
    locks: Locks,
}

impl Drop for MemoryLock {
    fn drop(&mut self) {
        drop(self.guard.take());
        // Only the map's own handle left: nobody holds or waits for it.
        self.locks.remove_if(&self.name, |_, mutex| Arc::strong_count(mutex) == 1);
    }
}

#[derive(Default)]
pub struct MemoryLive {
    queues: DashMap<UsState, Mutex<StateQueue>>,
    locks: Locks,
    record: Mutex<Option<NodeRecord>>,
    orphans: Mutex<VecDeque<String>>,
    seeded: AtomicBool,
    addresses: AddressBuckets,
}

impl MemoryLive {
    pub fn new() -> MemoryLive {
        MemoryLive::default()
    }

    fn with_queue<T>(&self, state: UsState, f: impl FnOnce(&mut StateQueue) -> T) -> T {
        let queue = self.queues.entry(state).or_default();
        let mut q = queue.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut q)
    }
}

#[async_trait]
impl LiveState for MemoryLive {
    fn is_shared(&self) -> bool {
        false
    }

    async fn lock(&self, name: &str, _ttl: Duration, wait: Duration) -> anyhow::Result<LockGuard> {
        let mutex = self.locks.entry(name.to_string()).or_default().clone();
        let guard = tokio::time::timeout(wait, mutex.lock_owned())
            .await
            .map_err(|_| anyhow::anyhow!("lock {name} not free within {wait:?}"))?;
        Ok(LockGuard::new(MemoryLock { guard: Some(guard), name: name.to_string(), locks: self.locks.clone() }))
    }

    async fn queue_push(&self, state: UsState, entry: &QueuedVisit) -> anyhow::Result<Pushed> {
        Ok(self.with_queue(state, |q| {
            let visit = Arc::new(entry.clone());
            let ahead = match q.entries.iter().position(|e| e.visit_id == entry.visit_id) {
                Some(at) => at,
                None => {
                    let key = (entry.enqueued_at, &*entry.visit_id);
                    let at = q.entries.partition_point(|e| (e.enqueued_at, &*e.visit_id) < key);
                    q.entries.insert(at, visit.clone());
                    at
                }
            };
            let place = ahead as u32 + q.land(&entry.visit_id) + 1;
            Pushed { change: q.change(QueueStep::Pushed { rank: ahead as u32, visit }), place }
        }))
    }

    async fn intake_reserve(&self, state: UsState, visit_id: &str, at_ms: i64) -> anyhow::Result<()> {
        self.with_queue(state, |q| q.in_flight.push((at_ms, visit_id.to_string())));
        Ok(())
    }

    async fn intake_withdraw(&self, state: UsState, visit_id: &str) -> anyhow::Result<()> {
        self.with_queue(state, |q| q.land(visit_id));
        Ok(())
    }

    async fn queue_remove(&self, state: UsState, visit_id: &str) -> anyhow::Result<Option<QueueChange>> {
        Ok(self.with_queue(state, |q| {
            let at = q.entries.iter().position(|e| &*e.visit_id == visit_id)?;
            let removed = q.entries.remove(at);
            Some(q.change(QueueStep::Removed { visit_id: removed.visit_id.clone() }))
        }))
    }

    async fn learn(&self, state: UsState, what: Learned, secs: f64, alpha: f64, prior: f64) -> anyhow::Result<f64> {
        Ok(self.with_queue(state, |q| {
            let mean = q.learned.get(what).unwrap_or(prior);
            let learned = mean + alpha * (secs - mean);
            q.learned.set(what, learned);
            learned
        }))
    }

    async fn busy_admissions(&self, state: UsState, now_ms: i64) -> anyhow::Result<Vec<i64>> {
        Ok(self.with_queue(state, |q| {
            q.busy.retain(|t| *t > now_ms - HOUR_MS);
            q.busy.iter().copied().collect()
        }))
    }

    async fn busy_admit(&self, state: UsState, at_ms: i64, keep: u32) -> anyhow::Result<()> {
        self.with_queue(state, |q| {
            q.busy.push_back(at_ms);
            while q.busy.len() > keep as usize {
                q.busy.pop_front();
            }
        });
        Ok(())
    }

    async fn busy_clear(&self, state: UsState) -> anyhow::Result<()> {
        self.with_queue(state, |q| q.busy.clear());
        Ok(())
    }

    async fn queue_bump(&self, state: UsState) -> anyhow::Result<QueueChange> {
        Ok(self.with_queue(state, |q| q.change(QueueStep::Bumped)))
    }

    async fn queue_len(&self, state: UsState, now_ms: i64) -> anyhow::Result<u32> {
        Ok(self.with_queue(state, |q| {
            q.in_flight.retain(|(at_ms, _)| *at_ms > now_ms - INTAKE_IN_FLIGHT_MS);
            (q.entries.len() + q.in_flight.len()) as u32
        }))
    }

    async fn queue_load(&self, state: UsState) -> anyhow::Result<QueueLoad> {
        Ok(self.with_queue(state, |q| QueueLoad { version: q.version, entries: q.entries.clone(), learned: q.learned }))
    }

    async fn address_take(&self, key: AddressKey, quota: AddressQuota) -> anyhow::Result<Option<Duration>> {
        Ok(self.addresses.take(key, quota))
    }

    async fn is_seeded(&self) -> anyhow::Result<bool> {
        Ok(self.seeded.load(Ordering::Acquire))
    }

    async fn mark_seeded(&self) -> anyhow::Result<()> {
        self.seeded.store(true, Ordering::Release);
        Ok(())
    }

    async fn heartbeat(&self, record: &NodeRecord, _ttl: Duration) -> anyhow::Result<()> {
        *self.record.lock().unwrap_or_else(|e| e.into_inner()) = Some(record.clone());
        Ok(())
    }

    async fn registry(&self) -> anyhow::Result<Registry> {
        let alive = self.record.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect();
        Ok(Registry { alive, expired: Vec::new() })
    }

    async fn leave(&self, _node: &str) -> anyhow::Result<bool> {
        Ok(self.record.lock().unwrap_or_else(|e| e.into_inner()).take().is_some())
    }

    async fn push_orphans(&self, visit_ids: &[String]) -> anyhow::Result<()> {
        self.orphans.lock().unwrap_or_else(|e| e.into_inner()).extend(visit_ids.iter().cloned());
        Ok(())
    }

    async fn pop_orphans(&self, max: usize) -> anyhow::Result<Vec<String>> {
        let mut orphans = self.orphans.lock().unwrap_or_else(|e| e.into_inner());
        let n = max.min(orphans.len());
        Ok(orphans.drain(..n).collect())
    }

    async fn node_alive(&self, _node: &str) -> anyhow::Result<bool> {
        Ok(true)
    }

    // One node: a session is resumed where it lives, from its in-memory window; journals are
    // for clusters.
    async fn journal_write(&self, _ops: &[JournalOp]) -> anyhow::Result<()> {
        Ok(())
    }

    async fn journal_meta(&self, _session_id: &str) -> anyhow::Result<Option<SessionMeta>> {
        Ok(None)
    }

    async fn journal_sealed(&self, _session_id: &str, _token: &str, _wait: Duration) -> anyhow::Result<Option<Sealed>> {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_lock_is_exclusive_and_leaves_nothing_behind() {
        let live = MemoryLive::new();
        let wait = Duration::from_millis(50);
        let held = live.lock("chat:v1", Duration::from_secs(1), wait).await.unwrap();
        assert!(live.lock("chat:v1", Duration::from_secs(1), wait).await.is_err(), "held elsewhere");
        assert!(live.lock("chat:v2", Duration::from_secs(1), wait).await.is_ok(), "another name is free");
        drop(held);
        let again = live.lock("chat:v1", Duration::from_secs(1), wait).await.unwrap();
        drop(again);
        assert!(live.locks.is_empty(), "released locks are forgotten");
    }
}
