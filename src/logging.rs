//! Log setup. Whatever level an operator asks for, the wire-level crates are held at `info`:
//! at `trace` they print whole frames and requests, which carry patient details, chat bodies,
//! SDP and tokens. The hub's own logs never print those at any level.

use tracing_subscriber::EnvFilter;

use crate::config::{Config, LogFormat};

/// Crates that print payloads when verbose.
const WIRE_CRATES: &[&str] =
    &["tungstenite", "tokio_tungstenite", "hyper", "hyper_util", "h2", "reqwest", "axum::rejection"];

/// The filter for `spec` (EnvFilter syntax), with the wire-level crates capped.
pub fn filter(spec: &str) -> EnvFilter {
    WIRE_CRATES.iter().fold(EnvFilter::new(spec), |f, krate| {
        f.add_directive(format!("{krate}=info").parse().expect("a valid directive"))
    })
}

/// Installs the process's subscriber: `RUST_LOG` if set, else the configured filter.
pub fn init(config: &Config) {
    let spec = std::env::var("RUST_LOG").unwrap_or_else(|_| config.log.clone());
    let builder = tracing_subscriber::fmt().with_env_filter(filter(&spec));
    match config.log_format {
        LogFormat::Json => builder.json().with_current_span(true).with_span_list(true).init(),
        LogFormat::Human => builder.init(),
    }
}
