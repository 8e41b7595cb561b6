//! `storm`: every client drops its socket at once (no close frame, as when a network or a
//! node goes away) and reconnects with its session id and last sequence number. Meanwhile
//! patients keep arriving, so the queue keeps changing. Reports how many resumed, how long it
//! took, and lost or duplicated frames (sequence numbers are checked across the resume).
//!
//! The clients live in worker processes (see [`crate::workers`]), so the load generator's
//! redialling is spread over processes. The parent admits the patients and hands each worker
//! `<state index> <token>` lines; once every worker is `ready` (sockets open, session ids and
//! last sequence numbers held) it says `drop <settle timeout secs>` to all of them at once.
//! Each worker answers `settled` when each of its clients resumed or failed, and after
//! `stop <final queue lengths>` checks every client's last position and answers `done`.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use visithub::protocol::ServerMessage;

use super::Phase;
use super::population;
use crate::conn::{Conn, Dial, Resumed};
use crate::progress::Progress;
use crate::report::Report;
use crate::stats::{Latency, Stats};
use crate::target::{Context, Targets, parse_states};
use crate::workers::{Link, WorkerArgs, WorkerOpts, WorkerScenario, Workers};

/// Clients per worker process when `--processes` is not given.
const PER_PROCESS: usize = 7_500;
/// How long opening one worker's sockets may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(300);
/// How long past the settle timeout a worker may take to say it settled: it enforces the
/// timeout itself, so only a stuck worker takes longer.
const SETTLE_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, clap::Args)]
pub struct StormArgs {
    /// Waiting patients, each with a socket, all dropped at once.
    #[arg(long, default_value_t = 500)]
    pub clients: usize,
    /// States they wait in, comma-separated.
    #[arg(long, default_value = "WA")]
    pub states: String,
    /// New patients per second while the storm goes on (each changes every position).
    #[arg(long, default_value_t = 5.0)]
    pub churn_rate: f64,
    /// Seconds the resumptions may take before the rest count as failed.
    #[arg(long, default_value_t = 30)]
    pub settle_timeout_secs: u64,
    #[command(flatten)]
    pub workers: WorkerOpts,
}

pub async fn run(ctx: &Arc<Context>, args: &StormArgs) -> anyhow::Result<Report> {
    let states = parse_states(&args.states)?;
    let churn_max = (args.churn_rate * (args.settle_timeout_secs + 5) as f64).ceil() as usize;
    let per_state = args.clients.div_ceil(states.len()) + churn_max + 10;
    population::raise_caps(ctx, &states, per_state).await?;
    let patients = population::admit(ctx, args.clients, &states).await;
    let split = args.workers.split(patients.len(), PER_PROCESS)?;
    let jobs = split
        .iter()
        .map(|range| {
            patients[range.clone()]
                .iter()
                .map(|p| {
                    let s = states.iter().position(|s| *s == p.state).expect("a state of the run");
                    format!("{s} {}", p.token)
                })
                .collect()
        })
        .collect();
    let mut workers = Workers::start(ctx, &args.workers, WorkerScenario::Storm, jobs).await?;
    workers.send_all("go").await?;
    let ready = workers.wait_all("ready", OPEN_TIMEOUT).await?;
    let connected: u64 = ready.snapshots.iter().map(|s| s.open).sum();

    let phase = Phase::start(ctx);
    let progress = Progress::start(ctx.progress, "storm", "resumed", ctx.stats.clone());
    // Churn: patients keep arriving before, during and after the storm.
    let (churn_stop, mut churn_stopped) = watch::channel(false);
    let churn = {
        let ctx = ctx.clone();
        let states = states.clone();
        let rate = args.churn_rate;
        tokio::spawn(async move {
            if rate <= 0.0 {
                return;
            }
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            for i in 0..churn_max {
                tokio::select! {
                    _ = churn_stopped.changed() => break,
                    _ = tick.tick() => {}
                }
                population::admit_one(&ctx, 1_000_000 + i, states[i % states.len()]).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let storm_at = Instant::now();
    workers.send_all(&format!("drop {}", args.settle_timeout_secs)).await?;
    let settle_within = Duration::from_secs(args.settle_timeout_secs) + SETTLE_GRACE;
    let settled = workers.wait_all("settled", settle_within).await?;
    let settled_secs = settled.last.duration_since(storm_at).as_secs_f64();
    // A little more churn after the storm: resumed sessions must keep receiving.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _ = churn_stop.send(true);
    let _ = churn.await;
    // The last position update of the churn reaches everyone; the hub says what it is.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let final_len = population::queue_lengths(ctx, &states).await?;
    workers.sync().await?;
    let mut report = phase.finish(ctx, "storm", connected, 0);
    drop(progress);
    workers.send_all(&format!("stop {}", serde_json::to_string(&final_len)?)).await?;
    workers.wait_all("done", Duration::from_secs(60)).await?;
    workers.finish().await;
    // Counted after the phase: a client's last check comes when it stops.
    report.errors = ctx.stats.errors();
    report.error_total = ctx.stats.error_total();
    report.lost_events = ctx.stats.lost.load(std::sync::atomic::Ordering::Relaxed);
    report.duplicated_events = ctx.stats.duplicated.load(std::sync::atomic::Ordering::Relaxed);
    let resumed = ctx.stats.counted("resumed");
    report.note("clients", connected);
    report.note("settled_secs", settled_secs);
    report.note("resumed", resumed);
    report.note("not_resumed", connected.saturating_sub(resumed));
    report.note("processes", split.len() as u64);
    report.note("handshakes", args.workers.handshakes as u64);
    Ok(report)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Step {
    Wait,
    /// Drop and resume; what is not resumed by then has failed.
    Drop(tokio::time::Instant),
    Stop,
}

/// What every client of a worker shares.
struct Crowd {
    targets: Targets,
    source: Option<std::net::IpAddr>,
    stats: Arc<Stats>,
    /// Bounds the resumes in flight, so a storm measures the hub rather than a pile of
    /// handshakes waiting in this process.
    handshakes: Semaphore,
    /// Queue length per state once the churn stopped: every client's last position shows it.
    final_len: OnceLock<Vec<u32>>,
}

/// A worker: opens a socket per `<state> <token>` job, reports `ready`; on `drop <secs>`
/// drops them all and resumes each (at most `--handshakes` at once), reports `settled` once
/// each resumed or failed; on `stop <lengths>` checks each client's last position, reports
/// `done`.
pub async fn worker(args: &WorkerArgs) -> anyhow::Result<()> {
    let stats = Arc::new(Stats::default());
    let (mut link, jobs) = Link::start(stats.clone()).await?;
    let mut clients_states = Vec::with_capacity(jobs.len());
    let mut tokens = Vec::with_capacity(jobs.len());
    for job in jobs {
        let (state, token) = job.split_once(' ').ok_or_else(|| anyhow::anyhow!("a job is `<state> <token>`"))?;
        clients_states.push(state.parse::<usize>()?);
        tokens.push(token.to_string());
    }
    let crowd = Arc::new(Crowd {
        targets: Targets::resolve(&args.targets).await?,
        source: args.source,
        stats: stats.clone(),
        handshakes: Semaphore::new(args.handshakes.max(1)),
        final_len: OnceLock::new(),
    });
    let conns = Conn::open_all(&crowd.targets, tokens.clone(), args.source, args.handshakes, &stats).await;
    let (step_tx, step_rx) = watch::channel(Step::Wait);
    let (settle_tx, settle_rx) = mpsc::unbounded_channel();
    let mut clients = JoinSet::new();
    for ((state, token), conn) in clients_states.into_iter().zip(tokens).zip(conns) {
        if let Some(conn) = conn {
            let client = client(crowd.clone(), state, token, conn, step_rx.clone(), settle_tx.clone());
            clients.spawn(client);
        }
    }
    drop(settle_tx);
    let count = clients.len();
    link.report("ready")?;
    let mut settle_rx = Some(settle_rx);
    let mut settling = None;
    while let Some(command) = link.command().await? {
        let (verb, rest) = command.split_once(' ').unwrap_or((command.as_str(), ""));
        match verb {
            "drop" => {
                let secs: u64 = rest.parse()?;
                let _ = step_tx.send(Step::Drop(tokio::time::Instant::now() + Duration::from_secs(secs)));
                let (Some(mut settle_rx), stats) = (settle_rx.take(), stats.clone()) else { continue };
                settling = Some(tokio::spawn(async move {
                    // Each client says once that it is done with the storm, whichever way.
                    for _ in 0..count {
                        if settle_rx.recv().await.is_none() {
                            break;
                        }
                    }
                    let _ = crate::workers::report("settled", &stats);
                }));
            }
            "snapshot" => link.report("snapshot")?,
            "stop" => {
                let _ = crowd.final_len.set(serde_json::from_str(rest)?);
                break;
            }
            other => anyhow::bail!("unknown command {other:?}"),
        }
    }
    let _ = step_tx.send(Step::Stop);
    while clients.join_next().await.is_some() {}
    if let Some(settling) = settling {
        settling.abort();
    }
    link.report("done")
}

async fn client(
    crowd: Arc<Crowd>,
    state: usize,
    token: String,
    mut conn: Conn,
    mut step: watch::Receiver<Step>,
    settle: mpsc::UnboundedSender<()>,
) {
    let stats = &crowd.stats;
    let mut last_len = None;
    let mut dropped = false;
    loop {
        let frame = tokio::select! {
            changed = step.changed() => {
                if changed.is_err() {
                    break;
                }
                let now = *step.borrow();
                match now {
                    Step::Drop(deadline) if !dropped => {
                        dropped = true;
                        let resumed = resume(&crowd, &mut conn, &token, deadline).await;
                        let _ = settle.send(());
                        if !resumed {
                            return;
                        }
                        continue;
                    }
                    Step::Stop => break,
                    _ => continue,
                }
            }
            frame = conn.next(Duration::from_secs(3600)) => frame,
        };
        match frame {
            Ok(frame) => {
                if let ServerMessage::QueuePosition(q) = &frame.msg {
                    last_len = Some(q.queue_length);
                }
            }
            Err(_) => break,
        }
    }
    if !dropped {
        // Ended before the storm (its cause is counted by code): it will never resume.
        let _ = settle.send(());
    }
    // The newest position must show the queue as it ended: a missing update is lost.
    let want = crowd.final_len.get().and_then(|lens| lens.get(state).copied());
    if last_len != want {
        stats.lose(1);
        stats.count("stale_positions", 1);
    }
    conn.close().await;
}

/// Drops the socket and resumes the session, waiting its turn among the handshakes in flight;
/// the latency counts from the drop. False when the client cannot go on (counted by code).
async fn resume(crowd: &Crowd, conn: &mut Conn, token: &str, deadline: tokio::time::Instant) -> bool {
    let stats = &crowd.stats;
    let started = Instant::now();
    conn.drop_socket();
    let dial = Dial { addr: crowd.targets.pick().addr, token, source: crowd.source };
    let attempt = async {
        let _turn = crowd.handshakes.acquire().await.expect("the semaphore is never closed");
        conn.resume(&dial).await
    };
    match tokio::time::timeout_at(deadline, attempt).await {
        Ok(Ok(Resumed::Recovered)) => {
            stats.record(Latency::Resume, started.elapsed());
            stats.count("resumed", 1);
            true
        }
        Ok(Ok(Resumed::NotRecovered)) => {
            stats.error("not_recovered");
            true
        }
        Ok(Err(_)) => false,
        Err(_) => {
            stats.error("resume_timeout");
            false
        }
    }
}
