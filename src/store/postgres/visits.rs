//! Visits, their transitions and idempotency keys.

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgPool, PgRow};
use sqlx::{Postgres, QueryBuilder, Row};

use super::audit::push_staged;
use super::corrupt;
use crate::model::{Actor, AuditEntry, UsState, Visit, VisitId, VisitStatus};
use crate::protocol::Participant;
use crate::store::{IdempotencyKey, InsertOutcome, StoreResult, Transition, from_millis, to_millis};

const COLUMNS: &str = "id, state, display_name, reason, status, created_at, estimated_wait_secs, waited_secs, provider_subject, reported_state";

fn from_row(row: &PgRow) -> StoreResult<Visit> {
    let state: String = row.try_get("state")?;
    let status: String = row.try_get("status")?;
    let reported: Option<String> = row.try_get("reported_state")?;
    Ok(Visit {
        id: row.try_get("id")?,
        state: UsState::parse(&state).map_err(|_| corrupt("visit state"))?,
        display_name: row.try_get("display_name")?,
        reason: row.try_get("reason")?,
        status: VisitStatus::parse(&status).ok_or_else(|| corrupt("visit status"))?,
        created_at: from_millis(row.try_get("created_at")?)?,
        estimated_wait_secs: row.try_get::<Option<i64>, _>("estimated_wait_secs")?.map(|v| v as u64),
        waited_secs: row.try_get::<Option<i64>, _>("waited_secs")?.map(|v| v as u64),
        provider: row.try_get("provider_subject")?,
        reported_state: reported.map(|s| UsState::parse(&s).map_err(|_| corrupt("reported state"))).transpose()?,
    })
}

/// Stores a new visit and its first transition, with the audit record `staged` when given, in
/// one statement (as [`transition`]). With a key, the key goes in first and the rest only if it
/// was new: a concurrent insert under the same key waits on the key's unique index until the
/// first commits, then stores nothing, so exactly one of them stores a visit.
pub async fn insert(
    pool: &PgPool,
    visit: &Visit,
    actor: &Actor,
    key: Option<&IdempotencyKey>,
    staged: Option<&AuditEntry>,
) -> StoreResult<InsertOutcome> {
    let mut q = QueryBuilder::<Postgres>::new("WITH ");
    let source = match key {
        Some(key) => {
            q.push("keyed AS (INSERT INTO idempotency_keys (key, request_hash, visit_id, created_at) VALUES (");
            q.separated(", ")
                .push_bind(key.key.clone())
                .push_bind(key.request_hash.clone())
                .push_bind(visit.id.clone())
                .push_bind(to_millis(visit.created_at));
            q.push(") ON CONFLICT (key) DO NOTHING RETURNING key), ");
            " FROM keyed"
        }
        None => "",
    };
    q.push("moved AS (INSERT INTO visits (id, state, display_name, reason, status, created_at, estimated_wait_secs, waited_secs) SELECT ");
    q.separated(", ")
        .push_bind(visit.id.clone())
        .push_bind(visit.state.code())
        .push_bind(visit.display_name.clone())
        .push_bind(visit.reason.clone())
        .push_bind(visit.status.as_str())
        .push_bind(to_millis(visit.created_at))
        .push_bind(visit.estimated_wait_secs.map(|v| v as i64))
        .push_bind(visit.waited_secs.map(|v| v as i64));
    q.push(source);
    q.push(" RETURNING id)");
    push_logged(&mut q, (None, visit.status), actor, visit.created_at);
    push_staged(&mut q, "moved", staged);
    q.push(" SELECT COUNT(*) FROM moved");
    let inserted: i64 = q.build_query_scalar().fetch_one(pool).await?;
    if inserted == 1 {
        return Ok(InsertOutcome::Inserted);
    }
    let key = key.ok_or_else(|| corrupt("visit not inserted without a key"))?;
    let (visit_id, request_hash) =
        idempotent(pool, &key.key).await?.ok_or_else(|| corrupt("idempotency key vanished"))?;
    Ok(InsertOutcome::Replayed { visit_id, request_hash })
}

pub async fn idempotent(pool: &PgPool, key: &str) -> StoreResult<Option<(VisitId, String)>> {
    let row = sqlx::query("SELECT visit_id, request_hash FROM idempotency_keys WHERE key = $1")
        .bind(key)
        .fetch_optional(pool)
        .await?;
    row.map(|row| Ok((row.try_get("visit_id")?, row.try_get("request_hash")?))).transpose()
}

pub async fn get(pool: &PgPool, id: &str) -> StoreResult<Option<Visit>> {
    let sql = format!("SELECT {COLUMNS} FROM visits WHERE id = $1");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(pool).await?;
    row.as_ref().map(from_row).transpose()
}

/// Adds `, logged AS (...)` to a statement of common table expressions: the transition's row,
/// taken from the visit `moved` returns, so it is stored only with a transition that happened.
fn push_logged(
    q: &mut QueryBuilder<Postgres>,
    (from, to): (Option<VisitStatus>, VisitStatus),
    actor: &Actor,
    at: DateTime<Utc>,
) {
    q.push(", logged AS (INSERT INTO visit_transitions (visit_id, from_status, to_status, at, actor_subject, actor_role) SELECT id, ");
    q.separated(", ")
        .push_bind(from.map(VisitStatus::as_str))
        .push_bind(to.as_str())
        .push_bind(to_millis(at))
        .push_bind(actor.subject.clone())
        .push_bind(actor.role);
    q.push(" FROM moved)");
}

/// Compare-and-set: the `WHERE status = ...` makes concurrent updates of one visit queue on its
/// row lock, and the losers re-check the condition against the winner's row and change nothing.
/// One statement, so one trip and no transaction to open and commit: the transition's row and
/// the audit record `staged`, when given, are stored with it, only with a transition that
/// happened, and commit with it.
pub async fn transition(
    pool: &PgPool,
    id: &str,
    (from, to): (VisitStatus, VisitStatus),
    actor: &Actor,
    at: DateTime<Utc>,
    staged: Option<&AuditEntry>,
) -> StoreResult<bool> {
    let mut q = QueryBuilder::<Postgres>::new("WITH moved AS (UPDATE visits SET status = ");
    q.push_bind(to.as_str());
    q.push(", provider_subject = CASE WHEN ");
    q.push_bind(to.as_str());
    q.push(" = 'waiting' THEN NULL ELSE provider_subject END WHERE id = ");
    q.push_bind(id.to_string());
    q.push(" AND status = ");
    q.push_bind(from.as_str());
    q.push(" RETURNING id)");
    push_logged(&mut q, (Some(from), to), actor, at);
    push_staged(&mut q, "moved", staged);
    q.push(" SELECT COUNT(*) FROM moved");
    let moved: i64 = q.build_query_scalar().fetch_one(pool).await?;
    Ok(moved == 1)
}

/// A claim and, when it wins and `join` is given, the provider joining the visit's conversation
/// and the claim's audit record, in one statement (as [`transition`]). Returns whether it won
/// and whether the provider joined.
pub async fn claim(
    pool: &PgPool,
    id: &str,
    provider: &str,
    at: DateTime<Utc>,
    waited_secs: u64,
    join: Option<(&Participant, &AuditEntry)>,
) -> StoreResult<(bool, bool)> {
    let mut q =
        QueryBuilder::<Postgres>::new("WITH moved AS (UPDATE visits SET status = 'claimed', provider_subject = ");
    q.push_bind(provider.to_string());
    q.push(", waited_secs = COALESCE(waited_secs, ");
    q.push_bind(waited_secs as i64);
    q.push(") WHERE id = ");
    q.push_bind(id.to_string());
    q.push(" AND status = 'waiting' RETURNING id)");
    let actor = Actor { subject: provider.to_string(), role: "provider" };
    push_logged(&mut q, (Some(VisitStatus::Waiting), VisitStatus::Claimed), &actor, at);
    if let Some((member, entry)) = join {
        super::chat::push_joined(&mut q, "moved", member, at);
        push_staged(&mut q, "moved", Some(entry));
        q.push(" SELECT (SELECT COUNT(*) FROM moved), (SELECT COUNT(*) FROM joined)");
    } else {
        q.push(" SELECT (SELECT COUNT(*) FROM moved), 0::bigint");
    }
    let (claimed, joined): (i64, i64) = q.build_query_as().fetch_one(pool).await?;
    Ok((claimed == 1, joined == 1))
}

pub async fn relocate(
    pool: &PgPool,
    id: &str,
    from: UsState,
    to: UsState,
    actor: &Actor,
    at: DateTime<Utc>,
) -> StoreResult<bool> {
    let mut q = QueryBuilder::<Postgres>::new("WITH moved AS (UPDATE visits SET state = ");
    q.push_bind(to.code());
    q.push(", reported_state = NULL WHERE id = ");
    q.push_bind(id.to_string());
    q.push(" AND state = ");
    q.push_bind(from.code());
    q.push(" AND status = 'waiting' RETURNING id)");
    // A move is recorded as a transition that stays in `waiting`, by who moved it.
    push_logged(&mut q, (Some(VisitStatus::Waiting), VisitStatus::Waiting), actor, at);
    q.push(" SELECT COUNT(*) FROM moved");
    let moved: i64 = q.build_query_scalar().fetch_one(pool).await?;
    Ok(moved == 1)
}

pub async fn report_state(pool: &PgPool, id: &str, state: UsState) -> StoreResult<()> {
    sqlx::query("UPDATE visits SET reported_state = $1 WHERE id = $2")
        .bind(state.code())
        .bind(id)
        .execute(pool)
        .await?;
    Ok(())
}

pub async fn live_of(pool: &PgPool, provider: &str) -> StoreResult<Vec<Visit>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM visits WHERE provider_subject = $1 AND status IN ('claimed', 'in_visit', 'wrap_up') ORDER BY created_at"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(provider).fetch_all(pool).await?;
    rows.iter().map(from_row).collect()
}

pub async fn live(pool: &PgPool) -> StoreResult<Vec<Visit>> {
    let sql =
        format!("SELECT {COLUMNS} FROM visits WHERE status IN ('claimed', 'in_visit', 'wrap_up') ORDER BY created_at");
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_all(pool).await?;
    rows.iter().map(from_row).collect()
}

pub async fn transitions(pool: &PgPool, id: &str) -> StoreResult<Vec<Transition>> {
    let rows = sqlx::query(
        "SELECT from_status, to_status, at, actor_subject, actor_role FROM visit_transitions WHERE visit_id = $1 ORDER BY id",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| {
            let from: Option<String> = row.try_get("from_status")?;
            let to: String = row.try_get("to_status")?;
            Ok(Transition {
                from: from.map(|f| VisitStatus::parse(&f).ok_or_else(|| corrupt("transition"))).transpose()?,
                to: VisitStatus::parse(&to).ok_or_else(|| corrupt("transition"))?,
                at: from_millis(row.try_get("at")?)?,
                actor_subject: row.try_get("actor_subject")?,
                actor_role: row.try_get("actor_role")?,
            })
        })
        .collect()
}

/// Ties on `created_at` break on the id in byte order (`COLLATE "C"`), as SQLite orders text.
pub async fn waiting(pool: &PgPool) -> StoreResult<Vec<Visit>> {
    let sql = format!("SELECT {COLUMNS} FROM visits WHERE status = 'waiting' ORDER BY created_at, id COLLATE \"C\"");
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_all(pool).await?;
    rows.iter().map(from_row).collect()
}

pub async fn count(pool: &PgPool) -> StoreResult<u64> {
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM visits").fetch_one(pool).await?;
    Ok(n as u64)
}
