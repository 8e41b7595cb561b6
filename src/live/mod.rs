//! Live state the nodes share: each state's queue order, named locks, and the node registry
//! with every node's presence (caregivers online, patients connected). In memory for one node;
//! in Redis for a cluster, where each state's keys share one hash tag so a Redis Cluster keeps
//! a queue on one shard and its scripts stay atomic.
//!
//! The truth of a visit is the store; live state is rebuilt from it after a loss
//! ([`LiveState::is_seeded`] turns false when Redis restarted empty).

mod address_buckets;
mod journal;
mod memory;
mod records;
mod redis;

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use journal::{JournalOp, Sealed, SessionMeta};
pub use memory::MemoryLive;
pub use records::{NodeRecord, PresenceRecord};
pub use redis::RedisLive;

use crate::hub::queues::QueuedVisit;
use crate::hub::{Learned, LearnedMeans};
use crate::model::UsState;

/// Held while a named lock is held; dropping it releases the lock.
pub struct LockGuard(#[allow(dead_code)] Box<dyn Send + Sync>);

impl LockGuard {
    pub fn new(inner: impl Send + Sync + 'static) -> LockGuard {
        LockGuard(Box::new(inner))
    }
}

/// Where one intake from a client counts: its address's bucket and its block's (which prefixes
/// they are is the intake limit's choice, `api::address_limit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AddressKey {
    pub address: IpAddr,
    pub block: IpAddr,
}

/// Intakes per minute each bucket holds, refilled evenly over the minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressQuota {
    pub address: NonZeroU32,
    pub block: NonZeroU32,
}

/// A queue as live state holds it: its version (bumped by every change) and its order.
pub struct QueueLoad {
    pub version: u64,
    pub entries: Vec<Arc<QueuedVisit>>,
    /// The state's means for wait estimates as the cluster learned them.
    pub learned: LearnedMeans,
}

/// How long an intake in flight counts as waiting without being pushed or withdrawn: far
/// longer than an intake takes, short enough that one lost with its node frees its place soon.
pub const INTAKE_IN_FLIGHT_MS: i64 = 30_000;

/// One change live state made to a queue, with what a node holding the queue one version
/// older needs to apply it rather than read the queue whole again: each node's copy costs a
/// change's size, not the queue's length.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueChange {
    /// The queue's new version (the one before is `version - 1`).
    pub version: u64,
    pub step: QueueStep,
    /// The state's means for wait estimates as the cluster learned them by then.
    pub learned: LearnedMeans,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum QueueStep {
    /// The visit is at `rank` (0 first) in the order; it was added there, or moved there if it
    /// was queued already.
    Pushed {
        rank: u32,
        visit: Arc<QueuedVisit>,
    },
    Removed {
        visit_id: Arc<str>,
    },
    /// Nothing in the order changed (staffing, the busy flag).
    Bumped,
}

/// A visit added to its queue.
#[derive(Debug, Clone, PartialEq)]
pub struct Pushed {
    pub change: QueueChange,
    /// Its place in line (1 first) as it was added: the visits waiting ahead of it, and the
    /// intakes still in flight that arrived before it (they take their places ahead of it
    /// when stored), read together.
    pub place: u32,
}

/// What the registry knows of the cluster at one heartbeat.
pub struct Registry {
    /// Records of nodes alive now (this one included).
    pub alive: Vec<NodeRecord>,
    /// Nodes listed in the registry whose heartbeat expired.
    pub expired: Vec<String>,
}

#[async_trait]
pub trait LiveState: Send + Sync {
    /// Whether other nodes share this state (Redis) or it is this node's alone (memory).
    fn is_shared(&self) -> bool;

    /// Takes the lock `name`, waiting at most `wait`. A holder that dies without releasing
    /// it loses it after `ttl`.
    async fn lock(&self, name: &str, ttl: Duration, wait: Duration) -> anyhow::Result<LockGuard>;

    /// Adds a visit at its place by arrival, ending its intake in flight if it had one.
    async fn queue_push(&self, state: UsState, entry: &QueuedVisit) -> anyhow::Result<Pushed>;

    /// Removes a visit; `None` when it was not queued.
    async fn queue_remove(&self, state: UsState, visit_id: &str) -> anyhow::Result<Option<QueueChange>>;

    /// Marks a change that is not in the order (staffing, busy flag) with a new version.
    async fn queue_bump(&self, state: UsState) -> anyhow::Result<QueueChange>;

    /// Visits waiting plus intakes in flight (reserved in the last [`INTAKE_IN_FLIGHT_MS`]
    /// before `now_ms`): what one more intake is checked against.
    async fn queue_len(&self, state: UsState, now_ms: i64) -> anyhow::Result<u32>;

    /// Counts an intake checked under the state's intake lock as waiting while its visit is
    /// stored after the lock is let go, so intakes of one state share commits yet the cap
    /// holds. `at_ms` is the visit's arrival (its place in line); [`LiveState::queue_push`]
    /// or [`LiveState::intake_withdraw`] ends it, and a node that dies between loses it after
    /// [`INTAKE_IN_FLIGHT_MS`].
    async fn intake_reserve(&self, state: UsState, visit_id: &str, at_ms: i64) -> anyhow::Result<()>;

    /// Ends an intake in flight that was refused after its reservation (the store failed).
    async fn intake_withdraw(&self, state: UsState, visit_id: &str) -> anyhow::Result<()>;

    async fn queue_load(&self, state: UsState) -> anyhow::Result<QueueLoad>;

    /// Learns one observation (a visit's duration, a pick-up delay) into the state's mean,
    /// shared by every node (an exponentially weighted mean with weight `alpha`, from `prior`
    /// before the first): whichever node saw it, every node's wait estimates follow. Returns
    /// the new mean. Nodes read the means with the queue ([`QueueLoad::learned`]).
    async fn learn(&self, state: UsState, what: Learned, secs: f64, alpha: f64, prior: f64) -> anyhow::Result<f64>;

    /// When `state` admitted visits while busy, in the hour up to `now_ms` (milliseconds of
    /// the hub's clock), oldest first. Shared by every node, so a busy state's reduced rate
    /// holds for the whole cluster, not per node. Read under the state's intake lock.
    async fn busy_admissions(&self, state: UsState, now_ms: i64) -> anyhow::Result<Vec<i64>>;

    /// Notes an admission at `at_ms` while busy, keeping the `keep` latest.
    async fn busy_admit(&self, state: UsState, at_ms: i64, keep: u32) -> anyhow::Result<()>;

    /// Forgets the admissions: the state just turned busy, and its rate counts from now.
    async fn busy_clear(&self, state: UsState) -> anyhow::Result<()>;

    /// Takes one intake from a client's address bucket, then from its block's. `Some(wait)`
    /// when either is empty: how long until it holds one again (an intake the block refused
    /// still spent its address's). One bucket per address and per block for every node
    /// sharing this state.
    async fn address_take(&self, key: AddressKey, quota: AddressQuota) -> anyhow::Result<Option<Duration>>;

    /// False when the live state was never built or was lost (Redis restarted empty).
    async fn is_seeded(&self) -> anyhow::Result<bool>;

    /// Marks the live state built from the store.
    async fn mark_seeded(&self) -> anyhow::Result<()>;

    /// Publishes this node's record, alive for `ttl`.
    async fn heartbeat(&self, record: &NodeRecord, ttl: Duration) -> anyhow::Result<()>;

    /// The nodes alive now, and those whose heartbeat expired.
    async fn registry(&self) -> anyhow::Result<Registry>;

    /// Takes `node` out of the registry; true for the one caller that did (it cleans up).
    async fn leave(&self, node: &str) -> anyhow::Result<bool>;

    /// Visits whose patient's node went away, for a survivor to watch for abandonment.
    async fn push_orphans(&self, visit_ids: &[String]) -> anyhow::Result<()>;

    async fn pop_orphans(&self, max: usize) -> anyhow::Result<Vec<String>>;

    /// Whether `node`'s heartbeat is current.
    async fn node_alive(&self, node: &str) -> anyhow::Result<bool>;

    /// Applies journal writes, in order.
    async fn journal_write(&self, ops: &[JournalOp]) -> anyhow::Result<()>;

    async fn journal_meta(&self, session_id: &str) -> anyhow::Result<Option<SessionMeta>>;

    /// The session's journal once its owner sealed it for the take-over `token`, waiting at
    /// most `wait`; `None` when it was not sealed in time.
    async fn journal_sealed(&self, session_id: &str, token: &str, wait: Duration) -> anyhow::Result<Option<Sealed>>;
}
