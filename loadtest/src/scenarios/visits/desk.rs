//! The support desk of the `visits` scenario: each support person joins the conversations it
//! is given, greets the patient, and times the patient's answer.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use visithub::model::Role;
use visithub::protocol::{ChatSend, ClientMessage, ServerMessage, VisitRef};

use super::Shared;
use crate::conn::Conn;
use crate::stats::Latency;

/// A support person: joins each conversation it is given, greets the patient, and times the
/// patient's answer.
pub(super) async fn support_person(
    sh: Arc<Shared>,
    mut conn: Conn,
    mut rx: mpsc::Receiver<(String, oneshot::Sender<bool>)>,
) {
    let stats = sh.ctx.stats.clone();
    let mut joining: HashMap<String, (String, oneshot::Sender<bool>)> = HashMap::new();
    let mut greeting: HashMap<String, oneshot::Sender<bool>> = HashMap::new();
    let mut open = true;
    let mut linger = None;
    loop {
        let frame = tokio::select! {
            job = rx.recv(), if open => {
                match job {
                    Some((visit_id, tx)) => {
                        match conn.send(&ClientMessage::ChatJoin(VisitRef { visit_id: visit_id.clone() })).await {
                            Ok(id) => { joining.insert(id, (visit_id, tx)); }
                            Err(_) => break,
                        }
                    }
                    None => {
                        open = false;
                        // Let the last answers arrive.
                        linger = Some(Instant::now() + Duration::from_secs(2));
                    }
                }
                continue;
            }
            frame = conn.next_timed(Duration::from_millis(200)) => frame,
        };
        let (frame, arrived) = match frame {
            Ok(timed) => timed,
            Err(e) if e.0 == "timeout" => {
                if linger.is_some_and(|t| Instant::now() >= t) {
                    break;
                }
                continue;
            }
            Err(_) => break,
        };
        let ok = !matches!(frame.msg, ServerMessage::Error(_));
        if let Some(id) = &frame.id {
            if let Some((visit_id, tx)) = joining.remove(id) {
                if !ok {
                    let _ = tx.send(false);
                    continue;
                }
                if conn.pace().await.is_err() {
                    break;
                }
                let hello = ChatSend {
                    visit_id,
                    client_id: format!("g-{}", stats.stamp()),
                    body: "Hello, I am from the care team. A provider will be with you shortly.".into(),
                };
                match conn.send_now(&ClientMessage::ChatSend(hello)).await {
                    Ok(id) => {
                        greeting.insert(id, tx);
                    }
                    Err(_) => break,
                }
            } else if let Some(tx) = greeting.remove(id) {
                let _ = tx.send(ok);
            }
        }
        if let ServerMessage::ChatMessage(m) = &frame.msg
            && m.from.role == Role::Patient
            && let Some(stamp) = m.client_id.strip_prefix("p-").and_then(|s| s.parse::<u64>().ok())
        {
            stats.record(Latency::ChatDelivery, stats.stamp_to(stamp, arrived));
            stats.count("chat_messages", 1);
        }
    }
    conn.close().await;
}
