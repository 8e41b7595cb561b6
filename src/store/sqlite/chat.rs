//! Conversations: messages (numbered per visit), read positions and members.

use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::sqlite::{SqlitePool, SqliteRow};

use super::commit::Committer;
use super::{SqliteQuery, corrupt};
use crate::model::{AuditEntry, UsState, VisitId, VisitStatus};
use crate::protocol::{ChatMessage, Participant};
use crate::store::{
    ConversationSummary, NewMessage, OpenConversation, StoreResult, from_millis, parse_role, to_millis,
};

fn message_from_row(row: &SqliteRow) -> StoreResult<ChatMessage> {
    let sender_role: String = row.try_get("sender_role")?;
    Ok(ChatMessage {
        visit_id: row.try_get("visit_id")?,
        seq: row.try_get::<i64, _>("seq")? as u64,
        message_id: row.try_get("message_id")?,
        client_id: row.try_get("client_id")?,
        from: Participant {
            subject: row.try_get("sender_subject")?,
            name: row.try_get("sender_name")?,
            role: parse_role(&sender_role)?,
        },
        body: row.try_get("body")?,
        sent_at: from_millis(row.try_get("sent_at")?)?,
    })
}

const COLUMNS: &str = "visit_id, seq, message_id, client_id, sender_subject, sender_role, sender_name, body, sent_at";

/// The INSERT of a message: the next seq is computed inside it (SQLite runs one writer at a
/// time, so two messages never get the same number). A new message comes back from the
/// INSERT itself; a retry (the conflict inserts nothing) returns no row.
fn insert_message(m: &NewMessage) -> (String, impl Fn(SqliteQuery) -> SqliteQuery + Send + Sync + 'static) {
    let sql = format!(
        "INSERT INTO chat_messages ({COLUMNS})
         SELECT ?, COALESCE(MAX(seq), 0) + 1, ?, ?, ?, ?, ?, ?, ? FROM chat_messages WHERE visit_id = ?
         ON CONFLICT (visit_id, sender_subject, client_id) DO NOTHING
         RETURNING {COLUMNS}"
    );
    let m = m.clone();
    let bind = move |q: SqliteQuery| {
        q.bind(m.visit_id.clone())
            .bind(m.message_id.clone())
            .bind(m.client_id.clone())
            .bind(m.from.subject.clone())
            .bind(m.from.role.as_str())
            .bind(m.from.name.clone())
            .bind(m.body.clone())
            .bind(to_millis(m.sent_at))
            .bind(m.visit_id.clone())
    };
    (sql, bind)
}

pub async fn append(pool: &SqlitePool, m: &NewMessage) -> StoreResult<(ChatMessage, bool)> {
    let (sql, bind) = insert_message(m);
    let inserted = bind(sqlx::query(sqlx::AssertSqlSafe(sql))).fetch_optional(pool).await?;
    match inserted {
        Some(row) => Ok((message_from_row(&row)?, true)),
        None => Ok((stored_before(pool, m).await?, false)),
    }
}

/// A message and the audit record of the request that sent it, in one trip; a retry stores
/// neither and returns the message stored the first time.
pub async fn append_recorded(
    pool: &SqlitePool,
    commits: &Committer,
    m: &NewMessage,
    entry: &AuditEntry,
) -> StoreResult<((ChatMessage, bool), bool)> {
    let (sql, bind) = insert_message(m);
    let (rows, recorded) = commits.commit(&[&sql], Box::new(bind), entry.clone()).await?;
    match rows.first() {
        Some(row) => Ok(((message_from_row(row)?, true), recorded)),
        None => Ok(((stored_before(pool, m).await?, false), false)),
    }
}

/// The message a retry's first attempt stored.
async fn stored_before(pool: &SqlitePool, m: &NewMessage) -> StoreResult<ChatMessage> {
    let sql =
        format!("SELECT {COLUMNS} FROM chat_messages WHERE visit_id = ? AND sender_subject = ? AND client_id = ?");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(&m.visit_id)
        .bind(&m.from.subject)
        .bind(&m.client_id)
        .fetch_one(pool)
        .await?;
    message_from_row(&row)
}

pub async fn page(
    pool: &SqlitePool,
    visit_id: &str,
    before_seq: Option<u64>,
    limit: u32,
) -> StoreResult<Vec<ChatMessage>> {
    let before = before_seq.map_or(i64::MAX, |s| s as i64);
    let sql = format!("SELECT {COLUMNS} FROM chat_messages WHERE visit_id = ? AND seq < ? ORDER BY seq DESC LIMIT ?");
    let rows =
        sqlx::query(sqlx::AssertSqlSafe(sql)).bind(visit_id).bind(before).bind(limit as i64).fetch_all(pool).await?;
    let mut messages = rows.iter().map(message_from_row).collect::<StoreResult<Vec<_>>>()?;
    messages.reverse();
    Ok(messages)
}

pub async fn mark_read(pool: &SqlitePool, visit_id: &str, subject: &str, up_to_seq: u64) -> StoreResult<u64> {
    sqlx::query(
        "INSERT INTO chat_reads (visit_id, subject, up_to_seq) VALUES (?, ?, ?)
         ON CONFLICT (visit_id, subject) DO UPDATE SET up_to_seq = MAX(up_to_seq, excluded.up_to_seq)",
    )
    .bind(visit_id)
    .bind(subject)
    .bind(up_to_seq as i64)
    .execute(pool)
    .await?;
    let n: i64 = sqlx::query_scalar("SELECT up_to_seq FROM chat_reads WHERE visit_id = ? AND subject = ?")
        .bind(visit_id)
        .bind(subject)
        .fetch_one(pool)
        .await?;
    Ok(n as u64)
}

pub async fn join(pool: &SqlitePool, visit_id: &str, member: &Participant, at: DateTime<Utc>) -> StoreResult<bool> {
    let n = sqlx::query(
        "INSERT INTO chat_members (visit_id, subject, name, role, joined_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT (visit_id, subject) DO NOTHING",
    )
    .bind(visit_id)
    .bind(&member.subject)
    .bind(&member.name)
    .bind(member.role.as_str())
    .bind(to_millis(at))
    .execute(pool)
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// A new member and the audit record of the request that joined them, in one trip; a
/// member already in stores neither.
pub async fn join_recorded(
    commits: &Committer,
    visit_id: &str,
    member: &Participant,
    at: DateTime<Utc>,
    entry: &AuditEntry,
) -> StoreResult<(bool, bool)> {
    let change = "INSERT INTO chat_members (visit_id, subject, name, role, joined_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT (visit_id, subject) DO NOTHING RETURNING visit_id";
    let (visit_id, member) = (visit_id.to_string(), member.clone());
    let bind = move |q: SqliteQuery| {
        q.bind(visit_id.clone())
            .bind(member.subject.clone())
            .bind(member.name.clone())
            .bind(member.role.as_str())
            .bind(to_millis(at))
    };
    let (rows, recorded) = commits.commit(&[change], Box::new(bind), entry.clone()).await?;
    Ok((!rows.is_empty(), recorded))
}

pub async fn leave(pool: &SqlitePool, visit_id: &str, subject: &str) -> StoreResult<bool> {
    let n = sqlx::query("DELETE FROM chat_members WHERE visit_id = ? AND subject = ?")
        .bind(visit_id)
        .bind(subject)
        .execute(pool)
        .await?
        .rows_affected();
    Ok(n == 1)
}

pub async fn members(pool: &SqlitePool, visit_id: &str) -> StoreResult<Vec<Participant>> {
    let rows =
        sqlx::query("SELECT subject, name, role FROM chat_members WHERE visit_id = ? ORDER BY joined_at, subject")
            .bind(visit_id)
            .fetch_all(pool)
            .await?;
    rows.iter()
        .map(|row| {
            let r: String = row.try_get("role")?;
            Ok(Participant { subject: row.try_get("subject")?, name: row.try_get("name")?, role: parse_role(&r)? })
        })
        .collect()
}

pub async fn open_conversations(pool: &SqlitePool) -> StoreResult<Vec<OpenConversation>> {
    let rows = sqlx::query(
        "SELECT v.id, m.subject, m.name, m.role, m.joined_at
         FROM visits v LEFT JOIN chat_members m ON m.visit_id = v.id
         WHERE v.status NOT IN ('ended', 'cancelled', 'abandoned')
         ORDER BY v.id, m.joined_at, m.subject",
    )
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| {
            let visit_id: String = row.try_get("id")?;
            let Some(subject) = row.try_get::<Option<String>, _>("subject")? else { return Ok((visit_id, None)) };
            let role: String = row.try_get("role")?;
            let member = Participant { subject, name: row.try_get("name")?, role: parse_role(&role)? };
            Ok((visit_id, Some((from_millis(row.try_get("joined_at")?)?, member))))
        })
        .collect()
}

pub async fn open_conversation_ids(pool: &SqlitePool, subject: &str) -> StoreResult<Vec<VisitId>> {
    Ok(sqlx::query_scalar(
        "SELECT m.visit_id FROM chat_members m JOIN visits v ON v.id = m.visit_id
         WHERE m.subject = ? AND m.visit_open AND v.status NOT IN ('ended', 'cancelled', 'abandoned')
         ORDER BY m.joined_at",
    )
    .bind(subject)
    .fetch_all(pool)
    .await?)
}

pub async fn conversations_of(pool: &SqlitePool, subject: &str) -> StoreResult<Vec<ConversationSummary>> {
    let rows = sqlx::query(
        "SELECT v.id, v.state, v.status, v.display_name,
                (SELECT COALESCE(MAX(seq), 0) FROM chat_messages c WHERE c.visit_id = v.id) AS last_seq,
                (SELECT COALESCE(MAX(up_to_seq), 0) FROM chat_reads r WHERE r.visit_id = v.id AND r.subject = m.subject) AS read_seq
         FROM chat_members m JOIN visits v ON v.id = m.visit_id
         WHERE m.subject = ? AND m.visit_open AND v.status NOT IN ('ended', 'cancelled', 'abandoned')
         ORDER BY m.joined_at",
    )
    .bind(subject)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| {
            let state: String = row.try_get("state")?;
            let status: String = row.try_get("status")?;
            Ok(ConversationSummary {
                visit_id: row.try_get("id")?,
                state: UsState::parse(&state).map_err(|_| corrupt("visit state"))?,
                status: VisitStatus::parse(&status).ok_or_else(|| corrupt("visit status"))?,
                patient_name: row.try_get("display_name")?,
                last_seq: row.try_get::<i64, _>("last_seq")? as u64,
                read_seq: row.try_get::<i64, _>("read_seq")? as u64,
            })
        })
        .collect()
}
