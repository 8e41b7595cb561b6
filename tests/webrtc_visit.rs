//! A whole visit with two real WebRTC peers (webrtc-rs) on loopback, negotiated through an
//! in-process hub: intake, waiting, claim, start, offer/answer and trickled candidates, a data
//! channel with a message each way, and the end of the visit.

mod common;
#[path = "../examples/visit_peer/mod.rs"]
mod visit_peer;

use std::time::Duration;

use common::TestHub;
use tokio::sync::oneshot;
use visit_peer::{Outcome, PeerOptions};
use visithub::model::{Role, UsState, VisitStatus};

const WHOLE_TEST: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_and_patient_talk_over_a_data_channel() {
    let hub = TestHub::start().await;
    let url = hub.url("");
    assert_eq!(hub.onboard("dr-lee", "provider", &["WA"]).await.status, 201);
    let provider_token = hub.token(Role::Provider, "dr-lee", &["WA"], 3600);
    let visit = visit_peer::intake(&url, "Ann", "WA", "sore throat").await.unwrap();

    // Host candidates on 127.0.0.1 only: no STUN/TURN, no other interface.
    let opts = PeerOptions { udp_addrs: vec!["127.0.0.1:0".into()], call_timeout: Duration::from_secs(40) };
    // The provider starts once the patient has seen its place in line.
    let (waiting_tx, waiting_rx) = oneshot::channel();
    let mut waiting_tx = Some(waiting_tx);
    let mut on_position = move |p: &visithub::protocol::QueuePosition| {
        if let Some(tx) = waiting_tx.take() {
            let _ = tx.send(p.position);
        }
    };
    let patient =
        visit_peer::run_patient(&url, &visit.patient_token, &opts, "hello from the patient", &mut on_position);
    let provider = async {
        let position = waiting_rx.await.expect("the patient saw a queue position");
        assert_eq!(position, 1);
        let wa = [UsState::parse("WA").unwrap()];
        visit_peer::run_provider(&url, &provider_token, &wa, &opts, "hello from the provider").await
    };
    let started = std::time::Instant::now();
    let (patient, provider) = tokio::time::timeout(WHOLE_TEST, async { tokio::join!(patient, provider) })
        .await
        .expect("the visit finishes within 60 s");
    let patient: Outcome = patient.expect("the patient's side succeeds");
    let provider: Outcome = provider.expect("the provider's side succeeds");
    println!("visit took {:?}", started.elapsed());

    assert_eq!(patient.visit_id, visit.visit_id);
    assert_eq!(provider.visit_id, visit.visit_id);
    assert_eq!(patient.positions.first(), Some(&1));
    // Perfect-negotiation roles from visit.started.
    assert_eq!(patient.polite, Some(true));
    assert_eq!(provider.polite, Some(false));
    // The data channel opened on both sides and carried one message each way.
    assert!(patient.channel_opened && provider.channel_opened);
    assert_eq!(patient.received, ["hello from the provider"]);
    assert_eq!(provider.received, ["hello from the patient"]);
    // Candidates went through the hub each way, then end-of-candidates.
    for (mine, theirs) in [(&patient, &provider), (&provider, &patient)] {
        assert!(mine.trickle.sent >= 1 && mine.trickle.sent_end, "{:?}", mine.trickle);
        assert_eq!(theirs.trickle.received, mine.trickle.sent);
        assert!(theirs.trickle.received_end);
    }
    // Both saw the visit end.
    assert_eq!(patient.statuses.last(), Some(&VisitStatus::Ended));
    assert_eq!(provider.statuses.last(), Some(&VisitStatus::Ended));
    for outcome in [&patient, &provider] {
        assert!(
            outcome.statuses.ends_with(&[VisitStatus::InVisit, VisitStatus::WrapUp, VisitStatus::Ended]),
            "{:?}",
            outcome.statuses
        );
    }

    let stored: Vec<_> = hub.app_hub.store().transitions(&visit.visit_id).await.unwrap();
    let steps: Vec<_> = stored.iter().map(|t| (t.from, t.to)).collect();
    use VisitStatus::*;
    assert_eq!(
        steps,
        [
            (None, Waiting),
            (Some(Waiting), Claimed),
            (Some(Claimed), InVisit),
            (Some(InVisit), WrapUp),
            (Some(WrapUp), Ended)
        ],
        "stored transitions"
    );
}
