//! Which caregivers are online, and for providers whether they are available. Feeds the
//! estimator's staffing figures. A caregiver with several sockets is online while any is open.

use std::collections::HashMap;
use std::sync::Mutex;

use super::estimator::Staffing;
use crate::model::{CaregiverKind, UsState};
use crate::protocol::PresenceStatus;

struct Entry {
    kind: CaregiverKind,
    states: Vec<UsState>,
    sessions: u32,
    status: PresenceStatus,
}

#[derive(Default)]
pub struct Presence {
    caregivers: Mutex<HashMap<String, Entry>>,
}

impl Presence {
    /// A caregiver's socket opened. Returns the states whose staffing may have changed.
    pub fn connect(&self, subject: &str, kind: CaregiverKind, states: &[UsState]) -> Vec<UsState> {
        let mut map = self.caregivers.lock().unwrap_or_else(|e| e.into_inner());
        let entry = map.entry(subject.to_string()).or_insert_with(|| Entry {
            kind,
            states: Vec::new(),
            sessions: 0,
            status: PresenceStatus::Available,
        });
        entry.sessions += 1;
        entry.kind = kind;
        entry.states = states.to_vec();
        entry.states.clone()
    }

    /// A caregiver's socket closed.
    pub fn disconnect(&self, subject: &str) -> Vec<UsState> {
        let mut map = self.caregivers.lock().unwrap_or_else(|e| e.into_inner());
        let Some(entry) = map.get_mut(subject) else {
            return Vec::new();
        };
        entry.sessions = entry.sessions.saturating_sub(1);
        let states = entry.states.clone();
        if entry.sessions == 0 {
            map.remove(subject);
        }
        states
    }

    pub fn set_status(&self, subject: &str, status: PresenceStatus) -> Vec<UsState> {
        let mut map = self.caregivers.lock().unwrap_or_else(|e| e.into_inner());
        match map.get_mut(subject) {
            Some(entry) if entry.status != status => {
                entry.status = status;
                entry.states.clone()
            }
            _ => Vec::new(),
        }
    }

    /// Providers online for `state`, and how many of them are available.
    pub fn staffing(&self, state: UsState) -> Staffing {
        let map = self.caregivers.lock().unwrap_or_else(|e| e.into_inner());
        let mut staffing = Staffing::default();
        for entry in map
            .values()
            .filter(|e| e.kind == CaregiverKind::Provider && e.states.contains(&state))
        {
            staffing.online += 1;
            if entry.status == PresenceStatus::Available {
                staffing.available += 1;
            }
        }
        staffing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_providers_per_state_across_sessions() {
        let p = Presence::default();
        let wa = UsState::parse("WA").unwrap();
        let or = UsState::parse("OR").unwrap();
        p.connect("dr-1", CaregiverKind::Provider, &[wa, or]);
        p.connect("dr-1", CaregiverKind::Provider, &[wa, or]);
        p.connect("dr-2", CaregiverKind::Provider, &[or]);
        p.connect("sup-1", CaregiverKind::Support, &[wa]);
        assert_eq!(
            p.staffing(wa),
            Staffing {
                online: 1,
                available: 1
            }
        );
        assert_eq!(
            p.staffing(or),
            Staffing {
                online: 2,
                available: 2
            }
        );

        assert_eq!(p.set_status("dr-2", PresenceStatus::Away), vec![or]);
        assert_eq!(
            p.staffing(or),
            Staffing {
                online: 2,
                available: 1
            }
        );

        p.disconnect("dr-1");
        assert_eq!(
            p.staffing(wa),
            Staffing {
                online: 1,
                available: 1
            }
        );
        p.disconnect("dr-1");
        assert_eq!(
            p.staffing(wa),
            Staffing {
                online: 0,
                available: 0
            }
        );
    }
}
