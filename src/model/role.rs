//! Who a token speaks for.

use serde::{Deserialize, Serialize};

use super::CaregiverKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Scoped to the one visit named in the token.
    Patient,
    /// Scoped to the states the provider is licensed in.
    Provider,
    /// Scoped to the states the support person covers.
    Support,
    /// Everything, including onboarding and settings.
    Admin,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Patient, Role::Provider, Role::Support, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Patient => "patient",
            Role::Provider => "provider",
            Role::Support => "support",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// The caregiver kind a role must be onboarded as, if any.
    pub fn caregiver_kind(self) -> Option<CaregiverKind> {
        match self {
            Role::Provider => Some(CaregiverKind::Provider),
            Role::Support => Some(CaregiverKind::Support),
            Role::Patient | Role::Admin => None,
        }
    }
}
