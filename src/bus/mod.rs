//! Fan-out of events between nodes. A node subscribes to a topic when its first local
//! subscriber appears and drops it after the last leaves; what arrives is handed to the
//! node's [`BusHandler`], which routes it to local sessions. The in-process bus is the
//! single-node default; a Redis pub/sub bus serves clusters.

mod event;
mod memory;
mod redis;

use std::fmt;
use std::sync::{Arc, Weak};

use async_trait::async_trait;

pub use event::{BusEvent, PresenceBatch, Signal};
pub use memory::MemoryBus;
pub use redis::RedisBus;

use crate::model::{UsState, VisitId};

/// Where an event goes. Topic names are stable strings so a Redis channel can carry them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Topic {
    /// Changes to one state's queue (order, staffing, busy flag).
    Queue(UsState),
    /// Events of one visit (status, chat), for its patient, provider and conversation members.
    Visit(VisitId),
    /// Signaling of one visit, for its patient and provider only.
    Signal(VisitId),
    /// Provider presence in one state, for caregivers covering it.
    Staff(UsState),
    /// Events about one user (access revoked), for all of their sessions. Shared: every
    /// session holds its own, listed twice (by the router and by the session).
    Subject(Arc<str>),
    /// News for every node (settings changed, session hand-overs); every node listens.
    Cluster,
    /// One session of this node, by session id: local routing only, never on the bus.
    Session(String),
}

impl Topic {
    /// The topic a name (as [`Topic`]'s `Display` writes it) stands for.
    pub fn parse(name: &str) -> Option<Topic> {
        if name == "cluster" {
            return Some(Topic::Cluster);
        }
        let (kind, rest) = name.split_once('.')?;
        Some(match kind {
            "queue" => Topic::Queue(UsState::parse(rest).ok()?),
            "visit" => Topic::Visit(rest.to_string()),
            "signal" => Topic::Signal(rest.to_string()),
            "staff" => Topic::Staff(UsState::parse(rest).ok()?),
            "subject" => Topic::Subject(rest.into()),
            "session" => Topic::Session(rest.to_string()),
            _ => return None,
        })
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Topic::Queue(s) => write!(f, "queue.{s}"),
            Topic::Visit(v) => write!(f, "visit.{v}"),
            Topic::Signal(v) => write!(f, "signal.{v}"),
            Topic::Staff(s) => write!(f, "staff.{s}"),
            Topic::Subject(s) => write!(f, "subject.{s}"),
            Topic::Cluster => f.write_str("cluster"),
            Topic::Session(s) => write!(f, "session.{s}"),
        }
    }
}

/// Receives what the bus delivers to this node. Must not block: it hands events to bounded
/// per-session queues.
pub trait BusHandler: Send + Sync {
    fn deliver(&self, topic: &Topic, event: Arc<BusEvent>);

    /// The bus was away and is back: events published meanwhile never arrived here.
    fn resync(&self) {}
}

#[async_trait]
pub trait Bus: Send + Sync {
    /// Sets the node's handler. The bus holds it weakly: the handler owns the bus.
    fn attach(&self, handler: Weak<dyn BusHandler>);

    /// Publishes to every node subscribed to `topic`, this one included, exactly once each.
    async fn publish(&self, topic: &Topic, event: BusEvent) -> anyhow::Result<()>;

    /// This node wants `topic`.
    async fn subscribe(&self, topic: &Topic) -> anyhow::Result<()>;

    /// This node no longer wants `topic`.
    async fn unsubscribe(&self, topic: &Topic) -> anyhow::Result<()>;

    /// Whether the bus can publish now (for readiness).
    fn is_connected(&self) -> bool;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_round_trip() {
        let wa = UsState::parse("WA").unwrap();
        for topic in [
            Topic::Queue(wa),
            Topic::Visit("0192-a".into()),
            Topic::Signal("v.1".into()),
            Topic::Staff(wa),
            Topic::Subject("dr.lee".into()),
            Topic::Cluster,
            Topic::Session("5c1e".into()),
        ] {
            assert_eq!(Topic::parse(&topic.to_string()), Some(topic));
        }
        assert_eq!(Topic::parse("queue.XX"), None);
        assert_eq!(Topic::parse("nope.1"), None);
    }
}
