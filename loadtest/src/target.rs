//! Where the load goes (one hub URL or a list of node URLs) and how tokens are minted: with
//! the hub's HS256 key (the development key file, or the configured secret), the same signing
//! code the hub uses.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Context as _;
use chrono::Utc;
use visithub::auth::{Claims, TokenKeys, dev_key};
use visithub::model::{Role, UsState};

use crate::hubproc::HubProcs;
use crate::rest::Rest;
use crate::stats::Stats;

/// One node of the hub: its HTTP base URL and the socket address behind it.
#[derive(Debug, Clone)]
pub struct Node {
    pub base: String,
    pub addr: SocketAddr,
}

/// The nodes, used round-robin: a client lands on any node, as behind a load balancer.
#[derive(Debug)]
pub struct Targets {
    pub nodes: Vec<Node>,
    next: AtomicUsize,
}

impl Targets {
    /// `urls` like `http://127.0.0.1:8080`.
    pub async fn resolve(urls: &[String]) -> anyhow::Result<Targets> {
        anyhow::ensure!(!urls.is_empty(), "give at least one target URL");
        let mut nodes = Vec::new();
        for url in urls {
            let base = url.trim_end_matches('/').to_string();
            let hostport = base
                .strip_prefix("http://")
                .with_context(|| format!("target {url}: only http:// URLs are supported"))?;
            let addr = tokio::net::lookup_host(hostport)
                .await
                .with_context(|| format!("target {url}: cannot resolve"))?
                .next()
                .with_context(|| format!("target {url}: no address"))?;
            nodes.push(Node { base, addr });
        }
        Ok(Targets { nodes, next: AtomicUsize::new(0) })
    }

    pub fn pick(&self) -> &Node {
        &self.nodes[self.next.fetch_add(1, Ordering::Relaxed) % self.nodes.len()]
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.base.clone()).collect()
    }
}

/// Mints tokens the hub accepts.
pub struct Auth {
    keys: TokenKeys,
}

impl Auth {
    pub fn from_secret(secret: &[u8]) -> anyhow::Result<Auth> {
        Ok(Auth { keys: TokenKeys::new(secret)? })
    }

    /// The development key file a hub made in its data folder (`visithub-data/dev-signing-key`).
    pub fn from_key_file(path: &Path) -> anyhow::Result<Auth> {
        Auth::from_secret(&dev_key::load(path)?)
    }

    pub fn token(&self, role: Role, sub: &str, ttl_secs: u64) -> String {
        self.keys.sign(&Claims::new(sub, role, Utc::now(), ttl_secs))
    }

    pub fn admin(&self) -> String {
        self.token(Role::Admin, "loadtest-admin", 3600)
    }
}

/// Everything a scenario needs: where to go, how to sign in, what to count, whose CPU to read.
pub struct Context {
    pub targets: Targets,
    pub auth: Auth,
    pub rest: Rest,
    pub stats: Arc<Stats>,
    pub hub: HubProcs,
    /// Unique per run, so caregivers onboarded by one run never collide with another's.
    pub run_id: String,
    /// Print the live progress line.
    pub progress: bool,
}

impl Context {
    pub async fn new(urls: &[String], auth: Auth, hub_pids: Vec<u32>, progress: bool) -> anyhow::Result<Context> {
        let targets = Targets::resolve(urls).await?;
        let run_id = format!("{:x}", Utc::now().timestamp_micros());
        Ok(Context {
            targets,
            auth,
            rest: Rest::new()?,
            stats: Arc::new(Stats::default()),
            hub: HubProcs::new(hub_pids),
            run_id,
            progress,
        })
    }
}

/// Parses a comma-separated list of state codes.
pub fn parse_states(list: &str) -> anyhow::Result<Vec<UsState>> {
    let states: Vec<UsState> = list
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| UsState::parse(s.trim()).map_err(|e| anyhow::anyhow!("state {s:?}: {}", e.message)))
        .collect::<Result<_, _>>()?;
    anyhow::ensure!(!states.is_empty(), "give at least one state");
    Ok(states)
}
