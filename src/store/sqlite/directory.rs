//! The directory: caregivers and per-state settings.

use sqlx::Row;
use sqlx::sqlite::{SqlitePool, SqliteRow};

use super::corrupt;
use crate::model::{Caregiver, CaregiverKind, StateSettings};
use crate::store::{StoreResult, from_millis, join_states, split_states, to_millis};

fn caregiver_from_row(row: &SqliteRow) -> StoreResult<Caregiver> {
    let kind: String = row.try_get("kind")?;
    let states: String = row.try_get("states")?;
    Ok(Caregiver {
        subject: row.try_get("subject")?,
        name: row.try_get("name")?,
        kind: CaregiverKind::parse(&kind).ok_or_else(|| corrupt("caregiver kind"))?,
        states: split_states(&states)?,
        active: row.try_get::<i64, _>("active")? != 0,
        created_at: from_millis(row.try_get("created_at")?)?,
        updated_at: from_millis(row.try_get("updated_at")?)?,
    })
}
pub async fn insert_caregiver(pool: &SqlitePool, c: &Caregiver) -> StoreResult<bool> {
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
    .execute(pool)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

pub async fn get_caregiver(pool: &SqlitePool, subject: &str) -> StoreResult<Option<Caregiver>> {
    let row = sqlx::query("SELECT * FROM caregivers WHERE subject = ?").bind(subject).fetch_optional(pool).await?;
    row.as_ref().map(caregiver_from_row).transpose()
}

pub async fn list_caregivers(pool: &SqlitePool) -> StoreResult<Vec<Caregiver>> {
    let rows = sqlx::query("SELECT * FROM caregivers ORDER BY subject").fetch_all(pool).await?;
    rows.iter().map(caregiver_from_row).collect()
}

pub async fn update_caregiver(pool: &SqlitePool, c: &Caregiver) -> StoreResult<bool> {
    let changed = sqlx::query(
        "UPDATE caregivers SET name = ?, kind = ?, states = ?, active = ?, updated_at = ? WHERE subject = ?",
    )
    .bind(&c.name)
    .bind(c.kind.as_str())
    .bind(join_states(&c.states))
    .bind(c.active as i64)
    .bind(to_millis(c.updated_at))
    .bind(&c.subject)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(changed == 1)
}

pub async fn state_settings(pool: &SqlitePool) -> StoreResult<Vec<StateSettings>> {
    let rows = sqlx::query("SELECT settings FROM state_settings").fetch_all(pool).await?;
    rows.iter()
        .map(|row| {
            let text: String = row.try_get("settings")?;
            serde_json::from_str(&text).map_err(|_| corrupt("state settings"))
        })
        .collect()
}

pub async fn put_state_settings(pool: &SqlitePool, s: &StateSettings) -> StoreResult<()> {
    let text = serde_json::to_string(s).map_err(|_| corrupt("state settings"))?;
    sqlx::query("INSERT INTO state_settings (state, settings) VALUES (?, ?) ON CONFLICT (state) DO UPDATE SET settings = excluded.settings")
        .bind(s.state.code())
        .bind(text)
        .execute(pool)
        .await?;
    Ok(())
}
