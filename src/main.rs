//! `visithub`: run the hub, or mint a development token.

use std::path::Path;

use anyhow::Context;
use tokio::net::{TcpListener, TcpSocket};
use visithub::app::{self, App, KeySource};
use visithub::auth::{Claims, TokenKeys};
use visithub::cli::{self, AuditArgs, Cmd, ServeArgs, TokenArgs};
use visithub::config::Config;
use visithub::model::Role;

// jemalloc instead of glibc's malloc: over a visits run glibc's malloc and free took ~14 % of
// the hub's CPU; with jemalloc the hub spends ~6 % less CPU per visit and holds 3.6 KiB per idle
// connection instead of 3.9 (BENCHMARKS.md, round `97317c2` against `b9cc15a`).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match cli::parse().command {
        Cmd::Serve(args) => serve(*args).await,
        Cmd::Token(args) => token(args),
        Cmd::Audit(args) => audit(args).await,
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = Config::load(args.config.as_deref(), &args)?;
    visithub::logging::init(&config);
    tracing::info!(?config, "configuration");
    visithub::api::demo::warn_if_on(&config);
    let demo = config.demo;
    let (listen, metrics_listen) = (config.listen, config.metrics_listen);
    let data_dir = config.data_dir.clone();
    let (app, key) = App::from_config(config).await?;
    let listener = listen_on(listen).with_context(|| format!("cannot listen on {listen}"))?;
    let metrics_listener =
        TcpListener::bind(metrics_listen).await.with_context(|| format!("cannot listen on {metrics_listen}"))?;
    let addr = listener.local_addr()?;
    announce(addr, &data_dir, &key);
    if demo {
        println!("Browser demo (development only): http://{addr}/demo/");
    }
    println!("Prometheus metrics on http://{}/metrics", metrics_listener.local_addr()?);
    let draining = app.gateway().shutdown.clone();
    let metrics = app::serve_metrics(metrics_listener, app.hub().clone(), async move { draining.cancelled().await });
    let (served, _) = tokio::join!(app::serve(listener, app, shutdown_signal()), metrics);
    served?;
    tracing::info!("stopped");
    Ok(())
}

/// Handshakes waiting to be accepted. When every client reconnects at once (a node restart, a
/// network blip), an overflowing accept queue drops SYNs, and each dropped client waits a full
/// second before retrying; the kernel caps this at `net.core.somaxconn`.
const ACCEPT_BACKLOG: u32 = 4096;

fn listen_on(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(ACCEPT_BACKLOG)
}

/// The start-up banner on stdout (not the log): where to connect and how to get a token.
fn announce(addr: std::net::SocketAddr, data_dir: &Path, key: &KeySource) {
    println!("visithub listening on http://{addr} (WebSocket ws://{addr}/v1/ws)");
    if let KeySource::Development { path, fingerprint, created } = key {
        let made = if *created { "created now" } else { "reused" };
        println!("Development signing key {} ({made}, fingerprint {fingerprint}).", path.display());
        println!("Not for production: set VISITHUB_SIGNING_KEY or signing_key in a config file.");
        let exe = std::env::args().next().unwrap_or_else(|| "visithub".into());
        let dir = if data_dir == Path::new("visithub-data") {
            String::new()
        } else {
            format!(" --data-dir {}", data_dir.display())
        };
        println!("Mint an admin token:\n  {exe} token --role admin --sub admin{dir}");
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

fn token(args: TokenArgs) -> anyhow::Result<()> {
    #[derive(serde::Serialize)]
    struct Overrides {
        #[serde(skip_serializing_if = "Option::is_none")]
        data_dir: Option<std::path::PathBuf>,
    }
    let config = Config::load(args.config.as_deref(), Overrides { data_dir: args.data_dir.clone() })?;
    let secret = match &config.signing_key {
        Some(s) => s.expose().as_bytes().to_vec(),
        None => visithub::auth::dev_key::load(&visithub::auth::dev_key::path_in(&config.data_dir)).context(
            "no signing key: start `visithub serve` once to create the development key, or set VISITHUB_SIGNING_KEY",
        )?,
    };
    if args.role == Role::Patient && args.visit.is_none() {
        anyhow::bail!("a patient token needs --visit");
    }
    let mut claims = Claims::new(args.sub, args.role, chrono::Utc::now(), args.ttl);
    claims.states = args.states;
    claims.visit = args.visit;
    println!("{}", TokenKeys::new(&secret)?.sign(&claims));
    Ok(())
}

/// `visithub audit verify`: walks the hash chain of the audit trail.
async fn audit(args: AuditArgs) -> anyhow::Result<()> {
    #[derive(serde::Serialize)]
    struct Overrides {
        #[serde(skip_serializing_if = "Option::is_none")]
        data_dir: Option<std::path::PathBuf>,
    }
    let config = Config::load(args.config.as_deref(), Overrides { data_dir: args.data_dir.clone() })?;
    if config.database_url.is_none() {
        let path = config.database_path();
        anyhow::ensure!(path.exists(), "no database at {}", path.display());
    }
    let store = app::open_store(&config).await?;
    match visithub::hub::audit::verify(&*store).await? {
        Ok(n) => {
            println!("audit trail intact: {n} records");
            Ok(())
        }
        Err(id) => {
            println!("audit trail broken at record {id}");
            std::process::exit(1);
        }
    }
}
