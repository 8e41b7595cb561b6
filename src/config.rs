//! One typed configuration, layered: embedded defaults, then an optional TOML file, then
//! `VISITHUB_*` environment variables, then command-line flags. Every field has a default,
//! so `visithub serve` runs with no configuration at all.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

pub use crate::auth::Secret;
use crate::hub::{HubOptions, TurnOptions};
use crate::model::Role;

/// Positions held back longer than this would read as a stuck queue.
const MAX_BOARD_EVERY_MS: u64 = 5000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address of the WebSocket and REST listener.
    pub listen: SocketAddr,
    /// Address of the Prometheus `/metrics` listener.
    pub metrics_listen: SocketAddr,
    /// This node's name in metrics and logs.
    pub node_id: String,
    /// Folder of the SQLite database and the development signing key.
    pub data_dir: PathBuf,
    /// PostgreSQL URL of the durable store (cluster mode); SQLite in `data_dir` when absent.
    pub database_url: Option<Secret>,
    /// PostgreSQL URL of a streaming replica for reads (never stale for this node's writes).
    pub replica_url: Option<Secret>,
    /// Redis URL (cluster mode: bus and shared live state); with `redis_cluster`, the
    /// comma-separated seed URLs of a Redis Cluster. In-process when absent.
    pub redis_url: Option<Secret>,
    /// Treat `redis_url` as the seeds of a Redis Cluster.
    pub redis_cluster: bool,
    /// Milliseconds between this node's registry heartbeats (it expires after three missed).
    pub heartbeat_ms: u64,
    /// Shortest time between two publications of a state's queue (positions to its patients):
    /// the first change after a quiet spell shows at once, the changes of the next
    /// `board_every_ms` together. 0 shows every change at once; at most 5000.
    pub board_every_ms: u64,
    /// HS256 secret (at least 32 bytes) for tokens; a development key is made when absent.
    pub signing_key: Option<Secret>,
    /// PEM files of Ed25519 or RSA public keys whose tokens are also accepted.
    pub jwt_public_keys: Vec<PathBuf>,
    /// Browser origins allowed to open sockets; a handshake without Origin is allowed.
    pub allowed_origins: Vec<String>,
    /// Largest WebSocket message, in bytes.
    pub max_message_bytes: usize,
    /// Largest REST request body, in bytes.
    pub max_body_bytes: usize,
    /// Messages per second per patient connection (also the burst).
    pub rate_patient: u32,
    /// Messages per second per support connection.
    pub rate_support: u32,
    /// Messages per second per provider connection.
    pub rate_provider: u32,
    /// Messages per second per admin connection.
    pub rate_admin: u32,
    /// Open sockets per user (token subject).
    pub max_connections_per_user: u32,
    /// Seconds between WebSocket pings from the hub.
    pub ping_interval_secs: u64,
    /// Seconds of silence after a ping before the socket is closed.
    pub pong_timeout_secs: u64,
    /// Frames queued for one socket before it is closed as a slow consumer.
    pub outbound_queue: usize,
    /// Seconds a session waits for its client to come back after losing its socket.
    pub resume_window_secs: u64,
    /// Most recent frames a session keeps for a client that resumes.
    pub replay_window_frames: usize,
    /// Most bytes of recent frames a session keeps for a client that resumes.
    pub replay_window_bytes: usize,
    /// Milliseconds a socket may make no write progress before it is closed as slow.
    pub write_timeout_ms: u64,
    /// Invalid or rate-limited frames per minute before the socket is closed.
    pub max_invalid_per_minute: u32,
    /// Intakes (`POST /v1/visits`) per minute from one client address (an IPv6 /64),
    /// `intake_network_share` times that from its block (an IPv4 /24, an IPv6 /48); 0 for no
    /// limit.
    pub intake_per_address_per_minute: u32,
    /// How many addresses' intake quotas the block around an address (an IPv4 /24, an IPv6
    /// /48: one site or neighbourhood) holds together; at least 1.
    pub intake_network_share: u32,
    /// Header a trusted load balancer appends the client's address to (`X-Forwarded-For`):
    /// its last entry is the client for the intake limit. Unset, the peer address is.
    pub client_address_header: Option<String>,
    /// Seconds that shutdown waits for sessions and requests to finish.
    pub shutdown_grace_secs: u64,
    /// Lifetime of the patient token handed out at intake, in seconds.
    pub patient_token_ttl_secs: u64,
    /// Queue cap of a state with no settings of its own.
    pub default_queue_cap: u32,
    /// Intakes per hour of a busy state with no settings of its own.
    pub default_busy_intake_per_hour: u32,
    /// Assumed visit length before any visit was measured, in seconds.
    pub prior_visit_secs: u32,
    /// Assumed delay from a free provider to a claim, in seconds.
    pub prior_pickup_secs: u32,
    /// Weight of the newest observation in the wait estimator's moving averages.
    pub estimator_alpha: f64,
    /// STUN server URLs handed to clients with the ICE servers.
    pub stun_urls: Vec<String>,
    /// TURN server URLs handed to visit participants with short-lived credentials.
    pub turn_urls: Vec<String>,
    /// The TURN servers' `static-auth-secret`s: the first signs credentials, list the old one
    /// second while rotating (the TURN servers accept both meanwhile).
    pub turn_secrets: Vec<Secret>,
    /// Lifetime of TURN credentials, in seconds.
    pub turn_ttl_secs: u64,
    /// Largest SDP offer or answer, in bytes.
    pub max_sdp_bytes: usize,
    /// Live visits (claimed, in visit, wrap-up) one provider may hold at once.
    pub max_live_visits_per_provider: u32,
    /// Conversations one caregiver may have open at once.
    pub max_conversations_per_caregiver: u32,
    /// Longest chat message, in characters.
    pub max_chat_body_chars: usize,
    /// Most chat messages in one history page.
    pub chat_page_max: u32,
    /// Seconds a patient may stay disconnected before a live visit is abandoned.
    pub abandon_grace_secs: u64,
    /// Seconds of waiting before a patient is asked "still there?".
    pub still_there_after_secs: u64,
    /// Seconds a patient has to answer "still there?".
    pub still_there_timeout_secs: u64,
    /// Log filter (tracing `EnvFilter` syntax); `RUST_LOG` wins when set.
    pub log: String,
    /// Log output: human or json.
    pub log_format: LogFormat,
    /// Serve the browser demo (patient page, caregiver console) under `/demo/`, with a demo
    /// sign-in for onboarded caregivers. Development only.
    pub demo: bool,
}

impl Default for Config {
    fn default() -> Self {
        let hub = HubOptions::default();
        Config {
            listen: "127.0.0.1:8080".parse().expect("valid address"),
            metrics_listen: "127.0.0.1:9100".parse().expect("valid address"),
            node_id: "local".into(),
            data_dir: PathBuf::from("visithub-data"),
            database_url: None,
            replica_url: None,
            redis_url: None,
            redis_cluster: false,
            heartbeat_ms: hub.heartbeat_ms,
            board_every_ms: hub.board_every_ms,
            signing_key: None,
            jwt_public_keys: Vec::new(),
            allowed_origins: vec!["http://localhost:8080".into(), "http://127.0.0.1:8080".into()],
            max_message_bytes: 64 * 1024,
            max_body_bytes: 16 * 1024,
            rate_patient: 5,
            rate_support: 50,
            rate_provider: 50,
            rate_admin: 50,
            max_connections_per_user: 8,
            ping_interval_secs: 20,
            pong_timeout_secs: 20,
            outbound_queue: 256,
            resume_window_secs: 60,
            replay_window_frames: 256,
            replay_window_bytes: 256 * 1024,
            write_timeout_ms: 10_000,
            max_invalid_per_minute: 20,
            // Off on a laptop; a deployment sets it (see deploy/), with the balancer's header.
            intake_per_address_per_minute: 0,
            intake_network_share: 16,
            client_address_header: None,
            shutdown_grace_secs: 10,
            patient_token_ttl_secs: hub.patient_token_ttl_secs,
            default_queue_cap: hub.default_queue_cap,
            default_busy_intake_per_hour: hub.default_busy_intake_per_hour,
            prior_visit_secs: hub.prior_visit_secs,
            prior_pickup_secs: hub.prior_pickup_secs,
            estimator_alpha: hub.estimator_alpha,
            stun_urls: Vec::new(),
            turn_urls: Vec::new(),
            turn_secrets: Vec::new(),
            turn_ttl_secs: hub.turn.ttl_secs,
            max_sdp_bytes: hub.max_sdp_bytes,
            max_live_visits_per_provider: hub.max_live_visits_per_provider,
            max_conversations_per_caregiver: hub.max_conversations_per_caregiver,
            max_chat_body_chars: hub.max_chat_body_chars,
            chat_page_max: hub.chat_page_max,
            abandon_grace_secs: hub.abandon_grace_secs,
            still_there_after_secs: hub.still_there_after_secs,
            still_there_timeout_secs: hub.still_there_timeout_secs,
            log: "info".into(),
            log_format: LogFormat::Human,
            demo: false,
        }
    }
}

impl Config {
    /// Defaults, then `file`, then `VISITHUB_*` variables, then `overrides` (the flags given).
    pub fn load(file: Option<&Path>, overrides: impl Serialize) -> anyhow::Result<Config> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            anyhow::ensure!(file.exists(), "config file {} does not exist", file.display());
            figment = figment.merge(Toml::file(file));
        }
        let config: Config = figment
            .merge(Env::prefixed("VISITHUB_"))
            .merge(Serialized::globals(overrides))
            .extract()
            .map_err(|e| anyhow::anyhow!("configuration: {e}"))?;
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.max_message_bytes >= 1024, "max_message_bytes must be at least 1024");
        anyhow::ensure!(self.outbound_queue >= 8, "outbound_queue must be at least 8");
        anyhow::ensure!(
            self.ping_interval_secs >= 1 && self.pong_timeout_secs >= 1,
            "ping and pong times must be at least 1 s"
        );
        anyhow::ensure!(self.max_connections_per_user >= 1, "max_connections_per_user must be at least 1");
        anyhow::ensure!(self.intake_network_share >= 1, "intake_network_share must be at least 1");
        anyhow::ensure!(
            [self.rate_patient, self.rate_support, self.rate_provider, self.rate_admin].iter().all(|r| *r >= 1),
            "message rates must be at least 1 per second"
        );
        anyhow::ensure!(
            self.board_every_ms <= MAX_BOARD_EVERY_MS,
            "board_every_ms must be at most {MAX_BOARD_EVERY_MS}"
        );
        anyhow::ensure!(self.estimator_alpha > 0.0 && self.estimator_alpha <= 1.0, "estimator_alpha must be in (0, 1]");
        Ok(())
    }

    pub fn rate_for(&self, role: Role) -> u32 {
        match role {
            Role::Patient => self.rate_patient,
            Role::Support => self.rate_support,
            Role::Provider => self.rate_provider,
            Role::Admin => self.rate_admin,
        }
    }

    pub fn hub_options(&self) -> HubOptions {
        HubOptions {
            patient_token_ttl_secs: self.patient_token_ttl_secs,
            default_queue_cap: self.default_queue_cap,
            default_busy_intake_per_hour: self.default_busy_intake_per_hour,
            prior_visit_secs: self.prior_visit_secs,
            prior_pickup_secs: self.prior_pickup_secs,
            estimator_alpha: self.estimator_alpha,
            max_sdp_bytes: self.max_sdp_bytes,
            max_live_visits_per_provider: self.max_live_visits_per_provider,
            max_conversations_per_caregiver: self.max_conversations_per_caregiver,
            max_chat_body_chars: self.max_chat_body_chars,
            chat_page_max: self.chat_page_max,
            abandon_grace_secs: self.abandon_grace_secs,
            still_there_after_secs: self.still_there_after_secs,
            still_there_timeout_secs: self.still_there_timeout_secs,
            turn: TurnOptions {
                stun_urls: self.stun_urls.clone(),
                turn_urls: self.turn_urls.clone(),
                secrets: self.turn_secrets.clone(),
                ttl_secs: self.turn_ttl_secs,
            },
            node_id: self.node_id.clone(),
            heartbeat_ms: self.heartbeat_ms,
            board_every_ms: self.board_every_ms,
        }
    }

    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("visithub.db")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Flags {
        #[serde(skip_serializing_if = "Option::is_none")]
        rate_patient: Option<u32>,
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API
    fn layers_apply_in_order_and_secrets_stay_hidden() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "hub.toml",
                "rate_patient = 7\nmax_message_bytes = 2048\nsigning_key = \"s3cret-value\"\n",
            )?;
            jail.set_env("VISITHUB_MAX_MESSAGE_BYTES", "4096");
            let path = jail.directory().join("hub.toml");
            let c = Config::load(Some(&path), Flags { rate_patient: None }).unwrap();
            assert_eq!((c.rate_patient, c.max_message_bytes), (7, 4096));
            let c = Config::load(Some(&path), Flags { rate_patient: Some(9) }).unwrap();
            assert_eq!(c.rate_patient, 9);
            assert!(!format!("{c:?}").contains("s3cret"));
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn refuses_nonsense() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("VISITHUB_OUTBOUND_QUEUE", "0");
            assert!(Config::load(None, Flags { rate_patient: None }).is_err());
            jail.set_env("VISITHUB_OUTBOUND_QUEUE", "256");
            jail.set_env("VISITHUB_BOARD_EVERY_MS", "5001");
            let refused = Config::load(None, Flags { rate_patient: None }).unwrap_err();
            assert!(refused.to_string().contains("board_every_ms"), "{refused}");
            jail.set_env("VISITHUB_BOARD_EVERY_MS", "0");
            assert_eq!(Config::load(None, Flags { rate_patient: None }).unwrap().hub_options().board_every_ms, 0);
            Ok(())
        });
    }
}
