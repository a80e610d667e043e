//! The config file: a serde schema ([`FileConfig`]) checked into a runtime [`Config`].
//!
//! Every problem is reported at once, each naming its key, so `mailauthd config check`
//! shows the whole list instead of one error per run.
//!
//! Each section's schema and check live with the module that uses it: `[oidc]` in
//! [`crate::oidc::settings`], `[web]` and `[metrics]` in [`crate::web::settings`], the
//! socket listeners in [`crate::server::settings`]; the files here hold the rest, one per
//! section. They report into [`crate::settings_check::Problem`], which none of them has to
//! import this module for. This module puts the sections together, fills in the defaults
//! that depend on each other (the state and runtime directories) and reads the file.
//!
//! The schema's fields are private: only a section's own check reads what the file said,
//! and everything else sees the checked values.

mod auth;
mod log;
mod policy;
mod redis;
mod store;
mod throttle;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::auth::password::Argon2Params;
use crate::auth::services::ServiceMap;
use crate::auth::throttle::ThrottleConfig;
use crate::auth::verify_cache::VerifyCacheConfig;
use crate::devices::settings::ClientsSection;
use crate::devices::ClientSettings;
use crate::logging::LogFormat;
use crate::oidc::settings::OidcSection;
use crate::oidc::tokens::settings::OAuthSection;
use crate::oidc::tokens::OAuthSettings;
use crate::oidc::OidcSettings;
use crate::policy::PolicySettings;
use crate::server::listener::ListenerConfig;
use crate::server::settings::{
    check_listener, check_policy_listener, control_listener, ControlSection, DoorSettings,
    ListenerSection,
};
use crate::settings_check::Problem;
use crate::shared_state::RedisSettings;
use crate::store::StoreOptions;
use crate::web::settings::{check_metrics, MetricsSection, WebSection};
use crate::web::{MetricsSettings, WebSettings};

pub use auth::{CredentialsSection, HashPoolSection, LastUseSection};
pub use log::LogSection;
pub use policy::{LimitEntry, PolicySection, RepliesSection};
pub use redis::RedisSection;
pub use store::StoreSection;
pub use throttle::ThrottleSection;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/mailauthd/mailauthd.toml";
const DEFAULT_STATE_DIR: &str = "/var/lib/mailauthd";
const DEFAULT_RUNTIME_DIR: &str = "/run/mailauthd";
/// Descriptors kept aside from the listeners' caps and the database pool: the listening
/// sockets, log and key files, Redis, HTTP clients to the identity provider, SQLite's
/// files.
pub const RESERVED_DESCRIPTORS: u64 = 64;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct FileConfig {
    state_directory: Option<PathBuf>,
    runtime_directory: Option<PathBuf>,
    store: StoreSection,
    credentials: CredentialsSection,
    hash_pool: HashPoolSection,
    services: BTreeMap<String, String>,
    last_use: LastUseSection,
    throttle: ThrottleSection,
    redis: RedisSection,
    log: LogSection,
    oidc: Option<OidcSection>,
    oauth: Option<OAuthSection>,
    web: Option<WebSection>,
    auth_socket: ListenerSection,
    userdb_socket: ListenerSection,
    policy_socket: ListenerSection,
    control_socket: ControlSection,
    policy: PolicySection,
    metrics: MetricsSection,
    clients: Option<ClientsSection>,
}

/// The checked configuration the daemon and the CLI run with.
#[derive(Clone, Debug)]
pub struct Config {
    pub source: Option<PathBuf>,
    pub state_directory: PathBuf,
    pub store: StoreOptions,
    pub key_file: PathBuf,
    pub argon2: Argon2Params,
    pub rehash_on_login: bool,
    pub hash_workers: usize,
    pub hash_queue: usize,
    pub services: ServiceMap,
    pub last_use_interval: Duration,
    pub last_use_queue: usize,
    pub throttle: ThrottleConfig,
    /// The one Redis of the throttle and the sending limits.
    pub redis: RedisSettings,
    pub log_level: String,
    pub log_format: LogFormat,
    pub runtime_directory: PathBuf,
    pub auth_socket: ListenerConfig,
    pub userdb_socket: ListenerConfig,
    pub policy_socket: ListenerConfig,
    pub control_socket: ListenerConfig,
    pub policy: PolicySettings,
    /// Sign-in through an OpenID Connect provider; `None` when `[oidc]` is absent.
    pub oidc: Option<OidcSettings>,
    /// Mail logins with the provider's access tokens; `None` when `[oauth]` is absent.
    pub oauth: Option<OAuthSettings>,
    /// The web page; `None` when `[web]` is absent.
    pub web: Option<WebSettings>,
    pub verify_cache: VerifyCacheConfig,
    pub metrics: MetricsSettings,
    /// The servers mail clients are told of; `None` when no host is known (device setup
    /// and discovery off).
    pub clients: Option<ClientSettings>,
}

/// A config file that cannot be used, with every problem found in it.
#[derive(Debug)]
pub struct ConfigErrors {
    pub file: String,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} has {} problem(s):", self.file, self.problems.len())?;
        for p in &self.problems {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// The connection caps together need more descriptors than the process may open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TooFewDescriptors {
    /// What may hold a descriptor, by config key, as [`Config::descriptor_budget`] says.
    pub budget: Vec<(String, u64)>,
    pub limit: u64,
}

impl fmt::Display for TooFewDescriptors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total: u64 = self.budget.iter().map(|(_, n)| n).sum();
        let parts: Vec<String> = self
            .budget
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        write!(
            f,
            "the connection caps need {total} open files ({}), but the open-file limit is {}; \
             lower the caps or raise the limit (LimitNOFILE= in the systemd unit, ulimit -n)",
            parts.join(" + "),
            self.limit
        )
    }
}

impl std::error::Error for TooFewDescriptors {}

impl Config {
    /// What may hold a descriptor at once, by config key: each listener's cap, the
    /// database pool and a fixed reserve.
    pub fn descriptor_budget(&self) -> Vec<(String, u64)> {
        let mut budget: Vec<(String, u64)> = [
            &self.auth_socket,
            &self.userdb_socket,
            &self.policy_socket,
            &self.control_socket,
        ]
        .iter()
        .filter(|l| !l.endpoints.is_empty())
        .map(|l| {
            (
                format!("{}.max_connections", l.name),
                l.max_connections as u64,
            )
        })
        .collect();
        if let Some(web) = &self.web {
            budget.push(("web.max_connections".into(), web.max_connections as u64));
        }
        if self.metrics.listen.is_some() {
            budget.push((
                "metrics listener".into(),
                crate::web::metrics::METRICS_MAX_CONNECTIONS as u64,
            ));
        }
        budget.push((
            "store.max_connections".into(),
            u64::from(self.store.max_connections),
        ));
        budget.push(("reserved".into(), RESERVED_DESCRIPTORS));
        budget
    }

    /// Refuses caps that together do not fit under the open-file limit `limit`: a flood
    /// on one listener would then take the descriptors another one needs.
    pub fn check_descriptors(&self, limit: u64) -> Result<(), TooFewDescriptors> {
        let budget = self.descriptor_budget();
        let total: u64 = budget.iter().map(|(_, n)| n).sum();
        if total <= limit {
            return Ok(());
        }
        Err(TooFewDescriptors { budget, limit })
    }

    /// What the socket doors are started with.
    pub fn doors(&self) -> DoorSettings<'_> {
        DoorSettings {
            auth_socket: &self.auth_socket,
            userdb_socket: &self.userdb_socket,
            policy_socket: &self.policy_socket,
            control_socket: &self.control_socket,
            policy: &self.policy,
        }
    }
}

/// Which file to read: `--config`, else `$MAILAUTHD_CONFIG`, else the system path.
pub fn resolve_path(flag: Option<&Path>) -> PathBuf {
    flag.map(Path::to_path_buf)
        .or_else(|| {
            std::env::var_os("MAILAUTHD_CONFIG")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH))
}

pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
        file: shown.clone(),
        problems: vec![Problem {
            key: "(file)".into(),
            message: format!("cannot read: {e}"),
        }],
    })?;
    let mut config = parse(&text).map_err(|problems| ConfigErrors {
        file: shown.clone(),
        problems,
    })?;
    config.source = Some(path.to_path_buf());
    Ok(config)
}

pub fn parse(text: &str) -> Result<Config, Vec<Problem>> {
    let mut problems = Vec::new();
    let mut unknown = Vec::new();
    let deserializer = toml::Deserializer::new(text);
    let file: FileConfig =
        match serde_ignored::deserialize(deserializer, |path| unknown.push(path.to_string())) {
            Ok(file) => file,
            Err(e) => {
                return Err(vec![Problem {
                    key: "(syntax)".into(),
                    message: e.to_string().trim().to_string(),
                }]);
            }
        };
    for key in unknown {
        problems.push(Problem {
            key,
            message: "unknown key (check the spelling against conf-examples/mailauthd.toml)".into(),
        });
    }
    let config = check(file, &mut problems);
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(problems)
    }
}

/// Checks the sections in a fixed order, so `config check` lists the problems of a file
/// the same way every time.
fn check(file: FileConfig, problems: &mut Vec<Problem>) -> Config {
    let state_directory = file
        .state_directory
        .or_else(|| first_dir_from_env("STATE_DIRECTORY"))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
    let runtime_directory = file
        .runtime_directory
        .or_else(|| first_dir_from_env("RUNTIME_DIRECTORY"))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_RUNTIME_DIR));

    let auth_socket = check_listener(
        "auth_socket",
        &file.auth_socket,
        &runtime_directory.join("auth"),
        problems,
    );
    let userdb_socket = check_listener(
        "userdb_socket",
        &file.userdb_socket,
        &runtime_directory.join("userdb"),
        problems,
    );
    let policy_socket = check_policy_listener(
        &file.policy_socket,
        &runtime_directory.join("policy"),
        problems,
    );
    let control_socket = control_listener(&file.control_socket, &runtime_directory.join("control"));

    let store = store::check(file.store, &state_directory, problems);
    let argon2 = auth::argon2(&file.credentials, problems);
    let (hash_workers, hash_queue) = auth::hash_pool(&file.hash_pool, problems);
    let services = auth::services(&file.services, problems);
    let (last_use_interval, last_use_queue) = auth::last_use(&file.last_use, problems);
    let redis = redis::check(&file.redis, &file.throttle, problems);
    let throttle = throttle::check(&file.throttle, &redis, problems);
    let (log_level, log_format) = log::check(file.log, problems);
    let policy = policy::check(file.policy, problems);
    let has_oidc = file.oidc.is_some();
    let oidc = file
        .oidc
        .and_then(|section| crate::oidc::settings::check(section, problems));
    // An [oidc] that failed its check has said so already; "needs [oidc]" would mislead.
    let oauth = file
        .oauth
        .filter(|_| oidc.is_some() || !has_oidc)
        .and_then(|section| crate::oidc::tokens::settings::check(section, oidc.as_ref(), problems));
    let web = file
        .web
        .and_then(|section| crate::web::settings::check(section, oidc.as_ref(), problems));
    let verify_cache = auth::verify_cache(&file.credentials, problems);
    let metrics = check_metrics(file.metrics, web.is_some(), problems);
    if web.is_none()
        && oauth
            .as_ref()
            .is_some_and(|o| !o.endpoint_clients.is_empty())
    {
        crate::settings_check::problem(
            problems,
            "oauth.introspection_clients",
            "the introspection endpoint is served on the web listener: add a [web] section or remove the clients",
        );
    }
    let clients = crate::devices::settings::check(
        file.clients,
        web.as_ref().and_then(|w| w.mail_host.as_deref()),
        problems,
    );

    Config {
        clients,
        source: None,
        oidc,
        oauth,
        web,
        verify_cache,
        metrics,
        key_file: auth::key_file(&file.credentials, &state_directory),
        store,
        state_directory,
        argon2,
        rehash_on_login: auth::rehash_on_login(&file.credentials),
        hash_workers,
        hash_queue,
        services,
        last_use_interval,
        last_use_queue,
        throttle,
        redis,
        log_level,
        log_format,
        runtime_directory,
        auth_socket,
        userdb_socket,
        policy_socket,
        control_socket,
        policy,
    }
}

/// systemd may pass several folders separated by ':'; the first is ours.
fn first_dir_from_env(var: &str) -> Option<PathBuf> {
    let v = std::env::var_os(var).filter(|v| !v.is_empty())?;
    Some(PathBuf::from(
        v.to_string_lossy()
            .split(':')
            .next()
            .unwrap_or_default()
            .to_string(),
    ))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The keys of the problems in `text`, which must be refused.
    pub(crate) fn problem_keys(text: &str) -> Vec<String> {
        parse(text)
            .unwrap_err()
            .into_iter()
            .map(|p| p.key)
            .collect()
    }

    /// `text` is refused for one problem only, at `key`, whose message says `says`.
    pub(crate) fn assert_only_problem(text: &str, key: &str, says: &str) {
        let problems = parse(text).unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].key, key);
        assert!(
            problems[0].message.contains(says),
            "{}",
            problems[0].message
        );
    }

    /// `text` is refused, and each of `expected` is among the keys of its problems.
    pub(crate) fn assert_reported(text: &str, expected: &[&str]) {
        let keys = problem_keys(text);
        for expected in expected {
            assert!(
                keys.iter().any(|k| k == expected),
                "{expected} missing from {keys:?}"
            );
        }
    }

    #[test]
    fn empty_file_gives_working_defaults() {
        let c = parse("state_directory = \"/srv/m\"\n").unwrap();
        assert_eq!(c.store.url.expose(), "sqlite:///srv/m/mailauthd.db");
        assert_eq!(c.key_file, PathBuf::from("/srv/m/app-password.key"));
        assert!(c.rehash_on_login);
        assert_eq!(c.log_format, LogFormat::Text);
        assert_eq!(c.auth_socket.idle_timeout, Duration::from_secs(60));
        assert_eq!(c.userdb_socket.idle_timeout, Duration::from_secs(60));
    }

    #[test]
    fn connection_caps_must_fit_under_the_open_file_limit() {
        let c = parse("state_directory = \"/srv/m\"\n").unwrap();
        // 1024 each for auth, userdb and policy, 16 control, 16 database, 64 reserved.
        let total = 3 * 1024 + 16 + 16 + RESERVED_DESCRIPTORS;
        assert_eq!(c.check_descriptors(total), Ok(()));
        let message = c.check_descriptors(1024).unwrap_err().to_string();
        for part in [
            "need 3168 open files",
            "auth_socket.max_connections 1024",
            "userdb_socket.max_connections 1024",
            "policy_socket.max_connections 1024",
            "control_socket.max_connections 16",
            "store.max_connections 16",
            "reserved 64",
            "open-file limit is 1024",
            "LimitNOFILE=",
        ] {
            assert!(message.contains(part), "{part:?} missing in {message}");
        }
        // A listener that is turned off needs nothing.
        let c =
            parse("[userdb_socket]\nlisten = []\n[policy_socket]\nmax_connections = 10\n").unwrap();
        assert_eq!(c.check_descriptors(1024 + 10 + 16 + 16 + 64), Ok(()));
    }

    #[test]
    fn every_problem_is_reported_at_once_with_its_key() {
        let text = r#"
            colour = "blue"
            [store]
            url = "redis://127.0.0.1"
            max_connections = 0
            [credentials]
            argon2_memory_kib = 1024
            keyfile = "/x"
            [services]
            lmtp = "ftp"
            [log]
            format = "xml"
        "#;
        assert_reported(
            text,
            &[
                "colour",
                "credentials.keyfile",
                "store.url",
                "store.max_connections",
                "credentials.argon2_memory_kib",
                "services.lmtp",
                "log.format",
            ],
        );
    }

    #[test]
    fn syntax_errors_are_reported() {
        let problems = parse("[store\nurl=").unwrap_err();
        assert_eq!(problems[0].key, "(syntax)");
    }

    const SHIPPED_EXAMPLE: &str = include_str!("../../conf-examples/mailauthd.toml");

    /// The shipped example with its commented [oidc] and [web] sections switched on, and
    /// then each of `more`'s replacements made.
    fn example_with_oidc_and(more: &[(&str, &str)]) -> String {
        let mut text = SHIPPED_EXAMPLE.to_string();
        for (commented, on) in [
            ("# [oidc]", "[oidc]"),
            ("# [web]", "[web]"),
            ("# issuer = ", "issuer = "),
            ("# client_id = ", "client_id = "),
            ("# redirect_url = ", "redirect_url = "),
        ]
        .iter()
        .chain(more)
        {
            text = text.replace(commented, on);
        }
        text
    }

    #[test]
    fn shipped_example_parses() {
        parse(SHIPPED_EXAMPLE).unwrap();
        // With the commented [oidc] and [web] sections switched on, their defaults parse too.
        let on = example_with_oidc_and(&[
            ("# [metrics]", "[metrics]"),
            (
                "# listen = \"127.0.0.1:9154\"",
                "listen = \"127.0.0.1:9154\"",
            ),
            ("# on_web_listener = false", "on_web_listener = true"),
        ]);
        let c = parse(&on).unwrap();
        assert!(c.oidc.is_some() && c.web.is_some());
        assert_eq!(c.metrics.listen, Some("127.0.0.1:9154".parse().unwrap()));
        assert!(c.metrics.on_web_listener);
    }

    #[test]
    fn shipped_example_oauth_block_parses_when_switched_on() {
        let (_dir, secret) = crate::test_support::file_in_tempdir("secret", "dovecot-secret\n");
        let on =
            example_with_oidc_and(&[("# [oauth]", "[oauth]"), ("# audiences = ", "audiences = ")]);
        let c = parse(&on).unwrap();
        let o = c.oauth.as_ref().unwrap();
        assert_eq!(o.audiences, ["roundcube"]);
        assert!(o.endpoint_clients.is_empty());
        // Every documented key, with the value shown, and one endpoint client; only in
        // the [oauth] block (other sections document keys of the same names).
        let start = on.find("[oauth]").unwrap();
        let end = start + on[start..].find("# The web page").unwrap();
        let mut all = on[start..end].to_string();
        for key in [
            "required_scope",
            "introspection",
            "introspection_url",
            "clock_skew_seconds",
            "cache_size",
            "cache_seconds",
            "timeout_ms",
        ] {
            let commented = format!("\n# {key} = ");
            assert!(all.contains(&commented), "{key} is not documented");
            all = all.replacen(&commented, &format!("\n{key} = "), 1);
        }
        let all = all
            .replace(
                "# [[oauth.introspection_clients]]",
                "[[oauth.introspection_clients]]",
            )
            .replace("#   client_id = ", "  client_id = ")
            .replace(
                "#   client_secret_file = \"/etc/mailauthd/dovecot-introspection.secret\"",
                &format!("  client_secret_file = {secret:?}"),
            );
        let all = format!("{}{all}{}", &on[..start], &on[end..]);
        let c = parse(&all).unwrap();
        let o = c.oauth.unwrap();
        assert_eq!(o.required_scope.as_deref(), Some("email"));
        assert_eq!(o.endpoint_clients[0].client_id, "dovecot");
        assert_eq!(
            o.endpoint_clients[0].client_secret.expose(),
            b"dovecot-secret"
        );
    }

    #[test]
    fn shipped_dovecot_configs_name_the_default_socket_paths() {
        // What the daemon binds with the packaged unit (RuntimeDirectory=mailauthd).
        let c = parse("runtime_directory = \"/run/mailauthd\"").unwrap();
        let auth = format!("{}", c.auth_socket.endpoints[0]);
        let userdb = format!("{}", c.userdb_socket.endpoints[0]);
        assert_eq!(auth, "unix:/run/mailauthd/auth");
        assert_eq!(userdb, "unix:/run/mailauthd/userdb");
        assert_eq!(DEFAULT_RUNTIME_DIR, "/run/mailauthd");
        for (name, text) in [
            (
                "2.3",
                include_str!("../../conf-examples/dovecot/2.3/conf.d/auth-mailauthd.conf.ext"),
            ),
            (
                "2.4",
                include_str!("../../conf-examples/dovecot/2.4/conf.d/auth-mailauthd.conf.ext"),
            ),
            (
                "lua",
                include_str!("../../conf-examples/dovecot/mailauthd.lua"),
            ),
        ] {
            assert!(text.contains("/run/mailauthd/auth"), "{name}");
            assert!(text.contains("/run/mailauthd/userdb"), "{name}");
            assert!(!text.contains("/run/mailauthd/auth.sock"), "{name}");
            assert!(!text.contains("/run/mailauthd/userdb.sock"), "{name}");
        }
    }
}
