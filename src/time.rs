//! How carwatch writes times: RFC 3339 in UTC with milliseconds, everywhere a time
//! leaves the process (hits, statuses, alerts, errors).

use std::time::SystemTime;

use jiff::Timestamp;

/// A time as RFC 3339 in UTC with milliseconds: `2026-11-26T15:04:05.123Z`.
pub fn rfc3339(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// The same for a wall-clock `SystemTime` (empty if it is out of range).
pub fn rfc3339_system(t: SystemTime) -> String {
    Timestamp::try_from(t).map(rfc3339).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_utc_with_milliseconds() {
        let t: Timestamp = "2026-11-26T16:04:05.123456+01:00".parse().unwrap();
        assert_eq!(rfc3339(t), "2026-11-26T15:04:05.123Z");
    }
}
