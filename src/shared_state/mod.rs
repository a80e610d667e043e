//! State several daemons share through one Redis, so they behave as one.
//!
//! Today that is the throttle's standings ([`RedisStandings`], the implementation of
//! [`crate::auth::throttle::SharedStandings`]). The connection and its health
//! ([`Redis`]) are apart from what is kept, so whatever else comes to keep state in the
//! same Redis (sending-limit counters, say) uses the same connection, bound and fallback.
//!
//! Redis is never what a login waits for: every call is bounded in time and a call that
//! fails or times out makes the caller answer from its own memory. A Redis that is down at
//! start-up refuses nothing either; the connection is made lazily and remade on its own.
//!
//! This is the one place that talks to Redis; `auth` sees only the trait.

mod connection;
mod health;
mod throttle;

pub use self::connection::{CallError, Redis, SetupError};
pub use self::throttle::{open_throttle, RedisStandings};
