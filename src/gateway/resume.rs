//! Sessions outlive their sockets for a while. A client that reconnects with its session id
//! and the last `seq` it saw is attached to the same session: it gets exactly the frames it
//! missed, in order, then `session.resumed`; or, when they are no longer all held,
//! `session.resumed` with `recovered: false`, and it reloads its state.

use axum::extract::ws::WebSocket;
use dashmap::DashMap;
use tokio::sync::mpsc;

use super::connections::ConnectionGuard;
use crate::auth::Principal;

/// A new socket for an existing session.
pub struct Resume {
    pub socket: WebSocket,
    pub last_seq: u64,
    pub principal: Principal,
    pub guard: ConnectionGuard,
}

struct Entry {
    subject: String,
    tx: mpsc::Sender<Box<Resume>>,
}

/// Sessions of this node that a socket can be attached to, by session id.
#[derive(Default)]
pub struct Resumable {
    sessions: DashMap<String, Entry>,
}

impl Resumable {
    pub fn register(&self, session_id: &str, subject: &str) -> mpsc::Receiver<Box<Resume>> {
        let (tx, rx) = mpsc::channel(1);
        self.sessions.insert(session_id.to_string(), Entry { subject: subject.to_string(), tx });
        rx
    }

    pub fn remove(&self, session_id: &str) {
        self.sessions.remove(session_id);
    }

    /// Hands `resume` to its session; gives it back when there is no such session for this
    /// subject (expired, or on another node), so the caller starts a new one.
    pub fn attach(&self, session_id: &str, resume: Box<Resume>) -> Result<(), Box<Resume>> {
        let tx = match self.sessions.get(session_id) {
            Some(e) if e.subject == resume.principal.subject => e.tx.clone(),
            _ => return Err(resume),
        };
        tx.try_send(resume).map_err(|e| match e {
            mpsc::error::TrySendError::Full(r) | mpsc::error::TrySendError::Closed(r) => r,
        })
    }
}
