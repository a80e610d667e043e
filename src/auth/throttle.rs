//! Abuse resistance: progressive delays, then temporary blocks, per source network and per
//! account (see "The throttle" in ARCHITECTURE.md and `[throttle]` in
//! `conf-examples/mailauthd.toml`).
//!
//! [`Throttle`] is what the daemon holds. It charges each attempt when it arrives
//! ([`Throttle::admit`]) and settles it when the decision is made ([`Throttle::settle`]),
//! so guesses pipelined or sent in parallel are counted while still in flight. Its state is
//! in this process ([`MemoryThrottle`]) or, when several daemons share the load, in
//! [`SharedStandings`] with memory behind them; the throttle knows no socket, the shared
//! standings are implemented outside `auth`, in the `shared_state` module.
//!
//! - `settings.rs`: [`ThrottleConfig`], the `[throttle]` section, and [`RedisUrl`].
//! - `keys.rs`: [`ThrottleKey`], [`Fingerprinter`], [`BlockInfo`] and [`Filter`].
//! - `standing.rs`: the rules both backends read by ([`Counts::standing`], verdicts,
//!   delays), and [`Attempt`], [`Verdict`], [`Settlement`].
//! - `memory.rs`: [`MemoryThrottle`]; `known.rs`: the networks an owner logs in from.
//! - `shared.rs`: [`SharedStandings`], the trait the shared state implements.
//! - `front.rs`: [`Throttle`] and its [`Ticket`].

mod front;
mod keys;
mod known;
mod memory;
mod settings;
mod shared;
mod standing;
#[cfg(test)]
mod test_support;

pub use self::front::{ClearError, Throttle, Ticket};
pub use self::keys::{BlockInfo, Filter, Fingerprinter, KeyKind, ThrottleKey};
pub(crate) use self::known::KNOWN_NETWORKS;
pub use self::memory::MemoryThrottle;
pub use self::settings::{
    RedisUrl, RedisUrlError, ThrottleConfig, DEFAULT_REDIS_PREFIX, POSTFIX_SASL_TIMEOUT,
};
pub use self::shared::{NoAnswer, Query, SharedStandings};
pub(crate) use self::standing::{block_after, log_block, millis, sort_listing, RELAX_INTERVAL_MS};
pub use self::standing::{Attempt, Counts, Settlement, Standing, Verdict};
