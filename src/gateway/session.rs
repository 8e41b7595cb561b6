//! One task per session, one `select!` loop: client frames, bus events, queue boards,
//! heartbeats, token expiry, shutdown, resumption and writing. Reading pauses while the
//! outbound queue is half full, and boards are read only when it is empty, so a slow client
//! gets the newest queue value rather than a backlog and its memory stays bounded; a client
//! that stops reading altogether is closed as a slow consumer. When the socket is lost the
//! session waits, detached, for its client to resume on a new socket.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::time::{Instant, sleep_until};
use tokio_stream::StreamMap;
use tokio_stream::wrappers::WatchStream;
use tracing::Instrument;

use super::Gateway;
use super::connections::ConnectionGuard;
use super::outbound::Outbound;
use super::resume::Resume;
use crate::auth::Principal;
use crate::bus::Topic;
use crate::config::Config;
use crate::error::{ErrorCode, HubError};
use crate::hub::alarm::{Alarm, OVERFLOW, RESUME, SHUTDOWN};
use crate::hub::{QueueView, Scope, SessionLink};
use crate::model::{Role, UsState};
use crate::protocol::{
    CloseCode, ErrorBody, PROTOCOL_VERSION, ProviderPresence, QueuePosition, ServerMessage, SessionLimits,
    SessionResumed, SharedFrame, Welcome, decode_client,
};

type Sink = SplitSink<WebSocket, Message>;
type Stream = SplitStream<WebSocket>;

/// Why the loop ended, or why the socket went.
pub(super) enum Exit {
    Close(CloseCode),
    /// The client closed or the connection broke: nothing more to send on this socket.
    Gone,
    /// The client came back on a new socket.
    Resumed(Box<Resume>),
    /// Another node took the session over (cluster mode).
    HandedOver,
}

/// How a session begins.
pub enum Start {
    /// A new session; `recovered: Some(false)` when the client asked to resume one that could
    /// not be resumed.
    New { recovered: Option<bool> },
    /// The client asked to resume a session this node does not hold: another node may.
    TakeOver { session_id: uuid::Uuid, last_seq: u64 },
}

pub(super) struct Session {
    pub gw: Arc<Gateway>,
    pub id: u64,
    pub session_id: uuid::Uuid,
    pub principal: Principal,
    pub out: Outbound,
    /// Queue boards this session watches, by state.
    pub boards: StreamMap<UsState, WatchStream<Arc<QueueView>>>,
    /// The last view sent per state (caregivers get deltas against it). B-tree maps: empty,
    /// they are half a `HashMap`'s size, and most sessions never fill them.
    pub sent_views: BTreeMap<UsState, Arc<QueueView>>,
    /// The last position sent to a patient (boxed: other roles carry only the pointer).
    pub sent_position: Option<Box<QueuePosition>>,
    /// The last presence sent per provider, to a caregiver of several states (see `on_event`).
    pub sent_presence: BTreeMap<String, ProviderPresence>,
    pub topics: Vec<Topic>,
    pub link: SessionLink,
    pub token_deadline: Instant,
    /// The connection slot of the current socket; none while detached.
    pub guard: Option<ConnectionGuard>,
    limiter: DefaultDirectRateLimiter,
    strikes: u32,
    strikes_since: Instant,
    /// When a waiting patient is next asked "still there?", and by when they must answer.
    pub still_there_at: Option<Instant>,
    pub answer_by: Option<Instant>,
    /// The node is draining and this session's socket was told so (cluster mode: the session
    /// waits, detached, to be handed over).
    drained: bool,
}

/// A session on `socket`, new or taken over from another node.
///
/// The session's future is a connection's largest allocation and lives as long as the socket,
/// mostly idle. So the setup is done here, before it: an async fn would keep its arguments
/// (the whole socket among them) in the future for its whole life. And what runs only now
/// and then (opening, a request, an event, closing) is boxed for as long as it runs, so the
/// idle future holds little more than the loop.
pub fn run(
    socket: WebSocket,
    gw: Arc<Gateway>,
    principal: Principal,
    guard: ConnectionGuard,
    id: u64,
    start: Start,
) -> impl Future<Output = ()> + Send {
    let span = tracing::info_span!("session", id, role = principal.role.as_str());
    // The connection slot's copy of the subject, shared: one allocation per user, not per map.
    let subject = guard.subject().clone();
    // The session's inbox too: bus events wait there, at most an outbound queue's worth.
    let alarm = Arc::new(Alarm::new(gw.config.outbound_queue));
    let session_id = match &start {
        Start::TakeOver { session_id, .. } => *session_id,
        Start::New { .. } => uuid::Uuid::new_v4(),
    };
    gw.resumable.register(session_id, subject.clone(), alarm.clone());
    if gw.shutdown.is_cancelled() {
        // Raised before this session was there to be told.
        alarm.raise(SHUTDOWN);
    }
    let link = SessionLink { id, subject, alarm };
    let rate = NonZeroU32::new(gw.config.rate_for(principal.role)).unwrap_or(NonZeroU32::MIN);
    let window = (gw.config.replay_window_frames, gw.config.replay_window_bytes);
    let mut session = Session {
        out: Outbound::new(gw.config.outbound_queue, window, gw.hub.metrics().clone()),
        boards: StreamMap::new(),
        sent_views: BTreeMap::new(),
        sent_position: None,
        sent_presence: BTreeMap::new(),
        topics: Vec::new(),
        token_deadline: deadline_of(principal.expires_at),
        guard: Some(guard),
        limiter: RateLimiter::direct_with_clock(Quota::per_second(rate), gw.rate_clock.clone()),
        strikes: 0,
        strikes_since: Instant::now(),
        still_there_at: None,
        answer_by: None,
        drained: false,
        link,
        principal,
        session_id,
        id,
        gw,
    };
    let (sink, stream) = socket.split();
    let (mut sink, mut stream) = (Some(sink), Some(stream));
    let metrics = session.gw.hub.metrics().clone();
    let role = session.principal.role.as_str();
    metrics.connections_accepted.with_label_values(&[role]).inc();
    metrics.connections_open.with_label_values(&[role]).inc();
    async move {
        let opened = match start {
            Start::New { recovered } => Box::pin(session.open(recovered)).await,
            Start::TakeOver { last_seq, .. } => match Box::pin(session.take_over(last_seq)).await {
                Some(replayed) => Box::pin(session.taken_over(replayed)).await,
                None => {
                    // Not to be had: a new session, and the client reloads its state.
                    Box::pin(session.forget_takeover()).await;
                    Box::pin(session.open(Some(false))).await
                }
            },
        };
        let exit = match opened {
            Ok(()) => session.serve(&mut sink, &mut stream).await,
            Err(e) => {
                tracing::warn!(error = %e, "session setup failed");
                Exit::Close(CloseCode::ServerShutdown)
            }
        };
        let reason = match &exit {
            Exit::Close(code) => code.reason(),
            Exit::HandedOver => "handed_over",
            Exit::Gone | Exit::Resumed(_) => "client_gone",
        };
        metrics.disconnects.with_label_values(&[reason]).inc();
        Box::pin(session.close(sink, exit)).await;
    }
    .instrument(span)
}

impl Session {
    /// Whether its socket is lost and it waits for its client to resume.
    pub(super) fn is_detached(&self) -> bool {
        self.guard.is_none()
    }
}

/// The session's timings from its configuration, made where they are needed: kept as locals of
/// the loop they would live in every idle session's future (64 bytes of it).
struct Timings {
    ping_every: Duration,
    /// How long a socket may say nothing (not even a pong) before it counts as dead.
    silence_limit: Duration,
    write_timeout: Duration,
    resume_window: Duration,
}

impl Timings {
    fn of(cfg: &Config) -> Timings {
        let ping_every = Duration::from_secs(cfg.ping_interval_secs);
        Timings {
            ping_every,
            silence_limit: ping_every + Duration::from_secs(cfg.pong_timeout_secs),
            write_timeout: Duration::from_millis(cfg.write_timeout_ms),
            resume_window: Duration::from_secs(cfg.resume_window_secs),
        }
    }
}

/// A deadline that never comes in practice: no deadline.
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(365 * 24 * 3600)
}

/// The instant a token's `exp` (epoch seconds) falls due.
pub(super) fn deadline_of(exp: i64) -> Instant {
    let left = exp - chrono::Utc::now().timestamp();
    Instant::now() + Duration::from_secs(left.clamp(0, 10 * 365 * 24 * 3600) as u64)
}

async fn next_frame(stream: &mut Option<Stream>) -> Option<Result<Message, axum::Error>> {
    match stream {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

impl Session {
    /// Welcome, then the subscriptions every session of this role has.
    async fn open(&mut self, recovered: Option<bool>) -> anyhow::Result<()> {
        self.start_journal();
        if self.out.journal.is_some() {
            self.listen(Topic::Session(self.session_id.to_string())).await?;
        }
        let cfg = &self.gw.config;
        let welcome = Welcome {
            protocol: PROTOCOL_VERSION,
            session_id: self.session_id.to_string(),
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
            recovered,
        };
        self.send(None, &ServerMessage::Welcome(welcome));
        self.subscribe_for_role().await?;
        self.sync_journal_meta();
        Ok(())
    }

    /// Cluster mode: journal this session's frames and topics in live state, and listen for
    /// the marker of a node taking it over.
    fn start_journal(&mut self) {
        let Some(writer) = &self.gw.journal else { return };
        let cfg = &self.gw.config;
        let ttl = cfg.resume_window_secs + cfg.shutdown_grace_secs + 60;
        self.out.journal =
            Some(Box::new(writer.for_session(&self.session_id.to_string(), cfg.replay_window_frames, ttl)));
    }

    /// Writes the journal meta again if the topics or boards changed since last time.
    pub(super) fn sync_journal_meta(&mut self) {
        let Some(journal) = &mut self.out.journal else { return };
        // Called once per loop turn: compare without allocating.
        let (topics, boards) = &journal.written_meta;
        if *topics == self.topics && self.boards.keys().copied().eq(boards.iter().copied()) {
            return;
        }
        let boards: Vec<UsState> = self.boards.keys().copied().collect();
        journal.written_meta = (self.topics.clone(), boards.clone());
        let meta = crate::live::SessionMeta {
            subject: self.principal.subject.clone(),
            node: self.gw.hub.node_id().to_string(),
            topics: self.topics.iter().map(ToString::to_string).collect(),
            boards,
        };
        journal.meta(meta);
    }

    /// The take-over worked: this node holds the session now.
    async fn taken_over(&mut self, replayed: u64) -> anyhow::Result<()> {
        self.start_journal();
        self.sync_journal_meta();
        match (self.principal.role, self.principal.visit.clone()) {
            (Role::Patient, Some(visit_id)) => self.gw.hub.patient_online(&visit_id),
            _ => self.gw.hub.caregiver_online(&self.principal).await?,
        }
        tracing::debug!(replayed, "session taken over from another node");
        let resumed = SessionResumed { session_id: self.session_id.to_string(), recovered: true, replayed };
        self.send(None, &ServerMessage::SessionResumed(resumed));
        Ok(())
    }

    /// A take-over that did not work leaves nothing behind: a new session starts.
    async fn forget_takeover(&mut self) {
        for topic in std::mem::take(&mut self.topics) {
            self.gw.hub.unlisten(&topic, self.id).await;
        }
        self.boards = StreamMap::new();
        // Registered under the new id before the old one goes: a shutdown always finds it.
        let old = std::mem::replace(&mut self.session_id, uuid::Uuid::new_v4());
        self.gw.resumable.register(self.session_id, self.link.subject.clone(), self.link.alarm.clone());
        self.gw.resumable.remove(old);
    }

    /// Routes a topic to this session (once).
    pub(super) async fn listen(&mut self, topic: Topic) -> anyhow::Result<()> {
        if !self.topics.contains(&topic) {
            self.gw.hub.listen(topic.clone(), self.link.clone()).await?;
            // Most sessions listen to one topic (staff, admins) or two (a patient's visit and its
            // signaling): room for those, not a first push's four. More grow as usual.
            if self.topics.len() < 2 {
                self.topics.reserve_exact(1);
            }
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

    async fn serve(&mut self, sink: &mut Option<Sink>, stream: &mut Option<Stream>) -> Exit {
        let cfg = self.gw.config.clone();
        // Pings share the session's one timer.
        let mut ping_at = Instant::now() + Timings::of(&cfg).ping_every;
        let mut last_heard = Instant::now();
        // When the outbound queue last made progress (or became non-empty).
        let mut progress_at = Instant::now();
        // While detached: when the session gives up waiting for its client.
        let mut detached_until = far_future();
        let alarm = self.link.alarm.clone();
        // Made once and moved on every turn: a timer made per turn would register (and drop)
        // its entry each time, and a busy session turns once per frame.
        let mut timer = std::pin::pin!(sleep_until(far_future()));
        loop {
            let written_before = self.out.written();
            let was_empty = self.out.is_empty();
            let attached = sink.is_some();
            {
                // Moved only earlier, or once it has fired: a deadline that moves later (the
                // write timeout after every write) costs one early wake-up instead of two
                // timer-wheel updates per frame. (In a block: what the loop keeps across its
                // wait lives in every idle session.)
                let write_by = progress_at + Timings::of(&cfg).write_timeout;
                let due = self.next_deadline(attached, write_by, detached_until, ping_at);
                if due < timer.deadline() || timer.is_elapsed() {
                    timer.as_mut().reset(due);
                }
            }
            // A drained session has been told of the shutdown already.
            let watched = if self.drained { OVERFLOW | RESUME } else { OVERFLOW | SHUTDOWN | RESUME };
            let exit = tokio::select! {
                biased;
                cause = std::future::poll_fn(|cx| alarm.poll_raised(cx, watched)) => {
                    if cause & (OVERFLOW | SHUTDOWN) == 0 {
                        // The client came back on a new socket. Lowered before taking it: one
                        // handed over after this is raised again, not missed.
                        alarm.clear(RESUME);
                        self.gw.resumable.take(self.session_id).map(Exit::Resumed)
                    } else if cause & SHUTDOWN == 0 {
                        Some(Exit::Close(CloseCode::SlowConsumer))
                    } else if self.out.journal.is_some() {
                        // Cluster: the client reconnects elsewhere, and this session waits,
                        // detached, for the node it lands on to take it over.
                        self.drained = true;
                        if let Some(old) = sink.take() {
                            Box::pin(close_socket(old, CloseCode::ServerShutdown, Duration::from_millis(500))).await;
                            *stream = None;
                            Box::pin(self.left()).await;
                        }
                        detached_until = Instant::now() + Timings::of(&cfg).resume_window;
                        None
                    } else {
                        Some(Exit::Close(CloseCode::ServerShutdown))
                    }
                }
                _ = &mut timer => {
                    let now = Instant::now();
                    if now >= self.token_deadline {
                        Some(Exit::Close(CloseCode::TokenExpired))
                    } else if !attached && now >= detached_until {
                        return Exit::Gone;
                    } else if attached && self.out.needs_flush() && now >= progress_at + Timings::of(&cfg).write_timeout {
                        Some(Exit::Close(CloseCode::SlowConsumer))
                    } else if attached && now >= ping_at {
                        ping_at = now + Timings::of(&cfg).ping_every;
                        if last_heard.elapsed() > Timings::of(&cfg).silence_limit {
                            Some(Exit::Close(CloseCode::HeartbeatTimeout))
                        } else {
                            self.push_control(Message::Ping(Default::default()));
                            None
                        }
                    } else {
                        Box::pin(self.on_still_there_due(now)).await;
                        None
                    }
                }
                frame = next_frame(stream), if attached && self.out.has_room() => {
                    last_heard = Instant::now();
                    match frame {
                        Some(Ok(msg)) => Box::pin(self.on_frame(msg)).await,
                        Some(Err(e)) => Some(self.on_read_error(e)),
                        None => Some(Exit::Gone),
                    }
                }
                event = std::future::poll_fn(|cx| alarm.poll_event(cx)), if self.out.has_room() => {
                    Box::pin(self.on_event(&event)).await
                }
                Some((state, view)) = self.boards.next(), if self.out.is_empty() => {
                    self.on_view(state, view);
                    None
                }
                // Written last: what the client and the bus have ready is taken first, so the
                // frames it produces leave together in one write instead of one write each.
                res = self.out.flush(sink), if attached && self.out.needs_flush() => res.err().map(|_| Exit::Gone),
            };
            match exit {
                None => self.sync_journal_meta(),
                // A patient whose visit is over has nothing to come back to: keeping the
                // session (and what it was sent) for the resume window would hold every
                // finished visit's frames in memory for that long.
                Some(Exit::Gone) if self.visit_is_over() => return Exit::Gone,
                Some(Exit::Gone) => {
                    // Keep the session (and what it is sent) for a client that comes back.
                    Box::pin(self.detach(sink, stream)).await;
                    detached_until = Instant::now() + Timings::of(&cfg).resume_window;
                }
                Some(Exit::Resumed(resume)) => {
                    if let Some(old) = sink.take() {
                        // The client moved to a new socket before this one was seen to drop. It
                        // is closed aside: a socket its client dropped would hold the resume up
                        // for the close's whole patience, and a storm of resumes with it.
                        // Tracked with the sessions, so a shutdown waits for it too.
                        self.gw.sessions.spawn(close_socket(
                            old,
                            CloseCode::SessionResumed,
                            Duration::from_millis(200),
                        ));
                        *stream = None;
                        Box::pin(self.left()).await;
                    }
                    Box::pin(self.attach(*resume, sink, stream)).await;
                    (last_heard, progress_at, detached_until) = (Instant::now(), Instant::now(), far_future());
                    ping_at = Instant::now() + Timings::of(&cfg).ping_every;
                    continue;
                }
                Some(exit) => return exit,
            }
            if self.out.written() != written_before || (was_empty && !self.out.is_empty()) {
                progress_at = Instant::now();
            }
            if self.out.len() > cfg.outbound_queue {
                return Exit::Close(CloseCode::SlowConsumer);
            }
        }
    }

    /// The earliest moment something is due: token expiry, giving up on a detached client, a
    /// write that took too long, the next ping, "still there?" or its answer.
    fn next_deadline(&self, attached: bool, write_by: Instant, detached_until: Instant, ping_at: Instant) -> Instant {
        let mut due = self.token_deadline;
        if !attached {
            due = due.min(detached_until);
        }
        if attached {
            due = due.min(ping_at);
        }
        if attached && self.out.needs_flush() {
            due = due.min(write_by);
        }
        match (self.answer_by, self.still_there_at) {
            (Some(by), _) => due.min(by),
            (None, Some(at)) => due.min(at),
            (None, None) => due,
        }
    }

    /// A waiting patient is asked "still there?"; one who did not answer in time is abandoned.
    async fn on_still_there_due(&mut self, now: Instant) {
        if self.answer_by.is_some_and(|by| now >= by) {
            self.answer_by = None;
            self.still_there_at = None;
            if let Some(visit_id) = self.principal.visit.clone() {
                self.gw.hub.abandon(&visit_id).await;
            }
        } else if self.answer_by.is_none() && self.still_there_at.is_some_and(|at| now >= at) {
            self.ask_still_there();
        }
    }

    async fn detach(&mut self, sink: &mut Option<Sink>, stream: &mut Option<Stream>) {
        *stream = None;
        if sink.take().is_some() {
            self.left().await;
        }
    }

    /// A patient's visit ended, was cancelled or abandoned (here or on another node).
    fn visit_is_over(&self) -> bool {
        self.principal.role == Role::Patient
            && self.principal.visit.as_deref().is_some_and(|visit_id| self.gw.hub.visit_is_over(visit_id))
    }

    /// The socket is gone: the slot is free, and the user counts as offline (a patient's
    /// abandonment grace starts) until they come back. The session counts as detached until
    /// a socket is attached again or it closes.
    async fn left(&mut self) {
        let role = [self.principal.role.as_str()];
        self.gw.hub.metrics().connections_open.with_label_values(&role).dec();
        self.gw.hub.metrics().sessions_detached.with_label_values(&role).inc();
        self.guard = None;
        match (self.principal.role, self.principal.visit.clone()) {
            (Role::Patient, Some(visit_id)) => self.gw.hub.patient_offline(&visit_id).await,
            _ => self.gw.hub.caregiver_offline(&self.principal).await,
        }
    }

    /// Takes the new socket: replays what the client missed, then `session.resumed`.
    async fn attach(&mut self, resume: Resume, sink: &mut Option<Sink>, stream: &mut Option<Stream>) {
        let Resume { socket, last_seq, principal, guard } = resume;
        let (new_sink, new_stream) = socket.split();
        (*sink, *stream) = (Some(new_sink), Some(new_stream));
        let role = [self.principal.role.as_str()];
        self.gw.hub.metrics().connections_open.with_label_values(&role).inc();
        self.gw.hub.metrics().sessions_detached.with_label_values(&role).dec();
        self.guard = Some(guard);
        match (self.principal.role, self.principal.visit.clone()) {
            (Role::Patient, Some(visit_id)) => self.gw.hub.patient_online(&visit_id),
            _ => {
                if let Err(e) = self.gw.hub.caregiver_online(&self.principal).await {
                    tracing::warn!(error = %e, "presence not restored");
                }
            }
        }
        self.token_deadline = deadline_of(principal.expires_at);
        self.principal.expires_at = principal.expires_at;
        let before = self.out.seq();
        let recovered = self.out.replay_after(last_seq);
        let replayed = if recovered { before - last_seq } else { 0 };
        if !recovered {
            // The client reloads its state: boards start over with a snapshot and position.
            self.sent_views.clear();
            self.sent_position = None;
            let states: Vec<UsState> = self.boards.keys().copied().collect();
            for state in states {
                self.boards.insert(state, WatchStream::new(self.gw.hub.watch_queue(state)));
            }
        }
        tracing::debug!(recovered, replayed, "session resumed");
        let resumed = SessionResumed { session_id: self.session_id.to_string(), recovered, replayed };
        self.send(None, &ServerMessage::SessionResumed(resumed));
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
                self.gw.hub.metrics().messages_in.inc(frame.msg.index());
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
            self.link.alarm.raise(OVERFLOW);
        }
    }

    /// [`Session::send`] for an event encoded once for many sessions.
    pub(super) fn send_shared(&mut self, frame: &Arc<SharedFrame>) {
        if self.out.push_shared(frame).is_err() {
            self.link.alarm.raise(OVERFLOW);
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
            self.link.alarm.raise(OVERFLOW);
        }
    }

    async fn close(mut self, sink: Option<Sink>, exit: Exit) {
        self.gw.resumable.remove(self.session_id);
        // A session handed over lives on elsewhere, journal included; any other is over.
        let exit = match exit {
            Exit::HandedOver => Exit::Close(CloseCode::SessionResumed),
            other => {
                if let Some(journal) = &mut self.out.journal {
                    journal.discard();
                }
                other
            }
        };
        for topic in std::mem::take(&mut self.topics) {
            self.gw.hub.unlisten(&topic, self.id).await;
        }
        if sink.is_some() {
            self.left().await;
        }
        // Detached by `left`, here or earlier: over now.
        self.gw.hub.metrics().sessions_detached.with_label_values(&[self.principal.role.as_str()]).dec();
        let (Some(mut sink), Exit::Close(code)) = (sink, exit) else { return };
        tracing::debug!(close = code.reason(), "closing session");
        // A slow consumer gets no more queued frames: only the close, briefly tried.
        let patience = if code == CloseCode::SlowConsumer {
            Duration::from_millis(200)
        } else {
            let mut attached = Some(sink);
            let _ = tokio::time::timeout(Duration::from_secs(2), self.out.flush(&mut attached)).await;
            sink = attached.expect("flush leaves the sink in place");
            Duration::from_secs(1)
        };
        close_socket(sink, code, patience).await;
    }
}

/// Sends a close frame (trying for at most `patience`) and closes the socket.
async fn close_socket(mut sink: Sink, code: CloseCode, patience: Duration) {
    let frame = CloseFrame { code: code.code(), reason: code.reason().into() };
    let _ = tokio::time::timeout(patience, sink.send(Message::Close(Some(frame)))).await;
    let _ = tokio::time::timeout(Duration::from_millis(200), sink.close()).await;
}
