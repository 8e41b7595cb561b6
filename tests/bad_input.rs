//! Bad input and bad credentials: each refused with its documented code, never a panic, and
//! the connection survives where the protocol says it does.

mod common;

use std::time::Duration;

use common::*;
use reqwest::StatusCode;
use serde_json::json;
use visithub::auth::Claims;
use visithub::model::{Role, UsState};
use visithub::protocol::{ClientMessage, CloseCode, Ping, StateRef};

fn ping() -> ClientMessage {
    ClientMessage::Ping(Ping {})
}

#[tokio::test]
async fn malformed_unknown_and_invalid_frames_get_errors_and_the_socket_survives() {
    let hub = TestHub::start_with(|c| c.max_message_bytes = 1024, None).await;
    hub.onboard("sup-1", "support", &["WA"]).await;
    let mut ws = hub.ws(&hub.token(Role::Support, "sup-1", &[], 3600)).await;
    ws.next_of("welcome").await;

    ws.send_text("{this is not json").await;
    assert_eq!(error_code(&ws.next_of("error").await), "malformed_json");

    ws.send_text(r#"{"id":"u1","type":"visit.teleport","data":{}}"#).await;
    let f = ws.reply_to("u1").await;
    assert_eq!(error_code(&f), "unknown_message_type");

    ws.send_text(r#"{"id":"s1","type":"queue.subscribe","data":{"state":"XX"}}"#).await;
    assert_eq!(error_code(&ws.reply_to("s1").await), "invalid_message");
    ws.send_text(r#"{"id":"s2","type":"queue.subscribe","data":{"state":7}}"#).await;
    assert_eq!(error_code(&ws.reply_to("s2").await), "invalid_message");
    ws.send_text(r#"{"type":"ping"}"#).await;
    assert_eq!(error_code(&ws.next_of("error").await), "invalid_message");
    ws.send_text(r#"{"v":9,"id":"v9","type":"ping"}"#).await;
    assert_eq!(error_code(&ws.reply_to("v9").await), "unsupported_protocol_version");
    ws.stream.send_binary(vec![1, 2, 3]).await;
    assert_eq!(error_code(&ws.next_of("error").await), "invalid_message");

    // Over the limit but within twice it: an error, and the socket lives on.
    let big = format!(r#"{{"id":"b1","type":"ping","data":{{"pad":"{}"}}}}"#, "x".repeat(1500));
    ws.send_text(big).await;
    assert_eq!(error_code(&ws.next_of("error").await), "message_too_large");
    assert!(is_ack(&ws.request(&ping()).await));

    // Past twice the limit: the socket is closed with 1009.
    let huge = format!(r#"{{"id":"b2","type":"ping","data":{{"pad":"{}"}}}}"#, "x".repeat(3000));
    ws.send_text(huge).await;
    assert_eq!(ws.ended(Duration::from_secs(5)).await, Ended::Closed(CloseCode::MessageTooBig.code()));
}

trait SendBinary {
    async fn send_binary(&mut self, bytes: Vec<u8>);
}

impl SendBinary for tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    async fn send_binary(&mut self, bytes: Vec<u8>) {
        use futures_util::SinkExt;
        self.send(tokio_tungstenite::tungstenite::Message::Binary(bytes.into())).await.unwrap();
    }
}

#[tokio::test]
async fn repeated_abuse_closes_with_protocol_violation() {
    let hub = TestHub::start_with(|c| c.max_invalid_per_minute = 5, None).await;
    let intake = hub.intake("Ann", "WA", None).await;
    let mut ws = hub.ws(&intake.str("patient_token")).await;
    for _ in 0..6 {
        ws.send_text("nonsense").await;
    }
    assert_eq!(ws.ended(Duration::from_secs(5)).await, Ended::Closed(CloseCode::ProtocolViolation.code()));
}

#[tokio::test]
async fn message_rate_is_limited_per_role() {
    let hub = TestHub::start_with(|c| c.rate_patient = 3, None).await;
    let intake = hub.intake("Ann", "WA", None).await;
    let mut ws = hub.ws(&intake.str("patient_token")).await;
    let mut ids = Vec::new();
    for _ in 0..8 {
        ids.push(ws.send(&ping()).await);
    }
    let mut limited = 0;
    for id in ids {
        let f = ws.reply_to(&id).await;
        if error_code(&f) == "rate_limited" {
            limited += 1;
        } else {
            assert!(is_ack(&f));
        }
    }
    assert!(limited >= 4, "only {limited} of 8 rate limited");
}

#[tokio::test]
async fn invalid_state_codes_and_fields_are_refused_over_rest() {
    let hub = TestHub::start().await;
    let r = hub.intake("Ann", "XX", None).await;
    assert_eq!((r.status, r.code()), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_state_code"));
    let r = hub.intake("", "WA", None).await;
    assert_eq!(r.code(), "validation_failed");
    let r = hub.intake(&"n".repeat(81), "WA", None).await;
    assert_eq!(r.code(), "validation_failed");
    let r = hub.call("POST", "/v1/visits", None, Some(json!({ "display_name": "Ann", "state": "WA" }))).await;
    assert_eq!(r.code(), "validation_failed");
    let raw = hub
        .http
        .post(hub.url("/v1/visits"))
        .header("content-type", "application/json")
        .body("{oops")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), StatusCode::BAD_REQUEST);
    let body: serde_json::Value = raw.json().await.unwrap();
    assert_eq!(body["code"], "malformed_json");
    let r = hub.call("GET", "/v1/states/ZZ/queue", Some(&hub.admin()), None).await;
    assert_eq!(r.code(), "invalid_state_code");
    let r = hub.call("GET", "/v1/nowhere", None, None).await;
    assert_eq!((r.status, r.code()), (StatusCode::NOT_FOUND, "not_found"));
    let r = hub.settings("WA", json!({ "hours": { "mon": { "open": "18:00", "close": "09:00" }, "tue": null, "wed": null, "thu": null, "fri": null, "sat": null, "sun": null } })).await;
    assert_eq!(r.code(), "validation_failed");
    assert_eq!(hub.visits_stored().await, 0);
}

#[tokio::test]
async fn missing_expired_forged_and_wrong_role_tokens_are_refused_before_any_socket() {
    let hub = TestHub::start().await;
    hub.onboard("sup-1", "support", &["WA"]).await;

    let (status, body) = hub.try_ws("", None).await.err().unwrap();
    assert_eq!((status, body["code"].as_str()), (401, Some("token_missing")));

    let mut expired = Claims::new("admin-1", Role::Admin, chrono::Utc::now() - chrono::Duration::hours(3), 60);
    expired.aud = visithub::auth::AUDIENCE.into();
    let (status, body) = hub.try_ws(&keys().sign(&expired), None).await.err().unwrap();
    assert_eq!((status, body["code"].as_str()), (401, Some("token_expired")));

    let forged = visithub::auth::TokenKeys::new(&[9u8; 32]).unwrap().sign(&Claims::new(
        "admin-1",
        Role::Admin,
        chrono::Utc::now(),
        60,
    ));
    let (status, body) = hub.try_ws(&forged, None).await.err().unwrap();
    assert_eq!((status, body["code"].as_str()), (401, Some("token_invalid")));
    let r = hub.call("GET", "/v1/caregivers", Some(&forged), None).await;
    assert_eq!((r.status, r.code()), (StatusCode::UNAUTHORIZED, "token_invalid"));
    let r = hub.call("GET", "/v1/caregivers", None, None).await;
    assert_eq!(r.code(), "token_missing");

    // A provider token for a subject onboarded as support, and an unknown caregiver.
    let (status, body) = hub.try_ws(&hub.token(Role::Provider, "sup-1", &[], 60), None).await.err().unwrap();
    assert_eq!((status, body["code"].as_str()), (403, Some("forbidden")));
    let (status, body) = hub.try_ws(&hub.token(Role::Provider, "nobody", &[], 60), None).await.err().unwrap();
    assert_eq!((status, body["code"].as_str()), (403, Some("caregiver_unknown")));

    // Wrong role for the action.
    let support = hub.token(Role::Support, "sup-1", &[], 60);
    let r = hub
        .call(
            "POST",
            "/v1/caregivers",
            Some(&support),
            Some(json!({ "name": "X", "role": "provider", "states": ["WA"] })),
        )
        .await;
    assert_eq!((r.status, r.code()), (StatusCode::FORBIDDEN, "forbidden"));
    let patient = hub.intake("Ann", "WA", None).await.str("patient_token");
    let mut ws = hub.ws(&patient).await;
    let f = ws.request(&ClientMessage::QueueSubscribe(StateRef { state: UsState::parse("WA").unwrap() })).await;
    assert_eq!(error_code(&f), "forbidden");
    let r = hub.call("GET", "/v1/caregivers", Some(&patient), None).await;
    assert_eq!(r.code(), "forbidden");

    // A token may narrow a caregiver's states, never widen them.
    let mut ws = hub.ws(&hub.token(Role::Support, "sup-1", &["OR"], 60)).await;
    let visithub::protocol::ServerMessage::Welcome(w) = ws.next_of("welcome").await.msg else { unreachable!() };
    assert!(w.states.is_empty());
}

#[tokio::test]
async fn a_patient_token_opens_only_its_own_visit() {
    let hub = TestHub::start().await;
    let ann = hub.intake("Ann", "WA", None).await;
    let bob = hub.intake("Bob", "WA", None).await;
    let ann_token = ann.str("patient_token");
    let r = hub.call("GET", &format!("/v1/visits/{}", bob.str("visit_id")), Some(&ann_token), None).await;
    assert_eq!((r.status, r.code()), (StatusCode::FORBIDDEN, "not_your_visit"));
    let r = hub.call("POST", &format!("/v1/visits/{}/cancel", bob.str("visit_id")), Some(&ann_token), None).await;
    assert_eq!(r.code(), "not_your_visit");
    let r = hub.call("GET", "/v1/visits/no-such-visit", Some(&ann_token), None).await;
    assert_eq!(r.code(), "not_your_visit");
    let r = hub.call("GET", "/v1/visits/no-such-visit", Some(&hub.admin()), None).await;
    assert_eq!((r.status, r.code()), (StatusCode::NOT_FOUND, "visit_not_found"));
    // Bob's visit is untouched.
    let r =
        hub.call("GET", &format!("/v1/visits/{}", bob.str("visit_id")), Some(&bob.str("patient_token")), None).await;
    assert_eq!(r.body["status"], "waiting");
}

#[tokio::test]
async fn handshake_checks_origin_protocol_and_connection_cap() {
    let hub = TestHub::start_with(|c| c.max_connections_per_user = 2, None).await;
    let admin = hub.admin();
    let (status, body) = hub.try_ws(&admin, Some("https://evil.example")).await.err().unwrap();
    assert_eq!((status, body["code"].as_str()), (403, Some("origin_not_allowed")));
    let mut allowed = hub.try_ws(&admin, Some("http://localhost:8080")).await.ok().unwrap();
    allowed.next_of("welcome").await;
    let _second = hub.ws(&admin).await;
    let (status, body) = hub.try_ws(&admin, None).await.err().unwrap();
    assert_eq!((status, body["code"].as_str()), (429, Some("too_many_connections")));
    drop(allowed);
    eventually("a slot frees up", || hub.gateway.connections.open() < 2).await;
    assert!(hub.try_ws(&admin, None).await.is_ok());

    // A client offering only other subprotocols is refused; one offering ours gets it.
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{}/v1/ws", hub.addr).into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {}", hub.token(Role::Admin, "admin-2", &[], 60)).parse().unwrap());
    let mut theirs = req.clone();
    theirs.headers_mut().insert("sec-websocket-protocol", "chat.v2".parse().unwrap());
    let err = tokio_tungstenite::connect_async(theirs).await.err().unwrap();
    assert!(matches!(err, tokio_tungstenite::tungstenite::Error::Http(ref r) if r.status() == 400), "{err}");
    req.headers_mut().insert("sec-websocket-protocol", "visithub.v1".parse().unwrap());
    let (_ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(resp.headers()["sec-websocket-protocol"], "visithub.v1");
}

#[tokio::test]
async fn a_client_that_stops_reading_is_disconnected_as_slow() {
    let hub = TestHub::start_with(
        |c| {
            c.write_timeout_ms = 300;
            c.outbound_queue = 16;
            c.default_queue_cap = 5000;
            c.rate_support = 100_000;
        },
        None,
    )
    .await;
    hub.onboard("sup-1", "support", &["WA"]).await;
    let reason = "r".repeat(500);
    for i in 0..1000 {
        let req = visithub::hub::IntakeRequest {
            display_name: format!("Patient {i}"),
            state: UsState::parse("WA").unwrap(),
            reason: reason.clone(),
        };
        hub.app_hub.intake(req, None).await.unwrap();
    }
    let mut ws = hub.ws(&hub.token(Role::Support, "sup-1", &[], 3600)).await;
    let wa = StateRef { state: UsState::parse("WA").unwrap() };
    // Each subscription brings a ~600 KB snapshot; the client never reads them, and after a
    // few the socket buffers are full and the hub's writes stop making progress.
    for _ in 0..40 {
        if !ws.try_send(&ClientMessage::QueueSubscribe(wa.clone())).await {
            break;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
        if !ws.try_send(&ClientMessage::QueueUnsubscribe(wa.clone())).await {
            break;
        }
    }
    eventually("the hub to drop the slow client", || hub.gateway.connections.open() == 0).await;
    let ended = ws.ended(Duration::from_secs(10)).await;
    assert!(matches!(ended, Ended::Closed(4002) | Ended::Dropped), "{ended:?}");
}

#[tokio::test]
async fn tokens_from_an_ed25519_identity_provider_are_accepted() {
    let dir = env!("CARGO_MANIFEST_DIR");
    let private = std::fs::read(format!("{dir}/tests/fixtures/ed25519-private.pem")).unwrap();
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA),
        &Claims::new("admin-9", Role::Admin, chrono::Utc::now(), 60),
        &jsonwebtoken::EncodingKey::from_ed_pem(&private).unwrap(),
    )
    .unwrap();
    let plain = TestHub::start().await;
    let (status, body) = plain.try_ws(&token, None).await.err().unwrap();
    assert_eq!((status, body["code"].as_str()), (401, Some("token_invalid")));

    let public = format!("{dir}/tests/fixtures/ed25519-public.pem");
    let hub = TestHub::start_with(|c| c.jwt_public_keys = vec![public.into()], None).await;
    let mut ws = hub.ws(&token).await;
    let visithub::protocol::ServerMessage::Welcome(w) = ws.next_of("welcome").await.msg else { unreachable!() };
    assert_eq!((w.subject.as_str(), w.role), ("admin-9", Role::Admin));
}
