//! [`Redis`]: one connection to the shared Redis, with every call bounded in time and its
//! health tracked, for each kind of state kept there.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::RedisError;
use thiserror::Error;

use super::health::Health;
use crate::auth::throttle::{NoAnswer, RedisUrl};
use crate::clock::Clock;

/// One attempt to (re)connect; calls are bounded separately and much shorter.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Error)]
pub enum SetupError {
    #[error("redis.url {url}: {source}")]
    Redis { url: RedisUrl, source: RedisError },
    #[error("redis.url: the Redis client must be set up inside the daemon's runtime")]
    NoRuntime,
}

/// What a call keeps in Redis: each has its own fallback metric, while the health (and
/// its log lines) is the connection's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caller {
    Throttle,
    SendLimits,
}

impl Caller {
    fn fell_back(self) {
        match self {
            Caller::Throttle => crate::metrics::throttle_redis_fallback(),
            Caller::SendLimits => crate::metrics::send_limits_redis_fallback(),
        }
    }
}

/// Why a Redis call gave no answer to use.
#[derive(Debug, Error)]
pub enum CallError {
    #[error("{0}")]
    Redis(#[from] RedisError),
    /// Took longer than the caller's bound.
    #[error("no answer within {} ms", .0.as_millis())]
    Timeout(Duration),
}

impl From<CallError> for NoAnswer {
    fn from(e: CallError) -> Self {
        NoAnswer::new(e)
    }
}

/// The shared Redis as this daemon reaches it.
pub struct Redis {
    url: RedisUrl,
    /// Reconnects on its own after an error; cloned (an `Arc`) for each call.
    connection: ConnectionManager,
    health: Health,
    /// The pause after a failure and the reminders during an outage are read on its
    /// monotonic reading.
    clock: Arc<dyn Clock>,
}

impl Redis {
    /// Connects lazily: a Redis that is down at start-up delays nothing and refuses
    /// nothing, the first calls simply fall back. Must run inside a Tokio runtime.
    pub fn open(url: &RedisUrl, clock: Arc<dyn Clock>) -> Result<Self, SetupError> {
        // The redis client spawns its connection task; without a runtime it panics.
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(SetupError::NoRuntime);
        }
        let setup = |source| SetupError::Redis {
            url: url.clone(),
            source,
        };
        let client = ::redis::Client::open(url.expose()).map_err(setup)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            // Every call is bounded by the caller, with the timeout in force at that moment.
            .set_response_timeout(None)
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let connection = ConnectionManager::new_lazy_with_config(client, config).map_err(setup)?;
        Ok(Redis {
            url: url.clone(),
            connection,
            health: Health::new(),
            clock,
        })
    }

    pub fn url(&self) -> &RedisUrl {
        &self.url
    }

    /// A handle for one call; cheap, and the calls share the one connection.
    pub fn connection(&self) -> ConnectionManager {
        self.connection.clone()
    }

    /// Whether a login or a policy request should ask Redis now: not during the pause
    /// after a failure. A `false` is counted as a fallback of `caller`.
    pub fn ready(&self, caller: Caller) -> bool {
        let ready = self.health.should_try(self.clock.instant());
        if !ready {
            caller.fell_back();
        }
        ready
    }

    /// Calls answered from memory because Redis failed, was too slow, or was skipped,
    /// whoever made them.
    pub fn fallbacks(&self) -> u64 {
        self.health.fallbacks()
    }

    /// `call` within `limit`; a failure or a timeout is counted as a fallback of `caller`
    /// (and perhaps logged), and the caller answers from its memory.
    pub async fn call<T>(
        &self,
        caller: Caller,
        op: &'static str,
        limit: Duration,
        call: impl Future<Output = Result<T, CallError>>,
    ) -> Result<T, CallError> {
        let result = match tokio::time::timeout(limit, call).await {
            Ok(result) => result,
            Err(_) => Err(CallError::Timeout(limit)),
        };
        match &result {
            Ok(_) => {
                self.health.succeeded(self.clock.instant());
            }
            Err(e) => {
                caller.fell_back();
                self.health.failed(op, e, self.clock.instant());
            }
        }
        result
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;

    #[test]
    fn redis_needs_a_runtime_and_says_so_instead_of_panicking() {
        let err = Redis::open(
            &RedisUrl::new("redis://127.0.0.1:1/"),
            Arc::new(SystemClock),
        )
        .err()
        .unwrap();
        assert!(matches!(err, SetupError::NoRuntime), "{err}");
    }
}
