//! Visits end to end over real sockets: claiming (one winner among many), the lifecycle,
//! signaling relay and its refusals, abandonment and moving between queues.

mod common;

use std::time::Duration;

use common::*;
use futures_util::future::join_all;
use visithub::model::{Role, UsState, VisitStatus};
use visithub::protocol::{
    ClientMessage, ServerMessage, SignalCandidate, SignalEnd, SignalSdp, VisitLocation, VisitRef, VisitTransition,
};

pub const OFFER: &str = "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\na=msid-semantic: WMS\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\na=ice-ufrag:Yx3a\r\na=ice-pwd:Wj5pZ0XE0VrUQ1nY7dXh7kFf\r\na=ice-options:trickle\r\na=fingerprint:sha-256 6B:8B:5D:EA:59:04:20:23:29:C8:87:1C:CD:A8:1F:4A:0A:5E:AB:CD:3A:9C:B8:2B:4F:6D:1F:0C:E7:44:19:27\r\na=setup:actpass\r\na=mid:0\r\na=sctp-port:5000\r\na=max-message-size:262144\r\n";
pub const CANDIDATE: &str = "candidate:842163049 1 udp 1677729535 127.0.0.1 50000 typ host generation 0";

fn claim(visit_id: &str) -> ClientMessage {
    ClientMessage::VisitClaim(VisitRef { visit_id: visit_id.into() })
}

fn to(visit_id: &str, status: VisitStatus) -> ClientMessage {
    ClientMessage::VisitTransition(VisitTransition { visit_id: visit_id.into(), to: status })
}

fn offer(visit_id: &str, sdp: &str) -> ClientMessage {
    ClientMessage::SignalOffer(SignalSdp { visit_id: visit_id.into(), sdp: sdp.into(), ice_restart: false, from: None })
}

fn candidate(visit_id: &str, c: &str) -> ClientMessage {
    ClientMessage::SignalCandidate(SignalCandidate {
        visit_id: visit_id.into(),
        candidate: c.into(),
        sdp_mid: Some("0".into()),
        sdp_m_line_index: Some(0),
        username_fragment: None,
        from: None,
    })
}

/// Onboards `dr-wa`, takes one intake in WA, and connects both sides.
async fn visit_with_provider(hub: &TestHub) -> (String, Ws, Ws) {
    hub.onboard("dr-wa", "provider", &["WA"]).await;
    let intake = hub.intake("Ann", "WA", None).await;
    let visit_id = intake.str("visit_id");
    let mut patient = hub.ws(&intake.str("patient_token")).await;
    patient.next_of("queue.position").await;
    let mut dr = hub.ws(&hub.token(Role::Provider, "dr-wa", &[], 3600)).await;
    dr.next_of("welcome").await;
    (visit_id, patient, dr)
}

#[tokio::test]
async fn of_a_hundred_concurrent_claims_exactly_one_wins() {
    let hub = TestHub::start().await;
    let visit_id = hub.intake("Ann", "WA", None).await.str("visit_id");
    let mut sockets = Vec::new();
    for i in 0..100 {
        let subject = format!("dr-{i}");
        assert!(hub.onboard(&subject, "provider", &["WA"]).await.status.is_success());
        let mut ws = hub.ws(&hub.token(Role::Provider, &subject, &[], 3600)).await;
        ws.next_of("welcome").await;
        sockets.push(ws);
    }
    let msg = claim(&visit_id);
    let replies = join_all(sockets.iter_mut().map(|ws| ws.request(&msg))).await;
    let winners = replies.iter().filter(|f| is_ack(f)).count();
    let losers: Vec<String> = replies.iter().filter(|f| !is_ack(f)).map(error_code).collect();
    assert_eq!(winners, 1);
    assert_eq!(losers.len(), 99);
    assert!(losers.iter().all(|c| c == "visit_already_claimed"), "{losers:?}");
    let claimed = hub
        .app_hub
        .store()
        .transitions(&visit_id)
        .await
        .unwrap()
        .iter()
        .filter(|t| t.to == VisitStatus::Claimed)
        .count();
    assert_eq!(claimed, 1);
}

#[tokio::test]
async fn a_whole_visit_with_signaling_relayed_in_order() {
    let hub = TestHub::start().await;
    let (visit_id, mut patient, mut dr) = visit_with_provider(&hub).await;

    let ack = dr.request(&claim(&visit_id)).await;
    assert!(is_ack(&ack), "{ack:?}");
    let ServerMessage::VisitUpdated(u) = patient.next_of("visit.updated").await.msg else { unreachable!() };
    assert_eq!(u.status, VisitStatus::Claimed);
    // Signaling is closed until the visit starts.
    assert_eq!(error_code(&dr.request(&offer(&visit_id, OFFER)).await), "visit_not_active");

    assert!(is_ack(&dr.request(&to(&visit_id, VisitStatus::InVisit)).await));
    let ServerMessage::VisitStarted(mine) = dr.next_of("visit.started").await.msg else { unreachable!() };
    let ServerMessage::VisitStarted(theirs) = patient.next_of("visit.started").await.msg else { unreachable!() };
    assert!(!mine.polite && theirs.polite, "the patient is the polite side");
    assert_eq!((mine.peer.role, theirs.peer.role), (Role::Patient, Role::Provider));
    assert_eq!(theirs.peer.subject, "dr-wa");

    // Offer, then candidates, then end-of-candidates: relayed in order, stamped with the sender.
    assert!(is_ack(&dr.request(&offer(&visit_id, OFFER)).await));
    for port in 50000..50005 {
        let c = CANDIDATE.replace("50000", &port.to_string());
        assert!(is_ack(&dr.request(&candidate(&visit_id, &c)).await));
    }
    let end = ClientMessage::SignalEndOfCandidates(SignalEnd { visit_id: visit_id.clone(), from: None });
    assert!(is_ack(&dr.request(&end).await));
    let ServerMessage::SignalOffer(o) = patient.next_of("signal.offer").await.msg else { unreachable!() };
    assert_eq!((o.sdp.as_str(), o.from), (OFFER, Some(Role::Provider)));
    for port in 50000..50005 {
        let ServerMessage::SignalCandidate(c) = patient.next_of("signal.candidate").await.msg else { unreachable!() };
        assert!(c.candidate.contains(&port.to_string()), "out of order: {port}");
    }
    patient.next_of("signal.end_of_candidates").await;
    // The answer goes the other way.
    let answer = ClientMessage::SignalAnswer(SignalSdp {
        visit_id: visit_id.clone(),
        sdp: OFFER.into(),
        ice_restart: false,
        from: None,
    });
    assert!(is_ack(&patient.request(&answer).await));
    let ServerMessage::SignalAnswer(a) = dr.next_of("signal.answer").await.msg else { unreachable!() };
    assert_eq!(a.from, Some(Role::Patient));

    // The patient hangs up, the provider finishes the notes.
    assert!(is_ack(&patient.request(&to(&visit_id, VisitStatus::WrapUp)).await));
    assert_eq!(error_code(&patient.request(&to(&visit_id, VisitStatus::Ended)).await), "invalid_transition");
    assert!(is_ack(&dr.request(&to(&visit_id, VisitStatus::Ended)).await));
    // Both sides are told (the steps before were told too, and skipped by the reads above).
    let ended = |f: &visithub::protocol::ServerFrame| matches!(&f.msg, ServerMessage::VisitUpdated(u) if u.status == VisitStatus::Ended);
    dr.next_of_filtered("visit.updated", ended).await;
    patient.next_of_filtered("visit.updated", ended).await;
    let path: Vec<_> = hub
        .app_hub
        .store()
        .transitions(&visit_id)
        .await
        .unwrap()
        .iter()
        .map(|t| (t.to, t.actor_role.clone()))
        .collect();
    assert_eq!(
        path,
        vec![
            (VisitStatus::Waiting, "patient".to_string()),
            (VisitStatus::Claimed, "provider".to_string()),
            (VisitStatus::InVisit, "provider".to_string()),
            (VisitStatus::WrapUp, "patient".to_string()),
            (VisitStatus::Ended, "provider".to_string()),
        ]
    );
}

#[tokio::test]
async fn signaling_refusals_are_not_forwarded() {
    let hub = TestHub::start_with(|c| c.max_sdp_bytes = 2048, None).await;
    let (visit_id, mut patient, mut dr) = visit_with_provider(&hub).await;
    assert!(is_ack(&dr.request(&claim(&visit_id)).await));
    assert!(is_ack(&dr.request(&to(&visit_id, VisitStatus::InVisit)).await));
    patient.next_of("visit.started").await;

    assert_eq!(error_code(&dr.request(&offer(&visit_id, "v=0\r\nthis is not sdp")).await), "invalid_sdp");
    let oversized = format!("{OFFER}{}", "a=x-padding:0123456789\r\n".repeat(100));
    assert_eq!(error_code(&dr.request(&offer(&visit_id, &oversized)).await), "sdp_too_large");
    assert_eq!(
        error_code(&dr.request(&candidate(&visit_id, "candidate:1 1 udp 1 127.0.0.1 9 typ nonsense")).await),
        "invalid_candidate"
    );
    assert_eq!(error_code(&dr.request(&candidate("no-such-visit", CANDIDATE)).await), "visit_not_found");

    // Another patient cannot signal into this visit, nor a provider who did not claim it.
    let other = hub.intake("Bob", "WA", None).await;
    let mut bob = hub.ws(&other.str("patient_token")).await;
    assert_eq!(error_code(&bob.request(&candidate(&visit_id, CANDIDATE)).await), "not_your_visit");
    hub.onboard("dr-2", "provider", &["WA"]).await;
    let mut dr2 = hub.ws(&hub.token(Role::Provider, "dr-2", &[], 3600)).await;
    assert_eq!(error_code(&dr2.request(&candidate(&visit_id, CANDIDATE)).await), "not_a_participant");

    // Nothing of the above reached the patient: the next signal it sees is the valid one.
    assert!(is_ack(&dr.request(&candidate(&visit_id, CANDIDATE)).await));
    let next = patient.next_of_any(&["signal.offer", "signal.candidate"]).await;
    let ServerMessage::SignalCandidate(c) = next.msg else { panic!("refused signal was forwarded: {next:?}") };
    assert_eq!(c.candidate, CANDIDATE);
}

#[tokio::test]
async fn claims_respect_licenses_and_the_live_visit_cap() {
    let hub = TestHub::start().await;
    hub.onboard("dr-or", "provider", &["OR"]).await;
    hub.onboard("dr-wa", "provider", &["WA"]).await;
    let first = hub.intake("Ann", "WA", None).await.str("visit_id");
    let second = hub.intake("Bob", "WA", None).await.str("visit_id");
    let mut or = hub.ws(&hub.token(Role::Provider, "dr-or", &[], 3600)).await;
    assert_eq!(error_code(&or.request(&claim(&first)).await), "state_not_covered");
    let mut wa = hub.ws(&hub.token(Role::Provider, "dr-wa", &[], 3600)).await;
    assert!(is_ack(&wa.request(&claim(&first)).await));
    assert_eq!(error_code(&wa.request(&claim(&second)).await), "provider_busy");
    // Releasing puts the visit back in line at its place, and frees the provider.
    assert!(is_ack(&wa.request(&to(&first, VisitStatus::Waiting)).await));
    let view = hub.app_hub.view_now(UsState::parse("WA").unwrap());
    assert_eq!(view.position_of(&first), Some(1));
    assert!(is_ack(&wa.request(&claim(&second)).await));
    // Support cannot claim; a patient cannot start their own visit.
    hub.onboard("sup", "support", &["WA"]).await;
    let mut sup = hub.ws(&hub.token(Role::Support, "sup", &[], 3600)).await;
    assert_eq!(error_code(&sup.request(&claim(&first)).await), "forbidden");
}

/// A single node counts providers' visits in memory, from what the store holds at start: a
/// visit claimed before a restart still counts against the cap after it.
#[tokio::test]
async fn the_live_visit_cap_holds_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let before = TestHub::start_on_disk(dir.path()).await;
    before.onboard("dr-wa", "provider", &["WA"]).await;
    let first = before.intake("Ann", "WA", None).await.str("visit_id");
    let mut wa = before.ws(&before.token(Role::Provider, "dr-wa", &[], 3600)).await;
    assert!(is_ack(&wa.request(&claim(&first)).await));
    drop(wa);

    let after = TestHub::start_on_disk(dir.path()).await;
    let second = after.intake("Bob", "WA", None).await.str("visit_id");
    let mut wa = after.ws(&after.token(Role::Provider, "dr-wa", &[], 3600)).await;
    assert_eq!(error_code(&wa.request(&claim(&second)).await), "provider_busy");
    // Ending the visit held from before frees the provider.
    for status in [VisitStatus::InVisit, VisitStatus::WrapUp, VisitStatus::Ended] {
        assert!(is_ack(&wa.request(&to(&first, status)).await));
    }
    assert!(is_ack(&wa.request(&claim(&second)).await));
}

#[tokio::test]
async fn a_patient_who_leaves_is_abandoned_after_the_grace_period() {
    let hub = TestHub::start_with(|c| c.abandon_grace_secs = 1, None).await;
    let (visit_id, patient, mut dr) = visit_with_provider(&hub).await;
    assert!(is_ack(&dr.request(&claim(&visit_id)).await));
    drop(patient);
    let ServerMessage::VisitUpdated(u) = dr.next_of("visit.updated").await.msg else { unreachable!() };
    assert_eq!(u.status, VisitStatus::Abandoned);

    // A patient who comes back within the grace period keeps their place.
    let intake = hub.intake("Bob", "WA", None).await;
    let ws = hub.ws(&intake.str("patient_token")).await;
    drop(ws);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut back = hub.ws(&intake.str("patient_token")).await;
    back.next_of("queue.position").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let visit = hub.app_hub.store().get_visit(&intake.str("visit_id")).await.unwrap().unwrap();
    assert_eq!(visit.status, VisitStatus::Waiting);

    // One who never connects after intake is gone as well; the queue forgets them.
    let ghost = hub.intake("Cy", "WA", None).await.str("visit_id");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let visit = hub.app_hub.store().get_visit(&ghost).await.unwrap().unwrap();
    assert_eq!(visit.status, VisitStatus::Abandoned);
    let queue = hub.call("GET", "/v1/states/WA/queue", Some(&hub.admin()), None).await;
    assert!(!queue.body.to_string().contains(&ghost), "{}", queue.body);
}

#[tokio::test]
async fn a_patient_who_does_not_answer_still_there_is_abandoned() {
    let hub = TestHub::start_with(
        |c| {
            c.still_there_after_secs = 1;
            c.still_there_timeout_secs = 1;
        },
        None,
    )
    .await;
    let answering = hub.intake("Ann", "WA", None).await;
    let silent = hub.intake("Bob", "WA", None).await;
    let mut ann = hub.ws(&answering.str("patient_token")).await;
    let mut bob = hub.ws(&silent.str("patient_token")).await;
    let ServerMessage::VisitStillThere(ask) = ann.next_of("visit.still_there").await.msg else { unreachable!() };
    assert_eq!(ask.respond_within_secs, 1);
    assert!(is_ack(
        &ann.request(&ClientMessage::VisitStillHere(VisitRef { visit_id: answering.str("visit_id") })).await
    ));
    bob.next_of("visit.still_there").await;
    let ServerMessage::VisitUpdated(u) = bob.next_of("visit.updated").await.msg else { unreachable!() };
    assert_eq!(u.status, VisitStatus::Abandoned);
    let ann_visit = hub.app_hub.store().get_visit(&answering.str("visit_id")).await.unwrap().unwrap();
    assert_eq!(ann_visit.status, VisitStatus::Waiting);
}

#[tokio::test]
async fn support_moves_a_visit_only_to_the_state_the_patient_names() {
    let hub = TestHub::start().await;
    hub.onboard("sup", "support", &["WA", "OR"]).await;
    let intake = hub.intake("Ann", "WA", None).await;
    let visit_id = intake.str("visit_id");
    let mut patient = hub.ws(&intake.str("patient_token")).await;
    patient.next_of("queue.position").await;
    let mut sup = hub.ws(&hub.token(Role::Support, "sup", &[], 3600)).await;
    let or = UsState::parse("OR").unwrap();
    let mv = |state| ClientMessage::VisitMove(VisitLocation { visit_id: visit_id.clone(), state });
    assert_eq!(error_code(&sup.request(&mv(or)).await), "location_mismatch");

    let said = ClientMessage::VisitLocation(VisitLocation { visit_id: visit_id.clone(), state: or });
    assert!(is_ack(&patient.request(&said).await));
    assert_eq!(error_code(&sup.request(&mv(UsState::parse("ID").unwrap())).await), "location_mismatch");
    assert!(is_ack(&sup.request(&mv(or)).await));
    let ServerMessage::VisitUpdated(u) = patient
        .next_of_filtered("visit.updated", |f| matches!(&f.msg, ServerMessage::VisitUpdated(u) if u.state.is_some()))
        .await
        .msg
    else {
        unreachable!()
    };
    assert_eq!(u.state, Some(or));
    let ServerMessage::QueuePosition(p) = patient.next_of("queue.position").await.msg else { unreachable!() };
    assert_eq!((p.state, p.position), (or, 1));
    let visit = hub.app_hub.store().get_visit(&visit_id).await.unwrap().unwrap();
    assert_eq!(visit.state, or);
}

/// A claim teaches the state's pick-up delay: from the later of the patient's intake and the
/// provider being free to take them, to the claim. The next patient's estimate starts from it.
#[tokio::test]
async fn claims_teach_the_pick_up_delay_that_waits_are_estimated_with() {
    let clock = std::sync::Arc::new(visithub::clock::ManualClock::new(seattle(10, 0)));
    let tune = |c: &mut visithub::config::Config| {
        c.prior_visit_secs = 600;
        c.prior_pickup_secs = 60;
        c.estimator_alpha = 0.5;
    };
    let hub = TestHub::start_with(tune, Some(clock.clone())).await;
    hub.onboard("dr-wa", "provider", &["WA"]).await;
    // Free from 10:00; Ann arrives at 10:05 and is claimed 20 s later: a pick-up of 20 s.
    let mut wa = hub.ws(&hub.token(Role::Provider, "dr-wa", &[], 3600)).await;
    wa.next_of("welcome").await;
    clock.set(seattle(10, 5));
    let ann = hub.intake("Ann", "WA", None).await;
    assert_eq!(ann.body["estimated_wait_secs"], 60, "a free provider: the prior pick-up delay");
    clock.advance(chrono::Duration::seconds(20));
    assert!(is_ack(&wa.request(&claim(&ann.str("visit_id"))).await));
    // Learned 60 + 0.5 * (20 - 60) = 40. The provider is now in a visit: Bob waits a pick-up
    // and half a visit.
    let bob = hub.intake("Bob", "WA", None).await;
    assert_eq!(bob.body["estimated_wait_secs"], 40 + 300);

    // Ann's visit lasts 600 s and ends at 10:15:20. Bob has waited since 10:05:20, but the
    // provider was free only from 10:15:20: the claim 10 s later is a pick-up of 10 s, not of
    // Bob's 610.
    for status in [VisitStatus::InVisit, VisitStatus::WrapUp, VisitStatus::Ended] {
        if status == VisitStatus::WrapUp {
            clock.advance(chrono::Duration::seconds(600));
        }
        assert!(is_ack(&wa.request(&to(&ann.str("visit_id"), status)).await));
    }
    clock.advance(chrono::Duration::seconds(10));
    assert!(is_ack(&wa.request(&claim(&bob.str("visit_id"))).await));
    // Pick-up 40 + 0.5 * (10 - 40) = 25; the visit's 600 s, learned from 600, stays 600.
    // (Before claims taught it, the pick-up stayed at the prior: 60 + 300 here.)
    let cy = hub.intake("Cy", "WA", None).await;
    assert_eq!(cy.body["estimated_wait_secs"], 25 + 300);
}
