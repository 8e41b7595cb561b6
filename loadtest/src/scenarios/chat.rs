//! `chat`: support staff each hold many conversations with waiting patients, who send
//! messages at a steady rate; support answers each one. Measures delivery latency both ways
//! and checks every conversation's message numbering (`seq`) at both ends.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinSet;
use visithub::model::Role;
use visithub::protocol::{ChatSend, ClientMessage, ServerFrame, ServerMessage, VisitRef};

use super::Phase;
use super::population::{self, TOKEN_TTL_SECS};
use crate::conn::Conn;
use crate::progress::Progress;
use crate::report::Report;
use crate::stats::{Latency, Stats};
use crate::target::{Context, parse_states};

#[derive(Debug, Clone, clap::Args)]
pub struct ChatArgs {
    /// Support staff.
    #[arg(long, default_value_t = 5)]
    pub support: usize,
    /// Conversations each support person holds (the hub's default cap is 20).
    #[arg(long, default_value_t = 10)]
    pub conversations: usize,
    /// Messages each patient sends.
    #[arg(long, default_value_t = 10)]
    pub messages: usize,
    /// Messages per second each patient sends (paced under the patient rate limit).
    #[arg(long, default_value_t = 1.0)]
    pub rate: f64,
    /// States the patients wait in (support covers them all), comma-separated.
    #[arg(long, default_value = "WA")]
    pub states: String,
    /// Support does not answer each message.
    #[arg(long)]
    pub no_reply: bool,
}

#[derive(Default)]
struct Tally {
    /// Messages stored (acknowledged) from patients and from support.
    patient_acked: AtomicU64,
    support_acked: AtomicU64,
    /// Of those, received by the other side.
    to_support: AtomicU64,
    to_patients: AtomicU64,
    patients_done: AtomicU64,
}

/// Checks one conversation's numbering as this member sees it: 1, 2, 3, ...
fn check_seq(stats: &Stats, last: &mut HashMap<String, u64>, visit_id: &str, seq: u64) {
    let prev = last.entry(visit_id.to_string()).or_insert(0);
    if seq <= *prev {
        stats.duplicate(1);
    } else {
        if seq > *prev + 1 {
            stats.lose(seq - *prev - 1);
        }
        *prev = seq;
    }
}

/// The send stamp a message's `client_id` carries (`<tag><n>-<stamp>`).
fn stamp_of(client_id: &str) -> Option<u64> {
    client_id.rsplit('-').next()?.parse().ok()
}

pub async fn run(ctx: &Arc<Context>, args: &ChatArgs) -> anyhow::Result<Report> {
    anyhow::ensure!(args.rate > 0.0, "--rate must be positive");
    let states = parse_states(&args.states)?;
    let n = args.support * args.conversations;
    population::raise_caps(ctx, &states, u32::try_from(n + 10).unwrap_or(u32::MAX).min(visithub::hub::MAX_QUEUE_CAP))
        .await?;
    let support_ids = population::onboard(ctx, "chat-support", args.support, Role::Support, |_| states.clone()).await?;
    let patients = population::admit(ctx, n, &states).await;
    let patient_conns = population::connect_all(ctx, patients.iter().map(|p| p.token.clone()).collect()).await;
    let support_tokens = support_ids.iter().map(|(s, _)| ctx.auth.token(Role::Support, s, TOKEN_TTL_SECS)).collect();
    let support_conns = population::connect_all(ctx, support_tokens).await;

    let tally = Arc::new(Tally::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let mut started_patients = 0u64;
    for (i, conn) in support_conns.into_iter().enumerate() {
        let Some(mut conn) = conn else { continue };
        let mine = patients.iter().skip(i * args.conversations).take(args.conversations);
        for p in mine {
            let join = ClientMessage::ChatJoin(VisitRef { visit_id: p.visit_id.clone() });
            // A refusal is counted by its code; the conversation then goes unanswered.
            let _ = conn.request(&join).await;
        }
        tasks.spawn(support(conn, ctx.stats.clone(), tally.clone(), !args.no_reply, stop_rx.clone()));
    }
    let phase = Phase::start(ctx);
    let progress = Progress::start(ctx.progress, "chat", "chat_delivered", ctx.stats.clone());
    for (p, conn) in patients.iter().zip(patient_conns) {
        if let Some(conn) = conn {
            started_patients += 1;
            let a = args.clone();
            tasks.spawn(patient(conn, p.visit_id.clone(), a, ctx.stats.clone(), tally.clone(), stop_rx.clone()));
        }
    }
    // Patients send for messages / rate seconds; then what was stored must arrive.
    let send_time = Duration::from_secs_f64(args.messages as f64 / args.rate);
    let deadline = Instant::now() + send_time * 2 + Duration::from_secs(30);
    let settled = || {
        tally.patients_done.load(Ordering::SeqCst) == started_patients
            && tally.to_support.load(Ordering::SeqCst) >= tally.patient_acked.load(Ordering::SeqCst)
            && tally.to_patients.load(Ordering::SeqCst) >= tally.support_acked.load(Ordering::SeqCst)
            && (args.no_reply || tally.support_acked.load(Ordering::SeqCst) >= tally.to_support.load(Ordering::SeqCst))
    };
    while !settled() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}
    let missing = tally.patient_acked.load(Ordering::SeqCst).saturating_sub(tally.to_support.load(Ordering::SeqCst))
        + tally.support_acked.load(Ordering::SeqCst).saturating_sub(tally.to_patients.load(Ordering::SeqCst));
    ctx.stats.lose(missing);
    let report = phase.finish(ctx, "chat", 0, 0);
    drop(progress);
    let mut report = report;
    report.note("support", args.support as u64);
    report.note("conversations", n as u64);
    report.note("messages_per_patient", args.messages as u64);
    report.note("patient_rate_per_sec", args.rate);
    Ok(report)
}

async fn patient(
    mut conn: Conn,
    visit_id: String,
    args: ChatArgs,
    stats: Arc<Stats>,
    tally: Arc<Tally>,
    mut stop: watch::Receiver<bool>,
) {
    let interval = Duration::from_secs_f64(1.0 / args.rate);
    let mut next = Instant::now();
    let mut sent = 0;
    let mut waiting: HashSet<String> = HashSet::new();
    let mut seqs = HashMap::new();
    let mut done = false;
    loop {
        if !done && sent == args.messages && waiting.is_empty() {
            done = true;
            tally.patients_done.fetch_add(1, Ordering::SeqCst);
        }
        let frame = tokio::select! {
            _ = stop.changed() => break,
            _ = tokio::time::sleep_until(next.into()), if sent < args.messages => {
                if conn.pace().await.is_err() {
                    break;
                }
                let msg = ChatSend {
                    visit_id: visit_id.clone(),
                    client_id: format!("p{sent}-{}", stats.stamp()),
                    body: format!("Message {sent}: the symptoms are about the same as this morning."),
                };
                match conn.send_now(&ClientMessage::ChatSend(msg)).await {
                    Ok(id) => { waiting.insert(id); }
                    Err(_) => break,
                }
                sent += 1;
                next += interval;
                continue;
            }
            frame = conn.next_timed(Duration::from_secs(3600)) => frame,
        };
        let Ok((frame, arrived)) = frame else { break };
        handle(&frame, &mut waiting, &tally.patient_acked, &stats, &mut seqs);
        if let ServerMessage::ChatMessage(m) = &frame.msg
            && m.from.role == Role::Support
        {
            if let Some(stamp) = stamp_of(&m.client_id) {
                stats.record(Latency::ChatDelivery, stats.stamp_to(stamp, arrived));
            }
            stats.count("chat_delivered", 1);
            tally.to_patients.fetch_add(1, Ordering::SeqCst);
        }
    }
    if !done {
        tally.patients_done.fetch_add(1, Ordering::SeqCst);
    }
    conn.close().await;
}

/// Acks of our own sends (a reply removes the id either way) and conversation numbering.
fn handle(
    frame: &ServerFrame,
    waiting: &mut HashSet<String>,
    acked: &AtomicU64,
    stats: &Stats,
    seqs: &mut HashMap<String, u64>,
) {
    if let Some(id) = &frame.id
        && waiting.remove(id)
        && matches!(frame.msg, ServerMessage::Ack(_))
    {
        acked.fetch_add(1, Ordering::SeqCst);
    }
    if let ServerMessage::ChatMessage(m) = &frame.msg {
        check_seq(stats, seqs, &m.visit_id, m.seq);
    }
}

async fn support(mut conn: Conn, stats: Arc<Stats>, tally: Arc<Tally>, reply: bool, mut stop: watch::Receiver<bool>) {
    let mut waiting: HashSet<String> = HashSet::new();
    let mut seqs = HashMap::new();
    let mut n = 0u64;
    loop {
        let frame = tokio::select! {
            _ = stop.changed() => break,
            frame = conn.next_timed(Duration::from_secs(3600)) => frame,
        };
        let Ok((frame, arrived)) = frame else { break };
        handle(&frame, &mut waiting, &tally.support_acked, &stats, &mut seqs);
        let ServerMessage::ChatMessage(m) = &frame.msg else { continue };
        if m.from.role != Role::Patient {
            continue;
        }
        if let Some(stamp) = stamp_of(&m.client_id) {
            stats.record(Latency::ChatDelivery, stats.stamp_to(stamp, arrived));
        }
        stats.count("chat_delivered", 1);
        tally.to_support.fetch_add(1, Ordering::SeqCst);
        if reply {
            if conn.pace().await.is_err() {
                break;
            }
            n += 1;
            let answer = ChatSend {
                visit_id: m.visit_id.clone(),
                client_id: format!("s{n}-{}", stats.stamp()),
                body: "Thank you, noted. The provider will see this.".into(),
            };
            match conn.send_now(&ClientMessage::ChatSend(answer)).await {
                Ok(id) => {
                    waiting.insert(id);
                }
                Err(_) => break,
            }
        }
    }
    conn.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversation_numbering_counts_gaps_and_repeats() {
        let stats = Stats::default();
        let mut last = HashMap::new();
        for seq in [1, 2, 4, 4, 5] {
            check_seq(&stats, &mut last, "v", seq);
        }
        check_seq(&stats, &mut last, "w", 1);
        assert_eq!(stats.lost.load(Ordering::Relaxed), 1);
        assert_eq!(stats.duplicated.load(Ordering::Relaxed), 1);
        assert_eq!(stamp_of("p3-123456"), Some(123456));
    }
}
