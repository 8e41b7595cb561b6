//! Cluster mode with real processes: three `visithub serve` nodes sharing a PostgreSQL primary
//! and Redis (one server, or a three-master Redis Cluster). A whole visit across nodes, a node
//! killed with `kill -9` mid-visit, and Redis restarting empty under a stream of chat.
//! Without redis-server or PostgreSQL these tests fail; `./scripts/test` installs both.

mod common;
#[path = "support/nodes.rs"]
mod nodes;
#[path = "support/pg.rs"]
mod pg;
#[path = "support/redis.rs"]
mod redis_support;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use common::*;
use nodes::{Backing, HubProcess};
use pg::PgCluster;
use redis_support::{RedisCluster, RedisServer};
use serde_json::{Value, json};
use visithub::model::{Role, UsState, VisitStatus};
use visithub::protocol::{
    ChatHistory, ChatSend, ClientMessage, ServerFrame, ServerMessage, SignalSdp, StateRef, VisitRef, VisitTransition,
};

const OFFER: &str = "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\na=ice-ufrag:Yx3a\r\na=ice-pwd:Wj5pZ0XE0VrUQ1nY7dXh7kFf\r\na=fingerprint:sha-256 6B:8B:5D:EA:59:04:20:23:29:C8:87:1C:CD:A8:1F:4A:0A:5E:AB:CD:3A:9C:B8:2B:4F:6D:1F:0C:E7:44:19:27\r\na=setup:actpass\r\na=mid:0\r\na=sctp-port:5000\r\n";

fn sdp(visit_id: &str, ice_restart: bool) -> SignalSdp {
    SignalSdp { visit_id: visit_id.into(), sdp: OFFER.into(), ice_restart, from: None }
}

fn say(visit_id: &str, client_id: &str) -> ClientMessage {
    ClientMessage::ChatSend(ChatSend { visit_id: visit_id.into(), client_id: client_id.into(), body: client_id.into() })
}

fn join(visit_id: &str) -> ClientMessage {
    ClientMessage::ChatJoin(VisitRef { visit_id: visit_id.into() })
}

fn to(visit_id: &str, status: VisitStatus) -> ClientMessage {
    ClientMessage::VisitTransition(VisitTransition { visit_id: visit_id.into(), to: status })
}

fn chat_body(f: &ServerFrame) -> String {
    let ServerMessage::ChatMessage(m) = &f.msg else { panic!("not a chat message: {f:?}") };
    m.body.clone()
}

/// After a resume: whether the hub recovered the session (a `session.resumed` that says so)
/// or started a new one (`welcome`, or `session.resumed` with `recovered: false`).
async fn recovered(ws: &mut Ws) -> bool {
    match ws.next_of_any(&["welcome", "session.resumed"]).await.msg {
        ServerMessage::Welcome(w) => w.recovered.unwrap_or(false),
        ServerMessage::SessionResumed(r) => r.recovered,
        _ => unreachable!(),
    }
}

/// After a resume that must recover the session: the chat replayed before `session.resumed`.
async fn replay_until_resumed(ws: &mut Ws) -> (visithub::protocol::SessionResumed, Vec<String>) {
    let mut chat = Vec::new();
    loop {
        match ws.next().await.msg {
            ServerMessage::ChatMessage(m) => chat.push(m.body),
            ServerMessage::SessionResumed(r) => return (r, chat),
            ServerMessage::Welcome(w) => panic!("a new session instead of the old one: {w:?}"),
            _ => {}
        }
    }
}

async fn welcome(ws: &mut Ws) -> String {
    let ServerMessage::Welcome(w) = ws.next_of("welcome").await.msg else { unreachable!() };
    w.session_id
}

/// Every message of a conversation, by body, from its history over the socket.
async fn history(ws: &mut Ws, visit_id: &str) -> Vec<String> {
    let page = ws
        .request(&ClientMessage::ChatHistory(ChatHistory {
            visit_id: visit_id.into(),
            before_seq: None,
            limit: Some(100),
        }))
        .await;
    let ServerMessage::Ack(page) = page.msg else { panic!("{page:?}") };
    page["messages"].as_array().unwrap().iter().map(|m| m["body"].as_str().unwrap().to_string()).collect()
}

/// One cluster at a time: each starts PostgreSQL, Redis and several hub processes, and on a
/// 2-core machine running them side by side would starve heartbeats and blur what is tested.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Whether `node` counts `n` nodes in the registry within a few heartbeats.
async fn nodes_seen_by(node: &HubProcess, n: usize) -> bool {
    for _ in 0..50 {
        let url = format!("http://{}/metrics", node.metrics_addr);
        let page = node.http.get(url).send().await.unwrap().text().await.unwrap();
        if page.lines().any(|l| l.starts_with("visithub_cluster_nodes") && l.ends_with(&format!(" {n}"))) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

struct Cluster {
    _serial: tokio::sync::MutexGuard<'static, ()>,
    _pg: PgCluster,
    dir: tempfile::TempDir,
    backing: Backing,
}

impl Cluster {
    async fn new(redis_url: String, redis_cluster: bool) -> Cluster {
        let serial = ONE_AT_A_TIME.lock().await;
        let pg = PgCluster::primary();
        let backing = Backing { database_url: pg.primary_url(), redis_url, redis_cluster };
        Cluster { _serial: serial, _pg: pg, dir: tempfile::tempdir().unwrap(), backing }
    }

    async fn node(&self, name: &str) -> HubProcess {
        self.node_with(name, &[]).await
    }

    async fn node_with(&self, name: &str, extra: &[(&str, &str)]) -> HubProcess {
        HubProcess::start(name, self.dir.path(), &self.backing, extra).await
    }
}

/// A patient on `a`, a support person on `b` and a provider on `c` go through a whole visit.
async fn whole_visit_across_nodes(a: &HubProcess, b: &HubProcess, c: &HubProcess) {
    assert!(a.onboard("sam", "support", &["WA"]).await.status.is_success());
    assert!(a.onboard("dr-lee", "provider", &["WA"]).await.status.is_success());

    let mut sam = b.ws(&b.token(Role::Support, "sam", &[], 3600)).await;
    welcome(&mut sam).await;
    assert!(is_ack(
        &sam.request(&ClientMessage::QueueSubscribe(StateRef { state: UsState::parse("WA").unwrap() })).await
    ));
    sam.next_of("queue.snapshot").await;

    let intake = a.intake("Ann", "WA", None).await;
    assert_eq!(intake.status, 201, "{:?}", intake.body);
    let visit_id = intake.str("visit_id");
    let mut ann = a.ws(&intake.str("patient_token")).await;
    let ServerMessage::QueuePosition(p) = ann.next_of("queue.position").await.msg else { unreachable!() };
    assert_eq!(p.position, 1);
    // The queue change made on A reaches the console on B.
    let added = sam
        .next_of_filtered(
            "queue.delta",
            |f| matches!(&f.msg, ServerMessage::QueueDelta(d) if d.added.iter().any(|e| e.visit_id == visit_id)),
        )
        .await;
    assert!(matches!(added.msg, ServerMessage::QueueDelta(_)));

    // Chat both ways between B and A.
    assert!(is_ack(&sam.request(&join(&visit_id)).await));
    let sent = sam.request(&say(&visit_id, "hello-from-B")).await;
    assert!(is_ack(&sent), "{sent:?}");
    assert_eq!(chat_body(&ann.next_of("chat.message").await), "hello-from-B");
    assert!(is_ack(&ann.request(&say(&visit_id, "hello-from-A")).await));
    assert_eq!(
        chat_body(&sam.next_of_filtered("chat.message", |f| chat_body(f) == "hello-from-A").await),
        "hello-from-A"
    );

    // The provider on C claims and starts; negotiation crosses C -> A -> C.
    let mut dr = c.ws(&c.token(Role::Provider, "dr-lee", &[], 3600)).await;
    welcome(&mut dr).await;
    let claim = dr.request(&ClientMessage::VisitClaim(VisitRef { visit_id: visit_id.clone() })).await;
    assert!(is_ack(&claim), "{claim:?}");
    let ServerMessage::VisitUpdated(u) = ann.next_of("visit.updated").await.msg else { unreachable!() };
    assert_eq!(u.status, VisitStatus::Claimed);
    sam.next_of_filtered(
        "queue.delta",
        |f| matches!(&f.msg, ServerMessage::QueueDelta(d) if d.removed.contains(&visit_id)),
    )
    .await;
    assert!(is_ack(&dr.request(&to(&visit_id, VisitStatus::InVisit)).await));
    let ServerMessage::VisitStarted(s) = ann.next_of("visit.started").await.msg else { unreachable!() };
    assert!(s.polite);
    dr.next_of("visit.started").await;
    assert!(is_ack(&dr.request(&ClientMessage::SignalOffer(sdp(&visit_id, false))).await));
    let ServerMessage::SignalOffer(o) = ann.next_of("signal.offer").await.msg else { unreachable!() };
    assert_eq!(o.from, Some(Role::Provider));
    assert!(is_ack(&ann.request(&ClientMessage::SignalAnswer(sdp(&visit_id, false))).await));
    let ServerMessage::SignalAnswer(r) = dr.next_of("signal.answer").await.msg else { unreachable!() };
    assert_eq!(r.from, Some(Role::Patient));

    for status in [VisitStatus::WrapUp, VisitStatus::Ended] {
        assert!(is_ack(&dr.request(&to(&visit_id, status)).await));
    }
    ann.next_of_filtered(
        "visit.updated",
        |f| matches!(&f.msg, ServerMessage::VisitUpdated(u) if u.status == VisitStatus::Ended),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_on_one_redis_complete_a_visit() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(dir.path());
    let cluster = Cluster::new(redis.url(), false).await;
    let (a, b, c) = (cluster.node("a").await, cluster.node("b").await, cluster.node("c").await);
    whole_visit_across_nodes(&a, &b, &c).await;
    // Each node sees all three in the registry (from its next heartbeat on).
    assert!(nodes_seen_by(&b, 3).await, "b does not see three nodes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_on_a_three_master_redis_cluster_complete_a_visit() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisCluster::start(dir.path());
    let cluster = Cluster::new(redis.urls(), true).await;
    let (a, b, c) = (cluster.node("a").await, cluster.node("b").await, cluster.node("c").await);
    whole_visit_across_nodes(&a, &b, &c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patient_whose_node_is_killed_mid_visit_resumes_on_another_and_the_visit_completes() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(dir.path());
    let cluster = Cluster::new(redis.url(), false).await;
    let (mut a, b, c) = (cluster.node("a").await, cluster.node("b").await, cluster.node("c").await);
    assert!(b.onboard("sam", "support", &["WA"]).await.status.is_success());
    assert!(b.onboard("dr-lee", "provider", &["WA"]).await.status.is_success());

    let intake = a.intake("Ann", "WA", None).await;
    let (visit_id, token) = (intake.str("visit_id"), intake.str("patient_token"));
    let mut ann = a.ws(&token).await;
    let sid = welcome(&mut ann).await;
    let mut sam = b.ws(&b.token(Role::Support, "sam", &[], 3600)).await;
    welcome(&mut sam).await;
    assert!(is_ack(&sam.request(&join(&visit_id)).await));
    let mut dr = c.ws(&c.token(Role::Provider, "dr-lee", &[], 3600)).await;
    welcome(&mut dr).await;
    assert!(is_ack(&dr.request(&ClientMessage::VisitClaim(VisitRef { visit_id: visit_id.clone() })).await));
    assert!(is_ack(&dr.request(&to(&visit_id, VisitStatus::InVisit)).await));
    ann.next_of("visit.started").await;
    assert!(is_ack(&dr.request(&ClientMessage::SignalOffer(sdp(&visit_id, false))).await));
    ann.next_of("signal.offer").await;

    // Messages before the crash arrive live.
    let mut acked = Vec::new();
    let mut received: Vec<String> = Vec::new();
    for i in 0..5 {
        let body = format!("before-{i}");
        assert!(is_ack(&sam.request(&say(&visit_id, &body)).await));
        acked.push(body);
        received.push(chat_body(&ann.next_of("chat.message").await));
    }
    let seen = ann.last_seq;

    a.kill();
    // While the patient is away, the conversation goes on.
    for i in 0..5 {
        let body = format!("during-{i}");
        assert!(is_ack(&sam.request(&say(&visit_id, &body)).await));
        acked.push(body);
    }

    // The patient comes back on B with its session: B never held it, so it says so plainly
    // (recovered: false) and the client reloads what it missed from history.
    let mut back = b.resume(&token, &sid, seen).await;
    let recovered = recovered(&mut back).await;
    if !recovered {
        for body in history(&mut back, &visit_id).await {
            if !received.contains(&body) {
                received.push(body);
            }
        }
    }
    let lost: Vec<&String> = acked.iter().filter(|b| !received.contains(b)).collect();
    let counts: HashMap<&String, usize> = received.iter().fold(HashMap::new(), |mut m, b| {
        *m.entry(b).or_default() += 1;
        m
    });
    assert!(lost.is_empty(), "lost: {lost:?}");
    assert!(counts.values().all(|n| *n == 1), "duplicates: {counts:?}");

    // Signaling resumes from the new node: the patient restarts ICE, the provider answers.
    assert!(is_ack(&back.request(&ClientMessage::SignalOffer(sdp(&visit_id, true))).await));
    let ServerMessage::SignalOffer(o) = dr.next_of("signal.offer").await.msg else { unreachable!() };
    assert!(o.ice_restart);
    assert!(is_ack(&dr.request(&ClientMessage::SignalAnswer(sdp(&visit_id, false))).await));
    back.next_of("signal.answer").await;
    for status in [VisitStatus::WrapUp, VisitStatus::Ended] {
        assert!(is_ack(&dr.request(&to(&visit_id, status)).await));
    }
    back.next_of_filtered(
        "visit.updated",
        |f| matches!(&f.msg, ServerMessage::VisitUpdated(u) if u.status == VisitStatus::Ended),
    )
    .await;

    // The survivors noticed the dead node and took it out of the registry.
    assert!(nodes_seen_by(&b, 2).await, "the killed node is still in the registry");
}

/// Sends a chat message, retrying on a fresh socket when the hub closes this one; the same
/// `client_id` makes a retry safe. Returns the socket to go on with.
async fn send_until_acked(node: &HubProcess, token: &str, mut ws: Ws, visit_id: &str, body: &str) -> (Ws, bool) {
    for _ in 0..20 {
        if ws.try_send(&say(visit_id, body)).await {
            loop {
                let Ok(Some(Ok(msg))) =
                    tokio::time::timeout(Duration::from_secs(5), futures_util::StreamExt::next(&mut ws.stream)).await
                else {
                    break;
                };
                let tokio_tungstenite::tungstenite::Message::Text(t) = msg else { continue };
                let f = visithub::protocol::decode_server(t.as_str()).unwrap();
                match &f.msg {
                    ServerMessage::Ack(_) if f.id.is_some() => return (ws, true),
                    ServerMessage::Error(e) if f.id.is_some() => {
                        assert_eq!(e.code, "unavailable", "only the outage may refuse: {e:?}");
                        break;
                    }
                    _ => {}
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        if let Ok(mut fresh) = node.try_ws(token, None).await {
            welcome(&mut fresh).await;
            if is_ack(&fresh.request(&join(visit_id)).await) {
                ws = fresh;
            }
        }
    }
    (ws, false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarting_empty_loses_no_acknowledged_chat_and_the_queues_are_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let mut redis = RedisServer::start(dir.path());
    let cluster = Cluster::new(redis.url(), false).await;
    let (a, b) = (cluster.node("a").await, cluster.node("b").await);
    assert!(a.onboard("sam", "support", &["WA"]).await.status.is_success());

    let intake = a.intake("Ann", "WA", None).await;
    let (visit_id, token) = (intake.str("visit_id"), intake.str("patient_token"));
    let mut ann = a.ws(&token).await;
    let sid = welcome(&mut ann).await;
    let sam_token = b.token(Role::Support, "sam", &[], 3600);
    let mut sam = b.ws(&sam_token).await;
    welcome(&mut sam).await;
    assert!(is_ack(&sam.request(&join(&visit_id)).await));

    let mut waiting = vec![visit_id.clone()];
    let mut acked = Vec::new();
    let mut received = Vec::new();
    for i in 0..5 {
        let body = format!("m{i}");
        let ok;
        (sam, ok) = send_until_acked(&b, &sam_token, sam, &visit_id, &body).await;
        assert!(ok);
        acked.push(body);
        received.push(chat_body(&ann.next_of("chat.message").await));
    }
    let seen = ann.last_seq;

    // Redis restarts with nothing in it, in the middle of a stream of chat and intakes.
    redis.restart_empty();
    for i in 5..25 {
        let body = format!("m{i}");
        let ok;
        (sam, ok) = send_until_acked(&b, &sam_token, sam, &visit_id, &body).await;
        if ok {
            acked.push(body);
        }
        if i % 5 == 0 {
            let r = a.intake(&format!("P{i}"), "WA", None).await;
            match r.status.as_u16() {
                201 => waiting.push(r.str("visit_id")),
                503 => assert_eq!(r.code(), "unavailable"),
                s => panic!("unexpected intake answer {s}: {:?}", r.body),
            }
        }
    }
    assert!(acked.len() >= 20, "the outage should be short: only {} of 25 acknowledged", acked.len());
    a.wait_ready(Duration::from_secs(30)).await;
    b.wait_ready(Duration::from_secs(30)).await;

    // The patient's socket: either everything arrives live, or the hub closed it (4008) and
    // the resume says what it can: the missed events, or recovered: false and a reload.
    let mut reloaded = false;
    let mut live = ann;
    loop {
        let next = tokio::time::timeout(Duration::from_secs(3), futures_util::StreamExt::next(&mut live.stream)).await;
        match next {
            Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t)))) => {
                let f = visithub::protocol::decode_server(t.as_str()).unwrap();
                if let ServerMessage::ChatMessage(m) = &f.msg {
                    received.push(m.body.clone());
                }
                if received.len() >= acked.len() && acked.iter().all(|b| received.contains(b)) {
                    break;
                }
            }
            Ok(Some(Ok(_))) => {}
            _ => {
                let mut back = a.resume(&token, &sid, seen).await;
                let recovered = recovered(&mut back).await;
                assert!(!recovered, "a session whose bus missed events must not claim a full replay");
                received.retain(|b| acked[..5].contains(b));
                for body in history(&mut back, &visit_id).await {
                    if !received.contains(&body) {
                        received.push(body);
                    }
                }
                reloaded = true;
                break;
            }
        }
    }
    let got: BTreeSet<&String> = received.iter().collect();
    assert!(
        acked.iter().all(|b| got.contains(b)),
        "lost: {:?}",
        acked.iter().filter(|b| !got.contains(b)).collect::<Vec<_>>()
    );
    assert_eq!(got.len(), received.len(), "duplicates among {received:?} (reloaded: {reloaded})");

    // Every acknowledged message is in the stored history exactly once.
    let stored = b.call("GET", &format!("/v1/visits/{visit_id}/messages?limit=100"), Some(&token), None).await;
    let bodies: Vec<&str> =
        stored.body["messages"].as_array().unwrap().iter().map(|m| m["body"].as_str().unwrap()).collect();
    for body in &acked {
        assert_eq!(bodies.iter().filter(|b| **b == body.as_str()).count(), 1, "{body} in {bodies:?}");
    }

    // The queues came back from PostgreSQL: every accepted intake waits, on every node.
    for node in [&a, &b] {
        let mut listed: Vec<String> = Vec::new();
        for _ in 0..50 {
            let q = node.call("GET", "/v1/states/WA/queue", Some(&node.admin()), None).await;
            listed = q.body["visits"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v["visit_id"].as_str().unwrap().to_string())
                .collect();
            if waiting.iter().all(|w| listed.contains(w)) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(waiting.iter().all(|w| listed.contains(w)), "{}: {listed:?} lacks some of {waiting:?}", node.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_a_node_reports_degraded_and_refuses_what_needs_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut redis = RedisServer::start(dir.path());
    let cluster = Cluster::new(redis.url(), false).await;
    // With a quota per client address, whose buckets are in Redis too.
    let a = cluster.node_with("a", &[("VISITHUB_INTAKE_PER_ADDRESS_PER_MINUTE", "30")]).await;
    redis.stop();
    let mut degraded: Option<Value> = None;
    for _ in 0..100 {
        if let Some((503, body)) = a.ready().await {
            degraded = Some(body);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let body = degraded.expect("readiness turns 503 without Redis");
    assert_eq!((body["degraded"].as_bool(), body["store"].as_bool()), (Some(true), Some(true)), "{body}");
    let r = a.intake("Ann", "WA", None).await;
    assert_eq!((r.status.as_u16(), r.code()), (503, "unavailable"), "{:?}", r.body);
    assert!(r.retry_after.is_some());

    redis.restart_empty();
    a.wait_ready(Duration::from_secs(30)).await;
    assert_eq!(a.intake("Ann", "WA", None).await.status, 201);
}

/// Frames until the hub has sent everything `want` lists (chat bodies), collecting chat.
async fn collect_chat(ws: &mut Ws, received: &mut Vec<String>, want: &[String]) {
    while !want.iter().all(|b| received.contains(b)) {
        received.push(chat_body(&ws.next_of("chat.message").await));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_moves_to_another_live_node_with_exactly_what_it_missed() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(dir.path());
    session_moves_between_nodes(&Cluster::new(redis.url(), false).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_redis_cluster_a_session_moves_to_another_node_with_exactly_what_it_missed() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisCluster::start(dir.path());
    session_moves_between_nodes(&Cluster::new(redis.urls(), true).await).await;
}

async fn session_moves_between_nodes(cluster: &Cluster) {
    let (a, b) = (cluster.node("a").await, cluster.node("b").await);
    assert!(a.onboard("sam", "support", &["WA"]).await.status.is_success());
    let intake = a.intake("Ann", "WA", None).await;
    let (visit_id, token) = (intake.str("visit_id"), intake.str("patient_token"));
    let mut ann = a.ws(&token).await;
    let sid = welcome(&mut ann).await;
    ann.next_of("queue.position").await;
    let mut sam = b.ws(&b.token(Role::Support, "sam", &[], 3600)).await;
    welcome(&mut sam).await;
    assert!(is_ack(&sam.request(&join(&visit_id)).await));

    let mut sent = Vec::new();
    let mut received = Vec::new();
    for i in 0..3 {
        sent.push(format!("live-{i}"));
        assert!(is_ack(&sam.request(&say(&visit_id, &sent[i])).await));
    }
    collect_chat(&mut ann, &mut received, &sent).await;
    let seen = ann.last_seq;
    // The patient's connection to A breaks; the conversation goes on meanwhile.
    drop(ann);
    for i in 0..4 {
        let body = format!("away-{i}");
        assert!(is_ack(&sam.request(&say(&visit_id, &body)).await));
        sent.push(body);
    }
    // It reconnects to B: A hands the session over, and B replays exactly what was missed.
    let mut back = b.resume(&token, &sid, seen).await;
    let (resumed, replayed_chat) = replay_until_resumed(&mut back).await;
    assert!(resumed.recovered, "{resumed:?}");
    assert_eq!(resumed.session_id, sid);
    assert_eq!(replayed_chat, sent[3..].to_vec(), "exactly the missed messages, in order");
    // And from now on B sends, numbering on.
    let after = back.last_seq;
    assert!(is_ack(&sam.request(&say(&visit_id, "after")).await));
    let f = back.next_of("chat.message").await;
    assert_eq!(chat_body(&f), "after");
    assert!(f.seq.unwrap() > after);
    // A resumed again, on A this time, is taken back the same way.
    let seen = back.last_seq;
    drop(back);
    assert!(is_ack(&sam.request(&say(&visit_id, "later")).await));
    let mut again = a.resume(&token, &sid, seen).await;
    let (resumed, replayed_chat) = replay_until_resumed(&mut again).await;
    assert!(resumed.recovered);
    assert_eq!(replayed_chat, vec!["later".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_node_sends_its_clients_elsewhere_and_hands_their_sessions_over() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(dir.path());
    let cluster = Cluster::new(redis.url(), false).await;
    let (mut a, b) = (cluster.node("a").await, cluster.node("b").await);
    assert!(b.onboard("sam", "support", &["WA"]).await.status.is_success());
    let intake = b.intake("Ann", "WA", None).await;
    let (visit_id, token) = (intake.str("visit_id"), intake.str("patient_token"));
    let mut ann = a.ws(&token).await;
    let sid = welcome(&mut ann).await;
    let mut sam = b.ws(&b.token(Role::Support, "sam", &[], 3600)).await;
    welcome(&mut sam).await;
    assert!(is_ack(&sam.request(&join(&visit_id)).await));
    assert!(is_ack(&sam.request(&say(&visit_id, "one")).await));
    assert_eq!(chat_body(&ann.next_of("chat.message").await), "one");
    let seen = ann.last_seq;

    // SIGTERM: A turns unready and tells its clients to go elsewhere (4000)...
    let term = tokio::task::spawn_blocking(move || {
        let status = a.terminate();
        (a, status)
    });
    assert_eq!(ann.ended(Duration::from_secs(10)).await, Ended::Closed(4000));
    assert!(is_ack(&sam.request(&say(&visit_id, "two")).await));
    // ...and hands the session to B when the client lands there.
    let mut back = b.resume(&token, &sid, seen).await;
    let (resumed, got) = replay_until_resumed(&mut back).await;
    assert!(resumed.recovered);
    assert_eq!(got, vec!["two".to_string()]);
    let (_a, status) = term.await.unwrap();
    assert!(status.success(), "a drained node exits cleanly: {status:?}");
}

/// A busy state's reduced intake rate is the cluster's, not each node's: with one intake an
/// hour, the second is refused whichever node it reaches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_states_reduced_rate_holds_across_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(dir.path());
    let cluster = Cluster::new(redis.url(), false).await;
    let (a, b) = (cluster.node("a").await, cluster.node("b").await);
    let set = a.settings("OR", json!({ "busy": true, "busy_intake_per_hour": 1 })).await;
    assert_eq!(set.body["busy"], true, "{}", set.body);
    // Settings reach the other node over the bus.
    sees_setting(&b, "busy", json!(true)).await;
    assert_eq!(a.intake("Ann", "OR", None).await.status, 201);
    let r = b.intake("Bob", "OR", None).await;
    assert_eq!((r.status.as_u16(), r.code()), (429, "state_busy"), "{:?}", r.body);
    assert!(r.retry_after.unwrap() > 3500, "the slot frees an hour after the first: {:?}", r.retry_after);
    let r = a.intake("Cy", "OR", None).await;
    assert_eq!(r.code(), "state_busy");
    // Lifted (on b) and set again (on a): the rate counts afresh from then, on both nodes.
    assert_eq!(b.settings("OR", json!({ "busy": false })).await.body["busy"], false);
    sees_setting(&a, "busy", json!(false)).await;
    assert_eq!(a.settings("OR", json!({ "busy": true })).await.body["busy"], true);
    sees_setting(&b, "busy", json!(true)).await;
    assert_eq!(b.intake("Dee", "OR", None).await.status, 201);
    assert_eq!(a.intake("Eve", "OR", None).await.code(), "state_busy");
}

/// Intakes of one state arriving at once on two nodes are stored outside the state's intake
/// lock (shared commits), yet the cap holds across the cluster and every receipt's place is
/// its own: intakes in flight are counted in Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_states_cap_holds_for_intakes_at_once_on_two_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(dir.path());
    let cluster = Cluster::new(redis.url(), false).await;
    let (a, b) = (cluster.node("a").await, cluster.node("b").await);
    let set = a.settings("OR", json!({ "queue_cap": 6 })).await;
    assert_eq!(set.body["queue_cap"], 6, "{}", set.body);
    sees_setting(&b, "queue_cap", json!(6)).await;
    let names: Vec<String> = (0..20).map(|i| format!("Patient {i}")).collect();
    let intakes = names
        .iter()
        .enumerate()
        .map(|(i, n)| if i % 2 == 0 { a.intake(n, "OR", None) } else { b.intake(n, "OR", None) });
    let replies = futures_util::future::join_all(intakes).await;
    let places = places_of_admitted(&replies);
    assert_eq!(places, (1..=6).collect::<Vec<u64>>(), "six admitted across both nodes, each its own place");
}

/// A caregiver's cap on conversations counts their joins on every node (a cluster node reads
/// it from the store): a join is refused on one node for conversations joined on another, a
/// conversation they are in already is no new one, and a visit over frees its place on both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caregivers_conversation_cap_holds_across_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(dir.path());
    let cluster = Cluster::new(redis.url(), false).await;
    let cap = [("VISITHUB_MAX_CONVERSATIONS_PER_CAREGIVER", "2")];
    let (a, b) = (cluster.node_with("a", &cap).await, cluster.node_with("b", &cap).await);
    assert!(a.onboard("sam", "support", &["WA"]).await.status.is_success());
    let mut visits = Vec::new();
    for name in ["Ann", "Bob", "Cy"] {
        let intake = a.intake(name, "WA", None).await;
        assert_eq!(intake.status, 201, "{:?}", intake.body);
        visits.push((intake.str("visit_id"), intake.str("patient_token")));
    }
    let mut on_a = a.ws(&a.token(Role::Support, "sam", &[], 3600)).await;
    let mut on_b = b.ws(&b.token(Role::Support, "sam", &[], 3600)).await;
    assert!(is_ack(&on_a.request(&join(&visits[0].0)).await));
    assert!(is_ack(&on_b.request(&join(&visits[1].0)).await));
    for ws in [&mut on_a, &mut on_b] {
        assert_eq!(error_code(&ws.request(&join(&visits[2].0)).await), "conversation_cap_reached");
    }
    assert!(is_ack(&on_a.request(&join(&visits[1].0)).await), "one joined on the other node counts as in");
    let cancel = format!("/v1/visits/{}/cancel", visits[0].0);
    let r = b.call("POST", &cancel, Some(&visits[0].1), None).await;
    assert_eq!(r.status, reqwest::StatusCode::OK, "{}", r.body);
    assert!(is_ack(&on_b.request(&join(&visits[2].0)).await), "a visit over frees its place");
}

/// A client the balancer spreads over nodes gets one quota of intakes, not one per node: the
/// buckets are in Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_address_gets_one_intake_quota_for_the_whole_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(dir.path());
    let cluster = Cluster::new(redis.url(), false).await;
    let quota = [("VISITHUB_INTAKE_PER_ADDRESS_PER_MINUTE", "2")];
    let (a, b) = (cluster.node_with("a", &quota).await, cluster.node_with("b", &quota).await);
    assert_eq!(a.intake("Ann", "OR", None).await.status, 201);
    assert_eq!(b.intake("Bob", "WA", None).await.status, 201);
    for node in [&a, &b] {
        let r = node.intake("Cy", "OR", None).await;
        assert_eq!((r.status.as_u16(), r.code()), (429, "rate_limited"), "{:?}", r.body);
        let wait = r.retry_after.unwrap();
        assert!((25..=30).contains(&wait), "one back half a minute after the first: {wait} s");
    }
}

/// How many times `node` read a queue whole from Redis.
async fn queue_reads(node: &HubProcess) -> u64 {
    let url = format!("http://{}/metrics", node.metrics_addr);
    let page = node.http.get(url).send().await.unwrap().text().await.unwrap();
    let line = page
        .lines()
        .find(|l| l.starts_with("visithub_redis_command_seconds_count") && l.contains(r#"op="queue_load""#))
        .expect("the queue reads are counted");
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// The visits `node` shows waiting in WA, in order.
async fn wa_queue(node: &HubProcess) -> Vec<String> {
    let r = node.call("GET", "/v1/states/WA/queue", Some(&node.admin()), None).await;
    r.body["visits"].as_array().unwrap().iter().map(|v| v["visit_id"].as_str().unwrap().to_string()).collect()
}

/// Waits until `a` and `b` show the same WA queue, `len` long.
async fn same_queue_on(a: &HubProcess, b: &HubProcess, len: usize) -> Vec<String> {
    let (mut on_a, mut on_b) = (Vec::new(), Vec::new());
    for _ in 0..100 {
        (on_a, on_b) = (wa_queue(a).await, wa_queue(b).await);
        if on_a.len() == len && on_a == on_b {
            return on_a;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the nodes never showed one queue of {len}: {} on A, {} on B", on_a.len(), on_b.len());
}

/// A queue change reaches the other nodes as the change itself: each keeps its copy of the
/// queue in step without reading it whole from Redis, and shows what the node that made the
/// changes shows. Changes made on two nodes at once (announcements crossing on the bus) end
/// in one order on both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_keep_a_queue_in_step_from_its_changes_without_reading_it_again() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(dir.path());
    let cluster = Cluster::new(redis.url(), false).await;
    let (a, b) = (cluster.node("a").await, cluster.node("b").await);
    // A queue's first change restarts its version from Redis's clock, which B, holding version
    // 0, reads whole once.
    let mut receipts = vec![a.intake("Patient 0", "WA", None).await];
    same_queue_on(&a, &b, 1).await;
    let reads_before = queue_reads(&b).await;
    for i in 1..24 {
        receipts.push(a.intake(&format!("Patient {i}"), "WA", None).await);
    }
    for r in receipts.iter().step_by(4) {
        let path = format!("/v1/visits/{}/cancel", r.str("visit_id"));
        assert_eq!(a.call("POST", &path, Some(&r.str("patient_token")), None).await.status, 200);
    }
    same_queue_on(&a, &b, 18).await;
    assert_eq!(queue_reads(&b).await, reads_before, "B applied every change from A as it came");

    let intakes = (0..20).map(|i| {
        let node = if i % 2 == 0 { &a } else { &b };
        async move { node.intake(&format!("Later {i}"), "WA", None).await }
    });
    let replies = futures_util::future::join_all(intakes).await;
    assert!(replies.iter().all(|r| r.status == 201));
    let order = same_queue_on(&a, &b, 38).await;
    let later: Vec<String> = replies.iter().map(|r| r.str("visit_id")).collect();
    assert!(later.iter().all(|id| order.contains(id)), "every intake on either node is in both copies");
}

/// Waits until `node` shows OR's setting `key` as `value` (settings reach nodes over the bus).
async fn sees_setting(node: &HubProcess, key: &str, value: Value) {
    for _ in 0..100 {
        let r = node.call("GET", "/v1/states/OR/settings", Some(&node.admin()), None).await;
        if r.body[key] == value {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{} never showed {key} = {value}", node.name);
}

/// The wait estimates follow what any node learns: a claim and a visit's end on C move the
/// pick-up delay and mean visit duration that A's estimates use too, so both show a waiting
/// patient one wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_one_node_learns_moves_every_nodes_wait_estimates() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(dir.path());
    let cluster = Cluster::new(redis.url(), false).await;
    let (a, c) = (cluster.node("a").await, cluster.node("c").await);
    assert!(a.onboard("dr-lee", "provider", &["WA"]).await.status.is_success());
    let mut dr = c.ws(&c.token(Role::Provider, "dr-lee", &[], 3600)).await;
    welcome(&mut dr).await;
    let visit_id = a.intake("Ann", "WA", None).await.str("visit_id");
    assert!(is_ack(&dr.request(&ClientMessage::VisitClaim(VisitRef { visit_id: visit_id.clone() })).await));
    for status in [VisitStatus::InVisit, VisitStatus::WrapUp, VisitStatus::Ended] {
        assert!(is_ack(&dr.request(&to(&visit_id, status)).await));
    }
    // Learned on C: a pick-up of about no time (claimed within a second or two of intake) and a
    // visit of about no time. With weight 0.2, from the priors (60 s, 15 minutes): pick-up
    // 60 - 12 = 48 s, visit 900 - 180 = 720 s (a second or two more rounds away).
    drop(dr);
    let bob = a.intake("Bob", "WA", None).await.str("visit_id");
    // With no provider online: the pick-up delay and half a visit.
    let learned = 48 + 720 / 2;
    let mut seen = (None, None);
    for _ in 0..100 {
        seen = (wait_of(&a, &bob).await, wait_of(&c, &bob).await);
        if seen == (Some(learned), Some(learned)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("A and C never both showed the learned wait {learned} s for Bob: (A, C) = {seen:?}");
}

/// The estimated wait a node's WA queue shows for `visit_id`.
async fn wait_of(node: &HubProcess, visit_id: &str) -> Option<u64> {
    let r = node.call("GET", "/v1/states/WA/queue", Some(&node.admin()), None).await;
    let visits = r.body["visits"].as_array()?;
    visits.iter().find(|e| e["visit_id"] == visit_id)?["estimated_wait_secs"].as_u64()
}
