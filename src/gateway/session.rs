//! One task per connection, one `select!` loop: client frames, bus events, queue boards,
//! heartbeats, token expiry, shutdown, and writing. Reading pauses while the outbound queue is
//! half full, and boards are read only when it is empty, so a slow client gets the newest
//! queue value rather than a backlog and its memory stays bounded; a client that stops
//! reading altogether is closed as a slow consumer.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::{SinkExt, StreamExt};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};
use tokio_stream::StreamMap;
use tokio_stream::wrappers::WatchStream;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::Gateway;
use super::outbound::Outbound;
use crate::auth::Principal;
use crate::bus::{BusEvent, Topic};
use crate::error::{ErrorCode, HubError};
use crate::hub::{QueueView, Scope, SessionLink};
use crate::model::{Role, UsState};
use crate::protocol::{
    CloseCode, ErrorBody, PROTOCOL_VERSION, QueuePosition, ServerMessage, SessionLimits, Welcome, decode_client,
};

/// Why the loop ended.
pub(super) enum Exit {
    Close(CloseCode),
    /// The client closed or the connection broke: nothing more to send.
    Gone,
}

pub(super) struct Session {
    pub gw: Arc<Gateway>,
    pub id: u64,
    pub principal: Principal,
    pub out: Outbound,
    /// Queue boards this session watches, by state.
    pub boards: StreamMap<UsState, WatchStream<Arc<QueueView>>>,
    /// The last view sent per state (caregivers get deltas against it).
    pub sent_views: HashMap<UsState, Arc<QueueView>>,
    /// The last position sent to a patient.
    pub sent_position: Option<QueuePosition>,
    pub topics: Vec<Topic>,
    pub link: SessionLink,
    pub token_deadline: Instant,
    limiter: DefaultDirectRateLimiter,
    strikes: u32,
    strikes_since: Instant,
    /// When a waiting patient is next asked "still there?", and by when they must answer.
    pub still_there_at: Option<Instant>,
    pub answer_by: Option<Instant>,
}

pub async fn run(socket: WebSocket, gw: Arc<Gateway>, principal: Principal, id: u64) {
    let span = tracing::info_span!("session", id, role = principal.role.as_str());
    run_inner(socket, gw, principal, id).instrument(span).await
}

async fn run_inner(socket: WebSocket, gw: Arc<Gateway>, principal: Principal, id: u64) {
    let (inbox_tx, inbox) = mpsc::channel(gw.config.outbound_queue);
    let link = SessionLink { id, inbox: inbox_tx, overflowed: CancellationToken::new() };
    let rate = NonZeroU32::new(gw.config.rate_for(principal.role)).unwrap_or(NonZeroU32::MIN);
    let mut session = Session {
        out: Outbound::new(gw.config.outbound_queue, gw.hub.metrics().clone()),
        boards: StreamMap::new(),
        sent_views: HashMap::new(),
        sent_position: None,
        topics: Vec::new(),
        token_deadline: deadline_of(principal.expires_at),
        limiter: RateLimiter::direct(Quota::per_second(rate)),
        strikes: 0,
        strikes_since: Instant::now(),
        still_there_at: None,
        answer_by: None,
        link,
        principal,
        id,
        gw,
    };
    let (mut sink, stream) = socket.split();
    let metrics = session.gw.hub.metrics().clone();
    let role = session.principal.role.as_str();
    metrics.connections_accepted.with_label_values(&[role]).inc();
    metrics.connections_open.with_label_values(&[role]).inc();
    let exit = match session.open().await {
        Ok(()) => session.serve(&mut sink, stream, inbox).await,
        Err(e) => {
            tracing::warn!(error = %e, "session setup failed");
            Exit::Close(CloseCode::ServerShutdown)
        }
    };
    let reason = match &exit {
        Exit::Close(code) => code.reason(),
        Exit::Gone => "client_gone",
    };
    session.close(&mut sink, exit).await;
    metrics.connections_open.with_label_values(&[role]).dec();
    metrics.disconnects.with_label_values(&[reason]).inc();
}

/// The instant a token's `exp` (epoch seconds) falls due.
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(365 * 24 * 3600)
}

pub(super) fn deadline_of(exp: i64) -> Instant {
    let left = exp - chrono::Utc::now().timestamp();
    Instant::now() + Duration::from_secs(left.clamp(0, 10 * 365 * 24 * 3600) as u64)
}

impl Session {
    /// Welcome, then the subscriptions every session of this role has.
    async fn open(&mut self) -> anyhow::Result<()> {
        let cfg = &self.gw.config;
        let welcome = Welcome {
            protocol: PROTOCOL_VERSION,
            session_id: uuid::Uuid::new_v4().to_string(),
            role: self.principal.role,
            subject: self.principal.subject.clone(),
            states: self.principal.states.clone(),
            visit_id: self.principal.visit.clone(),
            limits: SessionLimits {
                max_message_bytes: cfg.max_message_bytes,
                messages_per_second: cfg.rate_for(self.principal.role),
                ping_interval_ms: cfg.ping_interval_secs * 1000,
                token_expires_at: self.principal.expires_at,
            },
        };
        self.send(None, &ServerMessage::Welcome(welcome));
        self.subscribe_for_role().await
    }

    /// Routes a topic to this session (once).
    pub(super) async fn listen(&mut self, topic: Topic) -> anyhow::Result<()> {
        if !self.topics.contains(&topic) {
            self.gw.hub.listen(topic.clone(), self.link.clone()).await?;
            self.topics.push(topic);
        }
        Ok(())
    }

    pub(super) async fn unlisten(&mut self, topic: &Topic) {
        if let Some(i) = self.topics.iter().position(|t| t == topic) {
            self.topics.swap_remove(i);
            self.gw.hub.unlisten(topic, self.id).await;
        }
    }

    async fn serve(
        &mut self,
        sink: &mut futures_util::stream::SplitSink<WebSocket, Message>,
        mut stream: futures_util::stream::SplitStream<WebSocket>,
        mut inbox: mpsc::Receiver<Arc<BusEvent>>,
    ) -> Exit {
        let cfg = self.gw.config.clone();
        let ping_every = Duration::from_secs(cfg.ping_interval_secs);
        let silence_limit = ping_every + Duration::from_secs(cfg.pong_timeout_secs);
        let write_timeout = Duration::from_millis(cfg.write_timeout_ms);
        let mut ping = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
        let mut last_heard = Instant::now();
        // When the outbound queue last made progress (or became non-empty).
        let mut progress_at = Instant::now();
        let shutdown = self.gw.shutdown.clone();
        let overflowed = self.link.overflowed.clone();
        loop {
            let written_before = self.out.written();
            let was_empty = self.out.is_empty();
            let exit = tokio::select! {
                biased;
                _ = shutdown.cancelled() => Some(Exit::Close(CloseCode::ServerShutdown)),
                _ = overflowed.cancelled() => Some(Exit::Close(CloseCode::SlowConsumer)),
                _ = sleep_until(self.token_deadline) => Some(Exit::Close(CloseCode::TokenExpired)),
                _ = sleep_until(progress_at + write_timeout), if !self.out.is_empty() => {
                    Some(Exit::Close(CloseCode::SlowConsumer))
                }
                res = self.out.flush(sink), if !self.out.is_empty() => res.err().map(|_| Exit::Gone),
                frame = stream.next(), if self.out.has_room() => {
                    last_heard = Instant::now();
                    match frame {
                        Some(Ok(msg)) => self.on_frame(msg).await,
                        Some(Err(e)) => Some(self.on_read_error(e)),
                        None => Some(Exit::Gone),
                    }
                }
                Some(event) = inbox.recv(), if self.out.has_room() => self.on_event(&event).await,
                _ = sleep_until(self.still_there_at.unwrap_or_else(far_future)), if self.still_there_at.is_some() && self.answer_by.is_none() => {
                    self.ask_still_there();
                    None
                }
                _ = sleep_until(self.answer_by.unwrap_or_else(far_future)), if self.answer_by.is_some() => {
                    self.answer_by = None;
                    self.still_there_at = None;
                    if let Some(visit_id) = self.principal.visit.clone() {
                        self.gw.hub.abandon(&visit_id).await;
                    }
                    None
                }
                Some((state, view)) = self.boards.next(), if self.out.is_empty() => {
                    self.on_view(state, view);
                    None
                }
                _ = ping.tick() => {
                    if last_heard.elapsed() > silence_limit {
                        Some(Exit::Close(CloseCode::HeartbeatTimeout))
                    } else {
                        self.push_control(Message::Ping(Default::default()));
                        None
                    }
                }
            };
            if let Some(exit) = exit {
                return exit;
            }
            if self.out.written() != written_before || (was_empty && !self.out.is_empty()) {
                progress_at = Instant::now();
            }
            if self.out.len() > cfg.outbound_queue {
                return Exit::Close(CloseCode::SlowConsumer);
            }
        }
    }

    async fn on_frame(&mut self, msg: Message) -> Option<Exit> {
        match msg {
            Message::Text(text) => self.on_text(text.as_str()).await,
            Message::Binary(_) => {
                self.refuse(None, HubError::new(ErrorCode::InvalidMessage, "only text frames are accepted"))
            }
            Message::Ping(_) | Message::Pong(_) => None,
            Message::Close(_) => Some(Exit::Gone),
        }
    }

    fn on_read_error(&mut self, e: axum::Error) -> Exit {
        // tungstenite refuses a frame past the transport cap before buffering it.
        let text = e.to_string();
        if text.contains("too long") || text.contains("too big") || text.contains("Space limit") {
            Exit::Close(CloseCode::MessageTooBig)
        } else {
            Exit::Gone
        }
    }

    async fn on_text(&mut self, text: &str) -> Option<Exit> {
        if text.len() > self.gw.config.max_message_bytes {
            let limit = self.gw.config.max_message_bytes;
            return self.refuse(
                None,
                HubError::new(ErrorCode::MessageTooLarge, format!("messages are limited to {limit} bytes")),
            );
        }
        if self.limiter.check().is_err() {
            self.gw.hub.metrics().rate_limited.with_label_values(&[self.principal.role.as_str()]).inc();
            let id = decode_client(text).ok().map(|f| f.id);
            return self.refuse(id.as_deref(), HubError::code(ErrorCode::RateLimited).retry_after(1));
        }
        match decode_client(text) {
            Ok(frame) => {
                let kind = frame.msg.kind();
                self.gw.hub.metrics().messages_in.with_label_values(&[kind]).inc();
                let scope = Scope {
                    visit_id: frame.msg.visit_id().map(str::to_string),
                    target: frame.msg.state().map(|s| s.code().to_string()),
                };
                let result = self.handle(frame.msg).await;
                let outcome = result.as_ref().map(|_| ()).map_err(|e| e.code);
                if outcome.is_err() || super::requests::audited(kind) {
                    self.gw.hub.audit(&self.principal, kind, scope, outcome).await;
                }
                match result {
                    Ok(data) => self.send(Some(&frame.id), &ServerMessage::Ack(data)),
                    Err(e) => self.send_error(Some(&frame.id), &e),
                }
                None
            }
            Err(e) => self.refuse(e.id.as_deref(), HubError::new(e.code, e.message)),
        }
    }

    /// Answers a bad frame and counts it; too many in a minute close the socket.
    fn refuse(&mut self, id: Option<&str>, err: HubError) -> Option<Exit> {
        self.send_error(id, &err);
        if self.strikes_since.elapsed() > Duration::from_secs(60) {
            self.strikes = 0;
            self.strikes_since = Instant::now();
        }
        self.strikes += 1;
        (self.strikes > self.gw.config.max_invalid_per_minute).then_some(Exit::Close(CloseCode::ProtocolViolation))
    }

    pub(super) fn send(&mut self, id: Option<&str>, msg: &ServerMessage) {
        // An overflow is caught by the loop's length check, which closes the session.
        if self.out.push(id, msg).is_err() {
            self.link.overflowed.cancel();
        }
    }

    pub(super) fn send_error(&mut self, id: Option<&str>, err: &HubError) {
        let body = ErrorBody {
            code: err.code.as_str().to_string(),
            message: err.message.clone(),
            retry_after_secs: err.retry_after_secs,
        };
        self.send(id, &ServerMessage::Error(body));
    }

    fn push_control(&mut self, msg: Message) {
        if self.out.push_raw(msg).is_err() {
            self.link.overflowed.cancel();
        }
    }

    async fn close(mut self, sink: &mut futures_util::stream::SplitSink<WebSocket, Message>, exit: Exit) {
        for topic in std::mem::take(&mut self.topics) {
            self.gw.hub.unlisten(&topic, self.id).await;
        }
        match (self.principal.role, self.principal.visit.as_deref()) {
            (Role::Patient, Some(visit_id)) => self.gw.hub.patient_offline(visit_id).await,
            _ => self.gw.hub.caregiver_offline(&self.principal).await,
        }
        if let Exit::Close(code) = exit {
            tracing::debug!(close = code.reason(), "closing session");
            let frame = CloseFrame { code: code.code(), reason: code.reason().into() };
            // A slow consumer gets no more queued frames: only the close, briefly tried.
            let patience = if code == CloseCode::SlowConsumer {
                Duration::from_millis(200)
            } else {
                let _ = tokio::time::timeout(Duration::from_secs(2), self.out.flush(sink)).await;
                Duration::from_secs(1)
            };
            let _ = tokio::time::timeout(patience, sink.send(Message::Close(Some(frame)))).await;
        }
        let _ = tokio::time::timeout(Duration::from_millis(200), sink.close()).await;
    }
}
