//! Onboarding, intake, live queue positions and the intake refusals, over real HTTP and
//! WebSockets against a hub on port 0.

mod common;

use std::sync::Arc;

use common::*;
use reqwest::StatusCode;
use serde_json::json;
use visithub::clock::ManualClock;
use visithub::model::{Role, UsState};
use visithub::protocol::{ClientMessage, ServerMessage, StateRef};

fn wa() -> StateRef {
    StateRef { state: UsState::parse("WA").unwrap() }
}

#[tokio::test]
async fn onboarding_positions_cancellation_and_coverage() {
    let hub = TestHub::start().await;

    // Onboard a provider licensed in WA, a support person covering WA and OR, and a provider
    // licensed only in OR.
    let provider = hub.onboard("dr-wa", "provider", &["WA"]).await;
    assert_eq!(provider.status, StatusCode::CREATED, "{}", provider.body);
    assert_eq!(provider.body["states"], json!(["WA"]));
    let support = hub.onboard("sup-1", "support", &["WA", "OR"]).await;
    assert_eq!(support.status, StatusCode::CREATED);
    assert_eq!(support.body["role"], "support");
    assert_eq!(hub.onboard("dr-or", "provider", &["OR"]).await.status, StatusCode::CREATED);
    let again = hub.onboard("dr-wa", "provider", &["WA"]).await;
    assert_eq!((again.status, again.code()), (StatusCode::CONFLICT, "caregiver_exists"));
    let listed = hub.call("GET", "/v1/caregivers", Some(&hub.admin()), None).await;
    assert_eq!(listed.body.as_array().unwrap().len(), 3);

    // The support person watches WA: a snapshot first.
    let mut desk = hub.ws(&hub.token(Role::Support, "sup-1", &[], 3600)).await;
    assert!(matches!(desk.next().await.msg, ServerMessage::Welcome(_)));
    assert!(is_ack(&desk.request(&ClientMessage::QueueSubscribe(wa())).await));
    let ServerMessage::QueueSnapshot(snap) = desk.next_of("queue.snapshot").await.msg else { unreachable!() };
    assert!(snap.visits.is_empty());

    // Two intakes in WA: positions 1 and 2, each with an estimate, the second longer.
    let first = hub.intake("Ann Patient", "WA", None).await;
    let second = hub.intake("Bob Patient", "wa", None).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    assert_eq!((first.body["position"].as_u64(), second.body["position"].as_u64()), (Some(1), Some(2)));
    let (e1, e2) =
        (first.body["estimated_wait_secs"].as_u64().unwrap(), second.body["estimated_wait_secs"].as_u64().unwrap());
    assert!(e2 > e1, "estimates {e1} then {e2}");

    // The desk sees both arrive as deltas.
    let mut seen = Vec::new();
    while seen.len() < 2 {
        if let ServerMessage::QueueDelta(d) = desk.next_of("queue.delta").await.msg {
            seen.extend(d.added.into_iter().map(|e| (e.display_name, e.position)));
        }
    }
    assert_eq!(seen, vec![("Ann Patient".to_string(), 1), ("Bob Patient".to_string(), 2)]);

    // The second patient is told position 2, then 1 once the first cancels.
    let mut bob = hub.ws(&second.str("patient_token")).await;
    let ServerMessage::QueuePosition(p) = bob.next_of("queue.position").await.msg else { unreachable!() };
    assert_eq!((p.position, p.queue_length), (2, 2));
    let ann_token = first.str("patient_token");
    let cancel =
        hub.call("POST", &format!("/v1/visits/{}/cancel", first.str("visit_id")), Some(&ann_token), None).await;
    assert_eq!(cancel.status, StatusCode::OK, "{}", cancel.body);
    assert_eq!(cancel.body["status"], "cancelled");
    let ServerMessage::QueuePosition(p) = bob.next_of("queue.position").await.msg else { unreachable!() };
    assert_eq!((p.position, p.queue_length), (1, 1));
    assert!(p.estimated_wait_secs < e2);
    let ServerMessage::QueueDelta(d) = desk.next_of("queue.delta").await.msg else { unreachable!() };
    assert_eq!(d.removed, vec![first.str("visit_id")]);

    // Cancelling twice is refused; the visit reads back as cancelled.
    let twice = hub.call("POST", &format!("/v1/visits/{}/cancel", first.str("visit_id")), Some(&ann_token), None).await;
    assert_eq!((twice.status, twice.code()), (StatusCode::CONFLICT, "visit_not_cancellable"));
    let read = hub.call("GET", &format!("/v1/visits/{}", first.str("visit_id")), Some(&ann_token), None).await;
    assert_eq!(read.body["status"], "cancelled");

    // A provider licensed only in OR is refused the WA queue, over the socket and over REST.
    let or_token = hub.token(Role::Provider, "dr-or", &[], 3600);
    let mut or_provider = hub.ws(&or_token).await;
    let refused = or_provider.request(&ClientMessage::QueueSubscribe(wa())).await;
    assert_eq!(error_code(&refused), "state_not_covered");
    let rest = hub.call("GET", "/v1/states/WA/queue", Some(&or_token), None).await;
    assert_eq!((rest.status, rest.code()), (StatusCode::FORBIDDEN, "state_not_covered"));
    let visit = hub.call("GET", &format!("/v1/visits/{}", second.str("visit_id")), Some(&or_token), None).await;
    assert_eq!(visit.code(), "state_not_covered");

    // The WA provider can read the waiting visit and the queue.
    let wa_token = hub.token(Role::Provider, "dr-wa", &[], 3600);
    let visit = hub.call("GET", &format!("/v1/visits/{}", second.str("visit_id")), Some(&wa_token), None).await;
    assert_eq!((visit.status, visit.body["position"].as_u64()), (StatusCode::OK, Some(1)));
    let queue = hub.call("GET", "/v1/states/WA/queue", Some(&wa_token), None).await;
    assert_eq!(queue.body["visits"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn provider_presence_changes_the_estimates_patients_see() {
    let hub = TestHub::start().await;
    hub.onboard("dr-wa", "provider", &["WA"]).await;
    let first = hub.intake("Ann", "WA", None).await;
    let second = hub.intake("Bob", "WA", None).await;
    let mut bob = hub.ws(&second.str("patient_token")).await;
    let ServerMessage::QueuePosition(before) = bob.next_of("queue.position").await.msg else { unreachable!() };

    // A provider comes online (available): the wait at position 2 shrinks.
    let mut dr = hub.ws(&hub.token(Role::Provider, "dr-wa", &[], 3600)).await;
    dr.next_of("welcome").await;
    let ServerMessage::QueuePosition(after) = bob.next_of("queue.position").await.msg else { unreachable!() };
    assert_eq!(after.position, 2);
    assert!(after.estimated_wait_secs < before.estimated_wait_secs, "{before:?} -> {after:?}");

    // Away again: the estimate grows back.
    let away = dr
        .request(&ClientMessage::PresenceSet(visithub::protocol::PresenceSet {
            status: visithub::protocol::PresenceStatus::Away,
        }))
        .await;
    assert!(is_ack(&away));
    let ServerMessage::QueuePosition(later) = bob.next_of("queue.position").await.msg else { unreachable!() };
    assert!(later.estimated_wait_secs > after.estimated_wait_secs);
    drop(first);
}

#[tokio::test]
async fn idempotent_intake_returns_the_same_visit() {
    let hub = TestHub::start().await;
    let a = hub.intake("Ann", "WA", Some("intake-123")).await;
    let b = hub.intake("Ann", "WA", Some("intake-123")).await;
    assert_eq!(a.status, StatusCode::CREATED);
    assert_eq!(b.status, StatusCode::OK);
    assert_eq!(a.str("visit_id"), b.str("visit_id"));
    assert_eq!(b.body["replayed"], true);
    assert_eq!(b.body["position"], 1);
    assert_eq!(hub.visits_stored().await, 1);

    // The same key with another request is a conflict, and stores nothing.
    let c = hub.intake("Someone Else", "WA", Some("intake-123")).await;
    assert_eq!((c.status, c.code()), (StatusCode::CONFLICT, "idempotency_conflict"));
    let bad = hub.intake("Ann", "WA", Some("has spaces")).await;
    assert_eq!(bad.code(), "validation_failed");
    assert_eq!(hub.visits_stored().await, 1);
}

/// Retries of one key sent at once (a client that lost its answers) make one visit, and the
/// places they reserved while checked are given back: the cap counts the one visit only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_of_one_key_at_once_make_one_visit_and_free_their_places() {
    let hub = TestHub::start().await;
    assert_eq!(hub.settings("WA", json!({ "queue_cap": 2 })).await.status, StatusCode::OK);
    let tries = (0..8).map(|_| hub.intake("Ann", "WA", Some("intake-at-once")));
    let replies = futures_util::future::join_all(tries).await;
    let created = replies.iter().filter(|r| r.status == StatusCode::CREATED).count();
    assert_eq!(created, 1, "one visit made");
    for r in &replies {
        assert!(r.status == StatusCode::CREATED || r.body["replayed"] == true, "{}", r.body);
        assert_eq!(r.str("visit_id"), replies[0].str("visit_id"));
        assert_eq!(r.body["position"], 1);
    }
    assert_eq!(hub.visits_stored().await, 1);
    // One place left under the cap of 2, whatever the retries reserved on the way.
    assert_eq!(hub.intake("Bob", "WA", None).await.status, StatusCode::CREATED);
    assert_eq!(hub.intake("Cy", "WA", None).await.code(), "queue_full");
}

#[tokio::test]
async fn intake_refusals_each_have_their_code_and_store_nothing() {
    let clock = Arc::new(ManualClock::new(seattle(10, 0)));
    let hub = TestHub::start_with(|c| c.prior_visit_secs = 600, Some(clock.clone())).await;
    let weekdays = json!({ "open": "09:00", "close": "17:00" });
    let hours = json!({ "mon": weekdays, "tue": weekdays, "wed": weekdays, "thu": weekdays, "fri": weekdays, "sat": null, "sun": null });
    let set = hub.settings("WA", json!({ "hours": hours, "queue_cap": 2 })).await;
    assert_eq!(set.status, StatusCode::OK, "{}", set.body);

    // Outside hours: refused with the time until 09:00.
    clock.set(seattle(7, 0));
    let r = hub.intake("Ann", "WA", None).await;
    assert_eq!((r.status, r.code()), (StatusCode::SERVICE_UNAVAILABLE, "outside_hours"));
    assert_eq!(r.retry_after, Some(2 * 3600));
    assert_eq!(hub.visits_stored().await, 0);

    // Past closing: at 16:50 a wait of 60 s + 300 s fits, the second place (+600 s) does not.
    clock.set(seattle(16, 50));
    assert_eq!(hub.intake("Ann", "WA", None).await.status, StatusCode::CREATED);
    let r = hub.intake("Bob", "WA", None).await;
    assert_eq!((r.status, r.code()), (StatusCode::SERVICE_UNAVAILABLE, "queue_closing"));
    assert!(r.retry_after.unwrap() > 16 * 3600);
    assert_eq!(hub.visits_stored().await, 1);

    // At the cap (2 waiting): refused.
    clock.set(seattle(10, 0));
    assert_eq!(hub.intake("Bob", "WA", None).await.status, StatusCode::CREATED);
    let r = hub.intake("Cy", "WA", None).await;
    assert_eq!((r.status, r.code()), (StatusCode::SERVICE_UNAVAILABLE, "queue_full"));
    assert!(r.retry_after.unwrap() >= 1);
    assert_eq!(hub.visits_stored().await, 2);

    // Busy with a reduced rate of one per hour: one more, then refused until the hour is up.
    let set = hub.settings("OR", json!({ "busy": true, "busy_intake_per_hour": 1 })).await;
    assert_eq!(set.body["busy"], true);
    assert_eq!(hub.intake("Dee", "OR", None).await.status, StatusCode::CREATED);
    clock.set(seattle(10, 20));
    let r = hub.intake("Eve", "OR", None).await;
    assert_eq!((r.status, r.code()), (StatusCode::TOO_MANY_REQUESTS, "state_busy"));
    assert_eq!(r.retry_after, Some(40 * 60));
    assert_eq!(hub.visits_stored().await, 3);

    // Staff covering OR may lift the busy flag; intake resumes.
    hub.onboard("sup-or", "support", &["OR"]).await;
    let support = hub.token(Role::Support, "sup-or", &[], 3600);
    let lifted = hub.call("PUT", "/v1/states/OR/busy", Some(&support), Some(json!({ "busy": false }))).await;
    assert_eq!(lifted.body["busy"], false, "{}", lifted.body);
    assert_eq!(hub.intake("Eve", "OR", None).await.status, StatusCode::CREATED);
    // ...but not for a state they do not cover, nor change hours.
    let r = hub.call("PUT", "/v1/states/WA/busy", Some(&support), Some(json!({ "busy": true }))).await;
    assert_eq!(r.code(), "state_not_covered");
    let r = hub.call("PATCH", "/v1/states/OR/settings", Some(&support), Some(json!({ "queue_cap": 5 }))).await;
    assert_eq!(r.code(), "forbidden");
}

/// Intakes of one state arriving at once are stored outside the state's intake lock, yet the
/// cap holds exactly and each receipt's place counts the intakes ahead still being stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intakes_of_one_state_at_once_hold_the_cap_and_get_distinct_places() {
    let clock = Arc::new(ManualClock::new(seattle(10, 0)));
    let hub = TestHub::start_with(|_| {}, Some(clock)).await;
    let set = hub.settings("WA", json!({ "queue_cap": 8 })).await;
    assert_eq!(set.status, StatusCode::OK, "{}", set.body);
    let names: Vec<String> = (0..24).map(|i| format!("Patient {i}")).collect();
    let replies = futures_util::future::join_all(names.iter().map(|n| hub.intake(n, "WA", None))).await;
    let places = places_of_admitted(&replies);
    assert_eq!(places, (1..=8).collect::<Vec<u64>>(), "eight admitted, each told its own place");
    assert_eq!(hub.visits_stored().await, 8);
    let view = hub.app_hub.view_now(UsState::parse("WA").unwrap());
    assert_eq!(view.len(), 8);
}

#[tokio::test]
async fn queues_are_rebuilt_from_the_store_on_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = visithub::config::Config { data_dir: dir.path().to_path_buf(), ..Default::default() };
    let waiting = {
        let (app, _) = visithub::app::App::from_config(config.clone()).await.unwrap();
        let req = |name: &str| visithub::hub::IntakeRequest {
            display_name: name.into(),
            state: UsState::parse("WA").unwrap(),
            reason: "cough".into(),
        };
        app.hub().intake(req("Ann"), None).await.unwrap();
        app.hub().intake(req("Bob"), None).await.unwrap().visit_id
    };
    let (app, _) = visithub::app::App::from_config(config).await.unwrap();
    let view = app.hub().view_now(UsState::parse("WA").unwrap());
    assert_eq!(view.len(), 2);
    assert_eq!(view.position_of(&waiting), Some(2));
}

#[tokio::test]
async fn one_address_past_its_intakes_per_minute_is_refused_and_nothing_is_stored() {
    let hub = TestHub::start_with(
        |c| {
            c.intake_per_address_per_minute = 2;
            c.client_address_header = Some("X-Forwarded-For".into());
        },
        None,
    )
    .await;
    let from = |client: &'static str| {
        let req = hub.http.post(hub.url("/v1/visits")).header("X-Forwarded-For", client);
        async move {
            let req = req.json(&json!({ "display_name": "Ann", "state": "WA", "reason": "sore throat" }));
            Reply::read(req.send().await.unwrap()).await
        }
    };
    // Behind the (simulated) balancer: the client is the last address it appended.
    assert_eq!(from("203.0.113.9, 192.0.2.1").await.status, StatusCode::CREATED);
    assert_eq!(from("192.0.2.1").await.status, StatusCode::CREATED);
    let r = from("198.51.100.4, 192.0.2.1").await;
    assert_eq!((r.status, r.code()), (StatusCode::TOO_MANY_REQUESTS, "rate_limited"));
    let wait = r.retry_after.expect("a Retry-After header");
    assert!((1..=30).contains(&wait), "one intake back within half a minute: {wait}");
    assert_eq!(hub.visits_stored().await, 2, "the refused intake stored nothing");
    // Another client has its own quota.
    assert_eq!(from("192.0.2.2").await.status, StatusCode::CREATED);
    // Without the header, the connection's peer (127.0.0.1) counts, with a quota of its own.
    assert_eq!(hub.intake("Bob", "WA", None).await.status, StatusCode::CREATED);
    assert_eq!(hub.intake("Cy", "WA", None).await.status, StatusCode::CREATED);
    assert_eq!(hub.intake("Dee", "WA", None).await.code(), "rate_limited");
    assert_eq!(hub.visits_stored().await, 5);
    let refused = hub.metrics().await;
    assert!(
        refused.lines().any(|l| l.starts_with("visithub_intake_refusals_total")
            && l.contains("reason=\"rate_limited\"")
            && l.ends_with(" 2")),
        "the refusal is counted by its reason"
    );
}

/// A burst of changes to one queue reaches a waiting patient as a few positions, the last
/// one right, not as a frame per change; a console that subscribes right after sees them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_queue_changes_reaches_a_patient_paced_and_a_new_console_whole() {
    let hub = TestHub::start().await;
    hub.onboard("desk", "support", &["WA"]).await;
    let first = hub.intake("Ann", "WA", None).await;
    let mut ann = hub.ws(&first.str("patient_token")).await;
    let ServerMessage::QueuePosition(p) = ann.next_of("queue.position").await.msg else { unreachable!() };
    assert_eq!((p.position, p.queue_length), (1, 1));

    let names: Vec<String> = (0..40).map(|i| format!("Patient {i}")).collect();
    let started = std::time::Instant::now();
    let replies = futures_util::future::join_all(names.iter().map(|n| hub.intake(n, "WA", None))).await;
    assert!(replies.iter().all(|r| r.status == StatusCode::CREATED));

    let mut positions = 0;
    loop {
        let ServerMessage::QueuePosition(p) = ann.next_of("queue.position").await.msg else { unreachable!() };
        positions += 1;
        assert_eq!(p.position, 1);
        if p.queue_length == 41 {
            break;
        }
    }
    // Publications of the board are 100 ms apart or more, the first perhaps at once.
    let paced = started.elapsed().as_millis() / 100 + 1;
    assert!(positions as u128 <= paced, "40 changes, {positions} positions in {:?}", started.elapsed());

    let mut desk = hub.ws(&hub.token(Role::Support, "desk", &[], 3600)).await;
    assert!(is_ack(&desk.request(&ClientMessage::QueueSubscribe(wa())).await));
    let ServerMessage::QueueSnapshot(s) = desk.next_of("queue.snapshot").await.msg else { unreachable!() };
    assert_eq!(s.visits.len(), 41);
}
