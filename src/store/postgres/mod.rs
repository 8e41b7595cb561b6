//! The PostgreSQL store, for cluster mode: every node writes to the primary, and reads that can
//! bear a little staleness may go to a streaming replica without ever missing a row this node
//! wrote (see [`replica`]). Migrations are embedded in the binary and run on the primary at
//! connect. Queries live beside what they own, as in the SQLite store, with the same results.
//!
//! Concurrency: compare-and-set updates (`WHERE status = ...`) have exactly one winner, as row
//! locks make the losers re-check against the winner's row; a chat append numbers its message
//! from its conversation's counter row, whose row lock orders appends to one conversation
//! (see `chat.rs`); audit appends, which read the last record to chain the next, take the
//! trail's lock first (see `audit.rs`).
//! A change's audit record is staged in the change's own transaction without that lock, and
//! chained by the node's chainer a moment later, with whatever else was staged meanwhile, or
//! by the next read of the trail, whichever comes first: a change and its record commit
//! together, changes do not queue on the trail's lock, and a busy node chains many records per
//! transaction instead of one transaction per change (see `audit.rs`).

mod audit;
mod chat;
mod directory;
mod replica;
mod visits;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Postgres, Transaction};

pub use replica::ReplicaStats;

use super::{
    ClaimOutcome, ConversationSummary, IdempotencyKey, InsertOutcome, NewMessage, OpenConversation, Store, StoreResult,
    Transition,
};
use crate::model::{Actor, AuditEntry, AuditRecord, Caregiver, StateSettings, UsState, Visit, VisitId, VisitStatus};
use crate::protocol::{ChatMessage, Participant};

const MAX_CONNECTIONS: u32 = 10;
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

pub struct PostgresStore {
    primary: PgPool,
    router: replica::ReadRouter,
    /// One chaining of staged records at a time per node (the chainer's and reads'): one that
    /// queues behind another that took its records along finds nothing left, and skips the
    /// trail's lock.
    chaining: Arc<tokio::sync::Mutex<()>>,
    /// Wakes the chainer: a change staged a record.
    staged: tokio::sync::mpsc::Sender<()>,
}

use super::corrupt;

/// A transaction in READ COMMITTED whatever the server's default: each statement after a lock
/// sees what the previous holder committed, and a compare-and-set that lost re-checks the
/// winner's row (and changes nothing) instead of failing to serialise.
async fn begin(pool: &PgPool) -> StoreResult<Transaction<'static, Postgres>> {
    Ok(pool.begin_with("BEGIN ISOLATION LEVEL READ COMMITTED").await?)
}

impl PostgresStore {
    /// Connects to the primary (running migrations there) and, if given, to a streaming
    /// replica of it for reads.
    pub async fn connect(url: &str, replica_url: Option<&str>) -> anyhow::Result<PostgresStore> {
        let options = || PgPoolOptions::new().max_connections(MAX_CONNECTIONS).acquire_timeout(ACQUIRE_TIMEOUT);
        let primary = options().connect(url).await?;
        sqlx::migrate!("./migrations/postgres").run(&primary).await?;
        let replica = match replica_url {
            Some(url) => Some(options().connect(url).await?),
            None => None,
        };
        // Records a crash left staged go into the trail before anything new.
        audit::chain_all_staged(&primary).await?;
        let chaining = Arc::new(tokio::sync::Mutex::new(()));
        // One wake-up pending is enough: the chainer takes everything staged when it runs.
        let (staged, wake) = tokio::sync::mpsc::channel(1);
        tokio::spawn(audit::chain_staged_in_background(primary.clone(), chaining.clone(), wake));
        let store = PostgresStore { primary, router: replica::ReadRouter::new(replica), chaining, staged };
        // The schema counts as a write: no read goes to a replica that lacks a table.
        store.router.wrote(&store.primary).await?;
        Ok(store)
    }

    /// How long a read waits for the replica to replay this store's last write before it
    /// reads from the primary instead (500 ms unless set).
    pub fn with_replica_wait(mut self, wait: Duration) -> Self {
        self.router.set_max_wait(wait);
        self
    }

    /// The replica's pool, bypassing read-your-writes: for tests that show what a naive read
    /// would see.
    pub fn replica_pool(&self) -> Option<&PgPool> {
        self.router.replica()
    }

    /// Where reads went so far.
    pub fn replica_stats(&self) -> ReplicaStats {
        self.router.stats()
    }

    /// Passes on the result of a change that staged its audit record (see `audit.rs`): when
    /// it `took_effect`, the record is on record (committed with the change, in the outbox),
    /// and the chainer is woken to chain it into the trail.
    async fn recorded<T>(&self, change: StoreResult<T>, took_effect: impl FnOnce(&T) -> bool) -> StoreResult<T> {
        let value = change?;
        if took_effect(&value) {
            // Full: a wake-up is pending already, and its round takes this record along.
            let _ = self.staged.try_send(());
        }
        self.write(Ok(value)).await
    }

    /// Chains what is staged before a read of the trail, so that the read sees the record of
    /// every change committed before it, whichever node made it.
    async fn chain_staged(&self) -> StoreResult<()> {
        let _one_at_a_time = self.chaining.lock().await;
        self.write(audit::append(&self.primary, &[]).await.map(drop)).await
    }

    /// Passes on the result of a write on the primary, after noting where the primary's WAL is
    /// now, so that no read after it goes to a replica that has not replayed it.
    async fn write<T>(&self, result: StoreResult<T>) -> StoreResult<T> {
        let value = result?;
        self.router.wrote(&self.primary).await?;
        Ok(value)
    }
}

/// Evaluates `$body` with `$pool` bound to the replica when it holds this store's writes, or to
/// the primary; a read the replica fails is retried on the primary.
macro_rules! read {
    ($self:ident, |$pool:ident| $body:expr) => {{
        match $self.router.replica_for_read().await {
            Some($pool) => match $body.await {
                Ok(value) => Ok(value),
                Err(e) => {
                    tracing::warn!(error = %e, "replica read failed, reading from the primary");
                    $self.router.replica_failed();
                    let $pool = &$self.primary;
                    $body.await
                }
            },
            None => {
                let $pool = &$self.primary;
                $body.await
            }
        }
    }};
}

#[async_trait]
impl Store for PostgresStore {
    async fn insert_visit(
        &self,
        visit: &Visit,
        actor: &Actor,
        key: Option<&IdempotencyKey>,
    ) -> StoreResult<InsertOutcome> {
        self.write(visits::insert(&self.primary, visit, actor, key, None).await).await
    }

    async fn insert_visit_recorded(
        &self,
        visit: &Visit,
        actor: &Actor,
        key: Option<&IdempotencyKey>,
        record: &AuditEntry,
    ) -> StoreResult<(InsertOutcome, bool)> {
        // A key used before stores nothing, its record included (the caller appends that).
        let inserted = |outcome: &InsertOutcome| matches!(outcome, InsertOutcome::Inserted);
        let outcome =
            self.recorded(visits::insert(&self.primary, visit, actor, key, Some(record)).await, inserted).await?;
        let staged = inserted(&outcome);
        Ok((outcome, staged))
    }

    /// On the primary: a retry landing on another node must find the key at once.
    async fn idempotent_visit(&self, key: &str) -> StoreResult<Option<(VisitId, String)>> {
        visits::idempotent(&self.primary, key).await
    }

    async fn get_visit(&self, id: &str) -> StoreResult<Option<Visit>> {
        read!(self, |pool| visits::get(pool, id))
    }

    async fn transition_visit(
        &self,
        id: &str,
        from: VisitStatus,
        to: VisitStatus,
        actor: &Actor,
        at: DateTime<Utc>,
    ) -> StoreResult<bool> {
        self.write(visits::transition(&self.primary, id, (from, to), actor, at, None).await).await
    }

    async fn transition_visit_recorded(
        &self,
        id: &str,
        step: (VisitStatus, VisitStatus),
        actor: &Actor,
        at: DateTime<Utc>,
        record: &AuditEntry,
    ) -> StoreResult<(bool, bool)> {
        let moved = visits::transition(&self.primary, id, step, actor, at, Some(record)).await;
        let moved = self.recorded(moved, |moved| *moved).await?;
        Ok((moved, moved))
    }

    async fn claim_visit(&self, id: &str, provider: &str, at: DateTime<Utc>, waited_secs: u64) -> StoreResult<bool> {
        Ok(self.write(visits::claim(&self.primary, id, provider, at, waited_secs, None).await).await?.0)
    }

    async fn claim_visit_joined(
        &self,
        id: &str,
        provider: &Participant,
        at: DateTime<Utc>,
        waited_secs: u64,
        record: &AuditEntry,
    ) -> StoreResult<ClaimOutcome> {
        let claim = visits::claim(&self.primary, id, &provider.subject, at, waited_secs, Some((provider, record)));
        let (claimed, joined) = self.recorded(claim.await, |(claimed, _)| *claimed).await?;
        Ok(ClaimOutcome { claimed, joined, recorded: claimed })
    }

    async fn move_visit(
        &self,
        id: &str,
        from: UsState,
        to: UsState,
        actor: &Actor,
        at: DateTime<Utc>,
    ) -> StoreResult<bool> {
        self.write(visits::relocate(&self.primary, id, from, to, actor, at).await).await
    }

    async fn report_state(&self, id: &str, state: UsState) -> StoreResult<()> {
        self.write(visits::report_state(&self.primary, id, state).await).await
    }

    async fn live_visits_of(&self, provider: &str) -> StoreResult<Vec<Visit>> {
        read!(self, |pool| visits::live_of(pool, provider))
    }

    /// On the primary, as the queues: it is read once at start and must miss nothing.
    async fn live_visits(&self) -> StoreResult<Vec<Visit>> {
        visits::live(&self.primary).await
    }

    async fn transitions(&self, id: &str) -> StoreResult<Vec<Transition>> {
        read!(self, |pool| visits::transitions(pool, id))
    }

    /// On the primary: queues are rebuilt from it, and a visit another node took in a moment
    /// ago must not be left out.
    async fn waiting_visits(&self) -> StoreResult<Vec<Visit>> {
        visits::waiting(&self.primary).await
    }

    async fn count_visits(&self) -> StoreResult<u64> {
        read!(self, |pool| visits::count(pool))
    }

    async fn insert_caregiver(&self, caregiver: &Caregiver) -> StoreResult<bool> {
        self.write(directory::insert_caregiver(&self.primary, caregiver).await).await
    }

    /// On the primary: access checks use it, and a deactivation elsewhere counts at once.
    async fn get_caregiver(&self, subject: &str) -> StoreResult<Option<Caregiver>> {
        directory::get_caregiver(&self.primary, subject).await
    }

    async fn list_caregivers(&self) -> StoreResult<Vec<Caregiver>> {
        read!(self, |pool| directory::list_caregivers(pool))
    }

    async fn update_caregiver(&self, caregiver: &Caregiver) -> StoreResult<bool> {
        self.write(directory::update_caregiver(&self.primary, caregiver).await).await
    }

    async fn state_settings(&self) -> StoreResult<Vec<StateSettings>> {
        read!(self, |pool| directory::state_settings(pool))
    }

    async fn put_state_settings(&self, settings: &StateSettings) -> StoreResult<()> {
        self.write(directory::put_state_settings(&self.primary, settings).await).await
    }

    async fn append_message(&self, msg: &NewMessage) -> StoreResult<(ChatMessage, bool)> {
        self.write(chat::append(&self.primary, msg, None).await).await
    }

    async fn append_message_recorded(
        &self,
        msg: &NewMessage,
        record: &AuditEntry,
    ) -> StoreResult<((ChatMessage, bool), bool)> {
        let appended = chat::append(&self.primary, msg, Some(record)).await;
        let (message, new) = self.recorded(appended, |(_, new)| *new).await?;
        Ok(((message, new), new))
    }

    async fn messages(&self, visit_id: &str, before_seq: Option<u64>, limit: u32) -> StoreResult<Vec<ChatMessage>> {
        read!(self, |pool| chat::page(pool, visit_id, before_seq, limit))
    }

    async fn mark_read(&self, visit_id: &str, subject: &str, up_to_seq: u64) -> StoreResult<u64> {
        self.write(chat::mark_read(&self.primary, visit_id, subject, up_to_seq).await).await
    }

    async fn join_conversation(&self, visit_id: &str, member: &Participant, at: DateTime<Utc>) -> StoreResult<bool> {
        self.write(chat::join(&self.primary, visit_id, member, at, None).await).await
    }

    async fn join_conversation_recorded(
        &self,
        visit_id: &str,
        member: &Participant,
        at: DateTime<Utc>,
        record: &AuditEntry,
    ) -> StoreResult<(bool, bool)> {
        let joined = chat::join(&self.primary, visit_id, member, at, Some(record)).await;
        let joined = self.recorded(joined, |joined| *joined).await?;
        Ok((joined, joined))
    }

    async fn leave_conversation(&self, visit_id: &str, subject: &str) -> StoreResult<bool> {
        self.write(chat::leave(&self.primary, visit_id, subject).await).await
    }

    async fn conversation_members(&self, visit_id: &str) -> StoreResult<Vec<Participant>> {
        read!(self, |pool| chat::members(pool, visit_id))
    }

    /// On the primary, as the queues: it is read once at start and must miss nothing.
    async fn open_conversations(&self) -> StoreResult<Vec<OpenConversation>> {
        chat::open_conversations(&self.primary).await
    }

    async fn conversations_of(&self, subject: &str) -> StoreResult<Vec<ConversationSummary>> {
        read!(self, |pool| chat::conversations_of(pool, subject))
    }

    async fn open_conversation_ids(&self, subject: &str) -> StoreResult<Vec<VisitId>> {
        read!(self, |pool| chat::open_conversation_ids(pool, subject))
    }

    async fn append_audits(&self, entries: &[AuditEntry]) -> StoreResult<Vec<AuditRecord>> {
        self.write(audit::append(&self.primary, entries).await).await
    }

    async fn audit_trail(&self, after_id: i64, limit: u32) -> StoreResult<Vec<AuditRecord>> {
        self.chain_staged().await?;
        read!(self, |pool| audit::trail(pool, after_id, limit))
    }

    async fn audit_for_visit(&self, visit_id: &str) -> StoreResult<Vec<AuditRecord>> {
        self.chain_staged().await?;
        read!(self, |pool| audit::for_visit(pool, visit_id))
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.primary).await?;
        Ok(())
    }

    fn connections_in_use(&self) -> u32 {
        let in_use = |pool: &PgPool| pool.size().saturating_sub(pool.num_idle() as u32);
        in_use(&self.primary) + self.router.replica().map_or(0, in_use)
    }

    fn replica_reads(&self) -> Option<(u64, u64)> {
        self.router.has_replica().then(|| {
            let stats = self.router.stats();
            (stats.replica_reads, stats.primary_fallbacks)
        })
    }
}
