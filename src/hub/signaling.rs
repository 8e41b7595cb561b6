//! Relaying WebRTC signaling between the two participants of a visit in progress. Only the
//! visit's patient and its provider may signal, only while the visit is `in_visit`, and only
//! SDP and candidates that parse are passed on, in the order they were sent.

use super::{Hub, sdp_check};
use crate::auth::Principal;
use crate::bus::{BusEvent, Signal, Topic};
use crate::error::{ErrorCode, HubError, HubResult};
use crate::model::{Role, VisitStatus};
use crate::protocol::{IceServer, VisitStarted};

impl Signal {
    pub fn visit_id(&self) -> &str {
        match self {
            Signal::Offer(s) | Signal::Answer(s) => &s.visit_id,
            Signal::Candidate(c) => &c.visit_id,
            Signal::EndOfCandidates(e) => &e.visit_id,
        }
    }

    fn stamp(&mut self, role: Role) {
        match self {
            Signal::Offer(s) | Signal::Answer(s) => s.from = Some(role),
            Signal::Candidate(c) => c.from = Some(role),
            Signal::EndOfCandidates(e) => e.from = Some(role),
        }
    }
}

impl Hub {
    /// Whether `who` is the patient or the provider of the visit.
    async fn require_participant(
        &self,
        who: &Principal,
        visit_id: &str,
    ) -> HubResult<std::sync::Arc<crate::model::Visit>> {
        if who.role == Role::Patient && !who.is_patient_of(visit_id) {
            return Err(HubError::code(ErrorCode::NotYourVisit));
        }
        let visit = self.visit(visit_id).await?;
        let is_provider = who.role == Role::Provider && visit.provider.as_deref() == Some(who.subject.as_str());
        if !(who.is_patient_of(visit_id) || is_provider) {
            return Err(HubError::code(ErrorCode::NotAParticipant));
        }
        Ok(visit)
    }

    pub async fn relay_signal(&self, who: &Principal, mut signal: Signal) -> HubResult<()> {
        let received_at_us = crate::clock::unix_micros();
        let visit = self.require_participant(who, signal.visit_id()).await?;
        if visit.status != VisitStatus::InVisit {
            return Err(HubError::new(ErrorCode::VisitNotActive, "signaling is open while the visit is in_visit"));
        }
        match &signal {
            Signal::Offer(s) | Signal::Answer(s) => sdp_check::check_sdp(&s.sdp, self.options.max_sdp_bytes)?,
            Signal::Candidate(c) => sdp_check::check_candidate(&c.candidate)?,
            Signal::EndOfCandidates(_) => {}
        }
        signal.stamp(who.role);
        let event = BusEvent::Signal { from_subject: who.subject.clone(), signal, received_at_us };
        self.bus
            .publish(&Topic::Signal(visit.id.clone()), event)
            .await
            .map_err(|e| HubError::new(ErrorCode::Unavailable, format!("relay failed: {e}")))
    }

    /// What one side of a started visit needs: its negotiation role, its peer, and ICE
    /// servers with fresh TURN credentials.
    pub fn visit_started_for(
        &self,
        me: &str,
        visit_id: &str,
        patient: &crate::protocol::Participant,
        provider: &crate::protocol::Participant,
    ) -> VisitStarted {
        let (servers, expires): (Vec<IceServer>, i64) = self.options.turn.ice_servers(self.clock.now());
        let i_am_patient = patient.subject == me;
        VisitStarted {
            visit_id: visit_id.to_string(),
            // The patient yields on glare: the same rule on every client.
            polite: i_am_patient,
            peer: if i_am_patient { provider.clone() } else { patient.clone() },
            ice_servers: servers,
            ice_servers_expire_at: expires,
        }
    }

    /// Repeats `visit.started` for a participant who reconnected mid-visit.
    pub async fn visit_started_again(&self, who: &Principal, visit_id: &str) -> HubResult<Option<VisitStarted>> {
        let visit = self.require_participant(who, visit_id).await?;
        if visit.status != VisitStatus::InVisit {
            return Ok(None);
        }
        Ok(self
            .parties(&visit)
            .await
            .map(|(patient, provider)| self.visit_started_for(&who.subject, visit_id, &patient, &provider)))
    }
}
