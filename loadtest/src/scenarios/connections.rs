//! `connections`: opens many idle authenticated sockets from several worker processes (see
//! [`crate::workers`]), each binding its own source address. Reports the accept rate and, given
//! the hub's pids, its resident memory and CPU per connection.
//!
//! The parent mints the tokens and hands them to the workers, then says `go`; each worker
//! answers `ready` once its sockets are open, holds them, and answers `done` after `stop`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinSet;
use visithub::model::Role;

use super::Phase;
use crate::conn::Conn;
use crate::progress::Progress;
use crate::report::Report;
use crate::stats::Stats;
use crate::target::{Context, Targets};
use crate::workers::{Link, WorkerArgs, WorkerOpts, WorkerScenario, Workers};

/// Sockets per worker process when `--processes` is not given.
const PER_PROCESS: usize = 10_000;
/// How long opening one worker's sockets may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, clap::Args)]
pub struct ConnectionsArgs {
    /// Idle authenticated connections to open (admin sessions, one subject each).
    #[arg(long, default_value_t = 1000)]
    pub count: usize,
    #[command(flatten)]
    pub workers: WorkerOpts,
    /// Seconds to hold the connections open before the memory reading and closing.
    #[arg(long, default_value_t = 3)]
    pub hold_secs: u64,
}

pub async fn run(ctx: &Arc<Context>, args: &ConnectionsArgs) -> anyhow::Result<Report> {
    let split = args.workers.split(args.count, PER_PROCESS)?;
    let jobs = split
        .iter()
        .enumerate()
        .map(|(w, range)| {
            range
                .clone()
                .map(|i| ctx.auth.token(Role::Admin, &format!("lt-{}-conn-{w}-{i}", ctx.run_id), 4 * 3600))
                .collect()
        })
        .collect();
    let mut workers = Workers::start(ctx, &args.workers, WorkerScenario::Connections, jobs).await?;

    let phase = Phase::start(ctx);
    let progress = Progress::start(ctx.progress, "connections", "connected", ctx.stats.clone());
    let started = Instant::now();
    workers.send_all("go").await?;
    let ready = workers.wait_all("ready", OPEN_TIMEOUT).await?;
    let connected: u64 = ready.snapshots.iter().map(|s| s.open).sum();
    let accept_secs = ready.last.duration_since(started).as_secs_f64();
    tokio::time::sleep(Duration::from_secs(args.hold_secs)).await;
    let mut report = phase.finish(ctx, "connections", connected, 0);
    drop(progress);
    workers.send_all("stop").await?;
    workers.wait_all("done", Duration::from_secs(30)).await?;
    workers.finish().await;
    report.errors = ctx.stats.errors();
    report.error_total = ctx.stats.error_total();
    report.note("connections", connected);
    report.note("processes", split.len() as u64);
    report.note("accept_secs", accept_secs);
    report.note("accepted_per_sec", if accept_secs > 0.0 { connected as f64 / accept_secs } else { 0.0 });
    Ok(report)
}

/// A worker: opens one socket per token, reports `ready`, holds them (reading, so pings are
/// answered) until `stop`, closes them and reports `done`.
pub async fn worker(args: &WorkerArgs) -> anyhow::Result<()> {
    let targets = Targets::resolve(&args.targets).await?;
    let stats = Arc::new(Stats::default());
    let (mut link, tokens) = Link::start(stats.clone()).await?;
    let conns = Conn::open_all(&targets, tokens, args.source, args.handshakes, &stats).await;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut holders = JoinSet::new();
    for conn in conns.into_iter().flatten() {
        stats.count("connected", 1);
        holders.spawn(hold(conn, stop_rx.clone()));
    }
    link.report("ready")?;
    while let Some(command) = link.command().await? {
        if command == "stop" {
            break;
        }
    }
    let _ = stop_tx.send(true);
    while holders.join_next().await.is_some() {}
    link.report("done")
}

/// Keeps one idle socket open, reading, until told to stop.
async fn hold(mut conn: Conn, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            frame = conn.next(Duration::from_secs(3600)) => if frame.is_err() { break },
        }
    }
    conn.close().await;
}
