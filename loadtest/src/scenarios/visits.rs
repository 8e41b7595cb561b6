//! `visits`: patients arrive at a rate across several states. Each does intake, waits with
//! live position updates, chats with support, is claimed by a provider licensed in its state,
//! negotiates WebRTC through the hub (a browser-sized offer and answer, trickled candidates),
//! holds the visit (optionally exchanging more signaling), and the provider ends it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use visithub::model::{Role, UsState, VisitStatus};
use visithub::protocol::{ChatSend, ClientMessage, ServerFrame, ServerMessage, SignalEnd, VisitRef, VisitTransition};

mod desk;
mod held;

use super::population::{self, TOKEN_TTL_SECS};
use super::{Phase, payloads};
use crate::conn::{Conn, ConnError, Dial};
use crate::progress::Progress;
use crate::report::Report;
use crate::stats::Latency;
use crate::target::{Context, parse_states};

/// Most visits one run starts, whatever the rate and duration.
const MAX_VISITS: usize = 200_000;
/// How long a patient waits for each step (support's greeting, a claim, the end).
const STEP_TIMEOUT: Duration = Duration::from_secs(60);
/// Frames in one burst: 64 candidates of ~600 bytes stay within the hub's per-socket rate
/// burst when it is raised for relay runs, and within a few of the client's 8 KiB writes.
const MAX_SIGNAL_BURST: u32 = 64;
/// Conversations one support person is given at once (the hub's default cap is 20).
const CONVERSATIONS_PER_SUPPORT: f64 = 15.0;

#[derive(Debug, Clone, clap::Args)]
pub struct VisitsArgs {
    /// New patients per second.
    #[arg(long, default_value_t = 5.0)]
    pub rate: f64,
    /// Seconds during which patients arrive; the visits under way then finish.
    #[arg(long, default_value_t = 20)]
    pub duration_secs: u64,
    /// States the patients are in, comma-separated.
    #[arg(long, default_value = "WA,OR,CA,ID")]
    pub states: String,
    /// Seconds a visit stays `in_visit`.
    #[arg(long, default_value_t = 1.0)]
    pub hold_secs: f64,
    /// Signaling messages per second each participant sends while in the visit (trickled
    /// candidates, ~600-byte frames). Paced under the hub's per-socket rate limit.
    #[arg(long, default_value_t = 0.0)]
    pub signal_rate: f64,
    /// Signaling messages written back to back in one `write` while in the visit, as a
    /// client that batches (the rate stays `--signal-rate` messages per second).
    #[arg(long, default_value_t = 1)]
    pub signal_burst: u32,
    /// Candidates each side trickles after its offer or answer.
    #[arg(long, default_value_t = 4)]
    pub candidates: u32,
    /// Providers, each licensed in one of the states (0: enough for the rate).
    #[arg(long, default_value_t = 0)]
    pub providers: usize,
    /// Support staff covering all the states, each in up to 15 conversations (0: enough).
    #[arg(long, default_value_t = 0)]
    pub support: usize,
}

/// One visit as both of its participants see it.
struct Visit {
    visit_id: String,
    /// Send times (and request ids) of signaling in flight towards each side: the hub relays
    /// in order, so the receiver takes the front.
    to_patient: Mutex<VecDeque<(String, Instant)>>,
    to_provider: Mutex<VecDeque<(String, Instant)>>,
    patient_done: AtomicBool,
}

#[derive(Clone, Copy, PartialEq)]
enum Side {
    Patient,
    Provider,
}

impl Visit {
    fn inbox(&self, side: Side) -> &Mutex<VecDeque<(String, Instant)>> {
        match side {
            Side::Patient => &self.to_patient,
            Side::Provider => &self.to_provider,
        }
    }

    fn outbox(&self, side: Side) -> &Mutex<VecDeque<(String, Instant)>> {
        match side {
            Side::Patient => &self.to_provider,
            Side::Provider => &self.to_patient,
        }
    }
}

struct Shared {
    ctx: Arc<Context>,
    args: VisitsArgs,
    states: Vec<UsState>,
    /// Visits ready to be claimed, one queue per state.
    jobs: Vec<mpsc::Sender<Arc<Visit>>>,
    /// Conversations for each support person to join: visit id, and whether it greeted.
    support: Vec<mpsc::Sender<(String, oneshot::Sender<bool>)>>,
    /// Participants in their hold, for the relay's steady phase.
    holding: Arc<held::Holding>,
}

pub async fn run(ctx: &Arc<Context>, args: &VisitsArgs) -> anyhow::Result<Report> {
    anyhow::ensure!(args.rate > 0.0, "--rate must be positive");
    anyhow::ensure!(
        (1..=MAX_SIGNAL_BURST).contains(&args.signal_burst),
        "--signal-burst must be 1 to {MAX_SIGNAL_BURST}"
    );
    let states = parse_states(&args.states)?;
    let total = ((args.rate * args.duration_secs as f64).round() as usize).clamp(1, MAX_VISITS);
    let lifecycle = args.hold_secs + 3.0;
    let providers = match args.providers {
        0 => (args.rate * lifecycle).ceil() as usize + states.len(),
        n => n.max(states.len()),
    };
    let support = match args.support {
        0 => (args.rate * (lifecycle + 2.0) / CONVERSATIONS_PER_SUPPORT).ceil() as usize + 1,
        n => n,
    };

    // Setup: caregivers onboarded and connected before the clock starts.
    let provider_ids =
        population::onboard(ctx, "provider", providers, Role::Provider, |i| vec![states[i % states.len()]]).await?;
    let support_ids = population::onboard(ctx, "support", support, Role::Support, |_| states.clone()).await?;
    let tokens = |ids: &[(String, Vec<UsState>)], role| -> Vec<String> {
        ids.iter().map(|(sub, _)| ctx.auth.token(role, sub, TOKEN_TTL_SECS)).collect()
    };
    let provider_conns = population::connect_all(ctx, tokens(&provider_ids, Role::Provider)).await;
    let support_conns = population::connect_all(ctx, tokens(&support_ids, Role::Support)).await;

    let mut caregivers = JoinSet::new();
    let mut job_rx: Vec<Arc<tokio::sync::Mutex<mpsc::Receiver<Arc<Visit>>>>> = Vec::new();
    let mut jobs = Vec::new();
    for _ in &states {
        let (tx, rx) = mpsc::channel(MAX_VISITS);
        jobs.push(tx);
        job_rx.push(Arc::new(tokio::sync::Mutex::new(rx)));
    }
    let mut support_tx = Vec::new();
    let mut support_rx = Vec::new();
    for conn in support_conns.into_iter().flatten() {
        let (tx, rx) = mpsc::channel(MAX_VISITS);
        support_tx.push(tx);
        support_rx.push((conn, rx));
    }
    anyhow::ensure!(!support_tx.is_empty(), "no support socket opened: {:?}", ctx.stats.errors());
    let holding = held::Holding::new(total);
    let shared = Arc::new(Shared {
        ctx: ctx.clone(),
        args: args.clone(),
        states: states.clone(),
        jobs,
        support: support_tx,
        holding: holding.clone(),
    });
    for (i, conn) in provider_conns.into_iter().enumerate() {
        if let Some(conn) = conn {
            caregivers.spawn(provider(shared.clone(), conn, job_rx[i % states.len()].clone()));
        }
    }
    for (conn, rx) in support_rx {
        caregivers.spawn(desk::support_person(shared.clone(), conn, rx));
    }

    let phase = Phase::start(ctx);
    let progress = Progress::start(ctx.progress, "visits", "visits_completed", ctx.stats.clone());
    let held = tokio::spawn(held::watch(ctx.clone(), holding));
    let mut patients = JoinSet::new();
    let started = Instant::now();
    for i in 0..total {
        tokio::time::sleep_until((started + Duration::from_secs_f64(i as f64 / args.rate)).into()).await;
        patients.spawn(patient(shared.clone(), i));
    }
    // Every visit is bounded by its steps' timeouts; this is the backstop.
    let backstop = Duration::from_secs_f64(args.hold_secs) + STEP_TIMEOUT * 4;
    if tokio::time::timeout(backstop, async { while patients.join_next().await.is_some() {} }).await.is_err() {
        ctx.stats.error("unfinished_visit");
        patients.abort_all();
    }
    let mut report = phase.finish(ctx, "visits", 0, ctx.stats.counted("relayed"));
    drop(progress);
    if !held.is_finished() {
        held.abort(); // some visit never reached its hold
    } else if let Ok(Some(window)) = held.await {
        window.note(&mut report);
    }
    drop(shared);
    let _ =
        tokio::time::timeout(Duration::from_secs(10), async { while caregivers.join_next().await.is_some() {} }).await;
    caregivers.abort_all();
    report.note("rate_per_sec", args.rate);
    report.note("visits_started", total as u64);
    report.note("hold_secs", args.hold_secs);
    report.note("signal_rate_per_side", args.signal_rate);
    report.note("signal_burst", u64::from(args.signal_burst));
    report.note("providers", providers as u64);
    report.note("support", support as u64);
    report.note("states", args.states.clone());
    Ok(report)
}

/// Sends one signaling message, noting when it left for the peer's relay latency.
async fn signal(conn: &mut Conn, v: &Visit, side: Side, msg: ClientMessage) -> Result<(), ConnError> {
    feed_signal(conn, v, side, msg).await?;
    conn.flush().await
}

/// Paces and writes a signaling message into the socket's buffer; `Conn::flush` sends it.
async fn feed_signal(conn: &mut Conn, v: &Visit, side: Side, msg: ClientMessage) -> Result<(), ConnError> {
    conn.pace().await?;
    // Noted before it leaves: the peer may read it before this task runs again.
    v.outbox(side).lock().expect("relay lock").push_back((conn.next_request_id(), Instant::now()));
    conn.feed_now(&msg).await?;
    Ok(())
}

/// What any frame means for this side of the visit: relayed signaling is timed; an error
/// reply to a signaling request means that message will never arrive.
fn handle(sh: &Shared, v: &Visit, side: Side, frame: &ServerFrame, arrived: Instant) {
    let stats = &sh.ctx.stats;
    match &frame.msg {
        ServerMessage::SignalOffer(_)
        | ServerMessage::SignalAnswer(_)
        | ServerMessage::SignalCandidate(_)
        | ServerMessage::SignalEndOfCandidates(_) => {
            let for_this = match &frame.msg {
                ServerMessage::SignalOffer(s) | ServerMessage::SignalAnswer(s) => s.visit_id == v.visit_id,
                ServerMessage::SignalCandidate(c) => c.visit_id == v.visit_id,
                ServerMessage::SignalEndOfCandidates(e) => e.visit_id == v.visit_id,
                _ => false,
            };
            if !for_this {
                stats.count("late_signals", 1);
                return;
            }
            match v.inbox(side).lock().expect("relay lock").pop_front() {
                Some((_, sent)) => {
                    stats.record(Latency::Relay, arrived.saturating_duration_since(sent));
                    stats.count("relayed", 1);
                }
                None => stats.duplicate(1),
            }
        }
        ServerMessage::Error(_) => {
            if let Some(id) = &frame.id {
                v.outbox(side).lock().expect("relay lock").retain(|(sent_id, _)| sent_id != id);
            }
        }
        ServerMessage::QueuePosition(_) => stats.count("positions", 1),
        _ => {}
    }
}

/// Reads frames until `done` holds for one (true) or `within` passes (false).
async fn pump(
    sh: &Shared,
    conn: &mut Conn,
    v: &Visit,
    side: Side,
    within: Duration,
    mut done: impl FnMut(&ServerFrame, Instant) -> bool,
) -> Result<bool, ConnError> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match conn.next_timed(left).await {
            Ok((frame, arrived)) => {
                handle(sh, v, side, &frame, arrived);
                if done(&frame, arrived) {
                    return Ok(true);
                }
            }
            Err(e) if e.0 == "timeout" => return Ok(false),
            Err(e) => return Err(e),
        }
    }
}

/// Until `deadline`, reads frames and sends `signal_burst` candidates back to back every
/// `signal_burst`/`signal_rate` seconds.
async fn hold(sh: &Shared, conn: &mut Conn, v: &Visit, side: Side, deadline: Instant) -> Result<(), ConnError> {
    let answer = side == Side::Patient;
    let burst = sh.args.signal_burst;
    let interval = (sh.args.signal_rate > 0.0).then(|| Duration::from_secs_f64(f64::from(burst) / sh.args.signal_rate));
    let mut next_send = Instant::now();
    let mut n = 1000;
    // Counted as holding until this returns, however it returns.
    let _holding = sh.holding.enter();
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Ok(());
        }
        let wake = interval.map_or(deadline, |_| next_send.min(deadline));
        tokio::select! {
            frame = conn.next_timed(deadline - now) => match frame {
                Ok((frame, arrived)) => handle(sh, v, side, &frame, arrived),
                Err(e) if e.0 == "timeout" => return Ok(()),
                Err(e) => return Err(e),
            },
            _ = tokio::time::sleep_until(wake.into()) => {
                if let Some(interval) = interval && Instant::now() >= next_send && Instant::now() < deadline {
                    for _ in 0..burst {
                        n += 1;
                        let msg = ClientMessage::SignalCandidate(payloads::candidate(&v.visit_id, answer, n));
                        feed_signal(conn, v, side, msg).await?;
                    }
                    conn.flush().await?;
                    next_send += interval;
                }
            }
        }
    }
}

async fn patient(sh: Arc<Shared>, index: usize) {
    let ctx = &sh.ctx;
    let state_index = index % sh.states.len();
    let Some(p) = population::admit_one(ctx, index, sh.states[state_index]).await else { return };
    let dial = Dial { addr: ctx.targets.pick().addr, token: &p.token, source: None };
    let Ok(mut conn) = Conn::open(&dial, ctx.stats.clone()).await else { return };
    let v = Arc::new(Visit {
        visit_id: p.visit_id.clone(),
        to_patient: Mutex::default(),
        to_provider: Mutex::default(),
        patient_done: AtomicBool::new(false),
    });
    if let Err(e) = patient_visit(&sh, &mut conn, &v, index, state_index).await
        && e.0 == "timeout"
    {
        ctx.stats.error("visit_step_timeout");
    }
    conn.close().await;
}

async fn patient_visit(
    sh: &Shared,
    conn: &mut Conn,
    v: &Arc<Visit>,
    index: usize,
    state_index: usize,
) -> Result<(), ConnError> {
    let stats = &sh.ctx.stats;
    let timeout = || ConnError("timeout".into());
    // Support joins the conversation and greets; the patient answers.
    let (greeted_tx, greeted_rx) = oneshot::channel();
    let desk = &sh.support[index % sh.support.len()];
    if desk.send((v.visit_id.clone(), greeted_tx)).await.is_ok()
        && matches!(tokio::time::timeout(STEP_TIMEOUT, greeted_rx).await, Ok(Ok(true)))
    {
        let greeting = |f: &ServerFrame| match &f.msg {
            ServerMessage::ChatMessage(m) => m.visit_id == v.visit_id && m.from.role == Role::Support,
            _ => false,
        };
        let mut stamp = None;
        pump(sh, conn, v, Side::Patient, STEP_TIMEOUT, |f, arrived| {
            let hit = greeting(f);
            if let (true, ServerMessage::ChatMessage(m)) = (hit, &f.msg) {
                stamp = m.client_id.strip_prefix("g-").and_then(|s| s.parse::<u64>().ok()).map(|s| (s, arrived));
            }
            hit
        })
        .await?
        .then_some(())
        .ok_or_else(timeout)?;
        if let Some((stamp, arrived)) = stamp {
            stats.record(Latency::ChatDelivery, stats.stamp_to(stamp, arrived));
            stats.count("chat_messages", 1);
        }
        conn.pace().await?;
        let reply = ChatSend {
            visit_id: v.visit_id.clone(),
            client_id: format!("p-{}", stats.stamp()),
            body: "Thanks, I am here and ready.".into(),
        };
        conn.request(&ClientMessage::ChatSend(reply)).await?;
    }
    // Ready for a provider of its state.
    let _ = sh.jobs[state_index].send(v.clone()).await;
    let started =
        |f: &ServerFrame, _: Instant| matches!(&f.msg, ServerMessage::VisitStarted(s) if s.visit_id == v.visit_id);
    pump(sh, conn, v, Side::Patient, STEP_TIMEOUT, started).await?.then_some(()).ok_or_else(timeout)?;
    let hold_until = Instant::now() + Duration::from_secs_f64(sh.args.hold_secs);
    // The patient is polite: it waits for the provider's offer, then answers.
    let offer =
        |f: &ServerFrame, _: Instant| matches!(&f.msg, ServerMessage::SignalOffer(s) if s.visit_id == v.visit_id);
    pump(sh, conn, v, Side::Patient, STEP_TIMEOUT, offer).await?.then_some(()).ok_or_else(timeout)?;
    let session = sh.ctx.stats.stamp();
    signal(conn, v, Side::Patient, ClientMessage::SignalAnswer(payloads::sdp(&v.visit_id, true, session))).await?;
    for n in 0..sh.args.candidates {
        signal(conn, v, Side::Patient, ClientMessage::SignalCandidate(payloads::candidate(&v.visit_id, true, n)))
            .await?;
    }
    let end = SignalEnd { visit_id: v.visit_id.clone(), from: None };
    signal(conn, v, Side::Patient, ClientMessage::SignalEndOfCandidates(end)).await?;
    hold(sh, conn, v, Side::Patient, hold_until).await?;
    v.patient_done.store(true, Ordering::Release);
    let ended = |f: &ServerFrame, _: Instant| matches!(&f.msg, ServerMessage::VisitUpdated(u) if u.visit_id == v.visit_id && u.status == VisitStatus::Ended);
    pump(sh, conn, v, Side::Patient, STEP_TIMEOUT, ended).await?.then_some(()).ok_or_else(timeout)?;
    let missing = v.to_patient.lock().expect("relay lock").len() as u64;
    stats.lose(missing);
    stats.count("visits_completed", 1);
    Ok(())
}

async fn provider(sh: Arc<Shared>, mut conn: Conn, jobs: Arc<tokio::sync::Mutex<mpsc::Receiver<Arc<Visit>>>>) {
    loop {
        // Waiting for a visit, the console keeps reading (presence and queue changes), as an
        // app does: a socket left unread is closed by the hub as a slow consumer.
        let job = tokio::select! {
            job = async { jobs.lock().await.recv().await } => job,
            frame = conn.next(Duration::from_secs(3600)) => match frame {
                Err(_) if !conn.is_open() => break,
                _ => continue,
            },
        };
        let Some(v) = job else { break };
        match provide(&sh, &mut conn, &v).await {
            Ok(()) => {}
            Err(e) if e.0 == "timeout" => sh.ctx.stats.error("visit_step_timeout"),
            Err(_) if !conn.is_open() => break,
            Err(_) => {} // a refusal, counted by its code
        }
    }
    conn.close().await;
}

async fn provide(sh: &Shared, conn: &mut Conn, v: &Arc<Visit>) -> Result<(), ConnError> {
    let visit_id = v.visit_id.clone();
    let timeout = || ConnError("timeout".into());
    conn.request(&ClientMessage::VisitClaim(VisitRef { visit_id: visit_id.clone() })).await?;
    let to = |to| ClientMessage::VisitTransition(VisitTransition { visit_id: visit_id.clone(), to });
    conn.request(&to(VisitStatus::InVisit)).await?;
    let started =
        |f: &ServerFrame, _: Instant| matches!(&f.msg, ServerMessage::VisitStarted(s) if s.visit_id == visit_id);
    pump(sh, conn, v, Side::Provider, STEP_TIMEOUT, started).await?.then_some(()).ok_or_else(timeout)?;
    // The provider is impolite: it offers first and trickles its candidates.
    let session = sh.ctx.stats.stamp();
    signal(conn, v, Side::Provider, ClientMessage::SignalOffer(payloads::sdp(&visit_id, false, session))).await?;
    for n in 0..sh.args.candidates {
        signal(conn, v, Side::Provider, ClientMessage::SignalCandidate(payloads::candidate(&visit_id, false, n)))
            .await?;
    }
    let end = SignalEnd { visit_id: visit_id.clone(), from: None };
    signal(conn, v, Side::Provider, ClientMessage::SignalEndOfCandidates(end)).await?;
    hold(sh, conn, v, Side::Provider, Instant::now() + Duration::from_secs_f64(sh.args.hold_secs)).await?;
    // Wait for the patient to finish signaling and for all of it to arrive before ending.
    let deadline = Instant::now() + STEP_TIMEOUT;
    while !(v.patient_done.load(Ordering::Acquire) && v.to_provider.lock().expect("relay lock").is_empty()) {
        if Instant::now() >= deadline {
            break;
        }
        pump(sh, conn, v, Side::Provider, Duration::from_millis(20), |_, _| false).await?;
    }
    let missing = v.to_provider.lock().expect("relay lock").len() as u64;
    sh.ctx.stats.lose(missing);
    conn.request(&to(VisitStatus::WrapUp)).await?;
    conn.request(&to(VisitStatus::Ended)).await?;
    Ok(())
}
