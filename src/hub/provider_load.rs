//! The visits each provider holds (claimed, in visit, wrap-up): what the live-visit cap and
//! presence's load are computed from. A node that is the only writer (no shared live state)
//! keeps them in memory, loaded from the store once at start: every later change of a
//! provider's load is a transition this node makes. Nodes of a cluster claim and end each
//! other's visits, so they ask the store.

use std::collections::HashSet;

use dashmap::DashMap;

use super::Hub;
use crate::error::{HubError, HubResult};
use crate::model::{Visit, VisitId};

#[derive(Default)]
pub(super) struct ProviderLoads {
    /// Live visits by provider; `None` in a cluster.
    held: Option<DashMap<String, HashSet<VisitId>>>,
}

impl ProviderLoads {
    /// Memory from these live visits (what the store holds at start).
    pub(super) fn local(live: Vec<Visit>) -> ProviderLoads {
        let held: DashMap<String, HashSet<VisitId>> = DashMap::new();
        for visit in live {
            if let Some(provider) = visit.provider {
                held.entry(provider).or_default().insert(visit.id);
            }
        }
        ProviderLoads { held: Some(held) }
    }

    /// How many visits the provider holds, when kept here.
    fn count(&self, provider: &str) -> Option<u32> {
        self.held.as_ref().map(|held| held.get(provider).map_or(0, |v| v.len() as u32))
    }

    /// The visit became live for the provider (`live`), or stopped being live.
    pub(super) fn note(&self, provider: &str, visit_id: &str, live: bool) {
        let Some(held) = &self.held else { return };
        if live {
            held.entry(provider.to_string()).or_default().insert(visit_id.to_string());
        } else {
            // An empty set is dropped, so providers who hold nothing cost nothing.
            held.remove_if_mut(provider, |_, visits| {
                visits.remove(visit_id);
                visits.is_empty()
            });
        }
    }
}

impl Hub {
    /// The number of visits the provider holds now.
    pub(super) async fn provider_live_count(&self, provider: &str) -> HubResult<u32> {
        if let Some(n) = self.loads.count(provider) {
            return Ok(n);
        }
        Ok(self.store.live_visits_of(provider).await.map_err(HubError::internal)?.len() as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{UsState, VisitStatus};

    fn held_by(id: &str, provider: &str) -> Visit {
        Visit {
            id: id.into(),
            state: UsState::parse("WA").unwrap(),
            display_name: "P".into(),
            reason: "r".into(),
            status: VisitStatus::Claimed,
            created_at: chrono::Utc::now(),
            estimated_wait_secs: None,
            waited_secs: None,
            provider: Some(provider.into()),
            reported_state: None,
        }
    }

    #[test]
    fn counts_follow_what_is_noted_and_start_from_the_store() {
        let loads = ProviderLoads::local(vec![held_by("v1", "dr-a"), held_by("v2", "dr-a"), held_by("v3", "dr-b")]);
        assert_eq!(loads.count("dr-a"), Some(2));
        assert_eq!(loads.count("dr-c"), Some(0));
        loads.note("dr-c", "v4", true);
        loads.note("dr-c", "v4", true);
        assert_eq!(loads.count("dr-c"), Some(1), "noting a visit twice counts it once");
        loads.note("dr-a", "v1", false);
        loads.note("dr-a", "v9", false);
        assert_eq!(loads.count("dr-a"), Some(1));
        loads.note("dr-b", "v3", false);
        assert_eq!(loads.count("dr-b"), Some(0));
        assert!(!loads.held.as_ref().unwrap().contains_key("dr-b"), "an empty entry is dropped");
    }

    #[test]
    fn a_cluster_node_keeps_nothing() {
        let loads = ProviderLoads::default();
        loads.note("dr-a", "v1", true);
        assert_eq!(loads.count("dr-a"), None);
    }
}
