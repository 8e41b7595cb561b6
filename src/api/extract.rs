//! Request extractors that refuse with problem details instead of axum's plain-text errors.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRef, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use serde::de::DeserializeOwned;
use std::sync::Arc;

use super::problem::Problem;
use crate::auth::Principal;
use crate::error::{ErrorCode, HubError};
use crate::hub::Hub;

/// A JSON body; a syntax error is `malformed_json`, a wrong shape `validation_failed`, an
/// oversized body `message_too_large`.
pub struct Body<T>(pub T);

impl<S, T> FromRequest<S> for Body<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Problem> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Body(v)),
            Err(rejection) => Err(Problem(match rejection {
                JsonRejection::JsonSyntaxError(e) => HubError::new(ErrorCode::MalformedJson, e.body_text()),
                JsonRejection::JsonDataError(e) => HubError::new(ErrorCode::ValidationFailed, e.body_text()),
                JsonRejection::MissingJsonContentType(_) => {
                    HubError::new(ErrorCode::ValidationFailed, "send `Content-Type: application/json`")
                }
                JsonRejection::BytesRejection(e) if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE => {
                    HubError::code(ErrorCode::MessageTooLarge)
                }
                other => HubError::new(ErrorCode::ValidationFailed, other.body_text()),
            })),
        }
    }
}

/// The token of an `Authorization: Bearer` header.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The authenticated caller, from `Authorization: Bearer`.
pub struct Caller(pub Principal);

impl<S> FromRequestParts<S> for Caller
where
    Arc<Hub>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        let hub = Arc::<Hub>::from_ref(state);
        let token = bearer(&parts.headers).ok_or(ErrorCode::TokenMissing)?;
        Ok(Caller(hub.authenticate(token).await?))
    }
}
