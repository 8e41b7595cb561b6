//! `storm`: every client drops its socket at once (no close frame, as when a network or a
//! node goes away) and reconnects with its session id and last sequence number. Meanwhile
//! patients keep arriving, so the queue keeps changing. Reports how many resumed, how long it
//! took, and lost or duplicated frames (sequence numbers are checked across the resume).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinSet;
use visithub::protocol::ServerMessage;

use super::Phase;
use super::population::{self, Patient};
use crate::conn::{Conn, Dial, Resumed};
use crate::progress::Progress;
use crate::report::Report;
use crate::stats::Latency;
use crate::target::{Context, parse_states};

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
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Step {
    Wait,
    Drop,
    Stop,
}

struct Shared {
    resumed: AtomicU64,
    failed: AtomicU64,
    /// Queue length per state once the churn stopped: every client's last position shows it.
    final_len: Vec<AtomicU32>,
}

pub async fn run(ctx: &Arc<Context>, args: &StormArgs) -> anyhow::Result<Report> {
    let states = parse_states(&args.states)?;
    let churn_max = (args.churn_rate * (args.settle_timeout_secs + 5) as f64).ceil() as usize;
    let per_state = args.clients.div_ceil(states.len()) + churn_max + 10;
    population::raise_caps(
        ctx,
        &states,
        u32::try_from(per_state).unwrap_or(u32::MAX).min(visithub::hub::MAX_QUEUE_CAP),
    )
    .await?;
    let patients = population::admit(ctx, args.clients, &states).await;
    let mut lengths: Vec<u32> =
        states.iter().map(|s| patients.iter().filter(|p| p.state == *s).count() as u32).collect();
    let conns = population::connect_all(ctx, patients.iter().map(|p| p.token.clone()).collect()).await;
    let shared = Arc::new(Shared {
        resumed: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        final_len: states.iter().map(|_| AtomicU32::new(0)).collect(),
    });
    let (step_tx, step_rx) = watch::channel(Step::Wait);
    let mut clients = JoinSet::new();
    let mut connected = 0u64;
    for (p, conn) in patients.into_iter().zip(conns) {
        if let Some(conn) = conn {
            connected += 1;
            let s = states.iter().position(|s| *s == p.state).expect("a state of the run");
            clients.spawn(client(ctx.clone(), p, s, conn, shared.clone(), step_rx.clone()));
        }
    }

    let phase = Phase::start(ctx);
    let progress = Progress::start(ctx.progress, "storm", "resumed", ctx.stats.clone());
    // Churn: patients keep arriving before, during and after the storm.
    let (churn_stop, mut churn_stopped) = watch::channel(false);
    let churn = {
        let ctx = ctx.clone();
        let states = states.clone();
        let rate = args.churn_rate;
        tokio::spawn(async move {
            let mut added = vec![0u32; states.len()];
            if rate <= 0.0 {
                return added;
            }
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            for i in 0..churn_max {
                tokio::select! {
                    _ = churn_stopped.changed() => break,
                    _ = tick.tick() => {}
                }
                let s = i % states.len();
                if population::admit_one(&ctx, 1_000_000 + i, states[s]).await.is_some() {
                    added[s] += 1;
                }
            }
            added
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let storm_at = Instant::now();
    let _ = step_tx.send(Step::Drop);
    let deadline = storm_at + Duration::from_secs(args.settle_timeout_secs);
    while shared.resumed.load(Ordering::SeqCst) + shared.failed.load(Ordering::SeqCst) < connected
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let settled_secs = storm_at.elapsed().as_secs_f64();
    let unsettled =
        connected.saturating_sub(shared.resumed.load(Ordering::SeqCst) + shared.failed.load(Ordering::SeqCst));
    for _ in 0..unsettled {
        ctx.stats.error("resume_timeout");
    }
    // A little more churn after the storm: resumed sessions must keep receiving.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _ = churn_stop.send(true);
    let added = churn.await.unwrap_or_default();
    for (s, n) in added.iter().enumerate() {
        lengths[s] += n;
        shared.final_len[s].store(lengths[s], Ordering::SeqCst);
    }
    // The last position update of the churn reaches everyone.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut report = phase.finish(ctx, "storm", connected, 0);
    drop(progress);
    let _ = step_tx.send(Step::Stop);
    while clients.join_next().await.is_some() {}
    report = crate::report::Report { errors: ctx.stats.errors(), error_total: ctx.stats.error_total(), ..report };
    report.lost_events = ctx.stats.lost.load(Ordering::Relaxed);
    report.duplicated_events = ctx.stats.duplicated.load(Ordering::Relaxed);
    report.note("clients", connected);
    report.note("settled_secs", settled_secs);
    report.note("resumed", shared.resumed.load(Ordering::SeqCst));
    report.note("not_resumed", shared.failed.load(Ordering::SeqCst) + unsettled);
    Ok(report)
}

async fn client(
    ctx: Arc<Context>,
    p: Patient,
    state: usize,
    mut conn: Conn,
    shared: Arc<Shared>,
    mut step: watch::Receiver<Step>,
) {
    let stats = ctx.stats.clone();
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
                    Step::Drop if !dropped => {
                        dropped = true;
                        let started = Instant::now();
                        conn.drop_socket();
                        let dial = Dial { addr: ctx.targets.pick().addr, token: &p.token, source: None };
                        match conn.resume(&dial).await {
                            Ok(Resumed::Recovered) => {
                                stats.record(Latency::Resume, started.elapsed());
                                stats.count("resumed", 1);
                                shared.resumed.fetch_add(1, Ordering::SeqCst);
                            }
                            Ok(Resumed::NotRecovered) => {
                                stats.error("not_recovered");
                                shared.failed.fetch_add(1, Ordering::SeqCst);
                            }
                            Err(_) => {
                                shared.failed.fetch_add(1, Ordering::SeqCst);
                                return;
                            }
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
    // The newest position must show the queue as it ended: a missing update is lost.
    if last_len != Some(shared.final_len[state].load(Ordering::SeqCst)) {
        stats.lose(1);
        stats.count("stale_positions", 1);
    }
    conn.close().await;
}
