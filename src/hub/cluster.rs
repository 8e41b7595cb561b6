//! This node among the others: it builds the queues in live state from the store when no
//! node has (first start, or Redis lost everything), keeps its lanes in step with what other
//! nodes announce, renews its registry record with its presence, and cleans up after a node
//! that stopped beating.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::future::{join_all, try_join_all};

use super::Hub;
use super::queues::QueuedVisit;
use crate::bus::{BusEvent, PresenceBatch, Topic};
use crate::live::{NodeRecord, QueueChange};
use crate::model::{CaregiverKind, UsState, Visit, VisitStatus};
use crate::protocol::{PresenceUpdated, ProviderPresence, ProviderStatus};

/// How long a lock protecting a short critical section may outlive a holder that died.
const LOCK_TTL: Duration = Duration::from_secs(10);
/// How long a request waits for such a lock before it is refused as unavailable.
const LOCK_WAIT: Duration = Duration::from_secs(5);
/// How long a copy of a queue that missed a change waits for it before reading the queue whole.
const GAP_GRACE: Duration = Duration::from_millis(20);
/// Orphaned visits one heartbeat takes on.
const ORPHANS_PER_BEAT: usize = 100;

#[derive(Default)]
pub struct ClusterView {
    /// Visits whose patient has a socket open on another node.
    remote_patients: Mutex<HashSet<String>>,
    /// The other nodes' records at the last heartbeat, to clean up after one that dies.
    last_seen: Mutex<HashMap<String, NodeRecord>>,
    /// Visits whose patients were connected here when draining began.
    drained_patients: Mutex<Vec<String>>,
    draining: AtomicBool,
    /// The node left the registry: it beats no more.
    left: AtomicBool,
    /// Live state answered the last heartbeat (always, in memory).
    unhealthy: AtomicBool,
}

impl Hub {
    /// Listens to every queue and the cluster channel, builds live state if needed, loads
    /// every lane, and (in a cluster) starts beating.
    pub(super) async fn join_cluster(self: &Arc<Self>) -> anyhow::Result<()> {
        // Each state's subscription and queue read sent at once: one round trip for all of
        // them instead of one per state at every start.
        self.bus.subscribe(&Topic::Cluster).await?;
        try_join_all(UsState::all().map(|state| async move { self.bus.subscribe(&Topic::Queue(state)).await })).await?;
        self.ensure_seeded().await?;
        try_join_all(UsState::all().map(|state| self.sync_lane(state))).await?;
        if self.live_state.is_shared() {
            self.heartbeat().await?;
            let every = Duration::from_millis(self.options.heartbeat_ms.max(50));
            tokio::spawn(heartbeats(Arc::downgrade(self), every));
        }
        Ok(())
    }

    /// Holds the live-state lock `name` (across nodes in a cluster), or refuses with
    /// `unavailable` when it cannot be had in time.
    pub(super) async fn hold(&self, name: &str) -> crate::error::HubResult<crate::live::LockGuard> {
        self.live_state.lock(name, LOCK_TTL, LOCK_WAIT).await.map_err(crate::error::HubError::unavailable)
    }

    /// Whether live state is reachable, for readiness.
    pub fn live_state_healthy(&self) -> bool {
        !self.cluster.unhealthy.load(Ordering::Acquire)
    }

    /// Reads a state's queue from live state into this node's lane and board.
    pub(super) async fn sync_lane(&self, state: UsState) -> anyhow::Result<()> {
        let load = self.live_state.queue_load(state).await?;
        self.adopt_means(state, load.learned);
        self.queues.lane(state).store(load.version, load.entries);
        self.refresh_board(state);
        Ok(())
    }

    /// After a change this node made to a queue: its own copy and board, then every node.
    pub(super) async fn queue_changed(&self, state: UsState, change: QueueChange) {
        self.take_queue_change(state, &change);
        self.announce_queue(state, change).await;
    }

    /// Applies a change to a state's queue (this node's or another's) to the copy held here;
    /// the copy is read whole only when it missed a change.
    pub(super) fn take_queue_change(&self, state: UsState, change: &QueueChange) {
        let lane = self.queues.lane(state);
        let applied = lane.apply(change);
        if applied.newest {
            self.adopt_means(state, change.learned);
        }
        if !applied.current {
            self.schedule_reload(state);
        } else if lane.board.borrow().version < lane.version() {
            // A change already on the board (this node's own, coming back from the bus) does
            // not publish the board again.
            self.refresh_board(state);
        }
    }

    /// The newest view of a state's queue, read again first if another node changed it.
    pub(super) async fn fresh_view(&self, state: UsState) -> Arc<super::QueueView> {
        let lane = self.queues.lane(state);
        if lane.is_stale()
            && let Err(e) = self.sync_lane(state).await
        {
            tracing::warn!(state = %state, error = %e, "showing the last queue read");
        }
        self.view_now(state)
    }

    /// The copy of a state's queue missed a change: read the queue again, once for many news.
    pub(super) fn schedule_reload(&self, state: UsState) {
        let lane = self.queues.lane(state);
        if lane.reloading.swap(true, Ordering::AcqRel) {
            return;
        }
        let Some(hub) = self.me.get().and_then(Weak::upgrade) else { return };
        tokio::spawn(async move {
            // Most gaps are two nodes' announcements crossing on the bus: the one behind comes
            // within a moment and fills it, and nothing need be read.
            tokio::time::sleep(GAP_GRACE).await;
            // Bounded: an announced version that never shows up (its write was lost with
            // Redis) must not spin the reload.
            for _ in 0..3 {
                if !lane.is_stale() {
                    break;
                }
                if let Err(e) = hub.sync_lane(state).await {
                    tracing::warn!(state = %state, error = %e, "queue reload failed");
                    break;
                }
            }
            lane.reloading.store(false, Ordering::Release);
        });
    }

    /// Another node changed a state's settings: read them again.
    pub(super) fn schedule_settings_reload(&self, state: UsState) {
        let Some(hub) = self.me.get().and_then(Weak::upgrade) else { return };
        tokio::spawn(async move {
            match hub.store.state_settings().await {
                Ok(all) => {
                    for s in all.into_iter().filter(|s| s.state == state) {
                        hub.settings.insert(s.state, s);
                    }
                    hub.refresh_board(state);
                }
                Err(e) => tracing::warn!(state = %state, error = %e, "settings not reloaded"),
            }
        });
    }

    /// The bus was away: events may be missing. Read settings and queues again, and tell
    /// every session to start over (its replay window has holes).
    pub(super) fn schedule_resync(&self) {
        let Some(hub) = self.me.get().and_then(Weak::upgrade) else { return };
        tokio::spawn(async move {
            if let Ok(all) = hub.store.state_settings().await {
                for s in all {
                    hub.settings.insert(s.state, s);
                }
            }
            let synced = join_all(UsState::all().map(|state| hub.sync_lane(state))).await;
            for (state, result) in UsState::all().zip(synced) {
                if let Err(e) = result {
                    tracing::warn!(state = %state, error = %e, "queue not resynchronized");
                }
            }
            hub.router.dispatch_all(Arc::new(BusEvent::Resync));
        });
    }

    /// Builds every queue from the store's waiting visits if live state is empty. True when
    /// this node did it.
    async fn ensure_seeded(&self) -> anyhow::Result<bool> {
        if self.live_state.is_seeded().await? {
            return Ok(false);
        }
        let _only_one_node = self.live_state.lock("seed", Duration::from_secs(60), Duration::from_secs(30)).await?;
        if self.live_state.is_seeded().await? {
            return Ok(false);
        }
        let mut waiting: HashMap<UsState, Vec<Visit>> = HashMap::new();
        for visit in self.store.waiting_visits().await? {
            waiting.entry(visit.state).or_default().push(visit);
        }
        let mut queued = 0;
        for state in UsState::all() {
            let want = waiting.remove(&state).unwrap_or_default();
            let current = self.live_state.queue_load(state).await?;
            let have: HashSet<&str> = current.entries.iter().map(|e| &*e.visit_id).collect();
            for visit in want.iter().filter(|v| !have.contains(v.id.as_str())) {
                self.live_state.queue_push(state, &QueuedVisit::of(visit)).await?;
            }
            queued += want.len();
            let wanted: HashSet<&str> = want.iter().map(|v| v.id.as_str()).collect();
            for stale in current.entries.iter().filter(|e| !wanted.contains(&*e.visit_id)) {
                // Queued meanwhile by an intake on another node, or no longer waiting?
                let still = self.store.get_visit(&stale.visit_id).await?;
                if !still.is_some_and(|v| v.status == VisitStatus::Waiting && v.state == state) {
                    self.live_state.queue_remove(state, &stale.visit_id).await?;
                }
            }
        }
        self.live_state.mark_seeded().await?;
        tracing::info!(visits = queued, "live state built from the store");
        Ok(true)
    }

    fn node_record(&self) -> NodeRecord {
        NodeRecord {
            node: self.options.node_id.clone(),
            draining: self.cluster.draining.load(Ordering::Acquire),
            caregivers: self.presence.records(),
            patients: self.patient_sockets.iter().map(|e| e.key().clone()).collect(),
        }
    }

    fn heartbeat_ttl(&self) -> Duration {
        Duration::from_millis(self.options.heartbeat_ms.max(50) * 3)
    }

    /// One beat: renew this node's record, rebuild live state if it was lost, take in the
    /// other nodes' presence, clean up after dead nodes, and watch orphaned visits.
    async fn heartbeat(&self) -> anyhow::Result<()> {
        let me = self.options.node_id.clone();
        self.live_state.heartbeat(&self.node_record(), self.heartbeat_ttl()).await?;
        if self.ensure_seeded().await? {
            for state in UsState::all() {
                let change = self.live_state.queue_bump(state).await?;
                self.queue_changed(state, change).await;
            }
        }
        let registry = self.live_state.registry().await?;
        self.metrics.cluster_nodes.set(registry.alive.len() as i64);
        let others: Vec<NodeRecord> = registry.alive.into_iter().filter(|r| r.node != me).collect();
        for state in self.presence.set_remote(others.iter().flat_map(|r| r.caregivers.iter().cloned())) {
            self.refresh_board(state);
        }
        *self.cluster.remote_patients.lock().unwrap_or_else(|e| e.into_inner()) =
            others.iter().flat_map(|r| r.patients.iter().cloned()).collect();
        for dead in registry.expired.iter().filter(|n| **n != me) {
            if self.live_state.leave(dead).await? {
                let last = self.cluster.last_seen.lock().unwrap_or_else(|e| e.into_inner()).remove(dead);
                tracing::warn!(node = %dead, "a node stopped beating: cleaning up after it");
                if let Some(record) = last {
                    self.bury(record).await;
                }
            }
        }
        *self.cluster.last_seen.lock().unwrap_or_else(|e| e.into_inner()) =
            others.into_iter().map(|r| (r.node.clone(), r)).collect();
        for visit_id in self.live_state.pop_orphans(ORPHANS_PER_BEAT).await? {
            if !self.patient_connected(&visit_id) {
                self.start_abandon_timer(&visit_id);
            }
        }
        Ok(())
    }

    /// A dead node's patients may not come back: someone watches their visits. Its providers
    /// went offline: caregivers covering their states are told.
    async fn bury(&self, record: NodeRecord) {
        if let Err(e) = self.live_state.push_orphans(&record.patients).await {
            tracing::warn!(error = %e, "orphaned visits not handed over");
        }
        // One batch per state for all of the node's providers.
        let mut by_state: BTreeMap<UsState, Vec<ProviderPresence>> = BTreeMap::new();
        for c in record.caregivers.into_iter().filter(|c| c.kind == CaregiverKind::Provider) {
            let offline = ProviderPresence {
                subject: c.subject,
                name: c.name,
                status: ProviderStatus::Offline,
                states: c.states,
            };
            for state in &offline.states {
                by_state.entry(*state).or_default().push(offline.clone());
            }
        }
        for (state, providers) in by_state {
            self.publish(Topic::Staff(state), BusEvent::Presence(PresenceBatch::new(PresenceUpdated { providers })))
                .await;
        }
    }

    /// Whether the visit's patient has a socket open on any node.
    pub(super) fn patient_connected(&self, visit_id: &str) -> bool {
        self.patient_sockets.contains_key(visit_id)
            || self.cluster.remote_patients.lock().unwrap_or_else(|e| e.into_inner()).contains(visit_id)
    }

    /// Draining begins: the node takes no new work and tells the others.
    pub async fn begin_drain(&self) {
        self.cluster.draining.store(true, Ordering::Release);
        *self.cluster.drained_patients.lock().unwrap_or_else(|e| e.into_inner()) =
            self.patient_sockets.iter().map(|e| e.key().clone()).collect();
        if let Err(e) = self.live_state.heartbeat(&self.node_record(), self.heartbeat_ttl()).await {
            tracing::warn!(error = %e, "draining not announced");
        }
    }

    /// The node leaves the registry; the visits of patients it held are watched by others.
    pub async fn leave_cluster(&self) {
        self.cluster.left.store(true, Ordering::Release);
        let patients = std::mem::take(&mut *self.cluster.drained_patients.lock().unwrap_or_else(|e| e.into_inner()));
        let left = async {
            self.live_state.push_orphans(&patients).await?;
            self.live_state.leave(&self.options.node_id).await
        };
        if let Err(e) = left.await {
            tracing::warn!(error = %e, "node did not leave the registry; it expires with its heartbeat");
        }
    }
}

async fn heartbeats(hub: Weak<Hub>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(hub) = hub.upgrade() else { return };
        if hub.cluster.left.load(Ordering::Acquire) {
            return;
        }
        match hub.heartbeat().await {
            Ok(()) => {
                if hub.cluster.unhealthy.swap(false, Ordering::AcqRel) {
                    tracing::info!("live state reachable again");
                }
            }
            Err(e) => {
                if !hub.cluster.unhealthy.swap(true, Ordering::AcqRel) {
                    tracing::warn!(error = %e, "live state unreachable: node degraded");
                }
            }
        }
    }
}
