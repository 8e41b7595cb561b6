//! The HTTP edge: REST side-API, health probes, and the WebSocket route.

pub mod address_limit;
mod caregivers;
pub mod demo;
pub mod extract;
mod health;
pub mod problem;
mod states;
mod visits;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRef, MatchedPath, Request};
use axum::routing::{get, post, put};
use tower_http::trace::TraceLayer;

use crate::config::Config;
use crate::error::ErrorCode;
use crate::gateway::{self, Gateway};
use crate::hub::Hub;
use problem::Problem;

/// Shared by every handler.
#[derive(Clone)]
pub struct AppState {
    pub hub: Arc<Hub>,
    pub config: Arc<Config>,
    pub gateway: Arc<Gateway>,
    pub intake_limit: Arc<address_limit::AddressLimit>,
}

impl FromRef<AppState> for Arc<address_limit::AddressLimit> {
    fn from_ref(s: &AppState) -> Self {
        s.intake_limit.clone()
    }
}

impl FromRef<AppState> for Arc<Hub> {
    fn from_ref(s: &AppState) -> Self {
        s.hub.clone()
    }
}

impl FromRef<AppState> for Arc<Gateway> {
    fn from_ref(s: &AppState) -> Self {
        s.gateway.clone()
    }
}

pub fn router(state: AppState) -> Router {
    let body_limit = state.config.max_body_bytes;
    let demo = if state.config.demo { demo::routes() } else { Router::new() };
    Router::new()
        .route("/v1/ws", get(gateway::upgrade))
        .route("/v1/visits", post(visits::intake))
        .route("/v1/visits/{id}", get(visits::get))
        .route("/v1/visits/{id}/cancel", post(visits::cancel))
        .route("/v1/visits/{id}/messages", get(visits::messages))
        .route("/v1/visits/{id}/audit", get(visits::audit))
        .route("/v1/portal", get(states::portal))
        .route("/v1/caregivers", post(caregivers::create).get(caregivers::list))
        .route("/v1/caregivers/{subject}", get(caregivers::get).patch(caregivers::update))
        .route("/v1/caregivers/{subject}/deactivate", post(caregivers::deactivate))
        .route("/v1/states", get(states::list))
        .route("/v1/states/{state}/settings", get(states::get).patch(states::update))
        .route("/v1/states/{state}/busy", put(states::set_busy))
        .route("/v1/states/{state}/queue", get(states::queue))
        .route("/healthz", get(health::alive))
        .route("/readyz", get(health::ready))
        .merge(demo)
        .fallback(|| async { Problem::from(ErrorCode::NotFound) })
        .layer(DefaultBodyLimit::max(body_limit))
        // Spans name the route template, never the path: ids stay out of the logs.
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
            let route = req.extensions().get::<MatchedPath>().map_or("unmatched", |p| p.as_str());
            tracing::info_span!("request", method = %req.method(), route)
        }))
        .with_state(state)
}
