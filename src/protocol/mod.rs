//! Wire types of the WebSocket protocol, shared with tests, examples and the load generator.
//! `signaling-protocol.md` is the contract; a test keeps the two in step.
//!
//! A frame is one JSON object: `{"v":1,"id":"r1","type":"queue.subscribe","data":{...}}` from a
//! client, `{"v":1,"seq":7,"id":"r1","type":"ack","data":{...}}` from the hub. The frame is
//! parsed once with `data` left raw, and only the payload of the named type is decoded, so an
//! unknown type and a bad payload are told apart and neither costs a second parse.

mod client;
mod close;
mod frame;
mod server;

pub use client::*;
pub use close::CloseCode;
pub use frame::{
    DecodeError, InboundFrame, ServerFrame, SharedFrame, decode_client, decode_server, encode_client, encode_server,
};
pub use server::*;

/// The protocol version this hub speaks.
pub const PROTOCOL_VERSION: u32 = 1;
/// The WebSocket subprotocol naming that version.
pub const SUBPROTOCOL: &str = "visithub.v1";
/// Longest request id a client may choose.
pub const MAX_REQUEST_ID_LEN: usize = 64;

/// Why a payload did not decode.
#[derive(Debug)]
pub enum PayloadError {
    UnknownType,
    Invalid(serde_json::Error),
}

/// Declares a message enum from `"type" => Variant(Payload)` lines: the enum, the list of
/// type names for the contract test, and typed decode/encode of the payload.
macro_rules! messages {
    ($(#[$meta:meta])* pub enum $name:ident { $($kind:literal => $variant:ident($payload:ty),)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq)]
        pub enum $name { $($variant($payload),)* }

        impl $name {
            /// Every `type` of this direction, as documented in `signaling-protocol.md`.
            pub const TYPES: &'static [&'static str] = &[$($kind),*];

            pub fn kind(&self) -> &'static str {
                match self { $($name::$variant(_) => $kind,)* }
            }

            /// Where [`Self::kind`] is in [`Self::TYPES`].
            pub fn index(&self) -> usize {
                enum Index { $($variant,)* }
                match self { $($name::$variant(_) => Index::$variant as usize,)* }
            }

            /// Decodes `data` of a message of type `kind`.
            pub fn from_parts(kind: &str, data: &str) -> Result<Self, $crate::protocol::PayloadError> {
                match kind {
                    $($kind => serde_json::from_str(data)
                        .map($name::$variant)
                        .map_err($crate::protocol::PayloadError::Invalid),)*
                    _ => Err($crate::protocol::PayloadError::UnknownType),
                }
            }

            /// Writes `data` as JSON.
            pub fn write_data(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
                match self { $($name::$variant(d) => serde_json::to_writer(out, d),)* }
            }
        }
    };
}
pub(crate) use messages;
