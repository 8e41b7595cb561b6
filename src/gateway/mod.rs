//! The WebSocket edge: the handshake (Origin, token, protocol version, connection cap) and one
//! task per connection. A refused handshake is an HTTP problem response: no WebSocket exists
//! for a client the hub will not serve.

mod connections;
mod events;
mod handover;
mod journal;
mod outbound;
pub mod read_ahead;
mod requests;
mod resume;
mod session;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::ws::{WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt;
use futures_util::future::OptionFuture;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use connections::Connections;

use crate::api::extract::bearer;
use crate::api::problem::Problem;
use crate::config::Config;
use crate::error::{ErrorCode, HubError};
use crate::hub::Hub;
use crate::hub::alarm::SHUTDOWN;
use crate::protocol::SUBPROTOCOL;

/// What every session shares.
pub struct Gateway {
    pub hub: Arc<Hub>,
    pub config: Arc<Config>,
    /// Cancelled when the node shuts down (see [`Gateway::shut_down`]).
    pub shutdown: CancellationToken,
    pub sessions: TaskTracker,
    pub connections: Connections,
    resumable: resume::Resumable,
    next_session: AtomicU64,
    /// Cluster mode: sessions journal in live state, so another node can take them over.
    journal: Option<journal::JournalWriter>,
    /// One clock for every session's rate limiter: making a clock calibrates it (CPUID and a
    /// timing loop), which was a tenth of the CPU of accepting a connection.
    rate_clock: governor::clock::QuantaClock,
}

impl Gateway {
    pub fn new(hub: Arc<Hub>, config: Arc<Config>) -> Gateway {
        Gateway {
            config,
            shutdown: CancellationToken::new(),
            sessions: TaskTracker::new(),
            connections: Connections::default(),
            resumable: resume::Resumable::default(),
            next_session: AtomicU64::new(1),
            journal: hub.live_state().is_shared().then(|| journal::JournalWriter::start(hub.live_state().clone())),
            rate_clock: governor::clock::QuantaClock::default(),
            hub,
        }
    }

    /// Refuses new sockets and tells every session the node is going: each closes with
    /// `server_shutdown` (or, in a cluster, waits detached to be handed over).
    pub fn shut_down(&self) {
        self.shutdown.cancel();
        self.resumable.raise_all(SHUTDOWN);
    }
}

#[derive(Deserialize)]
pub struct WsQuery {
    access_token: Option<String>,
    /// Resume this session (from `welcome`), having seen frames up to `last_seq`.
    session_id: Option<String>,
    last_seq: Option<u64>,
}

fn origin_allowed(config: &Config, headers: &HeaderMap) -> bool {
    match headers.get(header::ORIGIN) {
        // Native apps and servers send no Origin; browsers always do.
        None => true,
        Some(origin) => origin.to_str().is_ok_and(|o| {
            config.allowed_origins.iter().any(|allowed| allowed == "*" || allowed.eq_ignore_ascii_case(o))
        }),
    }
}

/// A client that offers subprotocols must offer ours; one that offers none gets version 1.
fn protocol_acceptable(headers: &HeaderMap) -> bool {
    let offered: Vec<&str> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    offered.is_empty() || offered.contains(&SUBPROTOCOL)
}

/// `GET /v1/ws`.
pub async fn upgrade(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    Query(query): Query<WsQuery>,
    ws: WebSocketUpgrade,
) -> Response {
    let resume = query.session_id.clone().map(|id| (id, query.last_seq.unwrap_or(0)));
    match admit(&gw, &headers, query).await {
        Ok((principal, guard)) => {
            let limit = gw.config.max_message_bytes;
            let token = gw.sessions.token();
            let id = gw.next_session.fetch_add(1, Ordering::Relaxed);
            // axum keeps the callback's captures in the connection's task for its whole life:
            // one box, freed once the session has taken what is in it.
            let admitted = Box::new(Admitted { gw: gw.clone(), principal, guard, resume, id });
            ws.protocols([SUBPROTOCOL])
                // Frames past twice the limit are not even buffered: the socket closes (1009).
                // Between the limit and twice it, the session answers `message_too_large`.
                .max_message_size(limit * 2)
                .max_frame_size(limit * 2)
                // Small buffers: most sockets idle, and memory per idle socket is what caps
                // how many one node holds. tungstenite takes at most this much per read; the
                // socket under it is read ahead (`read_ahead`), so a message still costs one
                // `read` call however many of these it fills.
                .read_buffer_size(256)
                // Frames queued together leave in one write (the session flushes after
                // taking what is ready); a lone frame is written at once by that flush.
                .write_buffer_size(8 * 1024)
                .on_upgrade(move |socket| serve_socket(socket, *admitted).map(move |_| drop(token)))
        }
        Err(problem) => {
            gw.hub.metrics().handshake_refusals.with_label_values(&[problem.0.code.as_str()]).inc();
            problem.into_response()
        }
    }
}

/// A socket whose handshake was accepted, waiting for the upgrade.
struct Admitted {
    gw: Arc<Gateway>,
    principal: crate::auth::Principal,
    guard: connections::ConnectionGuard,
    resume: Option<(String, u64)>,
    id: u64,
}

/// The session a new socket serves: a new one, or none when the socket went to the session it
/// resumes. A plain fn, not an async block: an async block keeps what it captured (the socket
/// among it) in its future for the socket's whole life, even after moving it on.
fn serve_socket(socket: WebSocket, admitted: Admitted) -> OptionFuture<impl Future<Output = ()> + Send> {
    let Admitted { gw, principal, guard, resume, id } = admitted;
    let (socket, principal, guard, start) = match resume {
        None => (socket, principal, guard, session::Start::New { recovered: None }),
        Some((session_id, last_seq)) => {
            let r = Box::new(resume::Resume { socket, last_seq, principal, guard });
            let Err(r) = gw.resumable.attach(&session_id, r) else { return None.into() };
            // Not here: in a cluster another node may hold it and hand it over; else a new
            // session, and the client reloads. Session ids are UUIDs the hub made: anything
            // else names no session and never reaches a live-state key.
            let start = match (&gw.journal, uuid::Uuid::try_parse(&session_id)) {
                (Some(_), Ok(session_id)) => session::Start::TakeOver { session_id, last_seq },
                _ => session::Start::New { recovered: Some(false) },
            };
            (r.socket, r.principal, r.guard, start)
        }
    };
    Some(session::run(socket, gw, principal, guard, id, start)).into()
}

async fn admit(
    gw: &Gateway,
    headers: &HeaderMap,
    query: WsQuery,
) -> Result<(crate::auth::Principal, connections::ConnectionGuard), Problem> {
    if gw.shutdown.is_cancelled() {
        return Err(HubError::new(ErrorCode::Unavailable, "the node is shutting down").retry_after(1).into());
    }
    if !origin_allowed(&gw.config, headers) {
        return Err(ErrorCode::OriginNotAllowed.into());
    }
    if !protocol_acceptable(headers) {
        return Err(HubError::new(
            ErrorCode::UnsupportedProtocolVersion,
            format!("offer the `{SUBPROTOCOL}` subprotocol"),
        )
        .into());
    }
    let token = bearer(headers).or(query.access_token.as_deref()).ok_or(ErrorCode::TokenMissing)?;
    let principal = gw.hub.authenticate(token).await?;
    let guard = gw
        .connections
        .acquire(&principal.subject, gw.config.max_connections_per_user)
        .ok_or(ErrorCode::TooManyConnections)?;
    Ok((principal, guard))
}
