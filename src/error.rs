//! Stable error codes shared by the REST API (problem details) and the WebSocket protocol.
//!
//! A code is part of the contract in `signaling-protocol.md`: clients switch on it, so a code
//! is never renamed or reused. The HTTP status is what REST returns; over the socket the same
//! code travels in an `error` message.

use std::fmt;

macro_rules! error_codes {
    ($($variant:ident = $code:literal, $status:literal, $title:literal;)*) => {
        /// Every refusal the hub can give, with its wire spelling and HTTP status.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorCode { $($variant),* }

        impl ErrorCode {
            /// All codes, for the protocol-document contract test.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant),*];

            /// The stable snake_case spelling on the wire.
            pub fn as_str(self) -> &'static str {
                match self { $(ErrorCode::$variant => $code),* }
            }

            /// The HTTP status REST answers with.
            pub fn http_status(self) -> u16 {
                match self { $(ErrorCode::$variant => $status),* }
            }

            /// A short human title; never carries request data.
            pub fn title(self) -> &'static str {
                match self { $(ErrorCode::$variant => $title),* }
            }

            pub fn parse(code: &str) -> Option<ErrorCode> {
                match code { $($code => Some(ErrorCode::$variant),)* _ => None }
            }
        }
    };
}

error_codes! {
    MalformedJson = "malformed_json", 400, "The message is not valid JSON";
    UnknownMessageType = "unknown_message_type", 400, "The message type is not known";
    InvalidMessage = "invalid_message", 422, "The message does not match its schema";
    MessageTooLarge = "message_too_large", 413, "The message is larger than allowed";
    UnsupportedProtocolVersion = "unsupported_protocol_version", 400, "The protocol version is not supported";
    ValidationFailed = "validation_failed", 422, "A field is missing or invalid";
    InvalidStateCode = "invalid_state_code", 422, "Not a US state or territory code";
    TokenMissing = "token_missing", 401, "No access token was given";
    TokenInvalid = "token_invalid", 401, "The access token is malformed or its signature is wrong";
    TokenExpired = "token_expired", 401, "The access token has expired";
    Forbidden = "forbidden", 403, "This role may not do that";
    StateNotCovered = "state_not_covered", 403, "The caregiver does not cover that state";
    NotYourVisit = "not_your_visit", 403, "The token is scoped to another visit";
    OriginNotAllowed = "origin_not_allowed", 403, "The Origin is not on the allowlist";
    CaregiverInactive = "caregiver_inactive", 403, "The caregiver is deactivated";
    CaregiverUnknown = "caregiver_unknown", 403, "The token's subject is not an onboarded caregiver";
    VisitNotFound = "visit_not_found", 404, "No such visit";
    CaregiverNotFound = "caregiver_not_found", 404, "No such caregiver";
    CaregiverExists = "caregiver_exists", 409, "A caregiver with that subject already exists";
    VisitNotCancellable = "visit_not_cancellable", 409, "The visit can no longer be cancelled";
    IdempotencyConflict = "idempotency_conflict", 409, "The Idempotency-Key was used with a different request";
    TooManyConnections = "too_many_connections", 429, "The user has too many open connections";
    RateLimited = "rate_limited", 429, "Too many messages; slow down";
    OutsideHours = "outside_hours", 503, "The state's queue is closed at this hour";
    QueueFull = "queue_full", 503, "The state's queue is at its cap";
    QueueClosing = "queue_closing", 503, "The queue could not be seen before closing";
    StateBusy = "state_busy", 429, "The state is busy and its reduced intake is used up";
    VisitAlreadyClaimed = "visit_already_claimed", 409, "Another provider claimed the visit first";
    ProviderBusy = "provider_busy", 409, "The provider already holds as many live visits as allowed";
    InvalidTransition = "invalid_transition", 409, "The visit cannot make that step from where it is, or not by this role";
    NotAParticipant = "not_a_participant", 403, "Only the visit's patient and provider may do that";
    VisitNotActive = "visit_not_active", 409, "The visit is not in a state that allows that";
    InvalidSdp = "invalid_sdp", 422, "The SDP does not parse";
    SdpTooLarge = "sdp_too_large", 413, "The SDP is larger than allowed";
    InvalidCandidate = "invalid_candidate", 422, "The ICE candidate does not parse";
    ConversationCapReached = "conversation_cap_reached", 429, "The caregiver already has as many open conversations as allowed";
    NotInConversation = "not_in_conversation", 403, "Join the conversation first";
    LocationMismatch = "location_mismatch", 409, "A visit moves only to the state its patient last said they are in";
    NotFound = "not_found", 404, "No such route";
    Unavailable = "unavailable", 503, "A backend is unavailable; retry";
    Internal = "internal", 500, "Internal error";
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refusal with its code, a message safe to show (no patient data, SDP or tokens) and,
/// where waiting helps, how long to wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubError {
    pub code: ErrorCode,
    pub message: String,
    pub retry_after_secs: Option<u64>,
}

impl HubError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        HubError { code, message: message.into(), retry_after_secs: None }
    }

    /// The error with its code's title as message.
    pub fn code(code: ErrorCode) -> Self {
        HubError::new(code, code.title())
    }

    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }

    /// Live state (Redis) could not be reached: refused rather than done half-safely.
    pub fn unavailable(err: impl fmt::Display) -> Self {
        tracing::warn!(error = %err, "live state unavailable");
        HubError::new(ErrorCode::Unavailable, "shared live state is unreachable; retry").retry_after(2)
    }

    pub fn internal(err: impl fmt::Display) -> Self {
        // The detail goes to the log (it names no patient data: store and bus errors only);
        // the client sees the generic title.
        tracing::error!(error = %err, "internal error");
        HubError::code(ErrorCode::Internal)
    }
}

impl fmt::Display for HubError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for HubError {}

pub type HubResult<T> = Result<T, HubError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            assert!(seen.insert(code.as_str()), "duplicate {code}");
            assert_eq!(ErrorCode::parse(code.as_str()), Some(*code));
            assert!((400..600).contains(&code.http_status()));
        }
        assert_eq!(ErrorCode::parse("nope"), None);
    }
}
