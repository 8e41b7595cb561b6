//! A visit and its lifecycle.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::UsState;

/// Opaque visit id (a UUIDv7 string: sortable, carries no patient data).
pub type VisitId = String;

pub fn new_visit_id() -> VisitId {
    uuid::Uuid::now_v7().to_string()
}

/// The lifecycle `waiting -> claimed -> in_visit -> wrap_up -> ended`, plus `cancelled` and
/// `abandoned`. Only the transitions in [`VisitStatus::can_become`] exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VisitStatus {
    Waiting,
    Claimed,
    InVisit,
    WrapUp,
    Ended,
    Cancelled,
    Abandoned,
}

impl VisitStatus {
    pub const ALL: [VisitStatus; 7] = [
        VisitStatus::Waiting,
        VisitStatus::Claimed,
        VisitStatus::InVisit,
        VisitStatus::WrapUp,
        VisitStatus::Ended,
        VisitStatus::Cancelled,
        VisitStatus::Abandoned,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            VisitStatus::Waiting => "waiting",
            VisitStatus::Claimed => "claimed",
            VisitStatus::InVisit => "in_visit",
            VisitStatus::WrapUp => "wrap_up",
            VisitStatus::Ended => "ended",
            VisitStatus::Cancelled => "cancelled",
            VisitStatus::Abandoned => "abandoned",
        }
    }

    pub fn parse(s: &str) -> Option<VisitStatus> {
        VisitStatus::ALL.into_iter().find(|v| v.as_str() == s)
    }

    pub fn is_final(self) -> bool {
        matches!(self, VisitStatus::Ended | VisitStatus::Cancelled | VisitStatus::Abandoned)
    }

    /// Whether `self -> next` is a transition of the lifecycle.
    pub fn can_become(self, next: VisitStatus) -> bool {
        use VisitStatus::*;
        matches!(
            (self, next),
            (Waiting, Claimed)
                | (Waiting, Cancelled)
                | (Waiting, Abandoned)
                | (Claimed, InVisit)
                | (Claimed, Waiting)
                | (Claimed, Cancelled)
                | (Claimed, Abandoned)
                | (InVisit, WrapUp)
                | (InVisit, Abandoned)
                | (WrapUp, Ended)
        )
    }
}

/// The durable record of one visit. `display_name` and `reason` are patient details: they go
/// to the store and to entitled caregivers only, never to logs or metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Visit {
    pub id: VisitId,
    pub state: UsState,
    pub display_name: String,
    pub reason: String,
    pub status: VisitStatus,
    pub created_at: DateTime<Utc>,
    /// Estimated wait given at intake, kept to measure the estimator against the real wait.
    pub estimated_wait_secs: Option<u64>,
    /// Real wait, recorded when a provider picks the visit up.
    pub waited_secs: Option<u64>,
    /// The provider who claimed the visit, while it is claimed or later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// The state the patient last said they are in, when it differs from the queue's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported_state: Option<UsState>,
}

impl Visit {
    /// The token subject of the visit's patient.
    pub fn patient_subject(&self) -> String {
        patient_subject(&self.id)
    }

    /// Claimed, in the visit, or wrapping up: a provider holds it.
    pub fn is_live(&self) -> bool {
        matches!(self.status, VisitStatus::Claimed | VisitStatus::InVisit | VisitStatus::WrapUp)
    }
}

/// Patients have no account: their tokens name the visit, and this is their subject.
pub fn patient_subject(visit_id: &str) -> String {
    format!("patient:{visit_id}")
}

/// Who made a transition, as stored with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub subject: String,
    pub role: &'static str,
}

#[cfg(test)]
mod tests {
    use super::VisitStatus::*;
    use super::*;

    #[test]
    fn final_states_have_no_way_out() {
        for from in VisitStatus::ALL.into_iter().filter(|s| s.is_final()) {
            for to in VisitStatus::ALL {
                assert!(!from.can_become(to), "{from:?} -> {to:?}");
            }
        }
    }

    #[test]
    fn lifecycle_path_is_allowed_and_skips_are_not() {
        assert!(Waiting.can_become(Claimed));
        assert!(Claimed.can_become(InVisit));
        assert!(InVisit.can_become(WrapUp));
        assert!(WrapUp.can_become(Ended));
        assert!(!Waiting.can_become(InVisit));
        assert!(!Waiting.can_become(Ended));
        assert!(!InVisit.can_become(Cancelled));
    }

    #[test]
    fn status_strings_round_trip() {
        for s in VisitStatus::ALL {
            assert_eq!(VisitStatus::parse(s.as_str()), Some(s));
        }
    }
}
