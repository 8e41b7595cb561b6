//! Sessions outlive their sockets for a while. A client that reconnects with its session id
//! and the last `seq` it saw is attached to the same session: it gets exactly the frames it
//! missed, in order, then `session.resumed`; or, when they are no longer all held,
//! `session.resumed` with `recovered: false`, and it reloads its state.

use std::sync::Arc;

use axum::extract::ws::WebSocket;
use dashmap::DashMap;
use tokio::sync::oneshot;
use uuid::Uuid;

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
    /// The session's own copy of its subject, shared rather than copied: every idle session
    /// has an entry.
    subject: Arc<str>,
    /// One resume at a time: the session registers again as it takes one. (A oneshot is a
    /// tenth of a channel's memory, and every idle session holds one.)
    tx: oneshot::Sender<Box<Resume>>,
}

/// Sessions of this node that a socket can be attached to, by session id. Session ids are
/// UUIDs the hub made, kept as such: sixteen bytes in place of a string allocation each.
#[derive(Default)]
pub struct Resumable {
    sessions: DashMap<Uuid, Entry>,
}

impl Resumable {
    pub fn register(&self, session_id: Uuid, subject: Arc<str>) -> oneshot::Receiver<Box<Resume>> {
        let (tx, rx) = oneshot::channel();
        self.sessions.insert(session_id, Entry { subject, tx });
        rx
    }

    pub fn remove(&self, session_id: Uuid) {
        self.sessions.remove(&session_id);
    }

    /// Hands `resume` to its session; gives it back when there is no such session for this
    /// subject (expired, on another node, or not a session id at all), so the caller starts a
    /// new one.
    pub fn attach(&self, session_id: &str, resume: Box<Resume>) -> Result<(), Box<Resume>> {
        let Ok(key) = Uuid::try_parse(session_id) else { return Err(resume) };
        let subject = resume.principal.subject.as_str();
        match self.sessions.remove_if(&key, |_, e| &*e.subject == subject) {
            Some((_, entry)) => entry.tx.send(resume),
            None => Err(resume),
        }
    }
}
