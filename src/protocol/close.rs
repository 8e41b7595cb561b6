//! WebSocket close codes the hub sends, in the application range 4000-4999 plus the standard
//! ones it uses. Part of the contract: a client decides from the code whether to reconnect.

macro_rules! close_codes {
    ($($variant:ident = $code:literal, $reason:literal;)*) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum CloseCode { $($variant),* }

        impl CloseCode {
            pub const ALL: &'static [CloseCode] = &[$(CloseCode::$variant),*];

            pub fn code(self) -> u16 {
                match self { $(CloseCode::$variant => $code),* }
            }

            /// The close reason sent with the code: the code's stable name.
            pub fn reason(self) -> &'static str {
                match self { $(CloseCode::$variant => $reason),* }
            }

            pub fn from_code(code: u16) -> Option<CloseCode> {
                match code { $($code => Some(CloseCode::$variant),)* _ => None }
            }
        }
    };
}

close_codes! {
    Normal = 1000, "normal";
    MessageTooBig = 1009, "message_too_big";
    ServerShutdown = 4000, "server_shutdown";
    TokenExpired = 4001, "token_expired";
    SlowConsumer = 4002, "slow_consumer";
    ProtocolViolation = 4003, "protocol_violation";
    AccessRevoked = 4005, "access_revoked";
    HeartbeatTimeout = 4006, "heartbeat_timeout";
    SessionResumed = 4007, "session_resumed";
    ResyncRequired = 4008, "resync_required";
}

impl CloseCode {
    /// Whether a client should reconnect (with backoff) after this close.
    pub fn should_reconnect(self) -> bool {
        matches!(
            self,
            CloseCode::ServerShutdown
                | CloseCode::SlowConsumer
                | CloseCode::HeartbeatTimeout
                | CloseCode::ResyncRequired
        )
    }
}
