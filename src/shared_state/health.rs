//! Whether Redis answers, told to the postmaster once per change and then every 30 s
//! while it lasts, never once per login; and a count of the calls memory answered instead.
//!
//! One health per connection: an outage is the same for whatever is kept in Redis (the
//! throttle's standings, the sending-limit counters), so it is told once for both, naming
//! the call that noticed it. The metrics, one per user of the connection, are counted by
//! [`super::Redis`]. Times are monotonic readings the caller takes from its `Clock`.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// While Redis stays silent, a reminder this often says it still is.
const WARN_EVERY: Duration = Duration::from_secs(30);

/// After a failed call, logins skip Redis this long: an outage costs the first login that
/// notices it one timeout, not every login one timeout each.
const PAUSE_AFTER_FAILURE: Duration = Duration::from_secs(1);

pub(super) struct Health {
    /// Calls answered from memory because Redis failed or was being skipped.
    fallbacks: AtomicU64,
    /// Read without the lock, so a working Redis costs each call one atomic load.
    down: AtomicBool,
    outage: Mutex<Outage>,
}

#[derive(Default)]
struct Outage {
    since: Option<Instant>,
    last_warning: Option<Instant>,
    pause_until: Option<Instant>,
    /// Fallbacks since the last line about the outage.
    unreported: u64,
}

/// What a failure led to, for tests that must not read logs.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Reported {
    Warned,
    Quiet,
}

impl Health {
    pub(super) fn new() -> Self {
        Health {
            fallbacks: AtomicU64::new(0),
            down: AtomicBool::new(false),
            outage: Mutex::new(Outage::default()),
        }
    }

    pub(super) fn fallbacks(&self) -> u64 {
        self.fallbacks.load(Ordering::Relaxed)
    }

    /// Whether a login should ask Redis at `now`: not during the pause after a failure.
    /// A `false` is counted as a fallback.
    pub(super) fn should_try(&self, now: Instant) -> bool {
        if !self.down.load(Ordering::Relaxed) {
            return true;
        }
        let mut outage = self.lock();
        if outage.pause_until.is_some_and(|until| now < until) {
            outage.unreported += 1;
            self.fallbacks.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// A call that failed or took too long; memory answers it instead.
    pub(super) fn failed(
        &self,
        op: &'static str,
        error: &dyn fmt::Display,
        now: Instant,
    ) -> Reported {
        self.fallbacks.fetch_add(1, Ordering::Relaxed);
        let mut outage = self.lock();
        outage.pause_until = Some(now + PAUSE_AFTER_FAILURE);
        outage.unreported += 1;
        let Some(since) = outage.since else {
            outage.since = Some(now);
            outage.last_warning = Some(now);
            outage.unreported = 0;
            self.down.store(true, Ordering::Relaxed);
            tracing::warn!(
                target: "mailauthd::redis",
                op,
                error = %error,
                "Redis does not answer; the throttle and the sending limits count in this daemon's \
                 own memory until it does (logins and mail are not refused or held for it)"
            );
            return Reported::Warned;
        };
        if outage
            .last_warning
            .is_some_and(|last| now.saturating_duration_since(last) < WARN_EVERY)
        {
            return Reported::Quiet;
        }
        tracing::warn!(
            target: "mailauthd::redis",
            op,
            error = %error,
            down_secs = now.saturating_duration_since(since).as_secs(),
            answered_from_memory = outage.unreported,
            "Redis still does not answer; the throttle and the sending limits count in this \
             daemon's own memory"
        );
        outage.last_warning = Some(now);
        outage.unreported = 0;
        Reported::Warned
    }

    /// A call Redis answered; returns whether that ended an outage.
    pub(super) fn succeeded(&self, now: Instant) -> bool {
        if !self.down.load(Ordering::Relaxed) {
            return false;
        }
        let mut outage = self.lock();
        let Some(since) = outage.since else {
            return false;
        };
        tracing::info!(
            target: "mailauthd::redis",
            down_secs = now.saturating_duration_since(since).as_secs(),
            answered_from_memory = outage.unreported,
            "Redis answers again; throttle and sending-limit state is shared again"
        );
        *outage = Outage::default();
        self.down.store(false, Ordering::Relaxed);
        true
    }

    /// Plain timestamps and counts: a panic elsewhere leaves nothing half-done that matters.
    fn lock(&self) -> std::sync::MutexGuard<'_, Outage> {
        self.outage.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::shared_state::CallError;

    fn timeout() -> CallError {
        CallError::Timeout(Duration::from_millis(250))
    }

    #[test]
    fn an_outage_warns_once_then_every_30_seconds_and_recovery_is_told() {
        let h = Health::new();
        let t0 = Instant::now();
        assert!(h.should_try(t0));
        assert!(!h.succeeded(t0), "no outage to end");

        assert_eq!(h.failed("check", &timeout(), t0), Reported::Warned);
        let quiet: Vec<Reported> = (1..30)
            .map(|s| h.failed("check", &timeout(), t0 + Duration::from_secs(s)))
            .collect();
        assert!(quiet.iter().all(|r| *r == Reported::Quiet), "{quiet:?}");
        assert_eq!(
            h.failed("check", &timeout(), t0 + Duration::from_secs(30)),
            Reported::Warned
        );
        assert_eq!(
            h.failed("check", &timeout(), t0 + Duration::from_secs(31)),
            Reported::Quiet
        );
        assert_eq!(h.fallbacks(), 32);

        assert!(h.succeeded(t0 + Duration::from_secs(40)));
        assert!(!h.succeeded(t0 + Duration::from_secs(41)), "told once");
        // A new outage is news again.
        assert_eq!(
            h.failed("record", &timeout(), t0 + Duration::from_secs(42)),
            Reported::Warned
        );
        assert_eq!(h.fallbacks(), 33);
    }

    #[test]
    fn logins_skip_redis_for_a_moment_after_a_failure() {
        let h = Health::new();
        let t0 = Instant::now();
        h.failed("check", &timeout(), t0);
        assert!(!h.should_try(t0 + Duration::from_millis(10)));
        assert!(!h.should_try(t0 + Duration::from_millis(999)));
        assert_eq!(h.fallbacks(), 3, "skipped calls are fallbacks too");
        assert!(h.should_try(t0 + PAUSE_AFTER_FAILURE));
        h.succeeded(t0 + PAUSE_AFTER_FAILURE);
        assert!(h.should_try(t0 + PAUSE_AFTER_FAILURE));
        assert_eq!(h.fallbacks(), 3);
    }
}
