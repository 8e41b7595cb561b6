//! Multi-chat over one socket, history paging, retries, handoff and the caregiver portal.

mod common;

use std::time::Duration;

use common::*;
use reqwest::StatusCode;
use visithub::model::Role;
use visithub::protocol::{
    ChatHandoff, ChatHistory, ChatRead, ChatSend, ChatTyping, ClientMessage, Ping, PresenceSet, PresenceStatus,
    ServerMessage, VisitRef,
};

fn join(visit_id: &str) -> ClientMessage {
    ClientMessage::ChatJoin(VisitRef { visit_id: visit_id.into() })
}

fn say(visit_id: &str, client_id: &str, body: &str) -> ClientMessage {
    ClientMessage::ChatSend(ChatSend { visit_id: visit_id.into(), client_id: client_id.into(), body: body.into() })
}

#[tokio::test]
async fn support_chats_with_many_patients_over_one_socket() {
    let hub = TestHub::start().await;
    hub.onboard("sup", "support", &["WA"]).await;
    let mut patients = Vec::new();
    for name in ["Ann", "Bob", "Cy"] {
        let intake = hub.intake(name, "WA", None).await;
        let ws = hub.ws(&intake.str("patient_token")).await;
        patients.push((intake.str("visit_id"), ws));
    }
    let mut sup = hub.ws(&hub.token(Role::Support, "sup", &[], 3600)).await;
    for (visit_id, _) in &patients {
        let ack = sup.request(&join(visit_id)).await;
        assert!(is_ack(&ack), "{ack:?}");
    }
    // Each patient sees who is talking to them.
    for (_, ws) in patients.iter_mut() {
        let ServerMessage::ChatParticipants(p) = ws.next_of("chat.participants").await.msg else { unreachable!() };
        assert_eq!(
            p.participants.iter().map(|p| (p.name.as_str(), p.role)).collect::<Vec<_>>()[1],
            ("Caregiver sup", Role::Support)
        );
    }
    for (i, (visit_id, _)) in patients.iter().enumerate() {
        assert!(is_ack(&sup.request(&say(visit_id, &format!("m{i}"), &format!("hello {i}"))).await));
    }
    for (i, (visit_id, ws)) in patients.iter_mut().enumerate() {
        let ServerMessage::ChatMessage(m) = ws.next_of("chat.message").await.msg else { unreachable!() };
        assert_eq!((m.visit_id.as_str(), m.body.clone(), m.seq), (visit_id.as_str(), format!("hello {i}"), 1));
        assert!(is_ack(&ws.request(&say(visit_id, "reply", "thanks")).await));
    }
    // The replies come back on the one socket, each tagged with its conversation.
    let mut replies = Vec::new();
    while replies.len() < 3 {
        if let ServerMessage::ChatMessage(m) = sup.next_of("chat.message").await.msg
            && m.from.role == Role::Patient
        {
            replies.push(m.visit_id);
        }
    }
    replies.sort();
    let mut expected: Vec<_> = patients.iter().map(|(v, _)| v.clone()).collect();
    expected.sort();
    assert_eq!(replies, expected);

    // Typing is relayed to the others, not stored; read receipts are stored and relayed.
    let (first, ann) = &mut patients[0];
    let typing = ClientMessage::ChatTyping(ChatTyping { visit_id: first.clone(), typing: true });
    assert!(is_ack(&sup.request(&typing).await));
    let ServerMessage::ChatTyping(t) = ann.next_of("chat.typing").await.msg else { unreachable!() };
    assert!(t.typing);
    let read = ClientMessage::ChatRead(ChatRead { visit_id: first.clone(), up_to_seq: 2 });
    assert!(is_ack(&ann.request(&read).await));
    let ServerMessage::ChatRead(r) = sup.next_of("chat.read").await.msg else { unreachable!() };
    assert_eq!((r.up_to_seq, r.by.role), (2, Role::Patient));
}

#[tokio::test]
async fn a_retried_message_is_stored_and_delivered_once_and_history_pages_cover_all() {
    let hub = TestHub::start_with(|c| c.rate_patient = 1000, None).await;
    let intake = hub.intake("Ann", "WA", None).await;
    let visit_id = intake.str("visit_id");
    let token = intake.str("patient_token");
    let mut a = hub.ws(&token).await;
    let mut b = hub.ws(&token).await;
    let first = a.request(&say(&visit_id, "same-id", "hello")).await;
    let again = a.request(&say(&visit_id, "same-id", "hello")).await;
    let (ServerMessage::Ack(x), ServerMessage::Ack(y)) = (&first.msg, &again.msg) else {
        panic!("{first:?} {again:?}")
    };
    assert_eq!(x["message_id"], y["message_id"]);
    assert_eq!(x["seq"], 1);
    // The other tab got it exactly once: the next message it sees is the next one.
    assert!(is_ack(&a.request(&say(&visit_id, "next", "second")).await));
    let ServerMessage::ChatMessage(m1) = b.next_of("chat.message").await.msg else { unreachable!() };
    let ServerMessage::ChatMessage(m2) = b.next_of("chat.message").await.msg else { unreachable!() };
    assert_eq!((m1.seq, m2.seq), (1, 2));

    for i in 3..=25 {
        assert!(is_ack(&a.request(&say(&visit_id, &format!("c{i}"), &format!("message {i}"))).await));
    }
    // Page backwards 10 at a time over the socket: every message once, in order.
    let mut seen = Vec::new();
    let mut before = None;
    loop {
        let page = a
            .request(&ClientMessage::ChatHistory(ChatHistory {
                visit_id: visit_id.clone(),
                before_seq: before,
                limit: Some(10),
            }))
            .await;
        let ServerMessage::Ack(page) = page.msg else { panic!("{page:?}") };
        let seqs: Vec<u64> = page["messages"].as_array().unwrap().iter().map(|m| m["seq"].as_u64().unwrap()).collect();
        seen.splice(0..0, seqs.iter().copied());
        before = seqs.first().copied();
        if !page["has_more"].as_bool().unwrap() {
            break;
        }
    }
    assert_eq!(seen, (1..=25).collect::<Vec<u64>>());
    // And over REST.
    let r = hub.call("GET", &format!("/v1/visits/{visit_id}/messages?limit=5"), Some(&token), None).await;
    let seqs: Vec<u64> = r.body["messages"].as_array().unwrap().iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!((seqs, r.body["has_more"].as_bool()), ((21..=25).collect(), Some(true)));
    let stored = hub.app_hub.store().messages(&visit_id, None, 100).await.unwrap();
    assert_eq!(stored.len(), 25);
}

#[tokio::test]
async fn conversations_are_closed_to_those_not_entitled() {
    let hub = TestHub::start_with(|c| c.max_conversations_per_caregiver = 1, None).await;
    hub.onboard("sup-or", "support", &["OR"]).await;
    hub.onboard("sup-wa", "support", &["WA"]).await;
    let ann = hub.intake("Ann", "WA", None).await;
    let bob = hub.intake("Bob", "WA", None).await;
    let visit_id = ann.str("visit_id");

    let mut or = hub.ws(&hub.token(Role::Support, "sup-or", &[], 3600)).await;
    assert_eq!(error_code(&or.request(&join(&visit_id)).await), "state_not_covered");
    assert_eq!(error_code(&or.request(&say(&visit_id, "x", "hi")).await), "state_not_covered");
    let mut wa = hub.ws(&hub.token(Role::Support, "sup-wa", &[], 3600)).await;
    assert_eq!(error_code(&wa.request(&say(&visit_id, "x", "hi")).await), "not_in_conversation");
    assert!(is_ack(&wa.request(&join(&visit_id)).await));
    assert_eq!(error_code(&wa.request(&join(&bob.str("visit_id"))).await), "conversation_cap_reached");

    // Bob's token cannot write into Ann's conversation nor read it.
    let mut bob_ws = hub.ws(&bob.str("patient_token")).await;
    assert_eq!(error_code(&bob_ws.request(&say(&visit_id, "x", "hi")).await), "not_your_visit");
    let r = hub.call("GET", &format!("/v1/visits/{visit_id}/messages"), Some(&bob.str("patient_token")), None).await;
    assert_eq!((r.status, r.code()), (StatusCode::FORBIDDEN, "not_your_visit"));
    // None of the refused messages was stored.
    assert!(hub.app_hub.store().messages(&visit_id, None, 10).await.unwrap().is_empty());
    let mut ann_ws = hub.ws(&ann.str("patient_token")).await;
    assert!(is_ack(&ann_ws.request(&ClientMessage::Ping(Ping {})).await));
    tokio::time::sleep(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn a_conversation_is_handed_to_another_caregiver() {
    let hub = TestHub::start().await;
    hub.onboard("sup-a", "support", &["WA"]).await;
    hub.onboard("sup-b", "support", &["WA"]).await;
    hub.onboard("sup-or", "support", &["OR"]).await;
    let ann = hub.intake("Ann", "WA", None).await;
    let visit_id = ann.str("visit_id");
    let mut patient = hub.ws(&ann.str("patient_token")).await;
    let mut a = hub.ws(&hub.token(Role::Support, "sup-a", &[], 3600)).await;
    let mut b = hub.ws(&hub.token(Role::Support, "sup-b", &[], 3600)).await;
    b.next_of("welcome").await;
    assert!(is_ack(&a.request(&join(&visit_id)).await));
    let handoff =
        |to: &str| ClientMessage::ChatHandoff(ChatHandoff { visit_id: visit_id.clone(), to_subject: to.into() });
    assert_eq!(error_code(&a.request(&handoff("sup-or")).await), "state_not_covered");
    assert!(is_ack(&a.request(&handoff("sup-b")).await));
    // The patient sees who is talking to them now.
    let last = loop {
        let ServerMessage::ChatParticipants(p) = patient.next_of("chat.participants").await.msg else { unreachable!() };
        if p.participants.iter().all(|p| p.subject != "sup-a") {
            break p;
        }
    };
    assert_eq!(
        last.participants.iter().map(|p| p.subject.as_str()).collect::<Vec<_>>(),
        vec![format!("patient:{visit_id}").as_str(), "sup-b"]
    );
    // The new caregiver's open socket follows the conversation; the old one is out of it.
    assert!(is_ack(&patient.request(&say(&visit_id, "p1", "hello?")).await));
    let ServerMessage::ChatMessage(m) = b.next_of("chat.message").await.msg else { unreachable!() };
    assert_eq!(m.body, "hello?");
    assert_eq!(error_code(&a.request(&say(&visit_id, "a1", "still here")).await), "not_in_conversation");
}

#[tokio::test]
async fn the_portal_gives_everything_in_one_call_then_deltas() {
    let hub = TestHub::start().await;
    hub.onboard("sup", "support", &["WA", "OR"]).await;
    hub.onboard("dr-wa", "provider", &["WA"]).await;
    let ann = hub.intake("Ann", "WA", None).await;
    let mut dr = hub.ws(&hub.token(Role::Provider, "dr-wa", &[], 3600)).await;
    dr.next_of("welcome").await;
    let sup_token = hub.token(Role::Support, "sup", &[], 3600);
    let mut sup = hub.ws(&sup_token).await;
    assert!(is_ack(&sup.request(&join(&ann.str("visit_id"))).await));
    let mut patient = hub.ws(&ann.str("patient_token")).await;
    for i in 0..3 {
        assert!(is_ack(&patient.request(&say(&ann.str("visit_id"), &format!("p{i}"), "hi")).await));
    }

    let reply = sup.request(&ClientMessage::PortalSnapshot(Ping {})).await;
    let ServerMessage::Ack(portal) = reply.msg else { panic!("{reply:?}") };
    assert_eq!(portal["states"], serde_json::json!(["OR", "WA"]));
    let wa = portal["queues"].as_array().unwrap().iter().find(|q| q["state"] == "WA").unwrap().clone();
    assert_eq!(wa["visits"][0]["display_name"], "Ann");
    assert_eq!(portal["conversations"][0]["unread"], 3);
    assert_eq!(portal["providers"][0]["subject"], "dr-wa");
    assert_eq!(portal["providers"][0]["status"], "available");

    // After the snapshot: deltas only, no second snapshot.
    hub.intake("Bob", "WA", None).await;
    let f = sup.next_of_any(&["queue.snapshot", "queue.delta"]).await;
    let ServerMessage::QueueDelta(d) = f.msg else { panic!("expected a delta, got {f:?}") };
    assert_eq!(d.added[0].display_name, "Bob");
    // Presence moves are pushed too.
    drop(dr);
    let ServerMessage::PresenceUpdated(p) = sup.next_of("presence.updated").await.msg else { unreachable!() };
    assert_eq!(p.providers[0].subject, "dr-wa");

    // The same over REST.
    let r = hub.call("GET", "/v1/portal", Some(&sup_token), None).await;
    assert_eq!(r.body["conversations"][0]["patient_name"], "Ann");
}

#[tokio::test]
async fn a_provider_covering_several_shared_states_is_announced_once_per_change() {
    let hub = TestHub::start().await;
    hub.onboard("sup", "support", &["WA", "OR"]).await;
    hub.onboard("dr", "provider", &["WA", "OR"]).await;
    let mut sup = hub.ws(&hub.token(Role::Support, "sup", &[], 3600)).await;
    sup.next_of("welcome").await;
    let mut dr = hub.ws(&hub.token(Role::Provider, "dr", &[], 3600)).await;
    let ServerMessage::PresenceUpdated(p) = sup.next_of("presence.updated").await.msg else { unreachable!() };
    assert_eq!(p.providers.len(), 1);
    assert_eq!(p.providers[0].status, visithub::protocol::ProviderStatus::Available);
    let away = ClientMessage::PresenceSet(visithub::protocol::PresenceSet {
        status: visithub::protocol::PresenceStatus::Away,
    });
    assert!(is_ack(&dr.request(&away).await));
    // The next presence frame is the change, not a repeat of "available" from the other state.
    let ServerMessage::PresenceUpdated(p) = sup.next_of("presence.updated").await.msg else { unreachable!() };
    assert_eq!(p.providers.len(), 1);
    assert_eq!(p.providers[0].status, visithub::protocol::ProviderStatus::Away);
    // Nothing else queued: a second "away" would come before the ping's reply.
    let id = sup.send(&ClientMessage::Ping(Ping {})).await;
    loop {
        let f = sup.next().await;
        assert!(!matches!(f.msg, ServerMessage::PresenceUpdated(_)), "a repeated presence: {f:?}");
        if f.id.as_deref() == Some(id.as_str()) {
            break;
        }
    }
}

#[tokio::test]
async fn a_burst_of_presence_changes_reaches_caregivers_as_a_few_batches_ending_with_the_newest() {
    let hub = TestHub::start().await;
    hub.onboard("sup", "support", &["WA"]).await;
    hub.onboard("dr", "provider", &["WA"]).await;
    let mut sup = hub.ws(&hub.token(Role::Support, "sup", &[], 3600)).await;
    sup.next_of("welcome").await;
    let mut dr = hub.ws(&hub.token(Role::Provider, "dr", &[], 3600)).await;
    sup.next_of("presence.updated").await;
    // Ten changes back to back, then the provider goes offline: the last word.
    const CHANGES: usize = 11;
    for i in 0..CHANGES - 1 {
        let status = if i % 2 == 0 { PresenceStatus::Away } else { PresenceStatus::Available };
        assert!(is_ack(&dr.request(&ClientMessage::PresenceSet(PresenceSet { status })).await));
    }
    drop(dr);
    let mut frames = 0;
    loop {
        let ServerMessage::PresenceUpdated(p) = sup.next_of("presence.updated").await.msg else { unreachable!() };
        frames += 1;
        assert_eq!(p.providers.len(), 1, "one provider changed: {p:?}");
        if p.providers[0].status == visithub::protocol::ProviderStatus::Offline {
            break;
        }
    }
    assert!(frames < CHANGES, "{frames} frames for {CHANGES} changes: nothing was batched");
}

/// A single node counts each caregiver's conversations in memory, from what the store holds at
/// start: conversations joined before a restart still count against the cap after it, and one
/// whose visit is over stops counting.
#[tokio::test]
async fn the_conversation_cap_holds_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let before = TestHub::start_on_disk(dir.path()).await;
    before.onboard("sup-wa", "support", &["WA"]).await;
    let mut sup = before.ws(&before.token(Role::Support, "sup-wa", &[], 3600)).await;
    let mut visits = Vec::new();
    for i in 0..20 {
        let intake = before.intake(&format!("Patient {i}"), "WA", None).await;
        assert!(is_ack(&sup.request(&join(&intake.str("visit_id"))).await));
        visits.push(intake);
    }
    drop(sup);

    let after = TestHub::start_on_disk(dir.path()).await;
    let late = after.intake("Late", "WA", None).await.str("visit_id");
    let mut sup = after.ws(&after.token(Role::Support, "sup-wa", &[], 3600)).await;
    assert_eq!(error_code(&sup.request(&join(&late)).await), "conversation_cap_reached");
    assert!(is_ack(&sup.request(&join(&visits[0].str("visit_id"))).await), "one it is in already");
    let first = &visits[0];
    let cancel = format!("/v1/visits/{}/cancel", first.str("visit_id"));
    let r = after.call("POST", &cancel, Some(&first.str("patient_token")), None).await;
    assert_eq!(r.status, reqwest::StatusCode::OK, "{}", r.body);
    assert!(is_ack(&sup.request(&join(&late)).await), "a visit over frees its place");
}
