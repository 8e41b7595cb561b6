//! What each client request does. Authorization is checked by the hub for what the request
//! touches, on top of the role the socket was opened with.

use serde_json::{Value, json};

use super::session::{Session, deadline_of};
use crate::bus::{Signal, Topic};
use crate::error::{ErrorCode, HubError, HubResult};
use crate::protocol::ClientMessage;

/// Requests recorded in the audit trail here even when they succeed: everything that reads or
/// changes a visit, a queue, a conversation or settings. (Every refusal is recorded.) A claim,
/// a transition, a chat message or a join that succeeds is recorded by the hub, in the same
/// commit as the change.
pub(super) fn audited(kind: &str) -> bool {
    !matches!(
        kind,
        "ping"
            | "session.refresh"
            | "presence.set"
            | "chat.typing"
            | "chat.read"
            | "queue.unsubscribe"
            | "visit.claim"
            | "visit.transition"
            | "chat.send"
            | "chat.join"
    ) && !kind.starts_with("signal.")
}

fn to_json(v: impl serde::Serialize) -> HubResult<Value> {
    serde_json::to_value(v).map_err(HubError::internal)
}

impl Session {
    pub(super) async fn handle(&mut self, msg: ClientMessage) -> HubResult<Value> {
        let hub = self.gw.hub.clone();
        let who = &self.principal;
        match msg {
            ClientMessage::Ping(_) => Ok(json!({ "server_time": hub.clock().now() })),
            ClientMessage::QueueSubscribe(r) => {
                who.require_covers(r.state)?;
                if !self.boards.contains_key(&r.state) {
                    // The board yields the current view first: that becomes the snapshot.
                    self.watch_board(r.state, None);
                }
                Ok(json!({}))
            }
            ClientMessage::QueueUnsubscribe(r) => {
                self.boards.remove(&r.state);
                self.sent_views.remove(&r.state);
                Ok(json!({}))
            }
            ClientMessage::PresenceSet(p) => {
                hub.set_presence(who, p.status).await?;
                Ok(json!({}))
            }
            ClientMessage::StateSetBusy(b) => to_json(hub.set_busy(who, b.state, b.busy).await?),
            ClientMessage::SessionRefresh(r) => {
                let fresh = hub.authenticate(&r.token).await?;
                if fresh.subject != who.subject || fresh.role != who.role {
                    return Err(HubError::new(
                        ErrorCode::Forbidden,
                        "a refresh token must be for the same subject and role",
                    ));
                }
                self.principal.expires_at = fresh.expires_at;
                self.token_deadline = deadline_of(fresh.expires_at);
                Ok(json!({ "expires_at": fresh.expires_at }))
            }
            ClientMessage::VisitClaim(r) => {
                let visit = hub.claim_visit(who, &r.visit_id).await?;
                self.join_visit(&visit.id).await.map_err(HubError::internal)?;
                Ok(json!({ "visit_id": visit.id, "status": visit.status, "waited_secs": visit.waited_secs }))
            }
            ClientMessage::VisitTransition(t) => {
                let visit = hub.transition_visit(who, &t.visit_id, t.to).await?;
                Ok(json!({ "visit_id": visit.id, "status": visit.status }))
            }
            ClientMessage::VisitStillHere(r) => {
                if !who.is_patient_of(&r.visit_id) {
                    return Err(HubError::code(ErrorCode::NotYourVisit));
                }
                self.still_here();
                Ok(json!({}))
            }
            ClientMessage::VisitLocation(l) => {
                hub.report_location(who, &l.visit_id, l.state).await?;
                Ok(json!({}))
            }
            ClientMessage::VisitMove(l) => {
                let visit = hub.move_visit(who, &l.visit_id, l.state).await?;
                Ok(json!({ "visit_id": visit.id, "state": visit.state }))
            }
            ClientMessage::SignalOffer(s) => self.relay(Signal::Offer(s)).await,
            ClientMessage::SignalAnswer(s) => self.relay(Signal::Answer(s)).await,
            ClientMessage::SignalCandidate(c) => self.relay(Signal::Candidate(c)).await,
            ClientMessage::SignalEndOfCandidates(e) => self.relay(Signal::EndOfCandidates(e)).await,
            ClientMessage::ChatJoin(r) => {
                let participants = hub.chat_join(who, &r.visit_id).await?;
                self.listen(Topic::Visit(r.visit_id)).await.map_err(HubError::internal)?;
                Ok(json!({ "participants": participants }))
            }
            ClientMessage::ChatLeave(r) => {
                hub.chat_leave(who, &r.visit_id).await?;
                self.unlisten(&Topic::Visit(r.visit_id)).await;
                Ok(json!({}))
            }
            ClientMessage::ChatSend(m) => {
                let stored = hub.chat_send(who, &m.visit_id, &m.client_id, &m.body).await?;
                Ok(json!({ "message_id": stored.message_id, "seq": stored.seq, "sent_at": stored.sent_at }))
            }
            ClientMessage::ChatHistory(h) => to_json(hub.chat_history(who, &h.visit_id, h.before_seq, h.limit).await?),
            ClientMessage::ChatTyping(t) => {
                hub.chat_typing(who, &t.visit_id, t.typing).await?;
                Ok(json!({}))
            }
            ClientMessage::ChatRead(r) => {
                let read = hub.chat_read(who, &r.visit_id, r.up_to_seq).await?;
                Ok(json!({ "up_to_seq": read }))
            }
            ClientMessage::ChatHandoff(h) => {
                let participants = hub.chat_handoff(who, &h.visit_id, &h.to_subject).await?;
                if who.role != crate::model::Role::Admin {
                    self.unlisten(&Topic::Visit(h.visit_id)).await;
                }
                Ok(json!({ "participants": participants }))
            }
            ClientMessage::PortalSnapshot(_) => {
                let states = hub.covered_states(who);
                // The views the snapshot is built from are the ones deltas will follow.
                let views: Vec<_> = states.iter().map(|s| hub.board_now(*s)).collect();
                let portal = hub.portal(who, &views).await?;
                for view in views {
                    self.watch_board(view.state, Some(view));
                }
                to_json(portal)
            }
        }
    }

    async fn relay(&mut self, signal: Signal) -> HubResult<Value> {
        self.gw.hub.relay_signal(&self.principal, signal).await?;
        Ok(json!({}))
    }
}
