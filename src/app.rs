//! The composition root: configuration to backends to a running hub. `serve` takes a bound
//! listener and a shutdown future, so tests run real hubs on port 0.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;

use crate::api::address_limit::{AddressLimit, PeerAddr};
use crate::api::{self, AppState};
use crate::auth::{TokenKeys, dev_key};
use crate::bus::{Bus, MemoryBus, RedisBus};
use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::gateway::Gateway;
use crate::gateway::read_ahead::ReadAheadListener;
use crate::hub::Hub;
use crate::live::{LiveState, MemoryLive, RedisLive};
use crate::metrics::Metrics;
use crate::redis_link::RedisLink;
use crate::store::{Metered, PostgresStore, SqliteStore, Store};

/// The swappable pieces, chosen once from configuration.
pub struct Backends {
    pub store: Arc<dyn Store>,
    pub bus: Arc<dyn Bus>,
    pub live: Arc<dyn LiveState>,
    pub keys: TokenKeys,
    pub clock: Arc<dyn Clock>,
}

/// Bus and live state: Redis when the configuration names one, else this process's memory.
pub async fn open_shared(
    config: &Config,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<(Arc<dyn Bus>, Arc<dyn LiveState>)> {
    let Some(url) = &config.redis_url else {
        return Ok((Arc::new(MemoryBus::new()), Arc::new(MemoryLive::new())));
    };
    let urls: Vec<String> = url.expose().split(',').map(|u| u.trim().to_string()).filter(|u| !u.is_empty()).collect();
    let link = RedisLink::connect(&urls, config.redis_cluster).await?;
    let bus = RedisBus::connect(&link, &config.node_id, metrics.clone()).await?;
    Ok((bus, Arc::new(RedisLive::new(&link, metrics.clone()))))
}

/// How the signing key was found, for the start-up banner.
pub enum KeySource {
    Configured,
    Development { path: std::path::PathBuf, fingerprint: String, created: bool },
}

pub struct App {
    pub state: AppState,
}

/// The HS256 key: configured, or the development key in the data folder (made if missing).
pub fn signing_key(config: &Config) -> anyhow::Result<(Vec<u8>, KeySource)> {
    if let Some(secret) = &config.signing_key {
        return Ok((secret.expose().as_bytes().to_vec(), KeySource::Configured));
    }
    let (key, created) = dev_key::load_or_create(&config.data_dir)?;
    let source = KeySource::Development {
        path: dev_key::path_in(&config.data_dir),
        fingerprint: dev_key::fingerprint(&key),
        created,
    };
    Ok((key, source))
}

pub fn token_keys(config: &Config, secret: &[u8]) -> anyhow::Result<TokenKeys> {
    let mut keys = TokenKeys::new(secret)?;
    for path in &config.jwt_public_keys {
        let pem = std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        keys.accept_public_key_pem(&pem)?;
    }
    Ok(keys)
}

/// The durable store the configuration names: PostgreSQL (with its replica) or SQLite.
pub async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    Ok(match &config.database_url {
        Some(url) => {
            let replica = config.replica_url.as_ref().map(|r| r.expose());
            Arc::new(PostgresStore::connect(url.expose(), replica).await?)
        }
        None => Arc::new(SqliteStore::open(&config.database_path()).await?),
    })
}

impl App {
    /// The default single-node deployment: SQLite in the data folder, in-process bus.
    pub async fn from_config(mut config: Config) -> anyhow::Result<(App, KeySource)> {
        if config.redis_url.is_some() && config.node_id == Config::default().node_id {
            // Nodes of one cluster need distinct names; a pod or host name is the usual one.
            let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "node".into());
            config.node_id = format!("{host}-{}", std::process::id());
        }
        let (secret, source) = signing_key(&config)?;
        let metrics = Arc::new(Metrics::new(&config.node_id));
        let (bus, live) = open_shared(&config, &metrics).await?;
        let backends = Backends {
            store: open_store(&config).await?,
            bus,
            live,
            keys: token_keys(&config, &secret)?,
            clock: Arc::new(SystemClock),
        };
        Ok((App::with_metrics(config, backends, metrics).await?, source))
    }

    pub async fn with_backends(config: Config, b: Backends) -> anyhow::Result<App> {
        let metrics = Arc::new(Metrics::new(&config.node_id));
        App::with_metrics(config, b, metrics).await
    }

    async fn with_metrics(config: Config, b: Backends, metrics: Arc<Metrics>) -> anyhow::Result<App> {
        let config = Arc::new(config);
        let store: Arc<dyn Store> = Arc::new(Metered::new(b.store, metrics.clone()));
        let hub = Hub::start(config.hub_options(), store, b.bus, b.live, b.keys, b.clock, metrics).await?;
        let gateway = Arc::new(Gateway::new(hub.clone(), config.clone()));
        let intake_limit = Arc::new(AddressLimit::new(
            config.intake_per_address_per_minute,
            config.intake_network_share,
            config.client_address_header.as_deref(),
            hub.live_state().clone(),
        ));
        Ok(App { state: AppState { hub, config, gateway, intake_limit } })
    }

    pub fn hub(&self) -> &Arc<Hub> {
        &self.state.hub
    }

    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.state.gateway
    }
}

/// Serves `/metrics` (Prometheus text format) on its own listener until `shutdown` resolves,
/// so scraping never competes with clients for the public port.
pub async fn serve_metrics(
    listener: TcpListener,
    hub: Arc<Hub>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let router = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let hub = hub.clone();
            async move { ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], hub.render_metrics()) }
        }),
    );
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await?;
    Ok(())
}

/// Serves until `shutdown` resolves, then: stop accepting, tell every socket to reconnect
/// (`server_shutdown`), let in-flight requests and sessions finish, and return within the
/// configured grace period.
pub async fn serve(
    listener: TcpListener,
    app: App,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let gateway = app.state.gateway.clone();
    let hub = app.state.hub.clone();
    let app_hub = hub.clone();
    let grace = Duration::from_secs(app.state.config.shutdown_grace_secs);
    let router = api::router(app.state);
    // Signaling is latency-bound small messages: never wait for Nagle.
    let listener = ReadAheadListener(listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    }));
    let draining = gateway.shutdown.clone();
    // A made service hands each connection a clone of the router (one `Arc`); serving the
    // `Router` itself rebuilds its whole route table for every connection (`with_state(())`),
    // a fifth of the CPU of accepting a WebSocket. The peer's address goes with each request
    // (the intake limit counts by it).
    let service = router.into_make_service_with_connect_info::<PeerAddr>();
    let server = axum::serve(listener, service).with_graceful_shutdown({
        let gw = gateway.clone();
        async move {
            shutdown.await;
            tracing::info!("shutting down: closing sockets with server_shutdown");
            gw.shut_down();
            hub.begin_drain().await;
        }
    });
    let deadline = async {
        draining.cancelled().await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        res = server => res?,
        _ = deadline => tracing::warn!("shutdown grace period over; requests still open are dropped"),
    }
    gateway.sessions.close();
    if tokio::time::timeout(grace, gateway.sessions.wait()).await.is_err() {
        tracing::warn!(open = gateway.connections.open(), "sessions still open at the shutdown deadline");
    }
    app_hub.leave_cluster().await;
    Ok(())
}
