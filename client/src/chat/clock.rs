//! Time stamps for the screen: `14:03:07` for today, `2024-05-01 14:03:07` for
//! an older day, in the user's local time.
//!
//! Local time comes from the C library's `localtime_r` (which reads `TZ` and
//! the system zone file); a whole date-time crate is not needed for one
//! conversion. Rendering takes a [`Stamper`] so tests can use UTC instead.

use std::time::{SystemTime, UNIX_EPOCH};

/// A calendar date and time of day.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CivilTime {
    /// Full year, e.g. 2024.
    pub year: i64,
    /// 1–12.
    pub month: u32,
    /// 1–31.
    pub day: u32,
    /// 0–23.
    pub hour: u32,
    /// 0–59.
    pub minute: u32,
    /// 0–60 (a leap second may show as 60).
    pub second: u32,
}

impl CivilTime {
    fn same_day(&self, other: &CivilTime) -> bool {
        (self.year, self.month, self.day) == (other.year, other.month, other.day)
    }
}

/// The current Unix time in seconds.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs() as i64)
        .unwrap_or(0)
}

/// `unix` seconds as a UTC calendar time (Howard Hinnant's `civil_from_days`).
pub fn utc(unix: i64) -> CivilTime {
    let days = unix.div_euclid(86_400);
    let seconds_of_day = unix.rem_euclid(86_400) as u32;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * shifted_month + 2) / 5 + 1) as u32;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    CivilTime {
        year,
        month,
        day,
        hour: seconds_of_day / 3600,
        minute: seconds_of_day / 60 % 60,
        second: seconds_of_day % 60,
    }
}

/// `unix` seconds in the local time zone; UTC if the C library cannot say.
pub fn local(unix: i64) -> CivilTime {
    // time_t is 64-bit on every platform this client targets; the cast is
    // exact there.
    let time = unix as libc::time_t;
    // SAFETY: `tm` is plain old data that `localtime_r` fills in; both
    // pointers are valid for the call, and the reentrant variant touches no
    // shared buffer.
    let mut parts: libc::tm = unsafe { std::mem::zeroed() };
    let filled = unsafe { libc::localtime_r(&time, &mut parts) };
    if filled.is_null() {
        return utc(unix);
    }
    CivilTime {
        year: i64::from(parts.tm_year) + 1900,
        month: (parts.tm_mon + 1) as u32,
        day: parts.tm_mday as u32,
        hour: parts.tm_hour as u32,
        minute: parts.tm_min as u32,
        second: parts.tm_sec as u32,
    }
}

/// Formats Unix times relative to "now" in one time zone.
#[derive(Clone, Copy, Debug)]
pub struct Stamper {
    civil: fn(i64) -> CivilTime,
    now: i64,
}

impl Stamper {
    /// Local time, with "today" taken from the clock now.
    pub fn local_now() -> Self {
        Stamper {
            civil: local,
            now: unix_now(),
        }
    }

    /// UTC with a fixed "now" (for tests and reproducible output).
    pub fn utc_at(now: i64) -> Self {
        Stamper { civil: utc, now }
    }

    /// `HH:MM:SS` for today, `YYYY-MM-DD HH:MM:SS` otherwise.
    pub fn stamp(&self, unix: i64) -> String {
        let time = (self.civil)(unix);
        let clock = format!("{:02}:{:02}:{:02}", time.hour, time.minute, time.second);
        if time.same_day(&(self.civil)(self.now)) {
            clock
        } else {
            format!("{:04}-{:02}-{:02} {clock}", time.year, time.month, time.day)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_conversion_matches_known_dates() {
        let epoch = utc(0);
        assert_eq!((epoch.year, epoch.month, epoch.day), (1970, 1, 1));
        // 2022-01-01 00:00:00 UTC, the original protocol's example time.
        let t = utc(1_640_995_200);
        assert_eq!((t.year, t.month, t.day, t.hour), (2022, 1, 1, 0));
        // 2024-02-29 13:45:30 UTC: a leap day.
        let t = utc(1_709_214_330);
        assert_eq!(
            (t.year, t.month, t.day, t.hour, t.minute, t.second),
            (2024, 2, 29, 13, 45, 30)
        );
        let t = utc(-1);
        assert_eq!((t.year, t.month, t.day, t.hour), (1969, 12, 31, 23));
    }

    #[test]
    fn stamps_show_the_date_only_for_other_days() {
        let stamper = Stamper::utc_at(1_709_214_330);
        assert_eq!(stamper.stamp(1_709_214_330 - 60), "13:44:30");
        assert_eq!(stamper.stamp(1_640_995_200 + 3_727), "2022-01-01 01:02:07");
    }

    #[test]
    fn local_time_agrees_with_utc_when_tz_is_utc_or_differs_by_whole_minutes() {
        let now = unix_now();
        let (here, there) = (local(now), utc(now));
        assert_eq!(here.second, there.second);
    }
}
