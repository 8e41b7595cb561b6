//! The visit lifecycle: `waiting -> claimed -> in_visit -> wrap_up -> ended`, plus `cancelled`
//! and `abandoned`. Every step is a compare-and-set in the store, so concurrent attempts have
//! exactly one winner, and every step is stored with its time and actor and told to everyone
//! in the visit.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::queues::QueuedVisit;
use super::{Hub, Learned, LearnedMeans, Scope};
use crate::auth::Principal;
use crate::bus::{BusEvent, Topic};
use crate::error::{ErrorCode, HubError, HubResult};
use crate::model::{Actor, AuditEntry, Role, UsState, Visit, VisitStatus};
use crate::protocol::{Participant, VisitUpdated};
use crate::store::ClaimOutcome;

const HUB_ACTOR: &str = "visithub";

/// A pick-up delay longer than this (a provider left online and free, away from the screen)
/// is learned as this, so one such claim cannot swing the estimates for long.
const MAX_PICKUP_SAMPLE_SECS: u64 = 3600;

impl Hub {
    /// A provider licensed in the visit's state claims it. Of many concurrent claims exactly
    /// one wins; the others get `visit_already_claimed`.
    pub async fn claim_visit(&self, who: &Principal, visit_id: &str) -> HubResult<Visit> {
        who.require_role(&[Role::Provider])?;
        let visit = self.visit(visit_id).await?;
        who.require_covers(visit.state)?;
        if visit.status != VisitStatus::Waiting {
            return Err(HubError::code(if visit.is_live() {
                ErrorCode::VisitAlreadyClaimed
            } else {
                ErrorCode::InvalidTransition
            }));
        }
        let at = self.clock.now();
        let (live_now, pickup) = {
            // One claim at a time per provider, across nodes, so the live-visit cap holds.
            let _one_claim_at_a_time = self.hold(&format!("claim:{}", who.subject)).await?;
            let held = self.provider_live_count(&who.subject).await?;
            if held >= self.options.max_live_visits_per_provider {
                return Err(HubError::code(ErrorCode::ProviderBusy));
            }
            let waited = (at - visit.created_at).num_seconds().max(0) as u64;
            // The claim, the provider joining the visit's conversation with the patient, and
            // the claim's audit record in one commit (a refusal is recorded by the caller).
            let record = self.audit_entry(&who.subject, who.role, "visit.claim", Scope::visit(&visit.id), Ok(()));
            let me = who.participant();
            let claim = async {
                let stored = self.store.claim_visit_joined(&visit.id, &me, at, waited, &record).await;
                stored.map(|o| (o.joined, o)).map_err(HubError::internal)
            };
            let (_, ClaimOutcome { claimed, recorded, .. }) = self.joining(&visit.id, &me, at, claim).await?;
            if !claimed {
                self.live.forget(&visit.id);
                return Err(HubError::code(ErrorCode::VisitAlreadyClaimed));
            }
            self.audit_unless_recorded(record, recorded).await;
            // Read before the claim's load makes the provider busy; learned once the lock is free.
            let pickup = self
                .presence
                .picked_up(&who.subject, at)
                .map(|free| waited.min((at - free).num_seconds().max(0) as u64).min(MAX_PICKUP_SAMPLE_SECS));
            // Noted under the claim lock: the provider's next claim counts this one.
            self.loads.note(&who.subject, &visit.id, true);
            // Counted under the claim lock, so the provider's load needs no second read.
            (held + 1, pickup)
        };
        if let Some(pickup) = pickup {
            self.learn(visit.state, Learned::PickupSecs, pickup).await;
        }
        let waited = (at - visit.created_at).num_seconds().max(0) as u64;
        let state = visit.state.code();
        self.metrics.time_to_provider.with_label_values(&[state]).observe(waited as f64);
        if let Some(estimate) = visit.estimated_wait_secs {
            self.metrics.estimator_error.with_label_values(&[state]).observe(waited.abs_diff(estimate) as f64);
        }
        let mut next = (*visit).clone();
        next.status = VisitStatus::Claimed;
        next.provider = Some(who.subject.clone());
        next.waited_secs = next.waited_secs.or(Some((at - visit.created_at).num_seconds().max(0) as u64));
        self.after_transition(&visit, next.clone(), at, Some(live_now)).await;
        self.announce_participants(&visit.id).await;
        Ok(next)
    }

    /// Any other step, by who may take it: the claiming provider releases (`waiting`), starts
    /// (`in_visit`), ends the call (`wrap_up`, the patient may too) and finishes (`ended`).
    pub async fn transition_visit(&self, who: &Principal, visit_id: &str, to: VisitStatus) -> HubResult<Visit> {
        let scope = Scope::visit(visit_id);
        if to == VisitStatus::Cancelled {
            let cancelled = self.cancel_visit(who, visit_id).await?.visit;
            self.audit(who, "visit.transition", scope, Ok(())).await;
            return Ok(cancelled);
        }
        let visit = self.visit(visit_id).await?;
        let is_provider = who.role == Role::Provider && visit.provider.as_deref() == Some(who.subject.as_str());
        let is_patient = who.is_patient_of(&visit.id);
        let is_admin = who.role == Role::Admin;
        if !(is_provider || is_patient || is_admin) {
            return Err(HubError::code(ErrorCode::NotAParticipant));
        }
        let allowed = match (visit.status, to) {
            (VisitStatus::Claimed, VisitStatus::Waiting | VisitStatus::InVisit)
            | (VisitStatus::WrapUp, VisitStatus::Ended) => is_provider || is_admin,
            (VisitStatus::InVisit, VisitStatus::WrapUp) => true,
            _ => false,
        };
        if !allowed || !visit.status.can_become(to) {
            return Err(HubError::new(
                ErrorCode::InvalidTransition,
                format!("{} cannot go to {} by this role", visit.status.as_str(), to.as_str()),
            ));
        }
        let actor = Actor { subject: who.subject.clone(), role: who.role.as_str() };
        let record = self.audit_entry(&who.subject, who.role, "visit.transition", scope, Ok(()));
        self.apply_recorded(&visit, to, &actor, Some(record))
            .await?
            .ok_or_else(|| HubError::new(ErrorCode::InvalidTransition, "the visit changed meanwhile"))
    }

    /// Stores `visit -> to` and tells everyone. `None` when the visit moved meanwhile.
    pub(super) async fn apply(&self, visit: &Visit, to: VisitStatus, actor: &Actor) -> HubResult<Option<Visit>> {
        self.apply_recorded(visit, to, actor, None).await
    }

    /// [`Hub::apply`], with the audit record of the request that asked for it committed with
    /// the transition when it moves (a refusal is recorded by the caller).
    async fn apply_recorded(
        &self,
        visit: &Visit,
        to: VisitStatus,
        actor: &Actor,
        record: Option<AuditEntry>,
    ) -> HubResult<Option<Visit>> {
        let at = self.clock.now();
        let statuses = (visit.status, to);
        let moved = match record {
            None => self.store.transition_visit(&visit.id, visit.status, to, actor, at).await,
            Some(record) => {
                let stored = self.store.transition_visit_recorded(&visit.id, statuses, actor, at, &record).await;
                match stored {
                    Ok((true, recorded)) => {
                        self.audit_unless_recorded(record, recorded).await;
                        Ok(true)
                    }
                    other => other.map(|(moved, _)| moved),
                }
            }
        }
        .map_err(HubError::internal)?;
        if !moved {
            self.live.forget(&visit.id);
            return Ok(None);
        }
        let mut next = visit.clone();
        next.status = to;
        if to == VisitStatus::Waiting {
            next.provider = None;
        }
        self.after_transition(visit, next.clone(), at, None).await;
        Ok(Some(next))
    }

    /// `provider_live`: the live visits the provider holds now, when the caller counted them.
    async fn after_transition(&self, before: &Visit, after: Visit, at: DateTime<Utc>, provider_live: Option<u32>) {
        let after = self.live.put(after);
        if before.status == VisitStatus::Waiting && after.status != VisitStatus::Waiting {
            self.leave_queue(before.state, &before.id).await;
        }
        if after.status == VisitStatus::Waiting && before.status != VisitStatus::Waiting {
            self.join_queue(&after).await;
        }
        if after.status == VisitStatus::InVisit {
            self.started.insert(after.id.clone(), at);
        }
        if before.status == VisitStatus::InVisit && after.status == VisitStatus::WrapUp {
            self.learn_duration(&after, at).await;
        }
        if let Some(provider) = before.provider.as_deref().or(after.provider.as_deref())
            && before.is_live() != after.is_live()
        {
            self.loads.note(provider, &after.id, after.is_live());
            match provider_live {
                Some(live) => self.provider_load(provider, live).await,
                None => self.refresh_provider_load(provider).await,
            }
        }
        let update =
            VisitUpdated { visit_id: after.id.clone(), status: after.status, at, state: None, reported_state: None };
        self.publish(Topic::Visit(after.id.clone()), BusEvent::VisitUpdated(update)).await;
        if after.status == VisitStatus::InVisit
            && let Some(parties) = self.parties(&after).await
        {
            let (patient, provider) = parties;
            self.publish(
                Topic::Signal(after.id.clone()),
                BusEvent::VisitStarted { visit_id: after.id.clone(), patient, provider },
            )
            .await;
        }
        if after.status.is_final() {
            self.metrics.visits_finished.with_label_values(&[after.state.code(), after.status.as_str()]).inc();
            if let Some((_, timer)) = self.abandon_timers.remove(&after.id) {
                timer.abort();
            }
            self.started.remove(&after.id);
            self.members.closed(&after.id).await;
        }
    }

    /// The patient and provider of a visit, as each sees the other.
    pub(super) async fn parties(&self, visit: &Visit) -> Option<(Participant, Participant)> {
        let provider = visit.provider.as_deref()?;
        // A provider in a visit is almost always online here: their name is in presence.
        let name = match self.presence.name_of(provider) {
            Some(name) => name,
            None => match self.store.get_caregiver(provider).await {
                Ok(Some(c)) => c.name,
                _ => provider.to_string(),
            },
        };
        let patient =
            Participant { subject: visit.patient_subject(), name: visit.display_name.clone(), role: Role::Patient };
        Some((patient, Participant { subject: provider.to_string(), name, role: Role::Provider }))
    }

    async fn learn_duration(&self, visit: &Visit, at: DateTime<Utc>) {
        let start = match self.started.remove(&visit.id) {
            Some((_, start)) => Some(start),
            None => {
                let Ok(transitions) = self.store.transitions(&visit.id).await else { return };
                transitions.iter().rev().find(|t| t.to == VisitStatus::InVisit).map(|t| t.at)
            }
        };
        if let Some(start) = start {
            self.learn(visit.state, Learned::VisitSecs, (at - start).num_seconds().max(0) as u64).await;
        }
    }

    /// Learns one observation into the state's shared mean and takes the result.
    async fn learn(&self, state: UsState, what: Learned, secs: u64) {
        // A fresh estimator holds the configured weight (clamped) and priors.
        let fresh = self.new_estimator();
        match self.live_state.learn(state, what, secs as f64, fresh.alpha(), fresh.mean(what)).await {
            Ok(mean) => {
                let mut means = LearnedMeans::default();
                means.set(what, mean);
                self.adopt_means(state, means);
            }
            Err(e) => {
                // Live state away: this node learns alone until the next queue read.
                tracing::warn!(error = %e, "an estimate's observation was learned on this node only");
                self.estimators.entry(state).or_insert_with(|| self.new_estimator()).record(what, secs);
            }
        }
    }

    pub(super) async fn refresh_provider_load(&self, provider: &str) {
        let Ok(live) = self.provider_live_count(provider).await else { return };
        self.provider_load(provider, live).await;
    }

    async fn provider_load(&self, provider: &str, live: u32) {
        if let Some(p) = self.presence.set_live(provider, live) {
            self.presence_changed(p).await;
        }
    }

    /// Puts a visit back in its state's queue at its place by arrival.
    async fn join_queue(&self, visit: &Visit) {
        match self.live_state.queue_push(visit.state, &QueuedVisit::of(visit)).await {
            Ok(pushed) => self.queue_changed(visit.state, pushed.change).await,
            // The store says it waits: the next rebuild from the store queues it again.
            Err(e) => tracing::warn!(error = %e, "visit not put back in live state"),
        }
    }

    /// A patient says they are in another state now (a new intake answer).
    pub async fn report_location(&self, who: &Principal, visit_id: &str, state: UsState) -> HubResult<()> {
        if !who.is_patient_of(visit_id) {
            return Err(HubError::code(ErrorCode::NotYourVisit));
        }
        let visit = self.visit(visit_id).await?;
        if visit.status.is_final() {
            return Err(HubError::code(ErrorCode::VisitNotActive));
        }
        self.store.report_state(visit_id, state).await.map_err(HubError::internal)?;
        let mut next = (*visit).clone();
        next.reported_state = Some(state);
        self.live.put(next);
        let at = self.clock.now();
        let update = VisitUpdated {
            visit_id: visit.id.clone(),
            status: visit.status,
            at,
            state: None,
            reported_state: Some(state),
        };
        self.publish(Topic::Visit(visit.id.clone()), BusEvent::VisitUpdated(update)).await;
        Ok(())
    }

    /// Staff move a waiting visit to the queue of the state its patient last said they are in;
    /// never anywhere else.
    pub async fn move_visit(&self, who: &Principal, visit_id: &str, to: UsState) -> HubResult<Visit> {
        who.require_role(&[Role::Support, Role::Provider, Role::Admin])?;
        let visit = self.visit(visit_id).await?;
        who.require_covers(visit.state)?;
        if visit.status != VisitStatus::Waiting {
            return Err(HubError::code(ErrorCode::VisitNotActive));
        }
        if visit.reported_state != Some(to) || to == visit.state {
            return Err(HubError::code(ErrorCode::LocationMismatch));
        }
        let at = self.clock.now();
        let actor = Actor { subject: who.subject.clone(), role: who.role.as_str() };
        if !self.store.move_visit(&visit.id, visit.state, to, &actor, at).await.map_err(HubError::internal)? {
            self.live.forget(&visit.id);
            return Err(HubError::code(ErrorCode::VisitNotActive));
        }
        let mut next = (*visit).clone();
        next.state = to;
        next.reported_state = None;
        let next = self.live.put(next);
        self.leave_queue(visit.state, &visit.id).await;
        self.join_queue(&next).await;
        let update =
            VisitUpdated { visit_id: visit.id.clone(), status: next.status, at, state: Some(to), reported_state: None };
        self.publish(Topic::Visit(visit.id.clone()), BusEvent::VisitUpdated(update)).await;
        Ok((*next).clone())
    }

    /// A patient's socket opened: a pending abandonment is called off.
    pub fn patient_online(&self, visit_id: &str) {
        *self.patient_sockets.entry(visit_id.to_string()).or_insert(0) += 1;
        if let Some((_, timer)) = self.abandon_timers.remove(visit_id) {
            timer.abort();
        }
    }

    /// A patient's socket closed: with none left, the visit is abandoned after the grace
    /// period unless the patient comes back.
    pub async fn patient_offline(&self, visit_id: &str) {
        let left = self.patient_sockets.remove_if_mut(visit_id, |_, n| {
            *n -= 1;
            *n == 0
        });
        // A visit over needs no watching, and is not read again to learn it (its socket closes
        // right after the end).
        if left.is_none() || self.live.is_over(visit_id) {
            return;
        }
        let Ok(visit) = self.visit(visit_id).await else { return };
        if !visit.status.can_become(VisitStatus::Abandoned) {
            return;
        }
        self.start_abandon_timer(visit_id);
    }

    /// Abandons the visit after the grace period unless its patient is back by then, on
    /// this node or another.
    pub(super) fn start_abandon_timer(&self, visit_id: &str) {
        let Some(hub) = self.me.get().and_then(std::sync::Weak::upgrade) else { return };
        let grace = Duration::from_secs(self.options.abandon_grace_secs);
        let id = visit_id.to_string();
        let task = tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            hub.abandon_timers.remove(&id);
            if !hub.patient_connected(&id) {
                hub.abandon(&id).await;
            }
        });
        if let Some(old) = self.abandon_timers.insert(visit_id.to_string(), task.abort_handle()) {
            old.abort();
        }
    }

    /// The patient left (gone past the grace period, or no answer to "still there?").
    pub async fn abandon(&self, visit_id: &str) {
        let Ok(visit) = self.visit(visit_id).await else { return };
        if !visit.status.can_become(VisitStatus::Abandoned) {
            return;
        }
        let actor = Actor { subject: HUB_ACTOR.to_string(), role: "system" };
        if let Err(e) = self.apply(&visit, VisitStatus::Abandoned, &actor).await {
            tracing::warn!(error = %e, "abandoning a visit failed");
        }
    }
}
