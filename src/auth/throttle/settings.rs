//! The settings of the `[throttle]` section, and where the shared state lives.
//!
//! [`ThrottleConfig::validate`] reports every problem at once, each with its key, for the
//! config check. A Redis URL is a value here: it is checked with the redis client's own
//! parser, and only the `shared_state` module ever connects to it.

use std::time::Duration;

use ::redis::{IntoConnectionInfo, RedisError};
use ipnet::IpNet;
use thiserror::Error;

use crate::store::DatabaseUrl;

/// Postfix's Dovecot SASL client waits 10 s for an answer; a delay at or beyond that turns
/// a refusal into a dropped session, which Postfix reports as a temporary failure.
pub const POSTFIX_SASL_TIMEOUT: Duration = Duration::from_secs(10);

/// The settings of the `[throttle]` section, checked by [`ThrottleConfig::validate`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThrottleConfig {
    /// Off: every attempt is allowed and nothing is recorded.
    pub enabled: bool,
    /// Recent failures a key may have before its attempts are delayed.
    pub free_failures: u32,
    /// The first delay; each further failure doubles it.
    pub base_delay: Duration,
    /// The longest delay, also what a blocked attempt waits before it is refused.
    pub max_delay: Duration,
    /// Failures are forgotten after this long without a new one.
    pub window: Duration,
    /// Failures within the window that block a source network; 0 never blocks.
    pub network_block_after: u32,
    /// Failures within the window that block an account; 0 never blocks.
    pub account_block_after: u32,
    pub block_duration: Duration,
    /// A network that logged in to an account successfully this recently is not held up
    /// by that account's block (strangers cannot lock the owner out); zero remembers none.
    pub known_network_for: Duration,
    /// Sources that are never delayed, blocked or counted.
    pub trusted_networks: Vec<IpNet>,
    /// Networks and accounts remembered at once; beyond it the least telling are forgotten.
    pub max_tracked: usize,
    /// Where several daemons keep their shared state; `None` keeps it in this process.
    pub redis_url: Option<RedisUrl>,
    /// Put before every Redis key, so other programs (or sites) can share the server.
    pub redis_prefix: String,
    /// How long one Redis call may take before this daemon decides from its own memory.
    pub redis_timeout: Duration,
}

/// Redis keys of one site start with this unless `redis_prefix` says otherwise.
pub const DEFAULT_REDIS_PREFIX: &str = "mailauthd:throttle:";

impl Default for ThrottleConfig {
    fn default() -> Self {
        ThrottleConfig {
            enabled: true,
            free_failures: 3,
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(5),
            window: Duration::from_secs(900),
            network_block_after: 15,
            // Higher than the network's: anyone can fail against any account. The owner's
            // own networks and app passwords are exempt from it (`known_network_for`).
            account_block_after: 30,
            block_duration: Duration::from_secs(900),
            known_network_for: Duration::from_secs(30 * 86_400),
            trusted_networks: Vec::new(),
            max_tracked: 65_536,
            redis_url: None,
            redis_prefix: DEFAULT_REDIS_PREFIX.to_string(),
            // A local Redis answers in well under a millisecond; a quarter second means it
            // is in trouble, and a login should not wait longer than that to find out.
            redis_timeout: Duration::from_millis(250),
        }
    }
}

impl ThrottleConfig {
    /// One line for `mailauthd config check`.
    pub fn describe(&self) -> String {
        if !self.enabled {
            return "off".into();
        }
        let blocks = |n: u32| {
            if n == 0 {
                "never".to_string()
            } else {
                format!("after {n}")
            }
        };
        let shared = match &self.redis_url {
            None => String::new(),
            Some(url) => format!("; shared in Redis {url} under {:?}", self.redis_prefix),
        };
        format!(
            "delays after {} failures, up to {} ms; blocks networks {}, accounts {}, for {} s; \
             {} trusted network(s){shared}",
            self.free_failures,
            self.max_delay.as_millis(),
            blocks(self.network_block_after),
            blocks(self.account_block_after),
            self.block_duration.as_secs(),
            self.trusted_networks.len()
        )
    }

    /// Every problem at once, each with the key name of the `[throttle]` section.
    pub fn validate(&self) -> Result<(), Vec<(&'static str, String)>> {
        let mut problems = Vec::new();
        if self.max_delay >= POSTFIX_SASL_TIMEOUT {
            problems.push((
                "max_delay_ms",
                format!(
                    "must be below {} (Postfix drops a SASL exchange after 10 s, and the \
                     password check needs time too; 5000 is a good value)",
                    POSTFIX_SASL_TIMEOUT.as_millis()
                ),
            ));
        }
        if self.base_delay > self.max_delay {
            problems.push(("base_delay_ms", "must not exceed max_delay_ms".to_string()));
        }
        if self.free_failures > 1000 {
            problems.push(("free_failures", "at most 1000".to_string()));
        }
        let day = Duration::from_secs(86_400);
        if self.window < Duration::from_secs(1) || self.window > day {
            problems.push(("window_secs", "must be between 1 and 86400".to_string()));
        }
        if self.block_duration < Duration::from_secs(1) || self.block_duration > 7 * day {
            problems.push((
                "block_secs",
                "must be between 1 and 604800 (a week)".to_string(),
            ));
        }
        if self.known_network_for > 365 * day {
            problems.push((
                "known_network_secs",
                "at most 31536000 (a year); 0 remembers no network".to_string(),
            ));
        }
        for (key, value) in [
            ("network_block_after", self.network_block_after),
            ("account_block_after", self.account_block_after),
        ] {
            if value > 100_000 {
                problems.push((key, "at most 100000 (0 turns blocking off)".to_string()));
            }
        }
        if !(1024..=10_000_000).contains(&self.max_tracked) {
            problems.push((
                "max_tracked",
                "must be between 1024 and 10000000".to_string(),
            ));
        }
        if let Some(url) = &self.redis_url {
            if let Err(why) = url.check() {
                problems.push(("redis_url", why.to_string()));
            }
        }
        if self.redis_prefix.is_empty()
            || self.redis_prefix.len() > 128
            || self
                .redis_prefix
                .chars()
                .any(|c| c.is_control() || c == ' ')
        {
            problems.push((
                "redis_prefix",
                "must be 1 to 128 characters without spaces or control characters \
                 (the default is \"mailauthd:throttle:\")"
                    .to_string(),
            ));
        }
        // A login may wait for two Redis calls (check, then record) on top of its delay
        // and the password check; a second each keeps that under Postfix's 10 s.
        if self.redis_timeout < Duration::from_millis(10)
            || self.redis_timeout > Duration::from_millis(1000)
        {
            problems.push((
                "redis_timeout_ms",
                "must be between 10 and 1000 (250 is a good value)".to_string(),
            ));
        } else if self.redis_url.is_some()
            && self.max_delay + 2 * self.redis_timeout >= POSTFIX_SASL_TIMEOUT
        {
            problems.push((
                "redis_timeout_ms",
                "with max_delay_ms, two Redis calls must stay below 10000 ms in all \
                 (Postfix drops a SASL exchange after 10 s)"
                    .to_string(),
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

/// A Redis URL whose password never reaches a log or `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl(String);

impl RedisUrl {
    pub fn new(url: impl Into<String>) -> Self {
        RedisUrl(url.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the redis client accepts the URL. Only its parser runs: nothing connects.
    pub fn check(&self) -> Result<(), RedisUrlError> {
        match self.0.as_str().into_connection_info() {
            Ok(_) => Ok(()),
            Err(source) => Err(RedisUrlError { source }),
        }
    }

    /// The password replaced by `***`; a query (where a unix socket URL keeps its
    /// password) is hidden whole.
    pub fn redacted(&self) -> String {
        let (base, query) = match self.0.split_once('?') {
            Some((base, _)) => (base, "?***"),
            None => (self.0.as_str(), ""),
        };
        format!("{}{query}", DatabaseUrl::new(base).redacted())
    }
}

fmt_via_redacted!(RedisUrl);

/// A Redis URL the redis client does not accept, with what to write instead. The client's
/// own parse errors never repeat the URL, so this is safe to show.
#[derive(Debug, Error)]
#[error(
    "not a usable Redis URL ({source}); write redis://HOST:PORT/DB, \
     redis://:PASSWORD@HOST:PORT/DB or unix:///PATH/redis.sock?db=N"
)]
pub struct RedisUrlError {
    source: RedisError,
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_keep_under_the_postfix_timeout() {
        let c = ThrottleConfig::default();
        c.validate().unwrap();
        assert!(c.max_delay < POSTFIX_SASL_TIMEOUT);
        assert!(
            c.trusted_networks.is_empty(),
            "loopback is not exempt by default"
        );
    }

    #[test]
    fn the_summary_reads_as_a_sentence() {
        assert_eq!(
            ThrottleConfig::default().describe(),
            "delays after 3 failures, up to 5000 ms; blocks networks after 15, accounts after 30, \
             for 900 s; 0 trusted network(s)"
        );
        let off = ThrottleConfig {
            enabled: false,
            ..ThrottleConfig::default()
        };
        assert_eq!(off.describe(), "off");
    }

    #[test]
    fn validation_names_every_bad_key() {
        let bad = ThrottleConfig {
            max_delay: Duration::from_secs(10),
            base_delay: Duration::from_secs(11),
            window: Duration::ZERO,
            block_duration: Duration::from_secs(8 * 86_400),
            network_block_after: 1_000_000,
            max_tracked: 5,
            ..ThrottleConfig::default()
        };
        let keys: Vec<&str> = bad.validate().unwrap_err().iter().map(|p| p.0).collect();
        assert_eq!(
            keys,
            [
                "max_delay_ms",
                "base_delay_ms",
                "window_secs",
                "block_secs",
                "network_block_after",
                "max_tracked"
            ]
        );
        let just_under = ThrottleConfig {
            max_delay: Duration::from_millis(9_999),
            ..ThrottleConfig::default()
        };
        just_under.validate().unwrap();
    }

    #[test]
    fn redis_settings_are_checked_with_the_delays() {
        let shared = ThrottleConfig {
            redis_url: Some(RedisUrl::new("redis://127.0.0.1:6379/0")),
            ..ThrottleConfig::default()
        };
        shared.validate().unwrap();
        let too_slow = ThrottleConfig {
            max_delay: Duration::from_millis(9000),
            redis_timeout: Duration::from_millis(600),
            ..shared.clone()
        };
        let keys: Vec<&str> = too_slow
            .validate()
            .unwrap_err()
            .iter()
            .map(|p| p.0)
            .collect();
        assert_eq!(keys, ["redis_timeout_ms"]);
        // Without Redis the timeout is never waited for.
        ThrottleConfig {
            redis_url: None,
            ..too_slow
        }
        .validate()
        .unwrap();
    }

    #[test]
    fn urls_are_checked_and_passwords_never_shown() {
        for good in [
            "redis://127.0.0.1:6379/0",
            "redis://:s3cret@redis.example.org/2",
            "redis://mailauthd:s3cret@[2001:db8::5]:6380",
            "unix:///run/redis/redis.sock?db=1&pass=s3cret",
        ] {
            RedisUrl::new(good).check().unwrap();
        }
        for bad in [
            "127.0.0.1:6379",
            "http://127.0.0.1/",
            "redis://",
            "redis://host/notanumber",
        ] {
            let why = RedisUrl::new(bad).check().unwrap_err().to_string();
            assert!(why.contains("redis://HOST:PORT/DB"), "{bad}: {why}");
        }
        let url = RedisUrl::new("redis://mailauthd:s3cret@redis.example.org:6379/2");
        assert_eq!(
            url.to_string(),
            "redis://mailauthd:***@redis.example.org:6379/2"
        );
        assert!(!format!("{url:?}").contains("s3cret"));
        let unix = RedisUrl::new("unix:///run/redis.sock?db=1&pass=s3cret");
        assert_eq!(unix.to_string(), "unix:///run/redis.sock?***");
    }
}
