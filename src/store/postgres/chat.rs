//! Conversations: messages (numbered per visit), read positions and members.

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgPool, PgRow};
use sqlx::{Postgres, QueryBuilder, Row};

use super::audit::push_staged;
use super::corrupt;
use crate::model::{AuditEntry, UsState, VisitId, VisitStatus};
use crate::protocol::{ChatMessage, Participant};
use crate::store::{
    ConversationSummary, NewMessage, OpenConversation, StoreResult, from_millis, parse_role, to_millis,
};

fn message_from_row(row: &PgRow) -> StoreResult<ChatMessage> {
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

/// Stores a message, with the audit record `staged` when given; a retry stores neither and
/// returns the message stored the first time.
pub async fn append(pool: &PgPool, m: &NewMessage, staged: Option<&AuditEntry>) -> StoreResult<(ChatMessage, bool)> {
    // One statement: the conversation's counter gives the seq (its row lock orders concurrent
    // appends to one conversation until this statement commits), then the message and its
    // staged record. A conversation without a counter (messages stored before there were
    // counters) starts from its highest seq.
    let mut q =
        QueryBuilder::<Postgres>::new("WITH numbered AS (INSERT INTO chat_counters (visit_id, last_seq) SELECT ");
    q.push_bind(m.visit_id.clone());
    q.push(", COALESCE(MAX(seq), 0) + 1 FROM chat_messages WHERE visit_id = ");
    q.push_bind(m.visit_id.clone());
    q.push(" ON CONFLICT (visit_id) DO UPDATE SET last_seq = chat_counters.last_seq + 1 RETURNING last_seq)");
    q.push(format!(", appended AS (INSERT INTO chat_messages ({COLUMNS}) SELECT "));
    q.push_bind(m.visit_id.clone());
    q.push(", last_seq, ");
    q.separated(", ")
        .push_bind(m.message_id.clone())
        .push_bind(m.client_id.clone())
        .push_bind(m.from.subject.clone())
        .push_bind(m.from.role.as_str())
        .push_bind(m.from.name.clone())
        .push_bind(m.body.clone())
        .push_bind(to_millis(m.sent_at));
    q.push(format!(" FROM numbered RETURNING {COLUMNS})"));
    push_staged(&mut q, "appended", staged);
    q.push(format!(" SELECT {COLUMNS} FROM appended"));
    let failed = match q.build().fetch_one(pool).await {
        Ok(row) => return Ok((message_from_row(&row)?, true)),
        Err(e) => e,
    };
    // A retry: its `client_id` is taken, so the statement failed whole (the counter's increment
    // and the record with it) once the first attempt committed; that one is the answer.
    let retried = failed.as_database_error().is_some_and(|e| e.is_unique_violation());
    if !retried {
        return Err(failed.into());
    }
    let sql =
        format!("SELECT {COLUMNS} FROM chat_messages WHERE visit_id = $1 AND sender_subject = $2 AND client_id = $3");
    let before = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(&m.visit_id)
        .bind(&m.from.subject)
        .bind(&m.client_id)
        .fetch_optional(pool)
        .await?;
    match before {
        Some(row) => Ok((message_from_row(&row)?, false)),
        None => Err(failed.into()),
    }
}

pub async fn page(pool: &PgPool, visit_id: &str, before_seq: Option<u64>, limit: u32) -> StoreResult<Vec<ChatMessage>> {
    let before = before_seq.map_or(i64::MAX, |s| s as i64);
    let sql =
        format!("SELECT {COLUMNS} FROM chat_messages WHERE visit_id = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3");
    let rows =
        sqlx::query(sqlx::AssertSqlSafe(sql)).bind(visit_id).bind(before).bind(limit as i64).fetch_all(pool).await?;
    let mut messages = rows.iter().map(message_from_row).collect::<StoreResult<Vec<_>>>()?;
    messages.reverse();
    Ok(messages)
}

pub async fn mark_read(pool: &PgPool, visit_id: &str, subject: &str, up_to_seq: u64) -> StoreResult<u64> {
    let n: i64 = sqlx::query_scalar(
        "INSERT INTO chat_reads (visit_id, subject, up_to_seq) VALUES ($1, $2, $3)
         ON CONFLICT (visit_id, subject) DO UPDATE SET up_to_seq = GREATEST(chat_reads.up_to_seq, EXCLUDED.up_to_seq)
         RETURNING up_to_seq",
    )
    .bind(visit_id)
    .bind(subject)
    .bind(up_to_seq as i64)
    .fetch_one(pool)
    .await?;
    Ok(n as u64)
}

/// Adds a member, with the audit record `staged` when given and the member is new, in one
/// statement (one trip, no transaction to open and commit).
pub async fn join(
    pool: &PgPool,
    visit_id: &str,
    member: &Participant,
    at: DateTime<Utc>,
    staged: Option<&AuditEntry>,
) -> StoreResult<bool> {
    let mut q = QueryBuilder::<Postgres>::new("WITH visit AS (SELECT ");
    q.push_bind(visit_id.to_string());
    q.push("::text AS id)");
    push_joined(&mut q, "visit", member, at);
    push_staged(&mut q, "joined", staged);
    q.push(" SELECT COUNT(*) FROM joined");
    let joined: i64 = q.build_query_scalar().fetch_one(pool).await?;
    Ok(joined == 1)
}

/// Adds `, joined AS (...)` to a statement of common table expressions: the member joins the
/// conversation of each visit `source` returns (as `id`); `joined` returns a row for each new
/// membership, none for a member already in.
pub fn push_joined(q: &mut QueryBuilder<Postgres>, source: &str, member: &Participant, at: DateTime<Utc>) {
    q.push(", joined AS (INSERT INTO chat_members (visit_id, subject, name, role, joined_at) SELECT id, ");
    q.separated(", ")
        .push_bind(member.subject.clone())
        .push_bind(member.name.clone())
        .push_bind(member.role.as_str())
        .push_bind(to_millis(at));
    q.push(format!(" FROM {source} ON CONFLICT (visit_id, subject) DO NOTHING RETURNING visit_id)"));
}

pub async fn leave(pool: &PgPool, visit_id: &str, subject: &str) -> StoreResult<bool> {
    let n = sqlx::query("DELETE FROM chat_members WHERE visit_id = $1 AND subject = $2")
        .bind(visit_id)
        .bind(subject)
        .execute(pool)
        .await?
        .rows_affected();
    Ok(n == 1)
}

pub async fn members(pool: &PgPool, visit_id: &str) -> StoreResult<Vec<Participant>> {
    let rows = sqlx::query(
        "SELECT subject, name, role FROM chat_members WHERE visit_id = $1 ORDER BY joined_at, subject COLLATE \"C\"",
    )
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

pub async fn open_conversations(pool: &PgPool) -> StoreResult<Vec<OpenConversation>> {
    let rows = sqlx::query(
        "SELECT v.id, m.subject, m.name, m.role, m.joined_at
         FROM visits v LEFT JOIN chat_members m ON m.visit_id = v.id
         WHERE v.status NOT IN ('ended', 'cancelled', 'abandoned')
         ORDER BY v.id, m.joined_at, m.subject COLLATE \"C\"",
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

pub async fn open_conversation_ids(pool: &PgPool, subject: &str) -> StoreResult<Vec<VisitId>> {
    Ok(sqlx::query_scalar(
        "SELECT m.visit_id FROM chat_members m JOIN visits v ON v.id = m.visit_id
         WHERE m.subject = $1 AND m.visit_open AND v.status NOT IN ('ended', 'cancelled', 'abandoned')
         ORDER BY m.joined_at, v.id COLLATE \"C\"",
    )
    .bind(subject)
    .fetch_all(pool)
    .await?)
}

pub async fn conversations_of(pool: &PgPool, subject: &str) -> StoreResult<Vec<ConversationSummary>> {
    let rows = sqlx::query(
        "SELECT v.id, v.state, v.status, v.display_name,
                (SELECT COALESCE(MAX(seq), 0) FROM chat_messages c WHERE c.visit_id = v.id) AS last_seq,
                (SELECT COALESCE(MAX(up_to_seq), 0) FROM chat_reads r WHERE r.visit_id = v.id AND r.subject = m.subject) AS read_seq
         FROM chat_members m JOIN visits v ON v.id = m.visit_id
         WHERE m.subject = $1 AND m.visit_open AND v.status NOT IN ('ended', 'cancelled', 'abandoned')
         ORDER BY m.joined_at, v.id COLLATE \"C\"",
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
