//! US states and territories a patient can be in, with the time zone their hours use by default.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{ErrorCode, HubError};

/// (code, IANA time zone of the most populous part). A state spanning zones can override its
/// zone in its settings.
const STATES: &[(&str, &str)] = &[
    ("AL", "America/Chicago"),
    ("AK", "America/Anchorage"),
    ("AZ", "America/Phoenix"),
    ("AR", "America/Chicago"),
    ("CA", "America/Los_Angeles"),
    ("CO", "America/Denver"),
    ("CT", "America/New_York"),
    ("DE", "America/New_York"),
    ("DC", "America/New_York"),
    ("FL", "America/New_York"),
    ("GA", "America/New_York"),
    ("HI", "Pacific/Honolulu"),
    ("ID", "America/Boise"),
    ("IL", "America/Chicago"),
    ("IN", "America/Indiana/Indianapolis"),
    ("IA", "America/Chicago"),
    ("KS", "America/Chicago"),
    ("KY", "America/New_York"),
    ("LA", "America/Chicago"),
    ("ME", "America/New_York"),
    ("MD", "America/New_York"),
    ("MA", "America/New_York"),
    ("MI", "America/Detroit"),
    ("MN", "America/Chicago"),
    ("MS", "America/Chicago"),
    ("MO", "America/Chicago"),
    ("MT", "America/Denver"),
    ("NE", "America/Chicago"),
    ("NV", "America/Los_Angeles"),
    ("NH", "America/New_York"),
    ("NJ", "America/New_York"),
    ("NM", "America/Denver"),
    ("NY", "America/New_York"),
    ("NC", "America/New_York"),
    ("ND", "America/Chicago"),
    ("OH", "America/New_York"),
    ("OK", "America/Chicago"),
    ("OR", "America/Los_Angeles"),
    ("PA", "America/New_York"),
    ("RI", "America/New_York"),
    ("SC", "America/New_York"),
    ("SD", "America/Chicago"),
    ("TN", "America/Chicago"),
    ("TX", "America/Chicago"),
    ("UT", "America/Denver"),
    ("VT", "America/New_York"),
    ("VA", "America/New_York"),
    ("WA", "America/Los_Angeles"),
    ("WV", "America/New_York"),
    ("WI", "America/Chicago"),
    ("WY", "America/Denver"),
    ("PR", "America/Puerto_Rico"),
    ("VI", "America/St_Thomas"),
    ("GU", "Pacific/Guam"),
    ("AS", "Pacific/Pago_Pago"),
    ("MP", "Pacific/Saipan"),
];

/// A validated two-letter code. Holding one proves the code is a US state or territory.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UsState(u8);

impl UsState {
    /// How many states and territories there are; `index` is below it.
    pub const COUNT: usize = STATES.len();

    /// Accepts the code in either case; anything else is `invalid_state_code`.
    pub fn parse(code: &str) -> Result<UsState, HubError> {
        let upper = code.trim().to_ascii_uppercase();
        STATES.iter().position(|(c, _)| *c == upper).map(|i| UsState(i as u8)).ok_or_else(|| {
            HubError::new(ErrorCode::InvalidStateCode, "state must be a two-letter US state or territory code")
        })
    }

    pub fn code(self) -> &'static str {
        STATES[self.0 as usize].0
    }

    pub fn default_time_zone(self) -> chrono_tz::Tz {
        STATES[self.0 as usize].1.parse().expect("table holds valid IANA zone names")
    }

    /// A dense number from 0 to `COUNT - 1`, for tables indexed by state.
    pub fn index(self) -> usize {
        self.0 as usize
    }

    pub fn all() -> impl Iterator<Item = UsState> {
        (0..Self::COUNT).map(|i| UsState(i as u8))
    }
}

impl fmt::Display for UsState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl fmt::Debug for UsState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl Serialize for UsState {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.code())
    }
}

impl<'de> Deserialize<'de> for UsState {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        UsState::parse(&s).map_err(|e| serde::de::Error::custom(e.message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_states_and_territories_in_any_case() {
        assert_eq!(UsState::parse("wa").unwrap().code(), "WA");
        assert_eq!(UsState::parse("PR").unwrap().code(), "PR");
        assert_eq!(UsState::parse("DC").unwrap().code(), "DC");
    }

    #[test]
    fn refuses_unknown_codes() {
        for bad in ["", "W", "WAS", "XX", "ZZ", "12"] {
            let err = UsState::parse(bad).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidStateCode);
        }
    }

    #[test]
    fn every_state_has_a_valid_zone() {
        assert_eq!(UsState::all().count(), 56);
        for s in UsState::all() {
            let _ = s.default_time_zone();
        }
        assert_eq!(UsState::parse("WA").unwrap().default_time_zone(), chrono_tz::America::Los_Angeles);
    }
}
