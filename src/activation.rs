//! systemd socket activation: listening sockets handed over at start, matched to the
//! daemon's listeners by their `FileDescriptorName=`.
//!
//! With activation, systemd creates the sockets (and their owners and modes) before the
//! daemon runs, so Postfix and Dovecot can connect during a restart: their connections
//! wait in the socket's backlog instead of failing.

use std::collections::BTreeMap;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use thiserror::Error;

/// The names a socket unit may give its sockets, one per listener of the daemon.
pub const NAMES: [&str; 6] = ["auth", "userdb", "policy", "control", "web", "metrics"];

#[derive(Debug, Error)]
pub enum ActivationError {
    #[error("systemd socket activation: {0}")]
    Environment(std::io::Error),
    #[error(
        "systemd passed a socket named {0:?}; mailauthd takes sockets named {names} \
         (set FileDescriptorName= in the .socket unit)",
        names = NAMES.join(", ")
    )]
    UnknownName(String),
    #[error("the sockets from systemd were already taken")]
    AlreadyTaken,
}

/// Sockets passed by systemd, by name, until each listener takes its own.
#[derive(Debug, Default)]
pub struct Activated {
    by_name: BTreeMap<String, Vec<OwnedFd>>,
}

static TAKEN: AtomicBool = AtomicBool::new(false);

impl Activated {
    /// Takes the sockets systemd passed to this process (none when it was not socket
    /// activated). Every socket must carry one of [`NAMES`].
    pub fn from_environment() -> Result<Self, ActivationError> {
        let passed: Vec<(i32, String)> = sd_notify::listen_fds_with_names()
            .map_err(ActivationError::Environment)?
            .collect();
        if passed.is_empty() {
            return Ok(Activated::default());
        }
        if TAKEN.swap(true, Ordering::SeqCst) {
            return Err(ActivationError::AlreadyTaken);
        }
        let mut by_name: BTreeMap<String, Vec<OwnedFd>> = BTreeMap::new();
        let mut unknown = None;
        for (raw, name) in passed {
            // SAFETY: systemd opened these descriptors for this process (LISTEN_PID is
            // ours, checked by `listen_fds_with_names`), and the flag above makes this the
            // only place that ever takes ownership of them.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            if NAMES.contains(&name.as_str()) {
                by_name.entry(name).or_default().push(fd);
            } else {
                unknown.get_or_insert(name);
            }
        }
        match unknown {
            Some(name) => Err(ActivationError::UnknownName(name)),
            None => Ok(Activated { by_name }),
        }
    }

    /// The sockets named `name`, handed over once.
    pub fn take(&mut self, name: &str) -> Vec<OwnedFd> {
        self.by_name.remove(name).unwrap_or_default()
    }

    pub fn has(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Names of sockets passed for a listener the configuration does not enable.
    pub fn unclaimed(&self) -> Vec<&str> {
        self.by_name.keys().map(String::as_str).collect()
    }
}
