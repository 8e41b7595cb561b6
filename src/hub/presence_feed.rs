//! Telling caregivers about providers' presence a batch at a time, per state. Every claim and
//! every end of a visit changes a provider's presence, and each change went to every caregiver
//! covering the state: one frame per change per caregiver, which grows with the visit rate times
//! the staff. Here the first change after a quiet spell still goes out at once; later ones within
//! [`EVERY`] wait for the next batch, which carries each changed provider once, with their newest
//! presence (latest value, as for queue boards). A caregiver gets at most a few presence frames a
//! second per state, whatever the rate, and the state's staffing estimate is refreshed once per
//! batch instead of once per change.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, Weak};
use std::time::Duration;

use tokio::time::Instant;

use super::Hub;
use crate::bus::{BusEvent, PresenceBatch, Topic};
use crate::model::UsState;
use crate::protocol::{PresenceUpdated, ProviderPresence};

/// The shortest time between two batches of one state.
pub const EVERY: Duration = Duration::from_millis(500);

#[derive(Default)]
pub struct PresenceFeed {
    states: Mutex<HashMap<UsState, Pending>>,
}

#[derive(Default)]
struct Pending {
    /// Changes not told yet: each provider's newest presence, by subject.
    changes: BTreeMap<String, ProviderPresence>,
    last_sent: Option<Instant>,
    /// When the batch waiting now goes out, if one is scheduled.
    due: Option<Instant>,
}

/// What to do after noting a change.
#[derive(Debug, PartialEq)]
pub enum Next {
    /// Send this batch now.
    Now(Vec<ProviderPresence>),
    /// Schedule the batch for then.
    At(Instant),
    /// A batch is scheduled already; the change rides with it.
    Scheduled,
}

impl PresenceFeed {
    /// Notes a provider's new presence in `state`.
    pub fn note(&self, state: UsState, presence: ProviderPresence, now: Instant) -> Next {
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        let pending = states.entry(state).or_default();
        pending.changes.insert(presence.subject.clone(), presence);
        if pending.due.is_some() {
            return Next::Scheduled;
        }
        match pending.last_sent {
            Some(last) if now < last + EVERY => {
                pending.due = Some(last + EVERY);
                Next::At(last + EVERY)
            }
            _ => {
                pending.last_sent = Some(now);
                Next::Now(std::mem::take(&mut pending.changes).into_values().collect())
            }
        }
    }

    /// The scheduled batch of `state`, taken now.
    pub fn take_due(&self, state: UsState, now: Instant) -> Vec<ProviderPresence> {
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        let pending = states.entry(state).or_default();
        pending.due = None;
        pending.last_sent = Some(now);
        std::mem::take(&mut pending.changes).into_values().collect()
    }
}

impl Hub {
    /// A provider's presence changed: caregivers where they work are told (now or with the
    /// state's next batch), and estimates there follow.
    pub(super) async fn presence_changed(&self, p: ProviderPresence) {
        let now = Instant::now();
        for state in p.states.clone() {
            match self.presence_feed.note(state, p.clone(), now) {
                Next::Now(batch) => self.send_presence(state, batch).await,
                Next::At(due) => self.schedule_presence(state, due),
                Next::Scheduled => {}
            }
        }
    }

    async fn send_presence(&self, state: UsState, providers: Vec<ProviderPresence>) {
        if providers.is_empty() {
            return;
        }
        self.publish(Topic::Staff(state), BusEvent::Presence(PresenceBatch::new(PresenceUpdated { providers }))).await;
        self.staffing_changed(vec![state]).await;
    }

    fn schedule_presence(&self, state: UsState, due: Instant) {
        let Some(hub) = self.me.get().and_then(Weak::upgrade) else { return };
        tokio::spawn(async move {
            tokio::time::sleep_until(due).await;
            let batch = hub.presence_feed.take_due(state, Instant::now());
            hub.send_presence(state, batch).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ProviderStatus;

    fn presence(subject: &str, status: ProviderStatus) -> ProviderPresence {
        ProviderPresence { subject: subject.into(), name: "N".into(), status, states: vec![wa()] }
    }

    fn wa() -> UsState {
        UsState::parse("WA").unwrap()
    }

    #[test]
    fn the_first_change_goes_at_once_and_a_burst_collapses_to_the_newest() {
        let feed = PresenceFeed::default();
        let t0 = Instant::now();
        let first = feed.note(wa(), presence("dr-1", ProviderStatus::InVisit), t0);
        assert_eq!(first, Next::Now(vec![presence("dr-1", ProviderStatus::InVisit)]));

        let soon = t0 + EVERY / 4;
        assert_eq!(feed.note(wa(), presence("dr-2", ProviderStatus::InVisit), soon), Next::At(t0 + EVERY));
        assert_eq!(feed.note(wa(), presence("dr-1", ProviderStatus::Available), soon), Next::Scheduled);
        assert_eq!(feed.note(wa(), presence("dr-2", ProviderStatus::Available), soon), Next::Scheduled);
        let batch = feed.take_due(wa(), t0 + EVERY);
        assert_eq!(
            batch,
            vec![presence("dr-1", ProviderStatus::Available), presence("dr-2", ProviderStatus::Available)],
            "each provider once, with the newest status"
        );

        // Quiet for a whole period: the next change goes at once again.
        let later = t0 + EVERY * 3;
        assert_eq!(
            feed.note(wa(), presence("dr-3", ProviderStatus::Away), later),
            Next::Now(vec![presence("dr-3", ProviderStatus::Away)])
        );
        assert!(feed.take_due(wa(), later).is_empty(), "nothing left behind");
    }

    #[test]
    fn states_batch_apart() {
        let feed = PresenceFeed::default();
        let or = UsState::parse("OR").unwrap();
        let t0 = Instant::now();
        assert!(matches!(feed.note(wa(), presence("dr-1", ProviderStatus::InVisit), t0), Next::Now(_)));
        assert!(matches!(feed.note(or, presence("dr-1", ProviderStatus::InVisit), t0), Next::Now(_)));
        assert_eq!(feed.note(or, presence("dr-1", ProviderStatus::Available), t0), Next::At(t0 + EVERY));
        assert!(feed.take_due(wa(), t0 + EVERY).is_empty());
        assert_eq!(feed.take_due(or, t0 + EVERY), vec![presence("dr-1", ProviderStatus::Available)]);
    }
}
