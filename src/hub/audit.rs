//! Writing and reading the audit trail: who did what to which visit, when, and the outcome,
//! refusals included.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::Hub;
use crate::auth::Principal;
use crate::error::{ErrorCode, HubError, HubResult};
use crate::model::audit::{GENESIS, first_broken};
use crate::model::{AuditEntry, AuditRecord, Role};
use crate::store::Store;

/// Records waiting for the writer; a full queue makes callers wait (backpressure), never drops.
const QUEUE: usize = 4096;
/// Records per transaction at most.
const MAX_BATCH: usize = 512;

/// The hub's one audit writer. Every caller waits until its record is committed, so an action
/// acknowledged to a client is on record first; records that arrive while a batch is being
/// written go together in the next one, so a busy hub pays one transaction (and one trip to
/// the store) for many records instead of one each. One writer also keeps the chain's order
/// the order in which records were handed in. (Records per batch: the store's `append_audits`
/// operations against `visithub_audit_records_total`.)
pub(super) struct AuditWriter {
    queue: mpsc::Sender<(AuditEntry, oneshot::Sender<bool>)>,
}

impl AuditWriter {
    /// Starts the writer task; it ends when the writer is dropped and its queue is drained.
    pub(super) fn start(store: Arc<dyn Store>) -> AuditWriter {
        let (queue, mut pending) = mpsc::channel(QUEUE);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(MAX_BATCH);
            while pending.recv_many(&mut batch, MAX_BATCH).await > 0 {
                let (entries, waiters): (Vec<AuditEntry>, Vec<oneshot::Sender<bool>>) = batch.drain(..).unzip();
                let written = match store.append_audits(&entries).await {
                    Ok(_) => true,
                    Err(e) => {
                        tracing::error!(error = %e, records = entries.len(), "audit records not written");
                        false
                    }
                };
                for waiter in waiters {
                    // A caller that stopped waiting needs no answer.
                    let _ = waiter.send(written);
                }
            }
        });
        AuditWriter { queue }
    }

    /// Appends one record; true once it is committed.
    async fn append(&self, entry: AuditEntry) -> bool {
        let (done, written) = oneshot::channel();
        if self.queue.send((entry, done)).await.is_err() {
            return false;
        }
        written.await.unwrap_or(false)
    }
}

/// What an audited action touched.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    pub visit_id: Option<String>,
    pub target: Option<String>,
}

impl Scope {
    pub fn visit(id: &str) -> Scope {
        Scope { visit_id: Some(id.to_string()), target: None }
    }

    pub fn target(t: impl Into<String>) -> Scope {
        Scope { visit_id: None, target: Some(t.into()) }
    }
}

impl Hub {
    /// Appends one record and waits for its commit. A failure to write is logged and counted,
    /// not turned into a failure of the action it describes (which already happened).
    pub async fn audit(&self, who: &Principal, action: &str, scope: Scope, outcome: Result<(), ErrorCode>) {
        self.audit_as(&who.subject, who.role, action, scope, outcome).await
    }

    /// As [`Hub::audit`], for an actor without a session (an intake, the hub itself).
    pub async fn audit_as(
        &self,
        subject: &str,
        role: Role,
        action: &str,
        scope: Scope,
        outcome: Result<(), ErrorCode>,
    ) {
        self.audit_unless_recorded(self.audit_entry(subject, role, action, scope, outcome), false).await
    }

    /// The record of `subject` doing `action`, stamped now.
    pub(super) fn audit_entry(
        &self,
        subject: &str,
        role: Role,
        action: &str,
        scope: Scope,
        outcome: Result<(), ErrorCode>,
    ) -> AuditEntry {
        AuditEntry {
            at: self.clock.now(),
            subject: subject.to_string(),
            role: role.as_str().to_string(),
            action: action.to_string(),
            visit_id: scope.visit_id,
            target: scope.target,
            outcome: match outcome {
                Ok(()) => "ok",
                Err(code) => code.as_str(),
            }
            .to_string(),
        }
    }

    /// Appends `entry` and waits for its commit, unless the store already kept it with the
    /// change it describes (`recorded`); counted either way.
    pub(super) async fn audit_unless_recorded(&self, entry: AuditEntry, recorded: bool) {
        let ok = entry.outcome == "ok";
        let action = entry.action.clone();
        if recorded || self.audit_writer.append(entry).await {
            self.metrics.audit_records.with_label_values(&[if ok { "ok" } else { "refused" }]).inc()
        } else {
            self.metrics.audit_records.with_label_values(&["write_failed"]).inc();
            tracing::error!(action, "audit record not written");
        }
    }

    /// The trail of one visit, for admins.
    pub async fn visit_audit(&self, who: &Principal, visit_id: &str) -> HubResult<Vec<AuditRecord>> {
        who.require_role(&[Role::Admin])?;
        self.store.audit_for_visit(visit_id).await.map_err(HubError::internal)
    }
}

/// Walks the whole trail. `Ok(n)`: `n` records, all linked; `Err(id)`: the first broken one.
pub async fn verify(store: &dyn Store) -> anyhow::Result<Result<u64, i64>> {
    const PAGE: u32 = 1000;
    let (mut after, mut prev, mut count) = (0i64, GENESIS.to_string(), 0u64);
    loop {
        let page = store.audit_trail(after, PAGE).await?;
        let Some(last) = page.last() else { return Ok(Ok(count)) };
        after = last.id;
        count += page.len() as u64;
        match first_broken(&page, prev) {
            Ok(hash) => prev = hash,
            Err(id) => return Ok(Err(id)),
        }
    }
}
