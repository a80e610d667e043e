//! The sending-limit counters in Redis ([`RedisCounters`]), so several daemons count a
//! user's mail as one: a limit of 100 messages an hour is 100 whichever daemon Postfix
//! asks.
//!
//! Per user, one hash per window length (`{prefix}win:3600:alice@…`), a list of the
//! messages seen (their Postfix `instance`) and one hash per message with the recipients
//! counted for it; each request is one run of `send_limits/check.lua`, which keeps the
//! rules of the memory counters ([`Counters`]), so concurrent daemons never lose or
//! double a count. Every key carries a PEXPIRE: a window's when it closes, a message's
//! after the longest window. Recipients are kept as hashes, not addresses.
//!
//! Each call is bounded by `redis.timeout_ms` through [`Redis::call`]; a call that fails,
//! times out, or is skipped just after a failure is answered by this daemon's own
//! [`Counters`], and the connection's health logs the outage once.

use std::sync::Arc;
use std::time::Duration;

use ::redis::Script;
use async_trait::async_trait;
use sha2::{Digest, Sha256};

use super::connection::{CallError, Caller, Redis};
use crate::clock::UnixTime;
use crate::policy::{
    Counted, Counters, Exceeded, SendCounters, Usage, MESSAGES_PER_USER, RECIPIENTS_PER_MESSAGE,
};
use crate::store::SendLimits;

/// Keys outlive what needs them by this much, so daemons whose clocks differ by a few
/// seconds still read the same counts.
const EXPIRY_SLACK_MS: i64 = 5_000;

/// Redis keys of the sending limits start with this unless `redis.prefix` says otherwise.
pub const DEFAULT_LIMITS_PREFIX: &str = "mailauthd:limits:";

pub struct RedisCounters {
    redis: Arc<Redis>,
    prefix: String,
    timeout: Duration,
    /// What answers while Redis does not; it counts only what Redis missed.
    memory: Counters,
    check: Script,
}

impl RedisCounters {
    /// Counters in `redis` under `prefix`, each call bounded by `timeout`.
    pub fn new(redis: Arc<Redis>, prefix: &str, timeout: Duration) -> Self {
        RedisCounters {
            redis,
            prefix: prefix.to_string(),
            timeout,
            memory: Counters::default(),
            check: Script::new(include_str!("send_limits/check.lua")),
        }
    }

    /// Calls answered from memory because Redis failed, was too slow, or was skipped
    /// (counted by the connection, so the throttle's are among them when it shares it).
    pub fn fallbacks(&self) -> u64 {
        self.redis.fallbacks()
    }

    /// The names of `user`'s keys: window `seconds`, the message list, and the start of
    /// a message's name. The user's length goes first so no user and instance pair can
    /// spell another's name.
    fn window_key(&self, user: &str, seconds: u64) -> String {
        format!("{}win:{seconds}:{user}", self.prefix)
    }

    fn list_key(&self, user: &str) -> String {
        format!("{}msgs:{user}", self.prefix)
    }

    fn message_prefix(&self, user: &str) -> String {
        format!("{}msg:{}:{user}:", self.prefix, user.len())
    }

    async fn in_redis(
        &self,
        user: &str,
        limits: &SendLimits,
        usage: Usage<'_>,
        now: UnixTime,
    ) -> Result<Result<(), Exceeded>, CallError> {
        let (kind, instance, recipient, recipients) = match usage {
            Usage::Peek => ("peek", None, None, 0),
            Usage::Recipient {
                instance,
                recipient,
            } => ("rcpt", instance, recipient, 0),
            Usage::Message {
                instance,
                recipients,
            } => ("msg", instance, None, recipients),
        };
        let windows = limits.windows();
        let longest = windows.iter().map(|w| w.seconds).max().unwrap_or(0);
        let keep_ms = i64::try_from(longest.saturating_mul(1000)).unwrap_or(i64::MAX);
        let message_prefix = self.message_prefix(user);
        let mut script = self.check.prepare_invoke();
        for window in windows {
            script.key(self.window_key(user, window.seconds));
        }
        if let Some(instance) = instance {
            script
                .key(self.list_key(user))
                .key(format!("{message_prefix}{instance}"));
        }
        script
            .arg(now)
            .arg(kind)
            .arg(if instance.is_some() { "1" } else { "0" })
            .arg(instance.unwrap_or(""))
            .arg(recipient.map(recipient_hash).unwrap_or_default())
            .arg(recipients)
            .arg(&message_prefix)
            .arg(MESSAGES_PER_USER)
            .arg(RECIPIENTS_PER_MESSAGE)
            .arg(keep_ms)
            .arg(EXPIRY_SLACK_MS);
        let cap = |c: Option<u64>| c.and_then(|c| i64::try_from(c).ok()).unwrap_or(-1);
        for window in windows {
            script
                .arg(window.seconds)
                .arg(cap(window.messages))
                .arg(cap(window.recipients));
        }
        let answer: Vec<i64> = script.invoke_async(&mut self.redis.connection()).await?;
        let [index, what] = answer[..] else {
            return Ok(Ok(()));
        };
        // Window 0 is the script's "counted".
        let window = usize::try_from(index - 1)
            .ok()
            .and_then(|i| windows.get(i).copied());
        let Some(window) = window else {
            // Not an answer this script gives: count on as if it had room.
            return Ok(Ok(()));
        };
        let (counted, limit) = if what == 1 {
            (Counted::Messages, window.messages)
        } else {
            (Counted::Recipients, window.recipients)
        };
        Ok(Err(Exceeded {
            window,
            counted,
            limit: limit.unwrap_or(0),
        }))
    }
}

#[async_trait]
impl SendCounters for RedisCounters {
    async fn check_and_count(
        &self,
        user: &str,
        limits: &SendLimits,
        usage: Usage<'_>,
        now: UnixTime,
    ) -> Result<(), Exceeded> {
        if limits.is_none() {
            return Ok(());
        }
        if self.redis.ready(Caller::SendLimits) {
            let call = self.in_redis(user, limits, usage, now);
            if let Ok(answer) = self
                .redis
                .call(Caller::SendLimits, "send_limits", self.timeout, call)
                .await
            {
                return answer;
            }
        }
        self.memory.check_and_count(user, limits, usage, now)
    }

    fn tracked_users(&self) -> usize {
        self.memory.tracked_users()
    }
}

/// A recipient as Redis keeps it: the first 8 bytes of its SHA-256, in hex. The same on
/// every daemon, and no address in Redis.
fn recipient_hash(recipient: &str) -> String {
    let digest = Sha256::digest(recipient.as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::auth::throttle::RedisUrl;
    use crate::clock::SystemClock;

    #[tokio::test]
    async fn key_names_keep_users_and_instances_apart() {
        let redis = Redis::open(
            &RedisUrl::new("redis://127.0.0.1:1/"),
            Arc::new(SystemClock),
        )
        .unwrap();
        let c = RedisCounters::new(Arc::new(redis), "site:", Duration::from_millis(100));
        assert_eq!(c.window_key("a@x", 3600), "site:win:3600:a@x");
        assert_eq!(c.list_key("a@x"), "site:msgs:a@x");
        // "a:b" with instance "c" and "a" with instance "b:c" must not meet.
        assert_ne!(
            format!("{}c", c.message_prefix("a:b")),
            format!("{}b:c", c.message_prefix("a"))
        );
        assert_eq!(recipient_hash("a@x").len(), 16);
        assert_ne!(recipient_hash("a@x"), recipient_hash("b@x"));
    }
}
