//! The SQLite store: one file in WAL mode, migrations embedded in the binary and run at open.
//! Queries live beside what they own: visits, chat, directory (caregivers and settings).

mod audit;
mod chat;
mod commit;
mod directory;
mod visits;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::Sqlite;
use sqlx::query::Query;
use sqlx::sqlite::{
    SqliteArguments, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

/// A query whose arguments are bound by value, so it can run on a task of its own.
type SqliteQuery = Query<'static, Sqlite, SqliteArguments>;

use super::{
    ClaimOutcome, ConversationSummary, IdempotencyKey, InsertOutcome, NewMessage, OpenConversation, Store, StoreError,
    StoreResult, Transition,
};
use crate::model::{Actor, AuditEntry, AuditRecord, Caregiver, StateSettings, UsState, Visit, VisitId, VisitStatus};
use crate::protocol::{ChatMessage, Participant};

/// Two pools on one file. SQLite runs one writer at a time: writes share one connection and
/// queue for it in the pool (a wait that costs nothing), instead of several connections
/// racing for the file's write lock, where the losers sleep in SQLite's busy handler and
/// retry. Reads run on their own connections beside it (WAL lets them see every commit).
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    /// Where the audit trail ends, so an append needs no read first.
    audit_head: audit::Head,
    /// The writer of changes stored with their audit records, a batch per transaction.
    commits: commit::Committer,
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Unavailable(e.to_string())
    }
}

use super::corrupt;

/// Reader connections: more than the two cores rarely helps, and each is a thread.
const READERS: u32 = 4;
/// Prepared statements the writer keeps: every change kind alone and in pairs (see
/// `commit::KEPT_BATCH`), under sqlx's default of 100 otherwise.
const WRITER_STATEMENTS: usize = 256;

impl SqliteStore {
    /// Opens (creating if needed) the database file and runs migrations.
    pub async fn open(path: &Path) -> anyhow::Result<SqliteStore> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let options = options(SqliteConnectOptions::new().filename(path).create_if_missing(true));
        let writer = pool_options(1).connect_with(options.clone().statement_cache_capacity(WRITER_STATEMENTS)).await?;
        sqlx::migrate!("./migrations/sqlite").run(&writer).await?;
        let reader = pool_options(READERS).connect_with(options.read_only(true)).await?;
        Ok(SqliteStore::new(writer, reader))
    }

    /// A private in-memory database, for tests.
    pub async fn in_memory() -> anyhow::Result<SqliteStore> {
        // One connection for both: each in-memory connection would be its own database.
        let options = options(SqliteConnectOptions::from_str("sqlite::memory:")?);
        let pool = pool_options(1).connect_with(options).await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        Ok(SqliteStore::new(pool.clone(), pool))
    }

    fn new(writer: SqlitePool, reader: SqlitePool) -> SqliteStore {
        let audit_head = audit::Head::default();
        let commits = commit::Committer::start(writer.clone(), audit_head.clone());
        SqliteStore { writer, reader, audit_head, commits }
    }
}

/// No ping before handing out a pooled connection: a SQLite connection is a file in this
/// process and cannot be cut off, and the ping was a trip to its thread (two context switches)
/// before every query.
fn pool_options(connections: u32) -> SqlitePoolOptions {
    SqlitePoolOptions::new().max_connections(connections).test_before_acquire(false)
}

fn options(options: SqliteConnectOptions) -> SqliteConnectOptions {
    options
        .journal_mode(SqliteJournalMode::Wal)
        // WAL with NORMAL is durable across a process crash (a commit is in the WAL file once
        // it returns); only a power loss can drop the last commits before a checkpoint, which
        // an fsync per commit is not worth on a laptop node. Cluster mode uses PostgreSQL.
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(5))
        .foreign_keys(true)
}

/// Runs a query whose statements open and commit a transaction (`BEGIN; ...; COMMIT`; sqlx
/// runs them in turn, binding the arguments in order) as one trip to SQLite's thread: each trip
/// costs two context switches, and a transaction of four statements took four. The trip runs
/// in a task of its own, so a caller that stops waiting (a REST client gone) cannot leave the
/// transaction half-done on a pooled connection; an error rolls back. Returns how many rows the
/// statements returned (all of them run: a fetch of one row would stop before the COMMIT).
async fn in_one_trip(pool: &SqlitePool, query: SqliteQuery) -> StoreResult<u64> {
    let pool = pool.clone();
    apart(async move {
        let mut conn = pool.acquire().await?;
        match query.fetch_all(&mut *conn).await {
            Ok(rows) => Ok(rows.len() as u64),
            Err(e) => {
                let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
                Err(e.into())
            }
        }
    })
    .await
}

/// Runs a transaction's work in a task of its own, so that a caller that stops waiting cannot
/// leave the transaction half-done on a pooled connection.
async fn apart<T: Send + 'static>(work: impl Future<Output = StoreResult<T>> + Send + 'static) -> StoreResult<T> {
    tokio::spawn(work).await.map_err(|e| StoreError::Unavailable(e.to_string()))?
}

#[async_trait]
impl Store for SqliteStore {
    async fn insert_visit(
        &self,
        visit: &Visit,
        actor: &Actor,
        key: Option<&IdempotencyKey>,
    ) -> StoreResult<InsertOutcome> {
        visits::insert(&self.writer, visit, actor, key).await
    }

    async fn insert_visit_recorded(
        &self,
        visit: &Visit,
        actor: &Actor,
        key: Option<&IdempotencyKey>,
        record: &AuditEntry,
    ) -> StoreResult<(InsertOutcome, bool)> {
        visits::insert_recorded(&self.commits, &self.reader, visit, actor, key, record).await
    }

    async fn idempotent_visit(&self, key: &str) -> StoreResult<Option<(VisitId, String)>> {
        visits::idempotent(&self.reader, key).await
    }

    async fn get_visit(&self, id: &str) -> StoreResult<Option<Visit>> {
        visits::get(&self.reader, id).await
    }

    async fn transition_visit(
        &self,
        id: &str,
        from: VisitStatus,
        to: VisitStatus,
        actor: &Actor,
        at: DateTime<Utc>,
    ) -> StoreResult<bool> {
        visits::transition(&self.writer, id, from, to, actor, at).await
    }

    async fn claim_visit(&self, id: &str, provider: &str, at: DateTime<Utc>, waited_secs: u64) -> StoreResult<bool> {
        visits::claim(&self.writer, id, provider, at, waited_secs).await
    }

    async fn transition_visit_recorded(
        &self,
        id: &str,
        statuses: (VisitStatus, VisitStatus),
        actor: &Actor,
        at: DateTime<Utc>,
        record: &AuditEntry,
    ) -> StoreResult<(bool, bool)> {
        visits::transition_recorded(&self.commits, id, statuses, actor, at, record).await
    }

    async fn claim_visit_joined(
        &self,
        id: &str,
        provider: &Participant,
        at: DateTime<Utc>,
        waited_secs: u64,
        record: &AuditEntry,
    ) -> StoreResult<ClaimOutcome> {
        visits::claim_joined(&self.commits, id, provider, at, waited_secs, record).await
    }

    async fn move_visit(
        &self,
        id: &str,
        from: UsState,
        to: UsState,
        actor: &Actor,
        at: DateTime<Utc>,
    ) -> StoreResult<bool> {
        visits::relocate(&self.writer, id, from, to, actor, at).await
    }

    async fn report_state(&self, id: &str, state: UsState) -> StoreResult<()> {
        visits::report_state(&self.writer, id, state).await
    }

    async fn live_visits_of(&self, provider: &str) -> StoreResult<Vec<Visit>> {
        visits::live_of(&self.reader, provider).await
    }

    async fn live_visits(&self) -> StoreResult<Vec<Visit>> {
        visits::live(&self.reader).await
    }

    async fn transitions(&self, id: &str) -> StoreResult<Vec<Transition>> {
        visits::transitions(&self.reader, id).await
    }

    async fn waiting_visits(&self) -> StoreResult<Vec<Visit>> {
        visits::waiting(&self.reader).await
    }

    async fn count_visits(&self) -> StoreResult<u64> {
        visits::count(&self.reader).await
    }

    async fn insert_caregiver(&self, caregiver: &Caregiver) -> StoreResult<bool> {
        directory::insert_caregiver(&self.writer, caregiver).await
    }

    async fn get_caregiver(&self, subject: &str) -> StoreResult<Option<Caregiver>> {
        directory::get_caregiver(&self.reader, subject).await
    }

    async fn list_caregivers(&self) -> StoreResult<Vec<Caregiver>> {
        directory::list_caregivers(&self.reader).await
    }

    async fn update_caregiver(&self, caregiver: &Caregiver) -> StoreResult<bool> {
        directory::update_caregiver(&self.writer, caregiver).await
    }

    async fn state_settings(&self) -> StoreResult<Vec<StateSettings>> {
        directory::state_settings(&self.reader).await
    }

    async fn put_state_settings(&self, settings: &StateSettings) -> StoreResult<()> {
        directory::put_state_settings(&self.writer, settings).await
    }

    async fn append_message(&self, msg: &NewMessage) -> StoreResult<(ChatMessage, bool)> {
        chat::append(&self.writer, msg).await
    }

    async fn append_message_recorded(
        &self,
        msg: &NewMessage,
        record: &AuditEntry,
    ) -> StoreResult<((ChatMessage, bool), bool)> {
        chat::append_recorded(&self.writer, &self.commits, msg, record).await
    }

    async fn messages(&self, visit_id: &str, before_seq: Option<u64>, limit: u32) -> StoreResult<Vec<ChatMessage>> {
        chat::page(&self.reader, visit_id, before_seq, limit).await
    }

    async fn mark_read(&self, visit_id: &str, subject: &str, up_to_seq: u64) -> StoreResult<u64> {
        chat::mark_read(&self.writer, visit_id, subject, up_to_seq).await
    }

    async fn join_conversation(&self, visit_id: &str, member: &Participant, at: DateTime<Utc>) -> StoreResult<bool> {
        chat::join(&self.writer, visit_id, member, at).await
    }

    async fn join_conversation_recorded(
        &self,
        visit_id: &str,
        member: &Participant,
        at: DateTime<Utc>,
        record: &AuditEntry,
    ) -> StoreResult<(bool, bool)> {
        chat::join_recorded(&self.commits, visit_id, member, at, record).await
    }

    async fn leave_conversation(&self, visit_id: &str, subject: &str) -> StoreResult<bool> {
        chat::leave(&self.writer, visit_id, subject).await
    }

    async fn conversation_members(&self, visit_id: &str) -> StoreResult<Vec<Participant>> {
        chat::members(&self.reader, visit_id).await
    }

    async fn open_conversations(&self) -> StoreResult<Vec<OpenConversation>> {
        chat::open_conversations(&self.reader).await
    }

    async fn conversations_of(&self, subject: &str) -> StoreResult<Vec<ConversationSummary>> {
        chat::conversations_of(&self.reader, subject).await
    }

    async fn open_conversation_ids(&self, subject: &str) -> StoreResult<Vec<VisitId>> {
        chat::open_conversation_ids(&self.reader, subject).await
    }

    async fn append_audits(&self, entries: &[AuditEntry]) -> StoreResult<Vec<AuditRecord>> {
        audit::append(&self.writer, &self.audit_head, entries).await
    }

    async fn audit_trail(&self, after_id: i64, limit: u32) -> StoreResult<Vec<AuditRecord>> {
        audit::trail(&self.reader, after_id, limit).await
    }

    async fn audit_for_visit(&self, visit_id: &str) -> StoreResult<Vec<AuditRecord>> {
        audit::for_visit(&self.reader, visit_id).await
    }

    fn connections_in_use(&self) -> u32 {
        [&self.writer, &self.reader].iter().map(|p| p.size().saturating_sub(p.num_idle() as u32)).sum()
    }

    fn shares_commits(&self) -> bool {
        true
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }
}
