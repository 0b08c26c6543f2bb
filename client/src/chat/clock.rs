//! Time stamps for the screen: `14:03:07` for today, `2024-05-01 14:03:07` for
//! an older day, in the user's local time.
//!
//! Local time comes from `jiff`, which reads `TZ` and the system's zone
//! database; rendering takes a [`Stamper`] so tests can use UTC instead.

use std::time::{SystemTime, UNIX_EPOCH};

use jiff::tz::TimeZone;
use jiff::Timestamp;

/// The current Unix time in seconds.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs() as i64)
        .unwrap_or(0)
}

/// Formats Unix times relative to "now" in one time zone.
#[derive(Clone, Debug)]
pub struct Stamper {
    zone: TimeZone,
    now: i64,
}

impl Stamper {
    /// Local time, with "today" taken from the clock now. A zone that
    /// cannot be found (no `TZ`, no zone files) is taken as UTC.
    pub fn local_now() -> Self {
        Stamper {
            zone: TimeZone::try_system().unwrap_or(TimeZone::UTC),
            now: unix_now(),
        }
    }

    /// UTC with a fixed "now" (for tests and reproducible output).
    pub fn utc_at(now: i64) -> Self {
        Stamper {
            zone: TimeZone::UTC,
            now,
        }
    }

    /// `HH:MM:SS` for today, `YYYY-MM-DD HH:MM:SS` otherwise.
    pub fn stamp(&self, unix: i64) -> String {
        // Server times are within jiff's range (years -9999..=9999) unless
        // a server lies; such a time is shown as the number it is.
        let Some(time) = self.civil(unix) else {
            return format!("@{unix}");
        };
        let today = self.civil(self.now).map(|now| now.date());
        if today == Some(time.date()) {
            time.strftime("%H:%M:%S").to_string()
        } else {
            time.strftime("%Y-%m-%d %H:%M:%S").to_string()
        }
    }

    fn civil(&self, unix: i64) -> Option<jiff::civil::DateTime> {
        let timestamp = Timestamp::from_second(unix).ok()?;
        Some(self.zone.to_datetime(timestamp))
    }
}

/// The `time` of a server frame (every server frame carries one); the
/// protocol types do not keep it for answers, so it is read separately.
pub fn frame_time(text: &str) -> Option<i64> {
    #[derive(serde::Deserialize)]
    struct Timed {
        time: Option<i64>,
    }
    serde_json::from_str::<Timed>(text).ok()?.time
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_time_is_read_from_the_frame() {
        assert_eq!(
            frame_time(r#"{"tag":24,"time":17,"message_id":3}"#),
            Some(17)
        );
        assert_eq!(frame_time(r#"{"tag":24}"#), None);
    }

    #[test]
    fn stamps_show_the_date_only_for_other_days() {
        // 2024-02-29 13:45:30 UTC: a leap day.
        let stamper = Stamper::utc_at(1_709_214_330);
        assert_eq!(stamper.stamp(1_709_214_330 - 60), "13:44:30");
        // 2022-01-01 00:00:00 UTC, the original protocol's example time.
        assert_eq!(stamper.stamp(1_640_995_200 + 3_727), "2022-01-01 01:02:07");
        assert_eq!(stamper.stamp(-1), "1969-12-31 23:59:59");
        assert_eq!(stamper.stamp(i64::MAX), format!("@{}", i64::MAX));
    }

    #[test]
    fn local_time_follows_the_zone() {
        let stamper = Stamper {
            zone: TimeZone::fixed(jiff::tz::offset(2)),
            now: 1_709_214_330,
        };
        assert_eq!(stamper.stamp(1_709_214_330), "15:45:30");
        // 23:30 UTC on the 28th is already the 29th two hours east.
        assert_eq!(stamper.stamp(1_709_163_000), "01:30:00");
    }
}
