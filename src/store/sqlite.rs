//! The SQLite store: one file in WAL mode, migrations embedded in the binary and run at open.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};

use super::{
    IdempotencyKey, InsertOutcome, Store, StoreError, StoreResult, Transition, from_millis,
    to_millis,
};
use crate::model::{
    Actor, Caregiver, CaregiverKind, StateSettings, UsState, Visit, VisitId, VisitStatus,
};

pub struct SqliteStore {
    pool: SqlitePool,
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Unavailable(e.to_string())
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and runs migrations.
    pub async fn open(path: &Path) -> anyhow::Result<SqliteStore> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true);
        Self::connect(options, 4).await
    }

    /// A private in-memory database, for tests.
    pub async fn in_memory() -> anyhow::Result<SqliteStore> {
        // One connection: each in-memory connection would be its own database.
        Self::connect(SqliteConnectOptions::from_str("sqlite::memory:")?, 1).await
    }

    async fn connect(
        options: SqliteConnectOptions,
        max_connections: u32,
    ) -> anyhow::Result<SqliteStore> {
        let options = options
            .journal_mode(SqliteJournalMode::Wal)
            // WAL with NORMAL is durable across a process crash; only a power loss can drop
            // the last commits, which the fsync cost per intake is not worth on a laptop node.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(max_connections)
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        Ok(SqliteStore { pool })
    }
}

async fn insert_transition(
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

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

fn visit_from_row(row: &SqliteRow) -> StoreResult<Visit> {
    let state: String = row.try_get("state")?;
    let status: String = row.try_get("status")?;
    Ok(Visit {
        id: row.try_get("id")?,
        state: UsState::parse(&state).map_err(|_| corrupt("visit state"))?,
        display_name: row.try_get("display_name")?,
        reason: row.try_get("reason")?,
        status: VisitStatus::parse(&status).ok_or_else(|| corrupt("visit status"))?,
        created_at: from_millis(row.try_get("created_at")?)?,
        estimated_wait_secs: row
            .try_get::<Option<i64>, _>("estimated_wait_secs")?
            .map(|v| v as u64),
        waited_secs: row
            .try_get::<Option<i64>, _>("waited_secs")?
            .map(|v| v as u64),
    })
}

fn caregiver_from_row(row: &SqliteRow) -> StoreResult<Caregiver> {
    let kind: String = row.try_get("kind")?;
    let states: String = row.try_get("states")?;
    Ok(Caregiver {
        subject: row.try_get("subject")?,
        name: row.try_get("name")?,
        kind: CaregiverKind::parse(&kind).ok_or_else(|| corrupt("caregiver kind"))?,
        states: states
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| UsState::parse(s).map_err(|_| corrupt("caregiver states")))
            .collect::<StoreResult<_>>()?,
        active: row.try_get::<i64, _>("active")? != 0,
        created_at: from_millis(row.try_get("created_at")?)?,
        updated_at: from_millis(row.try_get("updated_at")?)?,
    })
}

fn join_states(states: &[UsState]) -> String {
    states
        .iter()
        .map(|s| s.code())
        .collect::<Vec<_>>()
        .join(",")
}

const VISIT_COLUMNS: &str =
    "id, state, display_name, reason, status, created_at, estimated_wait_secs, waited_secs";

#[async_trait]
impl Store for SqliteStore {
    async fn insert_visit(
        &self,
        visit: &Visit,
        actor: &Actor,
        key: Option<&IdempotencyKey>,
    ) -> StoreResult<InsertOutcome> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO visits (id, state, display_name, reason, status, created_at, estimated_wait_secs, waited_secs) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&visit.id)
        .bind(visit.state.code())
        .bind(&visit.display_name)
        .bind(&visit.reason)
        .bind(visit.status.as_str())
        .bind(to_millis(visit.created_at))
        .bind(visit.estimated_wait_secs.map(|v| v as i64))
        .bind(visit.waited_secs.map(|v| v as i64))
        .execute(&mut *tx)
        .await?;
        if let Some(key) = key {
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
                let (visit_id, request_hash) = self
                    .idempotent_visit(&key.key)
                    .await?
                    .ok_or_else(|| corrupt("idempotency key vanished"))?;
                return Ok(InsertOutcome::Replayed {
                    visit_id,
                    request_hash,
                });
            }
        }
        insert_transition(
            &mut tx,
            &visit.id,
            None,
            visit.status,
            actor,
            visit.created_at,
        )
        .await?;
        tx.commit().await?;
        Ok(InsertOutcome::Inserted)
    }

    async fn idempotent_visit(&self, key: &str) -> StoreResult<Option<(VisitId, String)>> {
        let row = sqlx::query("SELECT visit_id, request_hash FROM idempotency_keys WHERE key = ?")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| Ok((row.try_get("visit_id")?, row.try_get("request_hash")?)))
            .transpose()
    }

    async fn get_visit(&self, id: &str) -> StoreResult<Option<Visit>> {
        let sql = format!("SELECT {VISIT_COLUMNS} FROM visits WHERE id = ?");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(visit_from_row).transpose()
    }

    async fn transition_visit(
        &self,
        id: &str,
        from: VisitStatus,
        to: VisitStatus,
        actor: &Actor,
        at: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let mut tx = self.pool.begin().await?;
        let changed = sqlx::query("UPDATE visits SET status = ? WHERE id = ? AND status = ?")
            .bind(to.as_str())
            .bind(id)
            .bind(from.as_str())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if changed == 0 {
            return Ok(false);
        }
        insert_transition(&mut tx, id, Some(from), to, actor, at).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn transitions(&self, id: &str) -> StoreResult<Vec<Transition>> {
        let rows = sqlx::query(
            "SELECT from_status, to_status, at, actor_subject, actor_role FROM visit_transitions WHERE visit_id = ? ORDER BY id",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let from: Option<String> = row.try_get("from_status")?;
                let to: String = row.try_get("to_status")?;
                Ok(Transition {
                    from: from
                        .map(|f| VisitStatus::parse(&f).ok_or_else(|| corrupt("transition")))
                        .transpose()?,
                    to: VisitStatus::parse(&to).ok_or_else(|| corrupt("transition"))?,
                    at: from_millis(row.try_get("at")?)?,
                    actor_subject: row.try_get("actor_subject")?,
                    actor_role: row.try_get("actor_role")?,
                })
            })
            .collect()
    }

    async fn waiting_visits(&self) -> StoreResult<Vec<Visit>> {
        let sql = format!(
            "SELECT {VISIT_COLUMNS} FROM visits WHERE status = 'waiting' ORDER BY created_at, id"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(visit_from_row).collect()
    }

    async fn count_visits(&self) -> StoreResult<u64> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM visits")
            .fetch_one(&self.pool)
            .await?;
        Ok(n as u64)
    }

    async fn insert_caregiver(&self, c: &Caregiver) -> StoreResult<bool> {
        let inserted = sqlx::query(
            "INSERT INTO caregivers (subject, name, kind, states, active, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (subject) DO NOTHING",
        )
        .bind(&c.subject)
        .bind(&c.name)
        .bind(c.kind.as_str())
        .bind(join_states(&c.states))
        .bind(c.active as i64)
        .bind(to_millis(c.created_at))
        .bind(to_millis(c.updated_at))
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(inserted == 1)
    }

    async fn get_caregiver(&self, subject: &str) -> StoreResult<Option<Caregiver>> {
        let row = sqlx::query("SELECT * FROM caregivers WHERE subject = ?")
            .bind(subject)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(caregiver_from_row).transpose()
    }

    async fn list_caregivers(&self) -> StoreResult<Vec<Caregiver>> {
        let rows = sqlx::query("SELECT * FROM caregivers ORDER BY subject")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(caregiver_from_row).collect()
    }

    async fn update_caregiver(&self, c: &Caregiver) -> StoreResult<bool> {
        let changed = sqlx::query("UPDATE caregivers SET name = ?, kind = ?, states = ?, active = ?, updated_at = ? WHERE subject = ?")
            .bind(&c.name)
            .bind(c.kind.as_str())
            .bind(join_states(&c.states))
            .bind(c.active as i64)
            .bind(to_millis(c.updated_at))
            .bind(&c.subject)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(changed == 1)
    }

    async fn state_settings(&self) -> StoreResult<Vec<StateSettings>> {
        let rows = sqlx::query("SELECT settings FROM state_settings")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                let text: String = row.try_get("settings")?;
                serde_json::from_str(&text).map_err(|_| corrupt("state settings"))
            })
            .collect()
    }

    async fn put_state_settings(&self, s: &StateSettings) -> StoreResult<()> {
        let text = serde_json::to_string(s).map_err(|_| corrupt("state settings"))?;
        sqlx::query("INSERT INTO state_settings (state, settings) VALUES (?, ?) ON CONFLICT (state) DO UPDATE SET settings = excluded.settings")
            .bind(s.state.code())
            .bind(text)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}
