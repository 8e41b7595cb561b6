//! `baseline-connections`: the `connections` figures for the servers the hub is compared with
//! (see [`crate::reference`]): opens many idle sockets, each accepted as a client of its own
//! (its own room on matchbox, its own id on PeerJS; a listener on the bare server), holds them,
//! and reads the server's memory and CPU per connection and the accept rate, as `connections`
//! does for the hub. One process opens them all (under its 20,000 open files).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::{StreamExt, stream};

use super::Phase;
use crate::conn::CONNECT_CONCURRENCY;
use crate::progress::Progress;
use crate::reference::Server;
use crate::report::Report;
use crate::target::Context;
use crate::workers::MAX_PER_WORKER;

#[derive(Debug, Clone, clap::Args)]
pub struct BaselineConnectionsArgs {
    /// Idle sockets to open.
    #[arg(long, default_value_t = 1000)]
    pub count: usize,
    /// Seconds to hold them open before the memory reading.
    #[arg(long, default_value_t = 3)]
    pub hold_secs: u64,
    /// Which server the target is.
    #[arg(long, value_enum, default_value_t = Server::Bare)]
    pub server: Server,
}

pub async fn run(ctx: &Arc<Context>, args: &BaselineConnectionsArgs) -> anyhow::Result<Report> {
    anyhow::ensure!(
        (1..=MAX_PER_WORKER).contains(&args.count),
        "--count must be 1 to {MAX_PER_WORKER}: one process holds under 20,000 files"
    );
    let addr = ctx.targets.nodes[0].addr;
    let phase = Phase::start(ctx);
    let progress = Progress::start(ctx.progress, "baseline-connections", "connected", ctx.stats.clone());
    let started = Instant::now();
    let stats = ctx.stats.clone();
    let opened: Vec<_> = stream::iter(0..args.count)
        .map(|i| {
            let stats = stats.clone();
            async move {
                let ws = args.server.open_idle(addr, &format!("{}-{i}", ctx.run_id)).await;
                match &ws {
                    Ok(_) => {
                        stats.open.fetch_add(1, Ordering::Relaxed);
                        stats.count("connected", 1);
                    }
                    Err(_) => stats.error("connect_failed"),
                }
                ws.ok()
            }
        })
        .buffer_unordered(CONNECT_CONCURRENCY)
        .collect()
        .await;
    let accept_secs = started.elapsed().as_secs_f64();
    let sockets: Vec<_> = opened.into_iter().flatten().collect();
    let connected = sockets.len() as u64;
    tokio::time::sleep(Duration::from_secs(args.hold_secs)).await;
    let mut report = phase.finish(ctx, "baseline-connections", connected, 0);
    drop(progress);
    drop(sockets);
    report.note("server", args.server.name());
    report.note("connections", connected);
    report.note("accept_secs", accept_secs);
    report.note("accepted_per_sec", if accept_secs > 0.0 { connected as f64 / accept_secs } else { 0.0 });
    Ok(report)
}
