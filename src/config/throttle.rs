//! The `[throttle]` section, checked into [`ThrottleConfig`]: the keys map one to one onto
//! its fields, and [`ThrottleConfig::validate`] says which values do not go together. Its
//! Redis URL and timeout come from the `[redis]` section's check, which reads this
//! section's older keys for them.

use std::time::Duration;

use serde::Deserialize;

use crate::auth::throttle::ThrottleConfig;
use crate::settings_check::{networks, problem, Problem};
use crate::shared_state::RedisSettings;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ThrottleSection {
    enabled: Option<bool>,
    free_failures: Option<u32>,
    base_delay_ms: Option<u64>,
    max_delay_ms: Option<u64>,
    window_secs: Option<u64>,
    network_block_after: Option<u32>,
    account_block_after: Option<u32>,
    block_secs: Option<u64>,
    known_network_secs: Option<u64>,
    trusted_networks: Vec<String>,
    max_tracked: Option<usize>,
    redis_url: Option<String>,
    redis_prefix: Option<String>,
    redis_timeout_ms: Option<u64>,
}

impl ThrottleSection {
    /// `redis_url`, the older spelling of `[redis] url`.
    pub(super) fn redis_url(&self) -> Option<&str> {
        self.redis_url.as_deref()
    }

    /// `redis_timeout_ms`, the older spelling of `[redis] timeout_ms`.
    pub(super) fn redis_timeout_ms(&self) -> Option<u64> {
        self.redis_timeout_ms
    }
}

/// `redis`: the checked `[redis]` section, which has this section's Redis keys folded in.
pub fn check(
    section: &ThrottleSection,
    redis: &RedisSettings,
    problems: &mut Vec<Problem>,
) -> ThrottleConfig {
    let defaults = ThrottleConfig::default();
    let ms = |v: Option<u64>, default: Duration| v.map(Duration::from_millis).unwrap_or(default);
    let secs = |v: Option<u64>, default: Duration| v.map(Duration::from_secs).unwrap_or(default);
    let trusted_networks = networks(
        "throttle.trusted_networks",
        &section.trusted_networks,
        problems,
    );
    let config = ThrottleConfig {
        enabled: section.enabled.unwrap_or(defaults.enabled),
        free_failures: section.free_failures.unwrap_or(defaults.free_failures),
        base_delay: ms(section.base_delay_ms, defaults.base_delay),
        max_delay: ms(section.max_delay_ms, defaults.max_delay),
        window: secs(section.window_secs, defaults.window),
        network_block_after: section
            .network_block_after
            .unwrap_or(defaults.network_block_after),
        account_block_after: section
            .account_block_after
            .unwrap_or(defaults.account_block_after),
        block_duration: secs(section.block_secs, defaults.block_duration),
        known_network_for: secs(section.known_network_secs, defaults.known_network_for),
        trusted_networks,
        max_tracked: section.max_tracked.unwrap_or(defaults.max_tracked),
        redis_url: redis.url.clone(),
        redis_prefix: section
            .redis_prefix
            .clone()
            .unwrap_or(defaults.redis_prefix),
        redis_timeout: redis.timeout,
    };
    if let Err(found) = config.validate() {
        for (key, message) in found {
            problem(problems, &format!("throttle.{key}"), message);
        }
    }
    config
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::auth::throttle::ThrottleConfig;
    use crate::config::parse;
    use crate::config::tests::assert_reported;

    #[test]
    fn throttle_section_is_checked_key_by_key() {
        let c = parse("").unwrap();
        assert_eq!(c.throttle, ThrottleConfig::default());

        let c = parse(
            "[throttle]\nmax_delay_ms = 2000\ntrusted_networks = [\"10.0.0.0/8\", \"2001:db8::1\"]\n",
        )
        .unwrap();
        assert_eq!(c.throttle.max_delay, Duration::from_millis(2000));
        let shown: Vec<String> = c
            .throttle
            .trusted_networks
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(shown, ["10.0.0.0/8", "2001:db8::1/128"]);

        assert_reported(
            "[throttle]\nmax_delay_ms = 10000\nbase_delay_ms = 20000\nblock_secs = 0\n\
             max_tracked = 10\ntrusted_networks = [\"10.0.0.0/8\", \"not-a-net\"]\nwindow = 5\n",
            &[
                "throttle.max_delay_ms",
                "throttle.base_delay_ms",
                "throttle.block_secs",
                "throttle.max_tracked",
                "throttle.trusted_networks",
                "throttle.window",
            ],
        );
    }

    #[test]
    fn throttle_redis_keys_are_optional_and_checked() {
        let c = parse("").unwrap();
        assert_eq!(c.throttle.redis_url, None);
        assert_eq!(c.throttle.redis_prefix, "mailauthd:throttle:");
        assert_eq!(c.throttle.redis_timeout, Duration::from_millis(250));

        let c = parse(
            "[throttle]\nredis_url = \"redis://:pw@127.0.0.1:6379/3\"\n\
             redis_prefix = \"site-a:\"\nredis_timeout_ms = 100\n",
        )
        .unwrap();
        let url = c.throttle.redis_url.as_ref().unwrap();
        assert_eq!(url.expose(), "redis://:pw@127.0.0.1:6379/3");
        assert!(!format!("{:?}", c.throttle).contains(":pw@"));
        assert!(c
            .throttle
            .describe()
            .contains("Redis redis://:***@127.0.0.1:6379/3"));
        assert_eq!(c.throttle.redis_prefix, "site-a:");
        assert_eq!(c.throttle.redis_timeout, Duration::from_millis(100));

        let problems = parse(
            "[throttle]\nredis_url = \"127.0.0.1:6379\"\nredis_prefix = \"\"\n\
             redis_timeout_ms = 5000\n",
        )
        .unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "throttle.redis_url",
                "throttle.redis_prefix",
                "throttle.redis_timeout_ms"
            ]
        );
        assert!(
            problems[0].message.contains("redis://HOST:PORT/DB"),
            "{problems:?}"
        );
    }
}
