//! Per-state settings: hours, cap, busy flag.

use serde::Deserialize;

use super::Hub;
use crate::auth::Principal;
use crate::bus::{BusEvent, Topic};
use crate::error::{ErrorCode, HubError, HubResult};
use crate::model::{Role, StateSettings, UsState, WeeklyHours};

pub const MAX_QUEUE_CAP: u32 = 100_000;

/// Settings an admin writes; absent fields keep their value.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsPatch {
    #[serde(default)]
    pub time_zone: Option<String>,
    #[serde(default)]
    pub hours: Option<WeeklyHours>,
    #[serde(default)]
    pub queue_cap: Option<u32>,
    #[serde(default)]
    pub busy: Option<bool>,
    #[serde(default)]
    pub busy_intake_per_hour: Option<u32>,
}

impl Hub {
    /// The state's settings, or the defaults when nobody set them.
    pub fn state_settings(&self, state: UsState) -> StateSettings {
        self.settings.get(&state).map(|s| s.clone()).unwrap_or_else(|| {
            StateSettings::default_for(state, self.options.default_queue_cap, self.options.default_busy_intake_per_hour)
        })
    }

    pub fn all_state_settings(&self) -> Vec<StateSettings> {
        UsState::all().map(|s| self.state_settings(s)).collect()
    }

    pub async fn update_state_settings(
        &self,
        who: &Principal,
        state: UsState,
        patch: SettingsPatch,
    ) -> HubResult<StateSettings> {
        who.require_role(&[Role::Admin])?;
        let mut s = self.state_settings(state);
        if let Some(tz) = patch.time_zone {
            tz.parse::<chrono_tz::Tz>().map_err(|_| {
                HubError::new(ErrorCode::ValidationFailed, "`time_zone` must be an IANA time zone name")
            })?;
            s.time_zone = tz;
        }
        if let Some(hours) = patch.hours {
            if !hours.is_valid() {
                return Err(HubError::new(ErrorCode::ValidationFailed, "each day's `open` must be before its `close`"));
            }
            s.hours = hours;
        }
        if let Some(cap) = patch.queue_cap {
            if !(1..=MAX_QUEUE_CAP).contains(&cap) {
                return Err(HubError::new(
                    ErrorCode::ValidationFailed,
                    format!("`queue_cap` must be 1 to {MAX_QUEUE_CAP}"),
                ));
            }
            s.queue_cap = cap;
        }
        if let Some(rate) = patch.busy_intake_per_hour {
            if !(1..=MAX_QUEUE_CAP).contains(&rate) {
                return Err(HubError::new(
                    ErrorCode::ValidationFailed,
                    format!("`busy_intake_per_hour` must be 1 to {MAX_QUEUE_CAP}"),
                ));
            }
            s.busy_intake_per_hour = rate;
        }
        let busy = patch.busy.unwrap_or(s.busy);
        self.save_settings(s, busy).await
    }

    /// Staff covering the state (or an admin) mark it busy or not.
    pub async fn set_busy(&self, who: &Principal, state: UsState, busy: bool) -> HubResult<StateSettings> {
        who.require_role(&[Role::Provider, Role::Support, Role::Admin])?;
        who.require_covers(state)?;
        let s = self.state_settings(state);
        self.save_settings(s, busy).await
    }

    async fn save_settings(&self, mut s: StateSettings, busy: bool) -> HubResult<StateSettings> {
        // Under the intake lock, so an intake never sees half-applied settings.
        let _cluster_gate = self.intake_lock(s.state).await?;
        if busy && !s.busy {
            // The reduced rate counts from the moment the state turned busy.
            self.live_state.busy_clear(s.state).await.map_err(HubError::unavailable)?;
        }
        s.busy = busy;
        self.store.put_state_settings(&s).await.map_err(HubError::internal)?;
        self.settings.insert(s.state, s.clone());
        self.publish(Topic::Cluster, BusEvent::SettingsChanged { state: s.state }).await;
        let change = self.live_state.queue_bump(s.state).await.map_err(HubError::unavailable)?;
        self.queue_changed(s.state, change).await;
        Ok(s)
    }
}
