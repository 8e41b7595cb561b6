//! `/v1/caregivers`: admin self-service onboarding.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;

use super::extract::{Body, Caller};
use super::problem::Problem;
use crate::hub::{CaregiverPatch, Hub, NewCaregiver};
use crate::model::Caregiver;

pub async fn create(
    State(hub): State<Arc<Hub>>,
    Caller(who): Caller,
    Body(new): Body<NewCaregiver>,
) -> Result<(StatusCode, Json<Caregiver>), Problem> {
    Ok((
        StatusCode::CREATED,
        Json(hub.create_caregiver(&who, new).await?),
    ))
}

pub async fn list(
    State(hub): State<Arc<Hub>>,
    Caller(who): Caller,
) -> Result<Json<Vec<Caregiver>>, Problem> {
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
    Ok(Json(hub.update_caregiver(&who, &subject, patch).await?))
}

/// Deactivation closes the caregiver's open sockets.
pub async fn deactivate(
    State(hub): State<Arc<Hub>>,
    Caller(who): Caller,
    Path(subject): Path<String>,
) -> Result<Json<Caregiver>, Problem> {
    let patch = CaregiverPatch {
        active: Some(false),
        ..CaregiverPatch::default()
    };
    Ok(Json(hub.update_caregiver(&who, &subject, patch).await?))
}
