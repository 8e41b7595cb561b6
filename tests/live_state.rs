//! Intakes in flight in live state, the same in one node's memory, on one Redis server and on a
//! three-master Redis Cluster: counted as waiting, ended by their visit's push or a withdrawal,
//! lapsed when their node went away, and counted in the places of later arrivals stored first.
//! Without redis-server these tests fail; `./scripts/test` installs it.

#[path = "support/redis.rs"]
mod redis_support;

use std::sync::Arc;

use chrono::DateTime;
use redis_support::{RedisCluster, RedisServer};
use visithub::hub::queues::QueuedVisit;
use visithub::live::{INTAKE_IN_FLIGHT_MS, LiveState, MemoryLive, RedisLive};
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
    assert!(v2.version > v3.version);

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

async fn redis_live(urls: String, cluster: bool) -> RedisLive {
    let urls: Vec<String> = urls.split(',').map(str::to_string).collect();
    let link = RedisLink::connect(&urls, cluster).await.unwrap();
    RedisLive::new(&link, Arc::new(Metrics::new("test")))
}

#[tokio::test]
async fn in_memory() {
    intakes_in_flight(&MemoryLive::new()).await;
}

#[tokio::test]
async fn on_one_redis_server() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(dir.path());
    intakes_in_flight(&redis_live(redis.url(), false).await).await;
}

#[tokio::test]
async fn on_a_redis_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisCluster::start(dir.path());
    intakes_in_flight(&redis_live(redis.urls(), true).await).await;
}
