//! One client socket: connect (optionally from a given source address), read the `welcome`,
//! send requests paced under the session's advertised rate limit, and read hub frames while
//! checking their sequence numbers, so every lost or repeated frame is counted.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt, stream};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use visithub::protocol::{
    ClientMessage, CloseCode, SUBPROTOCOL, ServerFrame, ServerMessage, VisitRef, Welcome, decode_server, encode_client,
};

use crate::stats::{Latency, Stats};
use crate::target::Targets;

/// How long a reply may take before it counts as `reply_timeout`.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// How many handshakes are in flight at once from one process, unless told otherwise.
pub const CONNECT_CONCURRENCY: usize = 256;

/// Where and as whom to connect.
pub struct Dial<'a> {
    pub addr: SocketAddr,
    pub token: &'a str,
    /// Bind the socket to this source address first (127.0.0.2, ...), to use more ports.
    pub source: Option<IpAddr>,
}

/// Why a socket did not open or ended: a documented error or close code where the hub gave one.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnError(pub String);

/// How a resumption went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resumed {
    /// Every missed frame was replayed (`session.resumed`, `recovered: true`).
    Recovered,
    /// The session or its frames were gone (`recovered: false`): the client reloads its state.
    NotRecovered,
}

type Ws = WebSocketStream<TcpStream>;

pub struct Conn {
    ws: Option<Ws>,
    pub welcome: Welcome,
    /// The `seq` of the last hub frame read.
    pub last_seq: u64,
    next_id: u64,
    /// Frames read ahead (while pacing or waiting for a reply), with when they arrived.
    pending: VecDeque<(ServerFrame, Instant)>,
    pacer: DefaultDirectRateLimiter,
    stats: Arc<Stats>,
}

/// Client sockets hold many idle connections: small buffers, as the hub uses. Frames fed
/// back to back (`feed_now`) wait in up to 8 KiB until `flush`, and leave in one write.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(4 * 1024).write_buffer_size(8 * 1024)
}

/// One clock for every pacer: making one runs CPUID and a calibration, which cost a sixth of
/// the load generator's CPU when each connection made its own.
static PACE_CLOCK: LazyLock<DefaultClock> = LazyLock::new(DefaultClock::default);

/// Paces sends under the hub's per-socket limit (`limits.messages_per_second` of `welcome`),
/// with a margin, so a run measures the hub rather than its own refusals.
fn pacer(limit: u32) -> DefaultDirectRateLimiter {
    let rate = NonZeroU32::new((limit * 9 / 10).max(1)).expect("at least 1");
    let burst = NonZeroU32::new((limit / 2).max(1)).expect("at least 1");
    RateLimiter::direct_with_clock(Quota::per_second(rate).allow_burst(burst), PACE_CLOCK.clone())
}

async fn tcp(addr: SocketAddr, source: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    if let Some(ip) = source {
        bind_address_no_port(&socket);
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// IP_BIND_ADDRESS_NO_PORT: the port is chosen at connect time, per destination, so one source
/// address is not limited to one socket per ephemeral port across all destinations.
fn bind_address_no_port(socket: &TcpSocket) {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: a valid socket fd and a c_int option value of the right size.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Opens the WebSocket; a refused handshake is its problem `code`.
async fn handshake(dial: &Dial<'_>, query: &str) -> Result<Ws, ConnError> {
    let stream = tcp(dial.addr, dial.source).await.map_err(|_| ConnError("connect_failed".into()))?;
    let mut req = format!("ws://{}/v1/ws{query}", dial.addr).into_client_request().expect("a valid URL");
    let headers = req.headers_mut();
    headers.insert("authorization", HeaderValue::from_str(&format!("Bearer {}", dial.token)).expect("ASCII token"));
    headers.insert("sec-websocket-protocol", HeaderValue::from_static(SUBPROTOCOL));
    match tokio_tungstenite::client_async_with_config(req, stream, Some(ws_config())).await {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::Error::Http(resp)) => {
            let status = resp.status().as_u16();
            let code = resp
                .body()
                .as_ref()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
                .and_then(|v| v["code"].as_str().map(str::to_string));
            Err(ConnError(code.unwrap_or_else(|| format!("http_{status}"))))
        }
        Err(_) => Err(ConnError("handshake_failed".into())),
    }
}

impl Conn {
    /// Connects and reads the `welcome`; the time to it is recorded as `connect` latency.
    pub async fn open(dial: &Dial<'_>, stats: Arc<Stats>) -> Result<Conn, ConnError> {
        let started = Instant::now();
        let result = Conn::open_inner(dial, stats.clone()).await;
        match &result {
            Ok(_) => stats.record(Latency::Connect, started.elapsed()),
            Err(e) => stats.error(&e.0),
        }
        result
    }

    /// Opens one socket per token, at most `concurrency` handshakes in flight, round-robin over
    /// the nodes; failures are counted by code. The result keeps the order of `tokens`, `None`
    /// where a socket failed.
    pub async fn open_all(
        targets: &Targets,
        tokens: Vec<String>,
        source: Option<IpAddr>,
        concurrency: usize,
        stats: &Arc<Stats>,
    ) -> Vec<Option<Conn>> {
        let mut conns: Vec<Option<Conn>> = std::iter::repeat_with(|| None).take(tokens.len()).collect();
        // Unordered: a slow handshake does not hold back the ones behind it.
        let mut opened = stream::iter(tokens.into_iter().enumerate())
            .map(|(i, token)| {
                let addr = targets.pick().addr;
                async move { (i, Conn::open(&Dial { addr, token: &token, source }, stats.clone()).await.ok()) }
            })
            .buffer_unordered(concurrency.max(1));
        while let Some((i, conn)) = opened.next().await {
            conns[i] = conn;
        }
        conns
    }

    async fn open_inner(dial: &Dial<'_>, stats: Arc<Stats>) -> Result<Conn, ConnError> {
        let mut ws = handshake(dial, "").await?;
        let frame = tokio::time::timeout(REPLY_TIMEOUT, read_text(&mut ws))
            .await
            .map_err(|_| ConnError("welcome_timeout".into()))??;
        stats.received.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let ServerMessage::Welcome(welcome) = frame.msg else {
            return Err(ConnError("no_welcome".into()));
        };
        stats.open.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(Conn {
            ws: Some(ws),
            pacer: pacer(welcome.limits.messages_per_second),
            welcome,
            last_seq: frame.seq.unwrap_or(1),
            next_id: 0,
            pending: VecDeque::new(),
            stats,
        })
    }

    pub fn session_id(&self) -> &str {
        &self.welcome.session_id
    }

    pub fn is_open(&self) -> bool {
        self.ws.is_some()
    }

    /// Drops the socket without a close frame, as a lost network does.
    pub fn drop_socket(&mut self) {
        if self.ws.take().is_some() {
            self.stats.open.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Reconnects to the same session with `last_seq`, reads the replayed frames (checked like
    /// any others, kept for [`Conn::next`]) up to `session.resumed`. A `welcome` instead means
    /// the hub no longer held the session: a new one starts.
    pub async fn resume(&mut self, dial: &Dial<'_>) -> Result<Resumed, ConnError> {
        self.drop_socket();
        let query = format!("?session_id={}&last_seq={}", self.welcome.session_id, self.last_seq);
        let ws = handshake(dial, &query).await.inspect_err(|e| self.stats.error(&e.0))?;
        self.ws = Some(ws);
        self.stats.open.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        loop {
            let frame = self.read_frame(REPLY_TIMEOUT).await?;
            match frame.msg {
                ServerMessage::SessionResumed(r) if r.recovered => return Ok(Resumed::Recovered),
                ServerMessage::SessionResumed(_) => return Ok(Resumed::NotRecovered),
                ServerMessage::Welcome(w) => {
                    self.welcome = w;
                    return Ok(Resumed::NotRecovered);
                }
                _ => self.pending.push_back((frame, Instant::now())),
            }
        }
    }

    /// Sends a request, paced under the session's rate limit, and returns its id.
    pub async fn send(&mut self, msg: &ClientMessage) -> Result<String, ConnError> {
        self.pace().await?;
        self.send_now(msg).await
    }

    /// Waits until the session's rate limit lets one more message go (then use `send_now`,
    /// so a timestamp taken in between excludes the wait). Frames keep being read meanwhile,
    /// as a real client does, and keep their arrival time.
    pub async fn pace(&mut self) -> Result<(), ConnError> {
        loop {
            let wait = match self.pacer.check() {
                Ok(()) => return Ok(()),
                Err(not_until) => not_until.wait_time_from(PACE_CLOCK.now()),
            };
            match self.read_frame(wait).await {
                Ok(frame) => self.pending.push_back((frame, Instant::now())),
                Err(e) if e.0 == "timeout" => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// The id the next request will carry (to note it before sending).
    pub fn next_request_id(&self) -> String {
        format!("r{}", self.next_id + 1)
    }

    /// Sends a request without waiting for the pacer; returns its id.
    pub async fn send_now(&mut self, msg: &ClientMessage) -> Result<String, ConnError> {
        let id = self.feed_now(msg).await?;
        self.flush().await?;
        Ok(id)
    }

    /// Like `send_now`, but the frame waits in the socket's write buffer until `flush` (or
    /// until 8 KiB are waiting), as a client batching its messages; returns its id.
    pub async fn feed_now(&mut self, msg: &ClientMessage) -> Result<String, ConnError> {
        self.next_id += 1;
        let id = format!("r{}", self.next_id);
        let text = encode_client(&id, msg);
        let ws = self.ws.as_mut().ok_or_else(|| ConnError("socket_closed".into()))?;
        ws.feed(Message::Text(text.into())).await.map_err(|_| self.ended("send_failed"))?;
        self.stats.sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(id)
    }

    /// Writes what `feed_now` left waiting.
    pub async fn flush(&mut self) -> Result<(), ConnError> {
        let ws = self.ws.as_mut().ok_or_else(|| ConnError("socket_closed".into()))?;
        ws.flush().await.map_err(|_| self.ended("send_failed"))
    }

    /// Sends a request and waits for its reply; events read meanwhile are kept for `next`.
    /// An `error` reply is its code (already counted).
    pub async fn request(&mut self, msg: &ClientMessage) -> Result<ServerFrame, ConnError> {
        let id = self.send(msg).await?;
        let deadline = Instant::now() + REPLY_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let frame = self.read_frame(left).await.inspect_err(|e| {
                if e.0 == "timeout" {
                    self.stats.error("reply_timeout");
                }
            })?;
            if frame.id.as_deref() == Some(id.as_str()) {
                return match frame.msg {
                    ServerMessage::Error(e) => Err(ConnError(e.code)),
                    _ => Ok(frame),
                };
            }
            self.pending.push_back((frame, Instant::now()));
        }
    }

    /// The next hub frame (kept ones first), or `timeout` when none came in time.
    pub async fn next(&mut self, wait: Duration) -> Result<ServerFrame, ConnError> {
        self.next_timed(wait).await.map(|(frame, _)| frame)
    }

    /// The next hub frame and when it arrived (earlier than now for a frame read ahead).
    pub async fn next_timed(&mut self, wait: Duration) -> Result<(ServerFrame, Instant), ConnError> {
        match self.pending.pop_front() {
            Some(timed) => Ok(timed),
            None => self.read_frame(wait).await.map(|frame| (frame, Instant::now())),
        }
    }

    /// Reads one text frame from the socket and checks its `seq`: exactly one more than the
    /// last, or frames were lost (a gap) or repeated (not above the last; skipped). Errors
    /// are counted by code; "still there?" is answered, as an app does.
    async fn read_frame(&mut self, wait: Duration) -> Result<ServerFrame, ConnError> {
        loop {
            let ws = self.ws.as_mut().ok_or_else(|| ConnError("socket_closed".into()))?;
            let frame = match tokio::time::timeout(wait, read_text(ws)).await {
                Err(_) => return Err(ConnError("timeout".into())),
                Ok(Err(e)) => return Err(self.ended(&e.0)),
                Ok(Ok(frame)) => frame,
            };
            self.stats.received.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if let ServerMessage::Welcome(_) = frame.msg {
                // A new session (a resume the hub could not honour): numbering restarts.
                self.last_seq = frame.seq.unwrap_or(1);
                return Ok(frame);
            }
            if let Some(seq) = frame.seq {
                if seq <= self.last_seq {
                    self.stats.duplicate(1);
                    continue;
                }
                if seq > self.last_seq + 1 {
                    self.stats.lose(seq - self.last_seq - 1);
                }
                self.last_seq = seq;
            }
            match &frame.msg {
                ServerMessage::Error(e) => self.stats.error(&e.code),
                ServerMessage::VisitStillThere(s) => {
                    // Unpaced: one rare message, and pacing reads frames (this function).
                    let reply = ClientMessage::VisitStillHere(VisitRef { visit_id: s.visit_id.clone() });
                    self.send_now(&reply).await?;
                }
                _ => {}
            }
            return Ok(frame);
        }
    }

    /// The socket ended under us: counted once, by the hub's close code when it sent one.
    fn ended(&mut self, why: &str) -> ConnError {
        self.drop_socket();
        self.stats.error(why);
        ConnError(why.to_string())
    }

    /// Closes the socket cleanly (close frame), as an app that is done.
    pub async fn close(mut self) {
        if let Some(mut ws) = self.ws.take() {
            self.stats.open.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                let _ = ws.close(None).await;
                // Read until the hub's close answer, so the hub sees a clean close.
                while let Some(Ok(_)) = ws.next().await {}
            })
            .await;
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.drop_socket();
    }
}

/// The next text frame, decoded; pings are answered by the library and skipped. A close frame
/// is `close_<name>` (`close_slow_consumer` for 4002); a lost socket is `connection_lost`.
async fn read_text(ws: &mut Ws) -> Result<ServerFrame, ConnError> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                return decode_server(t.as_str()).map_err(|_| ConnError("undecodable_frame".into()));
            }
            Some(Ok(Message::Close(frame))) => {
                let code = frame.map_or(1005, |f| u16::from(f.code));
                let name = CloseCode::from_code(code).map_or_else(|| code.to_string(), |c| c.reason().to_string());
                return Err(ConnError(format!("close_{name}")));
            }
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return Err(ConnError("connection_lost".into())),
        }
    }
}
