//! Intakes in live state, the same in one node's memory, on one Redis server and on a
//! three-master Redis Cluster. Intakes in flight: counted as waiting, ended by their visit's
//! push or a withdrawal, lapsed when their node went away, and counted in the places of later
//! arrivals stored first. Intakes per client address: a bucket per address, the same bucket
//! for every node sharing Redis. Queue changes: applied one by one, they rebuild the queue
//! live state holds. Without redis-server these tests fail; `./scripts/test`
//! installs it.

#[path = "support/redis.rs"]
mod redis_support;

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use chrono::DateTime;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use redis_support::{RedisCluster, RedisServer};
use visithub::hub::queues::{QueuedVisit, Queues};
use visithub::hub::{Estimator, Learned, Staffing};
use visithub::live::{
    AddressKey, AddressQuota, INTAKE_IN_FLIGHT_MS, JournalOp, LiveState, MemoryLive, QueueChange, RedisLive, Sealed,
};
use visithub::metrics::Metrics;
use visithub::model::UsState;
use visithub::redis_link::RedisLink;

const NOW: i64 = 1_796_000_000_000;

fn entry(id: &str, at_ms: i64) -> QueuedVisit {
    QueuedVisit {
        visit_id: id.into(),
        display_name: "Ann".into(),
        reason: "cough".into(),
        enqueued_at: DateTime::from_timestamp_millis(at_ms).unwrap(),
    }
}

async fn intakes_in_flight(live: &dyn LiveState) {
    let wa = UsState::parse("WA").unwrap();
    // Reserved by a node that died before storing its visit: it lapses.
    live.intake_reserve(wa, "v0", NOW - INTAKE_IN_FLIGHT_MS).await.unwrap();
    assert_eq!(live.queue_len(wa, NOW).await.unwrap(), 0, "a lapsed intake does not count");

    for (i, id) in ["v1", "v2", "v3"].into_iter().enumerate() {
        live.intake_reserve(wa, id, NOW + i as i64).await.unwrap();
    }
    assert_eq!(live.queue_len(wa, NOW + 2).await.unwrap(), 3, "intakes in flight count as waiting");

    // The last to arrive is stored first: the two before it are still in flight, ahead of it.
    let v3 = live.queue_push(wa, &entry("v3", NOW + 2)).await.unwrap();
    assert_eq!(v3.place, 3);
    assert_eq!(live.queue_len(wa, NOW + 2).await.unwrap(), 3, "v3 waits, counted once");

    // v1's visit was not stored: withdrawn, it no longer counts nor stands ahead.
    live.intake_withdraw(wa, "v1").await.unwrap();
    assert_eq!(live.queue_len(wa, NOW + 2).await.unwrap(), 2);
    let v2 = live.queue_push(wa, &entry("v2", NOW + 1)).await.unwrap();
    assert_eq!(v2.place, 1, "ahead of v3, which waits");
    assert!(v2.change.version > v3.change.version);

    // A visit put back in line (a released claim, a rebuild) had no intake in flight.
    let back = live.queue_push(wa, &entry("v4", NOW + 3)).await.unwrap();
    assert_eq!(back.place, 3);
    let again = live.queue_push(wa, &entry("v2", NOW + 1)).await.unwrap();
    assert_eq!(again.place, 1, "pushed again, it keeps its place");
    assert_eq!(live.queue_len(wa, NOW + 3).await.unwrap(), 3);
    let order: Vec<String> =
        live.queue_load(wa).await.unwrap().entries.iter().map(|e| e.visit_id.to_string()).collect();
    assert_eq!(order, ["v2", "v3", "v4"], "in order of arrival");

    // Another state's count is its own.
    let or = UsState::parse("OR").unwrap();
    assert_eq!(live.queue_len(or, NOW + 3).await.unwrap(), 0);
}

/// Every change live state answers, applied by a node holding the queue from before them (with
/// neighbours crossing on the way), rebuilds the queue live state holds: its order, version
/// and learned means, without reading it again.
async fn changes_rebuild_the_queue(live: &dyn LiveState) {
    let tx = UsState::parse("TX").unwrap();
    // Redis starts a queue's version from its clock: the copy is read after the first change.
    live.queue_bump(tx).await.unwrap();
    let start = live.queue_load(tx).await.unwrap();
    let queues = Queues::new(Estimator::new(600, 30, 0.2).inputs(Staffing::default()));
    let lane = queues.lane(tx);
    lane.store(start.version, start.entries.clone());
    let mut rng = StdRng::seed_from_u64(7);
    let mut queued: Vec<(String, i64)> = start.entries.iter().map(|e| (e.visit_id.to_string(), 0)).collect();
    let mut changes: Vec<QueueChange> = Vec::new();
    for i in 0..300 {
        let pick = (!queued.is_empty()).then(|| rng.random_range(0..queued.len()));
        match (rng.random_range(0..10), pick) {
            (0..=4, _) | (5..=8, None) => {
                // Twenty milliseconds for 300 changes: many arrive in the same one.
                let (id, at) = (format!("p{i}"), NOW + rng.random_range(0..20));
                changes.push(live.queue_push(tx, &entry(&id, at)).await.unwrap().change);
                queued.push((id, at));
            }
            (5, Some(at)) => {
                // Put back in line, at its arrival or (a rebuild that read it later) another.
                let at_ms = if rng.random_bool(0.5) { queued[at].1 } else { NOW + rng.random_range(0..20) };
                queued[at].1 = at_ms;
                changes.push(live.queue_push(tx, &entry(&queued[at].0, at_ms)).await.unwrap().change);
            }
            (6..=8, Some(at)) => {
                let (id, _) = queued.swap_remove(at);
                changes.push(live.queue_remove(tx, &id).await.unwrap().expect("it was queued"));
                assert!(live.queue_remove(tx, &id).await.unwrap().is_none(), "gone, nothing changes");
            }
            _ => {
                live.learn(tx, Learned::VisitSecs, i as f64, 0.2, 600.0).await.unwrap();
                changes.push(live.queue_bump(tx).await.unwrap());
            }
        }
    }
    let versions: Vec<u64> = changes.iter().map(|c| c.version).collect();
    assert!(versions.windows(2).all(|w| w[1] == w[0] + 1), "one version per change");
    for pair in changes.chunks_mut(2) {
        pair.reverse();
    }
    for change in &changes {
        lane.apply(change);
    }
    let held = live.queue_load(tx).await.unwrap();
    assert_eq!((lane.version(), lane.is_stale()), (held.version, false));
    let ids = |entries: &[Arc<QueuedVisit>]| entries.iter().map(|e| e.visit_id.to_string()).collect::<Vec<_>>();
    let copy = lane.view(tx, false, Estimator::new(600, 30, 0.2).inputs(Staffing::default()));
    assert_eq!(ids(&copy.entries), ids(&held.entries));
    assert!(held.learned.visit_secs.is_some());
    let last = changes.iter().max_by_key(|c| c.version).unwrap();
    assert_eq!(last.learned, held.learned, "the newest change carries the means");
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// Three intakes a minute from an address, four from its block.
const QUOTA: AddressQuota = AddressQuota { address: NonZeroU32::new(3).unwrap(), block: NonZeroU32::new(4).unwrap() };

/// Address `host` of the IPv4 /24 `net` ("198.51.100").
fn key(net: &str, host: u8) -> AddressKey {
    AddressKey { address: ip(&format!("{net}.{host}")), block: ip(&format!("{net}.0")) }
}

/// An address's fourth intake within the minute waits a third of it, a neighbour takes the
/// block's fourth and the next neighbour waits a quarter, and another block is not held back.
/// `other_node` shares the live state (another node), or is `live`.
async fn address_buckets(live: &dyn LiveState, other_node: &dyn LiveState, net: &str) {
    let client = key(net, 7);
    assert_eq!(live.address_take(client, QUOTA).await.unwrap(), None);
    assert_eq!(other_node.address_take(client, QUOTA).await.unwrap(), None);
    assert_eq!(live.address_take(client, QUOTA).await.unwrap(), None);
    for node in [live, other_node] {
        let wait = node.address_take(client, QUOTA).await.unwrap().expect("the address's bucket is empty");
        assert!(
            wait > Duration::from_secs(19) && wait <= Duration::from_secs(20),
            "one intake back a third of a minute after the first: {wait:?}"
        );
    }
    assert_eq!(other_node.address_take(key(net, 8), QUOTA).await.unwrap(), None, "a neighbour: the block's fourth");
    for node in [live, other_node] {
        let wait = node.address_take(key(net, 9), QUOTA).await.unwrap().expect("the block's bucket is empty");
        assert!(
            wait > Duration::from_secs(14) && wait <= Duration::from_secs(15),
            "one intake back a quarter of a minute after the first: {wait:?}"
        );
    }
    let elsewhere = AddressKey { address: ip("2001:db8:1:2::"), block: ip("2001:db8:1::") };
    assert_eq!(live.address_take(elsewhere, QUOTA).await.unwrap(), None, "another block");
}

async fn redis_live(urls: String, cluster: bool) -> RedisLive {
    let urls: Vec<String> = urls.split(',').map(str::to_string).collect();
    let link = RedisLink::connect(&urls, cluster).await.unwrap();
    RedisLive::new(&link, Arc::new(Metrics::new("test")))
}

#[tokio::test]
async fn in_memory() {
    intakes_in_flight(&MemoryLive::new()).await;
    changes_rebuild_the_queue(&MemoryLive::new()).await;
    let live = MemoryLive::new();
    address_buckets(&live, &live, "198.51.100").await;
}

#[tokio::test]
async fn on_one_redis_server() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(dir.path());
    intakes_in_flight(&redis_live(redis.url(), false).await).await;
    changes_rebuild_the_queue(&redis_live(redis.url(), false).await).await;
    let (node_a, node_b) = (redis_live(redis.url(), false).await, redis_live(redis.url(), false).await);
    address_buckets(&node_a, &node_b, "198.51.100").await;
    // A bucket is forgotten once it is full again: a minute after the first of a full
    // minute's intakes, here.
    for bucket in ["vh:ip:{198.51.100.0}:198.51.100.7", "vh:ip:{198.51.100.0}"] {
        let ttl_ms: i64 = redis.cli(&["PTTL", bucket]).unwrap().trim().parse().unwrap();
        assert!(ttl_ms > 55_000 && ttl_ms <= 60_000, "{bucket} expires when full again: {ttl_ms} ms left");
    }
}

#[tokio::test]
async fn on_a_redis_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisCluster::start(dir.path());
    intakes_in_flight(&redis_live(redis.urls(), true).await).await;
    changes_rebuild_the_queue(&redis_live(redis.urls(), true).await).await;
    let (node_a, node_b) = (redis_live(redis.urls(), true).await, redis_live(redis.urls(), true).await);
    // Blocks whose keys hash to different shards (an address's key is on its block's).
    for net in ["198.51.100", "203.0.113", "192.0.2"] {
        address_buckets(&node_a, &node_b, net).await;
    }
}

fn frame(session: &str, seq: u64) -> JournalOp {
    JournalOp::Frame { session_id: session.into(), seq, text: format!("frame {seq}"), max_frames: 256, ttl_secs: 600 }
}

/// Journals written in one batch for several sessions: each stream keeps its frames in order and
/// expires (set once per batch); a dropped session leaves nothing behind, unless frames follow.
#[tokio::test]
async fn journal_batches_keep_order_and_expire_on_one_redis_server() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(dir.path());
    let live = redis_live(redis.url(), false).await;
    let mut ops = Vec::new();
    for seq in 1..=3 {
        ops.extend([frame("s1", seq), frame("s2", seq), frame("s3", seq)]);
    }
    ops.push(JournalOp::Drop { session_id: "s2".into() });
    ops.extend([JournalOp::Drop { session_id: "s3".into() }, frame("s3", 4)]);
    ops.push(JournalOp::Seal { session_id: "s1".into(), token: "t".into(), seq: 3, broken: false });
    live.journal_write(&ops).await.unwrap();

    let sealed = live.journal_sealed("s1", "t", Duration::from_secs(1)).await.unwrap();
    let expected = Sealed { last_seq: 3, broken: false, frames: (1..=3).map(|s| (s, format!("frame {s}"))).collect() };
    assert_eq!(sealed, Some(expected));
    for (key, frames) in [("vh:{s:s1}:out", 4), ("vh:{s:s3}:out", 1)] {
        assert_eq!(redis.cli(&["XLEN", key]).unwrap(), frames.to_string(), "{key}");
        let ttl: i64 = redis.cli(&["TTL", key]).unwrap().parse().unwrap();
        assert!(ttl > 590 && ttl <= 600, "{key} expires: {ttl} s left");
    }
    assert_eq!(redis.cli(&["EXISTS", "vh:{s:s2}:out"]).unwrap(), "0", "dropped");
}
