//! One suite for every `Store`: written once against `&dyn Store`, run against SQLite in
//! memory and against PostgreSQL on a throwaway server (with and without a replica). Plus
//! PostgreSQL's read-your-writes through a replica that replays two seconds late.

#[path = "support/pg.rs"]
mod pg;

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::future::join_all;
use visithub::model::audit::{GENESIS, first_broken};
use visithub::model::{
    Actor, AuditEntry, AuditRecord, Caregiver, CaregiverKind, Role, StateSettings, UsState, Visit, VisitStatus,
    new_visit_id,
};
use visithub::protocol::Participant;
use visithub::store::{IdempotencyKey, InsertOutcome, NewMessage, PostgresStore, SqliteStore, Store};

use pg::PgCluster;

#[tokio::test]
async fn sqlite_store_conforms() {
    let store = SqliteStore::in_memory().await.unwrap();
    conformance(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_conforms() {
    let pg = PgCluster::primary();
    let store = PostgresStore::connect(&pg.primary_url(), None).await.unwrap();
    conformance(&store).await;
}

/// The same suite with every read routed through a (prompt) replica: each read right after a
/// write waits for the replica to replay it, or falls back to the primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_with_replica_conforms() {
    let pg = PgCluster::with_replica("0");
    let store = PostgresStore::connect(&pg.primary_url(), Some(&pg.replica_url())).await.unwrap();
    conformance(&store).await;
    let stats = store.replica_stats();
    assert!(stats.replica_reads > 0, "no read went to the replica: {stats:?}");
}

/// With a replica two seconds behind, every read through the store finds the row just
/// written (the bounded wait gives up and the primary answers), while a naive read from the
/// replica misses it; and once the replica has replayed a write, the store reads it there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_reads_its_own_writes_through_a_delayed_replica() {
    let pg = PgCluster::with_replica("2s");
    let store = PostgresStore::connect(&pg.primary_url(), Some(&pg.replica_url())).await.unwrap();
    let replica = store.replica_pool().expect("a replica pool").clone();
    wait_for_schema_on(&replica).await;

    // A naive read straight from the replica right after the write misses the row.
    let mut misses = 0;
    for i in 0..20 {
        let v = visit(&new_visit_id(), "CA", 1_000 + i);
        store.insert_visit(&v, &admin(), None).await.unwrap();
        let found: Option<String> = sqlx::query_scalar("SELECT id FROM visits WHERE id = $1")
            .bind(&v.id)
            .fetch_optional(&replica)
            .await
            .unwrap();
        misses += usize::from(found.is_none());
    }
    assert!(misses >= 1, "the replica should lag two seconds behind, yet naive reads found every row");

    // Through the store, every read finds the row it just wrote.
    let started = Instant::now();
    for i in 0..1000 {
        let v = visit(&new_visit_id(), "NY", 10_000 + i);
        store.insert_visit(&v, &admin(), None).await.unwrap();
        let read = store.get_visit(&v.id).await.unwrap();
        assert_eq!(read.as_ref(), Some(&v), "read {i} missed the visit it had just written");
    }
    let elapsed = started.elapsed();
    let stats = store.replica_stats();
    eprintln!(
        "1000 inserts each read back at once: {elapsed:?} ({:?} per pair); naive replica reads missed {misses}/20; {stats:?}",
        elapsed / 1000
    );
    assert!(stats.primary_fallbacks >= 1000, "the replica was behind, yet served reads: {stats:?}");

    // A store that may wait long enough reads its write from the replica once replayed.
    let patient = PostgresStore::connect(&pg.primary_url(), Some(&pg.replica_url()))
        .await
        .unwrap()
        .with_replica_wait(Duration::from_secs(10));
    let v = visit(&new_visit_id(), "TX", 50_000);
    let started = Instant::now();
    patient.insert_visit(&v, &admin(), None).await.unwrap();
    assert_eq!(patient.get_visit(&v.id).await.unwrap(), Some(v));
    let waited = started.elapsed();
    let stats = patient.replica_stats();
    eprintln!("read served by the replica after waiting for its replay: {waited:?}; {stats:?}");
    assert_eq!((stats.replica_reads, stats.primary_fallbacks), (1, 0), "{stats:?}");
    assert!(waited >= Duration::from_millis(1500), "the replica applies two seconds late, yet it took {waited:?}");
}

/// The migrations reach the replica two seconds after they ran on the primary.
async fn wait_for_schema_on(replica: &sqlx::PgPool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready: bool =
            sqlx::query_scalar("SELECT to_regclass('public.visits') IS NOT NULL").fetch_one(replica).await.unwrap();
        if ready {
            return;
        }
        assert!(Instant::now() < deadline, "the replica never replayed the migrations");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn conformance(store: &dyn Store) {
    visits_and_idempotency(store).await;
    transitions_are_compare_and_set(store).await;
    one_of_many_concurrent_claims_wins(store).await;
    moves_reports_and_live_visits(store).await;
    waiting_visits_oldest_first(store).await;
    caregivers(store).await;
    state_settings(store).await;
    chat(store).await;
    conversations(store).await;
    audit(store).await;
    changes_recorded_with_their_audit(store).await;
    one_of_many_claims_joins_the_conversation(store).await;
    changes_arriving_together(store).await;
    keyed_intakes_recorded(store).await;
    store.ping().await.unwrap();
}

async fn visits_and_idempotency(store: &dyn Store) {
    let before = store.count_visits().await.unwrap();
    let v = visit("visit-1", "CA", 1);
    assert_eq!(store.insert_visit(&v, &admin(), None).await.unwrap(), InsertOutcome::Inserted);
    assert_eq!(store.get_visit("visit-1").await.unwrap(), Some(v.clone()));
    assert_eq!(store.get_visit("no-such-visit").await.unwrap(), None);
    let t = store.transitions("visit-1").await.unwrap();
    assert_eq!(t.len(), 1);
    assert_eq!((t[0].from, t[0].to, t[0].at), (None, VisitStatus::Waiting, v.created_at));
    assert_eq!((t[0].actor_subject.as_str(), t[0].actor_role.as_str()), ("admin-1", "admin"));

    let key = IdempotencyKey { key: "key-1".into(), request_hash: "hash-1".into() };
    let first = visit("visit-2", "CA", 2);
    assert_eq!(store.insert_visit(&first, &admin(), Some(&key)).await.unwrap(), InsertOutcome::Inserted);
    let retry = visit("visit-3", "CA", 3);
    let other_hash = IdempotencyKey { key: "key-1".into(), request_hash: "hash-2".into() };
    assert_eq!(
        store.insert_visit(&retry, &admin(), Some(&other_hash)).await.unwrap(),
        InsertOutcome::Replayed { visit_id: "visit-2".into(), request_hash: "hash-1".into() }
    );
    assert_eq!(store.get_visit("visit-3").await.unwrap(), None, "a replay stores nothing");
    assert!(store.transitions("visit-3").await.unwrap().is_empty());
    assert_eq!(store.idempotent_visit("key-1").await.unwrap(), Some(("visit-2".into(), "hash-1".into())));
    assert_eq!(store.idempotent_visit("key-2").await.unwrap(), None);
    assert_eq!(store.count_visits().await.unwrap(), before + 2);
}

/// Intakes with their audit record and idempotency key, several tries of one key at once among
/// other intakes: one try stores its visit, the others are told the visit it stored; and a
/// record is stored exactly with a visit that was, or not at all (the caller appends it).
async fn keyed_intakes_recorded(store: &dyn Store) {
    let before = store.count_visits().await.unwrap();
    let created = |id: &str| AuditEntry {
        at: ms(3_000),
        subject: format!("patient:{id}"),
        role: "patient".into(),
        action: "visit.create".into(),
        visit_id: Some(id.into()),
        target: None,
        outcome: "ok".into(),
    };
    let key = IdempotencyKey { key: "key-at-once".into(), request_hash: "hash-at-once".into() };
    let other = IdempotencyKey { key: "key-alone".into(), request_hash: "hash-alone".into() };
    // Four tries of one key, three intakes without a key, one with a key of its own.
    let keys = [Some(&key), None, Some(&key), Some(&other), Some(&key), None, Some(&key), None];
    let tries: Vec<(Visit, Option<&IdempotencyKey>)> =
        keys.into_iter().enumerate().map(|(i, k)| (visit(&format!("keyed-{i}"), "NV", 3_000 + i as i64), k)).collect();
    let records: Vec<AuditEntry> = tries.iter().map(|(v, _)| created(&v.id)).collect();
    let me = admin();
    let results =
        join_all(tries.iter().zip(&records).map(|((v, k), r)| store.insert_visit_recorded(v, &me, *k, r))).await;
    let results: Vec<(InsertOutcome, bool)> = results.into_iter().map(Result::unwrap).collect();
    let stored: Vec<&Visit> =
        tries.iter().zip(&results).filter(|(_, (o, _))| *o == InsertOutcome::Inserted).map(|((v, _), _)| v).collect();
    let first_of_key: Vec<&str> = tries
        .iter()
        .zip(&results)
        .filter(|((_, k), (o, _))| *k == Some(&key) && *o == InsertOutcome::Inserted)
        .map(|((v, _), _)| v.id.as_str())
        .collect();
    assert_eq!(first_of_key.len(), 1, "one try of the key stores a visit: {results:?}");
    for ((v, k), (outcome, recorded)) in tries.iter().zip(&results) {
        if *k == Some(&key) && v.id != first_of_key[0] {
            let told =
                InsertOutcome::Replayed { visit_id: first_of_key[0].into(), request_hash: "hash-at-once".into() };
            assert_eq!(*outcome, told);
            assert!(!recorded);
            assert_eq!(store.get_visit(&v.id).await.unwrap(), None, "a replay stores nothing");
        }
        let trail = store.audit_for_visit(&v.id).await.unwrap();
        assert_eq!(trail.len(), usize::from(*recorded), "{}: a record only with its stored visit", v.id);
        if *outcome == InsertOutcome::Inserted && !recorded {
            store.append_audits(&[created(&v.id)]).await.unwrap();
        }
    }
    assert_eq!(stored.len(), 1 + 3 + 1, "the key's first try, the three without a key, the other key");
    assert_eq!(store.count_visits().await.unwrap(), before + stored.len() as u64);
    assert_eq!(
        store.idempotent_visit("key-at-once").await.unwrap(),
        Some((first_of_key[0].into(), "hash-at-once".into()))
    );
    let whole = store.audit_trail(0, 10_000).await.unwrap();
    assert!(first_broken(&whole, GENESIS.into()).is_ok());
}

async fn transitions_are_compare_and_set(store: &dyn Store) {
    insert(store, visit("cas-1", "CA", 10)).await;
    let at = ms(20);
    assert!(store.transition_visit("cas-1", VisitStatus::Waiting, VisitStatus::Abandoned, &admin(), at).await.unwrap());
    assert!(
        !store.transition_visit("cas-1", VisitStatus::Waiting, VisitStatus::Cancelled, &admin(), at).await.unwrap(),
        "a transition from a stale status must change nothing"
    );
    assert_eq!(status(store, "cas-1").await, VisitStatus::Abandoned);
    let t = store.transitions("cas-1").await.unwrap();
    assert_eq!(
        t.iter().map(|t| (t.from, t.to)).collect::<Vec<_>>(),
        [(None, VisitStatus::Waiting), (Some(VisitStatus::Waiting), VisitStatus::Abandoned)]
    );
    assert!(
        !store
            .transition_visit("no-such-visit", VisitStatus::Waiting, VisitStatus::Cancelled, &admin(), at)
            .await
            .unwrap()
    );

    // Releasing a claim (back to waiting) clears the provider.
    insert(store, visit("cas-2", "CA", 11)).await;
    assert!(store.claim_visit("cas-2", "dr-1", ms(30), 19).await.unwrap());
    assert_eq!(store.get_visit("cas-2").await.unwrap().unwrap().provider.as_deref(), Some("dr-1"));
    assert!(store.transition_visit("cas-2", VisitStatus::Claimed, VisitStatus::Waiting, &admin(), at).await.unwrap());
    let released = store.get_visit("cas-2").await.unwrap().unwrap();
    assert_eq!((released.status, released.provider), (VisitStatus::Waiting, None));
    // The first real wait stays recorded across a second claim.
    assert!(store.claim_visit("cas-2", "dr-2", ms(40), 29).await.unwrap());
    assert_eq!(store.get_visit("cas-2").await.unwrap().unwrap().waited_secs, Some(19));
}

async fn one_of_many_concurrent_claims_wins(store: &dyn Store) {
    insert(store, visit("claim-1", "CA", 100)).await;
    let providers: Vec<String> = (0..20).map(|i| format!("dr-{i}")).collect();
    let results = join_all(providers.iter().map(|p| store.claim_visit("claim-1", p, ms(200), 42))).await;
    let winners: Vec<&String> =
        providers.iter().zip(&results).filter(|(_, r)| *r.as_ref().unwrap()).map(|(p, _)| p).collect();
    assert_eq!(winners.len(), 1, "exactly one of 20 concurrent claims wins: {results:?}");
    let claimed = store.get_visit("claim-1").await.unwrap().unwrap();
    assert_eq!(claimed.status, VisitStatus::Claimed);
    assert_eq!(claimed.provider.as_ref(), Some(winners[0]));
    assert_eq!(claimed.waited_secs, Some(42));
    let claims: Vec<_> =
        store.transitions("claim-1").await.unwrap().into_iter().filter(|t| t.to == VisitStatus::Claimed).collect();
    assert_eq!(claims.len(), 1, "one claimed transition: {claims:?}");
    assert_eq!((&claims[0].actor_subject, claims[0].actor_role.as_str()), (winners[0], "provider"));
    assert!(!store.claim_visit("claim-1", "dr-late", ms(300), 50).await.unwrap());
}

async fn moves_reports_and_live_visits(store: &dyn Store) {
    insert(store, visit("move-1", "CA", 300)).await;
    store.report_state("move-1", state("NV")).await.unwrap();
    assert_eq!(store.get_visit("move-1").await.unwrap().unwrap().reported_state, Some(state("NV")));
    assert!(store.move_visit("move-1", state("CA"), state("NV"), &admin(), ms(310)).await.unwrap());
    assert!(!store.move_visit("move-1", state("CA"), state("NV"), &admin(), ms(311)).await.unwrap(), "stale state");
    let moved = store.get_visit("move-1").await.unwrap().unwrap();
    assert_eq!((moved.state, moved.reported_state, moved.status), (state("NV"), None, VisitStatus::Waiting));
    let last = store.transitions("move-1").await.unwrap().pop().unwrap();
    assert_eq!(
        (last.from, last.to, last.actor_subject.as_str()),
        (Some(VisitStatus::Waiting), VisitStatus::Waiting, "admin-1")
    );
    assert!(store.claim_visit("move-1", "dr-move", ms(320), 5).await.unwrap());
    assert!(!store.move_visit("move-1", state("NV"), state("CA"), &admin(), ms(330)).await.unwrap(), "claimed");

    for (i, id) in ["live-1", "live-2", "live-3", "live-4"].into_iter().enumerate() {
        insert(store, visit(id, "WA", 400 + i as i64)).await;
    }
    // Claimed in the reverse order of arrival: live visits come oldest first all the same.
    for id in ["live-4", "live-3", "live-2", "live-1"] {
        assert!(store.claim_visit(id, "dr-live", ms(500), 1).await.unwrap());
    }
    let p = Actor { subject: "dr-live".into(), role: "provider" };
    assert!(store.transition_visit("live-2", VisitStatus::Claimed, VisitStatus::InVisit, &p, ms(510)).await.unwrap());
    assert!(store.transition_visit("live-3", VisitStatus::Claimed, VisitStatus::InVisit, &p, ms(510)).await.unwrap());
    assert!(store.transition_visit("live-3", VisitStatus::InVisit, VisitStatus::WrapUp, &p, ms(520)).await.unwrap());
    assert!(store.transition_visit("live-4", VisitStatus::Claimed, VisitStatus::Cancelled, &p, ms(520)).await.unwrap());
    let live: Vec<String> = store.live_visits_of("dr-live").await.unwrap().into_iter().map(|v| v.id).collect();
    assert_eq!(live, ["live-1", "live-2", "live-3"]);
    assert!(store.live_visits_of("dr-nobody").await.unwrap().is_empty());
    // Every provider's, oldest first: what a single node keeps providers' loads from.
    let all = store.live_visits().await.unwrap();
    assert!(all.iter().all(|v| v.is_live()), "only claimed, in visit and wrap-up");
    let of_live: Vec<&str> =
        all.iter().filter(|v| v.provider.as_deref() == Some("dr-live")).map(|v| v.id.as_str()).collect();
    assert_eq!(of_live, ["live-1", "live-2", "live-3"]);
    assert!(all.iter().any(|v| v.id == "move-1" && v.provider.as_deref() == Some("dr-move")));
}

async fn waiting_visits_oldest_first(store: &dyn Store) {
    // Equal times order by id, in byte order.
    for (id, at) in [("wait-b", 1_000), ("wait-a", 1_000), ("wait-C", 1_000), ("wait-c", 900), ("wait-gone", 800)] {
        insert(store, visit(id, "OR", at)).await;
    }
    assert!(store.claim_visit("wait-gone", "dr-1", ms(2_000), 1).await.unwrap());
    let waiting = store.waiting_visits().await.unwrap();
    assert!(waiting.iter().all(|v| v.status == VisitStatus::Waiting));
    assert!(waiting.windows(2).all(|w| (w[0].created_at, &w[0].id) <= (w[1].created_at, &w[1].id)), "oldest first");
    let ours: Vec<&str> = waiting.iter().map(|v| v.id.as_str()).filter(|id| id.starts_with("wait-")).collect();
    assert_eq!(ours, ["wait-c", "wait-C", "wait-a", "wait-b"]);
    let all = store.count_visits().await.unwrap();
    assert!(all > waiting.len() as u64);
}

async fn caregivers(store: &dyn Store) {
    // Byte order puts upper case first, whatever the database's collation would say.
    let b = caregiver("dr-b", CaregiverKind::Provider, &["CA", "NY"]);
    let a = caregiver("dr-a", CaregiverKind::Provider, &["TX"]);
    let c = caregiver("Dr-c", CaregiverKind::Support, &[]);
    for cg in [&b, &a, &c] {
        assert!(store.insert_caregiver(cg).await.unwrap());
    }
    let mut dup = a.clone();
    dup.name = "Someone Else".into();
    assert!(!store.insert_caregiver(&dup).await.unwrap(), "the subject exists already");
    assert_eq!(store.get_caregiver("dr-a").await.unwrap(), Some(a.clone()));
    assert_eq!(store.get_caregiver("Dr-c").await.unwrap(), Some(c.clone()), "no states at all");
    assert_eq!(store.get_caregiver("dr-nobody").await.unwrap(), None);

    let mut updated = a.clone();
    updated.name = "Dr. A. Renamed".into();
    updated.kind = CaregiverKind::Support;
    updated.states = vec![state("WA"), state("OR")];
    updated.active = false;
    updated.updated_at = ms(9_000);
    assert!(store.update_caregiver(&updated).await.unwrap());
    assert_eq!(store.get_caregiver("dr-a").await.unwrap(), Some(updated.clone()));
    assert!(!store.update_caregiver(&caregiver("dr-nobody", CaregiverKind::Provider, &[])).await.unwrap());
    assert_eq!(store.list_caregivers().await.unwrap(), [c, updated, b]);
}

async fn state_settings(store: &dyn Store) {
    assert!(store.state_settings().await.unwrap().is_empty());
    let ca = StateSettings::default_for(state("CA"), 50, 10);
    let ny = StateSettings::default_for(state("NY"), 20, 5);
    store.put_state_settings(&ca).await.unwrap();
    store.put_state_settings(&ny).await.unwrap();
    let mut busy = ca.clone();
    busy.busy = true;
    busy.queue_cap = 75;
    store.put_state_settings(&busy).await.unwrap();
    let mut all = store.state_settings().await.unwrap();
    all.sort_by_key(|s| s.state.code());
    assert_eq!(all, [busy, ny]);
}

async fn chat(store: &dyn Store) {
    insert(store, visit("chat-1", "CA", 3_000)).await;
    insert(store, visit("chat-2", "CA", 3_001)).await;
    let sends: Vec<NewMessage> =
        (1..=50).map(|i| message("chat-1", &format!("sender-{i}"), &format!("c-{i}"))).collect();
    let results = join_all(sends.iter().map(|m| store.append_message(m))).await;
    let mut seqs = Vec::new();
    for (sent, result) in sends.iter().zip(results) {
        let (stored, fresh) = result.unwrap();
        assert!(fresh);
        assert_eq!((&stored.message_id, &stored.from, &stored.body), (&sent.message_id, &sent.from, &sent.body));
        seqs.push(stored.seq);
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=50).collect::<Vec<u64>>(), "seqs unique and gap-free under concurrent appends");

    // A retry (same sender and client id) gets the stored message back, and stores nothing.
    let stored = store.messages("chat-1", None, 100).await.unwrap();
    let original = stored.iter().find(|m| m.client_id == "c-7").unwrap().clone();
    let mut retry = message("chat-1", "sender-7", "c-7");
    retry.message_id = "another-id".into();
    retry.body = "typed again".into();
    assert_eq!(store.append_message(&retry).await.unwrap(), (original, false));
    // Attempts of one message arriving together: one is stored, every attempt answers with it,
    // and the attempts that found it stored leave no hole in the numbering.
    insert(store, visit("chat-3", "CA", 3_002)).await;
    let attempts: Vec<NewMessage> = (0..8).map(|_| message("chat-3", "sender-9", "c-twice")).collect();
    let answers: Vec<(visithub::protocol::ChatMessage, bool)> =
        join_all(attempts.iter().map(|m| store.append_message(m))).await.into_iter().map(Result::unwrap).collect();
    assert_eq!(answers.iter().filter(|(_, fresh)| *fresh).count(), 1, "stored once: {answers:?}");
    assert!(answers.iter().all(|(m, _)| m == &answers[0].0 && m.seq == 1));
    assert_eq!(store.append_message(&message("chat-3", "sender-9", "c-next")).await.unwrap().0.seq, 2);
    // The same client id from someone else is another message.
    let (other, fresh) = store.append_message(&message("chat-1", "sender-8", "c-7")).await.unwrap();
    assert!(fresh);
    assert_eq!(other.seq, 51);
    // Each conversation counts from 1.
    assert_eq!(store.append_message(&message("chat-2", "sender-1", "c-1")).await.unwrap().0.seq, 1);

    let seqs = |page: Vec<visithub::protocol::ChatMessage>| page.into_iter().map(|m| m.seq).collect::<Vec<_>>();
    assert_eq!(seqs(store.messages("chat-1", None, 10).await.unwrap()), (42..=51).collect::<Vec<_>>());
    assert_eq!(seqs(store.messages("chat-1", Some(42), 10).await.unwrap()), (32..=41).collect::<Vec<_>>());
    assert_eq!(seqs(store.messages("chat-1", Some(3), 10).await.unwrap()), [1, 2]);
    assert!(store.messages("chat-1", Some(1), 10).await.unwrap().is_empty());
    assert!(store.messages("no-such-visit", None, 10).await.unwrap().is_empty());
    let all = store.messages("chat-1", None, 1000).await.unwrap();
    assert_eq!(all.len(), 51);
    assert_eq!(all[0].visit_id, "chat-1");

    assert_eq!(store.mark_read("chat-1", "sender-1", 5).await.unwrap(), 5);
    assert_eq!(store.mark_read("chat-1", "sender-1", 3).await.unwrap(), 5, "never lowered");
    assert_eq!(store.mark_read("chat-1", "sender-1", 9).await.unwrap(), 9);
    assert_eq!(store.mark_read("chat-1", "sender-2", 1).await.unwrap(), 1);
}

async fn conversations(store: &dyn Store) {
    insert(store, visit("conv-1", "CA", 4_000)).await;
    insert(store, visit("conv-2", "CA", 4_001)).await;
    let patient = participant("patient:conv-1", Role::Patient);
    let support = participant("sup-1", Role::Support);
    assert!(store.join_conversation("conv-1", &patient, ms(4_100)).await.unwrap());
    assert!(!store.join_conversation("conv-1", &patient, ms(4_200)).await.unwrap(), "in it already");
    assert!(store.join_conversation("conv-1", &support, ms(4_150)).await.unwrap());
    assert_eq!(store.conversation_members("conv-1").await.unwrap(), [patient.clone(), support.clone()]);
    assert!(store.leave_conversation("conv-1", "patient:conv-1").await.unwrap());
    assert!(!store.leave_conversation("conv-1", "patient:conv-1").await.unwrap());
    assert_eq!(store.conversation_members("conv-1").await.unwrap(), std::slice::from_ref(&support));
    assert!(store.conversation_members("conv-2").await.unwrap().is_empty());

    // Support in three conversations; one of their visits is over.
    assert!(store.join_conversation("conv-2", &support, ms(4_300)).await.unwrap());
    assert!(store.join_conversation("chat-1", &support, ms(4_400)).await.unwrap());
    for i in 1..=3 {
        store.append_message(&message("conv-1", "patient:conv-1", &format!("p-{i}"))).await.unwrap();
    }
    store.mark_read("conv-1", "sup-1", 2).await.unwrap();
    assert!(
        store
            .transition_visit("conv-2", VisitStatus::Waiting, VisitStatus::Cancelled, &admin(), ms(4_500))
            .await
            .unwrap()
    );
    let summaries = store.conversations_of("sup-1").await.unwrap();
    let got: Vec<_> = summaries.iter().map(|s| (s.visit_id.as_str(), s.last_seq, s.read_seq)).collect();
    assert_eq!(got, [("conv-1", 3, 2), ("chat-1", 51, 0)]);
    assert_eq!((summaries[0].state, summaries[0].status), (state("CA"), VisitStatus::Waiting));
    assert_eq!(summaries[0].patient_name, "Pat Doe");
    assert!(store.conversations_of("nobody").await.unwrap().is_empty());
    assert_eq!(store.open_conversation_ids("sup-1").await.unwrap(), ["conv-1", "chat-1"]);
    assert!(store.open_conversation_ids("nobody").await.unwrap().is_empty());

    // Every visit not over with its members (what a single node starts from): conv-2 is over,
    // a visit without members comes with none.
    let open = store.open_conversations().await.unwrap();
    let of = |id: &str| -> Vec<Option<String>> {
        open.iter().filter(|(v, _)| v == id).map(|(_, m)| m.as_ref().map(|(_, p)| p.subject.clone())).collect()
    };
    assert_eq!(of("conv-1"), [Some("sup-1".to_string())]);
    assert!(of("conv-2").is_empty(), "over");
    assert_eq!(of("cas-2"), [None], "claimed, nobody in its conversation");
    let (joined, member) = open.iter().find(|(v, _)| v == "conv-1").unwrap().1.clone().unwrap();
    assert_eq!((joined, member), (ms(4_150), support));
}

async fn audit(store: &dyn Store) {
    let entries: Vec<AuditEntry> = (0..20)
        .map(|i| AuditEntry {
            at: ms(5_000 + i),
            subject: format!("dr-{i}"),
            role: "provider".into(),
            action: "visit.read".into(),
            visit_id: Some(if i % 2 == 0 { "audit-even" } else { "audit-odd" }.into()),
            target: (i % 3 == 0).then(|| "CA".into()),
            outcome: "ok".into(),
        })
        .collect();
    // Batches of several sizes at once: each lands as one run, in its own order.
    let batches: Vec<&[AuditEntry]> =
        [0..1, 1..3, 3..6, 6..10, 10..15, 15..20].into_iter().map(|r| &entries[r]).collect();
    let appended: Vec<Vec<AuditRecord>> =
        join_all(batches.iter().map(|b| store.append_audits(b))).await.into_iter().map(Result::unwrap).collect();
    let trail = store.audit_trail(0, 1000).await.unwrap();
    assert_eq!(trail.len(), 20);
    assert!(first_broken(&trail, GENESIS.into()).is_ok(), "chain broken under concurrent appends");
    assert!(trail.windows(2).all(|w| w[0].id < w[1].id));
    for (batch, records) in batches.iter().zip(&appended) {
        let entries_back: Vec<&AuditEntry> = records.iter().map(|r| &r.entry).collect();
        assert_eq!(entries_back, batch.iter().collect::<Vec<_>>(), "a batch is stored in its order");
        let start = trail.iter().position(|r| r.id == records[0].id).expect("the batch's first record is stored");
        assert_eq!(&trail[start..start + records.len()], records.as_slice(), "a batch is one run, as returned");
    }
    assert!(store.append_audits(&[]).await.unwrap().is_empty());

    let next = AuditEntry { at: ms(6_000), action: "visit.claim".into(), ..entries[0].clone() };
    let last = store.append_audits(std::slice::from_ref(&next)).await.unwrap().remove(0);
    assert_eq!(last.prev_hash, trail[19].hash);
    assert_eq!(store.audit_trail(trail[9].id, 5).await.unwrap(), trail[10..15]);
    assert!(store.audit_trail(last.id, 5).await.unwrap().is_empty());

    let odd = store.audit_for_visit("audit-odd").await.unwrap();
    assert_eq!(
        odd,
        trail.iter().filter(|r| r.entry.visit_id.as_deref() == Some("audit-odd")).cloned().collect::<Vec<_>>()
    );
    assert_eq!(odd.len(), 10);
    assert_eq!(store.audit_for_visit("audit-even").await.unwrap().len(), 11);
    assert!(store.audit_for_visit("no-such-visit").await.unwrap().is_empty());

    // A batch past one statement's rows still chains on, in order.
    let bulk: Vec<AuditEntry> = (0..300)
        .map(|i| AuditEntry { at: ms(7_000 + i), visit_id: Some("audit-bulk".into()), ..entries[1].clone() })
        .collect();
    let stored = store.append_audits(&bulk).await.unwrap();
    assert_eq!(stored.first().unwrap().prev_hash, last.hash);
    assert_eq!(store.audit_for_visit("audit-bulk").await.unwrap(), stored);
    let whole = store.audit_trail(0, 1000).await.unwrap();
    assert_eq!(whole.len(), 321);
    assert!(first_broken(&whole, GENESIS.into()).is_ok());
}

/// A claim or transition with the audit record of the request: the record is stored, chained
/// to the trail's end, exactly when the change is (or not at all, and the caller appends it).
async fn changes_recorded_with_their_audit(store: &dyn Store) {
    let record = |action: &str| AuditEntry {
        at: ms(9_000),
        subject: "dr-rec".into(),
        role: "provider".into(),
        action: action.into(),
        visit_id: Some("rec-1".into()),
        target: None,
        outcome: "ok".into(),
    };
    let trail_of = || async { store.audit_for_visit("rec-1").await.unwrap() };
    let created =
        store.insert_visit_recorded(&visit("rec-1", "WA", 8_000), &admin(), None, &record("visit.create")).await;
    let (outcome, created) = created.unwrap();
    assert_eq!(outcome, InsertOutcome::Inserted);
    let created = usize::from(created);
    assert_eq!(status(store, "rec-1").await, VisitStatus::Waiting);
    assert_eq!(store.transitions("rec-1").await.unwrap().len(), 1);
    assert_eq!(trail_of().await.len(), created);

    let hello = NewMessage {
        visit_id: "rec-1".into(),
        message_id: new_visit_id(),
        client_id: "c-rec".into(),
        from: Participant { subject: "sup-rec".into(), name: "S".into(), role: Role::Support },
        body: "hi".into(),
        sent_at: ms(8_100),
    };
    let ((first, new), sent) = store.append_message_recorded(&hello, &record("chat.send")).await.unwrap();
    assert!(new);
    let retry = NewMessage { message_id: new_visit_id(), ..hello.clone() };
    let ((again, again_new), again_recorded) =
        store.append_message_recorded(&retry, &record("chat.send")).await.unwrap();
    assert!(!again_new && !again_recorded, "a retry stores neither message nor record");
    assert_eq!(again, first);
    let sup = Participant { subject: "sup-rec".into(), name: "S".into(), role: Role::Support };
    let (joined, join_recorded) =
        store.join_conversation_recorded("rec-1", &sup, ms(8_050), &record("chat.join")).await.unwrap();
    assert!(joined);
    let again = store.join_conversation_recorded("rec-1", &sup, ms(8_060), &record("chat.join")).await.unwrap();
    assert_eq!(again, (false, false), "a member already in stores neither");
    assert_eq!(store.conversation_members("rec-1").await.unwrap(), std::slice::from_ref(&sup));
    let created = created + usize::from(sent) + usize::from(join_recorded);
    assert_eq!(trail_of().await.len(), created);
    let dr = Participant { subject: "dr-rec".into(), name: "Dr R".into(), role: Role::Provider };
    let claim = store.claim_visit_joined("rec-1", &dr, ms(8_500), 5, &record("visit.claim")).await.unwrap();
    assert!(claim.claimed && claim.joined, "the winning provider joins the conversation with the claim");
    let recorded = claim.recorded;
    assert_eq!(trail_of().await.len(), created + usize::from(recorded));
    assert_eq!(store.conversation_members("rec-1").await.unwrap(), [sup.clone(), dr.clone()]);
    let other = Participant { subject: "dr-other".into(), name: "Dr O".into(), role: Role::Provider };
    let lost = store.claim_visit_joined("rec-1", &other, ms(8_600), 6, &record("visit.claim")).await.unwrap();
    assert_eq!(
        (lost.claimed, lost.joined, lost.recorded),
        (false, false, false),
        "a lost claim stores no member and no record"
    );
    assert_eq!(store.conversation_members("rec-1").await.unwrap(), [sup.clone(), dr]);
    assert_eq!(store.get_visit("rec-1").await.unwrap().unwrap().provider.as_deref(), Some("dr-rec"));
    assert_eq!(store.transitions("rec-1").await.unwrap().len(), 2, "a lost claim stores no transition");

    let p = Actor { subject: "dr-rec".into(), role: "provider" };
    let step = (VisitStatus::Claimed, VisitStatus::InVisit);
    let (moved, moved_recorded) =
        store.transition_visit_recorded("rec-1", step, &p, ms(8_700), &record("visit.transition")).await.unwrap();
    assert!(moved);
    let stale = store.transition_visit_recorded("rec-1", step, &p, ms(8_800), &record("visit.transition")).await;
    assert_eq!(stale.unwrap(), (false, false), "a stale transition stores neither");
    assert_eq!(status(store, "rec-1").await, VisitStatus::InVisit);
    assert_eq!(store.transitions("rec-1").await.unwrap().len(), 3);
    assert_eq!(store.messages("rec-1", None, 10).await.unwrap(), [first]);
    let trail = trail_of().await;
    assert_eq!(trail.len(), created + usize::from(recorded) + usize::from(moved_recorded));
    assert!(trail.iter().all(|r| r.entry.subject == "dr-rec"));
    // Whatever was stored with the changes chains on from the records before it.
    let whole = store.audit_trail(0, 10_000).await.unwrap();
    assert!(first_broken(&whole, GENESIS.into()).is_ok());
}

/// Claims that join the conversation (after the audit checks: they append to the trail).
async fn one_of_many_claims_joins_the_conversation(store: &dyn Store) {
    insert(store, visit("claim-2", "CA", 100)).await;
    let doctors: Vec<Participant> = (0..20)
        .map(|i| Participant { subject: format!("dr-{i}"), name: format!("Dr {i}"), role: Role::Provider })
        .collect();
    let claim = AuditEntry {
        at: ms(200),
        subject: "dr".into(),
        role: "provider".into(),
        action: "visit.claim".into(),
        visit_id: Some("claim-2".into()),
        target: None,
        outcome: "ok".into(),
    };
    let records = vec![claim; doctors.len()];
    let outcomes =
        join_all(doctors.iter().zip(&records).map(|(p, r)| store.claim_visit_joined("claim-2", p, ms(200), 42, r)))
            .await;
    let outcomes: Vec<_> = outcomes.into_iter().map(Result::unwrap).collect();
    let winners: Vec<&Participant> = doctors.iter().zip(&outcomes).filter(|(_, o)| o.claimed).map(|(p, _)| p).collect();
    assert_eq!(winners.len(), 1, "exactly one of 20 concurrent claims wins: {outcomes:?}");
    assert!(outcomes.iter().all(|o| o.joined == o.claimed), "the winner joins, nobody else: {outcomes:?}");
    assert_eq!(store.conversation_members("claim-2").await.unwrap(), [winners[0].clone()]);

    // Released and claimed again by the same provider: claimed, already in the conversation.
    let me = Actor { subject: winners[0].subject.clone(), role: "provider" };
    assert!(store.transition_visit("claim-2", VisitStatus::Claimed, VisitStatus::Waiting, &me, ms(250)).await.unwrap());
    let again = store.claim_visit_joined("claim-2", winners[0], ms(260), 43, &records[0]).await.unwrap();
    assert!(again.claimed && !again.joined, "{again:?}");
    assert_eq!(store.conversation_members("claim-2").await.unwrap(), [winners[0].clone()]);
}

/// Changes with their records sent all at once (SQLite commits them in shared transactions):
/// each is answered as if it were alone, a failing one fails alone, and the trail stays whole.
async fn changes_arriving_together(store: &dyn Store) {
    let ids: Vec<String> = (0..10).map(|i| format!("tog-{i}")).collect();
    for id in &ids {
        insert(store, visit(id, "OR", 20_000)).await;
    }
    let record = |id: &str, action: &str| AuditEntry {
        at: ms(20_100),
        subject: "admin-1".into(),
        role: "admin".into(),
        action: action.into(),
        visit_id: Some(id.into()),
        target: None,
        outcome: "ok".into(),
    };
    let cancel = (VisitStatus::Waiting, VisitStatus::Cancelled);
    // Two cancels of each of the first five visits, one of each of the others.
    let twice: Vec<&String> = ids.iter().chain(&ids[..5]).collect();
    let records: Vec<AuditEntry> = twice.iter().map(|id| record(id, "visit.transition")).collect();
    let message = |n: u32| NewMessage {
        visit_id: "tog-9".into(),
        message_id: new_visit_id(),
        client_id: format!("tog-c{n}"),
        from: Participant { subject: "sup-tog".into(), name: "S".into(), role: Role::Support },
        body: format!("message {n}"),
        sent_at: ms(20_050),
    };
    let messages: Vec<NewMessage> = (0..3).map(message).collect();
    let sent = record("tog-9", "chat.send");
    let duplicate = visit("tog-0", "OR", 20_000);
    let created = record("tog-0", "visit.create");
    let me = admin();
    let (moves, appended, inserted) = tokio::join!(
        join_all(twice.iter().zip(&records).map(|(id, r)| store.transition_visit_recorded(
            id,
            cancel,
            &me,
            ms(20_100),
            r
        ))),
        join_all(messages.iter().map(|m| store.append_message_recorded(m, &sent))),
        store.insert_visit_recorded(&duplicate, &me, None, &created),
    );
    assert!(inserted.is_err(), "a visit stored twice is refused, alone");
    let moves: Vec<(bool, bool)> = moves.into_iter().map(Result::unwrap).collect();
    for id in &ids {
        let won = twice.iter().zip(&moves).filter(|(v, (moved, _))| *v == &id && *moved).count();
        assert_eq!(won, 1, "exactly one cancel of {id} moved it: {moves:?}");
        assert_eq!(status(store, id).await, VisitStatus::Cancelled);
        assert_eq!(store.transitions(id).await.unwrap().len(), 2);
    }
    assert!(moves.iter().all(|(moved, recorded)| *moved || !recorded), "no record without its change");
    let appended: Vec<_> = appended.into_iter().map(Result::unwrap).collect();
    assert!(appended.iter().all(|((_, new), _)| *new), "three new messages");
    let mut seqs: Vec<u64> = appended.iter().map(|((m, _), _)| m.seq).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, [1, 2, 3]);
    // What was not stored with its change is appended apart, as the hub does.
    let apart: Vec<AuditEntry> = records
        .iter()
        .zip(&moves)
        .filter(|(_, (moved, recorded))| *moved && !recorded)
        .map(|(r, _)| r.clone())
        .collect();
    store.append_audits(&apart).await.unwrap();
    for id in &ids {
        let trail = store.audit_for_visit(id).await.unwrap();
        let cancels = trail.iter().filter(|r| r.entry.action == "visit.transition").count();
        assert_eq!(cancels, 1, "one record of {id}'s cancel");
    }
    let whole = store.audit_trail(0, 10_000).await.unwrap();
    assert!(first_broken(&whole, GENESIS.into()).is_ok());
}

fn ms(n: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(1_800_000_000_000 + n).unwrap()
}

fn state(code: &str) -> UsState {
    UsState::parse(code).unwrap()
}

fn admin() -> Actor {
    Actor { subject: "admin-1".into(), role: "admin" }
}

fn visit(id: &str, code: &str, at: i64) -> Visit {
    Visit {
        id: id.into(),
        state: state(code),
        display_name: "Pat Doe".into(),
        reason: "cough".into(),
        status: VisitStatus::Waiting,
        created_at: ms(at),
        estimated_wait_secs: Some(120),
        waited_secs: None,
        provider: None,
        reported_state: None,
    }
}

async fn insert(store: &dyn Store, v: Visit) {
    assert_eq!(store.insert_visit(&v, &admin(), None).await.unwrap(), InsertOutcome::Inserted);
}

async fn status(store: &dyn Store, id: &str) -> VisitStatus {
    store.get_visit(id).await.unwrap().unwrap().status
}

fn caregiver(subject: &str, kind: CaregiverKind, states: &[&str]) -> Caregiver {
    Caregiver {
        subject: subject.into(),
        name: format!("Name of {subject}"),
        kind,
        states: states.iter().map(|s| state(s)).collect(),
        active: true,
        created_at: ms(8_000),
        updated_at: ms(8_000),
    }
}

fn participant(subject: &str, role: Role) -> Participant {
    Participant { subject: subject.into(), name: format!("Name of {subject}"), role }
}

fn message(visit_id: &str, sender: &str, client_id: &str) -> NewMessage {
    NewMessage {
        visit_id: visit_id.into(),
        message_id: format!("{visit_id}/{sender}/{client_id}"),
        client_id: client_id.into(),
        from: participant(sender, Role::Support),
        body: format!("hello from {sender}"),
        sent_at: ms(3_500),
    }
}

/// A PostgreSQL change's record is staged in the change's own transaction and chained soon
/// after by the node's chainer, or at once by a read of the trail. One that a crash left staged
/// (written here straight into the outbox, as a change that committed before the process died
/// would have left it) is chained at the next start, in the order staged, before anything new,
/// and the trail stays one unbroken chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_records_a_crash_left_staged_are_chained_at_start() {
    let pg = PgCluster::primary();
    let store = PostgresStore::connect(&pg.primary_url(), None).await.unwrap();
    let v = visit("staged-1", "WA", 1_000);
    let entry = |action: &str| AuditEntry {
        at: ms(1_000),
        subject: "dr-staged".into(),
        role: "provider".into(),
        action: action.into(),
        visit_id: Some("staged-1".into()),
        target: None,
        outcome: "ok".into(),
    };
    assert_eq!(
        store.insert_visit_recorded(&v, &admin(), None, &entry("visit.create")).await.unwrap(),
        (InsertOutcome::Inserted, true)
    );
    let db = sqlx::PgPool::connect(&pg.primary_url()).await.unwrap();
    let staged =
        || async { sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM audit_outbox").fetch_one(&db).await.unwrap() };
    assert_eq!(store.audit_for_visit("staged-1").await.unwrap().len(), 1, "a read chains what is staged first");
    assert_eq!(staged().await, 0);
    for action in ["left.one", "left.two"] {
        sqlx::query("INSERT INTO audit_outbox (at, subject, role, action, visit_id, outcome) VALUES ($1, 'dr-staged', 'provider', $2, 'staged-1', 'ok')")
            .bind(2_000_i64)
            .bind(action)
            .execute(&db)
            .await
            .unwrap();
    }
    drop(store);
    let store = PostgresStore::connect(&pg.primary_url(), None).await.unwrap();
    assert_eq!(staged().await, 0);
    let trail = store.audit_trail(0, 100).await.unwrap();
    let actions: Vec<&str> = trail.iter().map(|r| r.entry.action.as_str()).collect();
    assert_eq!(actions, ["visit.create", "left.one", "left.two"]);
    assert!(first_broken(&trail, GENESIS.into()).is_ok());
}

/// A PostgreSQL change's record is chained by its node's chainer with nobody reading the trail;
/// changes of two nodes at once make one unbroken chain holding each record once; and a record
/// staged with no change to wake a chainer is chained by the next read of the trail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_staged_records_are_chained_by_the_chainer_or_the_next_read() {
    let pg = PgCluster::primary();
    let nodes = [
        PostgresStore::connect(&pg.primary_url(), None).await.unwrap(),
        PostgresStore::connect(&pg.primary_url(), None).await.unwrap(),
    ];
    let db = sqlx::PgPool::connect(&pg.primary_url()).await.unwrap();
    let count = |table: &str| {
        let sql = format!("SELECT COUNT(*) FROM {table}");
        let db = db.clone();
        async move { sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql)).fetch_one(&db).await.unwrap() }
    };
    let intakes = (0..60_i64).map(|i| {
        let store = &nodes[i as usize % 2];
        let v = visit(&format!("chained-{i}"), "WA", 1_000 + i);
        let entry = AuditEntry {
            at: ms(1_000 + i),
            subject: "support-1".into(),
            role: "support".into(),
            action: "visit.create".into(),
            visit_id: Some(v.id.clone()),
            target: None,
            outcome: "ok".into(),
        };
        async move { store.insert_visit_recorded(&v, &admin(), None, &entry).await.unwrap() }
    });
    for outcome in join_all(intakes).await {
        assert_eq!(outcome, (InsertOutcome::Inserted, true));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while count("audit_outbox").await > 0 {
        assert!(Instant::now() < deadline, "staged records were not chained without a read");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(count("audit_log").await, 60);

    // Both nodes gone (their chainers with them), a third one that changed nothing reads.
    drop(nodes);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let reader = PostgresStore::connect(&pg.primary_url(), None).await.unwrap();
    sqlx::query("INSERT INTO audit_outbox (at, subject, role, action, visit_id, outcome) VALUES ($1, 'admin-1', 'admin', 'read.first', 'chained-0', 'ok')")
        .bind(9_000_i64)
        .execute(&db)
        .await
        .unwrap();
    let trail = reader.audit_trail(0, 1_000).await.unwrap();
    assert_eq!(trail.len(), 61, "the read chains what is staged first");
    assert_eq!(trail.last().unwrap().entry.action, "read.first");
    assert!(first_broken(&trail, GENESIS.into()).is_ok());
    let visits: std::collections::HashSet<_> = trail[..60].iter().filter_map(|r| r.entry.visit_id.clone()).collect();
    assert_eq!(visits.len(), 60, "each record once");
}

/// How `memberships_close_with_their_visit` leaves its caregiver's memberships marked, as
/// (visit, of a visit not over): what the lookup of their open conversations reads by index.
/// `MARKS` reads them.
const MARKS: &str = "SELECT visit_id, visit_open FROM chat_members WHERE subject = 'sup-hist'";

fn assert_marked(mut rows: Vec<(String, bool)>) {
    rows.sort();
    let expected = [("hist-abandoned", false), ("hist-cancelled", false), ("hist-ended", false), ("hist-live", true)];
    assert_eq!(rows, expected.map(|(id, open)| (id.to_string(), open)));
}

/// Ending a visit, by any of its ends, marks its memberships closed in the same change, so a
/// caregiver's open conversations are found without reading every conversation they ever had;
/// a visit still going keeps them open.
async fn memberships_close_with_their_visit(store: &dyn Store) {
    let support = participant("sup-hist", Role::Support);
    for id in ["hist-live", "hist-cancelled", "hist-ended", "hist-abandoned"] {
        insert(store, visit(id, "NV", 30_000)).await;
        assert!(store.join_conversation(id, &support, ms(30_100)).await.unwrap());
    }
    let me = admin();
    let at = ms(30_200);
    use VisitStatus::*;
    assert!(store.transition_visit("hist-cancelled", Waiting, Cancelled, &me, at).await.unwrap());
    assert!(store.transition_visit("hist-abandoned", Waiting, Abandoned, &me, at).await.unwrap());
    assert!(store.claim_visit("hist-ended", "dr-hist", at, 1).await.unwrap());
    for (from, to) in [(Claimed, InVisit), (InVisit, WrapUp), (WrapUp, Ended)] {
        assert!(store.transition_visit("hist-ended", from, to, &me, at).await.unwrap());
    }
    assert!(store.claim_visit("hist-live", "dr-hist", at, 1).await.unwrap());
    assert_eq!(store.open_conversation_ids("sup-hist").await.unwrap(), ["hist-live"]);
}

#[tokio::test]
async fn sqlite_memberships_close_with_their_visit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("visithub.db");
    let store = SqliteStore::open(&path).await.unwrap();
    memberships_close_with_their_visit(&store).await;
    let db = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display())).await.unwrap();
    assert_marked(sqlx::query_as(MARKS).fetch_all(&db).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_memberships_close_with_their_visit() {
    let pg = PgCluster::primary();
    let store = PostgresStore::connect(&pg.primary_url(), None).await.unwrap();
    memberships_close_with_their_visit(&store).await;
    let db = sqlx::PgPool::connect(&pg.primary_url()).await.unwrap();
    assert_marked(sqlx::query_as(MARKS).fetch_all(&db).await.unwrap());
}

/// What a database holds before the migration that marks memberships and counts messages: a
/// visit going on and one over, the same support person in both, two messages in the first.
const HISTORY: &str = "
    INSERT INTO visits (id, state, display_name, reason, status, created_at) VALUES
        ('old-live', 'NV', 'P', 'r', 'waiting', 1000), ('old-over', 'NV', 'P', 'r', 'ended', 1000);
    INSERT INTO chat_members (visit_id, subject, name, role, joined_at) VALUES
        ('old-live', 'sup-old', 'S', 'support', 1100), ('old-over', 'sup-old', 'S', 'support', 1100);
    INSERT INTO chat_messages (visit_id, seq, message_id, client_id, sender_subject, sender_role, sender_name, body, sent_at) VALUES
        ('old-live', 1, 'm1', 'c1', 'sup-old', 'support', 'S', 'before', 1200),
        ('old-live', 2, 'm2', 'c2', 'sup-old', 'support', 'S', 'before', 1300)";

/// After the migration, [`HISTORY`]'s membership of the visit over is marked closed and the
/// other open, and the conversation numbers on from its highest seq (PostgreSQL has no counter
/// row for it yet).
async fn history_migrated(store: &dyn Store, marks: Vec<(String, bool)>) {
    let mut marks = marks;
    marks.sort();
    assert_eq!(marks, [("old-live".to_string(), true), ("old-over".to_string(), false)]);
    assert_eq!(store.open_conversation_ids("sup-old").await.unwrap(), ["old-live"]);
    let sends: Vec<NewMessage> = (0..3).map(|i| message("old-live", "sup-old", &format!("new-{i}"))).collect();
    let mut seqs: Vec<u64> =
        join_all(sends.iter().map(|m| store.append_message(m))).await.into_iter().map(|r| r.unwrap().0.seq).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, [3, 4, 5]);
}

const HISTORY_MARKS: &str = "SELECT visit_id, visit_open FROM chat_members WHERE subject = 'sup-old'";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_history_before_the_lookups_migration() {
    let pg = PgCluster::primary();
    let db = sqlx::PgPool::connect(&pg.primary_url()).await.unwrap();
    sqlx::migrate!("./migrations/postgres").run_to(4, &db).await.unwrap();
    sqlx::raw_sql(HISTORY).execute(&db).await.unwrap();
    let store = PostgresStore::connect(&pg.primary_url(), None).await.unwrap();
    history_migrated(&store, sqlx::query_as(HISTORY_MARKS).fetch_all(&db).await.unwrap()).await;
}

#[tokio::test]
async fn sqlite_history_before_the_lookups_migration() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("visithub.db");
    let db = sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=rwc", path.display())).await.unwrap();
    sqlx::migrate!("./migrations/sqlite").run_to(3, &db).await.unwrap();
    sqlx::raw_sql(HISTORY).execute(&db).await.unwrap();
    let store = SqliteStore::open(&path).await.unwrap();
    history_migrated(&store, sqlx::query_as(HISTORY_MARKS).fetch_all(&db).await.unwrap()).await;
}
