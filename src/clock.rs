//! Time as a parameter, so expiry and throttling are testable without sleeping.
//!
//! Two readings: the wall time ([`Clock::now`], [`Clock::now_ms`]), for what is stored or
//! shared with other daemons, and a monotonic one ([`Clock::instant`]), for how long
//! something in this process has lasted (a session, a cached entry, a pause), which must
//! not jump when someone sets the system clock. A [`ManualClock`] moves both.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch; what the store keeps.
pub type UnixTime = i64;

/// Milliseconds since the Unix epoch; the throttle's delays are fractions of a second.
pub type UnixMillis = i64;

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> UnixTime;

    /// Clocks that only know seconds still work, at the start of each second.
    fn now_ms(&self) -> UnixMillis {
        self.now().saturating_mul(1000)
    }

    /// The monotonic reading: never goes back, whatever the wall time does.
    fn instant(&self) -> Instant;
}

#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> UnixTime {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0)
    }

    fn now_ms(&self) -> UnixMillis {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0)
    }

    fn instant(&self) -> Instant {
        Instant::now()
    }
}

/// A clock tests move by hand, in whole seconds or in milliseconds; clones share one time.
/// Its monotonic reading starts at the real one when it is made and moves with it.
#[derive(Clone, Debug)]
pub struct ManualClock {
    ms: Arc<AtomicI64>,
    start_ms: UnixMillis,
    start: Instant,
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::at_ms(0)
    }
}

impl ManualClock {
    pub fn at(t: UnixTime) -> Self {
        Self::at_ms(t.saturating_mul(1000))
    }

    pub fn at_ms(t: UnixMillis) -> Self {
        ManualClock {
            ms: Arc::new(AtomicI64::new(t)),
            start_ms: t,
            start: Instant::now(),
        }
    }

    pub fn advance(&self, secs: i64) {
        self.advance_ms(secs.saturating_mul(1000));
    }

    pub fn advance_ms(&self, ms: i64) {
        self.ms.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> UnixTime {
        self.now_ms().div_euclid(1000)
    }

    fn now_ms(&self) -> UnixMillis {
        self.ms.load(Ordering::SeqCst)
    }

    /// Moved as far as the wall time, but never before where it started.
    fn instant(&self) -> Instant {
        let moved = self.now_ms().saturating_sub(self.start_ms).max(0);
        self.start + Duration::from_millis(moved.unsigned_abs())
    }
}

/// Days since 1970-01-01 for a proleptic Gregorian date (Howard Hinnant's algorithm), so
/// `--expires 2027-06-01` needs no calendar crate.
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The inverse of [`days_from_civil`].
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Parses `YYYY-MM-DD` (midnight UTC) into Unix time.
pub fn parse_date(s: &str) -> Option<UnixTime> {
    let mut parts = s.trim().splitn(3, '-');
    let year: i64 = parts.next()?.parse().ok()?;
    let month: u32 = parts.next()?.parse().ok()?;
    let day: u32 = parts.next()?.parse().ok()?;
    if !(1970..=9999).contains(&year) || !(1..=12).contains(&month) || day == 0 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    // Reject 2027-02-31 and friends by converting back.
    (civil_from_days(days) == (year, month, day)).then_some(days * 86_400)
}

/// `YYYY-MM-DD HH:MM:SS` in UTC, for tables a person reads.
pub fn format_time(t: UnixTime) -> String {
    let days = t.div_euclid(86_400);
    let secs = t.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip() {
        assert_eq!(parse_date("1970-01-01"), Some(0));
        assert_eq!(parse_date("2027-06-01"), Some(1_811_808_000));
        assert_eq!(format_time(1_811_808_000 + 3661), "2027-06-01 01:01:01");
        for days in [-1000, 0, 59, 60, 365, 11_016, 20_000, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    #[test]
    fn impossible_dates_are_refused() {
        for bad in [
            "2027-02-30",
            "2027-13-01",
            "2027-00-10",
            "27-1-1x",
            "",
            "2027-06",
        ] {
            assert_eq!(parse_date(bad), None, "{bad}");
        }
        assert!(parse_date("2028-02-29").is_some());
        assert!(parse_date("2027-02-29").is_none());
    }

    #[test]
    fn manual_clock_moves() {
        let c = ManualClock::at(100);
        c.advance(5);
        assert_eq!(c.now(), 105);
        assert_eq!(c.now_ms(), 105_000);
        c.advance_ms(1_999);
        assert_eq!((c.now(), c.now_ms()), (106, 106_999));
        let start = c.instant();
        c.advance(60);
        assert_eq!(c.instant() - start, Duration::from_secs(60));
        c.advance(-3600);
        assert!(c.instant() <= start, "never before where it started");
        let before_epoch = ManualClock::at_ms(-1);
        assert_eq!(
            before_epoch.now(),
            -1,
            "seconds round down, also before 1970"
        );
    }
}
