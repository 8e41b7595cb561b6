//! Helpers: a real hub on 127.0.0.1:0 with an in-memory SQLite store, and small HTTP and
//! WebSocket clients, so each test reads as the scenario it checks.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use visithub::app::{self, App, Backends};
use visithub::auth::{Claims, TokenKeys};
use visithub::bus::MemoryBus;
use visithub::clock::{Clock, ManualClock, SystemClock};
use visithub::config::Config;
use visithub::live::MemoryLive;
use visithub::model::{Role, UsState};
use visithub::protocol::{ClientMessage, ServerFrame, ServerMessage, decode_server, encode_client};
use visithub::store::SqliteStore;

pub const SECRET: &[u8] = b"test-signing-secret-of-32-bytes!!";
const WAIT: Duration = Duration::from_secs(5);

/// Where a hub answers, with the HTTP and WebSocket helpers: an in-process [`TestHub`] or a
/// hub process of a cluster test.
pub struct Endpoint {
    pub addr: SocketAddr,
    pub http: reqwest::Client,
}

pub struct TestHub {
    pub endpoint: Endpoint,
    pub metrics_addr: SocketAddr,
    pub app_hub: Arc<visithub::hub::Hub>,
    pub gateway: Arc<visithub::gateway::Gateway>,
    pub clock: Option<Arc<ManualClock>>,
    stop: Option<oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

pub fn keys() -> TokenKeys {
    TokenKeys::new(SECRET).unwrap()
}

impl TestHub {
    pub async fn start() -> TestHub {
        TestHub::start_with(|_| {}, None).await
    }

    /// A hub with configuration changes and, optionally, a clock the test moves.
    pub async fn start_with(tune: impl FnOnce(&mut Config), clock: Option<Arc<ManualClock>>) -> TestHub {
        TestHub::start_full(tune, clock, None).await
    }

    /// A hub whose SQLite database is a file in `data_dir` (for tools that open it).
    pub async fn start_on_disk(data_dir: &std::path::Path) -> TestHub {
        TestHub::start_full(|_| {}, None, Some(data_dir)).await
    }

    async fn start_full(
        tune: impl FnOnce(&mut Config),
        clock: Option<Arc<ManualClock>>,
        data_dir: Option<&std::path::Path>,
    ) -> TestHub {
        let mut config = Config { shutdown_grace_secs: 3, ..Config::default() };
        tune(&mut config);
        let store: Arc<dyn visithub::store::Store> = match data_dir {
            Some(dir) => {
                config.data_dir = dir.to_path_buf();
                Arc::new(SqliteStore::open(&config.database_path()).await.unwrap())
            }
            None => Arc::new(SqliteStore::in_memory().await.unwrap()),
        };
        let clock_dyn: Arc<dyn Clock> = match &clock {
            Some(c) => c.clone(),
            None => Arc::new(SystemClock),
        };
        let backends = Backends {
            store,
            bus: Arc::new(MemoryBus::new()),
            live: Arc::new(MemoryLive::new()),
            keys: app::token_keys(&config, SECRET).unwrap(),
            clock: clock_dyn,
        };
        let app = App::with_backends(config, backends).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (app_hub, gateway) = (app.hub().clone(), app.gateway().clone());
        let metrics_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let metrics_addr = metrics_listener.local_addr().unwrap();
        let draining = gateway.shutdown.clone();
        let metrics =
            app::serve_metrics(metrics_listener, app.hub().clone(), async move { draining.cancelled().await });
        tokio::spawn(metrics);
        let (stop, stopped) = oneshot::channel::<()>();
        let done = tokio::spawn(app::serve(listener, app, async {
            let _ = stopped.await;
        }));
        TestHub {
            endpoint: Endpoint::new(addr),
            metrics_addr,
            app_hub,
            gateway,
            clock,
            stop: Some(stop),
            done: Some(done),
        }
    }

    /// Starts graceful shutdown and waits for `serve` to return.
    pub async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(done) = self.done.take() {
            tokio::time::timeout(Duration::from_secs(15), done).await.expect("serve returns").unwrap().unwrap();
        }
    }

    /// The `/metrics` page.
    pub async fn metrics(&self) -> String {
        self.http.get(format!("http://{}/metrics", self.metrics_addr)).send().await.unwrap().text().await.unwrap()
    }

    pub async fn visits_stored(&self) -> u64 {
        self.app_hub.store().count_visits().await.unwrap()
    }
}

impl std::ops::Deref for TestHub {
    type Target = Endpoint;

    fn deref(&self) -> &Endpoint {
        &self.endpoint
    }
}

impl Endpoint {
    pub fn new(addr: SocketAddr) -> Endpoint {
        Endpoint { addr, http: reqwest::Client::new() }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn token(&self, role: Role, sub: &str, states: &[&str], ttl_secs: u64) -> String {
        let mut claims = Claims::new(sub, role, Utc::now(), ttl_secs);
        claims.states = states.iter().map(|s| UsState::parse(s).unwrap()).collect();
        keys().sign(&claims)
    }

    pub fn admin(&self) -> String {
        self.token(Role::Admin, "admin-1", &[], 3600)
    }

    /// A REST call; returns status, JSON body (Null when empty) and the Retry-After header.
    pub async fn call(&self, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> Reply {
        let mut req = self.http.request(method.parse().unwrap(), self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        Reply::read(req.send().await.unwrap()).await
    }

    pub async fn onboard(&self, subject: &str, role: &str, states: &[&str]) -> Reply {
        let body =
            json!({ "subject": subject, "name": format!("Caregiver {subject}"), "role": role, "states": states });
        self.call("POST", "/v1/caregivers", Some(&self.admin()), Some(body)).await
    }

    pub async fn intake(&self, name: &str, state: &str, key: Option<&str>) -> Reply {
        let mut req = self
            .http
            .post(self.url("/v1/visits"))
            .json(&json!({ "display_name": name, "state": state, "reason": "sore throat" }));
        if let Some(k) = key {
            req = req.header("Idempotency-Key", k);
        }
        Reply::read(req.send().await.unwrap()).await
    }

    pub async fn settings(&self, state: &str, patch: Value) -> Reply {
        self.call("PATCH", &format!("/v1/states/{state}/settings"), Some(&self.admin()), Some(patch)).await
    }

    pub async fn ws(&self, token: &str) -> Ws {
        self.try_ws(token, None).await.expect("handshake accepted")
    }

    /// Opens a socket; on a refused handshake returns the HTTP status and problem body.
    pub async fn try_ws(&self, token: &str, origin: Option<&str>) -> Result<Ws, (u16, Value)> {
        self.try_ws_at(token, origin, "").await
    }

    /// Reconnects to session `session_id`, having seen frames up to `last_seq`.
    pub async fn resume(&self, token: &str, session_id: &str, last_seq: u64) -> Ws {
        let query = format!("?session_id={session_id}&last_seq={last_seq}");
        let mut ws = self.try_ws_at(token, None, &query).await.expect("handshake accepted");
        ws.last_seq = last_seq;
        ws
    }

    async fn try_ws_at(&self, token: &str, origin: Option<&str>, query: &str) -> Result<Ws, (u16, Value)> {
        let mut req = format!("ws://{}/v1/ws{query}", self.addr).into_client_request().unwrap();
        if !token.is_empty() {
            req.headers_mut().insert("authorization", HeaderValue::from_str(&format!("Bearer {token}")).unwrap());
        }
        if let Some(o) = origin {
            req.headers_mut().insert("origin", HeaderValue::from_str(o).unwrap());
        }
        match tokio_tungstenite::connect_async(req).await {
            Ok((stream, _)) => Ok(Ws { stream, next_id: 0, last_seq: 0 }),
            Err(tungstenite::Error::Http(resp)) => {
                let status = resp.status().as_u16();
                let body = resp
                    .body()
                    .as_ref()
                    .map(|b| serde_json::from_slice(b).unwrap_or(Value::Null))
                    .unwrap_or(Value::Null);
                Err((status, body))
            }
            Err(e) => panic!("handshake failed: {e}"),
        }
    }
}

impl Drop for TestHub {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub struct Reply {
    pub status: StatusCode,
    pub body: Value,
    pub retry_after: Option<u64>,
}

impl Reply {
    pub async fn read(resp: reqwest::Response) -> Reply {
        let status = resp.status();
        let retry_after = resp.headers().get("retry-after").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
        let text = resp.text().await.unwrap();
        let body =
            if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
        Reply { status, body, retry_after }
    }

    pub fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or("")
    }

    pub fn str(&self, field: &str) -> String {
        self.body[field].as_str().unwrap_or_else(|| panic!("no {field} in {}", self.body)).to_string()
    }
}

/// The places in line of intakes sent at once, sorted; every intake not admitted must have
/// been refused `queue_full`.
pub fn places_of_admitted(replies: &[Reply]) -> Vec<u64> {
    let mut places = Vec::new();
    for r in replies {
        match r.status {
            StatusCode::CREATED => places.push(r.body["position"].as_u64().expect("a place in line")),
            _ => assert_eq!(r.code(), "queue_full", "{}", r.body),
        }
    }
    places.sort_unstable();
    places
}

pub struct Ws {
    pub stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    /// The `seq` of the last hub frame read.
    pub last_seq: u64,
}

/// How a socket ended, as the client saw it.
#[derive(Debug, PartialEq)]
pub enum Ended {
    Closed(u16),
    Dropped,
}

impl Ws {
    pub async fn send_text(&mut self, text: impl Into<String>) {
        self.stream.send(Message::Text(text.into().into())).await.unwrap();
    }

    /// Sends a request; false when the hub has already closed the connection.
    pub async fn try_send(&mut self, msg: &ClientMessage) -> bool {
        self.next_id += 1;
        let text = encode_client(&format!("r{}", self.next_id), msg);
        self.stream.send(Message::Text(text.into())).await.is_ok()
    }

    /// Sends a request and returns its id.
    pub async fn send(&mut self, msg: &ClientMessage) -> String {
        self.next_id += 1;
        let id = format!("r{}", self.next_id);
        self.send_text(encode_client(&id, msg)).await;
        id
    }

    /// The next hub frame (pings are answered by the client library and skipped).
    pub async fn next(&mut self) -> ServerFrame {
        loop {
            let msg = tokio::time::timeout(WAIT, self.stream.next()).await.expect("a frame within 5 s");
            match msg {
                Some(Ok(Message::Text(t))) => {
                    let frame = decode_server(t.as_str()).expect("hub frames decode");
                    if let Some(seq) = frame.seq {
                        self.last_seq = seq;
                    }
                    return frame;
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("expected a frame, got {other:?}"),
            }
        }
    }

    /// Skips frames until one of type `kind`.
    pub async fn next_of(&mut self, kind: &str) -> ServerFrame {
        loop {
            let f = self.next().await;
            if f.msg.kind() == kind {
                return f;
            }
        }
    }

    /// Skips frames until one of any of `kinds`.
    pub async fn next_of_any(&mut self, kinds: &[&str]) -> ServerFrame {
        loop {
            let f = self.next().await;
            if kinds.contains(&f.msg.kind()) {
                return f;
            }
        }
    }

    /// Skips frames until one of type `kind` for which `pred` holds.
    pub async fn next_of_filtered(&mut self, kind: &str, pred: impl Fn(&ServerFrame) -> bool) -> ServerFrame {
        loop {
            let f = self.next_of(kind).await;
            if pred(&f) {
                return f;
            }
        }
    }

    /// Sends a request and returns its reply (ack or error), skipping events before it.
    pub async fn request(&mut self, msg: &ClientMessage) -> ServerFrame {
        let id = self.send(msg).await;
        self.reply_to(&id).await
    }

    pub async fn reply_to(&mut self, id: &str) -> ServerFrame {
        loop {
            let f = self.next().await;
            if f.id.as_deref() == Some(id) {
                return f;
            }
        }
    }

    /// Reads until the socket ends; returns the close code if a close frame came.
    pub async fn ended(&mut self, within: Duration) -> Ended {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.stream.next()).await.expect("socket ends in time") {
                Some(Ok(Message::Close(Some(frame)))) => {
                    return Ended::Closed(u16::from(frame.code));
                }
                Some(Ok(Message::Close(None))) => return Ended::Closed(WsCloseCode::Status.into()),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Ended::Dropped,
            }
        }
    }
}

/// The error code of a reply frame, or "" for an ack.
pub fn error_code(f: &ServerFrame) -> String {
    match &f.msg {
        ServerMessage::Error(e) => e.code.clone(),
        _ => String::new(),
    }
}

pub fn is_ack(f: &ServerFrame) -> bool {
    matches!(f.msg, ServerMessage::Ack(_))
}

/// Wednesday 2026-12-09 at `hour:minute` in Seattle.
pub fn seattle(hour: u32, minute: u32) -> DateTime<Utc> {
    use chrono::TimeZone;
    chrono_tz::America::Los_Angeles.with_ymd_and_hms(2026, 12, 9, hour, minute, 0).unwrap().with_timezone(&Utc)
}

pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
