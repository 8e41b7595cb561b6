//! Hours of operation: is a state's queue open now, when does it close, when does it open next.
//! Pure functions of the clock, the state's time zone and its weekly hours.

use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveDateTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;

use crate::model::WeeklyHours;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opening {
    /// Open now; `closes_at` is `None` when the queue never closes (open around the clock).
    Open { closes_at: Option<DateTime<Utc>> },
    /// Closed now; `opens_at` is `None` when no day of the week opens.
    Closed { opens_at: Option<DateTime<Utc>> },
}

pub fn opening(now: DateTime<Utc>, tz: Tz, hours: &WeeklyHours) -> Opening {
    let local = now.with_timezone(&tz);
    let date = local.date_naive();
    let minute = (local.hour() * 60 + local.minute()) as u16;
    let weekday = local.weekday().num_days_from_monday();

    if let Some(today) = hours.day(weekday)
        && today.open.0 <= minute
        && minute < today.close.0
    {
        return Opening::Open { closes_at: closing_time(date, weekday, hours, tz) };
    }
    for ahead in 0..8u32 {
        let Some(day) = hours.day(weekday + ahead) else {
            continue;
        };
        if ahead == 0 && day.open.0 <= minute {
            continue;
        }
        let day_date = date + Duration::days(ahead as i64);
        return Opening::Closed { opens_at: Some(to_utc(day_date, day.open.0, tz)) };
    }
    Opening::Closed { opens_at: None }
}

/// When today's opening ends, following days that continue it without a break
/// (closing at 24:00 and opening at 00:00 the next day).
fn closing_time(date: NaiveDate, weekday: u32, hours: &WeeklyHours, tz: Tz) -> Option<DateTime<Utc>> {
    for ahead in 0..7u32 {
        let day = hours.day(weekday + ahead)?;
        let continues = day.close.0 == 1440 && hours.day(weekday + ahead + 1).is_some_and(|next| next.open.0 == 0);
        if !continues {
            return Some(to_utc(date + Duration::days(ahead as i64), day.close.0, tz));
        }
    }
    None
}

/// Local wall-clock minutes on a date to UTC. A time that does not exist (spring forward) is
/// taken an hour later; an ambiguous one (fall back) the earlier.
fn to_utc(date: NaiveDate, minutes: u16, tz: Tz) -> DateTime<Utc> {
    let naive: NaiveDateTime = date.and_hms_opt(0, 0, 0).expect("midnight exists") + Duration::minutes(minutes as i64);
    tz.from_local_datetime(&naive)
        .earliest()
        .or_else(|| tz.from_local_datetime(&(naive + Duration::hours(1))).earliest())
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(|| Utc.from_utc_datetime(&naive))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DayHours, Minutes};

    fn m(minutes: u16) -> Minutes {
        Minutes(minutes)
    }

    fn weekdays_9_to_17() -> WeeklyHours {
        let d = Some(DayHours { open: m(9 * 60), close: m(17 * 60) });
        WeeklyHours { mon: d, tue: d, wed: d, thu: d, fri: d, sat: None, sun: None }
    }

    fn la(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        chrono_tz::America::Los_Angeles.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn open_during_hours_with_closing_time() {
        // 2026-11-25 is a Wednesday.
        let now = la(2026, 11, 25, 10, 0);
        assert_eq!(
            opening(now, chrono_tz::America::Los_Angeles, &weekdays_9_to_17()),
            Opening::Open { closes_at: Some(la(2026, 11, 25, 17, 0)) }
        );
    }

    #[test]
    fn closed_before_opening_and_after_closing() {
        let hours = weekdays_9_to_17();
        let tz = chrono_tz::America::Los_Angeles;
        assert_eq!(
            opening(la(2026, 11, 25, 7, 0), tz, &hours),
            Opening::Closed { opens_at: Some(la(2026, 11, 25, 9, 0)) }
        );
        assert_eq!(
            opening(la(2026, 11, 25, 17, 0), tz, &hours),
            Opening::Closed { opens_at: Some(la(2026, 11, 26, 9, 0)) }
        );
        // Friday evening opens on Monday.
        assert_eq!(
            opening(la(2026, 11, 27, 18, 0), tz, &hours),
            Opening::Closed { opens_at: Some(la(2026, 11, 30, 9, 0)) }
        );
    }

    #[test]
    fn around_the_clock_never_closes_and_closed_week_never_opens() {
        let tz = chrono_tz::America::New_York;
        let now = la(2026, 11, 25, 3, 0);
        assert_eq!(opening(now, tz, &WeeklyHours::ALWAYS_OPEN), Opening::Open { closes_at: None });
        let closed = WeeklyHours { mon: None, tue: None, wed: None, thu: None, fri: None, sat: None, sun: None };
        assert_eq!(opening(now, tz, &closed), Opening::Closed { opens_at: None });
    }

    #[test]
    fn overnight_continuation_closes_at_the_last_break() {
        let tz = chrono_tz::America::Los_Angeles;
        let mut hours = WeeklyHours::ALWAYS_OPEN;
        hours.thu = Some(DayHours { open: m(0), close: m(12 * 60) });
        // Monday 10:00: open through Thursday noon.
        assert_eq!(
            opening(la(2026, 11, 23, 10, 0), tz, &hours),
            Opening::Open { closes_at: Some(la(2026, 11, 26, 12, 0)) }
        );
    }

    #[test]
    fn hours_follow_the_state_zone_across_dst() {
        let tz = chrono_tz::America::Los_Angeles;
        // 2026-03-09 (Monday after spring forward): 09:00 PDT is 16:00 UTC.
        let opens = match opening(la(2026, 3, 9, 8, 0), tz, &weekdays_9_to_17()) {
            Opening::Closed { opens_at } => opens_at.unwrap(),
            other => panic!("{other:?}"),
        };
        assert_eq!(opens, Utc.with_ymd_and_hms(2026, 3, 9, 16, 0, 0).unwrap());
    }
}
