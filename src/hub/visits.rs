//! Intake, reading and cancelling visits.

use serde::Serialize;
use sha2::{Digest, Sha256};

use chrono::{DateTime, Utc};

use super::intake_rules::{BusyWindow, IntakeContext, check_intake};
use super::queues::QueuedVisit;
use super::{Hub, Scope, validate};
use crate::auth::{Claims, Principal};
use crate::error::{ErrorCode, HubError, HubResult};
use crate::live::LockGuard;
use crate::model::{Actor, Role, StateSettings, UsState, Visit, VisitId, VisitStatus, new_visit_id, patient_subject};
use crate::store::{IdempotencyKey, InsertOutcome};

pub const MAX_DISPLAY_NAME_CHARS: usize = 80;
pub const MAX_REASON_CHARS: usize = 500;
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 128;

/// What a patient gives at intake.
#[derive(Debug, Clone)]
pub struct IntakeRequest {
    pub display_name: String,
    pub state: UsState,
    pub reason: String,
}

/// What intake answers: the visit, a token scoped to it, and the place in line.
#[derive(Debug, Clone, Serialize)]
pub struct IntakeReceipt {
    pub visit_id: VisitId,
    pub state: UsState,
    pub status: VisitStatus,
    pub patient_token: String,
    pub position: Option<u32>,
    pub estimated_wait_secs: Option<u64>,
    /// True when an `Idempotency-Key` retry returned the visit made the first time.
    pub replayed: bool,
}

/// A visit as the API shows it, with its live place in line while it waits.
#[derive(Debug, Clone, Serialize)]
pub struct VisitView {
    #[serde(flatten)]
    pub visit: Visit,
    pub position: Option<u32>,
    pub current_estimated_wait_secs: Option<u64>,
}

/// What the intake lock's part of an intake gives.
enum Reserved {
    /// A new visit, checked and holding its place, to be stored; with the state's lock when
    /// it is to be held until the visit is queued.
    Visit(Visit, Option<LockGuard>),
    /// A retried idempotency key's earlier answer.
    Replay(IntakeReceipt),
}

fn request_hash(req: &IntakeRequest) -> String {
    let mut h = Sha256::new();
    for part in [req.state.code(), &req.display_name, &req.reason] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    hex::encode(h.finalize())
}

impl Hub {
    /// Takes a visit into its state's queue, or refuses it with nothing stored.
    pub async fn intake(&self, req: IntakeRequest, idempotency_key: Option<&str>) -> HubResult<IntakeReceipt> {
        let state = req.state;
        let result = self.admit(req, idempotency_key).await;
        let m = &self.metrics;
        match result {
            Ok((r, recorded)) => {
                if !r.replayed {
                    m.intakes.with_label_values(&[state.code()]).inc();
                    // A patient who never opens a socket is gone like one whose socket closed.
                    if !self.patient_connected(&r.visit_id) {
                        self.start_abandon_timer(&r.visit_id);
                    }
                    let subject = patient_subject(&r.visit_id);
                    let record =
                        self.audit_entry(&subject, Role::Patient, "visit.create", Scope::visit(&r.visit_id), Ok(()));
                    self.audit_unless_recorded(record, recorded).await;
                }
                Ok(r)
            }
            Err(e) => {
                m.intake_refusals.with_label_values(&[state.code(), e.code.as_str()]).inc();
                let scope = Scope::target(state.code());
                self.audit_as("anonymous", Role::Patient, "visit.create", scope, Err(e.code)).await;
                Err(e)
            }
        }
    }

    /// The receipt, and whether the store kept the intake's audit record with the visit.
    async fn admit(&self, req: IntakeRequest, idempotency_key: Option<&str>) -> HubResult<(IntakeReceipt, bool)> {
        let req = IntakeRequest {
            display_name: validate::text("display_name", &req.display_name, MAX_DISPLAY_NAME_CHARS)?,
            reason: validate::text("reason", &req.reason, MAX_REASON_CHARS)?,
            state: req.state,
        };
        let key = idempotency_key
            .map(|k| validate::identifier("Idempotency-Key", k, MAX_IDEMPOTENCY_KEY_LEN))
            .transpose()?
            .map(|key| IdempotencyKey { key, request_hash: request_hash(&req) });

        // Tries of one key (a client that lost its answer and retried) go one at a time, on
        // any node: a retry then finds the visit its first try stored instead of being checked
        // against the queue as a new patient while that try is still being stored.
        let _same_key = match &key {
            Some(k) => Some(self.hold(&format!("intake-key:{}", k.key)).await?),
            None => None,
        };
        let (visit, held) = match self.reserve_intake(req, key.as_ref()).await? {
            Reserved::Visit(visit, held) => (visit, held),
            Reserved::Replay(receipt) => return Ok((receipt, false)),
        };
        // With a store that shares commits the lock is let go: the visit is stored while later
        // intakes of its state are checked, and commits together with them. Its reservation
        // keeps its place until it is queued.
        let recorded = match self.store_intake(&visit, key.as_ref()).await {
            Ok(Some(recorded)) => recorded,
            Ok(None) => {
                self.withdraw_intake(&visit).await;
                let key = key.as_ref().ok_or_else(|| HubError::code(ErrorCode::Internal))?;
                let replay = self.replay_intake(key).await?.ok_or_else(|| HubError::code(ErrorCode::Internal))?;
                return Ok((replay, false));
            }
            Err(e) => {
                self.withdraw_intake(&visit).await;
                return Err(e);
            }
        };
        // Before it is queued, where staff can see it and join its conversation.
        self.members.opened(&visit.id);
        let pushed = match self.live_state.queue_push(visit.state, &QueuedVisit::of(&visit)).await {
            Ok(pushed) => pushed,
            Err(e) => {
                // Stored but not queued: withdraw it, so nothing waits unseen. (The trail
                // shows the intake stored, then refused: both happened.)
                let system = Actor { subject: "visithub".into(), role: "system" };
                let withdrawn = self.store.transition_visit(
                    &visit.id,
                    VisitStatus::Waiting,
                    VisitStatus::Cancelled,
                    &system,
                    visit.created_at,
                );
                self.members.closed(&visit.id).await;
                if let Err(e) = withdrawn.await {
                    tracing::error!(error = %e, "an intake that failed half-way was not withdrawn");
                }
                self.withdraw_intake(&visit).await;
                return Err(HubError::unavailable(e));
            }
        };
        // Queued: the state's next intake may be checked (the board's update need not wait).
        drop(held);
        let visit = self.live.put(visit);
        self.queue_changed(visit.state, pushed.change).await;
        let receipt = IntakeReceipt {
            patient_token: self.patient_token(&visit.id),
            visit_id: visit.id.clone(),
            state: visit.state,
            status: visit.status,
            // As live state placed it, with intakes that arrived first still being stored:
            // the node's board may already show later changes.
            position: Some(pushed.place),
            estimated_wait_secs: visit.estimated_wait_secs,
            replayed: false,
        };
        Ok((receipt, recorded))
    }

    /// Under the state's intake lock: checks the intake against the state's rules and the
    /// visits waiting or in flight, and reserves its place, or answers a retried key's visit.
    async fn reserve_intake(&self, req: IntakeRequest, key: Option<&IdempotencyKey>) -> HubResult<Reserved> {
        // A retry of an intake that went through must not be refused by today's rules.
        if let Some(key) = key
            && let Some(receipt) = self.replay_intake(key).await?
        {
            return Ok(Reserved::Replay(receipt));
        }
        let gate = self.intake_lock(req.state).await?;
        let settings = self.state_settings(req.state);
        let now = self.clock.now();
        let mut busy_window = self.busy_window(&settings, now).await?;
        let estimate = self.estimate(req.state);
        let live_state = &self.live_state;
        let waiting = live_state.queue_len(req.state, now.timestamp_millis()).await.map_err(HubError::unavailable)?;
        let projected = estimate.wait_for(waiting + 1);
        let ctx = IntakeContext {
            settings: &settings,
            now,
            waiting,
            projected_wait_secs: projected,
            slot_free_secs: estimate
                .wait_for(1)
                .max(estimate.mean_visit_secs as u64 / estimate.staffing.online.max(1) as u64),
        };
        check_intake(&ctx, &mut busy_window)?;

        let visit = Visit {
            id: new_visit_id(),
            state: req.state,
            display_name: req.display_name,
            reason: req.reason,
            status: VisitStatus::Waiting,
            created_at: now,
            estimated_wait_secs: Some(projected),
            waited_secs: None,
            provider: None,
            reported_state: None,
        };
        live_state
            .intake_reserve(visit.state, &visit.id, now.timestamp_millis())
            .await
            .map_err(HubError::unavailable)?;
        if settings.busy {
            // Counted now, so intakes in flight count against the reduced rate; one whose
            // store then fails stays counted, erring toward fewer admissions.
            let noted = live_state.busy_admit(req.state, now.timestamp_millis(), settings.busy_intake_per_hour);
            if let Err(e) = noted.await {
                tracing::warn!(error = %e, "a busy state's admission was not noted");
            }
        }
        // PostgreSQL commits each intake on its own: letting intakes of a state run at once
        // gains no shared commit there, and a two-node cluster measured no gain from it
        // (BENCHMARKS.md), so the lock is held until the visit is queued, as it always was.
        let held = (!self.store.shares_commits()).then_some(gate);
        Ok(Reserved::Visit(visit, held))
    }

    /// Stores a reserved visit with its idempotency key if any and its intake's audit record,
    /// in one commit; `Some(recorded)`, or `None` when the key's first intake was stored
    /// meanwhile.
    async fn store_intake(&self, visit: &Visit, key: Option<&IdempotencyKey>) -> HubResult<Option<bool>> {
        let actor = Actor { subject: patient_subject(&visit.id), role: Role::Patient.as_str() };
        let record = self.audit_entry(&actor.subject, Role::Patient, "visit.create", Scope::visit(&visit.id), Ok(()));
        let stored = self.store.insert_visit_recorded(visit, &actor, key, &record).await;
        match stored.map_err(HubError::internal)? {
            (InsertOutcome::Inserted, recorded) => Ok(Some(recorded)),
            (InsertOutcome::Replayed { .. }, _) => Ok(None),
        }
    }

    /// Ends a reservation whose intake was refused after it; if live state cannot be
    /// reached, the reservation lapses on its own.
    async fn withdraw_intake(&self, visit: &Visit) {
        if let Err(e) = self.live_state.intake_withdraw(visit.state, &visit.id).await {
            tracing::warn!(error = %e, "an intake in flight was not withdrawn; it lapses");
        }
    }

    /// The admissions a busy state made in the last hour, as live state (every node's) holds
    /// them; empty when the state is not busy, without asking.
    async fn busy_window(&self, settings: &StateSettings, now: DateTime<Utc>) -> HubResult<BusyWindow> {
        if !settings.busy {
            return Ok(BusyWindow::default());
        }
        let admitted = self.live_state.busy_admissions(settings.state, now.timestamp_millis()).await;
        let admitted = admitted.map_err(HubError::unavailable)?;
        Ok(BusyWindow::of(admitted.into_iter().filter_map(DateTime::from_timestamp_millis)))
    }

    /// Serializes intakes of a state (and settings changes) across every node.
    pub(super) async fn intake_lock(&self, state: UsState) -> HubResult<crate::live::LockGuard> {
        self.hold(&format!("intake:{}", state.code())).await
    }

    /// The earlier answer for an idempotency key, or `None` if the key is new.
    async fn replay_intake(&self, key: &IdempotencyKey) -> HubResult<Option<IntakeReceipt>> {
        let Some((visit_id, hash)) = self.store.idempotent_visit(&key.key).await.map_err(HubError::internal)? else {
            return Ok(None);
        };
        if hash != key.request_hash {
            return Err(HubError::code(ErrorCode::IdempotencyConflict));
        }
        let visit = self
            .store
            .get_visit(&visit_id)
            .await
            .map_err(HubError::internal)?
            .ok_or_else(|| HubError::code(ErrorCode::Internal))?;
        let live = self.fresh_view(visit.state).await.position_message(&visit.id);
        Ok(Some(IntakeReceipt {
            patient_token: self.patient_token(&visit.id),
            visit_id: visit.id,
            state: visit.state,
            status: visit.status,
            position: live.as_ref().map(|p| p.position),
            estimated_wait_secs: live.map(|p| p.estimated_wait_secs),
            replayed: true,
        }))
    }

    fn patient_token(&self, visit_id: &str) -> String {
        let mut claims = Claims::new(
            patient_subject(visit_id),
            Role::Patient,
            self.clock.now(),
            self.options.patient_token_ttl_secs,
        );
        claims.visit = Some(visit_id.to_string());
        self.keys.sign(&claims)
    }

    async fn load_visit(&self, who: &Principal, visit_id: &str) -> HubResult<Visit> {
        // A patient asking for another visit learns nothing, not even whether it exists.
        if who.role == Role::Patient && who.visit.as_deref() != Some(visit_id) {
            return Err(HubError::code(ErrorCode::NotYourVisit));
        }
        let visit = self.visit(visit_id).await?;
        who.require_visit(&visit)?;
        Ok((*visit).clone())
    }

    pub async fn visit_view(&self, who: &Principal, visit_id: &str) -> HubResult<VisitView> {
        let visit = self.load_visit(who, visit_id).await?;
        let live = self.fresh_view(visit.state).await.position_message(&visit.id);
        Ok(VisitView {
            position: live.as_ref().map(|p| p.position),
            current_estimated_wait_secs: live.map(|p| p.estimated_wait_secs),
            visit,
        })
    }

    pub async fn cancel_visit(&self, who: &Principal, visit_id: &str) -> HubResult<VisitView> {
        let visit = self.load_visit(who, visit_id).await?;
        if !visit.status.can_become(VisitStatus::Cancelled) {
            return Err(HubError::code(ErrorCode::VisitNotCancellable));
        }
        let actor = Actor { subject: who.subject.clone(), role: who.role.as_str() };
        // `None`: someone else moved it first (claimed, cancelled): the caller's view was stale.
        let visit = self
            .apply(&visit, VisitStatus::Cancelled, &actor)
            .await?
            .ok_or_else(|| HubError::code(ErrorCode::VisitNotCancellable))?;
        Ok(VisitView { visit, position: None, current_estimated_wait_secs: None })
    }

    pub(super) async fn leave_queue(&self, state: UsState, visit_id: &str) {
        match self.live_state.queue_remove(state, visit_id).await {
            Ok(Some(change)) => self.queue_changed(state, change).await,
            Ok(None) => {}
            // The store says it left: the next rebuild from the store drops it.
            Err(e) => tracing::warn!(error = %e, "visit not taken out of live state"),
        }
    }
}
