//! `/v1/visits`: intake, reading and cancelling a visit.

use std::sync::Arc;

use axum::Extension;
use axum::Json;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::address_limit::{AddressLimit, PeerAddr};
use super::extract::{Body, Caller};
use super::problem::{Problem, audited};
use crate::error::{ErrorCode, HubError};
use crate::hub::{HistoryPage, Hub, IntakeRequest, Scope, VisitView};
use crate::model::AuditRecord;
use crate::model::UsState;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntakeBody {
    display_name: String,
    /// Two-letter code of the state or territory the patient is in now.
    state: String,
    reason: String,
}

/// `POST /v1/visits`. Open to anyone: the patient has no token until intake gives one.
pub async fn intake(
    State(hub): State<Arc<Hub>>,
    State(limit): State<Arc<AddressLimit>>,
    peer: Option<Extension<ConnectInfo<PeerAddr>>>,
    headers: HeaderMap,
    Body(body): Body<IntakeBody>,
) -> Result<Response, Problem> {
    let state = UsState::parse(&body.state)?;
    if let Err(refusal) = limit.check(peer.map(|Extension(ConnectInfo(PeerAddr(a)))| a), &headers).await {
        hub.metrics().intake_refusals.with_label_values(&[state.code(), refusal.code.as_str()]).inc();
        return Err(refusal.into());
    }
    let key = match headers.get("idempotency-key") {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| HubError::new(ErrorCode::ValidationFailed, "Idempotency-Key must be ASCII"))?
                .to_string(),
        ),
        None => None,
    };
    let req = IntakeRequest { display_name: body.display_name, state, reason: body.reason };
    // Its own task: a client that hangs up mid-intake does not stop it between storing the
    // visit and queueing it.
    let intake = tokio::spawn(async move { hub.intake(req, key.as_deref()).await });
    let receipt = intake.await.map_err(|_| HubError::code(ErrorCode::Internal))??;
    let status = if receipt.replayed { StatusCode::OK } else { StatusCode::CREATED };
    Ok((status, Json(receipt)).into_response())
}

/// `GET /v1/visits/{id}`: the patient of the visit, or a caregiver covering its state.
pub async fn get(
    State(hub): State<Arc<Hub>>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<Json<VisitView>, Problem> {
    let result = hub.visit_view(&who, &id).await;
    Ok(Json(audited(&hub, &who, "visit.view", Scope::visit(&id), result).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    before_seq: Option<u64>,
    limit: Option<u32>,
}

/// `GET /v1/visits/{id}/messages?before_seq=&limit=`: a page of the visit's conversation.
pub async fn messages(
    State(hub): State<Arc<Hub>>,
    Caller(who): Caller,
    Path(id): Path<String>,
    Query(q): Query<PageQuery>,
) -> Result<Json<HistoryPage>, Problem> {
    let result = hub.chat_history(&who, &id, q.before_seq, q.limit).await;
    Ok(Json(audited(&hub, &who, "chat.history", Scope::visit(&id), result).await?))
}

/// `POST /v1/visits/{id}/cancel`.
pub async fn cancel(
    State(hub): State<Arc<Hub>>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<Json<VisitView>, Problem> {
    let result = hub.cancel_visit(&who, &id).await;
    Ok(Json(audited(&hub, &who, "visit.cancel", Scope::visit(&id), result).await?))
}

/// `GET /v1/visits/{id}/audit`: who did what to the visit (admins).
pub async fn audit(
    State(hub): State<Arc<Hub>>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<Json<Vec<AuditRecord>>, Problem> {
    let result = hub.visit_audit(&who, &id).await;
    Ok(Json(audited(&hub, &who, "audit.view", Scope::visit(&id), result).await?))
}
