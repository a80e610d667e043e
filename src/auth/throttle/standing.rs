//! The rules both backends read by: which keys an attempt counts against, where a key
//! stands, the verdict and the delay that follow, and how an attempt ends.
//!
//! Nothing here keeps state. [`super::MemoryThrottle`] and the shared standings (see
//! [`super::SharedStandings`]) store counts; these functions say what the counts mean, so
//! one daemon alone and several sharing Redis decide alike.

use std::net::IpAddr;
use std::time::Duration;

use super::keys::{BlockInfo, KeyKind, ThrottleKey};
use super::settings::ThrottleConfig;
use crate::audit::canonical_ip;
use crate::clock::UnixMillis;

/// A network is relaxed by a success at most this often, so an attacker who owns one
/// account cannot interleave its own good logins to wash away failures against others.
pub(crate) const RELAX_INTERVAL_MS: i64 = 60_000;

/// What the throttle says about an attempt before any credential is looked at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Go ahead after waiting this long.
    Delay(Duration),
    /// Refuse until `until`; `key` is the network or account that is blocked.
    Blocked {
        until: UnixMillis,
        key: ThrottleKey,
    },
}

/// An attempt as the throttle sees it when it arrives, before anything is decided.
#[derive(Clone, Copy, Debug)]
pub struct Attempt<'a> {
    pub rip: Option<IpAddr>,
    /// The canonical address, or the login text when it is no address.
    pub account: &'a str,
    /// [`super::Fingerprinter::fingerprint`] of the account and the secret.
    pub fingerprint: u64,
    /// The secret is nothing anyone guesses: shaped like an app password (about 94 random
    /// bits), or an access token (signed by the provider, or known to it). The account's
    /// standing never holds it up, so strangers cannot lock the owner's webmail or mail
    /// clients out; its failures still count, and its network's standing still holds it.
    pub unguessable: bool,
    /// `false` for Dovecot's `no-penalty`: delays and blocks apply, nothing is counted.
    pub counted: bool,
}

/// How an admitted attempt ended, as far as the throttle cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settlement {
    /// A wrong guess, or an attempt the hash pool was too busy to check: counted against
    /// its network and account as if it had come alone.
    Failure,
    /// Relaxes its network, clears its account and remembers the network as the owner's.
    Success,
    /// Not a guess (an outage, a service not served here): only its reservation ends.
    Neither,
}

/// The keys an attempt is held up by and charged to.
#[derive(Debug, Default)]
pub(super) struct Plan {
    /// Checked for delays and blocks, reserved while in flight, charged on failure.
    pub(super) held: Vec<ThrottleKey>,
    /// Charged on failure but never holding the attempt up: the account, for a login from
    /// a network its owner used recently.
    pub(super) charged_only: Vec<ThrottleKey>,
}

impl Plan {
    pub(super) fn charged(&self) -> impl Iterator<Item = &ThrottleKey> {
        self.held.iter().chain(&self.charged_only)
    }
}

/// The keys an attempt from `rip` for `account` is counted against, whichever backend
/// keeps them; `None` when there are none (the throttle is off, the source is trusted, or
/// the attempt names neither a source nor an account).
pub(super) fn counted_keys(
    config: &ThrottleConfig,
    rip: Option<IpAddr>,
    account: &str,
) -> Option<Vec<ThrottleKey>> {
    if !config.enabled {
        return None;
    }
    let mut keys = Vec::with_capacity(2);
    if let Some(ip) = rip {
        let ip = canonical_ip(ip);
        if config.trusted_networks.iter().any(|n| n.contains(&ip)) {
            return None;
        }
        keys.push(ThrottleKey::network_of(ip));
    }
    if !account.trim().is_empty() {
        keys.push(ThrottleKey::account(account));
    }
    (!keys.is_empty()).then_some(keys)
}

/// The strictest of the keys' standings: the block that ends last, else the longest delay.
pub(super) fn verdict(standings: Vec<(ThrottleKey, Standing)>, config: &ThrottleConfig) -> Verdict {
    let mut delay = Duration::ZERO;
    let mut blocked: Option<(UnixMillis, ThrottleKey)> = None;
    for (key, standing) in standings {
        match standing {
            Standing::Blocked(until) => {
                if blocked.as_ref().is_none_or(|(u, _)| until > *u) {
                    blocked = Some((until, key));
                }
            }
            Standing::Counting(failures) => delay = delay.max(delay_for(config, failures)),
            Standing::Gone => {}
        }
    }
    match blocked {
        Some((until, key)) => Verdict::Blocked { until, key },
        None if delay.is_zero() => Verdict::Allow,
        None => Verdict::Delay(delay),
    }
}

pub(super) fn delay_for(config: &ThrottleConfig, failures: u32) -> Duration {
    let Some(doublings) = failures.checked_sub(config.free_failures) else {
        return Duration::ZERO;
    };
    let factor = 1u32 << doublings.min(20);
    config
        .base_delay
        .saturating_mul(factor)
        .min(config.max_delay)
}

/// The stricter of two standings of one key: the later block, else the higher count.
pub(super) fn stricter(a: Standing, b: Standing) -> Standing {
    match (a, b) {
        (Standing::Blocked(x), Standing::Blocked(y)) => Standing::Blocked(x.max(y)),
        (Standing::Blocked(x), _) | (_, Standing::Blocked(x)) => Standing::Blocked(x),
        (Standing::Counting(x), Standing::Counting(y)) => Standing::Counting(x.max(y)),
        (Standing::Counting(x), Standing::Gone) | (Standing::Gone, Standing::Counting(x)) => {
            Standing::Counting(x)
        }
        (Standing::Gone, Standing::Gone) => Standing::Gone,
    }
}

/// `standing` with `pending` attempts in flight counted as failures: enough of them to
/// reach the block threshold refuse the next attempt as if the block were already set.
pub(super) fn with_in_flight(
    key: &ThrottleKey,
    standing: Standing,
    pending: u32,
    now: UnixMillis,
    config: &ThrottleConfig,
) -> Standing {
    let failures = match standing {
        Standing::Blocked(_) => return standing,
        Standing::Gone => pending,
        Standing::Counting(failures) => failures.saturating_add(pending),
    };
    let threshold = block_after(config, key.kind());
    if threshold > 0 && failures >= threshold {
        Standing::Blocked(now)
    } else if failures == 0 {
        Standing::Gone
    } else {
        Standing::Counting(failures)
    }
}

/// Failures within the window that block a key of this kind; 0 never blocks.
pub(crate) fn block_after(config: &ThrottleConfig, kind: KeyKind) -> u32 {
    match kind {
        KeyKind::Network => config.network_block_after,
        KeyKind::Account => config.account_block_after,
    }
}

/// Blocked first (latest end first), then most failures, then by key.
pub(crate) fn sort_listing(all: &mut [BlockInfo]) {
    all.sort_by(|a, b| {
        b.blocked_until
            .cmp(&a.blocked_until)
            .then(b.failures.cmp(&a.failures))
            .then(a.key.cmp(&b.key))
    });
}

/// One line per block set, from whichever daemon's attempt set it.
pub(crate) fn log_block(key: &ThrottleKey, failures: u32, config: &ThrottleConfig) {
    tracing::warn!(
        target: "mailauthd::throttle",
        key = %key,
        kind = key.kind().name(),
        failures,
        blocked_secs = config.block_duration.as_secs(),
        "blocked after repeated failures"
    );
}

/// Where a key stands at some moment.
#[derive(Clone, Debug)]
pub enum Standing {
    /// Nothing to hold against it (never failed, window passed, or block served).
    Gone,
    Counting(u32),
    Blocked(UnixMillis),
}

/// What is counted against one key, as either backend keeps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counts {
    /// Failures within the window (repeats of one secret count once).
    pub failures: u32,
    pub last_failure: UnixMillis,
    pub blocked_until: Option<UnixMillis>,
}

impl Counts {
    /// Nothing counted.
    pub const NONE: Counts = Counts {
        failures: 0,
        last_failure: 0,
        blocked_until: None,
    };

    /// Where a key with these counts stands at `now`; the one rule both backends read by.
    pub fn standing(&self, now: UnixMillis, config: &ThrottleConfig) -> Standing {
        match self.blocked_until {
            Some(until) if until > now => Standing::Blocked(until),
            // A served block wipes the slate: the key starts again with free failures.
            Some(_) => Standing::Gone,
            None if now.saturating_sub(self.last_failure) >= millis(config.window) => {
                Standing::Gone
            }
            None if self.failures == 0 => Standing::Gone,
            None => Standing::Counting(self.failures),
        }
    }
}

/// A duration as the milliseconds the throttle counts in, saturating.
pub(crate) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
