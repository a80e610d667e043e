//! The throttle's view of standings shared by several daemons: [`SharedStandings`].
//!
//! The throttle knows only this trait; what keeps the standings (Redis, in the
//! `shared_state` module) and how it is reached stay outside `auth`. An implementation
//! keeps the same counts as [`super::MemoryThrottle`] and reads them with the same rules
//! ([`super::Counts::standing`]), so a daemon decides the same with or without it.
//!
//! Every call may fail: what keeps the standings may be down, slow, or skipped for a
//! moment after a failure. The implementation bounds each call in time and counts each failure as a
//! fallback; the throttle then answers that call from this daemon's own memory. A login is
//! never refused or held because the shared standings do not answer.

use std::error::Error as StdError;

use async_trait::async_trait;
use ipnet::IpNet;
use thiserror::Error;

use super::keys::{BlockInfo, Filter, ThrottleKey};
use super::settings::{RedisUrl, ThrottleConfig};
use super::standing::Standing;
use crate::clock::UnixMillis;

/// Why the shared standings gave no answer to use; the throttle answers from memory.
#[derive(Debug, Error)]
#[error("{0}")]
pub struct NoAnswer(Box<dyn StdError + Send + Sync>);

impl NoAnswer {
    pub fn new(cause: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        NoAnswer(cause.into())
    }
}

/// One question to the shared standings: these keys, at this moment, by these rules.
#[derive(Clone, Copy, Debug)]
pub struct Query<'a> {
    pub keys: &'a [ThrottleKey],
    pub now: UnixMillis,
    pub config: &'a ThrottleConfig,
}

impl<'a> Query<'a> {
    pub fn new(keys: &'a [ThrottleKey], now: UnixMillis, config: &'a ThrottleConfig) -> Self {
        Query { keys, now, config }
    }
}

/// Standings several daemons keep in one place, so they count failures as one.
///
/// Calls for a login are bounded by `config.redis_timeout`; `list` and `clear` by a longer
/// bound of the implementation's, since a postmaster, not a login, waits for them.
#[async_trait]
pub trait SharedStandings: Send + Sync {
    /// Where the standings live: a running daemon keeps the place it started with.
    fn url(&self) -> &RedisUrl;

    /// What every key name starts with, fixed for the same reason.
    fn prefix(&self) -> &str;

    /// Whether a login should ask now: not during the short pause after a failure, so an
    /// outage costs one timeout, not one per login. A `false` counts as a fallback.
    fn ready(&self) -> bool;

    /// Calls answered from memory instead: failed, too slow, or skipped.
    fn fallbacks(&self) -> u64;

    /// Each key's standing, in the order given, and whether `known`'s network logged in
    /// to its account within `known_network_for`; one round trip.
    async fn standings_and_known(
        &self,
        query: Query<'_>,
        known: Option<(&ThrottleKey, IpNet)>,
    ) -> Result<(Vec<Standing>, bool), NoAnswer>;

    /// Each key's standing, in the order given.
    async fn standings(&self, query: Query<'_>) -> Result<Vec<Standing>, NoAnswer>;

    /// Counts a refused attempt against the keys, as [`super::MemoryThrottle`] does: a
    /// secret refused recently for a key counts once there, whichever daemon saw it.
    async fn record_failure(&self, query: Query<'_>, fingerprint: u64) -> Result<(), NoAnswer>;

    /// Feeds a successful login back to the keys, and remembers `known`'s network as one
    /// its account's owner logs in from.
    async fn record_success(
        &self,
        query: Query<'_>,
        known: Option<(&ThrottleKey, IpNet)>,
    ) -> Result<(), NoAnswer>;

    /// Every network and account any daemon holds something against, blocked first; at
    /// most `max_tracked`.
    async fn list(
        &self,
        now: UnixMillis,
        config: &ThrottleConfig,
    ) -> Result<Vec<BlockInfo>, NoAnswer>;

    /// Removes what `filter` matches, whichever daemon wrote it; returns the keys removed.
    async fn clear(&self, filter: &Filter) -> Result<Vec<ThrottleKey>, NoAnswer>;
}
