//! What a run counts while it goes: latency histograms (HDR, microseconds), errors by code,
//! frames sent and received, and lost or duplicated events. Shared by every client task.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

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
    counts: Mutex<BTreeMap<&'static str, u64>>,
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

    pub fn count(&self, what: &'static str, n: u64) {
        *self.counts.lock().expect("counts lock").entry(what).or_default() += n;
    }

    pub fn counted(&self, what: &str) -> u64 {
        self.counts.lock().expect("counts lock").get(what).copied().unwrap_or(0)
    }

    pub fn counts(&self) -> BTreeMap<String, u64> {
        self.counts.lock().expect("counts lock").iter().map(|(k, v)| (k.to_string(), *v)).collect()
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
}
