//! The `bare-server` command: what a plain tokio-tungstenite server does with no authentication,
//! routing, ordering checks, sequence numbers, acks or metrics, as a yardstick for the hub on
//! the same machine (the `baseline` and `baseline-fanout` scenarios). One task per socket,
//! `TCP_NODELAY`, a 4 KiB read buffer. The URL path says what a socket is:
//!
//! - `/pair/<name>`: the two sockets of a pair pass each other's text frames on;
//! - `/listen`: gets every frame sent by an announcer;
//! - `/announce`: each text frame it sends goes to every listener.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::Request;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::reference::{self, Incoming};
use crate::stats::Stats;

pub type Ws = WebSocketStream<TcpStream>;

/// Frames a pair's socket queues towards its peer before it stops reading.
const PEER_QUEUE: usize = 1024;
/// Announcements a listener may fall behind by before it skips some (counted by its client
/// as lost).
const ANNOUNCEMENTS: usize = 64;

/// The first socket of a pair, waiting for the second: the way into its inbox, and the way
/// to hand it the second's.
type Parked = (mpsc::Sender<Message>, mpsc::Sender<mpsc::Sender<Message>>);

#[derive(Clone)]
struct Shared {
    waiting: Arc<Mutex<HashMap<String, Parked>>>,
    announcements: broadcast::Sender<Utf8Bytes>,
}

/// Serves until the process ends.
pub async fn serve(listener: TcpListener) -> anyhow::Result<()> {
    let shared = Shared { waiting: Arc::default(), announcements: broadcast::channel(ANNOUNCEMENTS).0 };
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        tokio::spawn(socket(stream, shared.clone()));
    }
}

async fn socket(stream: TcpStream, shared: Shared) {
    let mut path = String::new();
    let config = WebSocketConfig::default().read_buffer_size(4 * 1024);
    #[expect(clippy::result_large_err, reason = "the error type is tungstenite's handshake callback's")]
    let callback = |req: &Request, resp| {
        path = req.uri().path().to_string();
        Ok(resp)
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config)).await else {
        return;
    };
    match path.as_str() {
        "/listen" => listen(ws, shared.announcements.subscribe()).await,
        "/announce" => announce(ws, shared.announcements).await,
        _ => match path.strip_prefix("/pair/") {
            Some(pair) => pair_up(ws, pair.to_string(), shared.waiting).await,
            None => drop(ws),
        },
    }
}

async fn pair_up(ws: Ws, pair: String, waiting: Arc<Mutex<HashMap<String, Parked>>>) {
    let (to_me, mut inbox) = mpsc::channel::<Message>(PEER_QUEUE);
    let first = {
        let mut waiting = waiting.lock().expect("pairs lock");
        match waiting.remove(&pair) {
            Some(first) => Ok(first),
            None => {
                let (hand_over, handed) = mpsc::channel(1);
                waiting.insert(pair, (to_me.clone(), hand_over));
                Err(handed)
            }
        }
    };
    match first {
        Ok((first, hand_over)) => {
            let _ = hand_over.try_send(to_me);
            relay(ws, &mut inbox, first).await;
        }
        Err(mut handed) => {
            // Only the peer holds the way in: its end closes the inbox.
            drop(to_me);
            if let Some(peer) = handed.recv().await {
                relay(ws, &mut inbox, peer).await;
            }
        }
    }
}

async fn relay(mut ws: Ws, inbox: &mut mpsc::Receiver<Message>, peer: mpsc::Sender<Message>) {
    loop {
        tokio::select! {
            frame = ws.next() => match frame {
                Some(Ok(m @ Message::Text(_))) => {
                    if peer.send(m).await.is_err() {
                        return;
                    }
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
            out = inbox.recv() => match out {
                Some(m) => {
                    if ws.send(m).await.is_err() {
                        return;
                    }
                }
                None => return,
            },
        }
    }
}

async fn listen(mut ws: Ws, mut announcements: broadcast::Receiver<Utf8Bytes>) {
    loop {
        tokio::select! {
            frame = ws.next() => match frame {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
            text = announcements.recv() => match text {
                Ok(text) => {
                    if ws.send(Message::Text(text)).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}

async fn announce(mut ws: Ws, announcements: broadcast::Sender<Utf8Bytes>) {
    while let Some(Ok(frame)) = ws.next().await {
        if let Message::Text(text) = frame {
            // No listener yet is not an error: there is no one to tell.
            let _ = announcements.send(text);
        }
    }
}

/// A client socket to the bare server: `TCP_NODELAY`, as the load generator's sockets to the hub.
pub async fn dial(addr: std::net::SocketAddr, path: &str) -> anyhow::Result<Ws> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}{path}"), stream).await?;
    Ok(ws)
}

/// A text frame of `size` bytes (or just its head, if that is longer) that starts with its
/// send stamp ([`crate::stats::Stats::stamp`]), its number and a tag: `<stamp> <n> <tag> xxx...`.
pub fn stamped(stamp: u64, n: u64, tag: char, size: usize) -> Message {
    Message::text(stamped_text(stamp, n, tag, size))
}

/// [`stamped`]'s text.
pub fn stamped_text(stamp: u64, n: u64, tag: char, size: usize) -> String {
    let mut text = format!("{stamp} {n} {tag} ");
    let pad = size.saturating_sub(text.len());
    text.extend(std::iter::repeat_n('x', pad));
    text
}

/// One [`stamped`] frame as read: its stamp, number and tag, and when it arrived.
pub struct Stamped {
    pub stamp: u64,
    pub n: u64,
    pub tag: char,
    pub arrived: Instant,
}

/// Reads [`stamped`] frames, as any of the [`reference`] servers relays them, until the socket
/// ends, counting each as received and handing it to `each`; a server's refusal is a
/// `server_refused` error, a stamp that does not read a `bad_frame` error.
pub async fn read_each<S>(mut stream: S, stats: &Stats, mut each: impl FnMut(Stamped))
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    while let Some(Ok(msg)) = stream.next().await {
        let Message::Text(text) = msg else { continue };
        let arrived = Instant::now();
        let text = match reference::incoming(&text) {
            Incoming::Stamped(text) => text,
            Incoming::Notice => continue,
            Incoming::Refusal => {
                stats.error("server_refused");
                continue;
            }
        };
        stats.received.fetch_add(1, Ordering::Relaxed);
        let mut fields = text.split(' ');
        let mut head =
            || Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?, fields.next()?.chars().next()?));
        match head() {
            Some((stamp, n, tag)) => each(Stamped { stamp, n, tag, arrived }),
            None => stats.error("bad_frame"),
        }
    }
}
