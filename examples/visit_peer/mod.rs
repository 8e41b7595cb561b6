//! A small visithub client and a WebRTC peer built on webrtc-rs, shared by the `patient` and
//! `provider` examples and by `tests/webrtc_visit.rs`.
//!
//! - [`HubClient`]: the WebSocket with a bearer token; requests carry ids and wait for their
//!   `ack` or `error` (events that arrive meanwhile are kept, in order, for [`HubClient::next_event`]).
//!   Sends are paced to the `messages_per_second` the hub announces in `welcome`.
//! - [`Call`]: one side of a visit's video session. Perfect negotiation with the `polite` flag
//!   of `visit.started` (the patient is polite, the provider impolite and the one that offers),
//!   trickle ICE through the hub (`signal.candidate`, then `signal.end_of_candidates` when
//!   gathering completes), the `ice_servers` of `visit.started`, and data channels.
//! - [`run_patient`] and [`run_provider`]: the whole visit from each side.
//!
//! The wire types are the library's own (`visithub::protocol`).
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use rtc::ice::mdns::MulticastDnsMode;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use visithub::model::{UsState, VisitId, VisitStatus};
use visithub::protocol::{
    ClientMessage, QueueEntry, QueuePosition, SUBPROTOCOL, ServerFrame, ServerMessage, SignalCandidate, SignalEnd,
    SignalSdp, StateRef, VisitRef, VisitStarted, VisitTransition, VisitUpdated, Welcome, decode_server, encode_client,
};
use webrtc::data_channel::{DataChannel, DataChannelEvent};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCConfigurationBuilder, RTCIceCandidateInit,
    RTCIceGatheringState, RTCIceServer, RTCPeerConnectionIceEvent, RTCPeerConnectionState, RTCSessionDescription,
    SettingEngineBuilder,
};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Retries of a request the hub refused with `rate_limited`.
const RATE_LIMIT_RETRIES: u32 = 5;

/// A request the hub answered with an `error`.
#[derive(Debug)]
pub struct Refused {
    pub kind: &'static str,
    pub code: String,
    pub message: String,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} refused: {} ({})", self.kind, self.code, self.message)
    }
}

impl std::error::Error for Refused {}

/// A WebSocket connection to the hub.
pub struct HubClient {
    ws: Socket,
    next_id: u64,
    /// Events read while waiting for a reply, not yet handed out.
    pending: VecDeque<ServerFrame>,
    /// When recent requests went out, for pacing.
    sent_at: VecDeque<Instant>,
    pub welcome: Welcome,
}

/// `http://host:port` (or `ws://...`) to the hub's socket URL.
pub fn ws_url(hub: &str) -> Result<String> {
    let hub = hub.trim_end_matches('/');
    let rest = if let Some(rest) = hub.strip_prefix("http://") {
        format!("ws://{rest}")
    } else if hub.starts_with("ws://") {
        hub.to_string()
    } else {
        bail!("the hub URL must start with http:// or ws:// (this client has no TLS): {hub}");
    };
    Ok(format!("{rest}/v1/ws"))
}

impl HubClient {
    /// Opens the socket with `token` and reads the `welcome`.
    pub async fn connect(hub: &str, token: &str) -> Result<HubClient> {
        let mut req = ws_url(hub)?.into_client_request()?;
        let headers = req.headers_mut();
        headers.insert("authorization", HeaderValue::from_str(&format!("Bearer {token}"))?);
        headers.insert("sec-websocket-protocol", HeaderValue::from_static(SUBPROTOCOL));
        let mut ws = match tokio_tungstenite::connect_async(req).await {
            Ok((ws, _)) => ws,
            Err(tungstenite::Error::Http(resp)) => {
                let body = resp.body().as_deref().map(String::from_utf8_lossy).unwrap_or_default();
                bail!("the hub refused the socket: {} {body}", resp.status());
            }
            Err(e) => return Err(anyhow!(e).context("connecting to the hub")),
        };
        let welcome = match read_frame(&mut ws).await?.msg {
            ServerMessage::Welcome(w) => w,
            other => bail!("expected welcome, got {}", other.kind()),
        };
        Ok(HubClient { ws, next_id: 0, pending: VecDeque::new(), sent_at: VecDeque::new(), welcome })
    }

    /// Sends a request and waits for its reply: the `ack` data, or [`Refused`].
    pub async fn request(&mut self, msg: ClientMessage) -> Result<Value> {
        let kind = msg.kind();
        let mut retries = 0;
        loop {
            let id = self.send(&msg).await?;
            let reply = self.reply_to(&id).await?;
            match reply.msg {
                ServerMessage::Ack(data) => return Ok(data),
                ServerMessage::Error(e) if e.code == "rate_limited" && retries < RATE_LIMIT_RETRIES => {
                    retries += 1;
                    tokio::time::sleep(Duration::from_secs(e.retry_after_secs.unwrap_or(1))).await;
                }
                ServerMessage::Error(e) => {
                    return Err(Refused { kind, code: e.code, message: e.message }.into());
                }
                other => bail!("{kind}: unexpected reply {}", other.kind()),
            }
        }
    }

    /// The next event (a frame that is not a reply). Cancel-safe.
    pub async fn next_event(&mut self) -> Result<ServerFrame> {
        if let Some(frame) = self.pending.pop_front() {
            return Ok(frame);
        }
        read_frame(&mut self.ws).await
    }

    /// Closes the socket politely.
    pub async fn close(&mut self) {
        let _ = self.ws.close(None).await;
    }

    async fn send(&mut self, msg: &ClientMessage) -> Result<String> {
        // At most `messages_per_second` in any one-second window: within the hub's limit.
        let rate = self.welcome.limits.messages_per_second.max(1) as usize;
        let window = Duration::from_secs(1);
        while let Some(&oldest) = self.sent_at.front() {
            if oldest.elapsed() >= window {
                self.sent_at.pop_front();
            } else if self.sent_at.len() >= rate {
                tokio::time::sleep_until(oldest + window).await;
            } else {
                break;
            }
        }
        self.next_id += 1;
        let id = format!("c{}", self.next_id);
        self.ws.send(Message::Text(encode_client(&id, msg).into())).await?;
        self.sent_at.push_back(Instant::now());
        Ok(id)
    }

    async fn reply_to(&mut self, id: &str) -> Result<ServerFrame> {
        loop {
            let frame = read_frame(&mut self.ws).await?;
            if frame.id.as_deref() == Some(id) {
                return Ok(frame);
            }
            self.pending.push_back(frame);
        }
    }
}

async fn read_frame(ws: &mut Socket) -> Result<ServerFrame> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                return decode_server(text.as_str()).map_err(|e| anyhow!("undecodable frame: {e}"));
            }
            Some(Ok(Message::Close(frame))) => match frame {
                Some(f) => bail!("the hub closed the socket: {} {}", u16::from(f.code), f.reason),
                None => bail!("the hub closed the socket"),
            },
            Some(Ok(_)) => continue, // pings are answered by tungstenite
            Some(Err(e)) => return Err(anyhow!(e).context("reading from the hub")),
            None => bail!("the socket ended"),
        }
    }
}

/// A patient's visit as intake answers it.
pub struct Intake {
    pub visit_id: VisitId,
    pub patient_token: String,
    pub position: Option<u64>,
    pub estimated_wait_secs: Option<u64>,
}

/// `POST /v1/visits`.
pub async fn intake(hub: &str, display_name: &str, state: &str, reason: &str) -> Result<Intake> {
    let url = format!("{}/v1/visits", hub.trim_end_matches('/'));
    let resp = reqwest::Client::new()
        .post(url)
        .json(&json!({ "display_name": display_name, "state": state, "reason": reason }))
        .send()
        .await
        .context("intake request")?;
    let status = resp.status();
    let body: Value = resp.json().await.context("intake reply")?;
    if !status.is_success() {
        bail!("intake refused: {status} {body}");
    }
    let text = |k: &str| body[k].as_str().map(String::from).with_context(|| format!("no {k} in {body}"));
    Ok(Intake {
        visit_id: text("visit_id")?,
        patient_token: text("patient_token")?,
        position: body["position"].as_u64(),
        estimated_wait_secs: body["estimated_wait_secs"].as_u64(),
    })
}

/// How the local WebRTC peer is set up.
#[derive(Clone, Debug)]
pub struct PeerOptions {
    /// Local UDP addresses to bind, one host candidate each. A concrete address is bound as
    /// given, loopback included (`127.0.0.1:0`: both peers on this machine); the wildcard
    /// `0.0.0.0:0` means every non-loopback interface.
    pub udp_addrs: Vec<String>,
    /// Longest the call may take, from `visit.started` to the end of the visit.
    pub call_timeout: Duration,
}

impl Default for PeerOptions {
    fn default() -> Self {
        PeerOptions { udp_addrs: vec!["127.0.0.1:0".into()], call_timeout: Duration::from_secs(60) }
    }
}

/// What the peer connection's callbacks report; read by [`Call::step`].
enum PeerEvent {
    NegotiationNeeded,
    LocalCandidate(RTCIceCandidateInit),
    GatheringComplete,
    Connection(RTCPeerConnectionState),
    RemoteChannel(Arc<dyn DataChannel>),
    ChannelOpen(String),
    Message(String, String),
    ChannelClosed(String),
}

/// The callbacks only forward: all the work happens in [`Call::step`], in order.
struct Forward(mpsc::UnboundedSender<PeerEvent>);

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Forward {
    async fn on_negotiation_needed(&self) {
        let _ = self.0.send(PeerEvent::NegotiationNeeded);
    }

    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        if let Ok(init) = event.candidate.to_json() {
            let _ = self.0.send(PeerEvent::LocalCandidate(init));
        }
    }

    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            let _ = self.0.send(PeerEvent::GatheringComplete);
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        let _ = self.0.send(PeerEvent::Connection(state));
    }

    async fn on_data_channel(&self, channel: Arc<dyn DataChannel>) {
        let _ = self.0.send(PeerEvent::RemoteChannel(channel));
    }
}

/// What [`Call::step`] hands to the application; signaling is handled inside.
#[derive(Debug)]
pub enum CallEvent {
    /// A data channel (opened by either side) is open, by label.
    ChannelOpen(String),
    /// A text message on a data channel.
    Message {
        label: String,
        text: String,
    },
    ChannelClosed(String),
    Connection(RTCPeerConnectionState),
    /// `visit.updated` for this visit.
    Visit(VisitUpdated),
    /// Any other hub event.
    Hub(ServerMessage),
}

/// One side of a visit's WebRTC session, negotiated through the hub.
pub struct Call {
    pub hub: HubClient,
    pub visit_id: VisitId,
    /// From `visit.started`: the polite side yields when offers collide.
    pub polite: bool,
    pc: Arc<dyn PeerConnection>,
    events: mpsc::UnboundedReceiver<PeerEvent>,
    events_tx: mpsc::UnboundedSender<PeerEvent>,
    channels: HashMap<String, Arc<dyn DataChannel>>,
    /// Perfect negotiation: the last remote offer was ignored (impolite side, glare).
    ignore_offer: bool,
    /// Remote candidates that came before the remote description.
    early_candidates: Vec<RTCIceCandidateInit>,
    /// Candidates trickled each way, and whether the remote side said
    /// `signal.end_of_candidates`.
    pub trickle: Trickle,
}

/// Trickle ICE through the hub, counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Trickle {
    pub sent: usize,
    pub received: usize,
    pub sent_end: bool,
    pub received_end: bool,
}

impl Call {
    /// Builds the peer connection for a started visit (its ICE servers, its role).
    pub async fn start(hub: HubClient, started: VisitStarted, opts: &PeerOptions) -> Result<Call> {
        let ice_servers = (started.ice_servers.iter())
            .map(|s| RTCIceServer {
                urls: s.urls.clone(),
                username: s.username.clone().unwrap_or_default(),
                credential: s.credential.clone().unwrap_or_default(),
            })
            .collect();
        // mDNS would bind 5353 and join a multicast group, which fails on hosts with only
        // loopback; host candidates here are plain IP addresses.
        let settings = SettingEngineBuilder::new().with_multicast_dns_mode(MulticastDnsMode::Disabled).build();
        let (events_tx, events) = mpsc::unbounded_channel();
        let pc = PeerConnectionBuilder::new()
            .with_configuration(RTCConfigurationBuilder::new().with_ice_servers(ice_servers).build())
            .with_setting_engine(settings)
            .with_handler(Arc::new(Forward(events_tx.clone())))
            .with_udp_addrs(opts.udp_addrs.clone())
            .build()
            .await
            .context("building the peer connection")?;
        Ok(Call {
            hub,
            visit_id: started.visit_id,
            polite: started.polite,
            pc: Arc::new(pc),
            events,
            events_tx,
            channels: HashMap::new(),
            ignore_offer: false,
            early_candidates: Vec::new(),
            trickle: Trickle::default(),
        })
    }

    /// Creates a data channel; negotiation follows (`negotiationneeded` makes the offer).
    pub async fn open_channel(&mut self, label: &str) -> Result<()> {
        let channel = self.pc.create_data_channel(label, None).await?;
        self.adopt(label.to_string(), channel);
        Ok(())
    }

    pub async fn send_text(&self, label: &str, text: &str) -> Result<()> {
        let channel = self.channels.get(label).with_context(|| format!("no data channel {label}"))?;
        channel.send_text(text).await?;
        Ok(())
    }

    /// Closes the peer connection.
    pub async fn close(&mut self) {
        let _ = self.pc.close().await;
    }

    /// Runs signaling until something happens that the application cares about.
    pub async fn step(&mut self) -> Result<CallEvent> {
        loop {
            tokio::select! {
                frame = self.hub.next_event() => {
                    if let Some(event) = self.on_hub(frame?.msg).await? {
                        return Ok(event);
                    }
                }
                event = self.events.recv() => {
                    let event = event.context("the peer connection's events ended")?;
                    if let Some(event) = self.on_peer(event).await? {
                        return Ok(event);
                    }
                }
            }
        }
    }

    async fn on_hub(&mut self, msg: ServerMessage) -> Result<Option<CallEvent>> {
        match msg {
            ServerMessage::SignalOffer(s) if s.visit_id == self.visit_id => self.on_description(s, true).await?,
            ServerMessage::SignalAnswer(s) if s.visit_id == self.visit_id => self.on_description(s, false).await?,
            ServerMessage::SignalCandidate(c) if c.visit_id == self.visit_id => self.on_remote_candidate(c).await?,
            ServerMessage::SignalEndOfCandidates(e) if e.visit_id == self.visit_id => self.trickle.received_end = true,
            ServerMessage::VisitUpdated(u) if u.visit_id == self.visit_id => return Ok(Some(CallEvent::Visit(u))),
            other => return Ok(Some(CallEvent::Hub(other))),
        }
        Ok(None)
    }

    async fn on_peer(&mut self, event: PeerEvent) -> Result<Option<CallEvent>> {
        match event {
            PeerEvent::NegotiationNeeded => self.make_offer().await?,
            PeerEvent::LocalCandidate(init) => {
                let candidate = SignalCandidate {
                    visit_id: self.visit_id.clone(),
                    candidate: init.candidate,
                    sdp_mid: init.sdp_mid.filter(|mid| !mid.is_empty()),
                    sdp_m_line_index: init.sdp_mline_index,
                    username_fragment: init.username_fragment,
                    from: None,
                };
                self.hub.request(ClientMessage::SignalCandidate(candidate)).await?;
                self.trickle.sent += 1;
            }
            PeerEvent::GatheringComplete => {
                let end = SignalEnd { visit_id: self.visit_id.clone(), from: None };
                self.hub.request(ClientMessage::SignalEndOfCandidates(end)).await?;
                self.trickle.sent_end = true;
            }
            PeerEvent::Connection(state) => return Ok(Some(CallEvent::Connection(state))),
            PeerEvent::RemoteChannel(channel) => {
                let label = channel.label().await?;
                self.adopt(label, channel);
            }
            PeerEvent::ChannelOpen(label) => return Ok(Some(CallEvent::ChannelOpen(label))),
            PeerEvent::Message(label, text) => return Ok(Some(CallEvent::Message { label, text })),
            PeerEvent::ChannelClosed(label) => return Ok(Some(CallEvent::ChannelClosed(label))),
        }
        Ok(None)
    }

    /// Keeps a channel and forwards its events to [`Call::step`].
    fn adopt(&mut self, label: String, channel: Arc<dyn DataChannel>) {
        self.channels.insert(label.clone(), channel.clone());
        let tx = self.events_tx.clone();
        tokio::spawn(async move {
            while let Some(event) = channel.poll().await {
                let forwarded = match event {
                    DataChannelEvent::OnOpen => PeerEvent::ChannelOpen(label.clone()),
                    DataChannelEvent::OnMessage(m) => {
                        PeerEvent::Message(label.clone(), String::from_utf8_lossy(&m.data).into_owned())
                    }
                    DataChannelEvent::OnClose => PeerEvent::ChannelClosed(label.clone()),
                    _ => continue,
                };
                if tx.send(forwarded).is_err() {
                    break;
                }
            }
        });
    }

    /// Signaling state `stable`: no offer of either side pending.
    async fn is_stable(&self) -> bool {
        self.pc.pending_local_description().await.is_none() && self.pc.pending_remote_description().await.is_none()
    }

    /// `negotiationneeded`: offer from a stable state. Frames are read only between steps, so
    /// an offer that crossed ours is seen afterwards as a collision (signaling state not stable).
    async fn make_offer(&mut self) -> Result<()> {
        if !self.is_stable().await {
            return Ok(()); // the negotiation under way is followed by another if still needed
        }
        let offer = self.pc.create_offer(None).await?;
        self.pc.set_local_description(offer.clone()).await?;
        let sdp = SignalSdp { visit_id: self.visit_id.clone(), sdp: offer.sdp, ice_restart: false, from: None };
        self.hub.request(ClientMessage::SignalOffer(sdp)).await?;
        Ok(())
    }

    /// A remote offer or answer, by the perfect-negotiation rules.
    async fn on_description(&mut self, s: SignalSdp, is_offer: bool) -> Result<()> {
        let collision = is_offer && !self.is_stable().await;
        self.ignore_offer = !self.polite && collision;
        if self.ignore_offer {
            return Ok(()); // impolite: our offer wins; the polite side rolls back and answers it
        }
        if collision {
            self.pc.set_local_description(RTCSessionDescription::rollback(None)?).await?;
        }
        let desc = if is_offer { RTCSessionDescription::offer(s.sdp)? } else { RTCSessionDescription::answer(s.sdp)? };
        self.pc.set_remote_description(desc).await.context("applying the remote description")?;
        for candidate in std::mem::take(&mut self.early_candidates) {
            self.pc.add_ice_candidate(candidate).await.context("adding an early remote candidate")?;
        }
        if is_offer {
            let answer = self.pc.create_answer(None).await?;
            self.pc.set_local_description(answer.clone()).await?;
            let sdp = SignalSdp { visit_id: self.visit_id.clone(), sdp: answer.sdp, ice_restart: false, from: None };
            self.hub.request(ClientMessage::SignalAnswer(sdp)).await?;
        }
        Ok(())
    }

    async fn on_remote_candidate(&mut self, c: SignalCandidate) -> Result<()> {
        self.trickle.received += 1;
        let init = RTCIceCandidateInit {
            candidate: c.candidate,
            sdp_mid: c.sdp_mid,
            sdp_mline_index: c.sdp_m_line_index,
            username_fragment: c.username_fragment,
            url: None,
        };
        if self.pc.remote_description().await.is_none() {
            if !self.ignore_offer {
                self.early_candidates.push(init);
            }
            return Ok(());
        }
        match self.pc.add_ice_candidate(init).await {
            Err(_) if self.ignore_offer => Ok(()), // for the offer we ignored
            result => result.context("adding a remote candidate"),
        }
    }
}

/// How a visit went, from one side.
#[derive(Debug, Default)]
pub struct Outcome {
    pub visit_id: VisitId,
    /// `polite` of `visit.started`.
    pub polite: Option<bool>,
    pub channel_opened: bool,
    /// Places in line seen while waiting (patient).
    pub positions: Vec<u32>,
    /// Text received on the data channel, in order.
    pub received: Vec<String>,
    /// Statuses of the `visit.updated` events seen, in order.
    pub statuses: Vec<VisitStatus>,
    pub trickle: Trickle,
}

fn say(who: &str, what: impl fmt::Display) {
    println!("[{who}] {what}");
}

/// What either side does with an event of the call: greets on a channel that opens, keeps
/// what arrives, gives up on a failed connection. A new status of the visit is handed back,
/// for each side to act on in its own way.
async fn on_call_event(
    who: &str,
    call: &mut Call,
    out: &mut Outcome,
    event: CallEvent,
    greeting: &str,
) -> Result<Option<VisitStatus>> {
    match event {
        CallEvent::ChannelOpen(label) => {
            say(who, format_args!("data channel {label} open"));
            out.channel_opened = true;
            call.send_text(&label, greeting).await?;
        }
        CallEvent::Message { text, .. } => {
            say(who, format_args!("received: {text}"));
            out.received.push(text);
        }
        CallEvent::Connection(state) => {
            say(who, format_args!("connection {state}"));
            if state == RTCPeerConnectionState::Failed {
                bail!("the peer connection failed");
            }
        }
        CallEvent::Visit(u) => {
            say(who, format_args!("visit {}", u.status.as_str()));
            out.statuses.push(u.status);
            return Ok(Some(u.status));
        }
        _ => {}
    }
    Ok(None)
}

/// The patient's side: wait in line (answering "still there?"), then answer the provider's
/// offer, greet over the data channel, and return when the visit has ended.
/// `on_position` sees each `queue.position` while the patient waits.
pub async fn run_patient(
    hub_url: &str,
    token: &str,
    opts: &PeerOptions,
    greeting: &str,
    on_position: &mut (dyn FnMut(&QueuePosition) + Send),
) -> Result<Outcome> {
    let mut hub = HubClient::connect(hub_url, token).await?;
    let visit_id = hub.welcome.visit_id.clone().context("a patient token names its visit")?;
    let mut out = Outcome { visit_id: visit_id.clone(), ..Outcome::default() };
    say("patient", format_args!("connected, visit {visit_id}"));
    let started = loop {
        match hub.next_event().await?.msg {
            ServerMessage::QueuePosition(p) => {
                let line = format!(
                    "position {} of {} in {}, about {} s",
                    p.position, p.queue_length, p.state, p.estimated_wait_secs
                );
                say("patient", line);
                out.positions.push(p.position);
                on_position(&p);
            }
            ServerMessage::VisitStillThere(_) => {
                hub.request(ClientMessage::VisitStillHere(VisitRef { visit_id: visit_id.clone() })).await?;
            }
            ServerMessage::VisitUpdated(u) => {
                say("patient", format_args!("visit {}", u.status.as_str()));
                out.statuses.push(u.status);
                if u.status.is_final() {
                    bail!("the visit was {} before it started", u.status.as_str());
                }
            }
            ServerMessage::VisitStarted(s) if s.visit_id == visit_id => break s,
            _ => {}
        }
    };
    say("patient", format_args!("visit started with {} (polite: {})", started.peer.name, started.polite));
    out.polite = Some(started.polite);
    let mut call = Call::start(hub, started, opts).await?;
    let result = tokio::time::timeout(opts.call_timeout, async {
        loop {
            let event = call.step().await?;
            if on_call_event("patient", &mut call, &mut out, event, greeting).await?.is_some_and(|s| s.is_final()) {
                break;
            }
        }
        // A message already on its way when the visit ended still counts.
        let grace = Instant::now() + Duration::from_secs(2);
        while out.received.is_empty() {
            match tokio::time::timeout_at(grace, call.step()).await {
                Ok(Ok(CallEvent::Message { text, .. })) => {
                    say("patient", format_args!("received: {text}"));
                    out.received.push(text);
                }
                Ok(Ok(_)) => {}
                Ok(Err(_)) | Err(_) => break,
            }
        }
        anyhow::Ok(())
    })
    .await;
    out.trickle = call.trickle;
    call.close().await;
    call.hub.close().await;
    result.map_err(|_| anyhow!("the call did not finish within {:?}", opts.call_timeout))??;
    if out.statuses.last() != Some(&VisitStatus::Ended) {
        bail!("the visit ended as {:?}", out.statuses.last());
    }
    Ok(out)
}

/// Applies a queue snapshot or delta to the waiting visits of that state.
fn follow_queue(queues: &mut HashMap<UsState, Vec<QueueEntry>>, msg: ServerMessage) {
    match msg {
        ServerMessage::QueueSnapshot(s) => {
            queues.insert(s.state, s.visits);
        }
        ServerMessage::QueueDelta(d) => {
            let visits = queues.entry(d.state).or_default();
            visits.retain(|v| !d.removed.contains(&v.visit_id));
            for added in d.added {
                let at = (added.position as usize).saturating_sub(1).min(visits.len());
                visits.insert(at, added);
            }
        }
        _ => {}
    }
}

/// The provider's side: watch the queues, claim the visit waiting longest, start it, offer a
/// data channel, greet, wait for the patient's message, then end the visit.
/// `states` empty means every state the provider covers.
pub async fn run_provider(
    hub_url: &str,
    token: &str,
    states: &[UsState],
    opts: &PeerOptions,
    greeting: &str,
) -> Result<Outcome> {
    let mut hub = HubClient::connect(hub_url, token).await?;
    let states = if states.is_empty() { hub.welcome.states.clone() } else { states.to_vec() };
    if states.is_empty() {
        bail!("this provider covers no state");
    }
    for &state in &states {
        hub.request(ClientMessage::QueueSubscribe(StateRef { state })).await?;
    }
    say("provider", format_args!("{} watching {:?}", hub.welcome.subject, states));

    // Claim the visit waiting longest; someone else may be faster.
    let mut queues: HashMap<UsState, Vec<QueueEntry>> = HashMap::new();
    let visit_id = loop {
        let oldest = queues.values().flatten().min_by_key(|v| v.enqueued_at).map(|v| v.visit_id.clone());
        let Some(visit_id) = oldest else {
            follow_queue(&mut queues, hub.next_event().await?.msg);
            continue;
        };
        match hub.request(ClientMessage::VisitClaim(VisitRef { visit_id: visit_id.clone() })).await {
            Ok(_) => break visit_id,
            Err(e) => {
                let code = e.downcast_ref::<Refused>().map(|r| r.code.as_str());
                if !matches!(code, Some("visit_already_claimed" | "invalid_transition" | "visit_not_found")) {
                    return Err(e);
                }
                say("provider", format_args!("could not claim {visit_id}: {e}"));
                queues.values_mut().for_each(|q| q.retain(|v| v.visit_id != visit_id));
            }
        }
    };
    say("provider", format_args!("claimed {visit_id}"));
    for &state in &states {
        hub.request(ClientMessage::QueueUnsubscribe(StateRef { state })).await?;
    }
    let mut out = Outcome { visit_id: visit_id.clone(), ..Outcome::default() };
    let to = |status| ClientMessage::VisitTransition(VisitTransition { visit_id: visit_id.clone(), to: status });
    hub.request(to(VisitStatus::InVisit)).await?;
    let started = loop {
        match hub.next_event().await?.msg {
            ServerMessage::VisitStarted(s) if s.visit_id == visit_id => break s,
            ServerMessage::VisitUpdated(u) if u.visit_id == visit_id => out.statuses.push(u.status),
            _ => {}
        }
    };
    say("provider", format_args!("visit started with {} (polite: {})", started.peer.name, started.polite));
    out.polite = Some(started.polite);

    let mut call = Call::start(hub, started, opts).await?;
    let result = tokio::time::timeout(opts.call_timeout, async {
        call.open_channel("visit").await?;
        while out.received.is_empty() {
            let event = call.step().await?;
            if let Some(status) = on_call_event("provider", &mut call, &mut out, event, greeting).await?
                && status.is_final()
            {
                bail!("the visit was {} during the call", status.as_str());
            }
        }
        say("provider", "ending the visit");
        call.hub.request(to(VisitStatus::WrapUp)).await?;
        call.hub.request(to(VisitStatus::Ended)).await?;
        while out.statuses.last() != Some(&VisitStatus::Ended) {
            if let CallEvent::Visit(u) = call.step().await? {
                say("provider", format_args!("visit {}", u.status.as_str()));
                out.statuses.push(u.status);
            }
        }
        anyhow::Ok(())
    })
    .await;
    out.trickle = call.trickle;
    call.close().await;
    call.hub.close().await;
    result.map_err(|_| anyhow!("the call did not finish within {:?}", opts.call_timeout))??;
    Ok(out)
}
