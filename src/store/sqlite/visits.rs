//! Visits, their transitions and idempotency keys.

use chrono::{DateTime, Utc};
use sqlx::sqlite::{SqlitePool, SqliteRow};
use sqlx::{Row, Sqlite, Transaction};

use super::commit::Committer;
use super::{SqliteQuery, corrupt, in_one_trip};
use crate::model::{Actor, AuditEntry, UsState, Visit, VisitId, VisitStatus};
use crate::protocol::Participant;
use crate::store::{ClaimOutcome, IdempotencyKey, InsertOutcome, StoreResult, Transition, from_millis, to_millis};

const COLUMNS: &str = "id, state, display_name, reason, status, created_at, estimated_wait_secs, waited_secs, provider_subject, reported_state";

fn from_row(row: &SqliteRow) -> StoreResult<Visit> {
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

async fn record(
    tx: &mut Transaction<'_, Sqlite>,
    id: &str,
    from: Option<VisitStatus>,
    to: VisitStatus,
    actor: &Actor,
    at: DateTime<Utc>,
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO visit_transitions (visit_id, from_status, to_status, at, actor_subject, actor_role) VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(id)
    .bind(from.map(VisitStatus::as_str))
    .bind(to.as_str())
    .bind(to_millis(at))
    .bind(&actor.subject)
    .bind(actor.role)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The visit's row and its first transition: two statements, arguments in order.
const INSERT_ROWS: [&str; 2] = [
    "INSERT INTO visits (id, state, display_name, reason, status, created_at, estimated_wait_secs, waited_secs) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    "INSERT INTO visit_transitions (visit_id, from_status, to_status, at, actor_subject, actor_role) VALUES (?, NULL, ?, ?, ?, ?)",
];

fn bind_insert(query: SqliteQuery, visit: &Visit, actor: &Actor) -> SqliteQuery {
    bind_first_transition(bind_visit_row(query, visit), visit, actor)
}

fn bind_visit_row(query: SqliteQuery, visit: &Visit) -> SqliteQuery {
    query
        .bind(visit.id.clone())
        .bind(visit.state.code())
        .bind(visit.display_name.clone())
        .bind(visit.reason.clone())
        .bind(visit.status.as_str())
        .bind(to_millis(visit.created_at))
        .bind(visit.estimated_wait_secs.map(|v| v as i64))
        .bind(visit.waited_secs.map(|v| v as i64))
}

fn bind_first_transition(query: SqliteQuery, visit: &Visit, actor: &Actor) -> SqliteQuery {
    query
        .bind(visit.id.clone())
        .bind(visit.status.as_str())
        .bind(to_millis(visit.created_at))
        .bind(actor.subject.clone())
        .bind(actor.role)
}

/// [`INSERT_ROWS`] between `before` and `after`.
fn insert_rows(before: &str, after: &str, visit: &Visit, actor: &Actor) -> SqliteQuery {
    let [visit_row, transition] = INSERT_ROWS;
    bind_insert(sqlx::query(sqlx::AssertSqlSafe(format!("{before}{visit_row}; {transition}{after}"))), visit, actor)
}

/// [`INSERT_ROWS`] behind an idempotency key: the visit only if the key is new (one writer:
/// nothing comes between the check and the insert), then the key and the first transition only
/// if it was stored (`changes()` counts the statement before), the last returning a row then.
const INSERT_KEYED: [&str; 3] = [
    "INSERT INTO visits (id, state, display_name, reason, status, created_at, estimated_wait_secs, waited_secs) SELECT ?, ?, ?, ?, ?, ?, ?, ? WHERE NOT EXISTS (SELECT 1 FROM idempotency_keys WHERE key = ?)",
    "INSERT INTO idempotency_keys (key, request_hash, visit_id, created_at) SELECT ?, ?, ?, ? WHERE changes() = 1",
    "INSERT INTO visit_transitions (visit_id, from_status, to_status, at, actor_subject, actor_role) SELECT ?, NULL, ?, ?, ?, ? WHERE changes() = 1 RETURNING visit_id",
];

/// A new visit, with its idempotency key if any, and the audit record of its intake: one change
/// for the committer, so intakes share commits with each other and with every other change.
pub async fn insert_recorded(
    commits: &Committer,
    reader: &SqlitePool,
    visit: &Visit,
    actor: &Actor,
    key: Option<&IdempotencyKey>,
    entry: &AuditEntry,
) -> StoreResult<(InsertOutcome, bool)> {
    let (owned_visit, owned_actor) = (visit.clone(), actor.clone());
    let (rows, recorded) = match key {
        None => {
            let [visit_row, transition] = INSERT_ROWS;
            let transition = format!("{transition} RETURNING visit_id");
            let bind = Box::new(move |q| bind_insert(q, &owned_visit, &owned_actor));
            commits.commit(&[visit_row, &transition], bind, entry.clone()).await?
        }
        Some(key) => {
            let key = key.clone();
            let bind = Box::new(move |q: SqliteQuery| {
                let q = bind_visit_row(q, &owned_visit)
                    .bind(key.key.clone())
                    .bind(key.key.clone())
                    .bind(key.request_hash.clone())
                    .bind(owned_visit.id.clone())
                    .bind(to_millis(owned_visit.created_at));
                bind_first_transition(q, &owned_visit, &owned_actor)
            });
            commits.commit(&INSERT_KEYED, bind, entry.clone()).await?
        }
    };
    if rows.is_empty()
        && let Some(key) = key
    {
        let (visit_id, request_hash) =
            idempotent(reader, &key.key).await?.ok_or_else(|| corrupt("idempotency key vanished"))?;
        return Ok((InsertOutcome::Replayed { visit_id, request_hash }, false));
    }
    Ok((InsertOutcome::Inserted, recorded))
}

pub async fn insert(
    pool: &SqlitePool,
    visit: &Visit,
    actor: &Actor,
    key: Option<&IdempotencyKey>,
) -> StoreResult<InsertOutcome> {
    let Some(key) = key else {
        in_one_trip(pool, insert_rows("BEGIN; ", "; COMMIT", visit, actor)).await?;
        return Ok(InsertOutcome::Inserted);
    };
    let mut tx = pool.begin().await?;
    insert_rows("", "", visit, actor).execute(&mut *tx).await?;
    let inserted = sqlx::query(
        "INSERT INTO idempotency_keys (key, request_hash, visit_id, created_at) VALUES (?, ?, ?, ?) ON CONFLICT (key) DO NOTHING",
    )
    .bind(&key.key)
    .bind(&key.request_hash)
    .bind(&visit.id)
    .bind(to_millis(visit.created_at))
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if inserted == 0 {
        tx.rollback().await?;
        let (visit_id, request_hash) =
            idempotent(pool, &key.key).await?.ok_or_else(|| corrupt("idempotency key vanished"))?;
        return Ok(InsertOutcome::Replayed { visit_id, request_hash });
    }
    tx.commit().await?;
    Ok(InsertOutcome::Inserted)
}

pub async fn idempotent(pool: &SqlitePool, key: &str) -> StoreResult<Option<(VisitId, String)>> {
    let row = sqlx::query("SELECT visit_id, request_hash FROM idempotency_keys WHERE key = ?")
        .bind(key)
        .fetch_optional(pool)
        .await?;
    row.map(|row| Ok((row.try_get("visit_id")?, row.try_get("request_hash")?))).transpose()
}

pub async fn get(pool: &SqlitePool, id: &str) -> StoreResult<Option<Visit>> {
    let sql = format!("SELECT {COLUMNS} FROM visits WHERE id = ?");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(pool).await?;
    row.as_ref().map(from_row).transpose()
}

/// Records a transition in the same trip as the UPDATE before it, only if that UPDATE changed
/// a row: `changes()` is the row count of the connection's last completed statement. It returns
/// the row it stored, which says the compare-and-set won (the summed "rows affected" of several
/// statements cannot: SQLite reports a BEGIN or COMMIT with the count of the last change
/// before it). When the UPDATE changed none, the transaction commits nothing.
const RECORD_IF_CHANGED: &str = "INSERT INTO visit_transitions (visit_id, from_status, to_status, at, actor_subject, actor_role) SELECT ?, ?, ?, ?, ?, ? WHERE changes() = 1 RETURNING visit_id";

/// The UPDATE of a transition and its row in `visit_transitions`, returning a row when the
/// compare-and-set won; then its binds.
const TRANSITION: &str = "UPDATE visits SET status = ?, provider_subject = CASE WHEN ? = 'waiting' THEN NULL ELSE provider_subject END WHERE id = ? AND status = ?";

fn bind_transition(
    query: SqliteQuery,
    id: &str,
    from: VisitStatus,
    to: VisitStatus,
    actor: &Actor,
    at: DateTime<Utc>,
) -> SqliteQuery {
    query
        .bind(to.as_str())
        .bind(to.as_str())
        .bind(id.to_string())
        .bind(from.as_str())
        .bind(id.to_string())
        .bind(from.as_str())
        .bind(to.as_str())
        .bind(to_millis(at))
        .bind(actor.subject.clone())
        .bind(actor.role)
}

pub async fn transition(
    pool: &SqlitePool,
    id: &str,
    from: VisitStatus,
    to: VisitStatus,
    actor: &Actor,
    at: DateTime<Utc>,
) -> StoreResult<bool> {
    let sql = format!("BEGIN; {TRANSITION}; {RECORD_IF_CHANGED}; COMMIT");
    let query = bind_transition(sqlx::query(sqlx::AssertSqlSafe(sql)), id, from, to, actor, at);
    Ok(in_one_trip(pool, query).await? == 1)
}

/// A transition and the audit record of the request that made it, in one trip.
pub async fn transition_recorded(
    commits: &Committer,
    id: &str,
    (from, to): (VisitStatus, VisitStatus),
    actor: &Actor,
    at: DateTime<Utc>,
    entry: &AuditEntry,
) -> StoreResult<(bool, bool)> {
    let (id, actor) = (id.to_string(), actor.clone());
    let bind = Box::new(move |q| bind_transition(q, &id, from, to, &actor, at));
    let (rows, recorded) = commits.commit(&[TRANSITION, RECORD_IF_CHANGED], bind, entry.clone()).await?;
    Ok((rows.len() == 1, recorded))
}

const CLAIM: &str = "UPDATE visits SET status = 'claimed', provider_subject = ?, waited_secs = COALESCE(waited_secs, ?) WHERE id = ? AND status = 'waiting'";

fn bind_claim(query: SqliteQuery, id: &str, provider: &str, at: DateTime<Utc>, waited_secs: u64) -> SqliteQuery {
    query
        .bind(provider.to_string())
        .bind(waited_secs as i64)
        .bind(id.to_string())
        .bind(id.to_string())
        .bind(VisitStatus::Waiting.as_str())
        .bind(VisitStatus::Claimed.as_str())
        .bind(to_millis(at))
        .bind(provider.to_string())
        .bind("provider")
}

pub async fn claim(
    pool: &SqlitePool,
    id: &str,
    provider: &str,
    at: DateTime<Utc>,
    waited_secs: u64,
) -> StoreResult<bool> {
    let sql = format!("BEGIN; {CLAIM}; {RECORD_IF_CHANGED}; COMMIT");
    let query = bind_claim(sqlx::query(sqlx::AssertSqlSafe(sql)), id, provider, at, waited_secs);
    Ok(in_one_trip(pool, query).await? == 1)
}

/// The claiming provider joins the visit's conversation exactly when the claim after it in the
/// same transaction wins: both ask that the visit still waits, and nothing changes it between
/// them. Returns a row when the provider was new to the conversation.
const JOIN_IF_WAITING: &str = "INSERT INTO chat_members (visit_id, subject, name, role, joined_at) SELECT ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM visits WHERE id = ? AND status = 'waiting') ON CONFLICT (visit_id, subject) DO NOTHING RETURNING 1 AS joined";

/// A claim, the provider joining the conversation, and the audit record of the request that
/// made the claim, in one transaction and one trip (a claim used to take two: the claim, then
/// the join).
pub async fn claim_joined(
    commits: &Committer,
    id: &str,
    provider: &Participant,
    at: DateTime<Utc>,
    waited_secs: u64,
    entry: &AuditEntry,
) -> StoreResult<ClaimOutcome> {
    let (id, provider) = (id.to_string(), provider.clone());
    let bind = Box::new(move |q: SqliteQuery| {
        let q = q
            .bind(id.clone())
            .bind(provider.subject.clone())
            .bind(provider.name.clone())
            .bind(provider.role.as_str())
            .bind(to_millis(at))
            .bind(id.clone());
        bind_claim(q, &id, &provider.subject, at, waited_secs)
    });
    let change = [JOIN_IF_WAITING, CLAIM, RECORD_IF_CHANGED];
    let (rows, recorded) = commits.commit(&change, bind, entry.clone()).await?;
    // The transition's row comes back exactly when the claim won; the join's only with it.
    Ok(ClaimOutcome { claimed: !rows.is_empty(), joined: rows.len() == 2, recorded })
}

pub async fn relocate(
    pool: &SqlitePool,
    id: &str,
    from: UsState,
    to: UsState,
    actor: &Actor,
    at: DateTime<Utc>,
) -> StoreResult<bool> {
    let mut tx = pool.begin().await?;
    let changed = sqlx::query(
        "UPDATE visits SET state = ?, reported_state = NULL WHERE id = ? AND state = ? AND status = 'waiting'",
    )
    .bind(to.code())
    .bind(id)
    .bind(from.code())
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if changed == 0 {
        return Ok(false);
    }
    // A move is recorded as a transition that stays in `waiting`, by who moved it.
    record(&mut tx, id, Some(VisitStatus::Waiting), VisitStatus::Waiting, actor, at).await?;
    tx.commit().await?;
    Ok(true)
}

pub async fn report_state(pool: &SqlitePool, id: &str, state: UsState) -> StoreResult<()> {
    sqlx::query("UPDATE visits SET reported_state = ? WHERE id = ?").bind(state.code()).bind(id).execute(pool).await?;
    Ok(())
}

pub async fn live_of(pool: &SqlitePool, provider: &str) -> StoreResult<Vec<Visit>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM visits WHERE provider_subject = ? AND status IN ('claimed', 'in_visit', 'wrap_up') ORDER BY created_at"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(provider).fetch_all(pool).await?;
    rows.iter().map(from_row).collect()
}

pub async fn live(pool: &SqlitePool) -> StoreResult<Vec<Visit>> {
    let sql =
        format!("SELECT {COLUMNS} FROM visits WHERE status IN ('claimed', 'in_visit', 'wrap_up') ORDER BY created_at");
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_all(pool).await?;
    rows.iter().map(from_row).collect()
}

pub async fn transitions(pool: &SqlitePool, id: &str) -> StoreResult<Vec<Transition>> {
    let rows = sqlx::query(
        "SELECT from_status, to_status, at, actor_subject, actor_role FROM visit_transitions WHERE visit_id = ? ORDER BY id",
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

pub async fn waiting(pool: &SqlitePool) -> StoreResult<Vec<Visit>> {
    let sql = format!("SELECT {COLUMNS} FROM visits WHERE status = 'waiting' ORDER BY created_at, id");
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_all(pool).await?;
    rows.iter().map(from_row).collect()
}

pub async fn count(pool: &SqlitePool) -> StoreResult<u64> {
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM visits").fetch_one(pool).await?;
    Ok(n as u64)
}
