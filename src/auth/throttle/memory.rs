//! [`MemoryThrottle`]: the throttle's state in this process.
//!
//! Pure and synchronous: every method takes the time as a parameter and nothing here
//! sleeps, so the decision core does the waiting (asynchronously) and tests move a number
//! instead of waiting. The state lives in shards, each behind a `std` mutex held for a few
//! map operations and never across an await. It is the whole state of a daemon alone, and
//! what a daemon sharing Redis falls back to when Redis does not answer.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

use ipnet::IpNet;

use super::keys::{BlockInfo, Filter, Fingerprinter, KeyKind, ThrottleKey};
use super::known::KnownNetworks;
use super::settings::ThrottleConfig;
use super::standing::{
    block_after, counted_keys, log_block, millis, sort_listing, verdict, with_in_flight, Counts,
    Standing, Verdict, RELAX_INTERVAL_MS,
};
use crate::clock::UnixMillis;

/// Independent locks; with 2–8 cores, 16 keeps two logins from meeting on one lock rare.
const SHARDS: usize = 16;

/// Distinct wrong secrets remembered per key. A stale client repeats one old password;
/// a few slots cover a household of stale devices behind one address.
const RECENT_SECRETS: usize = 4;

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
        let Some(keys) = counted_keys(&config, rip, account) else {
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
    pub(super) fn reserve(
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
    pub(super) fn reserve_blind(&self, keys: &[ThrottleKey]) -> Vec<u32> {
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
    pub(super) fn in_flight_on(&self, keys: &[ThrottleKey]) -> Vec<u32> {
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
    pub(super) fn reserve_soft(
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
    pub(super) fn release(&self, reserved: &[ThrottleKey]) {
        for key in reserved {
            self.shard(key).release(key);
        }
    }

    /// Counts a failure on each key and ends its reservation under the same lock, so
    /// the key's count never dips in between.
    pub(super) fn fail_and_release(
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
    pub(super) fn is_known_network(&self, account: &str, net: IpNet, now: UnixMillis) -> bool {
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
        let Some(keys) = counted_keys(&config, rip, account) else {
            return;
        };
        self.fail_and_release(&keys, &[], secret_fingerprint, now);
    }

    /// A success halves its network's failures (shared addresses also carry strangers'
    /// failures) and clears the account's (its owner has just proved who they are).
    pub fn record_success(&self, rip: Option<IpAddr>, account: &str, now: UnixMillis) {
        let config = self.config();
        let Some(keys) = counted_keys(&config, rip, account) else {
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
                failures: e.counts.failures,
                blocked_until: e.counts.blocked_until,
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
    pub(super) fn clear_matching(&self, filter: &Filter) -> Vec<ThrottleKey> {
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

    /// The key's standing from what this process counted, its attempts in flight left out.
    pub(super) fn own_standing(
        &self,
        key: &ThrottleKey,
        now: UnixMillis,
        config: &ThrottleConfig,
    ) -> Standing {
        self.shard(key).standing(key, now, config)
    }

    /// The key's standing with its attempts in flight counted, reserving nothing.
    pub(super) fn standing_in_flight(
        &self,
        key: &ThrottleKey,
        now: UnixMillis,
        config: &ThrottleConfig,
    ) -> Standing {
        self.shard(key).look(key, None, now, config).0
    }

    fn shard(&self, key: &ThrottleKey) -> MutexGuard<'_, Shard> {
        let index = self.placement.hash_one(key) as usize % self.shards.len();
        lock(&self.shards[index])
    }
}

fn per_shard(config: &ThrottleConfig) -> usize {
    (config.max_tracked / SHARDS).max(1)
}

/// The state is counters: one a panicking thread left half-updated is still usable.
fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    shard.lock().unwrap_or_else(PoisonError::into_inner)
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
    counts: Counts,
    relaxed_at: Option<UnixMillis>,
    recent: RecentSecrets,
}

impl Entry {
    fn new(now: UnixMillis) -> Self {
        Entry {
            counts: Counts {
                last_failure: now,
                ..Counts::NONE
            },
            relaxed_at: None,
            recent: RecentSecrets::default(),
        }
    }

    fn standing(&self, now: UnixMillis, config: &ThrottleConfig) -> Standing {
        self.counts.standing(now, config)
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
        let counts = &mut entry.counts;
        counts.failures = counts.failures.saturating_add(1);
        counts.last_failure = now;
        let threshold = block_after(config, key.kind());
        if threshold > 0 && counts.failures >= threshold {
            counts.blocked_until = Some(now.saturating_add(millis(config.block_duration)));
            log_block(&key, counts.failures, config);
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
                    entry.counts.failures = failures / 2;
                    entry.relaxed_at = Some(now);
                    if entry.counts.failures == 0 {
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
                let Counts {
                    failures,
                    last_failure,
                    blocked_until,
                } = e.counts;
                let blocked = blocked_until.is_some_and(|u| u > now);
                ((blocked, failures, last_failure), key.clone())
            })
            .collect();
        ranked.sort_unstable_by_key(|(rank, _)| *rank);
        for (_, key) in ranked.into_iter().take(excess) {
            self.entries.remove(&key);
        }
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::auth::throttle::test_support::{ip, ms, SEC, T0};

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

    /// One failure from each of `rips` against `account`, each with a secret of its own, a
    /// millisecond apart from [`T0`].
    fn fail_once_from_each(
        t: &MemoryThrottle,
        account: &str,
        rips: impl IntoIterator<Item = IpAddr>,
    ) {
        for (i, rip) in (0i64..).zip(rips) {
            let fp = t.fingerprinter().fingerprint(account, &i.to_be_bytes());
            t.record_failure(Some(rip), account, fp, T0 + i);
        }
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
        let networks = (0..20).map(|i| IpAddr::from([203, 0, 113, i]));
        fail_once_from_each(&t, "ceo@example.org", networks);
        assert_eq!(
            t.check(ip("198.51.100.9"), "ceo@example.org", T0 + 20),
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
        let one_64 = (0..10u16).map(|i| IpAddr::from([0x2001, 0xdb8, 0xaaaa, 0xbbbb, i, i, 0, i]));
        fail_once_from_each(&t, "", one_64);
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
