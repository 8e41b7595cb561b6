//! Tokens, roles and what each role may touch. The rules here are checked on every request and
//! every socket message, not only when a connection opens.

pub mod dev_key;
mod secret;
mod tokens;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use secret::Secret;
pub use tokens::{AUDIENCE, TokenKeys};

use crate::error::{ErrorCode, HubError, HubResult};
use crate::model::{Role, UsState, Visit, VisitId};

/// The claims of a visithub access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub role: Role,
    /// For caregivers: narrows the states of their caregiver record (empty: all of them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub states: Vec<UsState>,
    /// For patients: the one visit the token opens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visit: Option<VisitId>,
    pub aud: String,
    pub iat: i64,
    pub exp: i64,
}

impl Claims {
    pub fn new(sub: impl Into<String>, role: Role, now: DateTime<Utc>, ttl_secs: u64) -> Claims {
        Claims {
            sub: sub.into(),
            role,
            states: Vec::new(),
            visit: None,
            aud: AUDIENCE.to_string(),
            iat: now.timestamp(),
            exp: now.timestamp() + ttl_secs as i64,
        }
    }
}

/// Who is asking, after the token was verified and (for caregivers) matched to an active
/// caregiver record. `states` is what the caregiver may see now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub subject: String,
    /// What others in a conversation see: the caregiver's name, the patient's display name.
    pub name: String,
    pub role: Role,
    pub states: Vec<UsState>,
    pub visit: Option<VisitId>,
    pub expires_at: i64,
}

impl Principal {
    /// How this principal appears to others in a conversation.
    pub fn participant(&self) -> crate::protocol::Participant {
        crate::protocol::Participant { subject: self.subject.clone(), name: self.name.clone(), role: self.role }
    }

    /// Whether this is the patient of `visit_id`.
    pub fn is_patient_of(&self, visit_id: &str) -> bool {
        self.role == Role::Patient && self.visit.as_deref() == Some(visit_id)
    }

    pub fn is_caregiver(&self) -> bool {
        matches!(self.role, Role::Provider | Role::Support)
    }

    pub fn require_role(&self, allowed: &[Role]) -> HubResult<()> {
        if allowed.contains(&self.role) {
            Ok(())
        } else {
            Err(HubError::new(ErrorCode::Forbidden, format!("the {} role may not do that", self.role.as_str())))
        }
    }

    /// Caregivers covering `state`, and admins.
    pub fn require_covers(&self, state: UsState) -> HubResult<()> {
        match self.role {
            Role::Admin => Ok(()),
            Role::Provider | Role::Support if self.states.contains(&state) => Ok(()),
            Role::Provider | Role::Support => {
                Err(HubError::new(ErrorCode::StateNotCovered, format!("not licensed in or covering {state}")))
            }
            Role::Patient => Err(HubError::new(ErrorCode::Forbidden, "patients may not do that")),
        }
    }

    /// The patient of the visit, a caregiver covering its state, or an admin.
    pub fn require_visit(&self, visit: &Visit) -> HubResult<()> {
        match self.role {
            Role::Patient if self.visit.as_deref() == Some(visit.id.as_str()) => Ok(()),
            Role::Patient => Err(HubError::code(ErrorCode::NotYourVisit)),
            _ => self.require_covers(visit.state),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::VisitStatus;

    fn principal(role: Role, states: &[&str], visit: Option<&str>) -> Principal {
        Principal {
            subject: "s".into(),
            name: "n".into(),
            role,
            states: states.iter().map(|s| UsState::parse(s).unwrap()).collect(),
            visit: visit.map(str::to_string),
            expires_at: 0,
        }
    }

    fn visit(id: &str, state: &str) -> Visit {
        Visit {
            id: id.into(),
            state: UsState::parse(state).unwrap(),
            display_name: "n".into(),
            reason: "r".into(),
            status: VisitStatus::Waiting,
            created_at: Utc::now(),
            estimated_wait_secs: None,
            waited_secs: None,
            provider: None,
            reported_state: None,
        }
    }

    #[test]
    fn caregivers_see_only_their_states() {
        let or_provider = principal(Role::Provider, &["OR"], None);
        assert!(or_provider.require_visit(&visit("v1", "OR")).is_ok());
        assert_eq!(or_provider.require_visit(&visit("v1", "WA")).unwrap_err().code, ErrorCode::StateNotCovered);
        assert!(principal(Role::Admin, &[], None).require_visit(&visit("v1", "WA")).is_ok());
    }

    #[test]
    fn patients_see_only_their_visit() {
        let p = principal(Role::Patient, &[], Some("v1"));
        assert!(p.require_visit(&visit("v1", "WA")).is_ok());
        assert_eq!(p.require_visit(&visit("v2", "WA")).unwrap_err().code, ErrorCode::NotYourVisit);
        assert_eq!(p.require_covers(UsState::parse("WA").unwrap()).unwrap_err().code, ErrorCode::Forbidden);
    }

    #[test]
    fn tokens_round_trip_and_fail_as_documented() {
        let keys = TokenKeys::new(&[7u8; 32]).unwrap();
        let now = Utc::now();
        let mut claims = Claims::new("dr-1", Role::Provider, now, 60);
        claims.states = vec![UsState::parse("WA").unwrap()];
        let token = keys.sign(&claims);
        assert_eq!(keys.verify(&token).unwrap(), claims);

        let expired = keys.sign(&Claims::new("dr-1", Role::Provider, now - chrono::Duration::hours(2), 60));
        assert_eq!(keys.verify(&expired).unwrap_err().code, ErrorCode::TokenExpired);

        let forged = TokenKeys::new(&[8u8; 32]).unwrap().sign(&claims);
        assert_eq!(keys.verify(&forged).unwrap_err().code, ErrorCode::TokenInvalid);
        assert_eq!(keys.verify("not.a.token").unwrap_err().code, ErrorCode::TokenInvalid);

        let mut wrong_aud = claims.clone();
        wrong_aud.aud = "other".into();
        assert_eq!(keys.verify(&keys.sign(&wrong_aud)).unwrap_err().code, ErrorCode::TokenInvalid);
    }
}
