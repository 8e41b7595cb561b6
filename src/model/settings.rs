//! Per-state settings: hours of operation, queue cap, busy flag.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::UsState;

/// Minutes after local midnight, 0..=1440, written "HH:MM" ("24:00" is the end of the day).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Minutes(pub u16);

impl Minutes {
    pub const END_OF_DAY: Minutes = Minutes(1440);

    pub fn parse(s: &str) -> Option<Minutes> {
        let (h, m) = s.split_once(':')?;
        if h.len() != 2 || m.len() != 2 {
            return None;
        }
        let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
        let total = h.checked_mul(60)?.checked_add(m)?;
        (m < 60 && total <= 1440).then_some(Minutes(total))
    }
}

impl fmt::Display for Minutes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}:{:02}", self.0 / 60, self.0 % 60)
    }
}

impl Serialize for Minutes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Minutes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Minutes::parse(&s).ok_or_else(|| serde::de::Error::custom("time must be HH:MM between 00:00 and 24:00"))
    }
}

/// One day's opening, in the state's local time; `open < close`, both on the same day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DayHours {
    pub open: Minutes,
    pub close: Minutes,
}

impl DayHours {
    pub const ALL_DAY: DayHours = DayHours { open: Minutes(0), close: Minutes::END_OF_DAY };
}

/// Opening per weekday, Monday first; `None` is closed all day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeeklyHours {
    pub mon: Option<DayHours>,
    pub tue: Option<DayHours>,
    pub wed: Option<DayHours>,
    pub thu: Option<DayHours>,
    pub fri: Option<DayHours>,
    pub sat: Option<DayHours>,
    pub sun: Option<DayHours>,
}

impl WeeklyHours {
    pub const ALWAYS_OPEN: WeeklyHours = WeeklyHours {
        mon: Some(DayHours::ALL_DAY),
        tue: Some(DayHours::ALL_DAY),
        wed: Some(DayHours::ALL_DAY),
        thu: Some(DayHours::ALL_DAY),
        fri: Some(DayHours::ALL_DAY),
        sat: Some(DayHours::ALL_DAY),
        sun: Some(DayHours::ALL_DAY),
    };

    /// Hours for a weekday numbered from Monday = 0.
    pub fn day(&self, weekday_from_monday: u32) -> Option<DayHours> {
        [self.mon, self.tue, self.wed, self.thu, self.fri, self.sat, self.sun][weekday_from_monday as usize % 7]
    }

    /// Every day has `open < close`.
    pub fn is_valid(&self) -> bool {
        (0..7).filter_map(|d| self.day(d)).all(|h| h.open < h.close)
    }
}

/// Settings of one state's queue. A state nobody configured uses [`StateSettings::default_for`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateSettings {
    pub state: UsState,
    /// IANA time zone the hours are in.
    pub time_zone: String,
    pub hours: WeeklyHours,
    /// Most visits that may wait at once.
    pub queue_cap: u32,
    /// Marked busy by staff: intake is slowed to `busy_intake_per_hour`.
    pub busy: bool,
    pub busy_intake_per_hour: u32,
}

impl StateSettings {
    pub fn default_for(state: UsState, queue_cap: u32, busy_intake_per_hour: u32) -> StateSettings {
        StateSettings {
            state,
            time_zone: state.default_time_zone().name().to_string(),
            hours: WeeklyHours::ALWAYS_OPEN,
            queue_cap,
            busy: false,
            busy_intake_per_hour,
        }
    }

    pub fn tz(&self) -> chrono_tz::Tz {
        self.time_zone.parse().unwrap_or_else(|_| self.state.default_time_zone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minutes_parse_and_print() {
        assert_eq!(Minutes::parse("08:30"), Some(Minutes(510)));
        assert_eq!(Minutes::parse("24:00"), Some(Minutes::END_OF_DAY));
        assert_eq!(Minutes::parse("24:01"), None);
        assert_eq!(Minutes::parse("8:30"), None);
        assert_eq!(Minutes::parse("08:60"), None);
        assert_eq!(Minutes(510).to_string(), "08:30");
    }

    #[test]
    fn hours_validity() {
        let mut h = WeeklyHours::ALWAYS_OPEN;
        assert!(h.is_valid());
        h.tue = Some(DayHours { open: Minutes(600), close: Minutes(600) });
        assert!(!h.is_valid());
    }
}
