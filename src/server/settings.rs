//! The socket doors' config sections (`[auth_socket]`, `[userdb_socket]`,
//! `[policy_socket]`, `[control_socket]`), checked into [`ListenerConfig`]s, and
//! [`DoorSettings`], what [`super::FrontDoors::start`] is built from.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::listener::{Endpoint, ListenerConfig};
use crate::policy::PolicySettings;
use crate::settings_check::{networks, problem, Problem, Within};

/// `idle_timeout_ms` of the auth and userdb listeners.
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 60_000;

/// A listener: where, who may connect, how many, how long idle.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ListenerSection {
    listen: Option<Vec<String>>,
    owner: Option<String>,
    group: Option<String>,
    mode: Option<String>,
    allow: Option<Vec<String>>,
    trusted: Option<Vec<String>>,
    max_connections: Option<usize>,
    idle_timeout_ms: Option<u64>,
}

/// The admin channel of a running daemon; unix only, for root and the daemon's user.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ControlSection {
    path: Option<PathBuf>,
}

/// What the socket doors are started with, borrowed from the checked config.
pub struct DoorSettings<'a> {
    pub auth_socket: &'a ListenerConfig,
    pub userdb_socket: &'a ListenerConfig,
    pub policy_socket: &'a ListenerConfig,
    pub control_socket: &'a ListenerConfig,
    /// The policy door's rules.
    pub policy: &'a PolicySettings,
}

/// A listener section; `default` is where it listens when `listen` is absent.
pub fn check_listener(
    name: &'static str,
    section: &ListenerSection,
    default: &Path,
    problems: &mut Vec<Problem>,
) -> ListenerConfig {
    let endpoints = match &section.listen {
        Some(listen) => listen
            .iter()
            .filter_map(|l| match Endpoint::parse(l) {
                Ok(e) => Some(e),
                Err(msg) => {
                    problem(problems, &format!("{name}.listen"), msg.to_string());
                    None
                }
            })
            .collect(),
        None => vec![Endpoint::Unix(default.to_path_buf())],
    };
    let mode = match section.mode.as_deref() {
        None => 0o660,
        Some(m) => match u32::from_str_radix(m.trim_start_matches("0o"), 8) {
            Ok(v) if v <= 0o777 => v,
            _ => {
                problem(
                    problems,
                    &format!("{name}.mode"),
                    format!("{m:?} is not an octal mode such as \"0660\""),
                );
                0o660
            }
        },
    };
    let loopback = vec!["127.0.0.0/8".to_string(), "::1/128".to_string()];
    let allow = networks(
        &format!("{name}.allow"),
        section.allow.as_ref().unwrap_or(&loopback),
        problems,
    );
    let trusted = networks(
        &format!("{name}.trusted"),
        section.trusted.as_deref().unwrap_or(&[]),
        problems,
    );
    let max_connections = section.max_connections.unwrap_or(1024);
    if max_connections == 0 {
        problem(
            problems,
            &format!("{name}.max_connections"),
            "must be at least 1",
        );
    }
    // Short: Postfix and Dovecot reconnect at once, and a connection left open by a
    // client that forgot it should give its place back soon.
    let idle = section.idle_timeout_ms.unwrap_or(DEFAULT_IDLE_TIMEOUT_MS);
    problems.within(&format!("{name}.idle_timeout_ms"), idle, 1_000..=86_400_000);
    ListenerConfig {
        name,
        endpoints,
        owner: section.owner.clone(),
        group: section.group.clone(),
        mode,
        allow,
        trusted,
        max_connections: max_connections.max(1),
        idle_timeout: Duration::from_millis(idle),
    }
}

/// `[policy_socket]`: a listener whose connections are timed by `[policy]` instead.
pub fn check_policy_listener(
    section: &ListenerSection,
    default: &Path,
    problems: &mut Vec<Problem>,
) -> ListenerConfig {
    if section.idle_timeout_ms.is_some() {
        problem(
            problems,
            "policy_socket.idle_timeout_ms",
            "the policy listener does not use it: Postfix keeps policy connections open \
             between mails, and [policy] idle_timeout_secs decides how long",
        );
    }
    check_listener("policy_socket", section, default, problems)
}

/// `[control_socket]`: only its path can be set; who may use it is fixed.
pub fn control_listener(section: &ControlSection, default: &Path) -> ListenerConfig {
    let path = section
        .path
        .clone()
        .unwrap_or_else(|| default.to_path_buf());
    ListenerConfig {
        name: "control_socket",
        endpoints: vec![Endpoint::Unix(path)],
        owner: None,
        group: None,
        mode: 0o600,
        allow: Vec::new(),
        trusted: Vec::new(),
        max_connections: 16,
        idle_timeout: Duration::from_secs(10),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::tests::assert_only_problem;

    #[test]
    fn an_idle_timeout_the_policy_listener_would_ignore_is_refused() {
        assert_only_problem(
            "[policy_socket]\nidle_timeout_ms = 1000\n",
            "policy_socket.idle_timeout_ms",
            "[policy] idle_timeout_secs",
        );
    }
}
