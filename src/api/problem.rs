//! RFC 9457 problem details: every REST refusal (and every refused WebSocket handshake) is a
//! JSON body with a stable `code`, and a `Retry-After` header where waiting helps.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::error::{ErrorCode, HubError};

#[derive(Debug)]
pub struct Problem(pub HubError);

impl From<HubError> for Problem {
    fn from(e: HubError) -> Self {
        Problem(e)
    }
}

impl From<ErrorCode> for Problem {
    fn from(code: ErrorCode) -> Self {
        Problem(HubError::code(code))
    }
}

#[derive(Serialize)]
struct Body<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'static str,
    status: u16,
    detail: &'a str,
    code: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after_secs: Option<u64>,
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let e = self.0;
        let status = StatusCode::from_u16(e.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = Body {
            kind: format!("urn:visithub:error:{}", e.code),
            title: e.code.title(),
            status: status.as_u16(),
            detail: &e.message,
            code: e.code.as_str(),
            retry_after_secs: e.retry_after_secs,
        };
        let mut response = (status, Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if let Some(secs) = e.retry_after_secs {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// Records the outcome of a caller's action in the audit trail and turns a refusal into a
/// problem response.
pub async fn audited<T>(
    hub: &crate::hub::Hub,
    who: &crate::auth::Principal,
    action: &str,
    scope: crate::hub::Scope,
    result: crate::error::HubResult<T>,
) -> Result<T, Problem> {
    hub.audit(who, action, scope, result.as_ref().map(|_| ()).map_err(|e| e.code)).await;
    result.map_err(Problem)
}
