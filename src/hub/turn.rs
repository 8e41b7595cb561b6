//! ICE servers for visit participants, with short-lived TURN credentials in the scheme TURN
//! servers accept with `use-auth-secret` (coturn's REST API credentials).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha1::Sha1;

use crate::auth::Secret;
use crate::protocol::IceServer;

#[derive(Debug, Clone, Default)]
pub struct TurnOptions {
    pub stun_urls: Vec<String>,
    pub turn_urls: Vec<String>,
    /// The first signs; later ones are only for the TURN servers during rotation.
    pub secrets: Vec<Secret>,
    pub ttl_secs: u64,
}

impl TurnOptions {
    /// ICE servers for one participant at `now`: STUN URLs without credentials, TURN URLs with
    /// a credential valid for `ttl_secs`. Returns the list and the expiry (epoch seconds).
    ///
    /// The credential is signed with the first secret only: the TURN servers are configured
    /// with every secret in `secrets` (one `static-auth-secret` line each), so during a
    /// rotation the new secret goes first here once every TURN server knows it.
    ///
    /// With TURN URLs but no secret, the TURN URLs are left out and only STUN is returned: a
    /// TURN URL without a credential fails every allocation and only slows ICE gathering.
    /// An empty entry is never returned (browsers reject an `iceServers` entry without URLs).
    pub fn ice_servers(&self, now: DateTime<Utc>) -> (Vec<IceServer>, i64) {
        let ttl = i64::try_from(self.ttl_secs).unwrap_or(i64::MAX);
        let expires_at = now.timestamp().saturating_add(ttl);
        let mut servers = Vec::with_capacity(2);
        if !self.stun_urls.is_empty() {
            servers.push(IceServer { urls: self.stun_urls.clone(), username: None, credential: None });
        }
        if let (false, Some(secret)) = (self.turn_urls.is_empty(), self.secrets.first()) {
            let (username, credential) = turn_credential(secret.expose().as_bytes(), expires_at, &opaque_id());
            servers.push(IceServer {
                urls: self.turn_urls.clone(),
                username: Some(username),
                credential: Some(credential),
            });
        }
        (servers, expires_at)
    }
}

/// username = "<expiry epoch secs>:<opaque id>", password = base64(HMAC-SHA1(secret, username)).
///
/// This is the TURN REST API scheme (coturn `use-auth-secret`): the TURN server recomputes the
/// password from its copy of the secret and refuses the credential once the expiry has passed.
///
/// The username travels in clear in every STUN/TURN message and lands in the TURN server's
/// logs, which are outside the hub's control, so `opaque_id` must never be a patient, visit or
/// session identifier: use a fresh random value (see [`TurnOptions::ice_servers`]).
pub fn turn_credential(secret: &[u8], expires_at: i64, opaque_id: &str) -> (String, String) {
    let username = format!("{expires_at}:{opaque_id}");
    // HMAC takes a key of any length, so this never fails.
    let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(username.as_bytes());
    let password = BASE64.encode(mac.finalize().into_bytes());
    (username, password)
}

/// A fresh random id for a TURN username: 16 hex digits (64 bits), unrelated to any visit.
fn opaque_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(secs, 0).single().expect("valid timestamp")
    }

    fn options(secrets: &[&str]) -> TurnOptions {
        TurnOptions {
            stun_urls: vec!["stun:stun.visithub.test:3478".into()],
            turn_urls: vec![
                "turn:turn.visithub.test:3478?transport=udp".into(),
                "turn:turn.visithub.test:3478?transport=tcp".into(),
            ],
            secrets: secrets.iter().map(|s| Secret::new(*s)).collect(),
            ttl_secs: 600,
        }
    }

    fn turn_entry(servers: &[IceServer]) -> &IceServer {
        servers.iter().find(|s| s.username.is_some()).expect("a TURN entry with credentials")
    }

    #[test]
    fn known_vector() {
        // python3: base64.b64encode(hmac.new(b'north-star-secret',
        //     b'1700000000:0123456789abcdef', hashlib.sha1).digest())
        let (username, password) = turn_credential(b"north-star-secret", 1_700_000_000, "0123456789abcdef");
        assert_eq!(username, "1700000000:0123456789abcdef");
        assert_eq!(password, "PcytyVNiCvoFSIK5MsrEDCysAnw=");
    }

    #[test]
    fn expiry_is_now_plus_ttl() {
        let now = at(1_750_000_000);
        let (servers, expires_at) = options(&["s1"]).ice_servers(now);
        assert_eq!(expires_at, 1_750_000_600);
        let turn = turn_entry(&servers);
        let username = turn.username.as_deref().unwrap();
        assert!(username.starts_with("1750000600:"), "{username}");
        assert_eq!(turn.urls, options(&[]).turn_urls);
    }

    #[test]
    fn stun_has_no_credentials() {
        let (servers, _) = options(&["s1"]).ice_servers(at(1_750_000_000));
        assert_eq!(servers.len(), 2);
        assert_eq!(servers[0].urls, vec!["stun:stun.visithub.test:3478".to_string()]);
        assert_eq!(servers[0].username, None);
        assert_eq!(servers[0].credential, None);
    }

    #[test]
    fn username_is_opaque_and_fresh() {
        let opts = options(&["s1"]);
        let now = at(1_750_000_000);
        let (a, _) = opts.ice_servers(now);
        let (b, _) = opts.ice_servers(now);
        let ua = turn_entry(&a).username.clone().unwrap();
        let ub = turn_entry(&b).username.clone().unwrap();
        assert_ne!(ua, ub, "each call gets its own opaque id");
        for u in [&ua, &ub] {
            let lower = u.to_lowercase();
            assert!(!lower.contains("patient") && !lower.contains("visit"), "{u}");
            let (expiry, id) = u.split_once(':').expect("<expiry>:<id>");
            assert_eq!(expiry, "1750000600");
            assert_eq!(id.len(), 16, "{u}");
            assert!(id.chars().all(|c| c.is_ascii_hexdigit()), "{u}");
        }
    }

    #[test]
    fn stun_only_without_secret() {
        let (servers, _) = options(&[]).ice_servers(at(1_750_000_000));
        assert_eq!(servers.len(), 1);
        assert_eq!(servers[0].urls, vec!["stun:stun.visithub.test:3478".to_string()]);
        assert!(servers.iter().all(|s| s.username.is_none() && s.credential.is_none()));
        assert!(servers.iter().all(|s| !s.urls.iter().any(|u| u.starts_with("turn"))));
    }

    #[test]
    fn nothing_configured_gives_no_entries() {
        let (servers, _) = TurnOptions::default().ice_servers(at(1_750_000_000));
        assert!(servers.is_empty());
    }

    #[test]
    fn first_secret_signs() {
        let (servers, expires_at) = options(&["new-secret", "old-secret"]).ice_servers(at(1_750_000_000));
        let turn = turn_entry(&servers);
        let username = turn.username.as_deref().unwrap();
        let (_, id) = username.split_once(':').unwrap();
        let (_, with_first) = turn_credential(b"new-secret", expires_at, id);
        let (_, with_second) = turn_credential(b"old-secret", expires_at, id);
        assert_eq!(turn.credential.as_deref(), Some(with_first.as_str()));
        assert_ne!(with_first, with_second);
    }

    #[test]
    fn huge_ttl_saturates() {
        let opts = TurnOptions { ttl_secs: u64::MAX, ..options(&["s1"]) };
        let (_, expires_at) = opts.ice_servers(at(1_750_000_000));
        assert_eq!(expires_at, i64::MAX);
    }
}
