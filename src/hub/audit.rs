//! Writing and reading the audit trail: who did what to which visit, when, and the outcome,
//! refusals included.

use super::Hub;
use crate::auth::Principal;
use crate::error::{ErrorCode, HubError, HubResult};
use crate::model::audit::{GENESIS, first_broken};
use crate::model::{AuditEntry, AuditRecord, Role};
use crate::store::Store;

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
    /// Appends one record. A failure to write is logged and counted, not turned into a
    /// failure of the action it describes (which already happened).
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
        let outcome = match outcome {
            Ok(()) => "ok",
            Err(code) => code.as_str(),
        };
        let entry = AuditEntry {
            at: self.clock.now(),
            subject: subject.to_string(),
            role: role.as_str().to_string(),
            action: action.to_string(),
            visit_id: scope.visit_id,
            target: scope.target,
            outcome: outcome.to_string(),
        };
        match self.store.append_audit(&entry).await {
            Ok(_) => {
                self.metrics.audit_records.with_label_values(&[if outcome == "ok" { "ok" } else { "refused" }]).inc()
            }
            Err(e) => {
                self.metrics.audit_records.with_label_values(&["write_failed"]).inc();
                tracing::error!(error = %e, action, "audit record not written");
            }
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
