//! Abuse resistance (DESIGN §7): progressive delays, then temporary blocks, per source
//! network and per account.
//!
//! [`MemoryThrottle`] is pure and synchronous: every method takes the time as a parameter
//! and nothing here sleeps, so the decision core does the waiting (asynchronously) and
//! tests move a number instead of waiting. Its state lives in memory, in shards each
//! behind a `std` mutex held for a few map operations and never across an await.
//!
//! [`Throttle`] is what the daemon holds: the same rules with the state either in that
//! memory or, when several daemons share the load, in Redis (`redis.rs`), falling back to
//! memory whenever Redis does not answer in time (`front.rs`).

mod front;
mod health;
mod redis;

pub use self::front::{ClearError, SetupError, Throttle, Ticket};
pub use self::redis::RedisUrl;

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

use hmac::{Hmac, Mac};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Serialize, Serializer};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::auth::app_password::AppPasswordKey;
use crate::clock::UnixMillis;
use crate::names::Address;

/// Postfix's Dovecot SASL client waits 10 s for an answer; a delay at or beyond that turns
/// a refusal into a dropped session, which Postfix reports as a temporary failure.
pub const POSTFIX_SASL_TIMEOUT: Duration = Duration::from_secs(10);

/// Independent locks; with 2–8 cores, 16 keeps two logins from meeting on one lock rare.
const SHARDS: usize = 16;

/// Distinct wrong secrets remembered per key. A stale client repeats one old password;
/// a few slots cover a household of stale devices behind one address.
const RECENT_SECRETS: usize = 4;

/// Networks remembered per account as its owner's (see `known_network_for`).
const KNOWN_NETWORKS: usize = 4;

/// Login names come from the network; a key never holds more than an address can be.
const MAX_ACCOUNT_KEY_BYTES: usize = 320;

/// A network is relaxed by a success at most this often, so an attacker who owns one
/// account cannot interleave its own good logins to wash away failures against others.
const RELAX_INTERVAL_MS: i64 = 60_000;

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
                problems.push(("redis_url", why));
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

/// What the throttle says about an attempt before any credential is looked at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Go ahead after waiting this long.
    Delay(Duration),
    /// Refuse until `until`; `key` is the network or account that is blocked.
    Blocked {
        until: UnixMillis,
        key: ThrottleKey,
    },
}

/// An attempt as the throttle sees it when it arrives, before anything is decided.
#[derive(Clone, Copy, Debug)]
pub struct Attempt<'a> {
    pub rip: Option<IpAddr>,
    /// The canonical address, or the login text when it is no address.
    pub account: &'a str,
    /// [`Fingerprinter::fingerprint`] of the account and the secret.
    pub fingerprint: u64,
    /// The secret is shaped like an app password: about 94 random bits that nobody
    /// guesses, so the account's standing never holds it up (its network's still does).
    pub app_password: bool,
    /// `false` for Dovecot's `no-penalty`: delays and blocks apply, nothing is counted.
    pub counted: bool,
}

/// How an admitted attempt ended, as far as the throttle cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settlement {
    /// A wrong guess, or an attempt the hash pool was too busy to check: counted against
    /// its network and account as if it had come alone.
    Failure,
    /// Relaxes its network, clears its account and remembers the network as the owner's.
    Success,
    /// Not a guess (an outage, a service not served here): only its reservation ends.
    Neither,
}

/// The keys an attempt is held up by and charged to.
#[derive(Debug, Default)]
struct Plan {
    /// Checked for delays and blocks, reserved while in flight, charged on failure.
    held: Vec<ThrottleKey>,
    /// Charged on failure but never holding the attempt up: the account, for a login from
    /// a network its owner used recently.
    charged_only: Vec<ThrottleKey>,
}

impl Plan {
    fn charged(&self) -> impl Iterator<Item = &ThrottleKey> {
        self.held.iter().chain(&self.charged_only)
    }
}

/// Who failures are counted against.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ThrottleKey {
    /// An IPv4 /32 or an IPv6 /64: one customer's prefix, whatever address it picks.
    Network(IpNet),
    /// A canonical address, or the bounded login text when it is not an address.
    Account(String),
}

impl ThrottleKey {
    pub fn network_of(ip: IpAddr) -> ThrottleKey {
        ThrottleKey::Network(match ip.to_canonical() {
            IpAddr::V4(v4) => IpNet::V4(Ipv4Net::new_assert(v4, 32)),
            IpAddr::V6(v6) => IpNet::V6(Ipv6Net::new_assert(v6, 64).trunc()),
        })
    }

    pub fn account(name: &str) -> ThrottleKey {
        let name = name.trim();
        let mut end = name.len().min(MAX_ACCOUNT_KEY_BYTES);
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        ThrottleKey::Account(name[..end].to_string())
    }

    pub fn kind(&self) -> KeyKind {
        match self {
            ThrottleKey::Network(_) => KeyKind::Network,
            ThrottleKey::Account(_) => KeyKind::Account,
        }
    }
}

impl fmt::Display for ThrottleKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ThrottleKey::Network(net) => write!(f, "{net}"),
            ThrottleKey::Account(name) => f.write_str(name),
        }
    }
}

impl Serialize for ThrottleKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyKind {
    Network,
    Account,
}

impl KeyKind {
    pub fn name(self) -> &'static str {
        match self {
            KeyKind::Network => "network",
            KeyKind::Account => "account",
        }
    }
}

/// One line of `mailauthd throttle list`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BlockInfo {
    pub key: ThrottleKey,
    pub kind: KeyKind,
    /// Failures counted within the window (repeats of one secret count once).
    pub failures: u32,
    pub blocked_until: Option<UnixMillis>,
}

/// Keyed hashes of refused secrets, so a repeat can be recognised without keeping the
/// secret. In memory the key is random per process: the fingerprints mean nothing outside
/// it and cannot be tested against a password list. Daemons sharing state in Redis must
/// agree on the key, so there it comes from the site's key file ([`Fingerprinter::for_site`]).
#[derive(Clone)]
pub struct Fingerprinter {
    key: Zeroizing<[u8; 32]>,
}

/// Separates the fingerprint key from every other use of the site key.
const SITE_FINGERPRINT_LABEL: &[u8] = b"mailauthd throttle fingerprint key v1";

impl Fingerprinter {
    pub fn random() -> Result<Self, getrandom::Error> {
        let mut key = Zeroizing::new([0u8; 32]);
        getrandom::fill(key.as_mut())?;
        Ok(Fingerprinter { key })
    }

    /// The same key on every daemon that shares the key file, so a stale client's one old
    /// password counts once for the whole site, not once per daemon it happens to reach.
    /// Derived under its own label: a fingerprint in Redis reveals nothing about app
    /// password hashes, and a Redis dump alone cannot test guesses against it.
    pub fn for_site(site_key: &AppPasswordKey) -> Self {
        Fingerprinter {
            key: site_key.derive(SITE_FINGERPRINT_LABEL),
        }
    }

    /// A fixed key, for tests that want repeatable fingerprints.
    pub fn with_key(key: [u8; 32]) -> Self {
        Fingerprinter {
            key: Zeroizing::new(key),
        }
    }

    /// The account is part of the input: one password sprayed across many accounts from
    /// one network is many guesses, not one stale client repeating itself.
    pub fn fingerprint(&self, account: &str, secret: &[u8]) -> u64 {
        // HMAC accepts keys of any length, so this cannot fail.
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(self.key.as_ref()) else {
            return 0;
        };
        mac.update(b"mailauthd throttle v1\0");
        mac.update(&(account.len() as u64).to_be_bytes());
        mac.update(account.as_bytes());
        mac.update(secret);
        let digest = mac.finalize().into_bytes();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        u64::from_be_bytes(first)
    }
}

impl fmt::Debug for Fingerprinter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Fingerprinter([redacted])")
    }
}

/// Brute-force state for every source network and account this process has seen fail.
pub struct MemoryThrottle {
    /// Read once per call and never held across an await, so a reload can swap it while
    /// logins run ([`MemoryThrottle::set_config`]).
    config: RwLock<Arc<ThrottleConfig>>,
    fingerprinter: Fingerprinter,
    shards: Vec<Mutex<Shard>>,
    /// Randomly seeded, so nobody can choose keys that all land on one shard.
    placement: RandomState,
    per_shard: AtomicUsize,
}

impl fmt::Debug for MemoryThrottle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryThrottle")
            .field("config", &self.config())
            .field("tracked", &self.tracked())
            .finish_non_exhaustive()
    }
}

/// Which keys an attempt touches.
enum Scope {
    Exempt,
    Keys(Vec<ThrottleKey>),
}

/// What to remove with [`MemoryThrottle::clear`].
enum Filter {
    All,
    Networks(IpNet),
    Account(String),
}

impl MemoryThrottle {
    /// `config` should have passed [`ThrottleConfig::validate`].
    pub fn new(config: ThrottleConfig, fingerprinter: Fingerprinter) -> Self {
        MemoryThrottle {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            placement: RandomState::new(),
            per_shard: AtomicUsize::new(per_shard(&config)),
            config: RwLock::new(Arc::new(config)),
            fingerprinter,
        }
    }

    /// The settings in force now; a later [`MemoryThrottle::set_config`] does not change
    /// the copy returned.
    pub fn config(&self) -> Arc<ThrottleConfig> {
        self.config
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// New settings for every call from now on. What is counted stays: a lower threshold
    /// applies at a key's next failure, a shorter window at its next check.
    pub fn set_config(&self, config: ThrottleConfig) {
        self.per_shard.store(per_shard(&config), Ordering::Relaxed);
        *self.config.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(config);
    }

    pub fn fingerprinter(&self) -> &Fingerprinter {
        &self.fingerprinter
    }

    /// How long a blocked attempt is held before it is refused: as long as the longest
    /// delay, so a blocked client learns nothing faster than a delayed one.
    pub fn blocked_delay(&self) -> Duration {
        self.config().max_delay
    }

    /// Whether, and how long, an attempt must wait before credentials are checked;
    /// attempts in flight count as failures. Reserves nothing (see [`Self::reserve`]).
    pub fn check(&self, rip: Option<IpAddr>, account: &str, now: UnixMillis) -> Verdict {
        let config = self.config();
        let Scope::Keys(keys) = scope(&config, rip, account) else {
            return Verdict::Allow;
        };
        let standings = keys
            .into_iter()
            .map(|key| {
                let standing = self.shard(&key).look(&key, None, now, &config).0;
                (key, standing)
            })
            .collect();
        verdict(standings, &config)
    }

    /// Reserves a place for an attempt on each of `keys` (unless the same wrong secret
    /// was refused there recently: that repeat will not count) and says whether, and how
    /// long, it must wait; attempts already in flight count as failures. Each key is
    /// checked and reserved under one lock, so concurrent attempts never all see room.
    /// Nothing stays reserved when the verdict is a block. Returns the keys reserved,
    /// for [`Self::release`].
    fn reserve(
        &self,
        keys: &[ThrottleKey],
        fingerprint: u64,
        now: UnixMillis,
    ) -> (Verdict, Vec<ThrottleKey>) {
        let config = self.config();
        self.reserve_each(keys, &config, |shard, key| {
            shard.look(key, Some(fingerprint), now, &config)
        })
    }

    /// Takes a place on each key before its standing is read elsewhere (Redis), and
    /// returns how many other attempts were in flight there at that moment. Reserving
    /// first is what makes the sum of the two exact or higher, never lower: an attempt
    /// that settles meanwhile wrote its failure before it gave its place up.
    fn reserve_blind(&self, keys: &[ThrottleKey]) -> Vec<u32> {
        keys.iter()
            .map(|key| {
                let mut shard = self.shard(key);
                let count = shard.in_flight.entry(key.clone()).or_insert(0);
                *count += 1;
                *count - 1
            })
            .collect()
    }

    /// Attempts in flight on each key now, reserving nothing.
    fn in_flight_on(&self, keys: &[ThrottleKey]) -> Vec<u32> {
        keys.iter()
            .map(|key| self.shard(key).in_flight.get(key).copied().unwrap_or(0))
            .collect()
    }

    fn reserve_each(
        &self,
        keys: &[ThrottleKey],
        config: &ThrottleConfig,
        mut look: impl FnMut(&mut Shard, &ThrottleKey) -> (Standing, bool),
    ) -> (Verdict, Vec<ThrottleKey>) {
        let mut reserved = Vec::with_capacity(keys.len());
        let mut standings = Vec::with_capacity(keys.len());
        for key in keys {
            let mut shard = self.shard(key);
            let (standing, repeat) = look(&mut shard, key);
            if !matches!(standing, Standing::Blocked(_)) && !repeat {
                *shard.in_flight.entry(key.clone()).or_insert(0) += 1;
                reserved.push(key.clone());
            }
            standings.push((key.clone(), standing));
        }
        let verdict = verdict(standings, config);
        if matches!(verdict, Verdict::Blocked { .. }) {
            self.release(&reserved);
            reserved.clear();
        }
        (verdict, reserved)
    }

    /// Takes a place on `key` that never refuses (unless `fingerprint` is a recent repeat,
    /// which takes none) and returns its standing with the attempts in flight before it,
    /// and whether a place was taken.
    fn reserve_soft(
        &self,
        key: &ThrottleKey,
        fingerprint: u64,
        now: UnixMillis,
    ) -> (Standing, bool) {
        let config = self.config();
        let mut shard = self.shard(key);
        let (standing, repeat) = shard.look(key, Some(fingerprint), now, &config);
        if !repeat {
            *shard.in_flight.entry(key.clone()).or_insert(0) += 1;
        }
        (standing, !repeat)
    }

    /// Ends the reservations [`Self::reserve`] made.
    fn release(&self, reserved: &[ThrottleKey]) {
        for key in reserved {
            self.shard(key).release(key);
        }
    }

    /// Counts a failure on each key and ends its reservation under the same lock, so
    /// the key's count never dips in between.
    fn fail_and_release(
        &self,
        keys: &[ThrottleKey],
        reserved: &[ThrottleKey],
        fingerprint: u64,
        now: UnixMillis,
    ) {
        let config = self.config();
        let capacity = self.per_shard.load(Ordering::Relaxed);
        for key in keys {
            let mut shard = self.shard(key);
            shard.fail(key.clone(), fingerprint, now, &config, capacity);
            if reserved.contains(key) {
                shard.release(key);
            }
        }
        for key in reserved.iter().filter(|k| !keys.contains(k)) {
            self.shard(key).release(key);
        }
    }

    /// Whether `net` logged in to `account` within `known_network_for`.
    fn is_known_network(&self, account: &str, net: IpNet, now: UnixMillis) -> bool {
        let config = self.config();
        let key = ThrottleKey::account(account);
        self.shard(&key)
            .known
            .get(&key)
            .is_some_and(|known| known.contains(net, now, millis(config.known_network_for)))
    }

    /// Remembers `rip`'s network as one its owner logs in from.
    fn remember_network(&self, account: &str, rip: IpAddr, now: UnixMillis) {
        let config = self.config();
        if config.known_network_for.is_zero() {
            return;
        }
        let ThrottleKey::Network(net) = ThrottleKey::network_of(rip) else {
            return;
        };
        let key = ThrottleKey::account(account);
        let capacity = self.per_shard.load(Ordering::Relaxed);
        let mut shard = self.shard(&key);
        if !shard.known.contains_key(&key) && shard.known.len() >= capacity {
            let ttl = millis(config.known_network_for);
            shard
                .known
                .retain(|_, k| k.newest() > now.saturating_sub(ttl));
            if shard.known.len() >= capacity {
                // The oldest eighth goes, so a flood of successes pays one sort per many.
                let mut ranked: Vec<(UnixMillis, ThrottleKey)> = shard
                    .known
                    .iter()
                    .map(|(k, v)| (v.newest(), k.clone()))
                    .collect();
                ranked.sort_unstable_by_key(|(at, _)| *at);
                for (_, old) in ranked.into_iter().take(capacity / 8 + 1) {
                    shard.known.remove(&old);
                }
            }
        }
        shard.known.entry(key).or_default().remember(net, now);
    }

    /// Attempts reserved and not yet settled, over every key; a test hook.
    pub fn in_flight(&self) -> u32 {
        self.shards
            .iter()
            .map(|s| lock(s).in_flight.values().sum::<u32>())
            .sum()
    }

    /// Counts a refused attempt against its network and account. `secret_fingerprint`
    /// comes from [`Fingerprinter::fingerprint`]; a secret already refused recently for
    /// the same key counts once.
    pub fn record_failure(
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
        self.fail_and_release(&keys, &[], secret_fingerprint, now);
    }

    /// A success halves its network's failures (shared addresses also carry strangers'
    /// failures) and clears the account's (its owner has just proved who they are).
    pub fn record_success(&self, rip: Option<IpAddr>, account: &str, now: UnixMillis) {
        let config = self.config();
        let Scope::Keys(keys) = scope(&config, rip, account) else {
            return;
        };
        self.succeed_keys(&keys, now);
        if let Some(ip) = rip {
            self.remember_network(account, ip, now);
        }
    }

    fn succeed_keys(&self, keys: &[ThrottleKey], now: UnixMillis) {
        let config = self.config();
        for key in keys {
            self.shard(key).succeed(key, now, &config);
        }
    }

    /// Networks and accounts with failures in the window or a block, blocked ones first.
    pub fn list(&self, now: UnixMillis) -> Vec<BlockInfo> {
        let config = self.config();
        let mut all = Vec::new();
        for shard in &self.shards {
            let mut shard = lock(shard);
            shard.forget_gone(now, &config);
            all.extend(shard.entries.iter().map(|(key, e)| BlockInfo {
                key: key.clone(),
                kind: key.kind(),
                failures: e.failures,
                blocked_until: e.blocked_until,
            }));
        }
        sort_listing(&mut all);
        all
    }

    /// Forgets failures and lifts blocks; returns how many keys were removed. `filter` is
    /// a network (`192.0.2.0/24`, `2001:db8::/48`: every tracked network inside or around
    /// it), an address (its /32 or /64), or an account; `None` clears everything.
    pub fn clear(&self, filter: Option<&str>) -> usize {
        match Filter::parse(filter) {
            Some(filter) => self.clear_matching(&filter).len(),
            None => 0,
        }
    }

    /// The keys removed, so a caller clearing Redis too can count each key once.
    fn clear_matching(&self, filter: &Filter) -> Vec<ThrottleKey> {
        let mut removed = Vec::new();
        for shard in &self.shards {
            let mut shard = lock(shard);
            shard.entries.retain(|key, _| {
                let matches = filter.matches(key);
                if matches {
                    removed.push(key.clone());
                }
                !matches
            });
        }
        removed
    }

    /// Networks and accounts held in memory now, expired ones included until swept.
    pub fn tracked(&self) -> usize {
        self.shards.iter().map(|s| lock(s).entries.len()).sum()
    }

    fn shard(&self, key: &ThrottleKey) -> MutexGuard<'_, Shard> {
        let index = self.placement.hash_one(key) as usize % self.shards.len();
        lock(&self.shards[index])
    }
}

fn per_shard(config: &ThrottleConfig) -> usize {
    (config.max_tracked / SHARDS).max(1)
}

/// The keys an attempt from `rip` for `account` is counted against, whichever backend
/// keeps them.
fn scope(config: &ThrottleConfig, rip: Option<IpAddr>, account: &str) -> Scope {
    if !config.enabled {
        return Scope::Exempt;
    }
    let mut keys = Vec::with_capacity(2);
    if let Some(ip) = rip {
        let ip = ip.to_canonical();
        if config.trusted_networks.iter().any(|n| n.contains(&ip)) {
            return Scope::Exempt;
        }
        keys.push(ThrottleKey::network_of(ip));
    }
    if !account.trim().is_empty() {
        keys.push(ThrottleKey::account(account));
    }
    Scope::Keys(keys)
}

/// The strictest of the keys' standings: the block that ends last, else the longest delay.
fn verdict(standings: Vec<(ThrottleKey, Standing)>, config: &ThrottleConfig) -> Verdict {
    let mut delay = Duration::ZERO;
    let mut blocked: Option<(UnixMillis, ThrottleKey)> = None;
    for (key, standing) in standings {
        match standing {
            Standing::Blocked(until) => {
                if blocked.as_ref().is_none_or(|(u, _)| until > *u) {
                    blocked = Some((until, key));
                }
            }
            Standing::Counting(failures) => delay = delay.max(delay_for(config, failures)),
            Standing::Gone => {}
        }
    }
    match blocked {
        Some((until, key)) => Verdict::Blocked { until, key },
        None if delay.is_zero() => Verdict::Allow,
        None => Verdict::Delay(delay),
    }
}

fn delay_for(config: &ThrottleConfig, failures: u32) -> Duration {
    let Some(doublings) = failures.checked_sub(config.free_failures) else {
        return Duration::ZERO;
    };
    let factor = 1u32 << doublings.min(20);
    config
        .base_delay
        .saturating_mul(factor)
        .min(config.max_delay)
}

/// The stricter of two standings of one key: the later block, else the higher count.
fn stricter(a: Standing, b: Standing) -> Standing {
    match (a, b) {
        (Standing::Blocked(x), Standing::Blocked(y)) => Standing::Blocked(x.max(y)),
        (Standing::Blocked(x), _) | (_, Standing::Blocked(x)) => Standing::Blocked(x),
        (Standing::Counting(x), Standing::Counting(y)) => Standing::Counting(x.max(y)),
        (Standing::Counting(x), Standing::Gone) | (Standing::Gone, Standing::Counting(x)) => {
            Standing::Counting(x)
        }
        (Standing::Gone, Standing::Gone) => Standing::Gone,
    }
}

/// `standing` with `pending` attempts in flight counted as failures: enough of them to
/// reach the block threshold refuse the next attempt as if the block were already set.
fn with_in_flight(
    key: &ThrottleKey,
    standing: Standing,
    pending: u32,
    now: UnixMillis,
    config: &ThrottleConfig,
) -> Standing {
    let failures = match standing {
        Standing::Blocked(_) => return standing,
        Standing::Gone => pending,
        Standing::Counting(failures) => failures.saturating_add(pending),
    };
    let threshold = match key.kind() {
        KeyKind::Network => config.network_block_after,
        KeyKind::Account => config.account_block_after,
    };
    if threshold > 0 && failures >= threshold {
        Standing::Blocked(now)
    } else if failures == 0 {
        Standing::Gone
    } else {
        Standing::Counting(failures)
    }
}

/// Blocked first (latest end first), then most failures, then by key.
fn sort_listing(all: &mut [BlockInfo]) {
    all.sort_by(|a, b| {
        b.blocked_until
            .cmp(&a.blocked_until)
            .then(b.failures.cmp(&a.failures))
            .then(a.key.cmp(&b.key))
    });
}

/// One line per block set, from whichever daemon's attempt set it.
fn log_block(key: &ThrottleKey, failures: u32, config: &ThrottleConfig) {
    tracing::warn!(
        target: "mailauthd::throttle",
        key = %key,
        kind = key.kind().name(),
        failures,
        blocked_secs = config.block_duration.as_secs(),
        "blocked after repeated failures"
    );
}

/// The state is counters: one a panicking thread left half-updated is still usable.
fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Filter {
    /// `None` for text that can name nothing tracked.
    fn parse(filter: Option<&str>) -> Option<Filter> {
        let Some(text) = filter.map(str::trim) else {
            return Some(Filter::All);
        };
        if let Ok(net) = text.parse::<IpNet>() {
            return Some(Filter::Networks(net.trunc()));
        }
        if let Ok(ip) = text.parse::<IpAddr>() {
            return match ThrottleKey::network_of(ip) {
                ThrottleKey::Network(net) => Some(Filter::Networks(net)),
                ThrottleKey::Account(_) => None,
            };
        }
        let name = Address::parse(text)
            .map(|a| a.as_str().to_string())
            .unwrap_or_else(|_| text.to_string());
        match ThrottleKey::account(&name) {
            ThrottleKey::Account(name) => Some(Filter::Account(name)),
            ThrottleKey::Network(_) => None,
        }
    }

    fn matches(&self, key: &ThrottleKey) -> bool {
        match (self, key) {
            (Filter::All, _) => true,
            (Filter::Networks(filter), ThrottleKey::Network(net)) => {
                filter.contains(net) || net.contains(filter)
            }
            (Filter::Account(filter), ThrottleKey::Account(name)) => filter == name,
            (Filter::Networks(_), ThrottleKey::Account(_))
            | (Filter::Account(_), ThrottleKey::Network(_)) => false,
        }
    }
}

#[derive(Default)]
struct Shard {
    entries: HashMap<ThrottleKey, Entry>,
    /// Attempts admitted and not yet decided, per key; they count as failures until then.
    /// Kept apart from `entries` (and never in Redis): a daemon that dies takes its
    /// attempts in flight with it.
    in_flight: HashMap<ThrottleKey, u32>,
    /// Per account, the networks its owner logged in from lately.
    known: HashMap<ThrottleKey, KnownNetworks>,
}

struct Entry {
    failures: u32,
    last_failure: UnixMillis,
    blocked_until: Option<UnixMillis>,
    relaxed_at: Option<UnixMillis>,
    recent: RecentSecrets,
}

/// Where a key stands at some moment.
#[derive(Clone, Debug)]
enum Standing {
    /// Nothing to hold against it (never failed, window passed, or block served).
    Gone,
    Counting(u32),
    Blocked(UnixMillis),
}

impl Entry {
    fn new(now: UnixMillis) -> Self {
        Entry {
            failures: 0,
            last_failure: now,
            blocked_until: None,
            relaxed_at: None,
            recent: RecentSecrets::default(),
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

/// Where a key with these counts stands at `now`; the one rule both backends read by.
fn standing(
    failures: u32,
    last_failure: UnixMillis,
    blocked_until: Option<UnixMillis>,
    now: UnixMillis,
    config: &ThrottleConfig,
) -> Standing {
    match blocked_until {
        Some(until) if until > now => Standing::Blocked(until),
        // A served block wipes the slate: the key starts again with free failures.
        Some(_) => Standing::Gone,
        None if now.saturating_sub(last_failure) >= millis(config.window) => Standing::Gone,
        None if failures == 0 => Standing::Gone,
        None => Standing::Counting(failures),
    }
}

impl Shard {
    /// The key's standing with its attempts in flight counted as failures, and whether
    /// `fingerprint` is a wrong secret it refused recently (a repeat that will not count).
    fn look(
        &mut self,
        key: &ThrottleKey,
        fingerprint: Option<u64>,
        now: UnixMillis,
        config: &ThrottleConfig,
    ) -> (Standing, bool) {
        let standing = self.standing(key, now, config);
        let repeat = match (fingerprint, &standing) {
            (Some(fp), Standing::Counting(_)) => {
                self.entries.get(key).is_some_and(|e| e.recent.contains(fp))
            }
            _ => false,
        };
        (self.with_in_flight(key, standing, now, config), repeat)
    }

    /// `standing` with this key's attempts in flight added: enough of them to reach the
    /// block threshold refuse the next attempt as if the block were already set.
    fn with_in_flight(
        &self,
        key: &ThrottleKey,
        standing: Standing,
        now: UnixMillis,
        config: &ThrottleConfig,
    ) -> Standing {
        let pending = self.in_flight.get(key).copied().unwrap_or(0);
        with_in_flight(key, standing, pending, now, config)
    }

    fn release(&mut self, key: &ThrottleKey) {
        if let Some(n) = self.in_flight.get_mut(key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.in_flight.remove(key);
            }
        }
    }

    fn standing(
        &mut self,
        key: &ThrottleKey,
        now: UnixMillis,
        config: &ThrottleConfig,
    ) -> Standing {
        let Some(entry) = self.entries.get(key) else {
            return Standing::Gone;
        };
        let standing = entry.standing(now, config);
        if let Standing::Gone = standing {
            self.entries.remove(key);
        }
        standing
    }

    fn fail(
        &mut self,
        key: ThrottleKey,
        fingerprint: u64,
        now: UnixMillis,
        config: &ThrottleConfig,
        capacity: usize,
    ) {
        if !self.entries.contains_key(&key) {
            self.make_room(now, config, capacity);
            self.entries.insert(key.clone(), Entry::new(now));
        }
        let Some(entry) = self.entries.get_mut(&key) else {
            return;
        };
        match entry.standing(now, config) {
            // Attempts admitted just before the block started; the block stands as set.
            Standing::Blocked(_) => return,
            Standing::Gone => *entry = Entry::new(now),
            Standing::Counting(_) => {}
        }
        // The same wrong secret again: a stale client retrying, not a new guess. It
        // neither counts nor keeps the window open.
        if entry.recent.contains(fingerprint) {
            return;
        }
        entry.recent.push(fingerprint);
        entry.failures = entry.failures.saturating_add(1);
        entry.last_failure = now;
        let threshold = match key.kind() {
            KeyKind::Network => config.network_block_after,
            KeyKind::Account => config.account_block_after,
        };
        if threshold > 0 && entry.failures >= threshold {
            entry.blocked_until = Some(now.saturating_add(millis(config.block_duration)));
            log_block(&key, entry.failures, config);
        }
    }

    fn succeed(&mut self, key: &ThrottleKey, now: UnixMillis, config: &ThrottleConfig) {
        let Some(entry) = self.entries.get_mut(key) else {
            return;
        };
        match (key.kind(), entry.standing(now, config)) {
            // A network stays blocked until the block ends or a postmaster lifts it.
            (KeyKind::Network, Standing::Blocked(_)) => {}
            (KeyKind::Network, Standing::Counting(failures)) => {
                let due = entry
                    .relaxed_at
                    .is_none_or(|t| now.saturating_sub(t) >= RELAX_INTERVAL_MS);
                if due {
                    entry.failures = failures / 2;
                    entry.relaxed_at = Some(now);
                    if entry.failures == 0 {
                        self.entries.remove(key);
                    }
                }
            }
            // The owner has the password; that includes a login that was already being
            // checked when another attempt set the account's block.
            (KeyKind::Account, _) | (KeyKind::Network, Standing::Gone) => {
                self.entries.remove(key);
            }
        }
    }

    fn forget_gone(&mut self, now: UnixMillis, config: &ThrottleConfig) {
        self.entries
            .retain(|_, e| !matches!(e.standing(now, config), Standing::Gone));
    }

    /// Keeps the shard under `capacity` before a new key goes in: expired keys go first;
    /// if that is not enough, an eighth of the shard at once (so a flood of new keys
    /// pays for one sort per many inserts), choosing keys that are not blocked, with the
    /// fewest failures, idle longest. Blocked keys are the last to go, so a flood of fresh
    /// addresses cannot wash a block away.
    fn make_room(&mut self, now: UnixMillis, config: &ThrottleConfig, capacity: usize) {
        if self.entries.len() < capacity {
            return;
        }
        self.forget_gone(now, config);
        if self.entries.len() < capacity {
            return;
        }
        let keep = capacity.saturating_sub(capacity / 8 + 1);
        let excess = self.entries.len().saturating_sub(keep);
        let mut ranked: Vec<((bool, u32, UnixMillis), ThrottleKey)> = self
            .entries
            .iter()
            .map(|(key, e)| {
                let blocked = e.blocked_until.is_some_and(|u| u > now);
                ((blocked, e.failures, e.last_failure), key.clone())
            })
            .collect();
        ranked.sort_unstable_by_key(|(rank, _)| *rank);
        for (_, key) in ranked.into_iter().take(excess) {
            self.entries.remove(&key);
        }
    }
}

/// Networks an account's owner logged in from, newest kept; a few cover home, office
/// and phone.
#[derive(Default)]
struct KnownNetworks {
    slots: [Option<(IpNet, UnixMillis)>; KNOWN_NETWORKS],
}

impl KnownNetworks {
    fn contains(&self, net: IpNet, now: UnixMillis, ttl: i64) -> bool {
        self.slots
            .iter()
            .flatten()
            .any(|(n, at)| *n == net && now.saturating_sub(*at) < ttl)
    }

    fn remember(&mut self, net: IpNet, now: UnixMillis) {
        let slot = self
            .slots
            .iter()
            .position(|s| s.is_some_and(|(n, _)| n == net))
            .or_else(|| self.slots.iter().position(Option::is_none))
            .unwrap_or_else(|| {
                // Full: the network seen longest ago makes room.
                self.slots
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, s)| s.map_or(i64::MIN, |(_, at)| at))
                    .map_or(0, |(i, _)| i)
            });
        self.slots[slot] = Some((net, now));
    }

    fn newest(&self) -> UnixMillis {
        self.slots
            .iter()
            .flatten()
            .map(|(_, at)| *at)
            .max()
            .unwrap_or(0)
    }
}

/// The last few distinct wrong secrets of one key, as fingerprints.
#[derive(Default)]
struct RecentSecrets {
    slots: [u64; RECENT_SECRETS],
    filled: u8,
    next: u8,
}

impl RecentSecrets {
    fn contains(&self, fingerprint: u64) -> bool {
        self.slots[..usize::from(self.filled)].contains(&fingerprint)
    }

    fn push(&mut self, fingerprint: u64) {
        self.slots[usize::from(self.next)] = fingerprint;
        self.next = ((usize::from(self.next) + 1) % RECENT_SECRETS) as u8;
        self.filled = (usize::from(self.filled) + 1).min(RECENT_SECRETS) as u8;
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    const T0: UnixMillis = 1_800_000_000_000;
    const SEC: i64 = 1000;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    fn config() -> ThrottleConfig {
        ThrottleConfig {
            free_failures: 3,
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(5),
            window: Duration::from_secs(600),
            network_block_after: 10,
            account_block_after: 20,
            block_duration: Duration::from_secs(300),
            ..ThrottleConfig::default()
        }
    }

    fn throttle(config: ThrottleConfig) -> MemoryThrottle {
        MemoryThrottle::new(config, Fingerprinter::with_key([9; 32]))
    }

    /// `n` failures with distinct secrets, one second apart from `start`; returns the time
    /// of the last.
    fn fail_n(
        t: &MemoryThrottle,
        rip: &str,
        account: &str,
        n: u32,
        start: UnixMillis,
    ) -> UnixMillis {
        let mut now = start;
        for i in 0..n {
            now = start + i64::from(i) * SEC;
            let fp = t
                .fingerprinter()
                .fingerprint(account, format!("guess {i}").as_bytes());
            t.record_failure(ip(rip), account, fp, now);
        }
        now
    }

    fn ms(n: u64) -> Verdict {
        Verdict::Delay(Duration::from_millis(n))
    }

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
    fn delays_grow_by_doubling_and_stop_at_the_cap() {
        let t = throttle(config());
        let mut seen = Vec::new();
        for n in 0..10 {
            if n > 0 {
                let fp = t.fingerprinter().fingerprint("a@example.org", &[n]);
                t.record_failure(ip("192.0.2.1"), "a@example.org", fp, T0 + i64::from(n));
            }
            seen.push(t.check(ip("192.0.2.1"), "a@example.org", T0 + 10));
        }
        assert_eq!(
            seen,
            [
                Verdict::Allow,
                Verdict::Allow,
                Verdict::Allow,
                ms(250),
                ms(500),
                ms(1000),
                ms(2000),
                ms(4000),
                ms(5000),
                ms(5000),
            ]
        );
        assert_eq!(t.blocked_delay(), Duration::from_secs(5));
    }

    #[test]
    fn a_huge_failure_count_does_not_overflow_the_delay() {
        let t = throttle(ThrottleConfig {
            network_block_after: 0,
            account_block_after: 0,
            ..config()
        });
        fail_n(&t, "192.0.2.1", "", 200, T0);
        assert_eq!(t.check(ip("192.0.2.1"), "", T0 + 200 * SEC), ms(5000));
    }

    #[test]
    fn a_network_is_blocked_after_n_failures_until_the_block_ends() {
        let t = throttle(config());
        let last = fail_n(&t, "192.0.2.7", "victim@example.org", 9, T0);
        assert_eq!(
            t.check(ip("192.0.2.7"), "other@example.org", last),
            ms(5000)
        );
        let last = fail_n(&t, "192.0.2.7", "victim@example.org", 1, last + SEC);
        // Blocked whatever account it tries; the account itself is not (10 < 20).
        let until = last + 300 * SEC;
        let blocked = Verdict::Blocked {
            until,
            key: ThrottleKey::network_of("192.0.2.7".parse().unwrap()),
        };
        assert_eq!(t.check(ip("192.0.2.7"), "other@example.org", last), blocked);
        assert_eq!(
            t.check(ip("192.0.2.7"), "other@example.org", until - 1),
            blocked
        );
        assert_eq!(
            t.check(ip("198.51.100.1"), "victim@example.org", last),
            ms(5000),
            "the account carries its own ten failures, as delays only"
        );
        // Served: the network starts again with free failures.
        assert_eq!(
            t.check(ip("192.0.2.7"), "other@example.org", until),
            Verdict::Allow
        );
        fail_n(&t, "192.0.2.7", "other@example.org", 3, until);
        assert_eq!(
            t.check(ip("192.0.2.7"), "other@example.org", until + 3 * SEC),
            ms(250)
        );
    }

    #[test]
    fn an_account_is_blocked_after_failures_from_many_networks() {
        let t = throttle(config());
        for i in 0..20 {
            let fp = t.fingerprinter().fingerprint("ceo@example.org", &[i]);
            let rip = IpAddr::from([203, 0, 113, i]);
            t.record_failure(Some(rip), "ceo@example.org", fp, T0 + i64::from(i));
        }
        let verdict = t.check(ip("198.51.100.9"), "ceo@example.org", T0 + 20);
        assert_eq!(
            verdict,
            Verdict::Blocked {
                until: T0 + 19 + 300 * SEC,
                key: ThrottleKey::Account("ceo@example.org".into()),
            }
        );
        // Those networks failed once each: other accounts pass from them without delay.
        assert_eq!(
            t.check(ip("203.0.113.5"), "cfo@example.org", T0 + 20),
            Verdict::Allow
        );
    }

    #[test]
    fn failures_are_forgotten_after_a_quiet_window() {
        let t = throttle(config());
        let last = fail_n(&t, "192.0.2.1", "a@example.org", 5, T0);
        assert_eq!(t.check(ip("192.0.2.1"), "a@example.org", last), ms(1000));
        let later = last + 600 * SEC;
        assert_eq!(
            t.check(ip("192.0.2.1"), "a@example.org", later - 1),
            ms(1000)
        );
        assert_eq!(
            t.check(ip("192.0.2.1"), "a@example.org", later),
            Verdict::Allow
        );
        assert_eq!(t.tracked(), 0, "checking an expired key forgets it");
    }

    #[test]
    fn a_stale_client_repeating_one_wrong_password_counts_once() {
        let t = throttle(config());
        let fp = t
            .fingerprinter()
            .fingerprint("alice@example.org", b"old password");
        for i in 0..100 {
            t.record_failure(ip("192.0.2.50"), "alice@example.org", fp, T0 + i * SEC);
        }
        assert_eq!(
            t.check(ip("192.0.2.50"), "alice@example.org", T0 + 100 * SEC),
            Verdict::Allow
        );
        let failures: Vec<u32> = t.list(T0 + 100 * SEC).iter().map(|b| b.failures).collect();
        assert_eq!(failures, [1, 1]);
        // A repeat does not keep the window open either.
        assert_eq!(t.list(T0 + 600 * SEC).len(), 0);
    }

    #[test]
    fn a_few_stale_passwords_alternating_still_count_once_each() {
        let t = throttle(config());
        let fps: Vec<u64> = (0..RECENT_SECRETS)
            .map(|i| t.fingerprinter().fingerprint("bob@example.org", &[i as u8]))
            .collect();
        for round in 0..10 {
            for fp in &fps {
                t.record_failure(ip("192.0.2.60"), "bob@example.org", *fp, T0 + round);
            }
        }
        let info = t.list(T0 + 10);
        assert!(
            info.iter().all(|b| b.failures == RECENT_SECRETS as u32),
            "{info:?}"
        );
    }

    #[test]
    fn one_password_sprayed_over_many_accounts_counts_for_each() {
        let t = throttle(config());
        for i in 0..10 {
            let account = format!("user{i}@example.org");
            let fp = t.fingerprinter().fingerprint(&account, b"Summer2026!");
            t.record_failure(ip("192.0.2.66"), &account, fp, T0 + i);
        }
        assert!(matches!(
            t.check(ip("192.0.2.66"), "user99@example.org", T0 + 10),
            Verdict::Blocked {
                key: ThrottleKey::Network(_),
                ..
            }
        ));
    }

    #[test]
    fn fingerprints_are_keyed_and_bind_the_account() {
        let a = Fingerprinter::with_key([1; 32]);
        let b = Fingerprinter::with_key([2; 32]);
        assert_eq!(
            a.fingerprint("x@example.org", b"pw"),
            a.fingerprint("x@example.org", b"pw")
        );
        assert_ne!(
            a.fingerprint("x@example.org", b"pw"),
            b.fingerprint("x@example.org", b"pw")
        );
        assert_ne!(
            a.fingerprint("x@example.org", b"pw"),
            a.fingerprint("y@example.org", b"pw")
        );
        // The length prefix keeps the account/secret boundary unambiguous.
        assert_ne!(a.fingerprint("ab", b"c"), a.fingerprint("a", b"bc"));
        let random = Fingerprinter::random().unwrap();
        assert_ne!(random.fingerprint("x", b"pw"), a.fingerprint("x", b"pw"));
        assert_eq!(format!("{random:?}"), "Fingerprinter([redacted])");
    }

    #[test]
    fn daemons_sharing_a_key_file_fingerprint_alike() {
        let site = AppPasswordKey::new(vec![5; 32]);
        let a = Fingerprinter::for_site(&site);
        let b = Fingerprinter::for_site(&AppPasswordKey::new(vec![5; 32]));
        let other = Fingerprinter::for_site(&AppPasswordKey::new(vec![6; 32]));
        let fp = |f: &Fingerprinter| f.fingerprint("x@example.org", b"old password");
        assert_eq!(fp(&a), fp(&b));
        assert_ne!(fp(&a), fp(&other));
        // Derived, not the key file's bytes themselves.
        assert_ne!(fp(&a), fp(&Fingerprinter::with_key([5; 32])));
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
    fn success_halves_the_network_at_most_once_a_minute_and_resets_the_account() {
        let t = throttle(config());
        let last = fail_n(&t, "192.0.2.9", "dave@example.org", 8, T0);
        assert_eq!(t.check(ip("192.0.2.9"), "dave@example.org", last), ms(5000));
        t.record_success(ip("192.0.2.9"), "dave@example.org", last + SEC);
        let failures = |now| {
            t.list(now)
                .into_iter()
                .map(|b| (b.key.to_string(), b.failures))
                .collect::<Vec<_>>()
        };
        assert_eq!(failures(last + SEC), [("192.0.2.9/32".to_string(), 4)]);
        assert_eq!(
            t.check(ip("192.0.2.9"), "dave@example.org", last + SEC),
            ms(500)
        );
        // An attacker with one good account cannot wash its failures away by interleaving.
        t.record_success(ip("192.0.2.9"), "mallory@example.org", last + 2 * SEC);
        assert_eq!(failures(last + 2 * SEC), [("192.0.2.9/32".to_string(), 4)]);
        t.record_success(ip("192.0.2.9"), "mallory@example.org", last + 61 * SEC);
        assert_eq!(failures(last + 61 * SEC), [("192.0.2.9/32".to_string(), 2)]);
        t.record_success(ip("192.0.2.9"), "mallory@example.org", last + 122 * SEC);
        t.record_success(ip("192.0.2.9"), "mallory@example.org", last + 183 * SEC);
        assert_eq!(
            t.tracked(),
            0,
            "relaxed to nothing, the network is forgotten"
        );
    }

    #[test]
    fn success_does_not_lift_a_network_block() {
        let t = throttle(config());
        let last = fail_n(&t, "192.0.2.9", "erin@example.org", 10, T0);
        t.record_success(ip("192.0.2.9"), "erin@example.org", last + SEC);
        assert!(matches!(
            t.check(ip("192.0.2.9"), "erin@example.org", last + SEC),
            Verdict::Blocked {
                key: ThrottleKey::Network(_),
                ..
            }
        ));
    }

    #[test]
    fn trusted_networks_are_exempt_and_never_recorded() {
        let t = throttle(ThrottleConfig {
            trusted_networks: vec![
                "10.0.0.0/8".parse().unwrap(),
                "2001:db8:1::/48".parse().unwrap(),
            ],
            ..config()
        });
        fail_n(&t, "10.1.2.3", "frank@example.org", 50, T0);
        fail_n(&t, "2001:db8:1:2::3", "frank@example.org", 50, T0);
        // IPv4-mapped IPv6, as a dual-stack socket reports IPv4 clients.
        fail_n(&t, "::ffff:10.9.9.9", "frank@example.org", 50, T0);
        assert_eq!(t.tracked(), 0);
        assert_eq!(
            t.check(ip("10.1.2.3"), "frank@example.org", T0 + 60 * SEC),
            Verdict::Allow
        );
        // The same account from elsewhere is counted as usual.
        let last = fail_n(&t, "192.0.2.1", "frank@example.org", 20, T0);
        assert!(matches!(
            t.check(ip("192.0.2.1"), "x@example.org", last),
            Verdict::Blocked { .. }
        ));
        assert_eq!(
            t.check(ip("10.1.2.3"), "frank@example.org", last),
            Verdict::Allow
        );
        assert!(!t
            .config()
            .trusted_networks
            .iter()
            .any(|n| n.contains(&"127.0.0.1".parse::<IpAddr>().unwrap())));
    }

    #[test]
    fn loopback_is_counted_like_any_source_by_default() {
        let t = throttle(config());
        let last = fail_n(&t, "127.0.0.1", "", 10, T0);
        assert!(matches!(
            t.check(ip("127.0.0.1"), "", last),
            Verdict::Blocked { .. }
        ));
    }

    #[test]
    fn ipv6_addresses_of_one_64_share_a_key_and_other_64s_do_not() {
        let t = throttle(config());
        for i in 0..10u16 {
            let rip = IpAddr::from([0x2001, 0xdb8, 0xaaaa, 0xbbbb, i, i, 0, i]);
            let fp = t.fingerprinter().fingerprint("", &i.to_be_bytes());
            t.record_failure(Some(rip), "", fp, T0 + i64::from(i));
        }
        let blocked = t.check(ip("2001:db8:aaaa:bbbb:ffff::1"), "", T0 + 10);
        assert_eq!(
            blocked,
            Verdict::Blocked {
                until: T0 + 9 + 300 * SEC,
                key: ThrottleKey::Network("2001:db8:aaaa:bbbb::/64".parse().unwrap()),
            }
        );
        assert_eq!(
            t.check(ip("2001:db8:aaaa:bbbc::1"), "", T0 + 10),
            Verdict::Allow
        );
        assert_eq!(t.tracked(), 1);
        // IPv4 stays per address.
        fail_n(&t, "192.0.2.1", "", 10, T0);
        assert_eq!(t.check(ip("192.0.2.2"), "", T0 + 10 * SEC), Verdict::Allow);
    }

    #[test]
    fn no_address_counts_against_the_account_alone() {
        let t = throttle(config());
        let last = fail_n(&t, "192.0.2.1", "", 0, T0);
        for i in 0..20u8 {
            let fp = t.fingerprinter().fingerprint("gina@example.org", &[i]);
            t.record_failure(None, "gina@example.org", fp, last + i64::from(i));
        }
        assert!(matches!(
            t.check(None, "gina@example.org", last + 20),
            Verdict::Blocked {
                key: ThrottleKey::Account(_),
                ..
            }
        ));
        assert_eq!(t.tracked(), 1);
    }

    #[test]
    fn a_disabled_throttle_allows_and_records_nothing() {
        let t = throttle(ThrottleConfig {
            enabled: false,
            ..config()
        });
        let last = fail_n(&t, "192.0.2.1", "h@example.org", 100, T0);
        assert_eq!(
            t.check(ip("192.0.2.1"), "h@example.org", last),
            Verdict::Allow
        );
        assert_eq!(t.tracked(), 0);
    }

    #[test]
    fn memory_stays_bounded_under_100k_distinct_keys() {
        let t = throttle(ThrottleConfig {
            max_tracked: 4096,
            ..config()
        });
        // One network blocked before the flood; the flood must not wash it away.
        let blocked_at = fail_n(&t, "198.51.100.77", "", 10, T0);
        for i in 0..100_000u32 {
            let rip = IpAddr::from(i.wrapping_add(0x0a00_0000).to_be_bytes());
            let account = format!("user{i}@example.org");
            t.record_failure(Some(rip), &account, u64::from(i), blocked_at + 1);
            if i % 1000 == 0 {
                assert!(t.tracked() <= 4096, "{} keys after {i}", t.tracked());
            }
        }
        assert!(t.tracked() <= 4096, "{} keys", t.tracked());
        assert!(matches!(
            t.check(ip("198.51.100.77"), "", blocked_at + 2),
            Verdict::Blocked { .. }
        ));
        // Eviction takes an eighth at a time, not everything.
        assert!(t.tracked() > 3000, "{} keys", t.tracked());
    }

    #[test]
    fn list_shows_blocks_first_and_clear_lifts_by_network_address_or_account() {
        let t = throttle(config());
        fail_n(&t, "192.0.2.7", "", 10, T0);
        fail_n(&t, "192.0.2.8", "", 2, T0);
        fail_n(&t, "2001:db8:0:1::5", "", 4, T0);
        for i in 0..20u8 {
            let fp = t.fingerprinter().fingerprint("ivan@example.org", &[i]);
            t.record_failure(None, "ivan@example.org", fp, T0);
        }
        let now = T0 + 30 * SEC;
        let listed: Vec<(String, KeyKind, u32, Option<UnixMillis>)> = t
            .list(now)
            .into_iter()
            .map(|b| (b.key.to_string(), b.kind, b.failures, b.blocked_until))
            .collect();
        assert_eq!(
            listed,
            [
                (
                    "192.0.2.7/32".into(),
                    KeyKind::Network,
                    10,
                    Some(T0 + 9 * SEC + 300 * SEC)
                ),
                (
                    "ivan@example.org".into(),
                    KeyKind::Account,
                    20,
                    Some(T0 + 300 * SEC)
                ),
                ("2001:db8:0:1::/64".into(), KeyKind::Network, 4, None),
                ("192.0.2.8/32".into(), KeyKind::Network, 2, None),
            ]
        );
        let json = serde_json::to_string(&t.list(now)[0]).unwrap();
        assert!(
            json.contains(r#""key":"192.0.2.7/32","kind":"network""#),
            "{json}"
        );

        assert_eq!(t.clear(Some("198.51.100.0/24")), 0);
        assert_eq!(
            t.clear(Some("2001:db8:0:1::99")),
            1,
            "an address clears its /64"
        );
        assert_eq!(
            t.clear(Some(" IVAN@Example.ORG ")),
            1,
            "accounts match canonically"
        );
        assert_eq!(
            t.clear(Some("192.0.2.0/24")),
            2,
            "a network clears what is inside"
        );
        assert_eq!(t.check(ip("192.0.2.7"), "", now), Verdict::Allow);
        assert!(t.list(now).is_empty());

        fail_n(&t, "192.0.2.7", "", 3, now);
        fail_n(&t, "2001:db8::1", "", 3, now);
        assert_eq!(
            t.clear(Some("2001:db8::1/128")),
            1,
            "a host inside a tracked /64 clears it"
        );
        assert_eq!(t.clear(None), 1);
        assert_eq!(t.tracked(), 0);
    }

    #[test]
    fn account_keys_are_bounded() {
        let long = "é".repeat(1000);
        match ThrottleKey::account(&long) {
            ThrottleKey::Account(a) => {
                assert!(a.len() <= MAX_ACCOUNT_KEY_BYTES && a.starts_with('é'))
            }
            ThrottleKey::Network(_) => panic!("not a network"),
        }
    }

    #[test]
    fn shards_can_be_used_from_many_threads_at_once() {
        let t = std::sync::Arc::new(throttle(config()));
        let workers: Vec<_> = (0..4u8)
            .map(|w| {
                let t = t.clone();
                std::thread::spawn(move || {
                    for i in 0..1000u32 {
                        let rip = IpAddr::from([192, 0, w, (i % 200) as u8]);
                        t.record_failure(Some(rip), "", u64::from(i), T0);
                        let _ = t.check(Some(rip), "", T0);
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        assert_eq!(t.tracked(), 800);
    }
}
