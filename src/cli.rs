//! Command line: `visithub serve` and `visithub token`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{ArgMatches, Args, Command, CommandFactory, FromArgMatches, Parser, Subcommand};
use serde::Serialize;

use crate::config::{Config, LogFormat};
use crate::model::{Role, UsState};

#[derive(Parser, Debug)]
#[command(name = "visithub", version, about = "Real-time signaling hub for on-demand virtual healthcare visits")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Run the hub (WebSocket and REST on one listener).
    #[command(after_long_help = "Secrets are read from the environment or the TOML file only, never flags:
  VISITHUB_SIGNING_KEY   HS256 token secret, 32+ bytes (default: a development key in data_dir)
  VISITHUB_TURN_SECRETS  TURN use-auth-secret list, e.g. '[\"new\", \"old\"]' (default: none)
  VISITHUB_DATABASE_URL  postgres://... durable store (default: SQLite in data_dir)
  VISITHUB_REPLICA_URL   postgres://... streaming replica for reads (default: none)")]
    Serve(Box<ServeArgs>),
    /// Mint an access token with the hub's signing key (development and tests).
    Token(TokenArgs),
    /// Check the audit trail: `visithub audit verify` reports the first broken record.
    Audit(AuditArgs),
}

#[derive(Args, Debug)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub action: AuditAction,
    /// TOML configuration file (for `data_dir`).
    #[arg(long, env = "VISITHUB_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Folder holding the database.
    #[arg(long, global = true)]
    pub data_dir: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum AuditAction {
    /// Walk the hash chain; exit 1 and name the first broken record if any.
    Verify,
}

/// Flags of `serve`. Each overrides the TOML file and `VISITHUB_<NAME>` variables; absent
/// flags leave them be. Defaults are appended to the help from [`Config::default`].
#[derive(Args, Debug, Default, Serialize)]
pub struct ServeArgs {
    /// TOML configuration file.
    #[arg(long, env = "VISITHUB_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Address of the WebSocket and REST listener.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// Address of the Prometheus /metrics listener.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<SocketAddr>,
    /// This node's name in metrics and logs.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// Treat VISITHUB_REDIS_URL as the comma-separated seed URLs of a Redis Cluster.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_cluster: Option<bool>,
    /// Milliseconds between this node's registry heartbeats (it expires after three missed).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heartbeat_ms: Option<u64>,
    /// Shortest time between two publications of a state's queue, in ms (positions to its
    /// patients; the first change after a quiet spell shows at once). 0 for every change; at
    /// most 5000.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub board_every_ms: Option<u64>,
    /// Folder of the SQLite database and the development signing key.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// Browser origin allowed to open sockets (repeat for several; "*" allows any).
    #[arg(long = "allowed-origin")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_origins: Option<Vec<String>>,
    /// PEM public key (Ed25519 or RSA) whose tokens are accepted (repeatable).
    #[arg(long = "jwt-public-key")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt_public_keys: Option<Vec<PathBuf>>,
    /// Largest WebSocket message in bytes; up to twice it is refused with an error, past
    /// that the socket closes (1009).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_message_bytes: Option<usize>,
    /// Largest REST request body in bytes.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<usize>,
    /// Messages per second (and burst) per patient socket.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_patient: Option<u32>,
    /// Messages per second (and burst) per support socket.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_support: Option<u32>,
    /// Messages per second (and burst) per provider socket.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_provider: Option<u32>,
    /// Messages per second (and burst) per admin socket.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_admin: Option<u32>,
    /// Open sockets per user (token subject).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections_per_user: Option<u32>,
    /// Seconds between WebSocket pings from the hub.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ping_interval_secs: Option<u64>,
    /// Seconds of silence past a ping before the socket closes (4006).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pong_timeout_secs: Option<u64>,
    /// Frames queued for one socket before it closes as a slow consumer (4002).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outbound_queue: Option<usize>,
    /// Seconds a session waits for its client to come back (resume) after losing its socket.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resume_window_secs: Option<u64>,
    /// Most recent frames a session keeps for a client that resumes.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replay_window_frames: Option<usize>,
    /// Most bytes of recent frames a session keeps for a client that resumes.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replay_window_bytes: Option<usize>,
    /// Milliseconds a socket may make no write progress before it closes as slow (4002).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub write_timeout_ms: Option<u64>,
    /// Invalid or rate-limited frames per minute before the socket closes (4003).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_invalid_per_minute: Option<u32>,
    /// Intakes per minute from one client address (an IPv6 /64), and `--intake-network-share`
    /// times that from its block (an IPv4 /24, an IPv6 /48), for the whole cluster; 0 for no
    /// limit (429 `rate_limited`).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub intake_per_address_per_minute: Option<u32>,
    /// How many addresses' intake quotas an address's block holds together: raise
    /// it for a site whose patients come through many addresses of one network.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub intake_network_share: Option<u32>,
    /// Header a trusted load balancer appends the client's address to (its last entry counts).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_address_header: Option<String>,
    /// Seconds shutdown waits for sessions and requests to finish.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shutdown_grace_secs: Option<u64>,
    /// Lifetime in seconds of the patient token handed out at intake.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patient_token_ttl_secs: Option<u64>,
    /// Queue cap of a state with no settings of its own.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_queue_cap: Option<u32>,
    /// Intakes per hour of a busy state with no settings of its own.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_busy_intake_per_hour: Option<u32>,
    /// Assumed visit length in seconds before any visit was measured.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prior_visit_secs: Option<u32>,
    /// Assumed seconds from a free provider to a claim.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prior_pickup_secs: Option<u32>,
    /// Weight of the newest observation in the estimator's moving averages, in (0, 1].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub estimator_alpha: Option<f64>,
    /// STUN server URL handed to visit participants (repeatable).
    #[arg(long = "stun-url")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stun_urls: Option<Vec<String>>,
    /// TURN server URL handed with short-lived credentials (repeatable).
    #[arg(long = "turn-url")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub turn_urls: Option<Vec<String>>,
    /// Lifetime in seconds of TURN credentials.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub turn_ttl_secs: Option<u64>,
    /// Largest SDP offer or answer in bytes.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_sdp_bytes: Option<usize>,
    /// Live visits (claimed, in visit, wrap-up) one provider may hold.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_live_visits_per_provider: Option<u32>,
    /// Conversations one caregiver may have open at once.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_conversations_per_caregiver: Option<u32>,
    /// Longest chat message in characters.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_chat_body_chars: Option<usize>,
    /// Most chat messages in one history page.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chat_page_max: Option<u32>,
    /// Seconds a patient may stay disconnected before a live visit is abandoned.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub abandon_grace_secs: Option<u64>,
    /// Seconds of waiting before a patient is asked "still there?".
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub still_there_after_secs: Option<u64>,
    /// Seconds a patient has to answer "still there?".
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub still_there_timeout_secs: Option<u64>,
    /// Log filter, tracing EnvFilter syntax (RUST_LOG wins when set).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
    /// Log output.
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,
    /// Serve the browser demo under /demo/ with a password-less caregiver sign-in
    /// (development signing key only; never in production).
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub demo: bool,
}

#[derive(Args, Debug)]
pub struct TokenArgs {
    /// patient, provider, support or admin.
    #[arg(long, value_parser = parse_role)]
    pub role: Role,
    /// Subject: the caregiver's onboarded subject, or any name for an admin.
    #[arg(long)]
    pub sub: String,
    /// Comma-separated states narrowing a caregiver's record (default: all of them).
    #[arg(long, value_delimiter = ',', value_parser = parse_state)]
    pub states: Vec<UsState>,
    /// The visit a patient token opens.
    #[arg(long)]
    pub visit: Option<String>,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    pub ttl: u64,
    /// TOML configuration file (for `signing_key` or `data_dir`).
    #[arg(long, env = "VISITHUB_CONFIG")]
    pub config: Option<PathBuf>,
    /// Folder holding the development signing key.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

fn parse_role(s: &str) -> Result<Role, String> {
    Role::parse(s).ok_or_else(|| "expected patient, provider, support or admin".into())
}

fn parse_state(s: &str) -> Result<UsState, String> {
    UsState::parse(s).map_err(|e| e.message)
}

/// The command with every `serve` flag's help ending in its default and its variable.
pub fn command() -> Command {
    let defaults = serde_json::to_value(Config::default()).expect("config serializes");
    Cli::command().mut_subcommand("serve", |serve| {
        let ids: Vec<String> = serve.get_arguments().map(|a| a.get_id().to_string()).collect();
        ids.into_iter().fold(serve, |serve, id| {
            let Some(default) = defaults.get(&id) else {
                return serve;
            };
            let shown = match default {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Null => "none".to_string(),
                other => other.to_string(),
            };
            let env = format!("VISITHUB_{}", id.to_uppercase());
            serve.mut_arg(&id, |arg| {
                let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
                arg.help(format!("{help} [default: {shown}] [env: {env}]"))
            })
        })
    })
}

pub fn parse() -> Cli {
    let matches: ArgMatches = command().get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serve_help_documents_every_limit_with_its_default() {
        let help = command().find_subcommand_mut("serve").unwrap().render_long_help().to_string();
        let defaults = serde_json::to_value(Config::default()).unwrap();
        for (key, _) in defaults.as_object().unwrap() {
            if matches!(key.as_str(), "signing_key" | "turn_secrets" | "database_url" | "replica_url" | "redis_url") {
                // Secrets (and URLs that carry passwords) are never flags (they would show in
                // `ps`): env or file only.
                continue;
            }
            let env = format!("VISITHUB_{}", key.to_uppercase());
            assert!(help.contains(&env), "serve --help does not document {key}");
        }
        assert!(help.contains("[default: 65536]"));
        assert!(help.contains("[default: 127.0.0.1:8080]"));
    }
}
