//! A cache of visits that are not over, so signaling and chat authorize without a store read
//! per message. Every change this node makes goes through it; a change made elsewhere arrives
//! as `visit.updated` on the bus and evicts the entry.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use dashmap::DashMap;

use super::Hub;
use crate::error::{ErrorCode, HubError, HubResult};
use crate::model::{Visit, VisitId, VisitStatus};

/// Visits known to be over, remembered after they leave the cache: a patient's socket closes
/// right after the end, and whether to start an abandonment must not cost a store read.
/// Being over is final, so this can never be stale; it is bounded, oldest forgotten first.
const OVER_REMEMBERED: usize = 8192;

#[derive(Default)]
pub struct LiveVisits {
    map: DashMap<String, Arc<Visit>>,
    over: Mutex<(VecDeque<VisitId>, HashSet<VisitId>)>,
}

impl LiveVisits {
    /// Remembers a visit's newest record; a visit that is over is dropped instead.
    pub fn put(&self, visit: Visit) -> Arc<Visit> {
        let visit = Arc::new(visit);
        if visit.status.is_final() {
            self.map.remove(&visit.id);
            self.over_now(&visit.id);
        } else {
            self.map.insert(visit.id.clone(), visit.clone());
        }
        visit
    }

    /// The visit is over (ended, cancelled or abandoned), here or on another node.
    pub fn over_now(&self, visit_id: &str) {
        let mut over = self.over.lock().unwrap_or_else(|e| e.into_inner());
        let (order, known) = &mut *over;
        if known.insert(visit_id.to_string()) {
            order.push_back(visit_id.to_string());
            if order.len() > OVER_REMEMBERED
                && let Some(oldest) = order.pop_front()
            {
                known.remove(&oldest);
            }
        }
    }

    /// True when the visit is known to be over; false says nothing.
    pub fn is_over(&self, visit_id: &str) -> bool {
        self.over.lock().unwrap_or_else(|e| e.into_inner()).1.contains(visit_id)
    }

    pub fn forget(&self, visit_id: &str) {
        self.map.remove(visit_id);
    }

    /// Evicts the entry unless it already has `status`.
    pub fn forget_unless(&self, visit_id: &str, status: VisitStatus) {
        self.map.remove_if(visit_id, |_, v| v.status != status);
    }

    fn get(&self, visit_id: &str) -> Option<Arc<Visit>> {
        self.map.get(visit_id).map(|v| v.clone())
    }
}

impl Hub {
    /// True when the visit is known to be over (ended, cancelled or abandoned); false says
    /// nothing.
    pub fn visit_is_over(&self, visit_id: &str) -> bool {
        self.live.is_over(visit_id)
    }

    /// The visit, from the cache or the store: a patient's sign-in and every reconnect of a
    /// waiting patient read it, so a storm of reconnects does not become a storm of reads.
    pub async fn visit(&self, visit_id: &str) -> HubResult<Arc<Visit>> {
        if let Some(v) = self.live.get(visit_id) {
            return Ok(v);
        }
        let visit = self
            .store
            .get_visit(visit_id)
            .await
            .map_err(HubError::internal)?
            .ok_or_else(|| HubError::code(ErrorCode::VisitNotFound))?;
        Ok(self.live.put(visit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::UsState;

    fn visit(id: &str, status: VisitStatus) -> Visit {
        Visit {
            id: id.into(),
            state: UsState::parse("WA").unwrap(),
            display_name: "P".into(),
            reason: "r".into(),
            status,
            created_at: chrono::Utc::now(),
            estimated_wait_secs: None,
            waited_secs: None,
            provider: None,
            reported_state: None,
        }
    }

    #[test]
    fn a_visit_over_is_remembered_as_over_within_a_bound() {
        let live = LiveVisits::default();
        live.put(visit("v0", VisitStatus::Waiting));
        assert!(!live.is_over("v0"));
        live.put(visit("v0", VisitStatus::Ended));
        assert!(live.get("v0").is_none() && live.is_over("v0"));
        for i in 1..=OVER_REMEMBERED {
            live.over_now(&format!("v{i}"));
        }
        live.over_now("v1");
        assert!(!live.is_over("v0"), "the oldest is forgotten past the bound");
        assert!(live.is_over("v1") && live.is_over(&format!("v{OVER_REMEMBERED}")));
        let over = live.over.lock().unwrap();
        assert_eq!((over.0.len(), over.1.len()), (OVER_REMEMBERED, OVER_REMEMBERED));
    }
}
