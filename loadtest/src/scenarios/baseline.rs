//! `baseline`: the relay figures' floor on this machine. The bare server (`bare-server`, see
//! [`crate::bare`]) is driven with the same ~600-byte frames, the same pacing and the same
//! `TCP_NODELAY` sockets as the `visits` scenario's signaling; the two sockets of a pair pass
//! each other's frames on. Its CPU per relayed frame, measured like the hub's from
//! `/proc/<pid>/stat`, is what loopback TCP and the scheduler cost here before any work of the
//! hub's: the hub's relay figures are read against it. With `--server matchbox` or `peerjs`
//! the same run drives those servers instead (see [`crate::reference`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use super::Phase;
use crate::bare::{Ws, read_each};
use crate::progress::Progress;
use crate::reference::Server;
use crate::report::Report;
use crate::stats::{Latency, Stats};
use crate::target::Context;
use crate::workers::MAX_PER_WORKER;

/// The payload's size, as a trickled candidate's frame through the hub.
const FRAME_BYTES: usize = 600;
/// The most frames one socket writes back to back.
const MAX_BURST: usize = 1024;

#[derive(Debug, Clone, clap::Args)]
pub struct BaselineArgs {
    /// Socket pairs relaying to each other.
    #[arg(long, default_value_t = 10)]
    pub pairs: usize,
    /// Frames per second relayed in all (each socket sends rate / (2 x pairs)).
    #[arg(long, default_value_t = 20_000.0)]
    pub rate: f64,
    /// Frames each socket writes back to back per tick (1: one at a time, as the hub is
    /// measured; more: trickled candidates gathered together).
    #[arg(long, default_value_t = 1)]
    pub burst: usize,
    /// Seconds of sending.
    #[arg(long, default_value_t = 10.0)]
    pub duration_secs: f64,
    /// Which server the target is.
    #[arg(long, value_enum, default_value_t = Server::Bare)]
    pub server: Server,
}

/// Runs the clients against the bare server at `ctx`'s first target.
pub async fn run(ctx: &Arc<Context>, args: &BaselineArgs) -> anyhow::Result<Report> {
    anyhow::ensure!(
        (1..=MAX_PER_WORKER / 2).contains(&args.pairs),
        "--pairs must be 1 to {}: one process holds under 20,000 files",
        MAX_PER_WORKER / 2
    );
    anyhow::ensure!(args.rate > 0.0, "--rate must be positive");
    anyhow::ensure!((1..=MAX_BURST).contains(&args.burst), "--burst must be 1 to {MAX_BURST}");
    anyhow::ensure!(args.duration_secs > 0.0, "--duration-secs must be positive");
    let addr = ctx.targets.nodes[0].addr;
    let mut sockets = Vec::with_capacity(args.pairs * 2);
    for pair in 0..args.pairs {
        sockets.extend(args.server.open_pair(addr, &format!("{}-{pair}", ctx.run_id)).await?);
        ctx.stats.open.fetch_add(2, Ordering::Relaxed);
    }
    // No wait for the pairing: the first socket of a pair reads nothing until its peer comes.
    let per_socket = args.rate / (2 * args.pairs) as f64;
    let tick = Duration::from_secs_f64(args.burst as f64 / per_socket);
    // Frames that reached the other socket of their pair (an atomic, not [`Stats`]' map, which
    // takes a lock per count). Those sent are `Stats::sent`: nothing else sends in this run.
    let relayed = Arc::new(AtomicU64::new(0));
    let phase = Phase::start(ctx);
    let progress = Progress::start(ctx.progress, "baseline", "relayed", ctx.stats.clone());
    let stop_at = Instant::now() + Duration::from_secs_f64(args.duration_secs);
    let mut tasks = JoinSet::new();
    for (i, end) in sockets.into_iter().enumerate() {
        let (sink, stream) = end.ws.split();
        let (me, peer) = if i % 2 == 0 { ('a', 'b') } else { ('b', 'a') };
        let to = Addressed { server: args.server, peer: end.peer, side: me };
        tasks.spawn(send_paced(sink, to, tick, args.burst, stop_at, ctx.stats.clone()));
        tasks.spawn(receive(stream, peer, ctx.stats.clone(), relayed.clone()));
    }
    // Senders stop at `stop_at`; then every frame sent must arrive.
    let settle_by = stop_at + Duration::from_secs(10);
    while Instant::now() < settle_by
        && (Instant::now() < stop_at || relayed.load(Ordering::Relaxed) < ctx.stats.sent.load(Ordering::Relaxed))
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let relayed = relayed.load(Ordering::Relaxed);
    ctx.stats.count("relayed", relayed);
    // A gap within a socket's frames shows here too: each frame is counted once it arrives.
    ctx.stats.lose(ctx.stats.sent.load(Ordering::Relaxed).saturating_sub(relayed));
    let mut report = phase.finish(ctx, "baseline", 0, relayed);
    drop(progress);
    tasks.abort_all();
    report.note("pairs", args.pairs as u64);
    report.note("rate_per_sec", args.rate);
    report.note("burst", args.burst as u64);
    report.note("server", args.server.name());
    Ok(report)
}

/// Where one socket's frames go, and which side of its pair it is.
struct Addressed {
    server: Server,
    peer: String,
    side: char,
}

/// Sends `burst` frames back to back every `tick` until `stop_at`; each carries its send
/// stamp, its number on this socket and the socket's side of the pair.
async fn send_paced(
    mut sink: SplitSink<Ws, Message>,
    to: Addressed,
    tick: Duration,
    burst: usize,
    stop_at: Instant,
    stats: Arc<Stats>,
) {
    let mut n = 0u64;
    let mut next = tokio::time::Instant::now();
    while Instant::now() < stop_at {
        for _ in 0..burst {
            n += 1;
            if sink.feed(to.server.frame(&to.peer, stats.stamp(), n, to.side, FRAME_BYTES)).await.is_err() {
                stats.error("send_failed");
                return;
            }
        }
        if sink.flush().await.is_err() {
            stats.error("send_failed");
            return;
        }
        stats.sent.fetch_add(burst as u64, Ordering::Relaxed);
        next += tick;
        tokio::time::sleep_until(next).await;
    }
}

/// Reads the peer's frames: latency from their stamps, repeats from their numbers, and that
/// they came from the other side of the pair.
async fn receive(stream: SplitStream<Ws>, peer: char, stats: Arc<Stats>, relayed: Arc<AtomicU64>) {
    let mut last = 0u64;
    read_each(stream, &stats, |f| {
        if f.tag != peer {
            stats.error("misrouted");
        } else if f.n <= last {
            stats.duplicate(1);
        } else {
            last = f.n;
            stats.record(Latency::Relay, stats.stamp_to(f.stamp, f.arrived));
            relayed.fetch_add(1, Ordering::Relaxed);
        }
    })
    .await;
}
