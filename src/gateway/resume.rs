//! Sessions outlive their sockets for a while. A client that reconnects with its session id
//! and the last `seq` it saw is attached to the same session: it gets exactly the frames it
//! missed, in order, then `session.resumed`; or, when they are no longer all held,
//! `session.resumed` with `recovered: false`, and it reloads its state.

use std::sync::Arc;

use axum::extract::ws::WebSocket;
use dashmap::DashMap;
use sync_wrapper::SyncWrapper;
use uuid::Uuid;

use super::connections::ConnectionGuard;
use crate::auth::Principal;
use crate::hub::alarm::{Alarm, RESUME};

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
    /// How a new socket, and a shutdown, reach the session.
    alarm: Arc<Alarm>,
    /// A socket handed to the session and not taken yet: one at a time. (Held here rather than
    /// in a channel per session: a oneshot was 80 bytes for every idle session.) Only ever
    /// reached through the map's exclusive access, so a socket need not be `Sync` to wait here.
    pending: SyncWrapper<Option<Box<Resume>>>,
}

/// Every session of this node, by session id: those a socket can be attached to, and those a
/// shutdown must reach. Session ids are UUIDs the hub made, kept as such: sixteen bytes in
/// place of a string allocation each.
#[derive(Default)]
pub struct Resumable {
    sessions: DashMap<Uuid, Entry>,
}

impl Resumable {
    pub fn register(&self, session_id: Uuid, subject: Arc<str>, alarm: Arc<Alarm>) {
        self.sessions.insert(session_id, Entry { subject, alarm, pending: SyncWrapper::new(None) });
    }

    pub fn remove(&self, session_id: Uuid) {
        self.sessions.remove(&session_id);
    }

    /// Hands `resume` to its session and raises its [`RESUME`]; gives it back when there is no
    /// such session for this subject (expired, on another node, or not a session id at all),
    /// or when one is already waiting for it, so the caller starts a new one.
    pub fn attach(&self, session_id: &str, resume: Box<Resume>) -> Result<(), Box<Resume>> {
        let Ok(key) = Uuid::try_parse(session_id) else { return Err(resume) };
        let Some(mut entry) = self.sessions.get_mut(&key) else { return Err(resume) };
        if *entry.subject != *resume.principal.subject || entry.pending.get_mut().is_some() {
            return Err(resume);
        }
        *entry.pending.get_mut() = Some(resume);
        entry.alarm.raise(RESUME);
        Ok(())
    }

    /// The socket handed to this session, if one is waiting.
    pub fn take(&self, session_id: Uuid) -> Option<Box<Resume>> {
        self.sessions.get_mut(&session_id)?.pending.get_mut().take()
    }

    /// Raises `cause` on every session of the node.
    pub fn raise_all(&self, cause: u8) {
        for entry in self.sessions.iter() {
            entry.alarm.raise(cause);
        }
    }
}
