//! `/v1/states`: settings, the busy flag and a queue snapshot per state.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use serde::Deserialize;

use super::extract::{Body, Caller};
use super::problem::{Problem, audited};
use crate::hub::{Hub, PortalSnapshot, Scope, SettingsPatch};
use crate::model::{Role, StateSettings, UsState};
use crate::protocol::QueueSnapshot;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusyBody {
    busy: bool,
}

pub async fn list(State(hub): State<Arc<Hub>>, Caller(who): Caller) -> Result<Json<Vec<StateSettings>>, Problem> {
    who.require_role(&[Role::Provider, Role::Support, Role::Admin])?;
    Ok(Json(hub.all_state_settings()))
}

pub async fn get(
    State(hub): State<Arc<Hub>>,
    Caller(who): Caller,
    Path(state): Path<String>,
) -> Result<Json<StateSettings>, Problem> {
    who.require_role(&[Role::Provider, Role::Support, Role::Admin])?;
    Ok(Json(hub.state_settings(UsState::parse(&state)?)))
}

pub async fn update(
    State(hub): State<Arc<Hub>>,
    Caller(who): Caller,
    Path(state): Path<String>,
    Body(patch): Body<SettingsPatch>,
) -> Result<Json<StateSettings>, Problem> {
    let result = hub.update_state_settings(&who, UsState::parse(&state)?, patch).await;
    Ok(Json(audited(&hub, &who, "settings.update", Scope::target(state), result).await?))
}

pub async fn set_busy(
    State(hub): State<Arc<Hub>>,
    Caller(who): Caller,
    Path(state): Path<String>,
    Body(body): Body<BusyBody>,
) -> Result<Json<StateSettings>, Problem> {
    let result = hub.set_busy(&who, UsState::parse(&state)?, body.busy).await;
    Ok(Json(audited(&hub, &who, "state.set_busy", Scope::target(state), result).await?))
}

/// `GET /v1/portal`: everything a caregiver's console needs, in one call.
pub async fn portal(State(hub): State<Arc<Hub>>, Caller(who): Caller) -> Result<Json<PortalSnapshot>, Problem> {
    let views: Vec<_> = hub.covered_states(&who).iter().map(|s| hub.view_now(*s)).collect();
    let result = hub.portal(&who, &views).await;
    Ok(Json(audited(&hub, &who, "portal.view", Scope::default(), result).await?))
}

/// The queue of a state as its caregivers see it.
pub async fn queue(
    State(hub): State<Arc<Hub>>,
    Caller(who): Caller,
    Path(state): Path<String>,
) -> Result<Json<QueueSnapshot>, Problem> {
    let state = UsState::parse(&state)?;
    let result = who.require_covers(state).map(|()| hub.view_now(state).snapshot());
    Ok(Json(audited(&hub, &who, "queue.view", Scope::target(state.code()), result).await?))
}
