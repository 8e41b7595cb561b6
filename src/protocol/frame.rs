//! The envelope: decoding client frames and encoding hub frames (and the reverse, for clients).

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::{ClientMessage, MAX_REQUEST_ID_LEN, PROTOCOL_VERSION, PayloadError, ServerMessage};
use crate::error::ErrorCode;

#[derive(Deserialize)]
struct RawFrame<'a> {
    #[serde(default)]
    v: Option<u32>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default, borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
}

/// A client frame that decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct InboundFrame {
    pub id: String,
    pub msg: ClientMessage,
}

/// A frame that did not decode, with the request id to answer to when one could be read.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeError {
    pub id: Option<String>,
    pub code: ErrorCode,
    pub message: String,
}

pub fn decode_client(text: &str) -> Result<InboundFrame, DecodeError> {
    let raw: RawFrame<'_> = serde_json::from_str(text).map_err(|e| {
        let code = if e.is_data() { ErrorCode::InvalidMessage } else { ErrorCode::MalformedJson };
        // serde_json's message names the field or position, never the value.
        DecodeError { id: None, code, message: format!("frame: {e}") }
    })?;
    let id = raw.id.map(Cow::into_owned);
    let fail = |code, message: String| DecodeError { id: id.clone(), code, message };
    if raw.v.is_some_and(|v| v != PROTOCOL_VERSION) {
        return Err(fail(ErrorCode::UnsupportedProtocolVersion, format!("this hub speaks version {PROTOCOL_VERSION}")));
    }
    let Some(request_id) = id.as_deref() else {
        return Err(fail(ErrorCode::InvalidMessage, "every request needs an `id`".into()));
    };
    if request_id.is_empty() || request_id.len() > MAX_REQUEST_ID_LEN {
        return Err(DecodeError {
            id: None,
            code: ErrorCode::InvalidMessage,
            message: format!("`id` must be 1 to {MAX_REQUEST_ID_LEN} bytes"),
        });
    }
    let data = raw.data.map_or("{}", RawValue::get);
    let msg = ClientMessage::from_parts(&raw.kind, data).map_err(|e| match e {
        PayloadError::UnknownType => fail(ErrorCode::UnknownMessageType, "unknown message type".into()),
        PayloadError::Invalid(e) => fail(ErrorCode::InvalidMessage, format!("data: {e}")),
    })?;
    Ok(InboundFrame { id: request_id.to_owned(), msg })
}

/// A decoded hub frame, as a client sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerFrame {
    pub seq: Option<u64>,
    pub id: Option<String>,
    pub msg: ServerMessage,
}

pub fn decode_server(text: &str) -> Result<ServerFrame, String> {
    let raw: RawFrame<'_> = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let data = raw.data.map_or("{}", RawValue::get);
    let msg = ServerMessage::from_parts(&raw.kind, data).map_err(|e| match e {
        PayloadError::UnknownType => format!("unknown server message type {:?}", raw.kind),
        PayloadError::Invalid(e) => format!("{}: {e}", raw.kind),
    })?;
    Ok(ServerFrame { seq: raw.seq, id: raw.id.map(Cow::into_owned), msg })
}

/// Encodes a hub frame. `seq` is the session's sequence number; `id` answers a request.
pub fn encode_server(seq: u64, id: Option<&str>, msg: &ServerMessage) -> String {
    let mut out = Vec::with_capacity(128);
    write_head(&mut out, seq);
    write_tail(&mut out, id, msg.kind(), |o| msg.write_data(o));
    into_text(out)
}

/// The frame's text, its buffer trimmed to its length: a frame is kept (in the replay window)
/// for as long as its session may need it again, and a buffer with room to spare also costs
/// the `Bytes` it becomes an extra allocation.
fn into_text(mut out: Vec<u8>) -> String {
    out.shrink_to_fit();
    String::from_utf8(out).expect("serde_json writes UTF-8")
}

/// An event encoded once for every session it goes to. Only the sequence number differs
/// between sessions, so fanning one event out to many sockets costs one serialization of the
/// payload and a copy per socket instead of a serialization per socket.
#[derive(Debug, Clone)]
pub struct SharedFrame {
    /// Everything after the sequence number: `,"type":"...","data":{...}}`.
    tail: Vec<u8>,
    /// The message's [`ServerMessage::index`], for counting it per type.
    index: usize,
}

impl SharedFrame {
    pub fn new(msg: &ServerMessage) -> SharedFrame {
        let mut tail = Vec::with_capacity(128);
        write_tail(&mut tail, None, msg.kind(), |o| msg.write_data(o));
        SharedFrame { tail, index: msg.index() }
    }

    /// The message's [`ServerMessage::index`].
    pub fn index(&self) -> usize {
        self.index
    }

    /// The frame for one session: the same bytes `encode_server(seq, None, msg)` gives.
    pub fn with_seq(&self, seq: u64) -> String {
        let mut out = Vec::with_capacity(self.tail.len() + 24);
        write_head(&mut out, seq);
        out.extend_from_slice(&self.tail);
        into_text(out)
    }
}

/// `{"v":1,"seq":<seq>`, written without a temporary string.
fn write_head(out: &mut Vec<u8>, seq: u64) {
    use std::io::Write;
    out.extend_from_slice(b"{\"v\":1,\"seq\":");
    write!(out, "{seq}").expect("writing to a Vec cannot fail");
}

/// Encodes a client frame (for tests, examples and the load generator).
pub fn encode_client(id: &str, msg: &ClientMessage) -> String {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(b"{\"v\":1");
    write_tail(&mut out, Some(id), msg.kind(), |o| msg.write_data(o));
    String::from_utf8(out).expect("serde_json writes UTF-8")
}

fn write_tail(
    out: &mut Vec<u8>,
    id: Option<&str>,
    kind: &str,
    data: impl FnOnce(&mut Vec<u8>) -> serde_json::Result<()>,
) {
    if let Some(id) = id {
        out.extend_from_slice(b",\"id\":");
        serde_json::to_writer(&mut *out, id).expect("a string always serializes");
    }
    out.extend_from_slice(b",\"type\":\"");
    out.extend_from_slice(kind.as_bytes());
    out.extend_from_slice(b"\",\"data\":");
    // Payloads are plain structs of strings and numbers: serializing them cannot fail.
    data(out).expect("payload serializes");
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::UsState;
    use crate::protocol::StateRef;

    #[test]
    fn round_trips_a_request() {
        let msg = ClientMessage::QueueSubscribe(StateRef { state: UsState::parse("WA").unwrap() });
        let text = encode_client("r1", &msg);
        assert_eq!(text, r#"{"v":1,"id":"r1","type":"queue.subscribe","data":{"state":"WA"}}"#);
        assert_eq!(decode_client(&text).unwrap(), InboundFrame { id: "r1".into(), msg });
    }

    #[test]
    fn tells_bad_frames_apart() {
        let code = |t: &str| decode_client(t).unwrap_err().code;
        assert_eq!(code("{not json"), ErrorCode::MalformedJson);
        assert_eq!(code("[1,2]"), ErrorCode::InvalidMessage);
        assert_eq!(code(r#"{"id":"a"}"#), ErrorCode::InvalidMessage);
        assert_eq!(code(r#"{"id":"a","type":"nope"}"#), ErrorCode::UnknownMessageType);
        assert_eq!(code(r#"{"id":"a","type":"queue.subscribe","data":{"state":"XX"}}"#), ErrorCode::InvalidMessage);
        assert_eq!(code(r#"{"id":"a","type":"queue.subscribe","data":{}}"#), ErrorCode::InvalidMessage);
        assert_eq!(code(r#"{"type":"ping"}"#), ErrorCode::InvalidMessage);
        assert_eq!(code(r#"{"v":2,"id":"a","type":"ping"}"#), ErrorCode::UnsupportedProtocolVersion);
        let long = format!(r#"{{"id":"{}","type":"ping"}}"#, "x".repeat(65));
        assert_eq!(code(&long), ErrorCode::InvalidMessage);
    }

    #[test]
    fn keeps_the_id_for_the_error_reply() {
        let err = decode_client(r#"{"id":"r9","type":"nope"}"#).unwrap_err();
        assert_eq!(err.id.as_deref(), Some("r9"));
    }

    #[test]
    fn a_shared_frame_is_the_per_session_encoding() {
        let msg = ServerMessage::Error(crate::protocol::ErrorBody {
            code: "rate_limited".into(),
            message: "slow down".into(),
            retry_after_secs: Some(1),
        });
        let shared = SharedFrame::new(&msg);
        for seq in [1, 9, 10, 12_345_678_901] {
            assert_eq!(shared.with_seq(seq), encode_server(seq, None, &msg));
        }
    }

    #[test]
    fn server_frames_decode_as_encoded() {
        let msg = ServerMessage::Ack(serde_json::json!({"ok": true}));
        let text = encode_server(5, Some("q\"1"), &msg);
        let frame = decode_server(&text).unwrap();
        assert_eq!(frame, ServerFrame { seq: Some(5), id: Some("q\"1".into()), msg });
    }
}
