//! Probes for load balancers and Kubernetes.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::AppState;

/// `GET /healthz`: the process answers.
pub async fn alive() -> Json<Value> {
    Json(json!({ "status": "alive" }))
}

/// `GET /readyz`: the store answers, the bus is connected, and the node is not draining.
pub async fn ready(State(app): State<AppState>) -> (StatusCode, Json<Value>) {
    let store = app.hub.store().ping().await.is_ok();
    let bus = app.hub.bus().is_connected();
    let draining = app.gateway.shutdown.is_cancelled();
    let ok = store && bus && !draining;
    let status = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(json!({ "ready": ok, "store": store, "bus": bus, "draining": draining })))
}
