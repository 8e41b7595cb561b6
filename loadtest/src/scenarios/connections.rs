//! `connections`: opens many idle authenticated sockets from several worker processes (this
//! binary re-run as `worker`), each binding its own source address (127.0.0.2, 127.0.0.3, ...)
//! to get past one process's open-file limit and one address's ephemeral ports. Reports the
//! accept rate and, given the hub's pids, its resident memory and CPU per connection.
//!
//! The parent mints the tokens and hands them to each worker on standard input, then says
//! `go`; a worker answers `ready <json>` once its sockets are open, and `done <json>` after
//! `close`.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use futures_util::StreamExt;
use futures_util::stream;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;
use tokio::sync::watch;
use tokio::task::JoinSet;
use visithub::model::Role;

use super::Phase;
use super::population::CONNECT_CONCURRENCY;
use crate::conn::{Conn, Dial};
use crate::progress::Progress;
use crate::report::Report;
use crate::stats::{Latency, Stats};
use crate::target::{Context, Targets};

/// Sockets one worker opens at most: under the 20,000 open files one process may hold.
pub const MAX_PER_WORKER: usize = 18_000;

#[derive(Debug, Clone, clap::Args)]
pub struct ConnectionsArgs {
    /// Idle authenticated connections to open (admin sessions, one subject each).
    #[arg(long, default_value_t = 1000)]
    pub count: usize,
    /// Worker processes (0: one per 10,000 connections).
    #[arg(long, default_value_t = 0)]
    pub processes: usize,
    /// Source address of the first worker; the next ones count up from it (127.0.0.2,
    /// 127.0.0.3, ...). "none" lets the system choose.
    #[arg(long, default_value = "127.0.0.2")]
    pub source_base: String,
    /// Seconds to hold the connections open before the memory reading and closing.
    #[arg(long, default_value_t = 3)]
    pub hold_secs: u64,
    /// The program run as a worker (default: this one).
    #[arg(long, hide = true)]
    pub worker_exe: Option<PathBuf>,
}

/// The hidden `worker` command.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    /// Hub URL(s) to connect to.
    #[arg(long = "target", required = true)]
    pub targets: Vec<String>,
    /// Source address to bind.
    #[arg(long)]
    pub source: Option<IpAddr>,
}

/// What a worker reports.
#[derive(Debug, Serialize, Deserialize, Default)]
struct WorkerReport {
    connected: u64,
    received: u64,
    errors: std::collections::BTreeMap<String, u64>,
    /// The connect-latency histogram, V2-serialized and base64-encoded.
    connect_histogram: String,
}

pub async fn run(ctx: &Arc<Context>, args: &ConnectionsArgs) -> anyhow::Result<Report> {
    let processes = match args.processes {
        0 => args.count.div_ceil(10_000).max(1),
        n => n,
    };
    let per_worker = args.count.div_ceil(processes);
    anyhow::ensure!(
        per_worker <= MAX_PER_WORKER,
        "{per_worker} sockets per worker is over {MAX_PER_WORKER}: use more --processes"
    );
    let exe = match &args.worker_exe {
        Some(p) => p.clone(),
        None => std::env::current_exe()?,
    };
    let base: Option<Ipv4Addr> = match args.source_base.as_str() {
        "none" => None,
        s => Some(s.parse().map_err(|_| anyhow::anyhow!("--source-base {s:?} is not an IPv4 address"))?),
    };

    let mut workers = Vec::new();
    for w in 0..processes {
        let n = per_worker.min(args.count - (w * per_worker).min(args.count));
        if n == 0 {
            break;
        }
        let mut cmd = Command::new(&exe);
        cmd.arg("worker");
        for url in ctx.targets.urls() {
            cmd.arg("--target").arg(url);
        }
        if let Some(base) = base {
            let ip = Ipv4Addr::from(u32::from(base) + w as u32);
            cmd.arg("--source").arg(ip.to_string());
        }
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit()).kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| anyhow::anyhow!("cannot start worker {}: {e}", exe.display()))?;
        let mut stdin = child.stdin.take().expect("piped stdin");
        let mut tokens = String::with_capacity(n * 300);
        for i in 0..n {
            tokens.push_str(&ctx.auth.token(Role::Admin, &format!("lt-{}-conn-{w}-{i}", ctx.run_id), 4 * 3600));
            tokens.push('\n');
        }
        stdin.write_all(tokens.as_bytes()).await?;
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        workers.push((child, stdin, stdout));
    }

    let phase = Phase::start(ctx);
    let progress = Progress::start(ctx.progress, "connections", "connected", ctx.stats.clone());
    let started = Instant::now();
    for (_, stdin, _) in &mut workers {
        stdin.write_all(b"go\n").await?;
    }
    let mut connected = 0u64;
    let mut last_ready = started;
    for (_, _, lines) in &mut workers {
        let mut seen = 0u64;
        while let Some(line) = lines.next_line().await? {
            if let Some(n) = line.strip_prefix("progress ") {
                let n: u64 = n.trim().parse().unwrap_or(seen);
                ctx.stats.open.fetch_add(n.saturating_sub(seen), std::sync::atomic::Ordering::Relaxed);
                seen = n;
            } else if let Some(json) = line.strip_prefix("ready ") {
                let r: WorkerReport = serde_json::from_str(json)?;
                ctx.stats.open.fetch_add(r.connected.saturating_sub(seen), std::sync::atomic::Ordering::Relaxed);
                merge(&ctx.stats, &r)?;
                ctx.stats.count("connected", r.connected);
                connected += r.connected;
                last_ready = Instant::now();
                break;
            }
        }
    }
    let accept_secs = last_ready.duration_since(started).as_secs_f64();
    tokio::time::sleep(Duration::from_secs(args.hold_secs)).await;
    let mut report = phase.finish(ctx, "connections", connected, 0);
    drop(progress);
    for (_, stdin, _) in &mut workers {
        let _ = stdin.write_all(b"close\n").await;
    }
    for (mut child, _, mut lines) in workers {
        while let Some(line) = lines.next_line().await? {
            if let Some(json) = line.strip_prefix("done ") {
                let r: WorkerReport = serde_json::from_str(json)?;
                ctx.stats.add_errors(&r.errors);
                break;
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
    }
    report.errors = ctx.stats.errors();
    report.error_total = ctx.stats.error_total();
    report.note("connections", connected);
    report.note("processes", processes as u64);
    report.note("accept_secs", accept_secs);
    report.note("accepted_per_sec", if accept_secs > 0.0 { connected as f64 / accept_secs } else { 0.0 });
    Ok(report)
}

fn merge(stats: &Stats, r: &WorkerReport) -> anyhow::Result<()> {
    stats.add_errors(&r.errors);
    stats.received.fetch_add(r.received, std::sync::atomic::Ordering::Relaxed);
    if !r.connect_histogram.is_empty() {
        let bytes = STANDARD.decode(&r.connect_histogram)?;
        let h: hdrhistogram::Histogram<u64> = Deserializer::new()
            .deserialize(&mut bytes.as_slice())
            .map_err(|e| anyhow::anyhow!("worker histogram: {e:?}"))?;
        stats.merge(Latency::Connect, &h);
    }
    Ok(())
}

/// A worker: reads tokens until `go`, opens one socket per token, reports, holds them (reading,
/// so pings are answered) until `close`, closes them and reports again.
pub async fn run_worker(args: WorkerArgs) -> anyhow::Result<()> {
    let targets = Arc::new(Targets::resolve(&args.targets).await?);
    let stats = Arc::new(Stats::default());
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let mut tokens = Vec::new();
    while let Some(line) = stdin.next_line().await? {
        if line == "go" {
            break;
        }
        tokens.push(line);
    }
    anyhow::ensure!(tokens.len() <= MAX_PER_WORKER, "too many sockets for one worker");
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut holders = JoinSet::new();
    let progress = {
        let stats = stats.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                println!("progress {}", stats.open.load(std::sync::atomic::Ordering::Relaxed));
            }
        })
    };
    let mut opened = stream::iter(tokens)
        .map(|token| {
            let (stats, addr) = (stats.clone(), targets.pick().addr);
            let source = args.source;
            async move { Conn::open(&Dial { addr, token: &token, source }, stats).await.ok() }
        })
        .buffer_unordered(CONNECT_CONCURRENCY);
    let mut connected = 0u64;
    while let Some(conn) = opened.next().await {
        if let Some(conn) = conn {
            connected += 1;
            holders.spawn(hold(conn, stop_rx.clone()));
        }
    }
    progress.abort();
    println!("ready {}", serde_json::to_string(&worker_report(&stats, connected)?)?);
    while let Some(line) = stdin.next_line().await? {
        if line == "close" {
            break;
        }
    }
    let _ = stop_tx.send(true);
    while holders.join_next().await.is_some() {}
    println!("done {}", serde_json::to_string(&worker_report(&stats, connected)?)?);
    Ok(())
}

fn worker_report(stats: &Stats, connected: u64) -> anyhow::Result<WorkerReport> {
    let mut bytes = Vec::new();
    V2Serializer::new()
        .serialize(&stats.histogram(Latency::Connect), &mut bytes)
        .map_err(|e| anyhow::anyhow!("histogram: {e:?}"))?;
    Ok(WorkerReport {
        connected,
        received: stats.received.load(std::sync::atomic::Ordering::Relaxed),
        errors: stats.errors(),
        connect_histogram: STANDARD.encode(bytes),
    })
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
