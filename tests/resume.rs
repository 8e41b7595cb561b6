//! Sessions that resume: a client that lost its socket comes back with its session id and last
//! `seq` and gets exactly what it missed, in order, or a plain `recovered: false`.

mod common;

use std::time::Duration;

use common::*;
use visithub::model::{Role, VisitStatus};
use visithub::protocol::{ChatSend, ClientMessage, CloseCode, ServerMessage, VisitRef, VisitTransition};

fn say(visit_id: &str, n: u32) -> ClientMessage {
    ClientMessage::ChatSend(ChatSend {
        visit_id: visit_id.into(),
        client_id: format!("m{n}"),
        body: format!("note {n}"),
    })
}

async fn session_id(ws: &mut Ws) -> String {
    let ServerMessage::Welcome(w) = ws.next_of("welcome").await.msg else { unreachable!() };
    w.session_id
}

#[tokio::test]
async fn a_patient_who_drops_mid_visit_resumes_without_losing_or_repeating_anything() {
    let hub = TestHub::start().await;
    hub.onboard("dr-wa", "provider", &["WA"]).await;
    let intake = hub.intake("Ann", "WA", None).await;
    let (visit_id, token) = (intake.str("visit_id"), intake.str("patient_token"));
    let mut patient = hub.ws(&token).await;
    let sid = session_id(&mut patient).await;
    let mut dr = hub.ws(&hub.token(Role::Provider, "dr-wa", &[], 3600)).await;
    assert!(is_ack(&dr.request(&ClientMessage::VisitClaim(VisitRef { visit_id: visit_id.clone() })).await));
    let start =
        ClientMessage::VisitTransition(VisitTransition { visit_id: visit_id.clone(), to: VisitStatus::InVisit });
    assert!(is_ack(&dr.request(&start).await));
    patient.next_of("visit.started").await;
    assert!(is_ack(&dr.request(&say(&visit_id, 1)).await));
    let ServerMessage::ChatMessage(first) = patient.next_of("chat.message").await.msg else { unreachable!() };
    assert_eq!(first.body, "note 1");
    let seen = patient.last_seq;

    // The socket dies; the provider goes on talking.
    drop(patient);
    tokio::time::sleep(Duration::from_millis(100)).await;
    for n in 2..=6 {
        assert!(is_ack(&dr.request(&say(&visit_id, n)).await));
    }

    let mut back = hub.resume(&token, &sid, seen).await;
    let mut bodies = Vec::new();
    let resumed = loop {
        let f = back.next().await;
        assert_eq!(f.seq, Some(seen + 1 + bodies.len() as u64), "seq runs on without gaps");
        match f.msg {
            ServerMessage::ChatMessage(m) => bodies.push(m.body),
            ServerMessage::SessionResumed(r) => break r,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert!(resumed.recovered);
    assert_eq!(resumed.session_id, sid);
    assert_eq!(resumed.replayed, 5);
    assert_eq!(bodies, (2..=6).map(|n| format!("note {n}")).collect::<Vec<_>>(), "lost 0, duplicated 0, in order");
    // And the session is live again both ways.
    assert!(is_ack(&back.request(&say(&visit_id, 7)).await));
    let ServerMessage::ChatMessage(m) = dr
        .next_of_filtered("chat.message", |f| matches!(&f.msg, ServerMessage::ChatMessage(m) if m.client_id == "m7"))
        .await
        .msg
    else {
        unreachable!()
    };
    assert_eq!(m.from.role, Role::Patient);
}

#[tokio::test]
async fn resuming_what_the_hub_no_longer_holds_says_recovered_false() {
    let hub = TestHub::start_with(|c| c.replay_window_frames = 3, None).await;
    hub.onboard("sup", "support", &["WA"]).await;
    let intake = hub.intake("Ann", "WA", None).await;
    let (visit_id, token) = (intake.str("visit_id"), intake.str("patient_token"));
    let mut patient = hub.ws(&token).await;
    let sid = session_id(&mut patient).await;
    let seen = patient.last_seq;
    drop(patient);
    let mut sup = hub.ws(&hub.token(Role::Support, "sup", &[], 3600)).await;
    assert!(is_ack(&sup.request(&ClientMessage::ChatJoin(VisitRef { visit_id: visit_id.clone() })).await));
    for n in 1..=6 {
        assert!(is_ack(&sup.request(&say(&visit_id, n)).await));
    }
    // More was sent than the window of 3 holds: nothing is replayed, the client reloads.
    let mut back = hub.resume(&token, &sid, seen).await;
    let ServerMessage::SessionResumed(r) = back.next_of("session.resumed").await.msg else { unreachable!() };
    assert!(!r.recovered);
    assert_eq!(r.replayed, 0);
    // Its place in line comes again, fresh.
    back.next_of("queue.position").await;

    // An unknown session is a new one, flagged in its welcome.
    let mut fresh = hub.resume(&token, "no-such-session", 4).await;
    let ServerMessage::Welcome(w) = fresh.next_of("welcome").await.msg else { unreachable!() };
    assert_eq!(w.recovered, Some(false));
    assert_ne!(w.session_id, sid);
    // Another subject cannot take the session over.
    let other = hub.intake("Bob", "WA", None).await;
    let mut thief = hub.resume(&other.str("patient_token"), &sid, 0).await;
    let ServerMessage::Welcome(w) = thief.next_of("welcome").await.msg else { unreachable!() };
    assert_eq!(w.recovered, Some(false));
}

#[tokio::test]
async fn a_resume_replaces_a_socket_that_has_not_noticed_it_is_dead() {
    let hub = TestHub::start().await;
    let intake = hub.intake("Ann", "WA", None).await;
    let token = intake.str("patient_token");
    let mut old = hub.ws(&token).await;
    let sid = session_id(&mut old).await;
    let seen = old.last_seq;
    let mut new = hub.resume(&token, &sid, seen).await;
    let ServerMessage::SessionResumed(r) = new.next_of("session.resumed").await.msg else { unreachable!() };
    assert!(r.recovered);
    assert_eq!(old.ended(Duration::from_secs(5)).await, Ended::Closed(CloseCode::SessionResumed.code()));
}

#[tokio::test]
async fn a_session_resumes_again_and_again_and_a_stranger_cannot_take_it_in_between() {
    let hub = TestHub::start().await;
    let intake = hub.intake("Ann", "WA", None).await;
    let token = intake.str("patient_token");
    let mut ws = hub.ws(&token).await;
    let sid = session_id(&mut ws).await;
    for round in 0..3 {
        let seen = ws.last_seq;
        drop(ws);
        // A stranger's try neither takes the session nor uses up its next resume.
        let other = hub.intake(&format!("Bob {round}"), "WA", None).await;
        let mut thief = hub.resume(&other.str("patient_token"), &sid, seen).await;
        let ServerMessage::Welcome(w) = thief.next_of("welcome").await.msg else { unreachable!() };
        assert_eq!(w.recovered, Some(false));
        ws = hub.resume(&token, &sid, seen).await;
        let ServerMessage::SessionResumed(r) = ws.next_of("session.resumed").await.msg else { unreachable!() };
        assert!(r.recovered, "round {round}");
        assert_eq!(r.session_id, sid);
    }
}

#[tokio::test]
async fn a_detached_session_that_falls_too_far_behind_is_cut_off_at_once() {
    let hub = TestHub::start_with(
        |c| {
            c.outbound_queue = 8;
            c.rate_support = 100;
        },
        None,
    )
    .await;
    hub.onboard("sup", "support", &["WA"]).await;
    let intake = hub.intake("Ann", "WA", None).await;
    let (visit_id, token) = (intake.str("visit_id"), intake.str("patient_token"));
    let mut patient = hub.ws(&token).await;
    let sid = session_id(&mut patient).await;
    let seen = patient.last_seq;
    let mut sup = hub.ws(&hub.token(Role::Support, "sup", &[], 3600)).await;
    assert!(is_ack(&sup.request(&ClientMessage::ChatJoin(VisitRef { visit_id: visit_id.clone() })).await));
    drop(patient);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The detached session queues what it is sent until its queue is half full, then leaves
    // its inbox alone; the inbox overflows and the router cuts the session off.
    for n in 1..=30 {
        assert!(is_ack(&sup.request(&say(&visit_id, n)).await));
    }
    // Gone well before its resume window (60 s by default) is over: the client reloads.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut back = hub.resume(&token, &sid, seen).await;
    let ServerMessage::Welcome(w) = back.next_of("welcome").await.msg else { unreachable!() };
    assert_eq!(w.recovered, Some(false));
}

/// A gauge of the hub's `/metrics` for patients, once it reads `want` (within a few seconds).
async fn patient_gauge_reaches(hub: &TestHub, name: &str, want: i64) {
    let series = format!("{name}{{");
    for _ in 0..250 {
        let page = hub.metrics().await;
        let sample = page.lines().find(|l| l.starts_with(&series) && l.contains("role=\"patient\""));
        let now: i64 = sample.expect("the gauge is served").rsplit(' ').next().unwrap().parse().unwrap();
        if now == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{name} never read {want}:\n{}", hub.metrics().await);
}

#[tokio::test]
async fn a_patient_whose_visit_is_over_is_not_held_for_a_resume() {
    let hub = TestHub::start().await;
    hub.onboard("dr-wa", "provider", &["WA"]).await;
    let mut dr = hub.ws(&hub.token(Role::Provider, "dr-wa", &[], 3600)).await;
    let to = |visit_id: &str, to| ClientMessage::VisitTransition(VisitTransition { visit_id: visit_id.into(), to });

    // Over while the socket is open, then the socket is lost: the session ends with it.
    let intake = hub.intake("Ann", "WA", None).await;
    let (visit_id, token) = (intake.str("visit_id"), intake.str("patient_token"));
    let mut ann = hub.ws(&token).await;
    let sid = session_id(&mut ann).await;
    let cancel = hub.call("POST", &format!("/v1/visits/{visit_id}/cancel"), Some(&token), None).await;
    assert!(cancel.status.is_success(), "{}", cancel.body);
    ann.next_of("visit.updated").await;
    let seen = ann.last_seq;
    drop(ann);
    patient_gauge_reaches(&hub, "visithub_ws_connections_open", 0).await;
    patient_gauge_reaches(&hub, "visithub_ws_sessions_detached", 0).await;
    let mut back = hub.resume(&token, &sid, seen).await;
    let ServerMessage::Welcome(w) = back.next_of("welcome").await.msg else { unreachable!() };
    assert_eq!(w.recovered, Some(false), "nothing was held to resume");
    assert_ne!(w.session_id, sid);
    drop(back);

    // Lost mid-visit, the session is held; when the visit ends it is let go.
    let intake = hub.intake("Bob", "WA", None).await;
    let (visit_id, token) = (intake.str("visit_id"), intake.str("patient_token"));
    let mut bob = hub.ws(&token).await;
    let sid = session_id(&mut bob).await;
    assert!(is_ack(&dr.request(&ClientMessage::VisitClaim(VisitRef { visit_id: visit_id.clone() })).await));
    assert!(is_ack(&dr.request(&to(&visit_id, VisitStatus::InVisit)).await));
    bob.next_of("visit.started").await;
    let seen = bob.last_seq;
    drop(bob);
    patient_gauge_reaches(&hub, "visithub_ws_sessions_detached", 1).await;
    assert!(is_ack(&dr.request(&to(&visit_id, VisitStatus::WrapUp)).await));
    assert!(is_ack(&dr.request(&to(&visit_id, VisitStatus::Ended)).await));
    patient_gauge_reaches(&hub, "visithub_ws_sessions_detached", 0).await;
    let mut back = hub.resume(&token, &sid, seen).await;
    let ServerMessage::Welcome(w) = back.next_of("welcome").await.msg else { unreachable!() };
    assert_eq!(w.recovered, Some(false));
}
