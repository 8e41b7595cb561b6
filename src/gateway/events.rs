//! What a session listens to, and how bus events and queue views become frames for it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_stream::wrappers::WatchStream;

use super::session::{Exit, Session};
use crate::bus::{BusEvent, Signal, Topic};
use crate::error::ErrorCode;
use crate::hub::QueueView;
use crate::model::{Role, UsState, VisitStatus};
use crate::protocol::{CloseCode, PresenceUpdated, ProviderPresence, ServerMessage, VisitStillThere};

impl Session {
    /// The subscriptions every session of this role has from the start, and what it must
    /// be told again after a reconnect (its place in line, a visit already under way).
    pub(super) async fn subscribe_for_role(&mut self) -> anyhow::Result<()> {
        let hub = self.gw.hub.clone();
        if let (Role::Patient, Some(visit_id)) = (self.principal.role, self.principal.visit.clone()) {
            self.listen(Topic::Visit(visit_id.clone())).await?;
            self.listen(Topic::Signal(visit_id.clone())).await?;
            hub.patient_online(&visit_id);
            let visit = match hub.visit(&visit_id).await {
                Ok(visit) => Some(visit),
                Err(e) if e.code == ErrorCode::VisitNotFound => None,
                Err(e) => return Err(e.into()),
            };
            if let Some(visit) = visit {
                if visit.status == VisitStatus::Waiting {
                    self.watch_board(visit.state, None);
                    self.still_there_at = Some(Instant::now() + self.still_there_after());
                }
                if let Some(started) = hub.visit_started_again(&self.principal, &visit_id).await? {
                    self.send(None, &ServerMessage::VisitStarted(started));
                }
            }
            return Ok(());
        }
        self.listen(Topic::Subject(self.link.subject.clone())).await?;
        if !self.principal.is_caregiver() {
            return Ok(());
        }
        for state in self.principal.states.clone() {
            self.listen(Topic::Staff(state)).await?;
        }
        hub.caregiver_online(&self.principal).await?;
        for c in hub.store().conversations_of(&self.principal.subject).await? {
            self.listen(Topic::Visit(c.visit_id)).await?;
        }
        if self.principal.role == Role::Provider {
            for visit in hub.store().live_visits_of(&self.principal.subject).await? {
                self.join_visit(&visit.id).await?;
            }
        }
        Ok(())
    }

    /// Follows a visit this provider holds: its events and its signaling, and `visit.started`
    /// again if the call is under way.
    pub(super) async fn join_visit(&mut self, visit_id: &str) -> anyhow::Result<()> {
        self.listen(Topic::Visit(visit_id.to_string())).await?;
        self.listen(Topic::Signal(visit_id.to_string())).await?;
        if let Some(started) = self.gw.hub.visit_started_again(&self.principal, visit_id).await? {
            self.send(None, &ServerMessage::VisitStarted(started));
        }
        Ok(())
    }

    /// Watches a state's queue board; `seen` is the view the client already has, if any.
    pub(super) fn watch_board(&mut self, state: UsState, seen: Option<Arc<QueueView>>) {
        match seen {
            Some(view) => self.sent_views.insert(state, view),
            None => self.sent_views.remove(&state),
        };
        if self.principal.role != Role::Patient {
            // A console's snapshot shows what was just done; patients follow the board's pace.
            self.gw.hub.board_now(state);
        }
        self.boards.insert(state, WatchStream::new(self.gw.hub.watch_queue(state)));
    }

    fn still_there_after(&self) -> Duration {
        Duration::from_secs(self.gw.config.still_there_after_secs)
    }

    pub(super) fn ask_still_there(&mut self) {
        let Some(visit_id) = self.principal.visit.clone() else { return };
        let within = self.gw.config.still_there_timeout_secs;
        self.send(None, &ServerMessage::VisitStillThere(VisitStillThere { visit_id, respond_within_secs: within }));
        self.answer_by = Some(Instant::now() + Duration::from_secs(within));
    }

    /// The patient answered "still there?".
    pub(super) fn still_here(&mut self) {
        self.answer_by = None;
        if self.still_there_at.is_some() {
            self.still_there_at = Some(Instant::now() + self.still_there_after());
        }
    }

    pub(super) async fn on_event(&mut self, event: &BusEvent) -> Option<Exit> {
        let me = self.principal.subject.clone();
        let msg = match event {
            BusEvent::VisitUpdated(update) => {
                if self.principal.role == Role::Patient {
                    if let Some(state) = update.state {
                        // Moved to another state's queue: follow it there.
                        self.boards.clear();
                        self.sent_position = None;
                        self.watch_board(state, None);
                    }
                    if update.status != VisitStatus::Waiting {
                        self.boards.clear();
                        self.sent_position = None;
                        self.still_there_at = None;
                        self.answer_by = None;
                    }
                    if update.status.is_final() && self.is_detached() {
                        // Over while its socket was lost: the session ends with the visit.
                        return Some(Exit::Gone);
                    }
                } else if update.status.is_final() {
                    self.unlisten(&Topic::Signal(update.visit_id.clone())).await;
                }
                ServerMessage::VisitUpdated(update.clone())
            }
            BusEvent::AccessChanged { .. } => return Some(Exit::Close(CloseCode::AccessRevoked)),
            BusEvent::Resync => return Some(Exit::Close(CloseCode::ResyncRequired)),
            // Another node takes this session over from here: seal the journal and stop.
            BusEvent::Handover { session_id, token } if uuid::Uuid::try_parse(session_id) == Ok(self.session_id) => {
                let seq = self.out.seq();
                if let Some(journal) = &mut self.out.journal {
                    journal.seal(token, seq);
                }
                return Some(Exit::HandedOver);
            }
            BusEvent::Handover { .. } => return None,
            BusEvent::QueueChanged { .. } | BusEvent::SettingsChanged { .. } => return None,
            BusEvent::VisitStarted { visit_id, patient, provider } => {
                if patient.subject != me && provider.subject != me {
                    return None;
                }
                ServerMessage::VisitStarted(self.gw.hub.visit_started_for(&me, visit_id, patient, provider))
            }
            // The router does not hand a user their own signals and typing.
            BusEvent::Signal { signal, received_at_us, .. } => {
                let lag_us = crate::clock::unix_micros().saturating_sub(*received_at_us).max(0);
                self.gw.hub.metrics().relay_latency.observe(lag_us as f64 / 1e6);
                match signal.clone() {
                    Signal::Offer(s) => ServerMessage::SignalOffer(s),
                    Signal::Answer(s) => ServerMessage::SignalAnswer(s),
                    Signal::Candidate(c) => ServerMessage::SignalCandidate(c),
                    Signal::EndOfCandidates(e) => ServerMessage::SignalEndOfCandidates(e),
                }
            }
            BusEvent::ChatMessage(m) => {
                self.gw.hub.metrics().chat_delivered.with_label_values(&[self.principal.role.as_str()]).inc();
                ServerMessage::ChatMessage(m.clone())
            }
            BusEvent::Typing(t) => ServerMessage::ChatTyping(t.clone()),
            BusEvent::Read(r) => ServerMessage::ChatRead(r.clone()),
            BusEvent::Participants(p) => ServerMessage::ChatParticipants(p.clone()),
            BusEvent::Presence(batch) => {
                // A provider covering several of this caregiver's states is announced on each
                // state's topic: pass each change on once. A caregiver of one state hears each
                // change once already, and so does every caregiver for a provider of one
                // state: neither needs the record of what was sent (most sessions and most
                // providers; comparing and copying each entry cost every session CPU per batch).
                if self.principal.states.len() > 1 {
                    match self.unsent_presence(&batch.updated) {
                        None => {}
                        Some(providers) if providers.is_empty() => return None,
                        Some(providers) => {
                            self.send(None, &ServerMessage::PresenceUpdated(PresenceUpdated { providers }));
                            return None;
                        }
                    }
                }
                // Passed on whole: the frame is encoded once for every session on this node.
                self.send_shared(batch.frame());
                return None;
            }
            BusEvent::ConversationAssigned { visit_id } => {
                if let Err(e) = self.listen(Topic::Visit(visit_id.clone())).await {
                    tracing::warn!(error = %e, "could not follow a handed-off conversation");
                }
                return None;
            }
        };
        self.send(None, &msg);
        None
    }

    /// For a caregiver of several states: the batch's entries not sent yet, or `None` when
    /// that is all of them. Records what it passes of providers of several states (the ones
    /// that arrive twice) and forgets a provider that no longer covers several.
    fn unsent_presence(&mut self, batch: &PresenceUpdated) -> Option<Vec<ProviderPresence>> {
        let repeatable = |p: &ProviderPresence| p.states.len() > 1;
        let fresh = |sent: &BTreeMap<String, ProviderPresence>, p: &ProviderPresence| {
            !repeatable(p) || sent.get(&p.subject) != Some(p)
        };
        let all_fresh = batch.providers.iter().all(|p| fresh(&self.sent_presence, p));
        let providers = (!all_fresh)
            .then(|| batch.providers.iter().filter(|p| fresh(&self.sent_presence, p)).cloned().collect::<Vec<_>>());
        for p in providers.as_ref().unwrap_or(&batch.providers) {
            if repeatable(p) {
                self.sent_presence.insert(p.subject.clone(), p.clone());
            } else if !self.sent_presence.is_empty() {
                self.sent_presence.remove(&p.subject);
            }
        }
        providers
    }

    pub(super) fn on_view(&mut self, state: UsState, view: Arc<QueueView>) {
        if self.principal.role == Role::Patient {
            let Some(visit_id) = self.principal.visit.as_deref() else { return };
            match view.position_message(visit_id) {
                Some(position) if self.sent_position.as_deref() != Some(&position) => {
                    self.send(None, &ServerMessage::QueuePosition(position.clone()));
                    self.sent_position = Some(Box::new(position));
                }
                Some(_) => {}
                // The visit left the queue; its `visit.updated` says why.
                None if view.version > 0 && self.sent_position.is_some() => {
                    self.boards.remove(&state);
                }
                None => {}
            }
            return;
        }
        let msg = match self.sent_views.get(&state) {
            None => Some(ServerMessage::QueueSnapshot(view.snapshot())),
            Some(old) => view.delta_since(old).map(ServerMessage::QueueDelta),
        };
        if let Some(msg) = msg {
            self.send(None, &msg);
        }
        self.sent_views.insert(state, view);
    }
}
