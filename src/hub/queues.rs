//! Per-state queues and the boards that publish them. A queue change builds one immutable
//! [`QueueView`] and puts it on the state's board (a `watch` channel): every session reads the
//! newest view when it is ready to write, so a slow client skips to the latest value instead
//! of piling up a backlog, and a view is built once however many patients wait. Boards are
//! published at most every `board_every_ms` ([`Lane::pace`]), so a busy queue's fan-out stays
//! bounded.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;

use super::estimator::EstimateInputs;
use crate::live::{QueueChange, QueueStep};
use crate::model::UsState;
use crate::protocol::{QueueDelta, QueueEntry, QueuePosition, QueueSnapshot};

/// A waiting visit as the queue holds it. Shared by `Arc` between views.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueuedVisit {
    pub visit_id: Arc<str>,
    pub display_name: String,
    pub reason: String,
    pub enqueued_at: DateTime<Utc>,
}

impl QueuedVisit {
    /// What the queue holds of a waiting visit.
    pub fn of(visit: &crate::model::Visit) -> QueuedVisit {
        QueuedVisit {
            visit_id: visit.id.as_str().into(),
            display_name: visit.display_name.clone(),
            reason: visit.reason.clone(),
            enqueued_at: visit.created_at,
        }
    }
}

/// One state's queue at one version, with what estimates need.
#[derive(Debug)]
pub struct QueueView {
    pub state: UsState,
    pub version: u64,
    pub busy: bool,
    pub estimate: EstimateInputs,
    pub entries: Vec<Arc<QueuedVisit>>,
    index: HashMap<Arc<str>, u32>,
}

impl QueueView {
    pub fn new(
        state: UsState,
        version: u64,
        busy: bool,
        estimate: EstimateInputs,
        entries: Vec<Arc<QueuedVisit>>,
    ) -> QueueView {
        let index = entries.iter().enumerate().map(|(i, e)| (e.visit_id.clone(), i as u32 + 1)).collect();
        QueueView { state, version, busy, estimate, entries, index }
    }

    /// 1-based position of a waiting visit.
    pub fn position_of(&self, visit_id: &str) -> Option<u32> {
        self.index.get(visit_id).copied()
    }

    pub fn len(&self) -> u32 {
        self.entries.len() as u32
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// What the patient of `visit_id` is told, if the visit is waiting here.
    pub fn position_message(&self, visit_id: &str) -> Option<QueuePosition> {
        let position = self.position_of(visit_id)?;
        Some(QueuePosition {
            visit_id: visit_id.to_string(),
            state: self.state,
            position,
            queue_length: self.len(),
            estimated_wait_secs: self.estimate.wait_for(position),
        })
    }

    fn entry(&self, position: u32) -> QueueEntry {
        let e = &self.entries[position as usize - 1];
        QueueEntry {
            visit_id: e.visit_id.to_string(),
            position,
            display_name: e.display_name.clone(),
            reason: e.reason.clone(),
            enqueued_at: e.enqueued_at,
            estimated_wait_secs: self.estimate.wait_for(position),
        }
    }

    pub fn snapshot(&self) -> QueueSnapshot {
        QueueSnapshot {
            state: self.state,
            version: self.version,
            busy: self.busy,
            staffing: self.estimate.staffing,
            visits: (1..=self.len()).map(|p| self.entry(p)).collect(),
        }
    }

    /// What changed since `older`, or `None` if nothing a caregiver sees did.
    pub fn delta_since(&self, older: &QueueView) -> Option<QueueDelta> {
        let now: HashSet<&str> = self.entries.iter().map(|e| &*e.visit_id).collect();
        let removed: Vec<String> =
            older.entries.iter().filter(|e| !now.contains(&*e.visit_id)).map(|e| e.visit_id.to_string()).collect();
        let added: Vec<QueueEntry> = self
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| older.position_of(&e.visit_id).is_none())
            .map(|(i, _)| self.entry(i as u32 + 1))
            .collect();
        let unchanged =
            removed.is_empty() && added.is_empty() && self.busy == older.busy && self.estimate == older.estimate;
        (!unchanged).then_some(QueueDelta {
            state: self.state,
            version: self.version,
            busy: self.busy,
            staffing: self.estimate.staffing,
            added,
            removed,
        })
    }
}

/// This node's copy of one state's queue: read whole from live state, then kept in step by
/// applying each change in version order.
#[derive(Default)]
struct Cached {
    entries: Vec<Arc<QueuedVisit>>,
    version: u64,
    /// The newest version announced; above `version` means this copy is stale.
    announced: u64,
    /// Changes that came ahead of one not seen yet (two nodes' announcements cross on the
    /// bus), each applied once the copy reaches the version before it.
    pending: BTreeMap<u64, QueueStep>,
}

/// Changes held while waiting for an earlier one: past this, the queue is read whole anyway.
const PENDING_MAX: usize = 256;

impl Cached {
    /// Applies the held changes that follow the copy's version, in order. False when one does
    /// not fit the copy (it missed something): the copy stays where it was.
    fn catch_up(&mut self) -> bool {
        while let Some(step) = self.pending.remove(&(self.version + 1)) {
            if !self.step(step) {
                self.pending.clear();
                return false;
            }
            self.version += 1;
        }
        let version = self.version;
        self.pending.retain(|v, _| *v > version);
        true
    }

    fn step(&mut self, step: QueueStep) -> bool {
        match step {
            QueueStep::Pushed { rank, visit } => {
                if let Some(at) = self.entries.iter().position(|e| e.visit_id == visit.visit_id) {
                    self.entries.remove(at);
                }
                let Some(rank) = usize::try_from(rank).ok().filter(|r| *r <= self.entries.len()) else {
                    return false;
                };
                self.entries.insert(rank, visit);
                true
            }
            QueueStep::Removed { visit_id } => match self.entries.iter().position(|e| e.visit_id == visit_id) {
                Some(at) => {
                    self.entries.remove(at);
                    true
                }
                None => false,
            },
            QueueStep::Bumped => true,
        }
    }
}

/// What applying a change did to a node's copy of the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// It is the newest change seen: its learned means are the newest too.
    pub newest: bool,
    /// The copy holds every change seen; when false, the queue is to be read whole.
    pub current: bool,
}

/// When the board was last published, and whether a later publication is scheduled.
#[derive(Default)]
struct Pace {
    last: Option<Instant>,
    scheduled: bool,
}

/// When to publish a state's board after a change.
#[derive(Debug, PartialEq, Eq)]
pub enum Paced {
    Now,
    /// Then, by the caller, who calls [`Lane::publishing`] first.
    At(Instant),
    /// Already scheduled: that publication shows this change too.
    Scheduled,
}

/// Everything one state's queue owns on this node.
pub struct Lane {
    cached: Mutex<Cached>,
    pub board: watch::Sender<Arc<QueueView>>,
    /// A reload from live state is scheduled (coalesces announcements).
    pub reloading: std::sync::atomic::AtomicBool,
    pace: Mutex<Pace>,
}

impl Lane {
    /// Paces the board's publications: at most one per `every` (the node's `board_every_ms`).
    /// Every publication sends each patient waiting there a new position (and each console a
    /// delta): a busy queue changing hundreds of times a second would otherwise cost that many
    /// frames per patient, and once the cores fall behind, longer queues cost more frames
    /// still. Changes in between are shown together, the newest at most `every` after it
    /// happened; a change after a quiet spell shows at once.
    pub fn pace(&self, now: Instant, every: Duration) -> Paced {
        let mut pace = self.pace.lock().unwrap_or_else(|e| e.into_inner());
        if pace.scheduled {
            return Paced::Scheduled;
        }
        match pace.last.map(|last| last + every).filter(|due| *due > now) {
            Some(due) => {
                pace.scheduled = true;
                Paced::At(due)
            }
            None => {
                pace.last = Some(now);
                Paced::Now
            }
        }
    }

    /// A scheduled publication is made now: changes from here on schedule the next.
    pub fn publishing(&self, now: Instant) {
        let mut pace = self.pace.lock().unwrap_or_else(|e| e.into_inner());
        *pace = Pace { last: Some(now), scheduled: false };
    }

    /// Whether the board shows the copy held (no publication waits for its turn).
    pub fn board_is_current(&self) -> bool {
        let scheduled = self.pace.lock().unwrap_or_else(|e| e.into_inner()).scheduled;
        !scheduled && self.board.borrow().version == self.cached.lock().unwrap_or_else(|e| e.into_inner()).version
    }

    /// The view of the copy held, built now.
    pub fn view(&self, state: UsState, busy: bool, estimate: EstimateInputs) -> QueueView {
        let q = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        QueueView::new(state, q.version, busy, estimate, q.entries.clone())
    }

    /// Builds the current view and publishes it if it is newer than the one on the board.
    pub fn refresh_board(&self, state: UsState, busy: bool, estimate: EstimateInputs) {
        let view = self.view(state, busy, estimate);
        self.board.send_if_modified(|current| {
            let newer = view.version > current.version
                || (view.version == current.version
                    && (view.busy != current.busy || view.estimate != current.estimate));
            if newer {
                *current = Arc::new(view);
            }
            newer
        });
    }

    /// Keeps a queue read from live state if it is newer than the copy held, with the changes
    /// held that follow it.
    pub fn store(&self, version: u64, entries: Vec<Arc<QueuedVisit>>) {
        let mut q = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if version >= q.version {
            q.entries = entries;
            q.version = version;
            q.catch_up();
        }
    }

    /// Applies a change live state made: at once when the copy is at the version before it,
    /// later when it came ahead of one still on its way.
    pub fn apply(&self, change: &QueueChange) -> Applied {
        let mut q = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        let newest = change.version > q.announced;
        q.announced = q.announced.max(change.version);
        if change.version > q.version && q.pending.len() < PENDING_MAX {
            q.pending.insert(change.version, change.step.clone());
        }
        let current = q.catch_up() && q.announced == q.version;
        Applied { newest, current }
    }

    /// The version of the copy held.
    pub fn version(&self) -> u64 {
        self.cached.lock().unwrap_or_else(|e| e.into_inner()).version
    }

    pub fn is_stale(&self) -> bool {
        let q = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        q.announced > q.version
    }
}

/// All lanes, created on first use.
pub struct Queues {
    lanes: DashMap<UsState, Arc<Lane>>,
    empty_estimate: EstimateInputs,
}

impl Queues {
    pub fn new(empty_estimate: EstimateInputs) -> Queues {
        Queues { lanes: DashMap::new(), empty_estimate }
    }

    pub fn lane(&self, state: UsState) -> Arc<Lane> {
        if let Some(lane) = self.lanes.get(&state) {
            return lane.clone();
        }
        self.lanes
            .entry(state)
            .or_insert_with(|| {
                let view = QueueView::new(state, 0, false, self.empty_estimate, Vec::new());
                Arc::new(Lane {
                    cached: Mutex::new(Cached::default()),
                    board: watch::channel(Arc::new(view)).0,
                    reloading: std::sync::atomic::AtomicBool::new(false),
                    pace: Mutex::new(Pace::default()),
                })
            })
            .clone()
    }

    /// The newest view of every state's queue that has been used.
    pub fn views(&self) -> Vec<Arc<QueueView>> {
        self.lanes.iter().map(|lane| lane.board.borrow().clone()).collect()
    }

    pub fn subscribe(&self, state: UsState) -> watch::Receiver<Arc<QueueView>> {
        self.lane(state).board.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::estimator::{Estimator, Staffing};

    fn visit(id: &str) -> Arc<QueuedVisit> {
        Arc::new(QueuedVisit {
            visit_id: id.into(),
            display_name: "n".into(),
            reason: "r".into(),
            enqueued_at: Utc::now(),
        })
    }

    fn view(version: u64, ids: &[&str]) -> QueueView {
        let est = Estimator::new(600, 30, 0.2).inputs(Staffing { online: 1, available: 0 });
        QueueView::new(UsState::parse("WA").unwrap(), version, false, est, ids.iter().map(|i| visit(i)).collect())
    }

    #[test]
    fn positions_and_estimates_follow_order() {
        let v = view(1, &["a", "b", "c"]);
        assert_eq!(v.position_of("b"), Some(2));
        assert_eq!(v.position_of("z"), None);
        let msg = v.position_message("c").unwrap();
        assert_eq!((msg.position, msg.queue_length), (3, 3));
        assert!(msg.estimated_wait_secs > v.position_message("a").unwrap().estimated_wait_secs);
    }

    #[test]
    fn delta_lists_removed_and_added() {
        let old = view(1, &["a", "b", "c"]);
        let new = view(2, &["b", "c", "d"]);
        let d = new.delta_since(&old).unwrap();
        assert_eq!(d.removed, vec!["a".to_string()]);
        assert_eq!(d.added.len(), 1);
        assert_eq!((d.added[0].visit_id.as_str(), d.added[0].position), ("d", 3));
        assert!(new.delta_since(&view(3, &["b", "c", "d"])).is_none());
    }

    #[test]
    fn board_keeps_only_the_newest_view() {
        let queues = Queues::new(view(0, &[]).estimate);
        let state = UsState::parse("WA").unwrap();
        let lane = queues.lane(state);
        let mut rx = queues.subscribe(state);
        let mut entries = Vec::new();
        for (version, id) in ["a", "b", "c"].into_iter().enumerate() {
            entries.push(visit(id));
            lane.store(version as u64 + 1, entries.clone());
            lane.refresh_board(state, false, view(0, &[]).estimate);
        }
        lane.store(1, vec![visit("old")]);
        lane.refresh_board(state, false, view(0, &[]).estimate);
        assert!(rx.has_changed().unwrap());
        let latest = rx.borrow_and_update().clone();
        assert_eq!((latest.version, latest.len()), (3, 3), "an older read never replaces a newer one");
        assert!(!rx.has_changed().unwrap());
        let bumped = |version| QueueChange { version, step: QueueStep::Bumped, learned: Default::default() };
        assert!(lane.apply(&bumped(3)).current && !lane.is_stale());
        assert!(!lane.apply(&bumped(5)).current && lane.is_stale(), "version 4 is missing");
    }

    fn ids(lane: &Lane) -> Vec<String> {
        lane.view(UsState::parse("WA").unwrap(), false, view(0, &[]).estimate)
            .entries
            .iter()
            .map(|e| e.visit_id.to_string())
            .collect()
    }

    fn pushed(version: u64, rank: u32, id: &str) -> QueueChange {
        QueueChange { version, step: QueueStep::Pushed { rank, visit: visit(id) }, learned: Default::default() }
    }

    fn removed(version: u64, id: &str) -> QueueChange {
        QueueChange { version, step: QueueStep::Removed { visit_id: id.into() }, learned: Default::default() }
    }

    #[test]
    fn changes_apply_in_version_order_whatever_order_they_come_in() {
        let queues = Queues::new(view(0, &[]).estimate);
        let lane = queues.lane(UsState::parse("WA").unwrap());
        lane.store(10, vec![visit("a"), visit("b")]);
        let first = lane.apply(&pushed(11, 1, "c"));
        assert_eq!(first, Applied { newest: true, current: true });
        assert_eq!(ids(&lane), ["a", "c", "b"]);
        // Two nodes' changes cross on the bus: 13 comes before 12.
        assert_eq!(lane.apply(&removed(13, "a")), Applied { newest: true, current: false });
        assert_eq!((lane.version(), ids(&lane)), (11, vec!["a".into(), "c".into(), "b".into()]), "13 waits for 12");
        assert_eq!(lane.apply(&pushed(12, 3, "d")), Applied { newest: false, current: true });
        assert_eq!((lane.version(), ids(&lane)), (13, vec!["c".into(), "b".into(), "d".into()]));
        // A change seen again (this node's own, back from the bus) changes nothing.
        assert_eq!(lane.apply(&pushed(12, 3, "d")), Applied { newest: false, current: true });
        assert_eq!(ids(&lane), ["c", "b", "d"]);
        // Pushed again, a visit moves to its new rank instead of showing twice.
        assert!(lane.apply(&pushed(14, 0, "d")).current);
        assert_eq!(ids(&lane), ["d", "c", "b"]);
    }

    #[test]
    fn a_change_that_does_not_fit_the_copy_waits_for_a_read_of_the_whole_queue() {
        let queues = Queues::new(view(0, &[]).estimate);
        let lane = queues.lane(UsState::parse("WA").unwrap());
        lane.store(10, vec![visit("a")]);
        // The copy never saw "z" queued: it missed a change, whatever the versions say.
        assert!(!lane.apply(&removed(11, "z")).current);
        assert!(!lane.apply(&pushed(12, 5, "y")).current, "a rank past the end does not fit either");
        assert_eq!((lane.version(), lane.is_stale()), (10, true));
        // The read comes back at 11; the change after it is applied to it.
        lane.store(11, vec![visit("a"), visit("z")]);
        assert!(lane.is_stale(), "12 was dropped with the copy that did not fit");
        lane.store(12, vec![visit("a"), visit("y")]);
        assert!(!lane.is_stale());
        assert!(lane.apply(&removed(13, "a")).current);
        assert_eq!(ids(&lane), ["y"]);
        // A read that comes back older than the changes held keeps them.
        assert!(!lane.apply(&pushed(15, 1, "x")).current);
        lane.store(14, vec![visit("y"), visit("w")]);
        assert_eq!(
            (lane.version(), ids(&lane), lane.is_stale()),
            (15, vec!["y".into(), "x".into(), "w".into()], false)
        );
    }

    #[test]
    fn a_boards_publications_are_paced_and_a_change_in_between_is_scheduled_once() {
        let queues = Queues::new(view(0, &[]).estimate);
        let lane = queues.lane(UsState::parse("WA").unwrap());
        let every = Duration::from_millis(100);
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        assert_eq!(lane.pace(t0, every), Paced::Now, "the first change shows at once");
        assert_eq!(lane.pace(ms(10), every), Paced::At(ms(100)), "the next waits for its turn");
        assert_eq!(lane.pace(ms(20), every), Paced::Scheduled, "and the one after goes with it");
        lane.store(3, vec![visit("a")]);
        assert!(!lane.board_is_current(), "a publication waits");
        lane.publishing(ms(100));
        lane.refresh_board(UsState::parse("WA").unwrap(), false, view(0, &[]).estimate);
        assert!(lane.board_is_current());
        assert_eq!(lane.board.borrow().version, 3);
        assert_eq!(lane.pace(ms(150), every), Paced::At(ms(200)));
        lane.publishing(ms(200));
        assert_eq!(lane.pace(ms(400), every), Paced::Now, "after a quiet spell, at once");
        // The node's setting sets the pace; 0 shows every change at once.
        assert_eq!(lane.pace(ms(450), Duration::from_millis(1000)), Paced::At(ms(1400)));
        let unpaced = queues.lane(UsState::parse("OR").unwrap());
        for n in 0..3 {
            assert_eq!(unpaced.pace(ms(n), Duration::ZERO), Paced::Now, "change {n}");
        }
    }
}
