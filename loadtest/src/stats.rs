//! What a run counts while it goes: latency histograms (HDR, microseconds), errors by code,
//! frames sent and received, and lost or duplicated events. Shared by every client task, and
//! carried from worker processes to their parent as snapshots.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use serde::{Deserialize, Serialize};

/// The latencies a run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Latency {
    /// `POST /v1/visits` round trip.
    Intake,
    /// A signaling message sent by one participant until the other received it.
    Relay,
    /// A chat message sent until another member of the conversation received it.
    ChatDelivery,
    /// A queue change until a waiting patient received its new position.
    Fanout,
    /// A dropped socket until its session was resumed on a new one.
    Resume,
    /// TCP connect through the WebSocket handshake to the `welcome` frame.
    Connect,
}

impl Latency {
    pub const ALL: [Latency; 6] =
        [Latency::Intake, Latency::Relay, Latency::ChatDelivery, Latency::Fanout, Latency::Resume, Latency::Connect];

    pub fn name(self) -> &'static str {
        match self {
            Latency::Intake => "intake",
            Latency::Relay => "relay",
            Latency::ChatDelivery => "chat_delivery",
            Latency::Fanout => "fanout",
            Latency::Resume => "resume",
            Latency::Connect => "connect",
        }
    }

    pub fn from_name(name: &str) -> Option<Latency> {
        Latency::ALL.into_iter().find(|l| l.name() == name)
    }
}

/// A histogram of microseconds from 1 µs to 10 minutes at 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

pub struct Stats {
    /// Fixed start of the run: timestamps carried inside messages are microseconds since it.
    pub epoch: Instant,
    hist: [Mutex<Histogram<u64>>; 6],
    errors: Mutex<BTreeMap<String, u64>>,
    counts: Mutex<BTreeMap<String, u64>>,
    pub sent: AtomicU64,
    pub received: AtomicU64,
    pub lost: AtomicU64,
    pub duplicated: AtomicU64,
    /// Sockets open now.
    pub open: AtomicU64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            epoch: Instant::now(),
            hist: std::array::from_fn(|_| Mutex::new(new_histogram())),
            errors: Mutex::default(),
            counts: Mutex::default(),
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            duplicated: AtomicU64::new(0),
            open: AtomicU64::new(0),
        }
    }
}

impl Stats {
    pub fn record(&self, which: Latency, elapsed: Duration) {
        let us = (elapsed.as_micros() as u64).max(1);
        self.hist[which as usize].lock().expect("histogram lock").saturating_record(us);
    }

    /// Merges a histogram measured elsewhere (a worker process).
    pub fn merge(&self, which: Latency, other: &Histogram<u64>) {
        let _ = self.hist[which as usize].lock().expect("histogram lock").add(other);
    }

    pub fn histogram(&self, which: Latency) -> Histogram<u64> {
        self.hist[which as usize].lock().expect("histogram lock").clone()
    }

    /// Counts a refusal or failure under its documented error code (or close code).
    pub fn error(&self, code: &str) {
        *self.errors.lock().expect("errors lock").entry(code.to_string()).or_default() += 1;
    }

    pub fn add_errors(&self, codes: &BTreeMap<String, u64>) {
        let mut errors = self.errors.lock().expect("errors lock");
        for (code, n) in codes {
            *errors.entry(code.clone()).or_default() += n;
        }
    }

    pub fn errors(&self) -> BTreeMap<String, u64> {
        self.errors.lock().expect("errors lock").clone()
    }

    pub fn error_total(&self) -> u64 {
        self.errors.lock().expect("errors lock").values().sum()
    }

    pub fn count(&self, what: &str, n: u64) {
        let mut counts = self.counts.lock().expect("counts lock");
        // Looked up before inserting: counting is on the hot path, the key's allocation is not.
        match counts.get_mut(what) {
            Some(c) => *c += n,
            None => {
                counts.insert(what.to_string(), n);
            }
        }
    }

    pub fn counted(&self, what: &str) -> u64 {
        self.counts.lock().expect("counts lock").get(what).copied().unwrap_or(0)
    }

    pub fn counts(&self) -> BTreeMap<String, u64> {
        self.counts.lock().expect("counts lock").clone()
    }

    pub fn lose(&self, n: u64) {
        self.lost.fetch_add(n, Ordering::Relaxed);
    }

    pub fn duplicate(&self, n: u64) {
        self.duplicated.fetch_add(n, Ordering::Relaxed);
    }

    /// Microseconds since the run's epoch, to carry inside a message.
    pub fn stamp(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    /// Time since a stamp taken by [`Stats::stamp`].
    pub fn since_stamp(&self, stamp: u64) -> Duration {
        self.stamp_to(stamp, Instant::now())
    }

    /// Time from a stamp taken by [`Stats::stamp`] to `then`.
    pub fn stamp_to(&self, stamp: u64, then: Instant) -> Duration {
        let then = then.saturating_duration_since(self.epoch).as_micros() as u64;
        Duration::from_micros(then.saturating_sub(stamp))
    }
}

/// What a [`Stats`] holds at one moment, carried from a worker process to its parent as JSON.
/// Each is cumulative, so a lost or late one costs nothing: the parent adds what changed since
/// the previous one ([`Stats::absorb`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub open: u64,
    pub sent: u64,
    pub received: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub counts: BTreeMap<String, u64>,
    pub errors: BTreeMap<String, u64>,
    /// Each histogram that holds a value, by latency name: V2-serialized, base64-encoded.
    pub histograms: BTreeMap<String, String>,
}

impl Stats {
    pub fn snapshot(&self) -> anyhow::Result<Snapshot> {
        let mut histograms = BTreeMap::new();
        for which in Latency::ALL {
            let h = self.histogram(which);
            if h.is_empty() {
                continue;
            }
            let mut bytes = Vec::new();
            V2Serializer::new().serialize(&h, &mut bytes).map_err(|e| anyhow::anyhow!("histogram: {e:?}"))?;
            histograms.insert(which.name().to_string(), STANDARD.encode(bytes));
        }
        Ok(Snapshot {
            open: self.open.load(Ordering::Relaxed),
            sent: self.sent.load(Ordering::Relaxed),
            received: self.received.load(Ordering::Relaxed),
            lost: self.lost.load(Ordering::Relaxed),
            duplicated: self.duplicated.load(Ordering::Relaxed),
            counts: self.counts(),
            errors: self.errors(),
            histograms,
        })
    }

    /// Adds what `next` holds beyond `prev`: two snapshots of one worker, `prev` the one
    /// absorbed before (the default for the first).
    pub fn absorb(&self, prev: &Snapshot, next: &Snapshot) -> anyhow::Result<()> {
        // `open` is a gauge: it goes down as well as up.
        if next.open >= prev.open {
            self.open.fetch_add(next.open - prev.open, Ordering::Relaxed);
        } else {
            self.open.fetch_sub(prev.open - next.open, Ordering::Relaxed);
        }
        self.sent.fetch_add(next.sent.saturating_sub(prev.sent), Ordering::Relaxed);
        self.received.fetch_add(next.received.saturating_sub(prev.received), Ordering::Relaxed);
        self.lose(next.lost.saturating_sub(prev.lost));
        self.duplicate(next.duplicated.saturating_sub(prev.duplicated));
        let news = |now: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>| -> BTreeMap<String, u64> {
            now.iter()
                .map(|(k, n)| (k.clone(), n.saturating_sub(before.get(k).copied().unwrap_or(0))))
                .filter(|(_, n)| *n > 0)
                .collect()
        };
        for (what, n) in news(&next.counts, &prev.counts) {
            self.count(&what, n);
        }
        self.add_errors(&news(&next.errors, &prev.errors));
        for (name, encoded) in &next.histograms {
            let which = Latency::from_name(name).ok_or_else(|| anyhow::anyhow!("unknown latency {name:?}"))?;
            let mut h = decode_histogram(encoded)?;
            if let Some(before) = prev.histograms.get(name) {
                h.subtract(decode_histogram(before)?).map_err(|e| anyhow::anyhow!("histogram {name}: {e:?}"))?;
            }
            self.merge(which, &h);
        }
        Ok(())
    }
}

fn decode_histogram(encoded: &str) -> anyhow::Result<Histogram<u64>> {
    let bytes = STANDARD.decode(encoded)?;
    Deserializer::new().deserialize(&mut bytes.as_slice()).map_err(|e| anyhow::anyhow!("histogram: {e:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_and_counts_add_up() {
        let s = Stats::default();
        s.error("rate_limited");
        s.error("rate_limited");
        s.error("queue_full");
        s.count("visits", 3);
        assert_eq!(s.errors().get("rate_limited"), Some(&2));
        assert_eq!(s.error_total(), 3);
        assert_eq!(s.counted("visits"), 3);
        assert_eq!(s.counted("nothing"), 0);
    }

    #[test]
    fn records_land_in_their_own_histogram() {
        let s = Stats::default();
        s.record(Latency::Relay, Duration::from_micros(250));
        s.record(Latency::Relay, Duration::from_micros(750));
        assert_eq!(s.histogram(Latency::Relay).len(), 2);
        assert_eq!(s.histogram(Latency::Intake).len(), 0);
        assert!(s.histogram(Latency::Relay).max() >= 750);
    }

    #[test]
    fn absorbing_snapshots_adds_each_change_once() {
        let worker = Stats::default();
        let parent = Stats::default();
        worker.record(Latency::Resume, Duration::from_millis(5));
        worker.count("resumed", 1);
        worker.error("not_recovered");
        worker.open.store(3, Ordering::Relaxed);
        let first = worker.snapshot().unwrap();
        parent.absorb(&Snapshot::default(), &first).unwrap();
        worker.record(Latency::Resume, Duration::from_millis(9));
        worker.count("resumed", 1);
        worker.lose(2);
        worker.open.store(1, Ordering::Relaxed);
        let second = worker.snapshot().unwrap();
        // The same snapshot twice adds nothing the second time.
        parent.absorb(&first, &second).unwrap();
        parent.absorb(&second, &second).unwrap();
        let h = parent.histogram(Latency::Resume);
        assert_eq!(h.len(), 2);
        assert!(h.max() >= 9000, "{}", h.max());
        assert_eq!(parent.counted("resumed"), 2);
        assert_eq!(parent.errors().get("not_recovered"), Some(&1));
        assert_eq!(parent.lost.load(Ordering::Relaxed), 2);
        assert_eq!(parent.open.load(Ordering::Relaxed), 1);
        let json = serde_json::to_string(&second).unwrap();
        assert_eq!(serde_json::from_str::<Snapshot>(&json).unwrap(), second);
    }
}
