//! Taking over, in cluster mode, a session another node holds: its client reconnected here.
//!
//! 1. Read the session's journal meta: whose it is, and what it listens to. A session of
//!    another subject, or whose node is dead, cannot be taken over (events for it since
//!    that node died went nowhere): the client gets `recovered: false`.
//! 2. Listen to the session's topics here, then publish a [`BusEvent::Handover`] marker.
//!    Every node receives bus events in one order, so everything before the marker is the
//!    old owner's to send and everything after it is ours: events before our marker are
//!    dropped here; the old owner seals its journal when it reaches the marker.
//! 3. Read the sealed journal and replay exactly what the client missed, or nothing
//!    (`recovered: false`) when the journal has a hole.

use std::time::Duration;

use tokio::time::Instant;

use super::session::Session;
use crate::bus::{BusEvent, Topic};

/// How long a take-over waits for its marker and for the old owner's seal.
const HANDOVER_WAIT: Duration = Duration::from_secs(3);

impl Session {
    /// Takes the session over; the number of frames replayed, or `None` when the client must
    /// reload instead (the caller starts a new session then).
    pub(super) async fn take_over(&mut self, last_seq: u64) -> Option<u64> {
        let hub = self.gw.hub.clone();
        let live = hub.live_state().clone();
        let session_id = self.session_id.to_string();
        let meta = live.journal_meta(&session_id).await.ok()??;
        if meta.subject != self.principal.subject || !live.node_alive(&meta.node).await.ok()? {
            return None;
        }
        self.listen(Topic::Session(session_id.clone())).await.ok()?;
        for topic in meta.topics.iter().filter_map(|t| Topic::parse(t)) {
            self.listen(topic).await.ok()?;
        }
        let token = uuid::Uuid::new_v4().to_string();
        hub.hand_over(&session_id, &token).await.ok()?;
        let deadline = Instant::now() + HANDOVER_WAIT;
        loop {
            let alarm = &self.link.alarm;
            let event =
                tokio::time::timeout_at(deadline, std::future::poll_fn(|cx| alarm.poll_event(cx))).await.ok()?;
            if matches!(&*event, BusEvent::Handover { token: t, .. } if *t == token) {
                break;
            }
        }
        let sealed = live.journal_sealed(&session_id, &token, HANDOVER_WAIT).await.ok()??;
        let missed = sealed.missed_after(last_seq)?;
        let replayed = missed.len() as u64;
        self.out.adopt(sealed.last_seq, (last_seq + 1..).zip(missed).collect());
        // Boards start again here with a fresh snapshot or position (latest values).
        for state in meta.boards {
            self.watch_board(state, None);
        }
        Some(replayed)
    }
}
