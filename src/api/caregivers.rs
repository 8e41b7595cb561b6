//! `/v1/caregivers`: admin self-service onboarding.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;

use super::extract::{Body, Caller};
use super::problem::{Problem, audited};
use crate::hub::{CaregiverPatch, Hub, NewCaregiver, Scope};
use crate::model::Caregiver;

pub async fn create(
    State(hub): State<Arc<Hub>>,
    Caller(who): Caller,
    Body(new): Body<NewCaregiver>,
) -> Result<(StatusCode, Json<Caregiver>), Problem> {
    let target = new.subject.clone().unwrap_or_default();
    let result = hub.create_caregiver(&who, new).await;
    Ok((StatusCode::CREATED, Json(audited(&hub, &who, "caregiver.create", Scope::target(target), result).await?)))
}

pub async fn list(State(hub): State<Arc<Hub>>, Caller(who): Caller) -> Result<Json<Vec<Caregiver>>, Problem> {
    Ok(Json(hub.list_caregivers(&who).await?))
}

pub async fn get(
    State(hub): State<Arc<Hub>>,
    Caller(who): Caller,
    Path(subject): Path<String>,
) -> Result<Json<Caregiver>, Problem> {
    Ok(Json(hub.get_caregiver(&who, &subject).await?))
}

pub async fn update(
    State(hub): State<Arc<Hub>>,
    Caller(who): Caller,
    Path(subject): Path<String>,
    Body(patch): Body<CaregiverPatch>,
) -> Result<Json<Caregiver>, Problem> {
    let result = hub.update_caregiver(&who, &subject, patch).await;
    Ok(Json(audited(&hub, &who, "caregiver.update", Scope::target(subject), result).await?))
}

/// Deactivation closes the caregiver's open sockets.
pub async fn deactivate(
    State(hub): State<Arc<Hub>>,
    Caller(who): Caller,
    Path(subject): Path<String>,
) -> Result<Json<Caregiver>, Problem> {
    let patch = CaregiverPatch { active: Some(false), ..CaregiverPatch::default() };
    let result = hub.update_caregiver(&who, &subject, patch).await;
    Ok(Json(audited(&hub, &who, "caregiver.update", Scope::target(subject), result).await?))
}
