//! Validation of SDP and ICE candidates before they are relayed.
