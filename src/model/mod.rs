//! Plain data the layers share: what a visit, a caregiver and a state's settings are. No
//! behaviour beyond validation lives here; the rules are in `hub/`.

pub mod audit;
mod caregiver;
mod role;
mod settings;
mod us_state;
mod visit;

pub use audit::{AuditEntry, AuditRecord};
pub use caregiver::{Caregiver, CaregiverKind};
pub use role::Role;
pub use settings::{DayHours, Minutes, StateSettings, WeeklyHours};
pub use us_state::UsState;
pub use visit::{Actor, Visit, VisitId, VisitStatus, new_visit_id, patient_subject};
