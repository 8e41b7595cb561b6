//! Turning a token into a [`Principal`]: signature and expiry, then for caregivers an active
//! caregiver record of the matching kind, whose states bound what the token may claim.

use super::presence::Arrival;
use crate::auth::{Claims, Principal};
use crate::error::{ErrorCode, HubError, HubResult};
use crate::model::{CaregiverKind, Role};
use crate::protocol::PresenceStatus;

use super::Hub;

impl Hub {
    pub async fn authenticate(&self, token: &str) -> HubResult<Principal> {
        let claims = self.keys.verify(token)?;
        self.principal_for(claims).await
    }

    async fn principal_for(&self, claims: Claims) -> HubResult<Principal> {
        let Claims { sub, role, states, visit, exp, .. } = claims;
        let (states, name) = match role {
            Role::Patient => {
                let visit_id = visit
                    .as_deref()
                    .ok_or_else(|| HubError::new(ErrorCode::TokenInvalid, "a patient token must name its visit"))?;
                // From the cache when the visit is not over: a patient opens a socket right
                // after intake, which put the visit there.
                let record = self.visit(visit_id).await?;
                (Vec::new(), record.display_name.clone())
            }
            Role::Admin => (Vec::new(), sub.clone()),
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
                let covered = record.states.into_iter().filter(|s| states.is_empty() || states.contains(s)).collect();
                (covered, record.name)
            }
        };
        Ok(Principal {
            subject: sub,
            name,
            role,
            states,
            visit: if role == Role::Patient { visit } else { None },
            expires_at: exp,
        })
    }

    /// A caregiver's socket opened: counts toward staffing until it closes.
    pub async fn caregiver_online(&self, who: &Principal) -> HubResult<()> {
        let Some(kind) = who.role.caregiver_kind() else { return Ok(()) };
        let live = match kind {
            CaregiverKind::Provider => self.provider_live_count(&who.subject).await?,
            CaregiverKind::Support => 0,
        };
        let arrival = Arrival { subject: &who.subject, name: &who.name, kind, states: &who.states, live };
        if let Some(p) = self.presence.connect(arrival) {
            self.presence_changed(p).await;
        }
        Ok(())
    }

    pub async fn caregiver_offline(&self, who: &Principal) {
        if who.is_caregiver()
            && let Some(p) = self.presence.disconnect(&who.subject)
        {
            self.presence_changed(p).await;
        }
    }

    pub async fn set_presence(&self, who: &Principal, status: PresenceStatus) -> HubResult<()> {
        who.require_role(&[Role::Provider, Role::Support])?;
        if let Some(p) = self.presence.set_status(&who.subject, status) {
            self.presence_changed(p).await;
        }
        Ok(())
    }

    /// Signs claims with the hub's key (patient tokens, refreshed sessions in tests).
    pub fn mint(&self, claims: &Claims) -> String {
        self.keys.sign(claims)
    }
}
