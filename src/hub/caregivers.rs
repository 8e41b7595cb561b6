//! Admin self-service onboarding of caregivers.

use serde::Deserialize;

use super::{Hub, validate};
use crate::auth::Principal;
use crate::bus::{BusEvent, Topic};
use crate::error::{ErrorCode, HubError, HubResult};
use crate::model::{Caregiver, CaregiverKind, Role, UsState};

pub const MAX_SUBJECT_LEN: usize = 128;
pub const MAX_CAREGIVER_NAME_CHARS: usize = 100;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewCaregiver {
    /// The `sub` of the caregiver's tokens; generated when absent.
    #[serde(default)]
    pub subject: Option<String>,
    pub name: String,
    pub role: CaregiverKind,
    pub states: Vec<UsState>,
}

/// Fields to change; absent ones stay.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaregiverPatch {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub role: Option<CaregiverKind>,
    #[serde(default)]
    pub states: Option<Vec<UsState>>,
    #[serde(default)]
    pub active: Option<bool>,
}

fn checked_states(mut states: Vec<UsState>) -> HubResult<Vec<UsState>> {
    states.sort();
    states.dedup();
    if states.is_empty() {
        return Err(HubError::new(ErrorCode::ValidationFailed, "`states` must name at least one state"));
    }
    Ok(states)
}

impl Hub {
    pub async fn create_caregiver(&self, who: &Principal, new: NewCaregiver) -> HubResult<Caregiver> {
        who.require_role(&[Role::Admin])?;
        let subject = match new.subject {
            Some(s) => validate::identifier("subject", &s, MAX_SUBJECT_LEN)?,
            None => format!("cg-{}", uuid::Uuid::new_v4().simple()),
        };
        let now = self.clock.now();
        let caregiver = Caregiver {
            subject,
            name: validate::text("name", &new.name, MAX_CAREGIVER_NAME_CHARS)?,
            kind: new.role,
            states: checked_states(new.states)?,
            active: true,
            created_at: now,
            updated_at: now,
        };
        if !self.store.insert_caregiver(&caregiver).await.map_err(HubError::internal)? {
            return Err(HubError::code(ErrorCode::CaregiverExists));
        }
        Ok(caregiver)
    }

    pub async fn list_caregivers(&self, who: &Principal) -> HubResult<Vec<Caregiver>> {
        who.require_role(&[Role::Admin])?;
        self.store.list_caregivers().await.map_err(HubError::internal)
    }

    pub async fn get_caregiver(&self, who: &Principal, subject: &str) -> HubResult<Caregiver> {
        if who.subject != subject {
            who.require_role(&[Role::Admin])?;
        }
        self.store
            .get_caregiver(subject)
            .await
            .map_err(HubError::internal)?
            .ok_or_else(|| HubError::code(ErrorCode::CaregiverNotFound))
    }

    /// Changes a caregiver. Their open sockets are closed (`access_revoked`) so they
    /// reconnect under the new scope, or stay out when deactivated.
    pub async fn update_caregiver(
        &self,
        who: &Principal,
        subject: &str,
        patch: CaregiverPatch,
    ) -> HubResult<Caregiver> {
        who.require_role(&[Role::Admin])?;
        let mut caregiver = self.get_caregiver(who, subject).await?;
        if let Some(name) = patch.name {
            caregiver.name = validate::text("name", &name, MAX_CAREGIVER_NAME_CHARS)?;
        }
        if let Some(kind) = patch.role {
            caregiver.kind = kind;
        }
        if let Some(states) = patch.states {
            caregiver.states = checked_states(states)?;
        }
        if let Some(active) = patch.active {
            caregiver.active = active;
        }
        caregiver.updated_at = self.clock.now();
        if !self.store.update_caregiver(&caregiver).await.map_err(HubError::internal)? {
            return Err(HubError::code(ErrorCode::CaregiverNotFound));
        }
        let subject = caregiver.subject.clone();
        self.publish(Topic::Subject(subject.as_str().into()), BusEvent::AccessChanged { subject }).await;
        Ok(caregiver)
    }
}
