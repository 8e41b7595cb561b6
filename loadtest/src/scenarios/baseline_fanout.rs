//! `baseline-fanout`: the fan-out figure's floor on this machine. Many idle sockets listen to
//! the bare server (`bare-server`, see [`crate::bare`]); one announcer sends a frame of a
//! `queue.position`'s size, and the server writes it to every listener, each from its own task,
//! as a plain broadcast does. Measures, as `fanout` does for the hub, how long until every
//! listener has it, and the server's CPU per update (per frame the clients sent and received,
//! as `fanout` reports the hub's).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt, stream};
use tokio::task::JoinSet;

use super::Phase;
use crate::bare::{Ws, dial, read_each, stamped};
use crate::conn::CONNECT_CONCURRENCY;
use crate::progress::Progress;
use crate::report::Report;
use crate::stats::{Latency, Stats};
use crate::target::Context;
use crate::workers::MAX_PER_WORKER;

/// About a `queue.position` frame's size.
const FRAME_BYTES: usize = 200;
/// The pause between one announcement reaching everyone and the next.
const BETWEEN: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, clap::Args)]
pub struct BaselineFanoutArgs {
    /// Listening sockets (one process: under its 20,000 open files).
    #[arg(long, default_value_t = 1000)]
    pub listeners: usize,
    /// Announcements, each to every listener.
    #[arg(long, default_value_t = 10)]
    pub changes: usize,
    /// Seconds one announcement may take to reach everyone before the missing count as lost.
    #[arg(long, default_value_t = 10)]
    pub change_timeout_secs: u64,
}

pub async fn run(ctx: &Arc<Context>, args: &BaselineFanoutArgs) -> anyhow::Result<Report> {
    anyhow::ensure!(args.listeners > 0 && args.changes > 0, "--listeners and --changes must be positive");
    anyhow::ensure!(
        args.listeners <= MAX_PER_WORKER,
        "at most {MAX_PER_WORKER} listeners: one process holds under 20,000 files"
    );
    let addr = ctx.targets.nodes[0].addr;
    let opened: Vec<anyhow::Result<Ws>> = stream::iter(0..args.listeners)
        .map(|_| dial(addr, "/listen"))
        .buffer_unordered(CONNECT_CONCURRENCY)
        .collect()
        .await;
    let listeners = opened.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    ctx.stats.open.fetch_add(listeners.len() as u64, Ordering::Relaxed);
    let mut announcer = dial(addr, "/announce").await?;

    // Listeners that have each announcement (index: its number, from 1).
    let reached: Arc<Vec<AtomicU64>> = Arc::new((0..=args.changes).map(|_| AtomicU64::new(0)).collect());
    let mut tasks = JoinSet::new();
    for ws in listeners {
        tasks.spawn(listen(ws, ctx.stats.clone(), reached.clone()));
    }
    let phase = Phase::start(ctx);
    let progress = Progress::start(ctx.progress, "baseline-fanout", "positions", ctx.stats.clone());
    let everyone = args.listeners as u64;
    for change in 1..=args.changes {
        announcer.send(stamped(ctx.stats.stamp(), change as u64, 'f', FRAME_BYTES)).await?;
        ctx.stats.sent.fetch_add(1, Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(args.change_timeout_secs);
        while reached[change].load(Ordering::Relaxed) < everyone && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        ctx.stats.count("changes", 1);
        tokio::time::sleep(BETWEEN).await;
    }
    let got: u64 = reached.iter().map(|r| r.load(Ordering::Relaxed)).sum();
    ctx.stats.count("positions", got);
    ctx.stats.lose((everyone * args.changes as u64).saturating_sub(got));
    // The CPU per frame sent and received stands for the CPU per update, as in `fanout`.
    let mut report = phase.finish(ctx, "baseline-fanout", 0, 0);
    drop(progress);
    tasks.abort_all();
    report.note("listeners", args.listeners as u64);
    Ok(report)
}

/// Reads announcements: the time from each one's stamp to its arrival; one seen twice, or
/// older than the last, is a repeat.
async fn listen(ws: Ws, stats: Arc<Stats>, reached: Arc<Vec<AtomicU64>>) {
    let mut last = 0u64;
    read_each(ws, &stats, |f| match reached.get(f.n as usize) {
        Some(count) if f.n > last => {
            last = f.n;
            stats.record(Latency::Fanout, stats.stamp_to(f.stamp, f.arrived));
            count.fetch_add(1, Ordering::Relaxed);
        }
        _ => stats.duplicate(1),
    })
    .await;
}
