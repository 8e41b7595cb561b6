//! Turning a token into a [`Principal`]: signature and expiry, then for caregivers an active
//! caregiver record of the matching kind, whose states bound what the token may claim.

use crate::auth::{Claims, Principal};
use crate::error::{ErrorCode, HubError, HubResult};
use crate::model::Role;

use super::Hub;

impl Hub {
    pub async fn authenticate(&self, token: &str) -> HubResult<Principal> {
        let claims = self.keys.verify(token)?;
        self.principal_for(claims).await
    }

    async fn principal_for(&self, claims: Claims) -> HubResult<Principal> {
        let Claims {
            sub,
            role,
            states,
            visit,
            exp,
            ..
        } = claims;
        let states = match role {
            Role::Patient => {
                if visit.is_none() {
                    return Err(HubError::new(
                        ErrorCode::TokenInvalid,
                        "a patient token must name its visit",
                    ));
                }
                Vec::new()
            }
            Role::Admin => Vec::new(),
            Role::Provider | Role::Support => {
                let record = self
                    .store
                    .get_caregiver(&sub)
                    .await
                    .map_err(HubError::internal)?
                    .ok_or_else(|| HubError::code(ErrorCode::CaregiverUnknown))?;
                if !record.active {
                    return Err(HubError::code(ErrorCode::CaregiverInactive));
                }
                if Some(record.kind) != role.caregiver_kind() {
                    return Err(HubError::new(
                        ErrorCode::Forbidden,
                        format!("the caregiver is onboarded as {}", record.kind.as_str()),
                    ));
                }
                // A token may narrow the record's states, never widen them.
                record
                    .states
                    .into_iter()
                    .filter(|s| states.is_empty() || states.contains(s))
                    .collect()
            }
        };
        Ok(Principal {
            subject: sub,
            role,
            states,
            visit: if role == Role::Patient { visit } else { None },
            expires_at: exp,
        })
    }

    /// A caregiver's socket opened: counts toward staffing until it closes.
    pub async fn caregiver_online(&self, who: &Principal) {
        if let Some(kind) = who.role.caregiver_kind() {
            let states = self.presence.connect(&who.subject, kind, &who.states);
            self.staffing_changed(states).await;
        }
    }

    pub async fn caregiver_offline(&self, who: &Principal) {
        if who.is_caregiver() {
            let states = self.presence.disconnect(&who.subject);
            self.staffing_changed(states).await;
        }
    }

    pub async fn set_presence(
        &self,
        who: &Principal,
        status: crate::protocol::PresenceStatus,
    ) -> HubResult<()> {
        who.require_role(&[Role::Provider, Role::Support])?;
        let states = self.presence.set_status(&who.subject, status);
        self.staffing_changed(states).await;
        Ok(())
    }

    /// Signs claims with the hub's key (patient tokens, refreshed sessions in tests).
    pub fn mint(&self, claims: &Claims) -> String {
        self.keys.sign(claims)
    }
}
