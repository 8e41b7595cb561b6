//! The audit trail: appended a batch at a time in one transaction with its predecessor's hash,
//! never updated.

use sqlx::postgres::{PgPool, PgRow};
use sqlx::{Postgres, QueryBuilder, Row};

use super::begin;
use crate::model::audit::{GENESIS, chain};
use crate::model::{AuditEntry, AuditRecord};
use crate::store::{AUDIT_COLUMNS, StoreResult, from_millis, push_record};

const COLUMNS: &str = "id, at, subject, role, action, visit_id, target, outcome, prev_hash, hash";

fn from_row(row: &PgRow) -> StoreResult<AuditRecord> {
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

/// Rows per INSERT statement: nine parameters each stays well under PostgreSQL's 65,535.
const ROWS_PER_INSERT: usize = 256;

/// Appends `entries` in order, chained, in one transaction: one commit for a whole batch.
pub async fn append(pool: &PgPool, entries: &[AuditEntry]) -> StoreResult<Vec<AuditRecord>> {
    if entries.is_empty() {
        return Ok(Vec::new());
    }
    // EXCLUSIVE mode lets readers in but no other writer, whoever it is, until the commit: the
    // last hash read after it is the true predecessor, and ids are drawn in chain order, so
    // two appends never chain to the same record.
    let mut tx = begin(pool).await?;
    sqlx::query("LOCK TABLE audit_log IN EXCLUSIVE MODE").execute(&mut *tx).await?;
    let prev: Option<String> =
        sqlx::query_scalar("SELECT hash FROM audit_log ORDER BY id DESC LIMIT 1").fetch_optional(&mut *tx).await?;
    let mut records = chain(entries, prev.unwrap_or_else(|| GENESIS.to_string()));
    for chunk in records.chunks_mut(ROWS_PER_INSERT) {
        let mut insert = QueryBuilder::<Postgres>::new(format!("INSERT INTO audit_log ({AUDIT_COLUMNS}) "));
        insert.push_values(chunk.iter(), |mut row, r| push_record(&mut row, r));
        insert.push(" RETURNING id");
        let mut ids: Vec<i64> = insert.build_query_scalar().fetch_all(&mut *tx).await?;
        // The sequence is drawn row by row in VALUES order under the table lock; RETURNING
        // itself promises no order.
        ids.sort_unstable();
        for (r, id) in chunk.iter_mut().zip(ids) {
            r.id = id;
        }
    }
    tx.commit().await?;
    Ok(records)
}

pub async fn trail(pool: &PgPool, after_id: i64, limit: u32) -> StoreResult<Vec<AuditRecord>> {
    let sql = format!("SELECT {COLUMNS} FROM audit_log WHERE id > $1 ORDER BY id LIMIT $2");
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(after_id).bind(limit as i64).fetch_all(pool).await?;
    rows.iter().map(from_row).collect()
}

pub async fn for_visit(pool: &PgPool, visit_id: &str) -> StoreResult<Vec<AuditRecord>> {
    let sql = format!("SELECT {COLUMNS} FROM audit_log WHERE visit_id = $1 ORDER BY id");
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(visit_id).fetch_all(pool).await?;
    rows.iter().map(from_row).collect()
}
