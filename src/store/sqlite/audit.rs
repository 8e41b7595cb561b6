//! The audit trail: appended a batch at a time in one transaction with its predecessor's hash,
//! never updated.

use sqlx::sqlite::{SqlitePool, SqliteRow};
use sqlx::{QueryBuilder, Row, Sqlite};

use crate::model::audit::{GENESIS, chain};
use crate::model::{AuditEntry, AuditRecord};
use crate::store::{StoreResult, from_millis, to_millis};

const COLUMNS: &str = "id, at, subject, role, action, visit_id, target, outcome, prev_hash, hash";

fn from_row(row: &SqliteRow) -> StoreResult<AuditRecord> {
    Ok(AuditRecord {
        id: row.try_get("id")?,
        entry: AuditEntry {
            at: from_millis(row.try_get("at")?)?,
            subject: row.try_get("subject")?,
            role: row.try_get("role")?,
            action: row.try_get("action")?,
            visit_id: row.try_get("visit_id")?,
            target: row.try_get("target")?,
            outcome: row.try_get("outcome")?,
        },
        prev_hash: row.try_get("prev_hash")?,
        hash: row.try_get("hash")?,
    })
}

/// Rows per INSERT statement: nine parameters each stays well under SQLite's 32,766.
const ROWS_PER_INSERT: usize = 256;

/// Appends `entries` in order, chained, in one transaction: one commit for a whole batch. In a
/// task of its own, so that a caller that stops waiting cannot leave the transaction open.
pub async fn append(pool: &SqlitePool, entries: &[AuditEntry]) -> StoreResult<Vec<AuditRecord>> {
    if entries.is_empty() {
        return Ok(Vec::new());
    }
    let (pool, entries) = (pool.clone(), entries.to_vec());
    super::apart(async move { append_now(&pool, &entries).await }).await
}

async fn append_now(pool: &SqlitePool, entries: &[AuditEntry]) -> StoreResult<Vec<AuditRecord>> {
    // BEGIN IMMEDIATE takes the write lock before reading the last hash, so two appends can
    // never chain to the same predecessor. Each trip to SQLite's thread costs two context
    // switches, so statements travel together: the BEGIN with the read, the last INSERT with
    // the COMMIT (sqlx runs the statements of one query in turn). An error rolls back.
    let mut conn = pool.acquire().await?;
    let result = async {
        let prev: Option<String> =
            sqlx::query_scalar("BEGIN IMMEDIATE; SELECT hash FROM audit_log ORDER BY id DESC LIMIT 1")
                .fetch_optional(&mut *conn)
                .await?;
        let mut records = chain(entries, prev.unwrap_or_else(|| GENESIS.to_string()));
        let chunks = records.len().div_ceil(ROWS_PER_INSERT);
        for (n, chunk) in records.chunks_mut(ROWS_PER_INSERT).enumerate() {
            let mut insert = QueryBuilder::<Sqlite>::new(
                "INSERT INTO audit_log (at, subject, role, action, visit_id, target, outcome, prev_hash, hash) ",
            );
            insert.push_values(chunk.iter(), |mut row, r| {
                let e = &r.entry;
                row.push_bind(to_millis(e.at))
                    .push_bind(e.subject.clone())
                    .push_bind(e.role.clone())
                    .push_bind(e.action.clone())
                    .push_bind(e.visit_id.clone())
                    .push_bind(e.target.clone())
                    .push_bind(e.outcome.clone())
                    .push_bind(r.prev_hash.clone())
                    .push_bind(r.hash.clone());
            });
            insert.push(" RETURNING id");
            if n + 1 == chunks {
                insert.push("; COMMIT");
            }
            let mut ids: Vec<i64> = insert.build_query_scalar().fetch_all(&mut *conn).await?;
            // AUTOINCREMENT hands the rows of one statement ascending ids in VALUES order;
            // RETURNING itself promises no order.
            ids.sort_unstable();
            for (r, id) in chunk.iter_mut().zip(ids) {
                r.id = id;
            }
        }
        Ok::<_, sqlx::Error>(records)
    }
    .await;
    match result {
        Ok(records) => Ok(records),
        Err(err) => {
            // Whatever ran of the transaction is undone; the connection goes back clean.
            let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
            Err(err.into())
        }
    }
}

pub async fn trail(pool: &SqlitePool, after_id: i64, limit: u32) -> StoreResult<Vec<AuditRecord>> {
    let sql = format!("SELECT {COLUMNS} FROM audit_log WHERE id > ? ORDER BY id LIMIT ?");
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(after_id).bind(limit as i64).fetch_all(pool).await?;
    rows.iter().map(from_row).collect()
}

pub async fn for_visit(pool: &SqlitePool, visit_id: &str) -> StoreResult<Vec<AuditRecord>> {
    let sql = format!("SELECT {COLUMNS} FROM audit_log WHERE visit_id = ? ORDER BY id");
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(visit_id).fetch_all(pool).await?;
    rows.iter().map(from_row).collect()
}
