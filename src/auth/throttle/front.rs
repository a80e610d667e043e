//! The throttle the daemon holds: memory alone, or Redis with memory behind it.
//!
//! A login must never be refused or held because Redis is down or slow, so every Redis
//! call is bounded (`redis_timeout_ms`) and, if it fails, this process's memory answers
//! that call instead. Memory then counts what this daemon sees until Redis answers again;
//! those counts are not copied to Redis afterwards.

use std::collections::BTreeSet;
use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::time::Instant;

use super::health::Health;
use super::redis::{CallError, RedisThrottle};
use super::{
    scope, verdict, BlockInfo, Filter, Fingerprinter, MemoryThrottle, RedisUrl, Scope,
    ThrottleConfig, Verdict,
};
use crate::clock::UnixMillis;

/// `list` and `clear` walk every key and a postmaster, not a login, waits for them.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Error)]
pub enum SetupError {
    #[error("throttle.redis_url {url}: {source}")]
    Redis {
        url: RedisUrl,
        source: ::redis::RedisError,
    },
    #[error("throttle.redis_url: the Redis client must be set up inside the daemon's runtime")]
    NoRuntime,
}

/// `clear` lifted this daemon's own entries but could not reach the shared ones.
#[derive(Debug, Error)]
#[error(
    "cleared {removed} entr{plural} in this daemon's memory, but Redis did not answer ({reason}); \
     the shared entries are still there: run the clear again once Redis is back",
    plural = if *removed == 1 { "y" } else { "ies" }
)]
pub struct ClearError {
    pub removed: usize,
    pub reason: String,
}

pub struct Throttle {
    /// Holds the settings in force for both backends, and answers when Redis does not.
    memory: MemoryThrottle,
    redis: Option<RedisThrottle>,
    health: Health,
}

impl fmt::Debug for Throttle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Throttle")
            .field("memory", &self.memory)
            .field("redis", &self.redis.as_ref().map(|r| r.url()))
            .field("redis_fallbacks", &self.redis_fallbacks())
            .finish()
    }
}

impl Throttle {
    /// In memory, or in Redis when `config.redis_url` is set. Redis is connected lazily: one
    /// that is down at start-up refuses nothing, its calls fall back until it answers.
    /// `fingerprinter` must be the same on every daemon sharing a Redis
    /// ([`Fingerprinter::for_site`]). `config` should have passed
    /// [`ThrottleConfig::validate`].
    pub fn new(config: ThrottleConfig, fingerprinter: Fingerprinter) -> Result<Self, SetupError> {
        let redis = match &config.redis_url {
            None => None,
            Some(url) => {
                // The redis client spawns its connection task; without a runtime it panics.
                if tokio::runtime::Handle::try_current().is_err() {
                    return Err(SetupError::NoRuntime);
                }
                let redis = RedisThrottle::open(url, &config.redis_prefix).map_err(|source| {
                    SetupError::Redis {
                        url: url.clone(),
                        source,
                    }
                })?;
                Some(redis)
            }
        };
        Ok(Throttle {
            memory: MemoryThrottle::new(config, fingerprinter),
            redis,
            health: Health::new(),
        })
    }

    /// The settings in force now.
    pub fn config(&self) -> Arc<ThrottleConfig> {
        self.memory.config()
    }

    pub fn fingerprinter(&self) -> &Fingerprinter {
        self.memory.fingerprinter()
    }

    /// How long a blocked attempt is held before it is refused.
    pub fn blocked_delay(&self) -> Duration {
        self.memory.blocked_delay()
    }

    /// Whether the state is shared through Redis (when it answers).
    pub fn is_shared(&self) -> bool {
        self.redis.is_some()
    }

    /// Calls memory answered because Redis failed, was too slow, or was being skipped
    /// right after a failure.
    pub fn redis_fallbacks(&self) -> u64 {
        self.health.fallbacks()
    }

    /// Applies new settings to every call from now on, both backends. Returns the keys
    /// that only a restart applies (`throttle.redis_url`, `throttle.redis_prefix`): a
    /// running daemon keeps the Redis, and the key names, it started with.
    pub fn reconfigure(&self, config: ThrottleConfig) -> Vec<&'static str> {
        let mut restart = Vec::new();
        let mut applied = config;
        let running_url = self.redis.as_ref().map(|r| r.url().clone());
        if applied.redis_url != running_url {
            restart.push("throttle.redis_url");
            applied.redis_url = running_url;
        }
        if let Some(redis) = &self.redis {
            if applied.redis_prefix != redis.prefix() {
                restart.push("throttle.redis_prefix");
                applied.redis_prefix = redis.prefix().to_string();
            }
        }
        self.memory.set_config(applied);
        restart
    }

    /// Whether, and how long, an attempt must wait before credentials are checked.
    pub async fn check(&self, rip: Option<IpAddr>, account: &str, now: UnixMillis) -> Verdict {
        let config = self.config();
        let Scope::Keys(keys) = scope(&config, rip, account) else {
            return Verdict::Allow;
        };
        if keys.is_empty() {
            return Verdict::Allow;
        }
        if let Some(redis) = self.redis_for_login() {
            let call = redis.standings(&keys, now, &config);
            if let Some(standings) = self.bounded("check", config.redis_timeout, call).await {
                return verdict(keys.into_iter().zip(standings).collect(), &config);
            }
        }
        self.memory.check(rip, account, now)
    }

    /// Counts a refused attempt against its network and account; a secret refused
    /// recently for the same key counts once, whichever daemon saw it before.
    pub async fn record_failure(
        &self,
        rip: Option<IpAddr>,
        account: &str,
        secret_fingerprint: u64,
        now: UnixMillis,
    ) {
        let config = self.config();
        let Scope::Keys(keys) = scope(&config, rip, account) else {
            return;
        };
        if keys.is_empty() {
            return;
        }
        if let Some(redis) = self.redis_for_login() {
            let call = redis.record_failure(&keys, secret_fingerprint, now, &config);
            if self
                .bounded("record_failure", config.redis_timeout, call)
                .await
                .is_some()
            {
                return;
            }
        }
        self.memory
            .record_failure(rip, account, secret_fingerprint, now);
    }

    /// A success relaxes its network (at most once a minute) and clears its account.
    pub async fn record_success(&self, rip: Option<IpAddr>, account: &str, now: UnixMillis) {
        let config = self.config();
        let Scope::Keys(keys) = scope(&config, rip, account) else {
            return;
        };
        if keys.is_empty() {
            return;
        }
        if let Some(redis) = self.redis_for_login() {
            let call = redis.record_success(&keys, now, &config);
            if self
                .bounded("record_success", config.redis_timeout, call)
                .await
                .is_some()
            {
                return;
            }
        }
        self.memory.record_success(rip, account, now);
    }

    /// What is held against networks and accounts, blocked first: from Redis (every
    /// daemon's entries), or, while Redis does not answer, what this daemon holds itself.
    pub async fn list(&self, now: UnixMillis) -> Vec<BlockInfo> {
        if let Some(redis) = &self.redis {
            let config = self.config();
            let call = redis.list(now, &config);
            if let Some(all) = self.bounded("list", ADMIN_TIMEOUT, call).await {
                return all;
            }
        }
        self.memory.list(now)
    }

    /// Lifts what `filter` names (see [`MemoryThrottle::clear`]) in memory and in Redis,
    /// whichever daemon recorded it; returns how many networks and accounts were lifted.
    pub async fn clear(&self, filter: Option<&str>) -> Result<usize, ClearError> {
        let Some(filter) = Filter::parse(filter) else {
            return Ok(0);
        };
        // Memory too: it may hold what this daemon counted while Redis was away.
        let mut removed: BTreeSet<_> = self.memory.clear_matching(&filter).into_iter().collect();
        let Some(redis) = &self.redis else {
            return Ok(removed.len());
        };
        match self
            .bounded_with_reason("clear", ADMIN_TIMEOUT, redis.clear(&filter))
            .await
        {
            Ok(shared) => {
                removed.extend(shared);
                Ok(removed.len())
            }
            Err(reason) => Err(ClearError {
                removed: removed.len(),
                reason,
            }),
        }
    }

    /// Redis, unless there is none or a login should skip it for now.
    fn redis_for_login(&self) -> Option<&RedisThrottle> {
        let redis = self.redis.as_ref()?;
        self.health.should_try(Instant::now()).then_some(redis)
    }

    /// `call` within `limit`; `None` (and a fallback counted, and perhaps logged) if it
    /// failed or took longer.
    async fn bounded<T>(
        &self,
        op: &'static str,
        limit: Duration,
        call: impl Future<Output = Result<T, CallError>>,
    ) -> Option<T> {
        self.bounded_with_reason(op, limit, call).await.ok()
    }

    async fn bounded_with_reason<T>(
        &self,
        op: &'static str,
        limit: Duration,
        call: impl Future<Output = Result<T, CallError>>,
    ) -> Result<T, String> {
        let result = match tokio::time::timeout(limit, call).await {
            Ok(result) => result,
            Err(_) => Err(CallError::Timeout(limit)),
        };
        match result {
            Ok(value) => {
                self.health.succeeded(Instant::now());
                Ok(value)
            }
            Err(e) => {
                self.health.failed(op, &e, Instant::now());
                Err(e.to_string())
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::auth::throttle::ThrottleKey;

    const T0: UnixMillis = 1_800_000_000_000;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    fn config() -> ThrottleConfig {
        ThrottleConfig {
            free_failures: 1,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(400),
            network_block_after: 5,
            account_block_after: 0,
            ..ThrottleConfig::default()
        }
    }

    /// Failures with the distinct secrets `from..to`.
    async fn fail(t: &Throttle, rip: &str, from: u8, to: u8) {
        for i in from..to {
            let fp = t.fingerprinter().fingerprint("", &[i]);
            t.record_failure(ip(rip), "", fp, T0).await;
        }
    }

    #[tokio::test]
    async fn reconfigure_changes_delays_thresholds_and_trust_live() {
        let t = Throttle::new(config(), Fingerprinter::with_key([3; 32])).unwrap();
        fail(&t, "192.0.2.1", 0, 3).await;
        assert_eq!(
            t.check(ip("192.0.2.1"), "", T0).await,
            Verdict::Delay(Duration::from_millis(400))
        );

        let restart = t.reconfigure(ThrottleConfig {
            free_failures: 4,
            network_block_after: 4,
            ..config()
        });
        assert!(restart.is_empty(), "{restart:?}");
        assert_eq!(t.config().free_failures, 4);
        assert_eq!(t.check(ip("192.0.2.1"), "", T0).await, Verdict::Allow);
        // The fourth failure now reaches the lowered threshold.
        fail(&t, "192.0.2.1", 3, 4).await;
        assert!(matches!(
            t.check(ip("192.0.2.1"), "", T0).await,
            Verdict::Blocked { .. }
        ));

        t.reconfigure(ThrottleConfig {
            trusted_networks: vec!["192.0.2.0/24".parse().unwrap()],
            max_delay: Duration::from_millis(900),
            ..config()
        });
        assert_eq!(t.check(ip("192.0.2.1"), "", T0).await, Verdict::Allow);
        assert_eq!(t.blocked_delay(), Duration::from_millis(900));

        t.reconfigure(ThrottleConfig {
            enabled: false,
            ..config()
        });
        fail(&t, "198.51.100.1", 0, 10).await;
        assert_eq!(t.check(ip("198.51.100.1"), "", T0).await, Verdict::Allow);
        assert_eq!(t.redis_fallbacks(), 0, "no Redis, no fallbacks");
    }

    #[tokio::test]
    async fn reconfigure_names_what_needs_a_restart_and_keeps_running_with_it() {
        let memory = Throttle::new(config(), Fingerprinter::with_key([3; 32])).unwrap();
        assert!(memory
            .reconfigure(ThrottleConfig {
                redis_prefix: "other:".into(),
                ..config()
            })
            .is_empty());
        let wanted = RedisUrl::new("redis://127.0.0.1:1/");
        assert_eq!(
            memory.reconfigure(ThrottleConfig {
                redis_url: Some(wanted.clone()),
                ..config()
            }),
            ["throttle.redis_url"]
        );
        assert_eq!(memory.config().redis_url, None, "still in memory");
        assert!(!memory.is_shared());

        let shared = Throttle::new(
            ThrottleConfig {
                redis_url: Some(wanted.clone()),
                ..config()
            },
            Fingerprinter::with_key([3; 32]),
        )
        .unwrap();
        assert!(shared.is_shared());
        assert_eq!(
            shared.reconfigure(ThrottleConfig {
                redis_url: Some(RedisUrl::new("redis://127.0.0.1:2/")),
                redis_prefix: "moved:".into(),
                free_failures: 7,
                ..config()
            }),
            ["throttle.redis_url", "throttle.redis_prefix"]
        );
        let running = shared.config();
        assert_eq!(running.redis_url, Some(wanted));
        assert_eq!(running.redis_prefix, "mailauthd:throttle:");
        assert_eq!(running.free_failures, 7, "the rest applies at once");
    }

    #[tokio::test]
    async fn without_redis_list_and_clear_use_memory() {
        let t = Throttle::new(config(), Fingerprinter::with_key([3; 32])).unwrap();
        fail(&t, "192.0.2.1", 0, 5).await;
        let listed = t.list(T0).await;
        assert_eq!(listed.len(), 1);
        assert_eq!(
            listed[0].key,
            ThrottleKey::network_of("192.0.2.1".parse().unwrap())
        );
        assert_eq!(t.clear(Some("not an address or network")).await.unwrap(), 0);
        assert_eq!(t.clear(Some("192.0.2.1")).await.unwrap(), 1);
        assert!(t.list(T0).await.is_empty());
    }

    #[test]
    fn redis_needs_a_runtime_and_says_so_instead_of_panicking() {
        let err = Throttle::new(
            ThrottleConfig {
                redis_url: Some(RedisUrl::new("redis://127.0.0.1:1/")),
                ..config()
            },
            Fingerprinter::with_key([3; 32]),
        )
        .unwrap_err();
        assert!(matches!(err, SetupError::NoRuntime), "{err}");
    }

    #[test]
    fn a_failed_clear_says_what_was_and_was_not_lifted() {
        let e = ClearError {
            removed: 1,
            reason: "no answer within 5000 ms".into(),
        };
        assert_eq!(
            e.to_string(),
            "cleared 1 entry in this daemon's memory, but Redis did not answer (no answer \
             within 5000 ms); the shared entries are still there: run the clear again once \
             Redis is back"
        );
    }
}
