//! The servers the hub is compared with on this machine, as a client of each sees them: the
//! bare tokio-tungstenite server ([`crate::bare`]), `matchbox_server` and the PeerJS server. The
//! issue's reference figures for the last two were measured elsewhere; driving them here with
//! the same frames, pacing and sockets as the hub puts every figure on one machine.
//!
//! What differs between them is only how a socket joins and how a frame is addressed:
//!
//! - bare: `/pair/<name>` pairs two sockets, a frame is its text as is;
//! - matchbox: `/<room>` joins a room and the server answers `{"IdAssigned":"<uuid>"}`; a frame
//!   is `{"Signal":{"receiver":"<uuid>","data":...}}` and arrives as `{"Signal":{"sender":...}}`;
//! - PeerJS: `/peerjs?key=peerjs&id=<id>&token=<token>` registers the id and the server answers
//!   `{"type":"OPEN"}`; a frame is `{"type":"CANDIDATE","dst":"<id>","payload":...}` and arrives
//!   with `src` added.
//!
//! For the last two the payload is a candidate as WebRTC gives it (`candidate`, `sdpMid`,
//! `sdpMLineIndex`) whose `candidate` is the [`crate::bare::stamped`] text, so the stamp is read
//! back the same way from every server.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

use crate::bare::{Ws, dial, stamped_text};

/// How long a server may take to answer a join.
const JOIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Where a frame's stamped text starts in the JSON of matchbox and PeerJS frames.
const CANDIDATE: &str = "\"candidate\":\"";

/// Which server the target is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Server {
    /// `visithub-loadtest bare-server`.
    Bare,
    /// `matchbox_server` (0.15).
    Matchbox,
    /// The PeerJS server (`peerjs`, npm package `peer` 1.0).
    Peerjs,
}

/// A frame read from a server.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming<'a> {
    /// A relayed frame: its stamped text.
    Stamped(&'a str),
    /// The server's own news (a peer joined or left): nothing to count.
    Notice,
    /// The server refused something (PeerJS's `ERROR`, `ID-TAKEN`, `EXPIRE`, or text of no
    /// known shape).
    Refusal,
}

/// One socket of a pair, and how to address its peer.
pub struct PairEnd {
    pub ws: Ws,
    /// The peer's id on this server (empty for the bare server, whose pairs need none).
    pub peer: String,
}

impl Server {
    /// Its name on the command line and in the report.
    pub fn name(self) -> &'static str {
        match self {
            Server::Bare => "bare",
            Server::Matchbox => "matchbox",
            Server::Peerjs => "peerjs",
        }
    }

    /// Opens the two sockets of pair `name`, each told its peer's id.
    pub async fn open_pair(self, addr: SocketAddr, name: &str) -> anyhow::Result<[PairEnd; 2]> {
        let (a, id_a) = self.join(addr, &format!("{name}-a"), &format!("pair-{name}")).await?;
        let (b, id_b) = self.join(addr, &format!("{name}-b"), &format!("pair-{name}")).await?;
        Ok([PairEnd { ws: a, peer: id_b }, PairEnd { ws: b, peer: id_a }])
    }

    /// Opens one idle socket that the server has accepted as a client (its own room on
    /// matchbox, its own id on PeerJS); for the bare server, a listener.
    pub async fn open_idle(self, addr: SocketAddr, name: &str) -> anyhow::Result<Ws> {
        Ok(match self {
            Server::Bare => dial(addr, "/listen").await?,
            _ => self.join(addr, name, &format!("idle-{name}")).await?.0,
        })
    }

    /// Joins as `id` (PeerJS) or into `room` (matchbox, bare pairs), and returns the socket
    /// with the id the server knows it by once the server has accepted it.
    async fn join(self, addr: SocketAddr, id: &str, room: &str) -> anyhow::Result<(Ws, String)> {
        match self {
            Server::Bare => Ok((dial(addr, &format!("/pair/{room}")).await?, String::new())),
            Server::Matchbox => {
                let mut ws = dial(addr, &format!("/{room}")).await?;
                let first = first_text(&mut ws).await?;
                let value: serde_json::Value = serde_json::from_str(&first)?;
                let assigned = value.get("IdAssigned").and_then(|v| v.as_str());
                let id = assigned.ok_or_else(|| anyhow::anyhow!("matchbox answered the join with {first:.80}"))?;
                Ok((ws, id.to_string()))
            }
            Server::Peerjs => {
                let mut ws = dial(addr, &format!("/peerjs?key=peerjs&id={id}&token=lt")).await?;
                let first = first_text(&mut ws).await?;
                anyhow::ensure!(first == r#"{"type":"OPEN"}"#, "PeerJS answered the join with {first:.80}");
                Ok((ws, id.to_string()))
            }
        }
    }

    /// Frame `n` of side `tag` to `peer`, stamped now, about `size` bytes in all.
    pub fn frame(self, peer: &str, stamp: u64, n: u64, tag: char, size: usize) -> Message {
        let wrap = |text: &str| {
            let payload = format!(r#"{{"candidate":"{text}","sdpMid":"0","sdpMLineIndex":0}}"#);
            match self {
                Server::Matchbox => format!(r#"{{"Signal":{{"receiver":"{peer}","data":{payload}}}}}"#),
                _ => format!(r#"{{"type":"CANDIDATE","dst":"{peer}","payload":{payload}}}"#),
            }
        };
        // The bare server's frame is the stamped text as is: no wrapping work in the load
        // generator, which shares the cores with the server measured.
        if self == Server::Bare {
            return Message::text(stamped_text(stamp, n, tag, size));
        }
        let envelope = wrap("").len();
        Message::text(wrap(&stamped_text(stamp, n, tag, size.saturating_sub(envelope))))
    }
}

/// What a frame read from any of the servers is. The stamped text never holds a `"`, so it
/// ends at the first one.
pub fn incoming(text: &str) -> Incoming<'_> {
    if !text.starts_with('{') {
        return Incoming::Stamped(text);
    }
    if let Some(at) = text.find(CANDIDATE) {
        let rest = &text[at + CANDIDATE.len()..];
        return Incoming::Stamped(rest.split('"').next().unwrap_or(rest));
    }
    let notice = ["{\"NewPeer\":", "{\"PeerLeft\":", "{\"type\":\"HEARTBEAT\""];
    if notice.iter().any(|n| text.starts_with(n)) { Incoming::Notice } else { Incoming::Refusal }
}

/// The first text frame a server sends.
async fn first_text(ws: &mut Ws) -> anyhow::Result<String> {
    let read = async {
        while let Some(frame) = ws.next().await {
            if let Message::Text(text) = frame? {
                return Ok(text.to_string());
            }
        }
        anyhow::bail!("the server closed the socket before answering the join")
    };
    tokio::time::timeout(JOIN_TIMEOUT, read)
        .await
        .map_err(|_| anyhow::anyhow!("no answer to the join in {JOIN_TIMEOUT:?}"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(m: Message) -> String {
        m.into_text().unwrap().to_string()
    }

    #[test]
    fn every_server_gets_a_frame_of_the_asked_size_whose_stamp_reads_back() {
        for server in [Server::Bare, Server::Matchbox, Server::Peerjs] {
            let frame = text(server.frame("peer-1", 123, 7, 'a', 600));
            assert_eq!(frame.len(), 600, "{server:?}: {frame}");
            let Incoming::Stamped(stamped) = incoming(&frame) else { panic!("{server:?}: {frame}") };
            assert!(stamped.starts_with("123 7 a "), "{server:?}: {stamped}");
            if server != Server::Bare {
                let json: serde_json::Value = serde_json::from_str(&frame).unwrap();
                assert!(frame.contains("\"peer-1\""), "{server:?} addresses the peer: {json}");
            }
        }
    }

    #[test]
    fn relayed_frames_are_read_as_the_servers_send_them() {
        let matchbox = r#"{"Signal":{"sender":"u-1","data":{"candidate":"9 2 b xx","sdpMid":"0","sdpMLineIndex":0}}}"#;
        assert_eq!(incoming(matchbox), Incoming::Stamped("9 2 b xx"));
        let peerjs = r#"{"type":"CANDIDATE","dst":"x","payload":{"candidate":"9 3 a x","sdpMid":"0","sdpMLineIndex":0},"src":"y"}"#;
        assert_eq!(incoming(peerjs), Incoming::Stamped("9 3 a x"));
        assert_eq!(incoming("9 4 a xxx"), Incoming::Stamped("9 4 a xxx"));
    }

    #[test]
    fn the_servers_news_is_not_counted_and_their_refusals_are() {
        assert_eq!(incoming(r#"{"NewPeer":"u-2"}"#), Incoming::Notice);
        assert_eq!(incoming(r#"{"PeerLeft":"u-2"}"#), Incoming::Notice);
        assert_eq!(incoming(r#"{"type":"ERROR","payload":{"msg":"Invalid key provided"}}"#), Incoming::Refusal);
        assert_eq!(incoming(r#"{"type":"EXPIRE","src":"a","dst":"b"}"#), Incoming::Refusal);
    }
}
