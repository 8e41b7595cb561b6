//! How sockets end: shutdown, token expiry (and refresh), revoked access, heartbeats.

mod common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::json;
use visithub::model::Role;
use visithub::protocol::{ClientMessage, CloseCode, Ping, ServerMessage, SessionRefresh};

#[tokio::test]
async fn shutdown_tells_clients_to_reconnect_and_stops_accepting() {
    let mut hub = TestHub::start().await;
    let patient = hub.intake("Ann", "WA", None).await.str("patient_token");
    let mut a = hub.ws(&patient).await;
    let mut b = hub.ws(&hub.admin()).await;
    a.next_of("welcome").await;
    b.next_of("welcome").await;
    let addr = hub.addr;
    hub.shutdown().await;
    assert_eq!(a.ended(Duration::from_secs(5)).await, Ended::Closed(CloseCode::ServerShutdown.code()));
    assert_eq!(b.ended(Duration::from_secs(5)).await, Ended::Closed(CloseCode::ServerShutdown.code()));
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "the listener is closed");
}

#[tokio::test]
async fn an_expired_token_closes_the_socket_unless_refreshed() {
    let hub = TestHub::start().await;
    let mut short = hub.ws(&hub.token(Role::Admin, "admin-1", &[], 2)).await;
    let ServerMessage::Welcome(w) = short.next_of("welcome").await.msg else { unreachable!() };
    assert!(w.limits.token_expires_at > 0);
    assert_eq!(short.ended(Duration::from_secs(6)).await, Ended::Closed(CloseCode::TokenExpired.code()));

    let mut refreshed = hub.ws(&hub.token(Role::Admin, "admin-2", &[], 2)).await;
    refreshed.next_of("welcome").await;
    let ack = refreshed
        .request(&ClientMessage::SessionRefresh(SessionRefresh { token: hub.token(Role::Admin, "admin-2", &[], 3600) }))
        .await;
    assert!(is_ack(&ack), "{ack:?}");
    // Another subject's token cannot take over the session.
    let other = refreshed
        .request(&ClientMessage::SessionRefresh(SessionRefresh { token: hub.token(Role::Admin, "admin-3", &[], 3600) }))
        .await;
    assert_eq!(error_code(&other), "forbidden");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        is_ack(&refreshed.request(&ClientMessage::Ping(Ping {})).await),
        "still open after the first token expired"
    );
}

#[tokio::test]
async fn deactivating_a_caregiver_closes_their_sockets_and_keeps_them_out() {
    let hub = TestHub::start().await;
    hub.onboard("dr-1", "provider", &["WA"]).await;
    let token = hub.token(Role::Provider, "dr-1", &[], 3600);
    let mut ws = hub.ws(&token).await;
    ws.next_of("welcome").await;
    let r = hub.call("POST", "/v1/caregivers/dr-1/deactivate", Some(&hub.admin()), None).await;
    assert_eq!((r.status, r.body["active"].clone()), (StatusCode::OK, json!(false)));
    assert_eq!(ws.ended(Duration::from_secs(5)).await, Ended::Closed(CloseCode::AccessRevoked.code()));
    let (status, body) = hub.try_ws(&token, None).await.err().unwrap();
    assert_eq!((status, body["code"].as_str()), (403, Some("caregiver_inactive")));

    // Changing a caregiver's states also makes them reconnect, under the new scope.
    hub.onboard("sup-1", "support", &["WA"]).await;
    let token = hub.token(Role::Support, "sup-1", &[], 3600);
    let mut ws = hub.ws(&token).await;
    ws.next_of("welcome").await;
    let r =
        hub.call("PATCH", "/v1/caregivers/sup-1", Some(&hub.admin()), Some(json!({ "states": ["OR", "WA"] }))).await;
    assert_eq!(r.body["states"], json!(["OR", "WA"]), "{}", r.body);
    assert_eq!(ws.ended(Duration::from_secs(5)).await, Ended::Closed(CloseCode::AccessRevoked.code()));
    let mut ws = hub.ws(&token).await;
    let ServerMessage::Welcome(w) = ws.next_of("welcome").await.msg else { unreachable!() };
    assert_eq!(w.states.len(), 2);
}

#[tokio::test]
async fn a_silent_client_is_closed_by_the_heartbeat() {
    let hub = TestHub::start_with(
        |c| {
            c.ping_interval_secs = 1;
            c.pong_timeout_secs = 1;
        },
        None,
    )
    .await;
    let mut ws = hub.ws(&hub.admin()).await;
    ws.next_of("welcome").await;
    // Not reading means tungstenite answers no pings: after interval + timeout, 4006.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(ws.ended(Duration::from_secs(5)).await, Ended::Closed(CloseCode::HeartbeatTimeout.code()));
}

#[tokio::test]
async fn a_client_that_answers_pings_stays_connected() {
    let hub = TestHub::start_with(
        |c| {
            c.ping_interval_secs = 1;
            c.pong_timeout_secs = 1;
        },
        None,
    )
    .await;
    let mut ws = hub.ws(&hub.admin()).await;
    ws.next_of("welcome").await;
    // Reading lets tungstenite answer each ping; well past interval + timeout, still open.
    let until = tokio::time::Instant::now() + Duration::from_millis(3500);
    let mut pings = 0;
    while let Ok(frame) = tokio::time::timeout_at(until, ws.stream.next()).await {
        match frame {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Ping(_))) => pings += 1,
            Some(Ok(_)) => {}
            other => panic!("the socket ended: {other:?}"),
        }
    }
    assert!(pings >= 2, "a ping every second, got {pings}");
    assert!(is_ack(&ws.request(&ClientMessage::Ping(Ping {})).await));
}

#[tokio::test]
async fn a_patient_is_told_when_the_visit_is_cancelled() {
    let hub = TestHub::start().await;
    let intake = hub.intake("Ann", "WA", None).await;
    let mut ws = hub.ws(&intake.str("patient_token")).await;
    ws.next_of("queue.position").await;
    hub.call("POST", &format!("/v1/visits/{}/cancel", intake.str("visit_id")), Some(&hub.admin()), None).await;
    let ServerMessage::VisitUpdated(u) = ws.next_of("visit.updated").await.msg else { unreachable!() };
    assert_eq!((u.visit_id, u.status), (intake.str("visit_id"), visithub::model::VisitStatus::Cancelled));
}
