//! Which caregivers are online, and for providers whether they are available or in a visit.
//! Feeds the estimator's staffing figures and the portal. A caregiver with several sockets is
//! online while any is open. In a cluster, the caregivers other nodes hold arrive with their
//! heartbeats and count as well; a caregiver on several nodes counts once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};

use super::estimator::Staffing;
use crate::clock::Clock;
use crate::live::PresenceRecord;
use crate::model::{CaregiverKind, UsState};
use crate::protocol::{PresenceStatus, ProviderPresence, ProviderStatus};

struct Entry {
    name: String,
    kind: CaregiverKind,
    states: Vec<UsState>,
    sessions: u32,
    status: PresenceStatus,
    /// Live visits the provider holds.
    live: u32,
    /// Since when the provider can take a visit (available, under the live-visit cap), or
    /// since their last claim if later: where a pick-up delay starts. `None` while they cannot.
    free_since: Option<DateTime<Utc>>,
}

impl Entry {
    /// After any change: starts the pick-up clock when the provider becomes free, stops it
    /// when they stop being free.
    fn note_free(&mut self, max_live: u32, now: DateTime<Utc>) {
        let free =
            self.kind == CaregiverKind::Provider && self.status == PresenceStatus::Available && self.live < max_live;
        match (free, self.free_since) {
            (true, None) => self.free_since = Some(now),
            (false, Some(_)) => self.free_since = None,
            _ => {}
        }
    }
}

/// Staffing by `UsState::index`.
type StaffingTable = [Staffing; UsState::COUNT];

pub struct Presence {
    max_live: u32,
    clock: Arc<dyn Clock>,
    caregivers: Mutex<HashMap<String, Entry>>,
    /// Caregivers online on other nodes, by subject, from their last heartbeats.
    remote: Mutex<HashMap<String, PresenceRecord>>,
    /// Every state's staffing, counted in one pass and kept until presence changes: the
    /// estimator asks at every queue change, and counting anew each time walked all
    /// caregivers of the cluster per ask. Locked after `caregivers`, never before.
    staffing: Mutex<Option<StaffingTable>>,
}

/// A caregiver coming online.
pub struct Arrival<'a> {
    pub subject: &'a str,
    pub name: &'a str,
    pub kind: CaregiverKind,
    pub states: &'a [UsState],
    pub live: u32,
}

impl Presence {
    pub fn new(max_live: u32, clock: Arc<dyn Clock>) -> Presence {
        Presence {
            max_live,
            clock,
            caregivers: Mutex::new(HashMap::new()),
            remote: Mutex::new(HashMap::new()),
            staffing: Mutex::new(None),
        }
    }

    fn view(&self, subject: &str, e: &Entry) -> Option<ProviderPresence> {
        (e.kind == CaregiverKind::Provider)
            .then(|| provider_view(subject, &e.name, &e.states, e.sessions, e.live, e.status))
    }

    /// What this node tells the others: its caregivers online.
    pub fn records(&self) -> Vec<PresenceRecord> {
        let map = self.caregivers.lock().unwrap_or_else(|e| e.into_inner());
        map.iter()
            .filter(|(_, e)| e.sessions > 0)
            .map(|(subject, e)| PresenceRecord {
                subject: subject.clone(),
                name: e.name.clone(),
                kind: e.kind,
                states: e.states.clone(),
                status: e.status,
                live: e.live,
            })
            .collect()
    }

    /// Replaces what other nodes hold; returns the states whose staffing changed.
    pub fn set_remote(&self, records: impl IntoIterator<Item = PresenceRecord>) -> Vec<UsState> {
        let before = self.staffing_table();
        {
            let mut remote = self.remote.lock().unwrap_or_else(|e| e.into_inner());
            remote.clear();
            for r in records {
                remote.entry(r.subject.clone()).or_insert(r);
            }
        }
        self.changed();
        let after = self.staffing_table();
        UsState::all().filter(|s| before[s.index()] != after[s.index()]).collect()
    }

    /// Presence changed: the staffing table is counted again at the next ask.
    fn changed(&self) {
        *self.staffing.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Calls `f` with each provider held only by other nodes.
    fn each_remote_provider(&self, local: &HashMap<String, Entry>, f: impl FnMut(&PresenceRecord)) {
        let remote = self.remote.lock().unwrap_or_else(|e| e.into_inner());
        remote.values().filter(|r| r.kind == CaregiverKind::Provider && !local.contains_key(&r.subject)).for_each(f);
    }

    /// A caregiver's socket opened. Returns the provider's new presence, if a provider.
    pub fn connect(&self, a: Arrival<'_>) -> Option<ProviderPresence> {
        let mut map = self.caregivers.lock().unwrap_or_else(|e| e.into_inner());
        let entry = map.entry(a.subject.to_string()).or_insert_with(|| Entry {
            name: a.name.to_string(),
            kind: a.kind,
            states: Vec::new(),
            sessions: 0,
            status: PresenceStatus::Available,
            live: a.live,
            free_since: None,
        });
        entry.sessions += 1;
        entry.kind = a.kind;
        entry.states = a.states.to_vec();
        entry.note_free(self.max_live, self.clock.now());
        self.changed();
        let entry = &map[a.subject];
        self.view(a.subject, entry)
    }

    /// A caregiver's socket closed.
    pub fn disconnect(&self, subject: &str) -> Option<ProviderPresence> {
        let mut map = self.caregivers.lock().unwrap_or_else(|e| e.into_inner());
        let entry = map.get_mut(subject)?;
        entry.sessions = entry.sessions.saturating_sub(1);
        let view = self.view(subject, entry);
        if entry.sessions == 0 {
            map.remove(subject);
            self.changed();
        }
        view
    }

    pub fn set_status(&self, subject: &str, status: PresenceStatus) -> Option<ProviderPresence> {
        self.update(subject, |e| std::mem::replace(&mut e.status, status) != status)
    }

    /// The number of live visits a provider holds changed.
    pub fn set_live(&self, subject: &str, live: u32) -> Option<ProviderPresence> {
        self.update(subject, |e| std::mem::replace(&mut e.live, live) != live)
    }

    fn update(&self, subject: &str, change: impl FnOnce(&mut Entry) -> bool) -> Option<ProviderPresence> {
        let mut map = self.caregivers.lock().unwrap_or_else(|e| e.into_inner());
        let entry = map.get_mut(subject)?;
        let changed = change(entry);
        entry.note_free(self.max_live, self.clock.now());
        if !changed {
            return None;
        }
        self.changed();
        self.view(subject, entry)
    }

    /// A provider on this node claimed a visit at `at`: when they became free to take it (or
    /// claimed the one before), if they were. Their next pick-up counts from this claim.
    pub fn picked_up(&self, subject: &str, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut map = self.caregivers.lock().unwrap_or_else(|e| e.into_inner());
        let entry = map.get_mut(subject)?;
        let since = entry.free_since?;
        entry.free_since = Some(at);
        Some(since.min(at))
    }

    /// The name of a caregiver online on this node.
    pub fn name_of(&self, subject: &str) -> Option<String> {
        let map = self.caregivers.lock().unwrap_or_else(|e| e.into_inner());
        map.get(subject).map(|e| e.name.clone())
    }

    /// Providers online for `state`, and how many can take a visit now.
    pub fn staffing(&self, state: UsState) -> Staffing {
        self.staffing_table()[state.index()]
    }

    fn staffing_table(&self) -> StaffingTable {
        let map = self.caregivers.lock().unwrap_or_else(|e| e.into_inner());
        let mut cached = self.staffing.lock().unwrap_or_else(|e| e.into_inner());
        *cached.get_or_insert_with(|| self.count_staffing(&map))
    }

    fn count_staffing(&self, local: &HashMap<String, Entry>) -> StaffingTable {
        let mut table = [Staffing::default(); UsState::COUNT];
        let mut add = |states: &[UsState], status: PresenceStatus, live: u32| {
            let available = status == PresenceStatus::Available && live < self.max_live;
            for (i, state) in states.iter().enumerate() {
                if states[..i].contains(state) {
                    continue; // a state listed twice counts once
                }
                let t = &mut table[state.index()];
                t.online += 1;
                t.available += u32::from(available);
            }
        };
        for e in local.values().filter(|e| e.kind == CaregiverKind::Provider) {
            add(&e.states, e.status, e.live);
        }
        self.each_remote_provider(local, |r| add(&r.states, r.status, r.live));
        table
    }

    /// Online providers covering any of `states`.
    pub fn providers(&self, states: &[UsState]) -> Vec<ProviderPresence> {
        let map = self.caregivers.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<_> = map
            .iter()
            .filter(|(_, e)| e.states.iter().any(|s| states.contains(s)))
            .filter_map(|(subject, e)| self.view(subject, e))
            .collect();
        self.each_remote_provider(&map, |r| {
            if r.states.iter().any(|s| states.contains(s)) {
                out.push(provider_view(&r.subject, &r.name, &r.states, 1, r.live, r.status));
            }
        });
        out.sort_by(|a, b| a.subject.cmp(&b.subject));
        out
    }
}

fn provider_view(
    subject: &str,
    name: &str,
    states: &[UsState],
    sessions: u32,
    live: u32,
    status: PresenceStatus,
) -> ProviderPresence {
    ProviderPresence {
        subject: subject.to_string(),
        name: name.to_string(),
        status: match (sessions, live, status) {
            (0, _, _) => ProviderStatus::Offline,
            (_, 1.., _) => ProviderStatus::InVisit,
            (_, 0, PresenceStatus::Available) => ProviderStatus::Available,
            (_, 0, PresenceStatus::Away) => ProviderStatus::Away,
        },
        states: states.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::clock::{ManualClock, SystemClock};

    fn presence(max_live: u32) -> Presence {
        Presence::new(max_live, Arc::new(SystemClock))
    }

    fn arrive<'a>(
        p: &Presence,
        subject: &'a str,
        kind: CaregiverKind,
        states: &'a [UsState],
    ) -> Option<ProviderPresence> {
        p.connect(Arrival { subject, name: "N", kind, states, live: 0 })
    }

    #[test]
    fn counts_providers_per_state_across_sessions() {
        let p = presence(1);
        let wa = UsState::parse("WA").unwrap();
        let or = UsState::parse("OR").unwrap();
        assert_eq!(arrive(&p, "dr-1", CaregiverKind::Provider, &[wa, or]).unwrap().status, ProviderStatus::Available);
        arrive(&p, "dr-1", CaregiverKind::Provider, &[wa, or]);
        arrive(&p, "dr-2", CaregiverKind::Provider, &[or]);
        assert!(arrive(&p, "sup-1", CaregiverKind::Support, &[wa]).is_none());
        assert_eq!(p.staffing(wa), Staffing { online: 1, available: 1 });
        assert_eq!(p.staffing(or), Staffing { online: 2, available: 2 });

        assert_eq!(p.set_status("dr-2", PresenceStatus::Away).unwrap().status, ProviderStatus::Away);
        assert!(p.set_status("dr-2", PresenceStatus::Away).is_none(), "no change, nothing to tell");
        assert_eq!(p.staffing(or), Staffing { online: 2, available: 1 });

        assert_eq!(p.set_live("dr-1", 1).unwrap().status, ProviderStatus::InVisit);
        assert_eq!(p.staffing(wa), Staffing { online: 1, available: 0 });
        assert_eq!(p.providers(&[wa]).len(), 1);

        assert_eq!(p.disconnect("dr-1").unwrap().status, ProviderStatus::InVisit);
        assert_eq!(p.name_of("dr-1").as_deref(), Some("N"));
        assert_eq!(p.disconnect("dr-1").unwrap().status, ProviderStatus::Offline);
        assert_eq!(p.name_of("dr-1"), None, "offline: the store has the name");
        assert_eq!(p.staffing(wa), Staffing { online: 0, available: 0 });
        assert!(p.providers(&[wa]).is_empty());

        arrive(&p, "dr-3", CaregiverKind::Provider, &[wa, wa]);
        assert_eq!(p.staffing(wa), Staffing { online: 1, available: 1 }, "a state listed twice counts once");
        assert_eq!(p.staffing(or), Staffing { online: 1, available: 0 }, "dr-2 is still away");
    }

    #[test]
    fn providers_on_other_nodes_count_once() {
        let p = presence(1);
        let wa = UsState::parse("WA").unwrap();
        let record = |subject: &str, live| PresenceRecord {
            subject: subject.into(),
            name: "N".into(),
            kind: CaregiverKind::Provider,
            states: vec![wa],
            status: PresenceStatus::Available,
            live,
        };
        arrive(&p, "dr-1", CaregiverKind::Provider, &[wa]);
        let changed = p.set_remote([record("dr-1", 0), record("dr-2", 0), record("dr-3", 1)]);
        assert_eq!(changed, vec![wa]);
        assert_eq!(p.staffing(wa), Staffing { online: 3, available: 2 }, "dr-1 is here and there: once");
        assert_eq!(p.providers(&[wa]).len(), 3);
        assert!(p.set_remote([record("dr-1", 0), record("dr-2", 0), record("dr-3", 1)]).is_empty());
        assert_eq!(p.set_remote([]), vec![wa]);
        assert_eq!(p.staffing(wa), Staffing { online: 1, available: 1 });
    }

    #[test]
    fn a_pick_up_counts_from_when_the_provider_became_free_or_last_claimed() {
        let t0 = Utc.with_ymd_and_hms(2026, 11, 29, 10, 0, 0).unwrap();
        let clock = Arc::new(ManualClock::new(t0));
        let p = Presence::new(2, clock.clone());
        let wa = UsState::parse("WA").unwrap();
        arrive(&p, "dr-1", CaregiverKind::Provider, &[wa]);
        arrive(&p, "sup-1", CaregiverKind::Support, &[wa]);
        assert_eq!(p.picked_up("sup-1", t0), None, "support staff take no visits");
        assert_eq!(p.picked_up("nobody", t0), None);

        let t1 = t0 + chrono::Duration::seconds(40);
        assert_eq!(p.picked_up("dr-1", t1), Some(t0), "free since coming online");
        let t2 = t1 + chrono::Duration::seconds(15);
        assert_eq!(p.picked_up("dr-1", t2), Some(t1), "the next pick-up counts from the last claim");

        // Away: not free, no pick-up; back: free from then.
        clock.set(t2 + chrono::Duration::seconds(5));
        p.set_status("dr-1", PresenceStatus::Away);
        assert_eq!(p.picked_up("dr-1", t2 + chrono::Duration::seconds(9)), None);
        clock.set(t2 + chrono::Duration::seconds(60));
        p.set_status("dr-1", PresenceStatus::Available);
        assert_eq!(p.picked_up("dr-1", t2 + chrono::Duration::seconds(70)), Some(t2 + chrono::Duration::seconds(60)));

        // At the live-visit cap: not free until a visit ends.
        let t3 = t2 + chrono::Duration::seconds(100);
        clock.set(t3);
        p.set_live("dr-1", 2);
        assert_eq!(p.picked_up("dr-1", t3), None);
        clock.set(t3 + chrono::Duration::seconds(30));
        p.set_live("dr-1", 1);
        assert_eq!(p.picked_up("dr-1", t3 + chrono::Duration::seconds(45)), Some(t3 + chrono::Duration::seconds(30)));
    }
}
