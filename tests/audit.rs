//! The audit trail: who did what to which visit, refusals included, readable by admins, and
//! tamper-evident: `visithub audit verify` names the first altered record.

mod common;

use std::process::Command;

use common::*;
use reqwest::StatusCode;
use visithub::model::{Role, VisitStatus};
use visithub::protocol::{ChatSend, ClientMessage, VisitRef, VisitTransition};

fn verify(dir: &std::path::Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_visithub"))
        .args(["audit", "verify", "--data-dir"])
        .arg(dir)
        .env_remove("VISITHUB_CONFIG")
        .output()
        .expect("the visithub binary runs");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}

#[tokio::test]
async fn the_trail_records_actions_and_refusals_and_detects_tampering() {
    let dir = tempfile::tempdir().unwrap();
    let hub = TestHub::start_on_disk(dir.path()).await;
    hub.onboard("dr-wa", "provider", &["WA"]).await;
    hub.onboard("dr-or", "provider", &["OR"]).await;
    let intake = hub.intake("Ann", "WA", None).await;
    let visit_id = intake.str("visit_id");
    let mut or = hub.ws(&hub.token(Role::Provider, "dr-or", &[], 3600)).await;
    let claim = ClientMessage::VisitClaim(VisitRef { visit_id: visit_id.clone() });
    assert_eq!(error_code(&or.request(&claim).await), "state_not_covered");
    let mut wa = hub.ws(&hub.token(Role::Provider, "dr-wa", &[], 3600)).await;
    assert!(is_ack(&wa.request(&claim).await));
    hub.onboard("sup-wa", "support", &["WA"]).await;
    let mut sup = hub.ws(&hub.token(Role::Support, "sup-wa", &[], 3600)).await;
    assert!(is_ack(&sup.request(&ClientMessage::ChatJoin(VisitRef { visit_id: visit_id.clone() })).await));
    let msg =
        ClientMessage::ChatSend(ChatSend { visit_id: visit_id.clone(), client_id: "c1".into(), body: "hello".into() });
    assert!(is_ack(&wa.request(&msg).await));
    let start =
        ClientMessage::VisitTransition(VisitTransition { visit_id: visit_id.clone(), to: VisitStatus::InVisit });
    assert!(is_ack(&wa.request(&start).await));
    assert_eq!(error_code(&wa.request(&start).await), "invalid_transition");
    let patient = intake.str("patient_token");
    assert_eq!(hub.call("GET", &format!("/v1/visits/{visit_id}"), Some(&patient), None).await.status, StatusCode::OK);

    // Admins read the trail of the visit; others may not.
    let r = hub.call("GET", &format!("/v1/visits/{visit_id}/audit"), Some(&patient), None).await;
    assert_eq!(r.code(), "forbidden");
    let r = hub.call("GET", &format!("/v1/visits/{visit_id}/audit"), Some(&hub.admin()), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let rows: Vec<(String, String, String)> = r
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["subject"].as_str().unwrap().into(),
                e["action"].as_str().unwrap().into(),
                e["outcome"].as_str().unwrap().into(),
            )
        })
        .collect();
    let patient_subject = format!("patient:{visit_id}");
    for expected in [
        (patient_subject.as_str(), "visit.create", "ok"),
        ("dr-or", "visit.claim", "state_not_covered"),
        ("dr-wa", "visit.claim", "ok"),
        ("dr-wa", "chat.send", "ok"),
        (patient_subject.as_str(), "visit.view", "ok"),
        (patient_subject.as_str(), "audit.view", "forbidden"),
        ("dr-wa", "visit.transition", "ok"),
        ("sup-wa", "chat.join", "ok"),
        ("dr-wa", "visit.transition", "invalid_transition"),
    ] {
        // Each once: a claim or transition is recorded with its change, and by nobody else.
        let found = rows.iter().filter(|(s, a, o)| (s.as_str(), a.as_str(), o.as_str()) == expected).count();
        assert_eq!(found, 1, "{expected:?} in {rows:?}");
    }
    // Nothing in the trail carries the patient's name or the message.
    assert!(!r.body.to_string().contains("Ann") && !r.body.to_string().contains("hello"));

    let (ok, out) = verify(dir.path());
    assert!(ok, "{out}");
    assert!(out.contains("intact"), "{out}");

    // Alter one stored record: verify fails and names it.
    let db = visithub::config::Config { data_dir: dir.path().to_path_buf(), ..Default::default() }.database_path();
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display())).await.unwrap();
    let id: i64 = sqlx::query_scalar("SELECT id FROM audit_log WHERE subject = 'dr-or' AND action = 'visit.claim'")
        .fetch_one(&pool)
        .await
        .unwrap();
    sqlx::query("UPDATE audit_log SET outcome = 'ok' WHERE id = ?").bind(id).execute(&pool).await.unwrap();
    let (ok, out) = verify(dir.path());
    assert!(!ok, "{out}");
    assert!(out.contains(&format!("broken at record {id}")), "{out}");
}

/// A store remembers where the trail ends so that an append is one trip; another writer on
/// the same file (a second process) moves the end under it. Its next append must chain to
/// the real end, not the remembered one.
#[tokio::test]
async fn appends_chain_to_the_real_end_when_another_writer_moved_it() {
    use visithub::model::AuditEntry;
    use visithub::store::{SqliteStore, Store};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("visithub.db");
    let (a, b) = (SqliteStore::open(&path).await.unwrap(), SqliteStore::open(&path).await.unwrap());
    let entry = |n: usize| AuditEntry {
        at: chrono::Utc::now(),
        subject: format!("s{n}"),
        role: "admin".into(),
        action: "portal.view".into(),
        visit_id: None,
        target: None,
        outcome: "ok".into(),
    };
    for round in 0..3 {
        let batch: Vec<AuditEntry> = (0..300).map(|i| entry(round * 1000 + i)).collect();
        let from_a = a.append_audits(&batch[..2]).await.unwrap();
        // Past one INSERT's 256 rows: a batch of several statements.
        let from_b = b.append_audits(&batch[2..]).await.unwrap();
        assert_eq!(from_b[0].prev_hash, from_a[1].hash, "b chained to what a wrote");
        let again = a.append_audits(&batch[..1]).await.unwrap();
        assert_eq!(again[0].prev_hash, from_b.last().unwrap().hash, "a chained to what b wrote");
    }
    assert_eq!(visithub::hub::audit::verify(&a).await.unwrap(), Ok(3 * 301));

    // A change with its record: with the end moved by the other writer, the change is stored
    // and the record is not (the caller appends it); then both go in one commit again.
    use visithub::model::{Actor, Visit, VisitStatus};
    let visit = Visit {
        id: "v-rec".into(),
        state: visithub::model::UsState::parse("WA").unwrap(),
        display_name: "P".into(),
        reason: "r".into(),
        status: VisitStatus::Waiting,
        created_at: chrono::Utc::now(),
        estimated_wait_secs: None,
        waited_secs: None,
        provider: None,
        reported_state: None,
    };
    let me = Actor { subject: "dr".into(), role: "provider" };
    a.insert_visit(&visit, &me, None).await.unwrap();
    b.append_audits(&[entry(1)]).await.unwrap();
    let claim = AuditEntry { action: "visit.claim".into(), visit_id: Some("v-rec".into()), ..entry(2) };
    let dr = visithub::protocol::Participant {
        subject: "dr".into(),
        name: "Dr".into(),
        role: visithub::model::Role::Provider,
    };
    let claimed = a.claim_visit_joined("v-rec", &dr, chrono::Utc::now(), 1, &claim).await.unwrap();
    assert_eq!((claimed.claimed, claimed.joined, claimed.recorded), (true, true, false));
    a.append_audits(std::slice::from_ref(&claim)).await.unwrap();
    let start = AuditEntry { action: "visit.transition".into(), ..claim.clone() };
    let step = (VisitStatus::Claimed, VisitStatus::InVisit);
    let moved = a.transition_visit_recorded("v-rec", step, &me, chrono::Utc::now(), &start).await.unwrap();
    assert_eq!(moved, (true, true));
    let wrap = AuditEntry { action: "visit.transition".into(), ..claim.clone() };
    let step = (VisitStatus::InVisit, VisitStatus::WrapUp);
    assert_eq!(a.transition_visit_recorded("v-rec", step, &me, chrono::Utc::now(), &wrap).await.unwrap(), (true, true));
    let actions: Vec<String> = a.audit_for_visit("v-rec").await.unwrap().into_iter().map(|r| r.entry.action).collect();
    assert_eq!(actions, ["visit.claim", "visit.transition", "visit.transition"]);
    assert_eq!(visithub::hub::audit::verify(&b).await.unwrap(), Ok(3 * 301 + 4));
}
