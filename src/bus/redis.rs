//! The cluster bus: Redis pub/sub. Each topic is a channel `vh:<topic>`; the node subscribes
//! on its first local subscriber and unsubscribes after the last. What a node publishes
//! reaches its own sessions the way it reaches every other node's, through Redis, exactly
//! once: so every node sees one order of events, which session hand-overs rely on (see
//! [`BusEvent::Handover`]). On a Redis Cluster that order is one Redis node's: every hub node
//! publishes and subscribes on the first of its Redis URLs, which must be the same node for
//! all of them ([`RedisLink::publisher`]). While Redis is away nothing is delivered; the nodes resync when
//! it returns.
//!
//! The subscriber connection is a RESP3 [`ConnectionManager`]: it reconnects by itself and
//! subscribes again to every channel it had. Events published while it was away are lost to
//! this node, so the first confirmation after a reconnect asks the handler to resynchronize.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{AsyncPushSender, ConnectionManager, SendError};
use redis::{AsyncCommands, PushInfo, PushKind, Value};
use serde::{Deserialize, Serialize};

use super::{Bus, BusEvent, BusHandler, Topic};
use crate::metrics::Metrics;
use crate::redis_link::{Commands, RedisLink, manager_config, timed};

const CHANNEL_PREFIX: &str = "vh:";

/// What travels on a channel: the event, who sent it and when (for the fan-out lag).
#[derive(Serialize, Deserialize)]
struct Envelope {
    node: String,
    sent_at_us: i64,
    event: BusEvent,
}

fn channel(topic: &Topic) -> String {
    format!("{CHANNEL_PREFIX}{topic}")
}

struct Shared {
    node: String,
    handler: OnceLock<Weak<dyn BusHandler>>,
    connected: AtomicBool,
    /// Set by a disconnection; the next subscription confirmation means "back, resync".
    lost: AtomicBool,
    metrics: Arc<Metrics>,
}

impl Shared {
    fn handler(&self) -> Option<Arc<dyn BusHandler>> {
        self.handler.get().and_then(Weak::upgrade)
    }

    fn on_message(&self, data: Vec<Value>) {
        let mut parts = data.into_iter();
        let (Some(Value::BulkString(channel)), Some(Value::BulkString(payload))) = (parts.next(), parts.next()) else {
            return;
        };
        let Some(topic) =
            std::str::from_utf8(&channel).ok().and_then(|c| c.strip_prefix(CHANNEL_PREFIX)).and_then(Topic::parse)
        else {
            return;
        };
        let envelope: Envelope = match serde_json::from_slice(&payload) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(%topic, error = %e, "undecodable bus message dropped");
                return;
            }
        };
        let lag = (crate::clock::unix_micros() - envelope.sent_at_us).max(0) as f64 / 1e6;
        self.metrics.bus_lag.observe(lag);
        if let Some(handler) = self.handler() {
            handler.deliver(&topic, Arc::new(envelope.event));
        }
    }
}

/// Receives the subscriber connection's pushes. Never blocks: delivery only fills bounded
/// per-session queues.
struct PushRelay(Arc<Shared>);

impl AsyncPushSender for PushRelay {
    fn send(&self, info: PushInfo) -> Result<(), SendError> {
        let shared = &self.0;
        match info.kind {
            PushKind::Message => shared.on_message(info.data),
            PushKind::Disconnection => {
                if shared.connected.swap(false, Ordering::AcqRel) {
                    tracing::warn!("bus lost its Redis connection");
                    shared.metrics.bus_disconnects.inc();
                }
                shared.lost.store(true, Ordering::Release);
            }
            PushKind::Subscribe => {
                shared.connected.store(true, Ordering::Release);
                if shared.lost.swap(false, Ordering::AcqRel) {
                    tracing::info!("bus reconnected to Redis: resynchronizing");
                    if let Some(handler) = shared.handler() {
                        handler.resync();
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}

pub struct RedisBus {
    shared: Arc<Shared>,
    publisher: Commands,
    subscriber: ConnectionManager,
}

impl RedisBus {
    pub async fn connect(link: &RedisLink, node: &str, metrics: Arc<Metrics>) -> anyhow::Result<Arc<RedisBus>> {
        let shared = Arc::new(Shared {
            node: node.to_string(),
            handler: OnceLock::new(),
            connected: AtomicBool::new(false),
            lost: AtomicBool::new(false),
            metrics,
        });
        let config = manager_config().set_push_sender(PushRelay(shared.clone())).set_automatic_resubscription();
        let subscriber = ConnectionManager::new_with_config(link.pubsub_client()?, config).await?;
        let bus = Arc::new(RedisBus { shared, publisher: link.publisher().await?, subscriber });
        // Every node listens to the cluster channel: it carries cluster-wide news, and its
        // confirmation after a reconnect is the signal to resynchronize.
        bus.subscribe(&Topic::Cluster).await?;
        tokio::spawn(keep_alive(Arc::downgrade(&bus)));
        Ok(bus)
    }
}

/// While disconnected, pings the subscriber connection so it keeps trying to reconnect even
/// when nothing else uses it.
async fn keep_alive(bus: Weak<RedisBus>) {
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Some(bus) = bus.upgrade() else { return };
        if !bus.shared.connected.load(Ordering::Acquire) {
            let mut conn = bus.subscriber.clone();
            let _: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut conn).await;
        }
    }
}

#[async_trait]
impl Bus for RedisBus {
    fn attach(&self, handler: Weak<dyn BusHandler>) {
        let _ = self.shared.handler.set(handler);
    }

    async fn publish(&self, topic: &Topic, event: BusEvent) -> anyhow::Result<()> {
        let envelope = Envelope { node: self.shared.node.clone(), sent_at_us: crate::clock::unix_micros(), event };
        let payload = serde_json::to_vec(&envelope)?;
        let mut conn = self.publisher.clone();
        let _: i64 = timed(&self.shared.metrics, "publish", conn.publish(channel(topic), payload)).await?;
        Ok(())
    }

    async fn subscribe(&self, topic: &Topic) -> anyhow::Result<()> {
        let mut conn = self.subscriber.clone();
        timed(&self.shared.metrics, "subscribe", conn.subscribe(channel(topic))).await
    }

    async fn unsubscribe(&self, topic: &Topic) -> anyhow::Result<()> {
        let mut conn = self.subscriber.clone();
        timed(&self.shared.metrics, "unsubscribe", conn.unsubscribe(channel(topic))).await
    }

    fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::Acquire)
    }
}
