//! The audit trail: appended a batch at a time in one transaction with its predecessor's hash,
//! never updated. A change's record is first staged in `audit_outbox` inside the change's own
//! statement ([`push_staged`]), so the two commit together, then chained by the next append: the
//! node's chainer's ([`chain_staged_in_background`]), a read's, or the audit writer's.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgPool, PgRow};
use sqlx::{Postgres, QueryBuilder, Row};
use tokio::sync::{Mutex, mpsc};

use super::begin;
use crate::model::audit::{GENESIS, chain};
use crate::model::{AuditEntry, AuditRecord};
use crate::store::{
    AUDIT_COLUMNS, AUDIT_ROW_COLUMNS, ENTRY_COLUMNS, StoreResult, entry_from_row, push_entry, to_millis,
};

fn from_row(row: &PgRow) -> StoreResult<AuditRecord> {
    Ok(AuditRecord {
        id: row.try_get("id")?,
        entry: entry_from_row(row)?,
        prev_hash: row.try_get("prev_hash")?,
        hash: row.try_get("hash")?,
    })
}

/// Stages a change's audit record `entry`, when given: adds `, staged AS (...)` to the change's
/// statement of common table expressions, staging it once per row that `source` (the change's
/// `RETURNING`) returns, so it is stored only with a change that happened, and commits with it.
pub fn push_staged(q: &mut QueryBuilder<Postgres>, source: &str, entry: Option<&AuditEntry>) {
    let Some(entry) = entry else { return };
    q.push(format!(", staged AS (INSERT INTO audit_outbox ({ENTRY_COLUMNS}) SELECT "));
    push_entry(&mut q.separated(", "), entry);
    q.push(format!(" FROM {source})"));
}

/// Appends the staged records (oldest first), then `entries` in order, chained, in one
/// transaction: one commit for a whole batch. Returns the records of `entries`.
pub async fn append(pool: &PgPool, entries: &[AuditEntry]) -> StoreResult<Vec<AuditRecord>> {
    Ok(append_counted(pool, entries).await?.0)
}

/// [`append`], also saying how many staged records it moved (at most [`MAX_STAGED`]).
async fn append_counted(pool: &PgPool, entries: &[AuditEntry]) -> StoreResult<(Vec<AuditRecord>, usize)> {
    if entries.is_empty() {
        let staged: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM audit_outbox)").fetch_one(pool).await?;
        if !staged {
            return Ok((Vec::new(), 0));
        }
    }
    // EXCLUSIVE mode lets readers in but no other writer, whoever it is, until the commit: the
    // last hash read after it is the true predecessor, and ids are drawn in chain order, so
    // two appends never chain to the same record. Staging takes no lock: a record staged
    // meanwhile waits for the next append.
    let mut tx = begin(pool).await?;
    sqlx::query("LOCK TABLE audit_log IN EXCLUSIVE MODE").execute(&mut *tx).await?;
    let staged_rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DELETE FROM audit_outbox WHERE id IN (SELECT id FROM audit_outbox ORDER BY id LIMIT {MAX_STAGED}) RETURNING id, {ENTRY_COLUMNS}"
    )))
    .fetch_all(&mut *tx)
    .await?;
    let mut staged = staged_rows
        .iter()
        .map(|row| Ok((row.try_get::<i64, _>("id")?, entry_from_row(row)?)))
        .collect::<StoreResult<Vec<_>>>()?;
    // RETURNING promises no order: chained in the order they were staged.
    staged.sort_unstable_by_key(|(id, _)| *id);
    let staged_count = staged.len();
    let all: Vec<AuditEntry> = staged.into_iter().map(|(_, e)| e).chain(entries.iter().cloned()).collect();
    let prev: Option<String> =
        sqlx::query_scalar("SELECT hash FROM audit_log ORDER BY id DESC LIMIT 1").fetch_optional(&mut *tx).await?;
    let mut records = chain(&all, prev.unwrap_or_else(|| GENESIS.to_string()));
    if !records.is_empty() {
        let mut ids: Vec<i64> = insert_all(&records).fetch_all(&mut *tx).await?;
        // The sequence is drawn row by row in the arrays' order under the table lock;
        // RETURNING itself promises no order.
        ids.sort_unstable();
        for (r, id) in records.iter_mut().zip(ids) {
            r.id = id;
        }
    }
    tx.commit().await?;
    Ok((records.split_off(staged_count), staged_count))
}

/// The INSERT of chained records, in order: one array per column, so the statement is the same
/// whatever the number of rows (one plan, kept in each connection's statement cache, where a
/// multi-row `VALUES` made a new statement for every batch size and pushed others out).
fn insert_all(
    records: &[AuditRecord],
) -> sqlx::query::QueryScalar<'static, Postgres, i64, sqlx::postgres::PgArguments> {
    let texts = |f: fn(&AuditRecord) -> &String| records.iter().map(|r| f(r).clone()).collect::<Vec<String>>();
    let optional = |f: fn(&AuditRecord) -> &Option<String>| records.iter().map(|r| f(r).clone()).collect::<Vec<_>>();
    // The arrays bind in AUDIT_COLUMNS order.
    let sql = format!(
        "INSERT INTO audit_log ({AUDIT_COLUMNS}) SELECT {AUDIT_COLUMNS} FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[]) WITH ORDINALITY AS r({AUDIT_COLUMNS}, n) ORDER BY n RETURNING id"
    );
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .bind(records.iter().map(|r| to_millis(r.entry.at)).collect::<Vec<i64>>())
        .bind(texts(|r| &r.entry.subject))
        .bind(texts(|r| &r.entry.role))
        .bind(texts(|r| &r.entry.action))
        .bind(optional(|r| &r.entry.visit_id))
        .bind(optional(|r| &r.entry.target))
        .bind(texts(|r| &r.entry.outcome))
        .bind(texts(|r| &r.prev_hash))
        .bind(texts(|r| &r.hash))
}

/// Staged records moved per append at most: a backlog left by a crash goes over several.
const MAX_STAGED: usize = 4096;

/// How long the chainer lets records gather after a change woke it: what a node's changes
/// stage in that time is chained in one transaction, where chaining each change's record right
/// after it took a transaction of its own per change (BENCHMARKS.md). Reads of the trail chain
/// first, so they never see it behind.
const GATHER: Duration = Duration::from_millis(50);

/// The node's chainer: woken by changes that staged a record, it chains everything staged
/// (by any node) after a short gathering time, one append at a time with the node's reads of
/// the trail. It ends when the store is dropped, leaving what is staged to the next start or
/// another node.
pub async fn chain_staged_in_background(pool: PgPool, chaining: Arc<Mutex<()>>, mut staged: mpsc::Receiver<()>) {
    while staged.recv().await.is_some() {
        tokio::time::sleep(GATHER).await;
        if staged.is_closed() {
            return;
        }
        // Wake-ups of records staged meanwhile are answered by this round: it starts after.
        while staged.try_recv().is_ok() {}
        let _one_at_a_time = chaining.lock().await;
        if let Err(e) = chain_all_staged(&pool).await {
            // Staged records are durable: the next change's round or a read chains them.
            tracing::warn!(error = %e, "audit records staged with their changes wait for the next append");
        }
    }
}

/// Chains every staged record (at start-up, for those a crash left behind, and by the chainer).
pub async fn chain_all_staged(pool: &PgPool) -> StoreResult<()> {
    while append_counted(pool, &[]).await?.1 == MAX_STAGED {}
    Ok(())
}

pub async fn trail(pool: &PgPool, after_id: i64, limit: u32) -> StoreResult<Vec<AuditRecord>> {
    let sql = format!("SELECT {AUDIT_ROW_COLUMNS} FROM audit_log WHERE id > $1 ORDER BY id LIMIT $2");
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(after_id).bind(limit as i64).fetch_all(pool).await?;
    rows.iter().map(from_row).collect()
}

pub async fn for_visit(pool: &PgPool, visit_id: &str) -> StoreResult<Vec<AuditRecord>> {
    let sql = format!("SELECT {AUDIT_ROW_COLUMNS} FROM audit_log WHERE visit_id = $1 ORDER BY id");
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(visit_id).fetch_all(pool).await?;
    rows.iter().map(from_row).collect()
}
