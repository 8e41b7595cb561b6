//! Connections to Redis, one server or a Redis Cluster. Commands go through one multiplexed
//! connection that reconnects by itself; the bus opens its own RESP3 connection for pub/sub
//! (a Redis Cluster forwards PUBLISH to every shard, so one subscriber connection hears all).

use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use crate::metrics::Metrics;

/// Commands stop waiting after this long, so a stalled Redis fails requests instead of
/// hanging them.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A connection for commands, to one server or a cluster. Cheap to clone.
#[derive(Clone)]
pub enum Commands {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Commands {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Commands::Single(c) => c.req_packed_command(cmd),
            Commands::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Commands::Single(c) => c.req_packed_commands(cmd, offset, count),
            Commands::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Commands::Single(c) => c.get_db(),
            Commands::Cluster(c) => c.get_db(),
        }
    }
}

/// Where Redis is: one URL, or the seed URLs of a Redis Cluster.
#[derive(Clone)]
pub struct RedisLink {
    urls: Vec<String>,
    cluster: bool,
    commands: Commands,
}

impl RedisLink {
    pub async fn connect(urls: &[String], cluster: bool) -> anyhow::Result<RedisLink> {
        anyhow::ensure!(!urls.is_empty(), "no Redis URL given");
        let commands = if cluster {
            let client = ClusterClientBuilder::new(urls.to_vec())
                .connection_timeout(CONNECT_TIMEOUT)
                .response_timeout(RESPONSE_TIMEOUT)
                .retries(2)
                .build()?;
            Commands::Cluster(client.get_async_connection().await?)
        } else {
            let client = redis::Client::open(urls[0].as_str())?;
            Commands::Single(ConnectionManager::new_with_config(client, manager_config()).await?)
        };
        Ok(RedisLink { urls: urls.to_vec(), cluster, commands })
    }

    pub fn commands(&self) -> Commands {
        self.commands.clone()
    }

    pub fn is_cluster(&self) -> bool {
        self.cluster
    }

    /// The connection events are published on. On a Redis Cluster, the cluster connection
    /// would send each `PUBLISH` to the shard of its channel's slot, and events published on
    /// different shards reach subscribers in no agreed order (session hand-overs need one, see
    /// `bus/redis.rs`): so every node publishes on the node it subscribes on, the first URL,
    /// which puts all events in that node's one order.
    pub async fn publisher(&self) -> anyhow::Result<Commands> {
        if !self.cluster {
            return Ok(self.commands());
        }
        let client = redis::Client::open(self.urls[0].as_str())?;
        Ok(Commands::Single(ConnectionManager::new_with_config(client, manager_config()).await?))
    }

    /// A RESP3 client for the pub/sub connection (the first URL; any cluster node will do).
    pub fn pubsub_client(&self) -> anyhow::Result<redis::Client> {
        let info = redis::IntoConnectionInfo::into_connection_info(self.urls[0].as_str())?;
        let redis_info = info.redis_settings().clone().set_protocol(redis::ProtocolVersion::RESP3);
        Ok(redis::Client::open(info.set_redis_settings(redis_info))?)
    }
}

/// Reconnects quickly and keeps trying: an outage ends when Redis answers again.
pub fn manager_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_millis(500))
}

/// Runs one Redis operation and records its latency under `op`.
pub async fn timed<T>(
    metrics: &Metrics,
    op: &'static str,
    f: impl Future<Output = redis::RedisResult<T>>,
) -> anyhow::Result<T> {
    let started = Instant::now();
    let result = f.await;
    metrics.redis_seconds.with_label_values(&[op]).observe(started.elapsed().as_secs_f64());
    if result.is_err() {
        metrics.redis_errors.with_label_values(&[op]).inc();
    }
    Ok(result?)
}
