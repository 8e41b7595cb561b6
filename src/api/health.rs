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

/// `GET /readyz`: the store answers, the bus is connected, live state answers, and the node
/// is not draining. A node whose Redis is away says `degraded`: it still serves its own
/// sockets, but a load balancer should send new clients elsewhere.
pub async fn ready(State(app): State<AppState>) -> (StatusCode, Json<Value>) {
    let store = app.hub.store().ping().await.is_ok();
    let bus = app.hub.bus().is_connected();
    let live_state = app.hub.live_state_healthy();
    let draining = app.gateway.shutdown.is_cancelled();
    let ok = store && bus && live_state && !draining;
    let status = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let degraded = store && !draining && !(bus && live_state);
    let body = json!({ "ready": ok, "degraded": degraded, "store": store, "bus": bus, "live_state": live_state, "draining": draining });
    (status, Json(body))
}
