//! Setting a scene: raising queue caps, admitting waiting patients, onboarding caregivers and
//! opening many sockets, each with bounded concurrency.

use std::time::Instant;

use futures_util::StreamExt;
use futures_util::stream;
use visithub::model::{Role, UsState};

use crate::conn::{CONNECT_CONCURRENCY, Conn};
use crate::stats::Latency;
use crate::target::Context;

/// How many setup calls are in flight at once.
const SETUP_CONCURRENCY: usize = 32;
/// Lifetime of caregiver tokens a run mints.
pub const TOKEN_TTL_SECS: u64 = 4 * 3600;

/// A patient admitted by intake.
#[derive(Debug, Clone)]
pub struct Patient {
    pub index: usize,
    pub state: UsState,
    pub visit_id: String,
    pub token: String,
}

/// Raises the queue cap of every state so `room` more visits fit behind those waiting now.
pub async fn raise_caps(ctx: &Context, states: &[UsState], room: usize) -> anyhow::Result<()> {
    let admin = ctx.auth.admin();
    for (state, waiting) in states.iter().zip(queue_lengths(ctx, states).await?) {
        let cap = u32::try_from(room).unwrap_or(u32::MAX).saturating_add(waiting).min(visithub::hub::MAX_QUEUE_CAP);
        let node = ctx.targets.pick();
        ctx.rest
            .queue_cap(&node.base, &admin, *state, cap)
            .await
            .map_err(|code| anyhow::anyhow!("raising the {state} queue cap was refused: {code}"))?;
    }
    Ok(())
}

/// The queue length of each state as the hub has it (visits an earlier run left waiting count).
pub async fn queue_lengths(ctx: &Context, states: &[UsState]) -> anyhow::Result<Vec<u32>> {
    let admin = ctx.auth.admin();
    let mut lengths = Vec::new();
    for state in states {
        let n = ctx
            .rest
            .queue_length(&ctx.targets.pick().base, &admin, *state)
            .await
            .map_err(|code| anyhow::anyhow!("reading the {state} queue was refused: {code}"))?;
        lengths.push(n);
    }
    Ok(lengths)
}

/// One intake, timed; a refusal is counted by its code.
pub async fn admit_one(ctx: &Context, index: usize, state: UsState) -> Option<Patient> {
    let node = ctx.targets.pick();
    let started = Instant::now();
    match ctx.rest.intake(&node.base, index, state).await {
        Ok(a) => {
            ctx.stats.record(Latency::Intake, started.elapsed());
            ctx.stats.count("intakes", 1);
            Some(Patient { index, state, visit_id: a.visit_id, token: a.patient_token })
        }
        Err(code) => {
            ctx.stats.error(&code);
            None
        }
    }
}

/// Admits `n` patients spread round-robin over `states`.
pub async fn admit(ctx: &Context, n: usize, states: &[UsState]) -> Vec<Patient> {
    let mut patients: Vec<Patient> = stream::iter(0..n)
        .map(|i| admit_one(ctx, i, states[i % states.len()]))
        .buffer_unordered(SETUP_CONCURRENCY)
        .filter_map(|p| async move { p })
        .collect()
        .await;
    patients.sort_by_key(|p| p.index);
    patients
}

/// Onboards caregivers `<run>-<prefix>-<i>` for i in 0..n; `states(i)` are the states of the i-th.
pub async fn onboard(
    ctx: &Context,
    prefix: &str,
    n: usize,
    role: Role,
    states: impl Fn(usize) -> Vec<UsState>,
) -> anyhow::Result<Vec<(String, Vec<UsState>)>> {
    let admin = ctx.auth.admin();
    let wanted: Vec<(String, Vec<UsState>)> =
        (0..n).map(|i| (format!("lt-{}-{prefix}-{i}", ctx.run_id), states(i))).collect();
    let results: Vec<Result<(), String>> = stream::iter(wanted.iter())
        .map(|(subject, states)| {
            let admin = admin.clone();
            async move { ctx.rest.onboard(&ctx.targets.pick().base, &admin, subject, role, states).await }
        })
        .buffer_unordered(SETUP_CONCURRENCY)
        .collect()
        .await;
    if let Some(Err(code)) = results.into_iter().find(Result::is_err) {
        anyhow::bail!("onboarding caregivers was refused: {code}");
    }
    Ok(wanted)
}

/// Opens one socket per token from this process (see [`Conn::open_all`]).
pub async fn connect_all(ctx: &Context, tokens: Vec<String>) -> Vec<Option<Conn>> {
    Conn::open_all(&ctx.targets, tokens, None, CONNECT_CONCURRENCY, &ctx.stats).await
}
