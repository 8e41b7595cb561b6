//! The directory: caregivers and per-state settings.

use sqlx::Row;
use sqlx::postgres::{PgPool, PgRow};

use super::corrupt;
use crate::model::{Caregiver, CaregiverKind, StateSettings};
use crate::store::{StoreResult, from_millis, join_states, split_states, to_millis};

const COLUMNS: &str = "subject, name, kind, states, active, created_at, updated_at";

fn caregiver_from_row(row: &PgRow) -> StoreResult<Caregiver> {
    let kind: String = row.try_get("kind")?;
    let states: String = row.try_get("states")?;
    Ok(Caregiver {
        subject: row.try_get("subject")?,
        name: row.try_get("name")?,
        kind: CaregiverKind::parse(&kind).ok_or_else(|| corrupt("caregiver kind"))?,
        states: split_states(&states)?,
        active: row.try_get("active")?,
        created_at: from_millis(row.try_get("created_at")?)?,
        updated_at: from_millis(row.try_get("updated_at")?)?,
    })
}

pub async fn insert_caregiver(pool: &PgPool, c: &Caregiver) -> StoreResult<bool> {
    let inserted = sqlx::query(
        "INSERT INTO caregivers (subject, name, kind, states, active, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (subject) DO NOTHING",
    )
    .bind(&c.subject)
    .bind(&c.name)
    .bind(c.kind.as_str())
    .bind(join_states(&c.states))
    .bind(c.active)
    .bind(to_millis(c.created_at))
    .bind(to_millis(c.updated_at))
    .execute(pool)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

pub async fn get_caregiver(pool: &PgPool, subject: &str) -> StoreResult<Option<Caregiver>> {
    let sql = format!("SELECT {COLUMNS} FROM caregivers WHERE subject = $1");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(subject).fetch_optional(pool).await?;
    row.as_ref().map(caregiver_from_row).transpose()
}

/// In byte order of the subject (`COLLATE "C"`), as SQLite orders text.
pub async fn list_caregivers(pool: &PgPool) -> StoreResult<Vec<Caregiver>> {
    let sql = format!("SELECT {COLUMNS} FROM caregivers ORDER BY subject COLLATE \"C\"");
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_all(pool).await?;
    rows.iter().map(caregiver_from_row).collect()
}

pub async fn update_caregiver(pool: &PgPool, c: &Caregiver) -> StoreResult<bool> {
    let changed = sqlx::query(
        "UPDATE caregivers SET name = $1, kind = $2, states = $3, active = $4, updated_at = $5 WHERE subject = $6",
    )
    .bind(&c.name)
    .bind(c.kind.as_str())
    .bind(join_states(&c.states))
    .bind(c.active)
    .bind(to_millis(c.updated_at))
    .bind(&c.subject)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(changed == 1)
}

pub async fn state_settings(pool: &PgPool) -> StoreResult<Vec<StateSettings>> {
    let rows = sqlx::query("SELECT settings FROM state_settings ORDER BY state COLLATE \"C\"").fetch_all(pool).await?;
    rows.iter()
        .map(|row| {
            let text: String = row.try_get("settings")?;
            serde_json::from_str(&text).map_err(|_| corrupt("state settings"))
        })
        .collect()
}

pub async fn put_state_settings(pool: &PgPool, s: &StateSettings) -> StoreResult<()> {
    let text = serde_json::to_string(s).map_err(|_| corrupt("state settings"))?;
    sqlx::query(
        "INSERT INTO state_settings (state, settings) VALUES ($1, $2) ON CONFLICT (state) DO UPDATE SET settings = EXCLUDED.settings",
    )
    .bind(s.state.code())
    .bind(text)
    .execute(pool)
    .await?;
    Ok(())
}
