//! ICE servers for visit participants, with short-lived TURN credentials in the scheme TURN
//! servers accept with `use-auth-secret` (coturn's REST API credentials).

use crate::auth::Secret;

#[derive(Debug, Clone, Default)]
pub struct TurnOptions {
    pub stun_urls: Vec<String>,
    pub turn_urls: Vec<String>,
    /// The first signs; later ones are only for the TURN servers during rotation.
    pub secrets: Vec<Secret>,
    pub ttl_secs: u64,
}
