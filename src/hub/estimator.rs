//! Wait-time estimator: from staffing and recent visit durations, the expected wait for each
//! queue position. Pure and cheap: a queue change computes one [`EstimateInputs`] and each
//! waiting patient derives its own figure from its position in O(1).

use serde::{Deserialize, Serialize};

/// Learns visit durations and pick-up delays as exponentially weighted means, so the estimate
/// follows a shift (a slow afternoon, a new provider) within a few visits and forgets old ones.
#[derive(Debug, Clone, PartialEq)]
pub struct Estimator {
    mean_visit_secs: f64,
    mean_pickup_secs: f64,
    alpha: f64,
}

/// What a state's estimator learns from what happens, shared by every node (see
/// [`crate::live::LiveState::learn`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learned {
    /// How long a visit lasts, from `in_visit` to `wrap_up`.
    VisitSecs,
    /// How long a waiting patient waits once a provider is free to take them: from the later of
    /// the patient's intake and the claiming provider becoming free (or their last claim) to
    /// the claim.
    PickupSecs,
}

/// The means a state learned so far; `None` before the first observation.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct LearnedMeans {
    pub visit_secs: Option<f64>,
    pub pickup_secs: Option<f64>,
}

impl LearnedMeans {
    pub fn get(&self, what: Learned) -> Option<f64> {
        match what {
            Learned::VisitSecs => self.visit_secs,
            Learned::PickupSecs => self.pickup_secs,
        }
    }

    pub fn set(&mut self, what: Learned, mean: f64) {
        match what {
            Learned::VisitSecs => self.visit_secs = Some(mean),
            Learned::PickupSecs => self.pickup_secs = Some(mean),
        }
    }
}

/// Providers for one state: online (available or in a visit) and available now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Staffing {
    pub online: u32,
    pub available: u32,
}

/// Everything needed to estimate any position's wait, frozen at one queue version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EstimateInputs {
    pub mean_visit_secs: u32,
    pub mean_pickup_secs: u32,
    pub staffing: Staffing,
}

impl Estimator {
    /// `alpha` in (0, 1]: the weight of the newest observation.
    pub fn new(prior_visit_secs: u32, prior_pickup_secs: u32, alpha: f64) -> Estimator {
        Estimator {
            mean_visit_secs: prior_visit_secs as f64,
            mean_pickup_secs: prior_pickup_secs as f64,
            alpha: alpha.clamp(0.01, 1.0),
        }
    }

    /// The mean learned so far (the prior before any observation).
    pub fn mean(&self, what: Learned) -> f64 {
        match what {
            Learned::VisitSecs => self.mean_visit_secs,
            Learned::PickupSecs => self.mean_pickup_secs,
        }
    }

    fn mean_mut(&mut self, what: Learned) -> &mut f64 {
        match what {
            Learned::VisitSecs => &mut self.mean_visit_secs,
            Learned::PickupSecs => &mut self.mean_pickup_secs,
        }
    }

    /// Learns one observation on this node alone (when the shared means cannot be reached).
    pub fn record(&mut self, what: Learned, secs: u64) {
        let alpha = self.alpha;
        let mean = self.mean_mut(what);
        *mean += alpha * (secs as f64 - *mean);
    }

    /// Takes the means the cluster learned (see [`crate::live::LiveState::learn`]).
    pub fn adopt(&mut self, means: LearnedMeans) {
        for what in [Learned::VisitSecs, Learned::PickupSecs] {
            if let Some(mean) = means.get(what) {
                *self.mean_mut(what) = mean;
            }
        }
    }

    pub fn alpha(&self) -> f64 {
        self.alpha
    }

    pub fn inputs(&self, staffing: Staffing) -> EstimateInputs {
        EstimateInputs {
            mean_visit_secs: self.mean_visit_secs.round() as u32,
            mean_pickup_secs: self.mean_pickup_secs.round() as u32,
            staffing,
        }
    }
}

impl EstimateInputs {
    /// Expected wait in seconds at a 1-based queue position.
    ///
    /// The first `available` positions are picked up after the usual pick-up delay. Behind
    /// them, each "round" of `online` providers frees up once per visit; a provider already
    /// in a visit is on average half-way through it, hence the half round. With nobody online
    /// the figure assumes one provider, so a patient still gets an order of magnitude.
    pub fn wait_for(&self, position: u32) -> u64 {
        let online = self.staffing.online.max(1) as u64;
        let available = self.staffing.available.min(self.staffing.online) as u64;
        let position = position.max(1) as u64;
        let pickup = self.mean_pickup_secs as u64;
        if position <= available {
            return pickup;
        }
        let behind = position - available;
        let rounds = behind.div_ceil(online);
        pickup + (rounds * 2 - 1) * self.mean_visit_secs as u64 / 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(online: u32, available: u32) -> EstimateInputs {
        Estimator::new(600, 30, 0.2).inputs(Staffing { online, available })
    }

    #[test]
    fn available_provider_means_only_pickup_delay() {
        let e = inputs(2, 1);
        assert_eq!(e.wait_for(1), 30);
        assert_eq!(e.wait_for(2), 30 + 300);
    }

    #[test]
    fn wait_grows_with_position_and_shrinks_with_staff() {
        let one = inputs(1, 0);
        assert_eq!(one.wait_for(1), 30 + 300);
        assert_eq!(one.wait_for(2), 30 + 900);
        assert_eq!(one.wait_for(3), 30 + 1500);
        let three = inputs(3, 0);
        for p in 1..50 {
            assert!(one.wait_for(p) <= one.wait_for(p + 1));
            assert!(three.wait_for(p) <= one.wait_for(p));
        }
        assert_eq!(three.wait_for(3), 30 + 300);
        assert_eq!(three.wait_for(4), 30 + 900);
    }

    #[test]
    fn nobody_online_assumes_one_provider() {
        assert_eq!(inputs(0, 0).wait_for(2), inputs(1, 0).wait_for(2));
        // "available" can never exceed "online".
        assert_eq!(inputs(0, 5).wait_for(1), inputs(1, 0).wait_for(1));
    }

    #[test]
    fn ewma_follows_observations() {
        let mut est = Estimator::new(600, 30, 0.5);
        est.record(Learned::VisitSecs, 1200);
        assert_eq!(est.inputs(Staffing::default()).mean_visit_secs, 900);
        for _ in 0..20 {
            est.record(Learned::VisitSecs, 300);
            est.record(Learned::PickupSecs, 10);
        }
        let i = est.inputs(Staffing::default());
        assert_eq!(i.mean_visit_secs, 300);
        assert_eq!(i.mean_pickup_secs, 10);
    }

    #[test]
    fn adopting_takes_only_the_means_learned() {
        let mut est = Estimator::new(600, 30, 0.5);
        est.adopt(LearnedMeans { visit_secs: None, pickup_secs: Some(12.4) });
        let i = est.inputs(Staffing::default());
        assert_eq!((i.mean_visit_secs, i.mean_pickup_secs), (600, 12));
        est.adopt(LearnedMeans { visit_secs: Some(420.0), pickup_secs: None });
        let i = est.inputs(Staffing::default());
        assert_eq!((i.mean_visit_secs, i.mean_pickup_secs), (420, 12));
    }
}
