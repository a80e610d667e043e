//! The throttle the daemon holds: memory alone, or shared standings with memory behind.
//!
//! A login must never be refused or held because the shared standings are down or slow:
//! each of their calls is bounded (`redis_timeout_ms`) and, if it gives no answer, this
//! process's memory answers that call instead. Memory then counts what this daemon sees
//! until they answer again; those counts are not copied to them afterwards.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;

use super::keys::{BlockInfo, Filter, Fingerprinter, ThrottleKey};
use super::memory::MemoryThrottle;
use super::settings::ThrottleConfig;
use super::shared::{NoAnswer, Query, SharedStandings};
use super::standing::{
    counted_keys, delay_for, stricter, verdict, with_in_flight, Attempt, Plan, Settlement,
    Standing, Verdict,
};
use crate::clock::UnixMillis;

/// `clear` lifted this daemon's own entries but could not reach the shared ones.
#[derive(Debug, Error)]
#[error(
    "cleared {removed} entr{plural} in this daemon's memory, but Redis did not answer ({reason}); \
     the shared entries are still there: run the clear again once Redis is back",
    plural = if *removed == 1 { "y" } else { "ies" }
)]
pub struct ClearError {
    pub removed: usize,
    pub reason: NoAnswer,
}

pub struct Throttle {
    /// Holds the settings in force for both backends, and answers when the shared
    /// standings do not.
    memory: MemoryThrottle,
    shared: Option<Box<dyn SharedStandings>>,
}

impl fmt::Debug for Throttle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Throttle")
            .field("memory", &self.memory)
            .field("redis", &self.shared.as_ref().map(|s| s.url()))
            .field("redis_fallbacks", &self.redis_fallbacks())
            .finish()
    }
}

impl Throttle {
    /// State in this process only, whatever `config.redis_url` says. `config` should have
    /// passed [`ThrottleConfig::validate`].
    pub fn in_memory(mut config: ThrottleConfig, fingerprinter: Fingerprinter) -> Self {
        config.redis_url = None;
        Throttle {
            memory: MemoryThrottle::new(config, fingerprinter),
            shared: None,
        }
    }

    /// Standings shared with other daemons through `shared`, with memory behind them;
    /// `config`'s Redis URL and prefix are taken from `shared`. `fingerprinter` must be
    /// the same on every daemon sharing them ([`Fingerprinter::for_site`]).
    pub fn shared(
        mut config: ThrottleConfig,
        fingerprinter: Fingerprinter,
        shared: Box<dyn SharedStandings>,
    ) -> Self {
        config.redis_url = Some(shared.url().clone());
        config.redis_prefix = shared.prefix().to_string();
        Throttle {
            memory: MemoryThrottle::new(config, fingerprinter),
            shared: Some(shared),
        }
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
        self.shared.is_some()
    }

    /// Calls memory answered because Redis failed, was too slow, or was being skipped
    /// right after a failure.
    pub fn redis_fallbacks(&self) -> u64 {
        self.shared.as_ref().map_or(0, |s| s.fallbacks())
    }

    /// Applies new settings to every call from now on, both backends. Returns the keys
    /// that only a restart applies (`throttle.redis_url`, `throttle.redis_prefix`): a
    /// running daemon keeps the Redis, and the key names, it started with.
    pub fn reconfigure(&self, config: ThrottleConfig) -> Vec<&'static str> {
        let mut restart = Vec::new();
        let mut applied = config;
        let running_url = self.shared.as_ref().map(|s| s.url().clone());
        if applied.redis_url != running_url {
            restart.push("throttle.redis_url");
            applied.redis_url = running_url;
        }
        if let Some(shared) = &self.shared {
            if applied.redis_prefix != shared.prefix() {
                restart.push("throttle.redis_prefix");
                applied.redis_prefix = shared.prefix().to_string();
            }
        }
        self.memory.set_config(applied);
        restart
    }

    /// Charges an attempt as it arrives, before anything else is looked at: its keys'
    /// standings count the attempts still in flight, and it takes a place among them
    /// until [`Throttle::settle`] (or dropping the ticket) ends it. So guesses pipelined on
    /// one connection or sent over many at once are delayed and blocked as if they had
    /// come one after another.
    ///
    /// The account's standing does not hold up a secret shaped like an app password, nor
    /// a login from a network that logged in to the account lately: an account block
    /// stops password guessing, it must not let strangers lock the owner out. A blocked
    /// account's app-password-shaped secret may still only pass as an app password
    /// ([`Ticket::passwords_refused`]).
    pub async fn admit(&self, attempt: Attempt<'_>, now: UnixMillis) -> (Verdict, Ticket<'_>) {
        let mut ticket = Ticket {
            throttle: self,
            rip: attempt.rip,
            account: attempt.account.to_string(),
            fingerprint: attempt.fingerprint,
            counted: attempt.counted,
            settled: false,
            admitted_at: now,
            passwords_refused: false,
            password_delay: Duration::ZERO,
            plan: Plan::default(),
            reserved: Vec::new(),
            soft_reserved: Vec::new(),
        };
        let config = self.config();
        let Some(keys) = counted_keys(&config, attempt.rip, attempt.account) else {
            return (Verdict::Allow, ticket);
        };
        let network = keys.iter().find_map(|k| match k {
            ThrottleKey::Network(net) => Some(*net),
            ThrottleKey::Account(_) => None,
        });
        // Standings from Redis when it answers, else from memory. For Redis this attempt
        // takes its places first (see `MemoryThrottle::reserve_blind`).
        let shared = match self.shared_for_login() {
            Some(redis) => {
                let others = if attempt.counted {
                    self.memory.reserve_blind(&keys)
                } else {
                    self.memory.in_flight_on(&keys)
                };
                let account = keys.iter().find(|k| matches!(k, ThrottleKey::Account(_)));
                let query = Query::new(&keys, now, &config);
                let call = redis.standings_and_known(query, account.zip(network));
                match call.await.ok() {
                    Some((remote, known)) => Some((remote, others, known)),
                    None => {
                        if attempt.counted {
                            self.memory.release(&keys);
                        }
                        None
                    }
                }
            }
            None => None,
        };
        let has_account = keys.iter().any(|k| matches!(k, ThrottleKey::Account(_)));
        let known = match (&shared, network) {
            (Some((_, _, known)), _) => *known,
            (None, Some(net)) if has_account => {
                self.memory.is_known_network(attempt.account, net, now)
            }
            (None, _) => false,
        };
        let mut plan = Plan::default();
        let mut held_standings = Vec::new();
        // Places taken for Redis on keys that turn out not to hold the attempt up.
        let mut not_held = Vec::new();
        for (i, key) in keys.into_iter().enumerate() {
            // What this daemon counted itself (attempts cancelled in flight, failures while
            // Redis was away) holds too.
            let standing = shared.as_ref().map(|(remote, others, _)| {
                let own = self.memory.own_standing(&key, now, &config);
                with_in_flight(
                    &key,
                    stricter(remote[i].clone(), own),
                    others[i],
                    now,
                    &config,
                )
            });
            match key {
                ThrottleKey::Account(_) if known => {
                    not_held.push(key.clone());
                    plan.charged_only.push(key);
                }
                ThrottleKey::Account(_) if attempt.unguessable => {
                    // Never holds the attempt up, but takes a place like any other: should
                    // the secret turn out to be no app password, the account's block and
                    // delay (with its attempts in flight) stand before the stored password.
                    // With Redis its place was taken before the read (`reserve_blind`).
                    let (standing, reserved) = match standing {
                        Some(standing) => (standing, attempt.counted),
                        None if attempt.counted => {
                            self.memory.reserve_soft(&key, attempt.fingerprint, now)
                        }
                        None => (self.memory.standing_in_flight(&key, now, &config), false),
                    };
                    if reserved {
                        ticket.soft_reserved.push(key.clone());
                    }
                    match standing {
                        Standing::Blocked(_) => ticket.passwords_refused = true,
                        Standing::Counting(failures) => {
                            ticket.password_delay = delay_for(&config, failures);
                        }
                        Standing::Gone => {}
                    }
                    plan.charged_only.push(key);
                }
                key => {
                    if let Some(standing) = standing {
                        held_standings.push((key.clone(), standing));
                    }
                    plan.held.push(key);
                }
            }
        }
        let (verdict, reserved) = match (attempt.counted, shared.is_some()) {
            (true, true) => {
                self.memory.release(&not_held);
                let verdict = verdict(held_standings, &config);
                if matches!(verdict, Verdict::Blocked { .. }) {
                    self.memory.release(&plan.held);
                    (verdict, Vec::new())
                } else {
                    (verdict, plan.held.clone())
                }
            }
            (true, false) => self.memory.reserve(&plan.held, attempt.fingerprint, now),
            (false, true) => (verdict(held_standings, &config), Vec::new()),
            (false, false) => {
                let looked = plan.held.iter().map(|key| {
                    let standing = self.memory.standing_in_flight(key, now, &config);
                    (key.clone(), standing)
                });
                (verdict(looked.collect(), &config), Vec::new())
            }
        };
        ticket.plan = plan;
        ticket.reserved = reserved;
        (verdict, ticket)
    }

    /// Ends an admitted attempt: counts it as [`Settlement`] says, then frees its place
    /// among the attempts in flight (in that order, so its keys' counts never dip).
    pub async fn settle(&self, mut ticket: Ticket<'_>, settlement: Settlement, now: UnixMillis) {
        if !ticket.counted {
            ticket.settled = true;
            return;
        }
        match settlement {
            Settlement::Neither => ticket.settled = true,
            Settlement::Failure => {
                let keys: Vec<ThrottleKey> = ticket.plan.charged().cloned().collect();
                if keys.is_empty() {
                    ticket.settled = true;
                    return;
                }
                let config = self.config();
                if let Some(redis) = self.shared_for_login() {
                    let query = Query::new(&keys, now, &config);
                    let call = redis.record_failure(query, ticket.fingerprint);
                    // Settled only once recorded: dropped during the call (the client went
                    // away), the ticket still charges the failure.
                    if call.await.is_ok() {
                        ticket.settled = true;
                        return;
                    }
                }
                let reserved = ticket.take_reserved();
                self.memory
                    .fail_and_release(&keys, &reserved, ticket.fingerprint, now);
                ticket.settled = true;
            }
            Settlement::Success => {
                ticket.settled = true;
                self.record_success(ticket.rip, &ticket.account, now).await;
            }
        }
    }

    /// The settings now in force, and the keys they count an attempt against; `None` when
    /// they count it against nothing.
    fn counted(
        &self,
        rip: Option<IpAddr>,
        account: &str,
    ) -> Option<(Arc<ThrottleConfig>, Vec<ThrottleKey>)> {
        let config = self.config();
        let keys = counted_keys(&config, rip, account)?;
        Some((config, keys))
    }

    /// Whether, and how long, an attempt must wait before credentials are checked.
    pub async fn check(&self, rip: Option<IpAddr>, account: &str, now: UnixMillis) -> Verdict {
        let Some((config, keys)) = self.counted(rip, account) else {
            return Verdict::Allow;
        };
        if let Some(redis) = self.shared_for_login() {
            let query = Query::new(&keys, now, &config);
            if let Ok(standings) = redis.standings(query).await {
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
        let Some((config, keys)) = self.counted(rip, account) else {
            return;
        };
        if let Some(redis) = self.shared_for_login() {
            let query = Query::new(&keys, now, &config);
            let call = redis.record_failure(query, secret_fingerprint);
            if call.await.is_ok() {
                return;
            }
        }
        self.memory
            .record_failure(rip, account, secret_fingerprint, now);
    }

    /// A success relaxes its network (at most once a minute) and clears its account.
    pub async fn record_success(&self, rip: Option<IpAddr>, account: &str, now: UnixMillis) {
        let Some((config, keys)) = self.counted(rip, account) else {
            return;
        };
        if let Some(redis) = self.shared_for_login() {
            let known = match (rip, config.known_network_for.is_zero()) {
                (Some(ip), false) => match ThrottleKey::network_of(ip) {
                    ThrottleKey::Network(net) => Some((ThrottleKey::account(account), net)),
                    ThrottleKey::Account(_) => None,
                },
                _ => None,
            };
            let known = known.as_ref().map(|(account, net)| (account, *net));
            let query = Query::new(&keys, now, &config);
            if redis.record_success(query, known).await.is_ok() {
                return;
            }
        }
        self.memory.record_success(rip, account, now);
    }

    /// What is held against networks and accounts, blocked first: from Redis (every
    /// daemon's entries), or, while Redis does not answer, what this daemon holds itself.
    pub async fn list(&self, now: UnixMillis) -> Vec<BlockInfo> {
        if let Some(shared) = &self.shared {
            let config = self.config();
            if let Ok(all) = shared.list(now, &config).await {
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
        let Some(shared) = &self.shared else {
            return Ok(removed.len());
        };
        match shared.clear(&filter).await {
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

    /// The shared standings, unless there are none or a login should skip them for now.
    fn shared_for_login(&self) -> Option<&dyn SharedStandings> {
        let shared = self.shared.as_deref()?;
        shared.ready().then_some(shared)
    }
}

/// An attempt's place among those in flight, from [`Throttle::admit`] until
/// [`Throttle::settle`]. Dropped unsettled (the client cancelled or went away while it
/// was being decided) it counts as a failure in this daemon's memory: every attempt is
/// charged, and cancelling must not make guesses free.
pub struct Ticket<'a> {
    throttle: &'a Throttle,
    rip: Option<IpAddr>,
    account: String,
    fingerprint: u64,
    counted: bool,
    /// Set by [`Throttle::settle`]; an unsettled ticket is a cancelled attempt.
    settled: bool,
    admitted_at: UnixMillis,
    passwords_refused: bool,
    password_delay: Duration,
    plan: Plan,
    reserved: Vec<ThrottleKey>,
    /// Places taken on keys that never hold the attempt up (the account, for a secret
    /// shaped like an app password).
    soft_reserved: Vec<ThrottleKey>,
}

impl Ticket<'_> {
    /// The account is blocked and this attempt passed only because its secret looks like
    /// an app password: it may open the mailbox as one, never as the stored password.
    pub fn passwords_refused(&self) -> bool {
        self.passwords_refused
    }

    /// How long the account's standing asks a secret shaped like an app password to wait
    /// before it is tried as the stored password (it did not wait at admission).
    pub fn password_delay(&self) -> Duration {
        self.password_delay
    }

    /// Every place this attempt holds, emptied.
    fn take_reserved(&mut self) -> Vec<ThrottleKey> {
        let mut all = std::mem::take(&mut self.reserved);
        all.append(&mut self.soft_reserved);
        all
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let reserved = self.take_reserved();
        if self.counted && !self.settled {
            let keys: Vec<ThrottleKey> = self.plan.charged().cloned().collect();
            self.throttle.memory.fail_and_release(
                &keys,
                &reserved,
                self.fingerprint,
                self.admitted_at,
            );
        } else {
            self.throttle.memory.release(&reserved);
        }
    }
}

impl fmt::Debug for Ticket<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ticket")
            .field("plan", &self.plan)
            .field("reserved", &self.reserved)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::auth::throttle::millis;
    use crate::auth::throttle::test_support::{ip, T0};

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
        let t = test_throttle();
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
    async fn without_redis_list_and_clear_use_memory() {
        let t = test_throttle();
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

    fn attempt<'a>(t: &Throttle, rip: &str, account: &'a str, secret: &str) -> Attempt<'a> {
        Attempt {
            rip: ip(rip),
            account,
            fingerprint: t.fingerprinter().fingerprint(account, secret.as_bytes()),
            unguessable: false,
            counted: true,
        }
    }

    /// In memory, with the settings of [`config`].
    fn test_throttle() -> Throttle {
        Throttle::in_memory(config(), Fingerprinter::with_key([3; 32]))
    }

    /// A counted attempt from 192.0.2.1, naming no account, at `T0`.
    async fn admit_guess<'t>(t: &'t Throttle, secret: &str) -> (Verdict, Ticket<'t>) {
        t.admit(attempt(t, "192.0.2.1", "", secret), T0).await
    }

    #[tokio::test]
    async fn attempts_in_flight_count_toward_delays_and_blocks() {
        let t = test_throttle();
        let mut held = Vec::new();
        let mut verdicts = Vec::new();
        for i in 0..5 {
            let (verdict, ticket) = admit_guess(&t, &format!("guess {i}")).await;
            verdicts.push(verdict);
            held.push(ticket);
        }
        // One free failure, then 100 ms doubling to the 400 ms cap: the undecided
        // attempts already count.
        assert_eq!(
            verdicts,
            [
                Verdict::Allow,
                Verdict::Delay(Duration::from_millis(100)),
                Verdict::Delay(Duration::from_millis(200)),
                Verdict::Delay(Duration::from_millis(400)),
                Verdict::Delay(Duration::from_millis(400)),
            ]
        );
        assert_eq!(t.memory.in_flight(), 5);
        // Five in flight reach network_block_after: the sixth is refused before it is
        // decided, and takes no place.
        let (sixth, ticket) = admit_guess(&t, "guess 5").await;
        assert!(matches!(sixth, Verdict::Blocked { .. }), "{sixth:?}");
        t.settle(ticket, Settlement::Neither, T0).await;
        assert_eq!(t.memory.in_flight(), 5);
        // Another network is not held up by them.
        let (other, ticket) = t.admit(attempt(&t, "198.51.100.1", "", "x"), T0).await;
        assert_eq!(other, Verdict::Allow);
        t.settle(ticket, Settlement::Success, T0).await;
        for ticket in held {
            t.settle(ticket, Settlement::Failure, T0).await;
        }
        assert_eq!(t.memory.in_flight(), 0);
        assert!(matches!(
            t.check(ip("192.0.2.1"), "", T0 + 1).await,
            Verdict::Blocked { until, .. } if until > T0 + 1
        ));
    }

    #[tokio::test]
    async fn successes_and_outages_free_their_place_and_count_nothing() {
        let t = test_throttle();
        for i in 0..20 {
            let (verdict, ticket) = admit_guess(&t, &format!("s {i}")).await;
            assert_eq!(verdict, Verdict::Allow, "attempt {i}");
            let settlement = if i % 2 == 0 {
                Settlement::Success
            } else {
                Settlement::Neither
            };
            t.settle(ticket, settlement, T0).await;
        }
        assert_eq!(t.memory.in_flight(), 0);
        assert!(t.list(T0).await.is_empty());
    }

    #[tokio::test]
    async fn a_cancelled_attempt_counts_as_a_failure() {
        let t = test_throttle();
        for i in 0..5 {
            let (_, ticket) = admit_guess(&t, &format!("c {i}")).await;
            drop(ticket);
        }
        assert_eq!(t.memory.in_flight(), 0);
        assert!(matches!(
            t.check(ip("192.0.2.1"), "", T0).await,
            Verdict::Blocked { .. }
        ));
    }

    #[tokio::test]
    async fn a_known_repeat_takes_no_place_and_no_penalty_counts_nothing() {
        let t = test_throttle();
        let (_, ticket) = admit_guess(&t, "stale").await;
        t.settle(ticket, Settlement::Failure, T0).await;
        let mut held = Vec::new();
        for _ in 0..10 {
            let (verdict, ticket) = admit_guess(&t, "stale").await;
            assert!(!matches!(verdict, Verdict::Blocked { .. }));
            held.push(ticket);
        }
        assert_eq!(t.memory.in_flight(), 0, "a repeat will not count");
        for ticket in held {
            t.settle(ticket, Settlement::Failure, T0).await;
        }
        let listed = t.list(T0).await;
        assert_eq!(listed[0].failures, 1);

        for i in 0..10 {
            let mut quiet = attempt(&t, "192.0.2.2", "", &format!("np {i}"));
            quiet.counted = false;
            let (verdict, ticket) = t.admit(quiet, T0).await;
            assert_eq!(verdict, Verdict::Allow);
            if i % 2 == 0 {
                t.settle(ticket, Settlement::Failure, T0).await;
            }
        }
        assert_eq!(t.memory.in_flight(), 0);
        assert_eq!(t.list(T0).await.len(), 1, "192.0.2.2 was never counted");
    }

    /// Three wrong guesses against `account`, each from its own network and with its own
    /// secret (`{secrets}0`…).
    async fn strangers_fail(t: &Throttle, account: &str, secrets: &str, now: UnixMillis) {
        for i in 0..3 {
            let guess = attempt(
                t,
                &format!("203.0.113.{i}"),
                account,
                &format!("{secrets}{i}"),
            );
            let (_, ticket) = t.admit(guess, now).await;
            t.settle(ticket, Settlement::Failure, now).await;
        }
    }

    #[tokio::test]
    async fn an_account_block_spares_app_passwords_and_the_owners_networks() {
        let t = Throttle::in_memory(
            ThrottleConfig {
                network_block_after: 0,
                account_block_after: 3,
                ..config()
            },
            Fingerprinter::with_key([3; 32]),
        );
        let alice = "alice@example.org";
        // The owner logs in from home.
        let (_, ticket) = t.admit(attempt(&t, "198.51.100.7", alice, "pw"), T0).await;
        t.settle(ticket, Settlement::Success, T0).await;
        // Strangers block the account for password guessing.
        strangers_fail(&t, alice, "g", T0).await;
        let (stranger, _) = t.admit(attempt(&t, "203.0.113.50", alice, "pw"), T0).await;
        assert!(matches!(stranger, Verdict::Blocked { .. }), "{stranger:?}");
        // An app password from anywhere passes, but only as an app password.
        let mut app = attempt(&t, "203.0.113.51", alice, "abcdabcdabcdabcdabcd");
        app.unguessable = true;
        let (verdict, ticket) = t.admit(app, T0).await;
        assert_eq!(verdict, Verdict::Allow);
        assert!(ticket.passwords_refused());
        t.settle(ticket, Settlement::Failure, T0).await;
        // The owner's own network passes with the password, and may even fail.
        let (home, ticket) = t.admit(attempt(&t, "198.51.100.7", alice, "old"), T0).await;
        assert_eq!(home, Verdict::Allow);
        assert!(!ticket.passwords_refused());
        t.settle(ticket, Settlement::Failure, T0).await;
        // Its own network's failure still counts there (one free, then a delay).
        let (home, ticket) = t.admit(attempt(&t, "198.51.100.7", alice, "pw"), T0).await;
        assert_eq!(home, Verdict::Delay(Duration::from_millis(100)));
        t.settle(ticket, Settlement::Success, T0).await;
        // Known for `known_network_for`, then a stranger again.
        let later = T0 + millis(config().known_network_for) + 1;
        strangers_fail(&t, alice, "h", later).await;
        let (stale, _) = t
            .admit(attempt(&t, "198.51.100.7", alice, "pw"), later)
            .await;
        assert!(matches!(stale, Verdict::Blocked { .. }), "{stale:?}");
    }

    #[test]
    fn a_failed_clear_says_what_was_and_was_not_lifted() {
        let e = ClearError {
            removed: 1,
            reason: NoAnswer::new("no answer within 5000 ms"),
        };
        assert_eq!(
            e.to_string(),
            "cleared 1 entry in this daemon's memory, but Redis did not answer (no answer \
             within 5000 ms); the shared entries are still there: run the clear again once \
             Redis is back"
        );
    }
}
