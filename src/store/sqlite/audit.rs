//! The audit trail: appended a batch at a time in one transaction with its predecessor's hash,
//! never updated.

use std::sync::Arc;

use sqlx::sqlite::{SqliteConnection, SqlitePool, SqliteRow};
use sqlx::{QueryBuilder, Row, Sqlite};
use tokio::sync::Mutex;

use crate::model::audit::{GENESIS, chain};
use crate::model::{AuditEntry, AuditRecord};
use crate::store::{AUDIT_COLUMNS, AUDIT_ROW_COLUMNS, StoreResult, entry_from_row, push_record};

fn from_row(row: &SqliteRow) -> StoreResult<AuditRecord> {
    Ok(AuditRecord {
        id: row.try_get("id")?,
        entry: entry_from_row(row)?,
        prev_hash: row.try_get("prev_hash")?,
        hash: row.try_get("hash")?,
    })
}

/// Rows per INSERT statement: nine parameters each stays well under SQLite's 32,766.
const ROWS_PER_INSERT: usize = 256;

/// The hash the trail ends with, as this store last wrote or read it; `None` until known.
/// Held across an append, so appends chain in the order they commit.
pub type Head = Arc<Mutex<Option<String>>>;

/// Appends `entries` in order, chained, in one transaction: one commit for a whole batch. In a
/// task of its own, so that a caller that stops waiting cannot leave the transaction open.
pub async fn append(pool: &SqlitePool, head: &Head, entries: &[AuditEntry]) -> StoreResult<Vec<AuditRecord>> {
    if entries.is_empty() {
        return Ok(Vec::new());
    }
    let (pool, head, entries) = (pool.clone(), head.clone(), entries.to_vec());
    super::apart(async move {
        let mut head = head.lock_owned().await;
        let result = append_now(&pool, &mut head, &entries).await;
        if result.is_err() {
            // Whether the last commit happened is unknown: read the head again next time.
            *head = None;
        }
        result
    })
    .await
}

async fn append_now(
    pool: &SqlitePool,
    head: &mut Option<String>,
    entries: &[AuditEntry],
) -> StoreResult<Vec<AuditRecord>> {
    let mut conn = pool.acquire().await?;
    // The whole transaction in one trip to SQLite's thread (each trip costs two context
    // switches): BEGIN, the INSERTs, COMMIT. Each INSERT stores its rows only if the trail
    // still ends where this store believes, so a head gone stale (another writer on the
    // file) stores nothing; then the head is read again and the batch chained anew.
    for _ in 0..2 {
        let prev = known_head(&mut conn, head).await?;
        let mut records = chain(entries, prev);
        let mut ids: Vec<i64> = match guarded_insert(&records).build_query_scalar().fetch_all(&mut *conn).await {
            Ok(ids) => ids,
            Err(err) => {
                // Whatever ran of the transaction is undone; the connection goes back clean.
                let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
                return Err(err.into());
            }
        };
        if ids.len() != records.len() {
            // Nothing of this batch was stored past the first stale guard: chain it anew.
            if !ids.is_empty() {
                return Err(corrupt_append());
            }
            *head = None;
            continue;
        }
        // AUTOINCREMENT hands the rows of one statement ascending ids in VALUES order, and
        // later statements higher ones; RETURNING itself promises no order.
        ids.sort_unstable();
        for (r, id) in records.iter_mut().zip(ids) {
            r.id = id;
        }
        *head = records.last().map(|r| r.hash.clone());
        return Ok(records);
    }
    Err(corrupt_append())
}

/// The hash the trail ends with: as remembered, or read when not known.
pub(super) async fn known_head(conn: &mut SqliteConnection, head: &Option<String>) -> StoreResult<String> {
    if let Some(hash) = head {
        return Ok(hash.clone());
    }
    let last: Option<String> =
        sqlx::query_scalar("SELECT hash FROM audit_log ORDER BY id DESC LIMIT 1").fetch_optional(conn).await?;
    Ok(last.unwrap_or_else(|| GENESIS.to_string()))
}

fn corrupt_append() -> crate::store::StoreError {
    crate::store::corrupt("the audit trail changed under a batch being appended")
}

/// `BEGIN IMMEDIATE`, one INSERT per chunk, each guarded by the hash the trail must end with
/// before it, and `COMMIT`, as one query.
fn guarded_insert(records: &[AuditRecord]) -> QueryBuilder<Sqlite> {
    let mut q = QueryBuilder::<Sqlite>::new("BEGIN IMMEDIATE; ");
    for chunk in records.chunks(ROWS_PER_INSERT) {
        q.push(format_args!("INSERT INTO audit_log ({AUDIT_COLUMNS}) SELECT * FROM ("));
        q.push_values(chunk.iter(), |mut row, r| push_record(&mut row, r));
        q.push(") WHERE COALESCE((SELECT hash FROM audit_log ORDER BY id DESC LIMIT 1), ");
        q.push_bind(GENESIS);
        q.push(") = ");
        q.push_bind(chunk[0].prev_hash.clone());
        q.push(" RETURNING id; ");
    }
    q.push("COMMIT");
    q
}

pub async fn trail(pool: &SqlitePool, after_id: i64, limit: u32) -> StoreResult<Vec<AuditRecord>> {
    let sql = format!("SELECT {AUDIT_ROW_COLUMNS} FROM audit_log WHERE id > ? ORDER BY id LIMIT ?");
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(after_id).bind(limit as i64).fetch_all(pool).await?;
    rows.iter().map(from_row).collect()
}

pub async fn for_visit(pool: &SqlitePool, visit_id: &str) -> StoreResult<Vec<AuditRecord>> {
    let sql = format!("SELECT {AUDIT_ROW_COLUMNS} FROM audit_log WHERE visit_id = ? ORDER BY id");
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(visit_id).fetch_all(pool).await?;
    rows.iter().map(from_row).collect()
}
