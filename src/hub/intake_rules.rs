//! Whether a state's queue takes one more visit now, and if not, the refusal and when to retry.
//! Pure: the caller holds the state's intake lock and counts intakes in flight as waiting, so
//! the answer cannot go stale before the visit is stored.

use std::collections::VecDeque;

use chrono::{DateTime, Duration, Utc};

use super::hours::{Opening, opening};
use crate::error::{ErrorCode, HubError};
use crate::model::StateSettings;

/// Admissions made while the state is busy, over the last hour, to enforce the reduced rate.
/// Holds at most `busy_intake_per_hour` timestamps.
#[derive(Debug, Default, Clone)]
pub struct BusyWindow {
    admitted: VecDeque<DateTime<Utc>>,
}

impl BusyWindow {
    /// The window of admissions made at `admitted` (oldest first).
    pub fn of(admitted: impl IntoIterator<Item = DateTime<Utc>>) -> BusyWindow {
        BusyWindow { admitted: admitted.into_iter().collect() }
    }

    fn trim(&mut self, now: DateTime<Utc>) {
        while self.admitted.front().is_some_and(|t| *t <= now - Duration::hours(1)) {
            self.admitted.pop_front();
        }
    }

    pub fn record(&mut self, now: DateTime<Utc>, limit: u32) {
        self.trim(now);
        self.admitted.push_back(now);
        while self.admitted.len() > limit as usize {
            self.admitted.pop_front();
        }
    }

    pub fn clear(&mut self) {
        self.admitted.clear();
    }

    /// Seconds until one more admission fits under `limit` per hour, or `None` if one fits now.
    fn wait_for_slot(&mut self, now: DateTime<Utc>, limit: u32) -> Option<u64> {
        self.trim(now);
        if (self.admitted.len() as u64) < limit as u64 {
            return None;
        }
        let oldest = *self.admitted.front().unwrap_or(&now);
        Some(secs_until(now, oldest + Duration::hours(1)))
    }
}

/// What the queue looks like to one more patient.
pub struct IntakeContext<'a> {
    pub settings: &'a StateSettings,
    pub now: DateTime<Utc>,
    pub waiting: u32,
    /// Estimated wait at the position the new visit would take.
    pub projected_wait_secs: u64,
    /// Estimated time until a place in a full queue frees up.
    pub slot_free_secs: u64,
}

pub fn check_intake(ctx: &IntakeContext<'_>, busy: &mut BusyWindow) -> Result<(), HubError> {
    let s = ctx.settings;
    let tz = s.tz();
    let closes_at = match opening(ctx.now, tz, &s.hours) {
        Opening::Closed { opens_at } => {
            let err = HubError::new(ErrorCode::OutsideHours, "the queue for this state is closed now");
            return Err(match opens_at {
                Some(t) => err.retry_after(secs_until(ctx.now, t)),
                None => err,
            });
        }
        Opening::Open { closes_at } => closes_at,
    };
    if ctx.waiting >= s.queue_cap {
        return Err(HubError::new(ErrorCode::QueueFull, "the queue for this state is full")
            .retry_after(ctx.slot_free_secs.max(1)));
    }
    if let Some(close) = closes_at
        && ctx.now + Duration::seconds(ctx.projected_wait_secs as i64) > close
    {
        let err = HubError::new(ErrorCode::QueueClosing, "the queue could not be seen before closing today");
        return Err(match opening(close, tz, &s.hours) {
            Opening::Closed { opens_at: Some(t) } => err.retry_after(secs_until(ctx.now, t)),
            _ => err,
        });
    }
    if s.busy
        && let Some(wait) = busy.wait_for_slot(ctx.now, s.busy_intake_per_hour)
    {
        return Err(HubError::new(ErrorCode::StateBusy, "the state is busy; intake is slowed").retry_after(wait.max(1)));
    }
    Ok(())
}

fn secs_until(now: DateTime<Utc>, then: DateTime<Utc>) -> u64 {
    (then - now).num_seconds().max(0) as u64
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::model::{DayHours, Minutes, UsState, WeeklyHours};

    fn settings() -> StateSettings {
        let mut s = StateSettings::default_for(UsState::parse("WA").unwrap(), 3, 2);
        let d = Some(DayHours { open: Minutes(9 * 60), close: Minutes(17 * 60) });
        s.hours = WeeklyHours { mon: d, tue: d, wed: d, thu: d, fri: d, sat: None, sun: None };
        s
    }

    fn at(h: u32, m: u32) -> DateTime<Utc> {
        // Wednesday 2026-11-25 in Seattle.
        chrono_tz::America::Los_Angeles.with_ymd_and_hms(2026, 11, 25, h, m, 0).unwrap().with_timezone(&Utc)
    }

    fn ctx(s: &StateSettings, now: DateTime<Utc>, waiting: u32, wait: u64) -> IntakeContext<'_> {
        IntakeContext { settings: s, now, waiting, projected_wait_secs: wait, slot_free_secs: 120 }
    }

    #[test]
    fn admits_within_hours() {
        let s = settings();
        assert!(check_intake(&ctx(&s, at(10, 0), 0, 60), &mut BusyWindow::default()).is_ok());
    }

    #[test]
    fn refuses_outside_hours_with_time_to_opening() {
        let s = settings();
        let err = check_intake(&ctx(&s, at(8, 0), 0, 60), &mut BusyWindow::default()).unwrap_err();
        assert_eq!(err.code, ErrorCode::OutsideHours);
        assert_eq!(err.retry_after_secs, Some(3600));
    }

    #[test]
    fn refuses_at_cap() {
        let s = settings();
        let err = check_intake(&ctx(&s, at(10, 0), 3, 60), &mut BusyWindow::default()).unwrap_err();
        assert_eq!(err.code, ErrorCode::QueueFull);
        assert_eq!(err.retry_after_secs, Some(120));
    }

    #[test]
    fn refuses_when_wait_runs_past_closing() {
        let s = settings();
        let err = check_intake(&ctx(&s, at(16, 30), 1, 3600), &mut BusyWindow::default()).unwrap_err();
        assert_eq!(err.code, ErrorCode::QueueClosing);
        // Next opening is tomorrow 09:00, 16.5 hours away.
        assert_eq!(err.retry_after_secs, Some(16 * 3600 + 1800));
        assert!(check_intake(&ctx(&s, at(16, 30), 1, 1700), &mut BusyWindow::default()).is_ok());
    }

    #[test]
    fn busy_state_takes_its_reduced_rate_then_refuses() {
        let mut s = settings();
        s.busy = true;
        let mut window = BusyWindow::default();
        for minute in 0..2 {
            let now = at(10, minute);
            check_intake(&ctx(&s, now, 0, 60), &mut window).unwrap();
            window.record(now, s.busy_intake_per_hour);
        }
        let err = check_intake(&ctx(&s, at(10, 30), 0, 60), &mut window).unwrap_err();
        assert_eq!(err.code, ErrorCode::StateBusy);
        assert_eq!(err.retry_after_secs, Some(30 * 60));
        // An hour after the first admission a slot frees up.
        assert!(check_intake(&ctx(&s, at(11, 0), 0, 60), &mut window).is_ok());
    }
}
