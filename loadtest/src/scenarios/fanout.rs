//! `fanout`: many idle patients wait in a few queues while the queues change (the patient at
//! the head cancels); measures how long until every patient behind has its new position.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinSet;
use visithub::protocol::ServerMessage;

use super::Phase;
use super::population::{self, Patient};
use crate::conn::Conn;
use crate::progress::Progress;
use crate::report::Report;
use crate::stats::{Latency, Stats};
use crate::target::{Context, parse_states};

#[derive(Debug, Clone, clap::Args)]
pub struct FanoutArgs {
    /// Waiting patients, spread over the states.
    #[arg(long, default_value_t = 1000)]
    pub patients: usize,
    /// States whose queues they wait in, comma-separated.
    #[arg(long, default_value = "WA")]
    pub states: String,
    /// Queue changes (one cancellation at the head of a queue each).
    #[arg(long, default_value_t = 10)]
    pub changes: usize,
    /// Seconds one change may take to reach everyone before the missing count as lost.
    #[arg(long, default_value_t = 10)]
    pub change_timeout_secs: u64,
}

/// The change under way in one state's queue.
#[derive(Default)]
struct Round {
    number: AtomicU64,
    /// The queue length every waiting patient's next position will show.
    expected_len: AtomicU32,
    /// When the change was made ([`Stats::stamp`]).
    made_at: AtomicU64,
    /// Patients who have their new position.
    reached: AtomicU64,
}

pub async fn run(ctx: &Arc<Context>, args: &FanoutArgs) -> anyhow::Result<Report> {
    let states = parse_states(&args.states)?;
    let per_state = args.patients.div_ceil(states.len());
    let cap = u32::try_from(per_state + 10).unwrap_or(u32::MAX).min(visithub::hub::MAX_QUEUE_CAP);
    population::raise_caps(ctx, &states, cap).await?;
    let patients = population::admit(ctx, args.patients, &states).await;
    let conns = population::connect_all(ctx, patients.iter().map(|p| p.token.clone()).collect()).await;

    let rounds: Arc<Vec<Round>> = Arc::new(states.iter().map(|_| Round::default()).collect());
    let (stop_tx, stop_rx) = watch::channel(false);
    // Per state: the patients in queue order, and whether each has a socket.
    let mut queues: Vec<VecDeque<(Patient, bool)>> = states.iter().map(|_| VecDeque::new()).collect();
    let mut watchers = JoinSet::new();
    for (p, conn) in patients.into_iter().zip(conns) {
        let s = states.iter().position(|s| *s == p.state).expect("a state of the run");
        queues[s].push_back((p, conn.is_some()));
        if let Some(conn) = conn {
            watchers.spawn(watch_position(conn, s, rounds.clone(), ctx.stats.clone(), stop_rx.clone()));
        }
    }
    // Queue lengths as the hub has them: every admitted patient waits.
    let mut lengths: Vec<u32> = queues.iter().map(|q| q.len() as u32).collect();

    let phase = Phase::start(ctx);
    let progress = Progress::start(ctx.progress, "fanout", "positions", ctx.stats.clone());
    let mut reached_total = 0u64;
    for change in 0..args.changes {
        let s = change % states.len();
        let Some((head, _)) = queues[s].pop_front() else { break };
        let waiting_connected = queues[s].iter().filter(|(_, c)| *c).count() as u64;
        let round = &rounds[s];
        round.reached.store(0, Ordering::SeqCst);
        round.expected_len.store(lengths[s] - 1, Ordering::SeqCst);
        round.made_at.store(ctx.stats.stamp(), Ordering::SeqCst);
        round.number.fetch_add(1, Ordering::SeqCst);
        if let Err(code) = ctx.rest.cancel(&ctx.targets.pick().base, &head.token, &head.visit_id).await {
            ctx.stats.error(&code);
            continue;
        }
        lengths[s] -= 1;
        let deadline = Instant::now() + Duration::from_secs(args.change_timeout_secs);
        while round.reached.load(Ordering::SeqCst) < waiting_connected && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let reached = round.reached.load(Ordering::SeqCst).min(waiting_connected);
        ctx.stats.lose(waiting_connected - reached);
        reached_total += reached;
        ctx.stats.count("changes", 1);
    }
    let mut report = phase.finish(ctx, "fanout", 0, 0);
    drop(progress);
    let _ = stop_tx.send(true);
    while watchers.join_next().await.is_some() {}
    report.note("patients", args.patients as u64);
    report.note("states", args.states.clone());
    report.note("positions_expected", reached_total);
    Ok(report)
}

/// One waiting patient: times each change's position update; ends when told to stop.
async fn watch_position(
    mut conn: Conn,
    state: usize,
    rounds: Arc<Vec<Round>>,
    stats: Arc<Stats>,
    mut stop: watch::Receiver<bool>,
) {
    let mut last_round = 0;
    loop {
        let frame = tokio::select! {
            _ = stop.changed() => break,
            frame = conn.next(Duration::from_secs(3600)) => frame,
        };
        let Ok(frame) = frame else { break };
        if let ServerMessage::QueuePosition(q) = &frame.msg {
            let round = &rounds[state];
            let number = round.number.load(Ordering::SeqCst);
            if number > last_round && q.queue_length == round.expected_len.load(Ordering::SeqCst) {
                last_round = number;
                stats.record(Latency::Fanout, stats.since_stamp(round.made_at.load(Ordering::SeqCst)));
                stats.count("positions", 1);
                round.reached.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
    conn.close().await;
}
