//! The audit trail: appended in one transaction with its predecessor's hash, never updated.

use sqlx::Row;
use sqlx::postgres::{PgPool, PgRow};

use super::begin;
use crate::model::audit::GENESIS;
use crate::model::{AuditEntry, AuditRecord};
use crate::store::{StoreResult, from_millis, to_millis};

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

pub async fn append(pool: &PgPool, e: &AuditEntry) -> StoreResult<AuditRecord> {
    // EXCLUSIVE mode lets readers in but no other writer, whoever it is, until the commit: the
    // last hash read after it is the true predecessor, and ids are drawn in chain order, so
    // two appends never chain to the same record.
    let mut tx = begin(pool).await?;
    sqlx::query("LOCK TABLE audit_log IN EXCLUSIVE MODE").execute(&mut *tx).await?;
    let prev: Option<String> =
        sqlx::query_scalar("SELECT hash FROM audit_log ORDER BY id DESC LIMIT 1").fetch_optional(&mut *tx).await?;
    let prev = prev.unwrap_or_else(|| GENESIS.to_string());
    let hash = e.chain_hash(&prev);
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO audit_log (at, subject, role, action, visit_id, target, outcome, prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
    )
    .bind(to_millis(e.at))
    .bind(&e.subject)
    .bind(&e.role)
    .bind(&e.action)
    .bind(&e.visit_id)
    .bind(&e.target)
    .bind(&e.outcome)
    .bind(&prev)
    .bind(&hash)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(AuditRecord { id, entry: e.clone(), prev_hash: prev, hash })
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
