//! The throttle's standings in Redis ([`RedisStandings`]), so several daemons count
//! failures as one.
//!
//! One hash per network or account (`{prefix}net:192.0.2.7/32`, `{prefix}acct:alice@…`)
//! with the fields of a memory entry; each update is one Lua script run, so concurrent
//! daemons never lose a count, and each key carries a PEXPIRE so Redis forgets it on its
//! own once no rule can need it. Reads compute the standing here, with the rule memory
//! uses ([`Counts::standing`]). Every call goes through [`Redis::call`], which bounds it
//! and keeps the connection's health.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ::redis::{Script, ScriptInvocation};
use async_trait::async_trait;
use ipnet::IpNet;

use super::connection::{CallError, Caller, Redis, SetupError};
use crate::auth::throttle::{
    block_after, log_block, millis, sort_listing, BlockInfo, Counts, Filter, Fingerprinter,
    NoAnswer, Query, RedisUrl, SharedStandings, Standing, Throttle, ThrottleConfig, ThrottleKey,
    KNOWN_NETWORKS, RELAX_INTERVAL_MS,
};
use crate::clock::{Clock, UnixMillis};

/// Keys outlive the rules that need them by this much, so daemons whose clocks differ by
/// a few seconds still read the same state.
const EXPIRY_SLACK_MS: i64 = 5_000;

/// Keys asked for per SCAN step and per pipeline, for `list` and `clear`.
const SCAN_BATCH: usize = 500;

/// `list` and `clear` walk every key and a postmaster, not a login, waits for them.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The throttle the daemon holds: in memory, or with its standings in Redis when
/// `config.redis_url` is set. `clock` times the Redis connection's health. `fingerprinter`
/// must be the same on every daemon sharing a Redis ([`Fingerprinter::for_site`]).
/// `config` should have passed [`ThrottleConfig::validate`].
pub fn open_throttle(
    config: ThrottleConfig,
    fingerprinter: Fingerprinter,
    clock: Arc<dyn Clock>,
) -> Result<Throttle, SetupError> {
    let redis = match &config.redis_url {
        Some(url) => Some(Arc::new(Redis::open(url, clock)?)),
        None => None,
    };
    Ok(throttle_on(config, fingerprinter, redis))
}

/// Like [`open_throttle`], on a connection opened already (shared with the sending
/// limits); `None` keeps the throttle in memory.
pub fn throttle_on(
    config: ThrottleConfig,
    fingerprinter: Fingerprinter,
    redis: Option<Arc<Redis>>,
) -> Throttle {
    let Some(redis) = redis else {
        return Throttle::in_memory(config, fingerprinter);
    };
    let standings = RedisStandings::new(redis, &config.redis_prefix);
    Throttle::shared(config, fingerprinter, Box::new(standings))
}

pub struct RedisStandings {
    redis: Arc<Redis>,
    prefix: String,
    fail: Script,
    succeed: Script,
    remember: Script,
}

impl RedisStandings {
    /// The throttle's keys in `redis`, each name starting with `prefix`.
    pub fn new(redis: Arc<Redis>, prefix: &str) -> Self {
        RedisStandings {
            redis,
            prefix: prefix.to_string(),
            fail: Script::new(include_str!("throttle/fail.lua")),
            succeed: Script::new(include_str!("throttle/succeed.lua")),
            remember: Script::new(include_str!("throttle/remember.lua")),
        }
    }

    /// One SCAN step: the next cursor, and the throttle keys among the names it returned,
    /// each with its name.
    async fn scan(
        &self,
        cursor: u64,
        pattern: &str,
    ) -> Result<(u64, Vec<(String, ThrottleKey)>), CallError> {
        let (next, names): (u64, Vec<Vec<u8>>) = ::redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(SCAN_BATCH)
            .query_async(&mut self.redis.connection())
            .await?;
        // Our keys are UTF-8; anything else under the prefix is not ours to read.
        let keys = names
            .into_iter()
            .filter_map(|n| String::from_utf8(n).ok())
            .filter_map(|name| self.parse_key_name(&name).map(|key| (name, key)))
            .collect();
        Ok((next, keys))
    }

    /// The counting fields of each named hash, one round trip.
    async fn counts(&self, names: &[String]) -> Result<Vec<Counts>, CallError> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<(Option<i64>, Option<i64>, Option<i64>)> = counts_pipe(names)
            .query_async(&mut self.redis.connection())
            .await?;
        Ok(rows.into_iter().map(counts_from_row).collect())
    }

    /// Where the networks an account's owner logged in from are kept: one hash per
    /// account, network → when. Not a throttle key: `list` and `clear` pass it by.
    fn known_name(&self, account: &ThrottleKey) -> String {
        format!("{}known:{account}", self.prefix)
    }

    fn key_name(&self, key: &ThrottleKey) -> String {
        match key {
            ThrottleKey::Network(net) => format!("{}net:{net}", self.prefix),
            ThrottleKey::Account(name) => format!("{}acct:{name}", self.prefix),
        }
    }

    /// `call` within the deadline of a call on a login's path, `redis_timeout`; `op`
    /// names it in the log and the health state.
    async fn on_login_path<T>(
        &self,
        op: &'static str,
        config: &ThrottleConfig,
        call: impl Future<Output = Result<T, CallError>>,
    ) -> Result<T, NoAnswer> {
        Ok(self
            .redis
            .call(Caller::Throttle, op, config.redis_timeout, call)
            .await?)
    }

    /// A run of `script` whose KEYS are the hashes of `keys`, in their order.
    fn invoke_on<'s>(&self, script: &'s Script, keys: &[ThrottleKey]) -> ScriptInvocation<'s> {
        let mut invocation = script.prepare_invoke();
        for key in keys {
            invocation.key(self.key_name(key));
        }
        invocation
    }

    fn parse_key_name(&self, name: &str) -> Option<ThrottleKey> {
        let rest = name.strip_prefix(&self.prefix)?;
        if let Some(net) = rest.strip_prefix("net:") {
            return net.parse::<IpNet>().ok().map(ThrottleKey::Network);
        }
        rest.strip_prefix("acct:")
            .map(|name| ThrottleKey::Account(name.to_string()))
    }
}

#[async_trait]
impl SharedStandings for RedisStandings {
    fn url(&self) -> &RedisUrl {
        self.redis.url()
    }

    fn prefix(&self) -> &str {
        &self.prefix
    }

    fn ready(&self) -> bool {
        self.redis.ready(Caller::Throttle)
    }

    fn fallbacks(&self) -> u64 {
        self.redis.fallbacks()
    }

    async fn standings_and_known(
        &self,
        query: Query<'_>,
        known: Option<(&ThrottleKey, IpNet)>,
    ) -> Result<(Vec<Standing>, bool), NoAnswer> {
        let Query { keys, now, config } = query;
        // One round trip: the counts of every key, and when the network last logged in.
        let call = async {
            let names: Vec<String> = keys.iter().map(|k| self.key_name(k)).collect();
            let mut pipe = counts_pipe(&names);
            if let Some((account, net)) = known {
                // HMGET, so every reply of the pipeline is a list of optional numbers.
                pipe.cmd("HMGET")
                    .arg(self.known_name(account))
                    .arg(net.to_string());
            }
            let mut rows: Vec<Vec<Option<i64>>> =
                pipe.query_async(&mut self.redis.connection()).await?;
            let seen = match known {
                Some(_) => rows.pop().and_then(|row| row.first().copied().flatten()),
                None => None,
            };
            let known =
                seen.is_some_and(|at| now.saturating_sub(at) < millis(config.known_network_for));
            let standings = rows
                .into_iter()
                .map(|row| {
                    let field = |i: usize| row.get(i).copied().flatten();
                    counts_from_row((field(0), field(1), field(2))).standing(now, config)
                })
                .collect();
            Ok::<_, CallError>((standings, known))
        };
        self.on_login_path("check", config, call).await
    }

    async fn standings(&self, query: Query<'_>) -> Result<Vec<Standing>, NoAnswer> {
        let Query { keys, now, config } = query;
        let call = async {
            let names: Vec<String> = keys.iter().map(|k| self.key_name(k)).collect();
            let counts = self.counts(&names).await?;
            Ok::<_, CallError>(
                counts
                    .into_iter()
                    .map(|c| c.standing(now, config))
                    .collect(),
            )
        };
        self.on_login_path("check", config, call).await
    }

    async fn record_failure(&self, query: Query<'_>, fingerprint: u64) -> Result<(), NoAnswer> {
        let Query { keys, now, config } = query;
        // One run of `fail.lua` for all the keys.
        let call = async {
            let window = millis(config.window);
            let block = millis(config.block_duration);
            let mut script = self.invoke_on(&self.fail, keys);
            script
                .arg(now)
                .arg(fingerprint.to_string())
                .arg(window)
                .arg(window.saturating_add(EXPIRY_SLACK_MS))
                .arg(now.saturating_add(block))
                .arg(block.saturating_add(EXPIRY_SLACK_MS));
            for key in keys {
                script.arg(block_after(config, key.kind()));
            }
            let results: Vec<(i64, i64, i64)> =
                script.invoke_async(&mut self.redis.connection()).await?;
            for (key, (failures, _until, newly_blocked)) in keys.iter().zip(results) {
                // Logged by the daemon whose attempt set the block, once for the site.
                if newly_blocked == 1 {
                    log_block(key, clamp_count(failures), config);
                }
            }
            Ok::<_, CallError>(())
        };
        self.on_login_path("record_failure", config, call).await
    }

    async fn record_success(
        &self,
        query: Query<'_>,
        known: Option<(&ThrottleKey, IpNet)>,
    ) -> Result<(), NoAnswer> {
        let Query { keys, now, config } = query;
        // `succeed.lua` for the keys, then `remember.lua` for the owner's network.
        let call = async {
            let mut script = self.invoke_on(&self.succeed, keys);
            script
                .arg(now)
                .arg(millis(config.window))
                .arg(RELAX_INTERVAL_MS);
            for key in keys {
                script.arg(key.kind().name());
            }
            let _: i64 = script.invoke_async(&mut self.redis.connection()).await?;
            if let Some((account, net)) = known {
                let ttl = millis(config.known_network_for);
                let _: i64 = self
                    .remember
                    .key(self.known_name(account))
                    .arg(net.to_string())
                    .arg(now)
                    .arg(ttl.saturating_add(EXPIRY_SLACK_MS))
                    .arg(KNOWN_NETWORKS)
                    .invoke_async(&mut self.redis.connection())
                    .await?;
            }
            Ok::<_, CallError>(())
        };
        self.on_login_path("record_success", config, call).await
    }

    async fn list(
        &self,
        now: UnixMillis,
        config: &ThrottleConfig,
    ) -> Result<Vec<BlockInfo>, NoAnswer> {
        // At most `max_tracked`, like memory.
        let call = async {
            let mut all = Vec::new();
            let pattern = format!("{}*", glob_escape(&self.prefix));
            let mut cursor = 0u64;
            loop {
                let (next, keys) = self.scan(cursor, &pattern).await?;
                let names: Vec<String> = keys.iter().map(|(name, _)| name.clone()).collect();
                let counts = self.counts(&names).await?;
                for ((_, key), counts) in keys.into_iter().zip(counts) {
                    let (failures, blocked_until) = match counts.standing(now, config) {
                        Standing::Gone => continue,
                        Standing::Counting(failures) => (failures, None),
                        Standing::Blocked(until) => (counts.failures, Some(until)),
                    };
                    all.push(BlockInfo {
                        kind: key.kind(),
                        key,
                        failures,
                        blocked_until,
                    });
                }
                cursor = next;
                if cursor == 0 || all.len() >= config.max_tracked {
                    break;
                }
            }
            all.truncate(config.max_tracked);
            sort_listing(&mut all);
            Ok::<_, CallError>(all)
        };
        Ok(self
            .redis
            .call(Caller::Throttle, "list", ADMIN_TIMEOUT, call)
            .await?)
    }

    async fn clear(&self, filter: &Filter) -> Result<Vec<ThrottleKey>, NoAnswer> {
        let call = async {
            if let Filter::Account(name) = filter {
                // One key, found by name: no need to walk the others.
                let key = ThrottleKey::Account(name.clone());
                let removed: i64 = ::redis::cmd("DEL")
                    .arg(self.key_name(&key))
                    .query_async(&mut self.redis.connection())
                    .await?;
                return Ok(if removed > 0 { vec![key] } else { Vec::new() });
            }
            let kind = match filter {
                Filter::Networks(_) => "net:",
                Filter::All | Filter::Account(_) => "",
            };
            let pattern = format!("{}{kind}*", glob_escape(&self.prefix));
            let mut removed = Vec::new();
            let mut cursor = 0u64;
            loop {
                let (next, keys) = self.scan(cursor, &pattern).await?;
                let doomed: Vec<(String, ThrottleKey)> = keys
                    .into_iter()
                    .filter(|(_, key)| filter.matches(key))
                    .collect();
                if !doomed.is_empty() {
                    let mut pipe = ::redis::pipe();
                    for (name, _) in &doomed {
                        pipe.cmd("DEL").arg(name);
                    }
                    let deleted: Vec<i64> = pipe.query_async(&mut self.redis.connection()).await?;
                    // Another daemon (or expiry) may have removed a key between scan and delete.
                    removed.extend(
                        doomed
                            .into_iter()
                            .zip(deleted)
                            .filter(|(_, n)| *n > 0)
                            .map(|((_, key), _)| key),
                    );
                }
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
            Ok::<_, CallError>(removed)
        };
        Ok(self
            .redis
            .call(Caller::Throttle, "clear", ADMIN_TIMEOUT, call)
            .await?)
    }
}

fn counts_pipe(names: &[String]) -> ::redis::Pipeline {
    let mut pipe = ::redis::pipe();
    for name in names {
        pipe.cmd("HMGET")
            .arg(name)
            .arg("failures")
            .arg("last")
            .arg("blocked");
    }
    pipe
}

/// A hash's counting fields, as memory's entry has them.
fn counts_from_row((failures, last, blocked): (Option<i64>, Option<i64>, Option<i64>)) -> Counts {
    match (failures, last) {
        (Some(failures), Some(last)) => Counts {
            failures: clamp_count(failures),
            last_failure: last,
            blocked_until: blocked,
        },
        // Gone between two calls, or not written by us: nothing to hold.
        _ => Counts::NONE,
    }
}

fn clamp_count(n: i64) -> u32 {
    u32::try_from(n.max(0)).unwrap_or(u32::MAX)
}

/// SCAN's MATCH is a glob: a prefix with `*`, `?`, `[` or `\` must match only itself.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;

    #[test]
    fn glob_characters_in_the_prefix_match_only_themselves() {
        assert_eq!(glob_escape("mailauthd:throttle:"), "mailauthd:throttle:");
        assert_eq!(glob_escape(r"a*b?c[d]e\f"), r"a\*b\?c\[d\]e\\f");
    }

    #[tokio::test]
    async fn key_names_carry_the_prefix_and_read_back() {
        let redis = Redis::open(
            &RedisUrl::new("redis://127.0.0.1:1/"),
            Arc::new(SystemClock),
        );
        let r = RedisStandings::new(Arc::new(redis.unwrap()), "site:");
        let keys = [
            ThrottleKey::network_of("192.0.2.7".parse().unwrap()),
            ThrottleKey::network_of("2001:db8:1:2::3".parse().unwrap()),
            ThrottleKey::account("alice@example.org"),
            ThrottleKey::account("odd:name with spaces"),
        ];
        let names: Vec<String> = keys.iter().map(|k| r.key_name(k)).collect();
        assert_eq!(
            names,
            [
                "site:net:192.0.2.7/32",
                "site:net:2001:db8:1:2::/64",
                "site:acct:alice@example.org",
                "site:acct:odd:name with spaces",
            ]
        );
        for (key, name) in keys.iter().zip(&names) {
            assert_eq!(r.parse_key_name(name).as_ref(), Some(key));
        }
        assert_eq!(r.parse_key_name("other:net:192.0.2.7/32"), None);
        assert_eq!(r.parse_key_name("site:net:not-a-net"), None);
        assert_eq!(r.parse_key_name("site:something"), None);
    }

    #[tokio::test]
    async fn reconfigure_names_what_needs_a_restart_and_keeps_running_with_it() {
        let fingerprinter = Fingerprinter::with_key([3; 32]);
        let clock = Arc::new(SystemClock);
        let memory = open_throttle(
            ThrottleConfig::default(),
            fingerprinter.clone(),
            clock.clone(),
        )
        .unwrap();
        assert!(memory
            .reconfigure(ThrottleConfig {
                redis_prefix: "other:".into(),
                ..ThrottleConfig::default()
            })
            .is_empty());
        let wanted = RedisUrl::new("redis://127.0.0.1:1/");
        assert_eq!(
            memory.reconfigure(ThrottleConfig {
                redis_url: Some(wanted.clone()),
                ..ThrottleConfig::default()
            }),
            ["throttle.redis_url"]
        );
        assert_eq!(memory.config().redis_url, None, "still in memory");
        assert!(!memory.is_shared());

        let shared = open_throttle(
            ThrottleConfig {
                redis_url: Some(wanted.clone()),
                ..ThrottleConfig::default()
            },
            fingerprinter,
            clock,
        )
        .unwrap();
        assert!(shared.is_shared());
        assert_eq!(
            shared.reconfigure(ThrottleConfig {
                redis_url: Some(RedisUrl::new("redis://127.0.0.1:2/")),
                redis_prefix: "moved:".into(),
                free_failures: 7,
                ..ThrottleConfig::default()
            }),
            ["throttle.redis_url", "throttle.redis_prefix"]
        );
        let running = shared.config();
        assert_eq!(running.redis_url, Some(wanted));
        assert_eq!(running.redis_prefix, "mailauthd:throttle:");
        assert_eq!(running.free_failures, 7, "the rest applies at once");
    }
}
