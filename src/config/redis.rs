//! The `[redis]` section, checked into [`RedisSettings`]: the one Redis the throttle and
//! the sending limits share. `[throttle] redis_url` and `redis_timeout_ms` are its older
//! spelling and still work; set in both places they must agree.

use std::time::Duration;

use serde::Deserialize;

use super::throttle::ThrottleSection;
use crate::auth::throttle::RedisUrl;
use crate::settings_check::{problem, Problem};
use crate::shared_state::RedisSettings;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RedisSection {
    url: Option<String>,
    timeout_ms: Option<u64>,
    send_limits_prefix: Option<String>,
}

pub fn check(
    section: &RedisSection,
    throttle: &ThrottleSection,
    problems: &mut Vec<Problem>,
) -> RedisSettings {
    let defaults = RedisSettings::default();
    let own = section.url.as_deref().map(str::trim);
    let older = throttle.redis_url().map(str::trim);
    if let (Some(own), Some(older)) = (own, older) {
        if own != older {
            problem(
                problems,
                "redis.url",
                "names another Redis than throttle.redis_url (the older spelling of this \
                 key); set only redis.url"
                    .to_string(),
            );
        }
    }
    let url = match own.map(RedisUrl::new) {
        Some(url) => match url.check() {
            Ok(()) => Some(url),
            Err(why) => {
                problem(problems, "redis.url", why.to_string());
                None
            }
        },
        // The throttle's check reports a bad one under its own key.
        None => older.map(RedisUrl::new),
    };
    if let (Some(own), Some(older)) = (section.timeout_ms, throttle.redis_timeout_ms()) {
        if own != older {
            problem(
                problems,
                "redis.timeout_ms",
                "differs from throttle.redis_timeout_ms (the older spelling of this key); \
                 set only redis.timeout_ms"
                    .to_string(),
            );
        }
    }
    let timeout = match section.timeout_ms {
        Some(ms) if (10..=1000).contains(&ms) => Duration::from_millis(ms),
        Some(_) => {
            problem(
                problems,
                "redis.timeout_ms",
                "must be between 10 and 1000 (250 is a good value)".to_string(),
            );
            defaults.timeout
        }
        None => throttle
            .redis_timeout_ms()
            .map_or(defaults.timeout, Duration::from_millis),
    };
    let send_limits_prefix = section
        .send_limits_prefix
        .clone()
        .unwrap_or(defaults.send_limits_prefix);
    if send_limits_prefix.is_empty()
        || send_limits_prefix.len() > 128
        || send_limits_prefix
            .chars()
            .any(|c| c.is_control() || c == ' ')
    {
        problem(
            problems,
            "redis.send_limits_prefix",
            "must be 1 to 128 characters without spaces or control characters \
             (the default is \"mailauthd:limits:\")"
                .to_string(),
        );
    }
    RedisSettings {
        url,
        timeout,
        send_limits_prefix,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::parse;
    use crate::config::tests::assert_reported;

    #[test]
    fn one_redis_for_both_and_the_older_spelling_still_works() {
        let c = parse("").unwrap();
        assert_eq!(c.redis.url, None);
        assert_eq!(c.throttle.redis_url, None);
        assert_eq!(c.redis.send_limits_prefix, "mailauthd:limits:");

        let c = parse("[redis]\nurl = \"redis://127.0.0.1:6379/2\"\ntimeout_ms = 100\n").unwrap();
        let url = c.redis.url.as_ref().unwrap();
        assert_eq!(url.expose(), "redis://127.0.0.1:6379/2");
        assert_eq!(
            c.throttle.redis_url.as_ref(),
            Some(url),
            "the throttle's too"
        );
        assert_eq!(c.throttle.redis_timeout, Duration::from_millis(100));
        assert_eq!(c.redis.timeout, Duration::from_millis(100));

        let c =
            parse("[throttle]\nredis_url = \"redis://127.0.0.1:6379/3\"\nredis_timeout_ms = 50\n")
                .unwrap();
        assert_eq!(
            c.redis.url.as_ref().unwrap().expose(),
            "redis://127.0.0.1:6379/3",
            "the sending limits use the older key's Redis"
        );
        assert_eq!(c.redis.timeout, Duration::from_millis(50));

        // The same in both places is fine.
        let c = parse(
            "[redis]\nurl = \"redis://127.0.0.1/\"\n[throttle]\nredis_url = \"redis://127.0.0.1/\"\n",
        )
        .unwrap();
        assert_eq!(c.redis.url, c.throttle.redis_url);
    }

    #[test]
    fn two_different_redis_or_bad_values_are_config_errors() {
        assert_reported(
            "[redis]\nurl = \"redis://127.0.0.1:6379/0\"\ntimeout_ms = 100\n\
             [throttle]\nredis_url = \"redis://127.0.0.1:6380/0\"\nredis_timeout_ms = 200\n",
            &["redis.url", "redis.timeout_ms"],
        );
        assert_reported(
            "[redis]\nurl = \"127.0.0.1:6379\"\ntimeout_ms = 5000\nsend_limits_prefix = \"a b\"\n",
            &["redis.url", "redis.timeout_ms", "redis.send_limits_prefix"],
        );
    }
}
