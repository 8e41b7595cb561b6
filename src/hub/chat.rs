//! Multi-chat: each visit has one conversation between its patient and the care team.
//! Messages are stored before they are acknowledged, numbered per conversation, and fanned out
//! under a per-conversation lock so every member sees the same order. A retry with the same
//! `client_id` is stored and delivered once.

use super::{Hub, Scope, validate};
use crate::auth::Principal;
use crate::bus::{BusEvent, Topic};
use crate::error::{ErrorCode, HubError, HubResult};
use crate::model::{Role, Visit, new_visit_id};
use crate::protocol::{ChatMessage, ChatParticipants, Participant, ReadEvent, TypingEvent};
use crate::store::NewMessage;

pub const MAX_CLIENT_ID_LEN: usize = 64;

/// A page of history, oldest first.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HistoryPage {
    pub messages: Vec<ChatMessage>,
    /// Whether older messages exist before this page.
    pub has_more: bool,
}

impl Hub {
    /// Everyone in a conversation: the patient, then caregivers in the order they joined.
    pub async fn participants(&self, visit: &Visit) -> HubResult<Vec<Participant>> {
        let mut all = vec![Participant {
            subject: visit.patient_subject(),
            name: visit.display_name.clone(),
            role: Role::Patient,
        }];
        all.extend(self.conversation_members(&visit.id).await?);
        Ok(all)
    }

    pub(super) async fn announce_participants(&self, visit_id: &str) {
        let Ok(visit) = self.visit(visit_id).await else { return };
        let _ = self.announce_participants_of(&visit).await;
    }

    /// Tells the conversation who is in it now, and returns that list.
    async fn announce_participants_of(&self, visit: &Visit) -> HubResult<Vec<Participant>> {
        let participants = self.participants(visit).await?;
        let event =
            BusEvent::Participants(ChatParticipants { visit_id: visit.id.clone(), participants: participants.clone() });
        self.publish(Topic::Visit(visit.id.clone()), event).await;
        Ok(participants)
    }

    /// The patient, or a caregiver who joined the conversation (or an admin, read-only use).
    async fn require_member(&self, who: &Principal, visit_id: &str) -> HubResult<std::sync::Arc<Visit>> {
        if who.role == Role::Patient {
            if !who.is_patient_of(visit_id) {
                return Err(HubError::code(ErrorCode::NotYourVisit));
            }
            return self.visit(visit_id).await;
        }
        let visit = self.visit(visit_id).await?;
        who.require_covers(visit.state)?;
        if who.role != Role::Admin {
            let members = self.conversation_members(visit_id).await?;
            if !members.iter().any(|m| m.subject == who.subject) {
                return Err(HubError::code(ErrorCode::NotInConversation));
            }
        }
        Ok(visit)
    }

    /// A caregiver covering the visit's state joins its conversation, within their cap.
    pub async fn chat_join(&self, who: &Principal, visit_id: &str) -> HubResult<Vec<Participant>> {
        who.require_role(&[Role::Provider, Role::Support])?;
        let visit = self.visit(visit_id).await?;
        who.require_covers(visit.state)?;
        if visit.status.is_final() {
            return Err(HubError::code(ErrorCode::VisitNotActive));
        }
        let (open, already) = self.open_conversations(&who.subject, visit_id).await?;
        if !already && open >= self.options.max_conversations_per_caregiver {
            return Err(HubError::code(ErrorCode::ConversationCapReached));
        }
        let at = self.clock.now();
        // The join and the record of its request in one commit (a refusal is recorded by the
        // caller; a join of a member already in, which stores nothing, is recorded apart).
        let record = self.audit_entry(&who.subject, who.role, "chat.join", Scope::visit(visit_id), Ok(()));
        let (joined, recorded) = self.join_conversation(visit_id, &who.participant(), at, Some(&record)).await?;
        self.audit_unless_recorded(record, recorded).await;
        if joined {
            return self.announce_participants_of(&visit).await;
        }
        self.participants(&visit).await
    }

    pub async fn chat_leave(&self, who: &Principal, visit_id: &str) -> HubResult<()> {
        self.require_member(who, visit_id).await?;
        if who.role == Role::Patient {
            return Err(HubError::new(ErrorCode::Forbidden, "the patient is always in their conversation"));
        }
        if self.leave_conversation(visit_id, &who.subject).await? {
            self.announce_participants(visit_id).await;
        }
        Ok(())
    }

    pub async fn chat_send(
        &self,
        who: &Principal,
        visit_id: &str,
        client_id: &str,
        body: &str,
    ) -> HubResult<ChatMessage> {
        let visit = self.require_member(who, visit_id).await?;
        if visit.status.is_final() {
            return Err(HubError::code(ErrorCode::VisitNotActive));
        }
        let client_id = validate::identifier("client_id", client_id, MAX_CLIENT_ID_LEN)?;
        let body = validate::message("body", body, self.options.max_chat_body_chars)?;
        // Append and fan-out in one order for every member, across nodes.
        let _in_order = self.hold(&format!("chat:{}", visit.id)).await?;
        let new = NewMessage {
            visit_id: visit.id.clone(),
            message_id: new_visit_id(),
            client_id,
            from: who.participant(),
            body,
            sent_at: self.clock.now(),
        };
        // The message and the record of its request in one commit (a refusal is recorded by
        // the caller; a retry, which stores nothing, is recorded apart).
        let record = self.audit_entry(&who.subject, who.role, "chat.send", Scope::visit(&visit.id), Ok(()));
        let ((stored, appended), recorded) =
            self.store.append_message_recorded(&new, &record).await.map_err(HubError::internal)?;
        self.audit_unless_recorded(record, recorded).await;
        if appended {
            self.metrics.chat_stored.with_label_values(&[who.role.as_str()]).inc();
            self.publish(Topic::Visit(visit.id.clone()), BusEvent::ChatMessage(stored.clone())).await;
        }
        Ok(stored)
    }

    pub async fn chat_history(
        &self,
        who: &Principal,
        visit_id: &str,
        before_seq: Option<u64>,
        limit: Option<u32>,
    ) -> HubResult<HistoryPage> {
        self.require_member(who, visit_id).await?;
        let limit = limit.unwrap_or(self.options.chat_page_max).clamp(1, self.options.chat_page_max);
        // One extra row tells whether an older page exists.
        let mut messages = self.store.messages(visit_id, before_seq, limit + 1).await.map_err(HubError::internal)?;
        let has_more = messages.len() > limit as usize;
        if has_more {
            messages.remove(0);
        }
        Ok(HistoryPage { messages, has_more })
    }

    /// Typing indicators are not stored: they matter only now.
    pub async fn chat_typing(&self, who: &Principal, visit_id: &str, typing: bool) -> HubResult<()> {
        let visit = self.require_member(who, visit_id).await?;
        let event = TypingEvent { visit_id: visit.id.clone(), from: who.participant(), typing };
        self.publish(Topic::Visit(visit.id.clone()), BusEvent::Typing(event)).await;
        Ok(())
    }

    /// Read receipts are stored, and the others told.
    pub async fn chat_read(&self, who: &Principal, visit_id: &str, up_to_seq: u64) -> HubResult<u64> {
        let visit = self.require_member(who, visit_id).await?;
        let read = self.store.mark_read(visit_id, &who.subject, up_to_seq).await.map_err(HubError::internal)?;
        let event = ReadEvent { visit_id: visit.id.clone(), by: who.participant(), up_to_seq: read };
        self.publish(Topic::Visit(visit.id.clone()), BusEvent::Read(event)).await;
        Ok(read)
    }

    /// Hands the conversation from `who` to another caregiver covering the visit's state.
    pub async fn chat_handoff(&self, who: &Principal, visit_id: &str, to_subject: &str) -> HubResult<Vec<Participant>> {
        let visit = self.require_member(who, visit_id).await?;
        if who.role == Role::Patient {
            return Err(HubError::code(ErrorCode::Forbidden));
        }
        let target = self
            .store
            .get_caregiver(to_subject)
            .await
            .map_err(HubError::internal)?
            .filter(|c| c.covers(visit.state))
            .ok_or_else(|| {
                HubError::new(
                    ErrorCode::StateNotCovered,
                    "the new caregiver must be active and cover the visit's state",
                )
            })?;
        let role = target.kind.role();
        let (open, already) = self.open_conversations(&target.subject, visit_id).await?;
        if !already && open >= self.options.max_conversations_per_caregiver {
            return Err(HubError::new(
                ErrorCode::ConversationCapReached,
                "the new caregiver has no room for another conversation",
            ));
        }
        let member = Participant { subject: target.subject.clone(), name: target.name, role };
        let at = self.clock.now();
        self.join_conversation(visit_id, &member, at, None).await?;
        if who.role != Role::Admin {
            self.leave_conversation(visit_id, &who.subject).await?;
        }
        self.publish(
            Topic::Subject(target.subject.into()),
            BusEvent::ConversationAssigned { visit_id: visit.id.clone() },
        )
        .await;
        self.announce_participants(visit_id).await;
        self.participants(&visit).await
    }
}
