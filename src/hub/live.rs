//! A cache of visits that are not over, so signaling and chat authorize without a store read
//! per message. Every change this node makes goes through it; a change made elsewhere arrives
//! as `visit.updated` on the bus and evicts the entry.

use std::sync::Arc;

use dashmap::DashMap;

use super::Hub;
use crate::error::{ErrorCode, HubError, HubResult};
use crate::model::{Visit, VisitStatus};

#[derive(Default)]
pub struct LiveVisits {
    map: DashMap<String, Arc<Visit>>,
}

impl LiveVisits {
    /// Remembers a visit's newest record; a visit that is over is dropped instead.
    pub fn put(&self, visit: Visit) -> Arc<Visit> {
        let visit = Arc::new(visit);
        if visit.status.is_final() {
            self.map.remove(&visit.id);
        } else {
            self.map.insert(visit.id.clone(), visit.clone());
        }
        visit
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
