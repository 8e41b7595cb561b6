//! `serve --demo`: the browser demo's files and its caregiver sign-in exist only with `demo`
//! on, are served with their content types from the binary, and the sign-in hands out tokens
//! only for active onboarded caregivers, and only while the hub signs with its development key.

mod common;

use common::*;
use serde_json::json;
use visithub::config::Secret;
use visithub::protocol::ServerMessage;

async fn get(hub: &TestHub, path: &str) -> (u16, String, String, String) {
    let resp = hub.http.get(hub.url(path)).send().await.unwrap();
    let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let (content_type, csp) = (header("content-type"), header("content-security-policy"));
    (resp.status().as_u16(), content_type, csp, resp.text().await.unwrap())
}

async fn sign_in(hub: &TestHub, subject: &str) -> Reply {
    hub.call("POST", "/demo/token", None, Some(json!({ "subject": subject }))).await
}

#[tokio::test]
async fn off_by_default() {
    let hub = TestHub::start().await;
    let (status, _, _, body) = get(&hub, "/demo/patient.html").await;
    assert_eq!(status, 404);
    assert!(body.contains("not_found"));
    hub.onboard("sam", "support", &["WA"]).await;
    let reply = sign_in(&hub, "sam").await;
    assert_eq!((reply.status.as_u16(), reply.code()), (404, "not_found"));
}

#[tokio::test]
async fn serves_the_pages_and_the_client_library_with_their_types() {
    let hub = TestHub::start_with(|c| c.demo = true, None).await;
    for (path, kind, needle) in [
        ("/demo/", "text/html", "patient.html"),
        ("/demo/patient.html", "text/html", "patient.js"),
        ("/demo/console.html", "text/html", "console.js"),
        ("/demo/visithub-client.js", "text/javascript", "export class VisithubClient"),
        ("/demo/patient.js", "text/javascript", "intake("),
        ("/demo/console.js", "text/javascript", "portal.snapshot"),
        ("/demo/base.css", "text/css", ":root"),
    ] {
        let (status, content_type, csp, body) = get(&hub, path).await;
        assert_eq!(status, 200, "{path}");
        assert!(content_type.starts_with(kind), "{path}: {content_type}");
        assert!(csp.contains("default-src 'self'"), "{path}: {csp}");
        assert!(body.contains(needle), "{path} is not the expected file");
    }
    let (status, _, _, body) = get(&hub, "/demo/nothing-here.js").await;
    assert_eq!(status, 404);
    assert!(body.contains("not_found"));
    let (status, _, _, _) = get(&hub, "/demo/..%2FCargo.toml").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn signs_in_active_onboarded_caregivers_only() {
    let hub = TestHub::start_with(|c| c.demo = true, None).await;
    hub.onboard("sam", "support", &["WA", "OR"]).await;
    hub.onboard("dr-lee", "provider", &["WA"]).await;

    let reply = sign_in(&hub, "dr-lee").await;
    assert_eq!(reply.status.as_u16(), 200, "{}", reply.body);
    assert_eq!(reply.body["role"], "provider");
    assert_eq!(reply.body["states"], json!(["WA"]));
    let mut ws = hub.ws(&reply.str("token")).await;
    match ws.next().await.msg {
        ServerMessage::Welcome(w) => assert_eq!((w.subject.as_str(), w.role.as_str()), ("dr-lee", "provider")),
        other => panic!("expected welcome, got {other:?}"),
    }

    let reply = sign_in(&hub, "nobody").await;
    assert_eq!((reply.status.as_u16(), reply.code()), (404, "caregiver_not_found"));
    let reply = sign_in(&hub, "").await;
    assert_eq!(reply.code(), "validation_failed");
    let reply = sign_in(&hub, &"x".repeat(129)).await;
    assert_eq!(reply.code(), "validation_failed");

    let off = hub.call("POST", "/v1/caregivers/sam/deactivate", Some(&hub.admin()), None).await;
    assert_eq!(off.status.as_u16(), 200);
    let reply = sign_in(&hub, "sam").await;
    assert_eq!((reply.status.as_u16(), reply.code()), (403, "caregiver_inactive"));
}

#[tokio::test]
async fn refused_when_the_hub_has_a_real_signing_key() {
    let hub = TestHub::start_with(
        |c| {
            c.demo = true;
            c.signing_key = Some(Secret::new("a-configured-signing-key-of-32-bytes!!"));
        },
        None,
    )
    .await;
    hub.onboard("sam", "support", &["WA"]).await;
    let reply = sign_in(&hub, "sam").await;
    assert_eq!((reply.status.as_u16(), reply.code()), (403, "forbidden"));
    assert!(reply.body.get("token").is_none());
}
