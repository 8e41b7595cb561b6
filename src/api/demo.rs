//! The browser demo (`visithub serve --demo`): the patient page, the caregiver console and the
//! JavaScript client library of `examples/web/`, embedded in the binary so that a release build
//! serves them from any folder, and a password-less sign-in for onboarded caregivers.
//!
//! None of these routes exist unless `demo` is on. The sign-in mints a caregiver token for
//! whoever names an onboarded subject, which is only tolerable on a developer's machine: it is
//! refused unless the hub signs with its development key, so a hub configured with a real
//! signing key never hands out such tokens, even with `--demo`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::extract::Body;
use super::problem::Problem;
use crate::auth::Claims;
use crate::config::Config;
use crate::error::{ErrorCode, HubError};
use crate::hub::{Hub, MAX_SUBJECT_LEN};
use crate::model::{Role, UsState};

/// Lifetime of a demo sign-in token: a working session, after which the console signs in again.
pub const DEMO_TOKEN_TTL_SECS: u64 = 3600;

/// The pages can only talk to this hub: no inline script, no other origin.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; connect-src 'self'; img-src 'self' data:; \
     media-src 'self' blob: mediastream:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

/// One embedded file of `examples/web/`.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

macro_rules! asset {
    ($name:literal, $type:expr) => {
        Asset { name: $name, content_type: $type, body: include_str!(concat!("../../examples/web/", $name)) }
    };
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

static ASSETS: &[Asset] = &[
    asset!("index.html", HTML),
    asset!("patient.html", HTML),
    asset!("patient.js", JS),
    asset!("patient.css", CSS),
    asset!("console.html", HTML),
    asset!("console.js", JS),
    asset!("console-chats.js", JS),
    asset!("console.css", CSS),
    asset!("base.css", CSS),
    asset!("states.js", JS),
    asset!("chat-view.js", JS),
    asset!("visithub-client.js", JS),
    asset!("visit-call.js", JS),
];

/// The demo routes, merged into the hub's router only when `demo` is on.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/demo", get(|| async { Redirect::permanent("/demo/") }))
        .route("/demo/", get(|| async { file("index.html") }))
        .route("/demo/token", post(sign_in))
        .route("/demo/{file}", get(|Path(name): Path<String>| async move { file(&name) }))
}

/// Logged at start: demo mode hands out caregiver tokens without a password.
pub fn warn_if_on(config: &Config) {
    if config.demo {
        tracing::warn!(
            development_key = config.signing_key.is_none(),
            "demo mode is on: /demo/ serves the browser demo and POST /demo/token signs in any onboarded \
             caregiver without a password; never enable it in production"
        );
    }
}

fn file(name: &str) -> Response {
    let Some(asset) = ASSETS.iter().find(|a| a.name == name) else {
        return Problem::from(ErrorCode::NotFound).into_response();
    };
    let mut response = asset.body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    // The files change with the binary; a browser must not keep an old client library.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    response
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignIn {
    subject: String,
}

#[derive(Serialize)]
pub struct SignedIn {
    token: String,
    subject: String,
    name: String,
    role: Role,
    states: Vec<UsState>,
    expires_at: i64,
}

/// `POST /demo/token`: a token for the onboarded, active caregiver `subject`.
async fn sign_in(State(state): State<AppState>, Body(req): Body<SignIn>) -> Result<Json<SignedIn>, Problem> {
    // The same rule as `app::signing_key`: no configured key means the development key.
    if state.config.signing_key.is_some() {
        return Err(HubError::new(
            ErrorCode::Forbidden,
            "the demo sign-in works only with the development signing key",
        )
        .into());
    }
    if req.subject.is_empty() || req.subject.len() > MAX_SUBJECT_LEN {
        let message = format!("`subject` must be 1 to {MAX_SUBJECT_LEN} bytes");
        return Err(HubError::new(ErrorCode::ValidationFailed, message).into());
    }
    let hub: &Arc<Hub> = &state.hub;
    let caregiver = hub
        .store()
        .get_caregiver(&req.subject)
        .await
        .map_err(HubError::internal)?
        .ok_or_else(|| HubError::code(ErrorCode::CaregiverNotFound))?;
    if !caregiver.active {
        return Err(HubError::code(ErrorCode::CaregiverInactive).into());
    }
    let role = caregiver.kind.role();
    let claims = Claims::new(caregiver.subject.clone(), role, hub.clock().now(), DEMO_TOKEN_TTL_SECS);
    tracing::info!(role = role.as_str(), "demo sign-in");
    Ok(Json(SignedIn {
        token: hub.keys().sign(&claims),
        expires_at: claims.exp,
        subject: caregiver.subject,
        name: caregiver.name,
        role,
        states: caregiver.states,
    }))
}
