//! Durable data behind one trait: visits and their transitions, caregivers, state settings,
//! idempotency keys. SQLite is the default; PostgreSQL joins in cluster mode. Timestamps are
//! stored as epoch milliseconds so both dialects share the same shapes.

mod metered;
mod postgres;
mod sqlite;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

pub use metered::Metered;
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

use crate::model::{Actor, AuditEntry, AuditRecord, Caregiver, StateSettings, UsState, Visit, VisitId, VisitStatus};
use crate::protocol::{ChatMessage, Participant};

pub type StoreResult<T> = Result<T, StoreError>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store data is corrupt: {0}")]
    Corrupt(String),
}

/// An `Idempotency-Key` and a hash of the request it came with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    pub key: String,
    pub request_hash: String,
}

/// What storing a new visit did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InsertOutcome {
    Inserted,
    /// The idempotency key was used before, for this visit and request hash.
    Replayed {
        visit_id: VisitId,
        request_hash: String,
    },
}

/// One stored lifecycle transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub from: Option<VisitStatus>,
    pub to: VisitStatus,
    pub at: DateTime<Utc>,
    pub actor_subject: String,
    pub actor_role: String,
}

/// What [`Store::claim_visit_joined`] stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimOutcome {
    /// The claim won (the visit was waiting).
    pub claimed: bool,
    /// The provider was new to the visit's conversation (only when the claim won).
    pub joined: bool,
    /// The claim's audit record went in the same commit.
    pub recorded: bool,
}

/// A chat message to store; the store assigns its `seq`.
#[derive(Clone)]
pub struct NewMessage {
    pub visit_id: VisitId,
    pub message_id: String,
    pub client_id: String,
    pub from: Participant,
    pub body: String,
    pub sent_at: DateTime<Utc>,
}

/// A visit not over and one member of its conversation (`None` for a conversation without
/// members): one row of [`Store::open_conversations`].
pub type OpenConversation = (VisitId, Option<(DateTime<Utc>, Participant)>);

/// A conversation a caregiver is in, with what they have read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationSummary {
    pub visit_id: VisitId,
    pub state: UsState,
    pub status: VisitStatus,
    pub patient_name: String,
    pub last_seq: u64,
    pub read_seq: u64,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Stores a new waiting visit and its first transition, and the idempotency key if any,
    /// atomically. When the key exists already nothing is stored and the earlier visit is
    /// named instead.
    async fn insert_visit(
        &self,
        visit: &Visit,
        actor: &Actor,
        key: Option<&IdempotencyKey>,
    ) -> StoreResult<InsertOutcome>;

    /// [`Store::insert_visit`] with the audit record of the intake in the same transaction
    /// (SQLite: one trip, shared with other changes; PostgreSQL: staged with the change and
    /// chained into the trail soon after, see `postgres/audit.rs`). Returns what it did and
    /// whether the record was stored with it; if not (a backend without it, or a key used
    /// before), the caller appends it when it has one to write.
    async fn insert_visit_recorded(
        &self,
        visit: &Visit,
        actor: &Actor,
        key: Option<&IdempotencyKey>,
        _record: &AuditEntry,
    ) -> StoreResult<(InsertOutcome, bool)> {
        Ok((self.insert_visit(visit, actor, key).await?, false))
    }

    /// The visit and request hash an idempotency key was first used with.
    async fn idempotent_visit(&self, key: &str) -> StoreResult<Option<(VisitId, String)>>;

    async fn get_visit(&self, id: &str) -> StoreResult<Option<Visit>>;

    /// Moves a visit from `from` to `to` if it is still in `from` (compare-and-set), storing
    /// the transition. Returns false, storing nothing, when the visit was not in `from`.
    /// Back to `waiting` (a released claim) clears the provider.
    async fn transition_visit(
        &self,
        id: &str,
        from: VisitStatus,
        to: VisitStatus,
        actor: &Actor,
        at: DateTime<Utc>,
    ) -> StoreResult<bool>;

    /// Claims a waiting visit for `provider` (compare-and-set) and records the real wait.
    /// Exactly one of many concurrent claims returns true.
    async fn claim_visit(&self, id: &str, provider: &str, at: DateTime<Utc>, waited_secs: u64) -> StoreResult<bool>;

    /// [`Store::transition_visit`], with the audit record of the request that made it stored
    /// in the same transaction when the visit moved (SQLite: one trip for both; PostgreSQL as
    /// in [`Store::insert_visit_recorded`]). Returns
    /// whether the visit moved and whether the record was stored with it; a backend without
    /// it stores none, and the caller appends the record itself.
    async fn transition_visit_recorded(
        &self,
        id: &str,
        (from, to): (VisitStatus, VisitStatus),
        actor: &Actor,
        at: DateTime<Utc>,
        _record: &AuditEntry,
    ) -> StoreResult<(bool, bool)> {
        Ok((self.transition_visit(id, from, to, actor, at).await?, false))
    }

    /// [`Store::claim_visit`] and, when the claim wins, the provider joining the visit's
    /// conversation, with the audit record of the claim as in
    /// [`Store::transition_visit_recorded`]: all three in one transaction (SQLite: one trip); a
    /// backend without it takes two trips and stores no record (the caller appends it).
    async fn claim_visit_joined(
        &self,
        id: &str,
        provider: &Participant,
        at: DateTime<Utc>,
        waited_secs: u64,
        _record: &AuditEntry,
    ) -> StoreResult<ClaimOutcome> {
        let claimed = self.claim_visit(id, &provider.subject, at, waited_secs).await?;
        let joined = claimed && self.join_conversation(id, provider, at).await?;
        Ok(ClaimOutcome { claimed, joined, recorded: false })
    }

    /// Moves a waiting visit to another state's queue (compare-and-set on the state).
    async fn move_visit(
        &self,
        id: &str,
        from: UsState,
        to: UsState,
        actor: &Actor,
        at: DateTime<Utc>,
    ) -> StoreResult<bool>;

    /// Records the state the patient says they are in now.
    async fn report_state(&self, id: &str, state: UsState) -> StoreResult<()>;

    /// Visits a provider holds (claimed, in visit, wrap-up).
    async fn live_visits_of(&self, provider: &str) -> StoreResult<Vec<Visit>>;

    /// Every visit a provider holds (claimed, in visit, wrap-up): what a node that is the
    /// only writer keeps providers' loads from.
    async fn live_visits(&self) -> StoreResult<Vec<Visit>>;

    async fn transitions(&self, id: &str) -> StoreResult<Vec<Transition>>;

    /// Visits still waiting, oldest first: what queues are rebuilt from.
    async fn waiting_visits(&self) -> StoreResult<Vec<Visit>>;

    /// Number of visits in the store (all states, all statuses).
    async fn count_visits(&self) -> StoreResult<u64>;

    /// Returns false when the subject exists already.
    async fn insert_caregiver(&self, caregiver: &Caregiver) -> StoreResult<bool>;
    async fn get_caregiver(&self, subject: &str) -> StoreResult<Option<Caregiver>>;
    async fn list_caregivers(&self) -> StoreResult<Vec<Caregiver>>;
    /// Returns false when there is no such caregiver.
    async fn update_caregiver(&self, caregiver: &Caregiver) -> StoreResult<bool>;

    async fn state_settings(&self) -> StoreResult<Vec<StateSettings>>;
    async fn put_state_settings(&self, settings: &StateSettings) -> StoreResult<()>;

    /// Appends a message, or returns the one stored before under the same sender and
    /// `client_id` (a retry). The flag is true when this call stored it.
    async fn append_message(&self, msg: &NewMessage) -> StoreResult<(ChatMessage, bool)>;

    /// [`Store::append_message`], with the audit record of the request in the same transaction
    /// when the message is new (SQLite: one trip). The second flag says whether the record was
    /// stored with it; if not, the caller appends it.
    async fn append_message_recorded(
        &self,
        msg: &NewMessage,
        _record: &AuditEntry,
    ) -> StoreResult<((ChatMessage, bool), bool)> {
        Ok((self.append_message(msg).await?, false))
    }

    /// Messages with `seq < before_seq` (all when `None`), the newest `limit`, oldest first.
    async fn messages(&self, visit_id: &str, before_seq: Option<u64>, limit: u32) -> StoreResult<Vec<ChatMessage>>;

    /// Raises (never lowers) what `subject` has read; returns the new read position.
    async fn mark_read(&self, visit_id: &str, subject: &str, up_to_seq: u64) -> StoreResult<u64>;

    /// Returns false when the member was in the conversation already.
    async fn join_conversation(&self, visit_id: &str, member: &Participant, at: DateTime<Utc>) -> StoreResult<bool>;
    /// [`Store::join_conversation`], with the audit record of the request in the same
    /// transaction when the member is new (SQLite: one trip). The second flag says whether
    /// the record was stored with it; if not, the caller appends it.
    async fn join_conversation_recorded(
        &self,
        visit_id: &str,
        member: &Participant,
        at: DateTime<Utc>,
        _record: &AuditEntry,
    ) -> StoreResult<(bool, bool)> {
        Ok((self.join_conversation(visit_id, member, at).await?, false))
    }
    async fn leave_conversation(&self, visit_id: &str, subject: &str) -> StoreResult<bool>;
    async fn conversation_members(&self, visit_id: &str) -> StoreResult<Vec<Participant>>;
    /// Every visit not over with each member of its conversation, in the order they joined:
    /// what a node that is the only writer keeps conversations' members from.
    async fn open_conversations(&self) -> StoreResult<Vec<OpenConversation>>;
    /// Conversations `subject` is in whose visit is not over.
    async fn conversations_of(&self, subject: &str) -> StoreResult<Vec<ConversationSummary>>;
    /// The visits of those conversations only, without their summaries: what a caregiver's
    /// cap on conversations is checked against in a cluster, at every join.
    async fn open_conversation_ids(&self, subject: &str) -> StoreResult<Vec<VisitId>>;

    /// Appends audit records in order, the first chained to the last one stored, all in one
    /// transaction (a batch costs one commit); returns them as stored.
    async fn append_audits(&self, entries: &[AuditEntry]) -> StoreResult<Vec<AuditRecord>>;
    /// The trail in order, `limit` records after id `after_id`.
    async fn audit_trail(&self, after_id: i64, limit: u32) -> StoreResult<Vec<AuditRecord>>;
    async fn audit_for_visit(&self, visit_id: &str) -> StoreResult<Vec<AuditRecord>>;

    /// Cheap round trip, for readiness.
    async fn ping(&self) -> StoreResult<()>;

    /// Reads served by a read replica, and reads sent to the primary because the replica had
    /// not replayed this node's writes yet; `None` without a replica.
    fn replica_reads(&self) -> Option<(u64, u64)> {
        None
    }

    /// Connections of the pool in use now.
    fn connections_in_use(&self) -> u32 {
        0
    }

    /// Whether changes made at once share commits (SQLite's one writer takes them a batch at a
    /// time). Intakes are stored outside their state's lock only then: sharing commits is
    /// what they gain by it.
    fn shares_commits(&self) -> bool {
        false
    }
}

// Column codecs both dialects share: how a state list, a role and a bad value are stored
// and read back.

pub(crate) fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

pub(crate) fn parse_role(s: &str) -> StoreResult<crate::model::Role> {
    crate::model::Role::parse(s).ok_or_else(|| corrupt("role"))
}

/// States stored as one comma-separated column, e.g. `OR,WA`.
pub(crate) fn join_states(states: &[UsState]) -> String {
    states.iter().map(|s| s.code()).collect::<Vec<_>>().join(",")
}

pub(crate) fn split_states(column: &str) -> StoreResult<Vec<UsState>> {
    column
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| UsState::parse(s).map_err(|_| corrupt("caregiver states")))
        .collect()
}

pub(crate) fn to_millis(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub(crate) fn from_millis(ms: i64) -> StoreResult<DateTime<Utc>> {
    DateTime::from_timestamp_millis(ms).ok_or_else(|| StoreError::Corrupt(format!("timestamp {ms}")))
}

/// An audit entry's columns, in the order [`push_entry`] binds them (a macro, so the lists
/// below are built from it at compile time).
macro_rules! entry_columns {
    () => {
        "at, subject, role, action, visit_id, target, outcome"
    };
}

/// An audit entry's columns, as [`push_entry`] binds them and [`entry_from_row`] reads them.
pub(crate) const ENTRY_COLUMNS: &str = entry_columns!();

/// The audit log's columns in the order [`push_record`] binds them.
pub(crate) const AUDIT_COLUMNS: &str = concat!(entry_columns!(), ", prev_hash, hash");

/// The audit log's columns with its id, as a record is read back.
pub(crate) const AUDIT_ROW_COLUMNS: &str = concat!("id, ", entry_columns!(), ", prev_hash, hash");

/// Binds a record's values into a `VALUES` row, in [`AUDIT_COLUMNS`] order (SQLite's batches;
/// PostgreSQL binds one array per column).
pub(crate) fn push_record<DB: sqlx::Database>(
    row: &mut sqlx::query_builder::Separated<'_, DB, &'static str>,
    r: &AuditRecord,
) where
    for<'t> i64: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
    for<'t> String: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
    for<'t> Option<String>: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
{
    push_entry(row, &r.entry);
    row.push_bind(r.prev_hash.clone()).push_bind(r.hash.clone());
}

/// Binds an entry's values, in [`ENTRY_COLUMNS`] order.
pub(crate) fn push_entry<DB: sqlx::Database>(
    row: &mut sqlx::query_builder::Separated<'_, DB, &'static str>,
    e: &AuditEntry,
) where
    for<'t> i64: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
    for<'t> String: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
    for<'t> Option<String>: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
{
    row.push_bind(to_millis(e.at))
        .push_bind(e.subject.clone())
        .push_bind(e.role.clone())
        .push_bind(e.action.clone())
        .push_bind(e.visit_id.clone())
        .push_bind(e.target.clone())
        .push_bind(e.outcome.clone());
}

/// An entry from a row holding [`ENTRY_COLUMNS`], for either store.
pub(crate) fn entry_from_row<R: sqlx::Row>(row: &R) -> StoreResult<AuditEntry>
where
    for<'c> &'c str: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(AuditEntry {
        at: from_millis(row.try_get("at")?)?,
        subject: row.try_get("subject")?,
        role: row.try_get("role")?,
        action: row.try_get("action")?,
        visit_id: row.try_get("visit_id")?,
        target: row.try_get("target")?,
        outcome: row.try_get("outcome")?,
    })
}
