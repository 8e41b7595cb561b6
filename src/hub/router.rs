//! Local fan-out: which sessions of this node listen to which topic. Delivery never blocks: a
//! session whose bounded inbox is full is cut off as a slow consumer, never waited for.

use std::sync::Arc;

use dashmap::DashMap;

use super::alarm::Alarm;
use crate::bus::{BusEvent, Topic};

/// A session as the router sees it.
#[derive(Clone)]
pub struct SessionLink {
    pub id: u64,
    /// Whose session it is: a user's own signals and typing are not sent back to them.
    pub subject: Arc<str>,
    /// The session's inbox; an overflowing one closes it as a slow consumer.
    pub alarm: Arc<Alarm>,
}

impl SessionLink {
    /// Hands the session `event` without waiting.
    fn deliver(&self, event: &Arc<BusEvent>) {
        self.alarm.deliver(event);
    }
}

#[derive(Default)]
pub struct Router {
    topics: DashMap<Topic, Vec<SessionLink>>,
}

impl Router {
    /// Adds a subscriber; true when it is the first on this node (subscribe on the bus).
    pub fn add(&self, topic: Topic, link: SessionLink) -> bool {
        let mut links = self.topics.entry(topic).or_default();
        if links.iter().any(|l| l.id == link.id) {
            return false;
        }
        // Most topics have one listener on a node (a user's own, a visit's patient): room for
        // exactly that one, not the four a first push reserves. More grow as usual (doubling).
        if links.capacity() == 0 {
            links.reserve_exact(1);
        }
        links.push(link);
        links.len() == 1
    }

    /// Removes a subscriber; true when it was the last on this node (unsubscribe on the bus).
    pub fn remove(&self, topic: &Topic, session_id: u64) -> bool {
        let Some(mut links) = self.topics.get_mut(topic) else {
            return false;
        };
        let before = links.len();
        links.retain(|l| l.id != session_id);
        let emptied = before > 0 && links.is_empty();
        drop(links);
        if emptied {
            self.topics.remove_if(topic, |_, links| links.is_empty());
        }
        emptied
    }

    /// Hands `event` to every session of this node, once each.
    pub fn dispatch_all(&self, event: Arc<BusEvent>) {
        let mut seen = std::collections::HashSet::new();
        for links in self.topics.iter() {
            for link in links.iter().filter(|l| seen.insert(l.id)) {
                link.deliver(&event);
            }
        }
    }

    /// Hands `event` to the sessions listening to `topic`, except those of the user who sent it:
    /// waking a session only for it to drop its own echo doubled the work of every relay.
    pub fn dispatch(&self, topic: &Topic, event: Arc<BusEvent>) {
        let Some(links) = self.topics.get(topic) else {
            return;
        };
        let sender = event.sender();
        for link in links.iter().filter(|l| sender != Some(&*l.subject)) {
            link.deliver(&event);
        }
    }

    #[cfg(test)]
    pub fn topic_count(&self) -> usize {
        self.topics.len()
    }

    #[cfg(test)]
    fn capacity_of(&self, topic: &Topic) -> usize {
        self.topics.get(topic).map_or(0, |links| links.capacity())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::hub::alarm::OVERFLOW;

    fn link(id: u64, capacity: usize) -> (SessionLink, Arc<Alarm>) {
        let alarm = Arc::new(Alarm::new(capacity));
        (SessionLink { id, subject: format!("user-{id}").into(), alarm: alarm.clone() }, alarm)
    }

    /// The events the session could take now.
    fn taken(alarm: &Alarm) -> usize {
        std::iter::from_fn(|| alarm.try_event()).count()
    }

    fn event() -> Arc<BusEvent> {
        Arc::new(BusEvent::AccessChanged { subject: "x".into() })
    }

    #[test]
    fn first_and_last_subscriber_are_reported() {
        let router = Router::default();
        let topic = Topic::Subject("x".into());
        let (a, _ra) = link(1, 4);
        let (b, _rb) = link(2, 4);
        assert!(router.add(topic.clone(), a));
        assert!(!router.add(topic.clone(), b));
        assert!(!router.remove(&topic, 1));
        assert!(router.remove(&topic, 2));
        assert_eq!(router.topic_count(), 0);
    }

    #[test]
    fn a_topic_with_one_listener_reserves_room_for_one() {
        let router = Router::default();
        let topic = Topic::Subject("x".into());
        let (a, ra) = link(1, 4);
        let (b, rb) = link(2, 4);
        router.add(topic.clone(), a);
        assert_eq!(router.capacity_of(&topic), 1);
        router.add(topic.clone(), b);
        assert!(router.capacity_of(&topic) >= 2);
        for id in 3..=65 {
            router.add(topic.clone(), link(id, 4).0);
        }
        // Grown as usual, not one at a time (a reallocation for every listener).
        assert!(router.capacity_of(&topic) > 65);
        router.dispatch(&topic, event());
        assert_eq!((taken(&ra), taken(&rb)), (1, 1));
    }

    #[test]
    fn a_full_inbox_marks_the_session_slow_and_spares_the_others() {
        let router = Router::default();
        let topic = Topic::Subject("x".into());
        let (slow, slow_alarm) = link(1, 1);
        let (fast, fast_alarm) = link(2, 8);
        router.add(topic.clone(), slow);
        router.add(topic.clone(), fast);
        router.dispatch(&topic, event());
        assert!(!slow_alarm.is_raised(OVERFLOW));
        router.dispatch(&topic, event());
        assert!(slow_alarm.is_raised(OVERFLOW));
        assert_eq!(taken(&fast_alarm), 2);
        assert!(!fast_alarm.is_raised(OVERFLOW));
    }

    #[test]
    fn a_signal_reaches_the_other_party_and_not_the_senders_own_sessions() {
        use crate::bus::Signal;
        use crate::protocol::SignalEnd;
        let router = Router::default();
        let topic = Topic::Signal("v-1".into());
        let (sender, sender_rx) = link(1, 4);
        let (peer, peer_rx) = link(2, 4);
        router.add(topic.clone(), sender);
        router.add(topic.clone(), peer);
        let signal = Signal::EndOfCandidates(SignalEnd { visit_id: "v-1".into(), from: None });
        let event = BusEvent::Signal { from_subject: "user-1".into(), signal, received_at_us: 0 };
        router.dispatch(&topic, Arc::new(event));
        assert_eq!(taken(&peer_rx), 1);
        assert_eq!(taken(&sender_rx), 0, "the sender's own session is not woken by its echo");
    }
}
