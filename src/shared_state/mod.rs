//! State several daemons share through one Redis, so they behave as one.
//!
//! That is the throttle's standings ([`RedisStandings`], the implementation of
//! [`crate::auth::throttle::SharedStandings`]) and the sending-limit counters
//! ([`RedisCounters`], an implementation of [`crate::policy::SendCounters`]). The
//! connection and its health ([`Redis`]) are apart from what is kept: one connection,
//! opened by [`open`] from the `[redis]` settings, serves both, with the same bound and
//! fallback.
//!
//! Redis is never what a login waits for: every call is bounded in time and a call that
//! fails or times out makes the caller answer from its own memory. A Redis that is down at
//! start-up refuses nothing either; the connection is made lazily and remade on its own.
//!
//! This is the one place that talks to Redis; `auth` sees only the trait.

mod connection;
mod health;
mod send_limits;
mod throttle;

pub use self::connection::{CallError, Caller, Redis, SetupError};
pub use self::send_limits::{RedisCounters, DEFAULT_LIMITS_PREFIX};
pub use self::throttle::{open_throttle, throttle_on, RedisStandings};

use std::sync::Arc;
use std::time::Duration;

use crate::auth::throttle::RedisUrl;
use crate::clock::Clock;
use crate::policy::{Counters, SendCounters};

/// The `[redis]` section, checked: one Redis for the throttle and the sending limits.
/// `[throttle] redis_url` and `redis_timeout_ms`, the older spelling, end up here too.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisSettings {
    /// `None` keeps all state in this process.
    pub url: Option<RedisUrl>,
    /// How long one call on a login's or a policy request's path may take.
    pub timeout: Duration,
    /// Put before every sending-limit key (the throttle has `throttle.redis_prefix`).
    pub send_limits_prefix: String,
}

impl Default for RedisSettings {
    fn default() -> Self {
        RedisSettings {
            url: None,
            // A local Redis answers in well under a millisecond; a quarter second means it
            // is in trouble, and a login should not wait longer than that to find out.
            timeout: Duration::from_millis(250),
            send_limits_prefix: DEFAULT_LIMITS_PREFIX.to_string(),
        }
    }
}

/// The one connection every user of Redis shares, or `None` without a URL. Lazy: a Redis
/// that is down at start-up delays and refuses nothing. Must run inside a Tokio runtime.
pub fn open(
    settings: &RedisSettings,
    clock: Arc<dyn Clock>,
) -> Result<Option<Arc<Redis>>, SetupError> {
    match &settings.url {
        None => Ok(None),
        Some(url) => Ok(Some(Arc::new(Redis::open(url, clock)?))),
    }
}

/// The sending-limit counters: in `redis` when there is one, else in this process.
pub fn send_counters(settings: &RedisSettings, redis: Option<Arc<Redis>>) -> Arc<dyn SendCounters> {
    match redis {
        Some(redis) => Arc::new(RedisCounters::new(
            redis,
            &settings.send_limits_prefix,
            settings.timeout,
        )),
        None => Arc::new(Counters::default()),
    }
}
