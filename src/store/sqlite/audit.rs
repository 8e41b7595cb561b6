//! The audit trail: appended in one transaction with its predecessor's hash, never updated.

use sqlx::Row;
use sqlx::sqlite::{SqlitePool, SqliteRow};

use crate::model::audit::GENESIS;
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

pub async fn append(pool: &SqlitePool, e: &AuditEntry) -> StoreResult<AuditRecord> {
    // BEGIN IMMEDIATE takes the write lock before reading the last hash, so two appends can
    // never chain to the same predecessor.
    let mut conn = pool.acquire().await?;
    sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
    let result = async {
        let prev: Option<String> = sqlx::query_scalar("SELECT hash FROM audit_log ORDER BY id DESC LIMIT 1").fetch_optional(&mut *conn).await?;
        let prev = prev.unwrap_or_else(|| GENESIS.to_string());
        let hash = e.chain_hash(&prev);
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO audit_log (at, subject, role, action, visit_id, target, outcome, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
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
        .fetch_one(&mut *conn)
        .await?;
        Ok::<_, sqlx::Error>(AuditRecord { id, entry: e.clone(), prev_hash: prev, hash })
    }
    .await;
    match result {
        Ok(record) => {
            sqlx::query("COMMIT").execute(&mut *conn).await?;
            Ok(record)
        }
        Err(err) => {
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
