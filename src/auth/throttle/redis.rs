//! Throttle state in Redis, so several daemons count failures as one.
//!
//! One hash per network or account (`{prefix}net:192.0.2.7/32`, `{prefix}acct:alice@…`)
//! with the fields of a memory entry; each update is one Lua script run, so concurrent
//! daemons never lose a count, and each key carries a PEXPIRE so Redis forgets it on its
//! own once no rule can need it. Reads compute the standing here, with the same function
//! memory uses. Nothing in this file bounds time or falls back: `front.rs` does both.

use std::fmt;
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{IntoConnectionInfo, RedisError, Script};
use ipnet::IpNet;

use super::{
    log_block, millis, sort_listing, standing, BlockInfo, Filter, KeyKind, Standing,
    ThrottleConfig, ThrottleKey, KNOWN_NETWORKS, RELAX_INTERVAL_MS,
};
use crate::clock::UnixMillis;
use crate::store::DatabaseUrl;

/// Keys outlive the rules that need them by this much, so daemons whose clocks differ by
/// a few seconds still read the same state.
const EXPIRY_SLACK_MS: i64 = 5_000;

/// One attempt to (re)connect; calls are bounded separately and much shorter.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Keys asked for per SCAN step and per pipeline, for `list` and `clear`.
const SCAN_BATCH: usize = 500;

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

    /// Whether the redis client accepts the URL, with what to write instead if not.
    pub fn check(&self) -> Result<(), String> {
        // The client's own parse errors never repeat the URL, so they are safe to show.
        match self.0.as_str().into_connection_info() {
            Ok(_) => Ok(()),
            Err(e) => Err(format!(
                "not a usable Redis URL ({e}); write redis://HOST:PORT/DB, \
                 redis://:PASSWORD@HOST:PORT/DB or unix:///PATH/redis.sock?db=N"
            )),
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

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisUrl({})", self.redacted())
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Why a Redis call gave no answer to use.
#[derive(Debug)]
pub(super) enum CallError {
    Redis(RedisError),
    /// Took longer than `redis_timeout_ms` (or the longer bound of `list` and `clear`).
    Timeout(Duration),
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Redis(e) => write!(f, "{e}"),
            CallError::Timeout(limit) => write!(f, "no answer within {} ms", limit.as_millis()),
        }
    }
}

impl From<RedisError> for CallError {
    fn from(e: RedisError) -> Self {
        CallError::Redis(e)
    }
}

pub(super) struct RedisThrottle {
    url: RedisUrl,
    prefix: String,
    /// Reconnects on its own after an error; cloned (an `Arc`) for each call.
    connection: ConnectionManager,
    fail: Script,
    succeed: Script,
    remember: Script,
}

impl RedisThrottle {
    /// Connects lazily: a Redis that is down at start-up delays nothing and refuses
    /// nothing, the first calls simply fall back. Must run inside a Tokio runtime.
    pub(super) fn open(url: &RedisUrl, prefix: &str) -> Result<Self, RedisError> {
        let client = ::redis::Client::open(url.expose())?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            // Every call is bounded by the caller, with the timeout in force at that moment.
            .set_response_timeout(None)
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let connection = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(RedisThrottle {
            url: url.clone(),
            prefix: prefix.to_string(),
            connection,
            fail: Script::new(include_str!("fail.lua")),
            succeed: Script::new(include_str!("succeed.lua")),
            remember: Script::new(include_str!("remember.lua")),
        })
    }

    pub(super) fn url(&self) -> &RedisUrl {
        &self.url
    }

    pub(super) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Each key's standing at `now`, in the order given, and whether `known`'s network
    /// logged in to its account within `known_network_for`; one round trip.
    pub(super) async fn standings_and_known(
        &self,
        keys: &[ThrottleKey],
        known: Option<(&ThrottleKey, IpNet)>,
        now: UnixMillis,
        config: &ThrottleConfig,
    ) -> Result<(Vec<Standing>, bool), CallError> {
        let names: Vec<String> = keys.iter().map(|k| self.key_name(k)).collect();
        let mut pipe = counts_pipe(&names);
        if let Some((account, net)) = known {
            // HMGET, so every reply of the pipeline is a list of optional numbers.
            pipe.cmd("HMGET")
                .arg(self.known_name(account))
                .arg(net.to_string());
        }
        let mut rows: Vec<Vec<Option<i64>>> =
            pipe.query_async(&mut self.connection.clone()).await?;
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
                Counts::from_row((field(0), field(1), field(2))).standing(now, config)
            })
            .collect();
        Ok((standings, known))
    }

    /// Each key's standing at `now`, in the order given.
    pub(super) async fn standings(
        &self,
        keys: &[ThrottleKey],
        now: UnixMillis,
        config: &ThrottleConfig,
    ) -> Result<Vec<Standing>, CallError> {
        let names: Vec<String> = keys.iter().map(|k| self.key_name(k)).collect();
        let counts = self.counts(&names).await?;
        Ok(counts
            .into_iter()
            .map(|c| c.standing(now, config))
            .collect())
    }

    /// Counts a refused attempt against `keys`; see `fail.lua`.
    pub(super) async fn record_failure(
        &self,
        keys: &[ThrottleKey],
        fingerprint: u64,
        now: UnixMillis,
        config: &ThrottleConfig,
    ) -> Result<(), CallError> {
        let window = millis(config.window);
        let block = millis(config.block_duration);
        let mut call = self.fail.prepare_invoke();
        for key in keys {
            call.key(self.key_name(key));
        }
        call.arg(now)
            .arg(fingerprint.to_string())
            .arg(window)
            .arg(window.saturating_add(EXPIRY_SLACK_MS))
            .arg(now.saturating_add(block))
            .arg(block.saturating_add(EXPIRY_SLACK_MS));
        for key in keys {
            call.arg(match key.kind() {
                KeyKind::Network => config.network_block_after,
                KeyKind::Account => config.account_block_after,
            });
        }
        let results: Vec<(i64, i64, i64)> = call.invoke_async(&mut self.connection.clone()).await?;
        for (key, (failures, _until, newly_blocked)) in keys.iter().zip(results) {
            // Logged by the daemon whose attempt set the block, once for the site.
            if newly_blocked == 1 {
                log_block(key, clamp_count(failures), config);
            }
        }
        Ok(())
    }

    /// Feeds a successful login back (see `succeed.lua`) and remembers `known`'s network
    /// as one its account's owner logs in from (see `remember.lua`).
    pub(super) async fn record_success(
        &self,
        keys: &[ThrottleKey],
        known: Option<(&ThrottleKey, IpNet)>,
        now: UnixMillis,
        config: &ThrottleConfig,
    ) -> Result<(), CallError> {
        let mut call = self.succeed.prepare_invoke();
        for key in keys {
            call.key(self.key_name(key));
        }
        call.arg(now)
            .arg(millis(config.window))
            .arg(RELAX_INTERVAL_MS);
        for key in keys {
            call.arg(key.kind().name());
        }
        let _: i64 = call.invoke_async(&mut self.connection.clone()).await?;
        if let Some((account, net)) = known {
            let ttl = millis(config.known_network_for);
            let _: i64 = self
                .remember
                .key(self.known_name(account))
                .arg(net.to_string())
                .arg(now)
                .arg(ttl.saturating_add(EXPIRY_SLACK_MS))
                .arg(KNOWN_NETWORKS)
                .invoke_async(&mut self.connection.clone())
                .await?;
        }
        Ok(())
    }

    /// Every network and account any daemon holds something against, blocked first; at
    /// most `max_tracked`, like memory.
    pub(super) async fn list(
        &self,
        now: UnixMillis,
        config: &ThrottleConfig,
    ) -> Result<Vec<BlockInfo>, CallError> {
        let mut all = Vec::new();
        let pattern = format!("{}*", glob_escape(&self.prefix));
        let mut cursor = 0u64;
        loop {
            let (next, names) = self.scan(cursor, &pattern).await?;
            let keys: Vec<(String, ThrottleKey)> = names
                .into_iter()
                .filter_map(|name| self.parse_key_name(&name).map(|key| (name, key)))
                .collect();
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
        Ok(all)
    }

    /// Deletes the keys `filter` matches, whichever daemon wrote them; returns those
    /// removed.
    pub(super) async fn clear(&self, filter: &Filter) -> Result<Vec<ThrottleKey>, CallError> {
        if let Filter::Account(name) = filter {
            // One key, found by name: no need to walk the others.
            let key = ThrottleKey::Account(name.clone());
            let removed: i64 = ::redis::cmd("DEL")
                .arg(self.key_name(&key))
                .query_async(&mut self.connection.clone())
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
            let (next, names) = self.scan(cursor, &pattern).await?;
            let doomed: Vec<(String, ThrottleKey)> = names
                .into_iter()
                .filter_map(|name| self.parse_key_name(&name).map(|key| (name, key)))
                .filter(|(_, key)| filter.matches(key))
                .collect();
            if !doomed.is_empty() {
                let mut pipe = ::redis::pipe();
                for (name, _) in &doomed {
                    pipe.cmd("DEL").arg(name);
                }
                let deleted: Vec<i64> = pipe.query_async(&mut self.connection.clone()).await?;
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
        Ok(removed)
    }

    async fn scan(&self, cursor: u64, pattern: &str) -> Result<(u64, Vec<String>), CallError> {
        let (next, names): (u64, Vec<Vec<u8>>) = ::redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(SCAN_BATCH)
            .query_async(&mut self.connection.clone())
            .await?;
        // Our keys are UTF-8; anything else under the prefix is not ours to read.
        let names = names
            .into_iter()
            .filter_map(|n| String::from_utf8(n).ok())
            .collect();
        Ok((next, names))
    }

    /// The counting fields of each named hash, one round trip.
    async fn counts(&self, names: &[String]) -> Result<Vec<Counts>, CallError> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<(Option<i64>, Option<i64>, Option<i64>)> = counts_pipe(names)
            .query_async(&mut self.connection.clone())
            .await?;
        Ok(rows.into_iter().map(Counts::from_row).collect())
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

    fn parse_key_name(&self, name: &str) -> Option<ThrottleKey> {
        let rest = name.strip_prefix(&self.prefix)?;
        if let Some(net) = rest.strip_prefix("net:") {
            return net.parse::<IpNet>().ok().map(ThrottleKey::Network);
        }
        rest.strip_prefix("acct:")
            .map(|name| ThrottleKey::Account(name.to_string()))
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
struct Counts {
    failures: u32,
    last_failure: UnixMillis,
    blocked_until: Option<UnixMillis>,
}

impl Counts {
    const NONE: Counts = Counts {
        failures: 0,
        last_failure: 0,
        blocked_until: None,
    };

    fn from_row((failures, last, blocked): (Option<i64>, Option<i64>, Option<i64>)) -> Counts {
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

    fn standing(&self, now: UnixMillis, config: &ThrottleConfig) -> Standing {
        standing(
            self.failures,
            self.last_failure,
            self.blocked_until,
            now,
            config,
        )
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
            let why = RedisUrl::new(bad).check().unwrap_err();
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

    #[test]
    fn glob_characters_in_the_prefix_match_only_themselves() {
        assert_eq!(glob_escape("mailauthd:throttle:"), "mailauthd:throttle:");
        assert_eq!(glob_escape(r"a*b?c[d]e\f"), r"a\*b\?c\[d\]e\\f");
    }

    #[tokio::test]
    async fn key_names_carry_the_prefix_and_read_back() {
        let r = RedisThrottle::open(&RedisUrl::new("redis://127.0.0.1:1/"), "site:").unwrap();
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
}
