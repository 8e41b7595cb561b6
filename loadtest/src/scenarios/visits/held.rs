//! The relay's steady phase. While every visit of the run is in its hold at once, no visit is
//! being set up or ended, so the hub's CPU over that window divided by what it relayed is the
//! relay's own cost. The whole phase's figure also carries each visit's intake, chat, claim
//! and end, and is only an upper bound.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::hubproc::Sample;
use crate::report::Report;
use crate::target::Context;

/// How often the watcher looks at how many sides are holding.
const LOOK_EVERY: Duration = Duration::from_millis(10);
/// Shorter windows are left unreported: the hub's CPU time is counted in clock ticks.
const SHORTEST: Duration = Duration::from_secs(1);

/// Counts the participants (patient and provider of each visit) in their hold.
pub(super) struct Holding {
    now: AtomicUsize,
    /// Every side of every visit of the run.
    all: usize,
}

impl Holding {
    pub fn new(visits: usize) -> Arc<Holding> {
        Arc::new(Holding { now: AtomicUsize::new(0), all: visits * 2 })
    }

    /// One more side holding, until the guard is dropped.
    pub fn enter(&self) -> InHold<'_> {
        self.now.fetch_add(1, Ordering::SeqCst);
        InHold(self)
    }

    fn everyone(&self) -> bool {
        self.now.load(Ordering::SeqCst) >= self.all
    }
}

pub(super) struct InHold<'a>(&'a Holding);

impl Drop for InHold<'_> {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One end of the window.
#[derive(Clone, Copy)]
struct Mark {
    at: Instant,
    hub: Sample,
    relayed: u64,
}

impl Mark {
    fn take(ctx: &Context) -> Option<Mark> {
        Some(Mark { at: Instant::now(), hub: ctx.hub.sample()?, relayed: ctx.stats.counted("relayed") })
    }
}

/// What the hub did while everyone held.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Window {
    pub secs: f64,
    pub relayed: u64,
    pub cpu_secs: f64,
}

impl Window {
    fn between(start: Mark, end: Mark) -> Window {
        Window {
            secs: end.at.duration_since(start.at).as_secs_f64(),
            relayed: end.relayed - start.relayed,
            cpu_secs: (end.hub.cpu_secs - start.hub.cpu_secs).max(0.0),
        }
    }

    /// Hub CPU per relayed message, when the window was long enough to say.
    pub fn cpu_us_per_relayed(&self) -> Option<f64> {
        (self.secs >= SHORTEST.as_secs_f64() && self.relayed > 0).then(|| self.cpu_secs * 1e6 / self.relayed as f64)
    }

    pub fn note(&self, report: &mut Report) {
        let Some(per) = self.cpu_us_per_relayed() else { return };
        report.note("held_secs", self.secs);
        report.note("held_relayed", self.relayed);
        report.note("held_cpu_us_per_relayed_message", per);
    }
}

/// Marks the window's start when every side holds and its end when the first one leaves.
/// `None` when that never happened (holds shorter than the arrivals) or no hub pid was given.
pub(super) async fn watch(ctx: Arc<Context>, holding: Arc<Holding>) -> Option<Window> {
    while !holding.everyone() {
        tokio::time::sleep(LOOK_EVERY).await;
    }
    let start = Mark::take(&ctx)?;
    while holding.everyone() {
        tokio::time::sleep(LOOK_EVERY).await;
    }
    Some(Window::between(start, Mark::take(&ctx)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everyone_holds_only_when_both_sides_of_every_visit_do() {
        let h = Holding::new(2);
        let three: Vec<_> = (0..3).map(|_| h.enter()).collect();
        assert!(!h.everyone());
        let last = h.enter();
        assert!(h.everyone());
        drop(last);
        assert!(!h.everyone());
        drop(three);
        assert_eq!(h.now.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_window_divides_the_hub_cpu_by_what_it_relayed() {
        let t = Instant::now();
        let mark = |secs: f64, cpu_secs: f64, relayed| Mark {
            at: t + Duration::from_secs_f64(secs),
            hub: Sample { rss_bytes: 0, cpu_secs },
            relayed,
        };
        let w = Window::between(mark(1.0, 2.0, 100), mark(3.0, 2.5, 10_100));
        assert_eq!((w.relayed, w.secs), (10_000, 2.0));
        assert!((w.cpu_us_per_relayed().unwrap() - 50.0).abs() < 1e-9);
        // Too short a window says nothing.
        assert_eq!(Window::between(mark(1.0, 2.0, 0), mark(1.5, 2.1, 500)).cpu_us_per_relayed(), None);
        let mut report = Report::build("visits", vec![], &crate::stats::Stats::default(), 1.0, None);
        w.note(&mut report);
        assert_eq!(report.notes["held_relayed"], 10_000);
    }
}
