//! Live state in Redis. Key layout (hash tags in braces keep what one script touches on one
//! Redis Cluster shard):
//!
//! | key | type | what |
//! |---|---|---|
//! | `vh:{q:WA}:order` | sorted set | waiting visit ids, scored by arrival (ms) |
//! | `vh:{q:WA}:entries` | hash | visit id -> what the queue shows of it (JSON) |
//! | `vh:{q:WA}:version` | string | counter bumped by every change of the queue |
//! | `vh:{q:WA}:mean_visit` | string | the state's mean visit duration in seconds, as learned (exponentially weighted) |
//! | `vh:{q:WA}:mean_pickup` | string | the state's mean pick-up delay in seconds (a free provider to a claim), learned the same way |
//! | `vh:{q:WA}:busy` | sorted set | admissions while the state is busy, scored by the hub's clock (ms), the last hour's |
//! | `vh:lock:<name>` | string | a lock's holder token, with a TTL |
//! | `vh:ip:{<block>}:<address>` | string | when a client address's intake bucket is next full (µs of Redis's clock), expiring then |
//! | `vh:ip:{<block>}` | string | the same for the block of addresses around it (an IPv4 /24, an IPv6 /48) |
//! | `vh:seeded` | string | present once the queues were built from the store |
//! | `vh:nodes` | set | node ids in the registry |
//! | `vh:node:<id>` | string | the node's record (JSON), expiring with its heartbeat |
//! | `vh:orphans` | list | visits whose patient's node went away |
//! | `vh:{s:<id>}:meta` | string | a session's topics and owner (JSON), expiring |
//! | `vh:{s:<id>}:out` | stream | a session's frames (`s`, `f`) and the owner's seal (`seal`, `broken`) |

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use redis::{AsyncCommands, Script};
use serde::{Deserialize, Serialize};

use super::{
    AddressKey, AddressQuota, INTAKE_IN_FLIGHT_MS, JournalOp, LiveState, LockGuard, NodeRecord, Pushed, QueueChange,
    QueueLoad, QueueStep, Registry, Sealed, SessionMeta,
};
use crate::hub::queues::QueuedVisit;
use crate::hub::{Learned, LearnedMeans};
use crate::metrics::Metrics;
use crate::model::UsState;
use crate::redis_link::{Commands, RedisLink, timed};

/// A version counter that went missing (Redis lost its data) restarts from the clock in
/// microseconds, above any version a node saw before, so nodes never mistake new for old.
const NEXT_VERSION: &str = r"
local function next_version(key, now_us)
  if redis.call('EXISTS', key) == 0 then redis.call('SET', key, now_us) end
  return redis.call('INCR', key)
end";

/// The state's learned means (KEYS `mv` and `mp`), answered with each change so that every
/// node that applies the change takes them too.
const MEANS: &str = r"
local function means(mv, mp)
  return redis.call('GET', mv) or '', redis.call('GET', mp) or ''
end";

/// Adds the visit and ends its intake in flight, answering the version, its place (its rank
/// among the visits waiting plus its rank among the intakes in flight, both in the queue's
/// order, plus one), its rank among the visits waiting, and the means.
const PUSH: &str = r"
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
local rank = redis.call('ZRANK', KEYS[1], ARGV[2])
local place = rank + 1
local ahead = redis.call('ZRANK', KEYS[4], ARGV[2])
if ahead then
  redis.call('ZREM', KEYS[4], ARGV[2])
  place = place + ahead
end
local mv, mp = means(KEYS[5], KEYS[6])
return {next_version(KEYS[3], ARGV[4]), place, rank, mv, mp}";

/// Visits waiting plus intakes in flight, once those older than ARGV[1] are let go.
const LEN: &str = r"
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
return redis.call('ZCARD', KEYS[1]) + redis.call('ZCARD', KEYS[2])";

const REMOVE: &str = r"
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return false end
redis.call('HDEL', KEYS[2], ARGV[1])
local mv, mp = means(KEYS[4], KEYS[5])
return {next_version(KEYS[3], ARGV[2]), mv, mp}";

const BUMP: &str = r"
local mv, mp = means(KEYS[2], KEYS[3])
return {next_version(KEYS[1], ARGV[1]), mv, mp}";

/// Order, entries, version and the learned means read together, so a load never mixes two
/// versions.
const LOAD: &str = r"
return {redis.call('GET', KEYS[3]) or '0', redis.call('ZRANGE', KEYS[1], 0, -1), redis.call('HGETALL', KEYS[2]), redis.call('GET', KEYS[4]) or '', redis.call('GET', KEYS[5]) or ''}";

/// One observation learned into a mean, atomically: nodes learning at once each count.
const LEARN: &str = r"
local mean = tonumber(redis.call('GET', KEYS[1]) or ARGV[3])
mean = mean + tonumber(ARGV[2]) * (tonumber(ARGV[1]) - mean)
redis.call('SET', KEYS[1], tostring(mean))
return tostring(mean)";

/// Deletes the lock only if this holder still has it.
const UNLOCK: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0";

/// What the queue shows of a visit, as stored in `entries`.
#[derive(Serialize, Deserialize)]
struct StoredEntry {
    display_name: String,
    reason: String,
    enqueued_at: DateTime<Utc>,
}

struct QueueKeys {
    order: String,
    entries: String,
    version: String,
    busy: String,
    mean_visit: String,
    mean_pickup: String,
    /// Intakes in flight: visit ids scored by arrival (ms).
    in_flight: String,
}

impl QueueKeys {
    fn mean(&self, what: Learned) -> &str {
        match what {
            Learned::VisitSecs => &self.mean_visit,
            Learned::PickupSecs => &self.mean_pickup,
        }
    }
}

fn queue_keys(state: UsState) -> QueueKeys {
    let tag = format!("vh:{{q:{}}}", state.code());
    QueueKeys {
        order: format!("{tag}:order"),
        entries: format!("{tag}:entries"),
        version: format!("{tag}:version"),
        busy: format!("{tag}:busy"),
        mean_visit: format!("{tag}:mean_visit"),
        mean_pickup: format!("{tag}:mean_pickup"),
        in_flight: format!("{tag}:in_flight"),
    }
}

const HOUR_MS: i64 = 3_600_000;

/// The learned means as the scripts answer them ('' before the first observation).
fn means(visit_secs: &str, pickup_secs: &str) -> LearnedMeans {
    LearnedMeans { visit_secs: visit_secs.parse().ok(), pickup_secs: pickup_secs.parse().ok() }
}

/// One intake from a client address's bucket, then from its block's (GCRA): each key holds
/// the moment its bucket is full again, `interval` (ARGV[1] for the address, ARGV[2] for the
/// block, µs) later per intake taken; an intake is allowed while that moment stays within `span`
/// (ARGV[3], a minute) of now. Answers 0, or the µs to wait. Redis's own clock, so every node
/// measures from the same one; the block refusing leaves the address's intake spent, as one
/// node's buckets do.
const ADDRESS_TAKE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local span = tonumber(ARGV[3])
local function take(key, interval)
  local full_at = math.max(tonumber(redis.call('GET', key) or now), now)
  local wait = full_at + interval - span - now
  if wait > 0 then return wait end
  full_at = full_at + interval
  redis.call('SET', key, string.format('%.0f', full_at), 'PX', math.ceil((full_at - now) / 1000))
  return 0
end
local wait = take(KEYS[1], tonumber(ARGV[1]))
if wait > 0 then return wait end
return take(KEYS[2], tonumber(ARGV[2]))";

const MINUTE_US: u64 = 60_000_000;

const SEEDED: &str = "vh:seeded";
const NODES: &str = "vh:nodes";
const ORPHANS: &str = "vh:orphans";

fn meta_key(session_id: &str) -> String {
    format!("vh:{{s:{session_id}}}:meta")
}

fn out_key(session_id: &str) -> String {
    format!("vh:{{s:{session_id}}}:out")
}

fn session_of(op: &JournalOp) -> &str {
    match op {
        JournalOp::Meta { session_id, .. }
        | JournalOp::Frame { session_id, .. }
        | JournalOp::Seal { session_id, .. }
        | JournalOp::Drop { session_id } => session_id,
    }
}

fn add_to(pipe: &mut redis::Pipeline, op: &JournalOp) -> anyhow::Result<()> {
    match op {
        JournalOp::Meta { session_id, meta, ttl_secs } => {
            pipe.set_ex(meta_key(session_id), serde_json::to_string(meta)?, *ttl_secs).ignore();
        }
        JournalOp::Frame { session_id, seq, text, max_frames, .. } => {
            let key = out_key(session_id);
            let trim = redis::streams::StreamMaxlen::Approx(*max_frames);
            pipe.xadd_maxlen(&key, trim, "*", &[("s", seq.to_string().as_str()), ("f", text.as_str())]).ignore();
            // Its expiry is set once per batch, after the session's last frame (`journal_write`).
        }
        JournalOp::Seal { session_id, token, seq, broken } => {
            let fields =
                [("seal", seq.to_string()), ("token", token.clone()), ("broken", u8::from(*broken).to_string())];
            pipe.xadd(out_key(session_id), "*", &fields).ignore();
        }
        JournalOp::Drop { session_id } => {
            pipe.del(&[meta_key(session_id), out_key(session_id)]).ignore();
        }
    }
    Ok(())
}

/// Reads a stream's entries into frames and, if present, the seal answering `token` (seals
/// of earlier hand-overs of the session are passed over).
fn read_entries(
    entries: &[redis::streams::StreamId],
    token: &str,
    frames: &mut Vec<(u64, String)>,
) -> Option<(u64, bool)> {
    let mut seal = None;
    for e in entries {
        if let Some(seq) = e.get::<u64>("seal") {
            if e.get::<String>("token").as_deref() == Some(token) {
                seal = Some((seq, e.get::<u8>("broken").unwrap_or(1) != 0));
            }
        } else if let (Some(seq), Some(text)) = (e.get::<u64>("s"), e.get::<String>("f")) {
            frames.push((seq, text));
        }
    }
    seal
}

fn node_key(node: &str) -> String {
    format!("vh:node:{node}")
}

pub struct RedisLive {
    conn: Commands,
    metrics: Arc<Metrics>,
    push: Script,
    remove: Script,
    bump: Script,
    len: Script,
    load: Script,
    learn: Script,
    unlock: Script,
    address_take: Script,
}

impl RedisLive {
    pub fn new(link: &RedisLink, metrics: Arc<Metrics>) -> RedisLive {
        RedisLive {
            conn: link.commands(),
            metrics,
            push: Script::new(&format!("{NEXT_VERSION}\n{MEANS}\n{PUSH}")),
            remove: Script::new(&format!("{NEXT_VERSION}\n{MEANS}\n{REMOVE}")),
            bump: Script::new(&format!("{NEXT_VERSION}\n{MEANS}\n{BUMP}")),
            len: Script::new(LEN),
            load: Script::new(LOAD),
            learn: Script::new(LEARN),
            unlock: Script::new(UNLOCK),
            address_take: Script::new(ADDRESS_TAKE),
        }
    }
}

/// A Redis lock: released (if still ours) when dropped.
struct RedisLock {
    conn: Commands,
    key: String,
    token: String,
    unlock: Script,
}

impl Drop for RedisLock {
    fn drop(&mut self) {
        let (mut conn, key, token, unlock) =
            (self.conn.clone(), std::mem::take(&mut self.key), std::mem::take(&mut self.token), self.unlock.clone());
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                // Failing here only means the lock lives until its TTL.
                let _: redis::RedisResult<i64> = unlock.key(&key).arg(&token).invoke_async(&mut conn).await;
            });
        }
    }
}

#[async_trait]
impl LiveState for RedisLive {
    fn is_shared(&self) -> bool {
        true
    }

    async fn lock(&self, name: &str, ttl: Duration, wait: Duration) -> anyhow::Result<LockGuard> {
        let key = format!("vh:lock:{name}");
        let token = uuid::Uuid::new_v4().to_string();
        let deadline = tokio::time::Instant::now() + wait;
        let mut pause = Duration::from_millis(2);
        loop {
            let mut conn = self.conn.clone();
            let options = redis::SetOptions::default()
                .conditional_set(redis::ExistenceCheck::NX)
                .with_expiration(redis::SetExpiry::PX(ttl.as_millis() as u64));
            let taken: Option<String> = timed(&self.metrics, "lock", conn.set_options(&key, &token, options)).await?;
            if taken.is_some() {
                let unlock = self.unlock.clone();
                return Ok(LockGuard::new(RedisLock { conn: self.conn.clone(), key, token, unlock }));
            }
            if tokio::time::Instant::now() + pause > deadline {
                anyhow::bail!("lock {name} not free within {wait:?}");
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    async fn queue_push(&self, state: UsState, entry: &QueuedVisit) -> anyhow::Result<Pushed> {
        let k = queue_keys(state);
        let stored = StoredEntry {
            display_name: entry.display_name.clone(),
            reason: entry.reason.clone(),
            enqueued_at: entry.enqueued_at,
        };
        let mut conn = self.conn.clone();
        let mut call = self.push.key(&k.order);
        call.key(&k.entries)
            .key(&k.version)
            .key(&k.in_flight)
            .key(&k.mean_visit)
            .key(&k.mean_pickup)
            .arg(entry.enqueued_at.timestamp_millis())
            .arg(&*entry.visit_id)
            .arg(serde_json::to_string(&stored)?)
            .arg(crate::clock::unix_micros());
        let (version, place, rank, visit_secs, pickup_secs): (u64, u32, u32, String, String) =
            timed(&self.metrics, "queue_push", call.invoke_async(&mut conn)).await?;
        let step = QueueStep::Pushed { rank, visit: Arc::new(entry.clone()) };
        Ok(Pushed { change: QueueChange { version, step, learned: means(&visit_secs, &pickup_secs) }, place })
    }

    async fn intake_reserve(&self, state: UsState, visit_id: &str, at_ms: i64) -> anyhow::Result<()> {
        let mut conn = self.conn.clone();
        timed(&self.metrics, "intake_reserve", conn.zadd(queue_keys(state).in_flight, visit_id, at_ms)).await
    }

    async fn intake_withdraw(&self, state: UsState, visit_id: &str) -> anyhow::Result<()> {
        let mut conn = self.conn.clone();
        timed(&self.metrics, "intake_withdraw", conn.zrem(queue_keys(state).in_flight, visit_id)).await
    }

    async fn queue_remove(&self, state: UsState, visit_id: &str) -> anyhow::Result<Option<QueueChange>> {
        let k = queue_keys(state);
        let mut conn = self.conn.clone();
        let mut call = self.remove.key(&k.order);
        call.key(&k.entries).key(&k.version).key(&k.mean_visit).key(&k.mean_pickup);
        call.arg(visit_id).arg(crate::clock::unix_micros());
        let removed: Option<(u64, String, String)> =
            timed(&self.metrics, "queue_remove", call.invoke_async(&mut conn)).await?;
        Ok(removed.map(|(version, visit_secs, pickup_secs)| QueueChange {
            version,
            step: QueueStep::Removed { visit_id: visit_id.into() },
            learned: means(&visit_secs, &pickup_secs),
        }))
    }

    async fn queue_bump(&self, state: UsState) -> anyhow::Result<QueueChange> {
        let k = queue_keys(state);
        let mut conn = self.conn.clone();
        let mut call = self.bump.key(&k.version);
        call.key(&k.mean_visit).key(&k.mean_pickup).arg(crate::clock::unix_micros());
        let (version, visit_secs, pickup_secs): (u64, String, String) =
            timed(&self.metrics, "queue_bump", call.invoke_async(&mut conn)).await?;
        Ok(QueueChange { version, step: QueueStep::Bumped, learned: means(&visit_secs, &pickup_secs) })
    }

    async fn queue_len(&self, state: UsState, now_ms: i64) -> anyhow::Result<u32> {
        let k = queue_keys(state);
        let mut conn = self.conn.clone();
        let mut call = self.len.key(&k.order);
        call.key(&k.in_flight).arg(now_ms - INTAKE_IN_FLIGHT_MS);
        timed(&self.metrics, "queue_len", call.invoke_async(&mut conn)).await
    }

    async fn queue_load(&self, state: UsState) -> anyhow::Result<QueueLoad> {
        let k = queue_keys(state);
        let mut conn = self.conn.clone();
        let mut call = self.load.key(&k.order);
        call.key(&k.entries).key(&k.version).key(&k.mean_visit).key(&k.mean_pickup);
        type Loaded = (u64, Vec<String>, std::collections::HashMap<String, String>, String, String);
        let (version, order, entries, visit_secs, pickup_secs): Loaded =
            timed(&self.metrics, "queue_load", call.invoke_async(&mut conn)).await?;
        let mut out = Vec::with_capacity(order.len());
        for id in order {
            // An id without its entry is skipped rather than shown half-known.
            let Some(raw) = entries.get(&id) else { continue };
            let e: StoredEntry = serde_json::from_str(raw)?;
            out.push(Arc::new(QueuedVisit {
                visit_id: id.into(),
                display_name: e.display_name,
                reason: e.reason,
                enqueued_at: e.enqueued_at,
            }));
        }
        Ok(QueueLoad { version, entries: out, learned: means(&visit_secs, &pickup_secs) })
    }

    async fn learn(&self, state: UsState, what: Learned, secs: f64, alpha: f64, prior: f64) -> anyhow::Result<f64> {
        let mut conn = self.conn.clone();
        let mut call = self.learn.key(queue_keys(state).mean(what));
        call.arg(secs).arg(alpha).arg(prior);
        let mean: String = timed(&self.metrics, "learn", call.invoke_async(&mut conn)).await?;
        Ok(mean.parse()?)
    }

    async fn busy_admissions(&self, state: UsState, now_ms: i64) -> anyhow::Result<Vec<i64>> {
        let key = queue_keys(state).busy;
        let mut pipe = redis::pipe();
        pipe.zrembyscore(&key, "-inf", now_ms - HOUR_MS).ignore().zrange_withscores(&key, 0, -1);
        let mut conn = self.conn.clone();
        let (admitted,): (Vec<(String, f64)>,) = timed(&self.metrics, "busy", pipe.query_async(&mut conn)).await?;
        Ok(admitted.into_iter().map(|(_, at)| at as i64).collect())
    }

    async fn busy_admit(&self, state: UsState, at_ms: i64, keep: u32) -> anyhow::Result<()> {
        let key = queue_keys(state).busy;
        // Members are unique (two admissions in one millisecond both count); the score is when.
        let member = format!("{at_ms}:{}", uuid::Uuid::new_v4().simple());
        let mut pipe = redis::pipe();
        pipe.zadd(&key, member, at_ms)
            .ignore()
            .zremrangebyrank(&key, 0, -(keep as isize) - 1)
            .ignore()
            .pexpire(&key, HOUR_MS)
            .ignore();
        let mut conn = self.conn.clone();
        timed(&self.metrics, "busy", pipe.query_async(&mut conn)).await
    }

    async fn busy_clear(&self, state: UsState) -> anyhow::Result<()> {
        let mut conn = self.conn.clone();
        let _: i64 = timed(&self.metrics, "busy", conn.del(queue_keys(state).busy)).await?;
        Ok(())
    }

    async fn address_take(&self, key: AddressKey, quota: AddressQuota) -> anyhow::Result<Option<Duration>> {
        let mut conn = self.conn.clone();
        let block = format!("vh:ip:{{{}}}", key.block);
        let mut call = self.address_take.key(format!("{block}:{}", key.address));
        call.key(block);
        let interval = |per_minute: NonZeroU32| MINUTE_US / u64::from(per_minute.get());
        call.arg(interval(quota.address)).arg(interval(quota.block)).arg(MINUTE_US);
        let wait_us: u64 = timed(&self.metrics, "address_take", call.invoke_async(&mut conn)).await?;
        Ok((wait_us > 0).then(|| Duration::from_micros(wait_us)))
    }

    async fn is_seeded(&self) -> anyhow::Result<bool> {
        let mut conn = self.conn.clone();
        timed(&self.metrics, "seeded", conn.exists(SEEDED)).await
    }

    async fn mark_seeded(&self) -> anyhow::Result<()> {
        let mut conn = self.conn.clone();
        timed(&self.metrics, "seeded", conn.set(SEEDED, 1)).await
    }

    async fn heartbeat(&self, record: &NodeRecord, ttl: Duration) -> anyhow::Result<()> {
        let (mut a, mut b) = (self.conn.clone(), self.conn.clone());
        let json = serde_json::to_string(record)?;
        // Two keys on different cluster slots: sent together, one round trip.
        let record_set = timed(
            &self.metrics,
            "heartbeat",
            a.pset_ex::<_, _, ()>(node_key(&record.node), json, ttl.as_millis() as u64),
        );
        let listed = timed(&self.metrics, "heartbeat", b.sadd::<_, _, i64>(NODES, &record.node));
        tokio::try_join!(record_set, listed)?;
        Ok(())
    }

    async fn registry(&self) -> anyhow::Result<Registry> {
        let mut conn = self.conn.clone();
        let nodes: Vec<String> = timed(&self.metrics, "registry", conn.smembers(NODES)).await?;
        // One GET per node (the records live on different cluster slots), all sent at once:
        // one round trip however many nodes there are.
        let reads = nodes.iter().map(|node| {
            let mut conn = self.conn.clone();
            async move { timed(&self.metrics, "registry", conn.get::<_, Option<String>>(node_key(node))).await }
        });
        let records = futures_util::future::try_join_all(reads).await?;
        let mut registry = Registry { alive: Vec::new(), expired: Vec::new() };
        for (node, raw) in nodes.into_iter().zip(records) {
            match raw.map(|r| serde_json::from_str::<NodeRecord>(&r)) {
                Some(Ok(record)) => registry.alive.push(record),
                Some(Err(e)) => tracing::warn!(node, error = %e, "unreadable node record"),
                None => registry.expired.push(node),
            }
        }
        Ok(registry)
    }

    async fn leave(&self, node: &str) -> anyhow::Result<bool> {
        let mut conn = self.conn.clone();
        let removed: i64 = timed(&self.metrics, "registry", conn.srem(NODES, node)).await?;
        let _: i64 = timed(&self.metrics, "registry", conn.del(node_key(node))).await?;
        Ok(removed == 1)
    }

    async fn push_orphans(&self, visit_ids: &[String]) -> anyhow::Result<()> {
        if visit_ids.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        let _: i64 = timed(&self.metrics, "orphans", conn.rpush(ORPHANS, visit_ids)).await?;
        Ok(())
    }

    async fn pop_orphans(&self, max: usize) -> anyhow::Result<Vec<String>> {
        let mut conn = self.conn.clone();
        let count = std::num::NonZeroUsize::new(max.max(1));
        let popped: Option<Vec<String>> = timed(&self.metrics, "orphans", conn.lpop(ORPHANS, count)).await?;
        Ok(popped.unwrap_or_default())
    }

    async fn node_alive(&self, node: &str) -> anyhow::Result<bool> {
        let mut conn = self.conn.clone();
        timed(&self.metrics, "registry", conn.exists(node_key(node))).await
    }

    async fn journal_write(&self, ops: &[JournalOp]) -> anyhow::Result<()> {
        // One pipeline per session: its keys share a hash tag, so a Redis Cluster takes it
        // on one shard, in order. A stream that got frames has its expiry set once, after them
        // (the TTL of its last frame; none after a drop).
        let mut by_session: HashMap<&str, (redis::Pipeline, Option<u64>)> = HashMap::new();
        for op in ops {
            let (pipe, expiry) = by_session.entry(session_of(op)).or_insert_with(|| (redis::pipe(), None));
            add_to(pipe, op)?;
            match op {
                JournalOp::Frame { ttl_secs, .. } => *expiry = Some(*ttl_secs),
                JournalOp::Drop { .. } => *expiry = None,
                _ => {}
            }
        }
        let writes = by_session.into_iter().map(|(session, (mut pipe, expiry))| {
            if let Some(ttl_secs) = expiry {
                pipe.expire(out_key(session), ttl_secs as i64).ignore();
            }
            let mut conn = self.conn.clone();
            async move { timed(&self.metrics, "journal", pipe.query_async::<()>(&mut conn)).await }
        });
        for result in futures_util::future::join_all(writes).await {
            result?;
        }
        Ok(())
    }

    async fn journal_meta(&self, session_id: &str) -> anyhow::Result<Option<SessionMeta>> {
        let mut conn = self.conn.clone();
        let raw: Option<String> = timed(&self.metrics, "journal", conn.get(meta_key(session_id))).await?;
        Ok(raw.map(|r| serde_json::from_str(&r)).transpose()?)
    }

    async fn journal_sealed(&self, session_id: &str, token: &str, wait: Duration) -> anyhow::Result<Option<Sealed>> {
        let key = out_key(session_id);
        let deadline = tokio::time::Instant::now() + wait;
        let mut frames = Vec::new();
        let mut last_id = "0".to_string();
        loop {
            let mut conn = self.conn.clone();
            let opts = redis::streams::StreamReadOptions::default().count(1000);
            let reply: Option<redis::streams::StreamReadReply> =
                timed(&self.metrics, "journal", conn.xread_options(&[&key], &[&last_id], &opts)).await?;
            let entries: Vec<redis::streams::StreamId> =
                reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids).collect();
            if let Some(last) = entries.last() {
                last_id = last.id.clone();
            }
            if let Some((last_seq, broken)) = read_entries(&entries, token, &mut frames) {
                return Ok(Some(Sealed { last_seq, broken, frames }));
            }
            if entries.is_empty() {
                if tokio::time::Instant::now() >= deadline {
                    return Ok(None);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}
