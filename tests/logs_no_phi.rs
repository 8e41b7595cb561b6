//! Logs at the most verbose level carry no patient details, chat bodies, SDP or tokens.
//! Its own test binary: the log capture is process-wide.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::*;
use visithub::model::{Role, VisitStatus};
use visithub::protocol::{ChatSend, ClientMessage, SignalSdp, VisitRef, VisitTransition};

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

const NAME: &str = "Zelda Quokkasdottir";
const REASON: &str = "recurring xylophone rash";
const BODY: &str = "my private marmalade symptoms";
const UFRAG: &str = "Qz7u";
const PWD: &str = "PwdPwdPwdPwdPwdPwdPwd9z";

#[tokio::test]
async fn a_scripted_visit_logs_no_patient_data_bodies_sdp_or_tokens() {
    let capture = Capture::default();
    let writer = capture.clone();
    tracing_subscriber::fmt()
        // The hub's own filter at the most verbose level.
        .with_env_filter(visithub::logging::filter("trace"))
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();

    let hub = TestHub::start().await;
    hub.onboard("dr-wa", "provider", &["WA"]).await;
    let intake = hub
        .call(
            "POST",
            "/v1/visits",
            None,
            Some(serde_json::json!({ "display_name": NAME, "state": "WA", "reason": REASON })),
        )
        .await;
    let visit_id = intake.str("visit_id");
    let patient_token = intake.str("patient_token");
    let provider_token = hub.token(Role::Provider, "dr-wa", &[], 3600);
    let mut patient = hub.ws(&patient_token).await;
    let mut dr = hub.ws(&provider_token).await;
    assert!(is_ack(&dr.request(&ClientMessage::VisitClaim(VisitRef { visit_id: visit_id.clone() })).await));
    let start =
        ClientMessage::VisitTransition(VisitTransition { visit_id: visit_id.clone(), to: VisitStatus::InVisit });
    assert!(is_ack(&dr.request(&start).await));
    let sdp = include_str!("visits.rs").split("pub const OFFER: &str = \"").nth(1).unwrap().split('"').next().unwrap();
    let sdp = sdp.replace("\\r\\n", "\r\n").replace("Yx3a", UFRAG).replace("Wj5pZ0XE0VrUQ1nY7dXh7kFf", PWD);
    let offer =
        ClientMessage::SignalOffer(SignalSdp { visit_id: visit_id.clone(), sdp, ice_restart: false, from: None });
    assert!(is_ack(&dr.request(&offer).await), "the offer is valid SDP");
    patient.next_of("signal.offer").await;
    let chat =
        ClientMessage::ChatSend(ChatSend { visit_id: visit_id.clone(), client_id: "c1".into(), body: BODY.into() });
    assert!(is_ack(&patient.request(&chat).await));
    dr.next_of("chat.message").await;
    // A refused request with a body and a bad token leave no trace either.
    let _ = hub.try_ws(&format!("{provider_token}x"), None).await;
    let r = hub.call("GET", &format!("/v1/visits/{visit_id}"), Some(&patient_token), None).await;
    assert_eq!(r.body["display_name"], NAME);
    drop((patient, dr));
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;

    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    // The capture saw the hub's logs: the intake, the sockets, and the statements that stored
    // the name, the reason and the message (a count of lines would follow how many trips to
    // the store a visit takes).
    for seen in ["route=\"/v1/visits\"", "session{", "INSERT INTO visits", "INSERT INTO chat_messages"] {
        assert!(logs.contains(seen), "the capture saw no {seen:?}");
    }
    for secret in [NAME, "Quokkasdottir", REASON, BODY, UFRAG, PWD, &patient_token, &provider_token, "a=fingerprint"] {
        let line = logs.lines().find(|l| l.contains(secret));
        assert!(line.is_none(), "the logs contain {secret:?}: {}", line.unwrap_or_default());
    }
    // Token fragments (the signature part) do not appear either.
    let sig = patient_token.rsplit('.').next().unwrap();
    assert!(!logs.contains(sig));
}
