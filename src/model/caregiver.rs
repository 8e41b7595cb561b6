//! Caregivers (providers and support staff) as onboarded by an admin.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::UsState;

/// What a caregiver does: a provider is licensed in states and sees patients there; support
/// staff cover states and chat with waiting patients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CaregiverKind {
    Provider,
    Support,
}

impl CaregiverKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CaregiverKind::Provider => "provider",
            CaregiverKind::Support => "support",
        }
    }

    /// The token role of this kind of caregiver.
    pub fn role(self) -> super::Role {
        match self {
            CaregiverKind::Provider => super::Role::Provider,
            CaregiverKind::Support => super::Role::Support,
        }
    }

    pub fn parse(s: &str) -> Option<CaregiverKind> {
        match s {
            "provider" => Some(CaregiverKind::Provider),
            "support" => Some(CaregiverKind::Support),
            _ => None,
        }
    }
}

/// A caregiver record. `subject` is the `sub` claim of the caregiver's tokens, as issued by the
/// health system's identity provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caregiver {
    pub subject: String,
    pub name: String,
    #[serde(rename = "role")]
    pub kind: CaregiverKind,
    /// States a provider is licensed in, or a support person covers.
    pub states: Vec<UsState>,
    pub active: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Caregiver {
    pub fn covers(&self, state: UsState) -> bool {
        self.active && self.states.contains(&state)
    }
}
