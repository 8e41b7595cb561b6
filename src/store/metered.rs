//! A `Store` that times every operation of the store it wraps, whatever the backend.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{
    ClaimOutcome, ConversationSummary, IdempotencyKey, InsertOutcome, NewMessage, OpenConversation, Store, StoreResult,
    Transition,
};
use crate::metrics::Metrics;
use crate::model::{Actor, AuditEntry, AuditRecord, Caregiver, StateSettings, UsState, Visit, VisitId, VisitStatus};
use crate::protocol::{ChatMessage, Participant};

pub struct Metered {
    inner: Arc<dyn Store>,
    metrics: Arc<Metrics>,
}

impl Metered {
    pub fn new(inner: Arc<dyn Store>, metrics: Arc<Metrics>) -> Self {
        Metered { inner, metrics }
    }
}

/// Delegates each listed method, observing its latency under its name.
macro_rules! timed {
    ($(async fn $name:ident(&self $(, $arg:ident: $ty:ty)*) -> $ret:ty;)*) => {
        #[async_trait]
        impl Store for Metered {
            $(async fn $name(&self $(, $arg: $ty)*) -> $ret {
                let _timer = self.metrics.store_seconds.with_label_values(&[stringify!($name)]).start_timer();
                self.inner.$name($($arg),*).await
            })*

            fn connections_in_use(&self) -> u32 {
                self.inner.connections_in_use()
            }

            fn replica_reads(&self) -> Option<(u64, u64)> {
                self.inner.replica_reads()
            }

            fn shares_commits(&self) -> bool {
                self.inner.shares_commits()
            }
        }
    };
}

timed! {
    async fn insert_visit(&self, visit: &Visit, actor: &Actor, key: Option<&IdempotencyKey>) -> StoreResult<InsertOutcome>;
    async fn insert_visit_recorded(&self, visit: &Visit, actor: &Actor, key: Option<&IdempotencyKey>, record: &AuditEntry) -> StoreResult<(InsertOutcome, bool)>;
    async fn idempotent_visit(&self, key: &str) -> StoreResult<Option<(VisitId, String)>>;
    async fn get_visit(&self, id: &str) -> StoreResult<Option<Visit>>;
    async fn transition_visit(&self, id: &str, from: VisitStatus, to: VisitStatus, actor: &Actor, at: DateTime<Utc>) -> StoreResult<bool>;
    async fn claim_visit(&self, id: &str, provider: &str, at: DateTime<Utc>, waited_secs: u64) -> StoreResult<bool>;
    async fn transition_visit_recorded(&self, id: &str, statuses: (VisitStatus, VisitStatus), actor: &Actor, at: DateTime<Utc>, record: &AuditEntry) -> StoreResult<(bool, bool)>;
    async fn claim_visit_joined(&self, id: &str, provider: &Participant, at: DateTime<Utc>, waited_secs: u64, record: &AuditEntry) -> StoreResult<ClaimOutcome>;
    async fn move_visit(&self, id: &str, from: UsState, to: UsState, actor: &Actor, at: DateTime<Utc>) -> StoreResult<bool>;
    async fn report_state(&self, id: &str, state: UsState) -> StoreResult<()>;
    async fn live_visits_of(&self, provider: &str) -> StoreResult<Vec<Visit>>;
    async fn live_visits(&self) -> StoreResult<Vec<Visit>>;
    async fn transitions(&self, id: &str) -> StoreResult<Vec<Transition>>;
    async fn waiting_visits(&self) -> StoreResult<Vec<Visit>>;
    async fn count_visits(&self) -> StoreResult<u64>;
    async fn insert_caregiver(&self, caregiver: &Caregiver) -> StoreResult<bool>;
    async fn get_caregiver(&self, subject: &str) -> StoreResult<Option<Caregiver>>;
    async fn list_caregivers(&self) -> StoreResult<Vec<Caregiver>>;
    async fn update_caregiver(&self, caregiver: &Caregiver) -> StoreResult<bool>;
    async fn state_settings(&self) -> StoreResult<Vec<StateSettings>>;
    async fn put_state_settings(&self, settings: &StateSettings) -> StoreResult<()>;
    async fn append_message(&self, msg: &NewMessage) -> StoreResult<(ChatMessage, bool)>;
    async fn append_message_recorded(&self, msg: &NewMessage, record: &AuditEntry) -> StoreResult<((ChatMessage, bool), bool)>;
    async fn messages(&self, visit_id: &str, before_seq: Option<u64>, limit: u32) -> StoreResult<Vec<ChatMessage>>;
    async fn mark_read(&self, visit_id: &str, subject: &str, up_to_seq: u64) -> StoreResult<u64>;
    async fn join_conversation(&self, visit_id: &str, member: &Participant, at: DateTime<Utc>) -> StoreResult<bool>;
    async fn join_conversation_recorded(&self, visit_id: &str, member: &Participant, at: DateTime<Utc>, record: &AuditEntry) -> StoreResult<(bool, bool)>;
    async fn leave_conversation(&self, visit_id: &str, subject: &str) -> StoreResult<bool>;
    async fn conversation_members(&self, visit_id: &str) -> StoreResult<Vec<Participant>>;
    async fn conversations_of(&self, subject: &str) -> StoreResult<Vec<ConversationSummary>>;
    async fn open_conversation_ids(&self, subject: &str) -> StoreResult<Vec<VisitId>>;
    async fn open_conversations(&self) -> StoreResult<Vec<OpenConversation>>;
    async fn append_audits(&self, entries: &[AuditEntry]) -> StoreResult<Vec<AuditRecord>>;
    async fn audit_trail(&self, after_id: i64, limit: u32) -> StoreResult<Vec<AuditRecord>>;
    async fn audit_for_visit(&self, visit_id: &str) -> StoreResult<Vec<AuditRecord>>;
    async fn ping(&self) -> StoreResult<()>;
}
