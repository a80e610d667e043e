//! mailauthd: the yes/no authority behind Dovecot and Postfix.
//!
//! Layers, innermost first: [`proto`] (pure codecs) and [`auth`] (the decision core and
//! credentials) know nothing of sockets or SQL dialects; [`store`] hides the database behind
//! one trait; [`provision`] is the only code that creates or changes mailboxes; [`cli`] and
//! the daemon translate between people, sockets and those layers. [`oidc`] is the relying
//! party for sign-in through an identity provider, and [`web`] the page people use.

#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::todo,
        clippy::await_holding_lock
    )
)]

/// `impl Display` for a type whose text is what one of its `&'static str` methods returns
/// (a reason code, a protocol name), so a log line and a metric label never disagree.
/// Defined before the modules so every one of them can use it.
macro_rules! display_via {
    ($ty:ty, $method:ident) => {
        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.$method())
            }
        }
    };
}

/// `Debug` as `Name(…)` and `Display` of a URL type through its `redacted()` text, so no
/// log line, error or `{:?}` shows the password the URL carries.
macro_rules! fmt_via_redacted {
    ($ty:ident) => {
        impl std::fmt::Debug for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{}({})", stringify!($ty), self.redacted())
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.redacted())
            }
        }
    };
}

pub mod activation;
pub mod audit;
pub mod auth;
pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod devices;
pub mod keyfile;
pub mod liveness;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod names;
pub mod oidc;
pub mod policy;
pub mod privileges;
pub mod proto;
pub mod provision;
pub mod runtime;
pub mod sealed;
pub mod secret;
pub mod server;
pub mod settings_check;
pub mod shared_state;
pub mod size;
pub mod store;
pub mod systemd;
#[cfg(test)]
mod test_support;
pub mod web;
