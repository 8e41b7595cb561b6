//! The live progress line: sockets open, frames per second, what the scenario completed, and
//! errors, rewritten once a second on standard error.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::stats::Stats;

/// Stops the line when dropped.
pub struct Progress(Option<JoinHandle<()>>);

impl Progress {
    /// `done` names the count of completed work shown (for example `visits_completed`).
    pub fn start(enabled: bool, scenario: &'static str, done: &'static str, stats: Arc<Stats>) -> Progress {
        if !enabled {
            return Progress(None);
        }
        Progress(Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            let mut last = 0;
            loop {
                tick.tick().await;
                let frames = stats.sent.load(Ordering::Relaxed) + stats.received.load(Ordering::Relaxed);
                let line = format!(
                    "\r[{scenario} {:>4}s] open {:>6} | {:>7} frames/s | {done} {:>7} | errors {:>5} | lost {} dup {}   ",
                    stats.epoch.elapsed().as_secs(),
                    stats.open.load(Ordering::Relaxed),
                    frames - last,
                    stats.counted(done),
                    stats.error_total(),
                    stats.lost.load(Ordering::Relaxed),
                    stats.duplicated.load(Ordering::Relaxed),
                );
                last = frames;
                let mut err = std::io::stderr().lock();
                let _ = err.write_all(line.as_bytes());
                let _ = err.flush();
            }
        })))
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
            eprintln!();
        }
    }
}
