//! The config file: a serde schema ([`FileConfig`]) checked into a runtime [`Config`].
//!
//! Every problem is reported at once, each naming its key, so `mailauthd config check`
//! shows the whole list instead of one error per run.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::auth::password::Argon2Params;
use crate::auth::services::ServiceMap;
use crate::auth::throttle::{RedisUrl, ThrottleConfig};
use crate::auth::verify_cache::VerifyCacheConfig;
use crate::names::Protocol;
use crate::policy::{check_reply_text, NullSender, PolicySettings, ReplyTexts};
use crate::proto::postfix_policy::Limits as CodecLimits;
use crate::server::listener::{Endpoint, ListenerConfig};
use crate::store::{parse_networks, parse_window, LimitWindow, SendLimits};
use crate::store::{DatabaseUrl, StoreOptions};

pub const DEFAULT_CONFIG_PATH: &str = "/etc/mailauthd/mailauthd.toml";
const DEFAULT_STATE_DIR: &str = "/var/lib/mailauthd";
const DEFAULT_RUNTIME_DIR: &str = "/run/mailauthd";
/// `idle_timeout_ms` of the auth and userdb listeners.
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 60_000;
/// Descriptors kept aside from the listeners' caps and the database pool: the listening
/// sockets, log and key files, Redis, HTTP clients to the identity provider, SQLite's
/// files.
pub const RESERVED_DESCRIPTORS: u64 = 64;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct FileConfig {
    pub state_directory: Option<PathBuf>,
    pub runtime_directory: Option<PathBuf>,
    pub store: StoreSection,
    pub credentials: CredentialsSection,
    pub hash_pool: HashPoolSection,
    pub services: BTreeMap<String, String>,
    pub last_use: LastUseSection,
    pub throttle: ThrottleSection,
    pub log: LogSection,
    pub oidc: Option<OidcSection>,
    pub web: Option<WebSection>,
    pub auth_socket: ListenerSection,
    pub userdb_socket: ListenerSection,
    pub policy_socket: ListenerSection,
    pub control_socket: ControlSection,
    pub policy: PolicySection,
    pub metrics: MetricsSection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct OidcSection {
    pub display_name: Option<String>,
    pub issuer: Option<String>,
    pub authorization_endpoint: Option<String>,
    pub token_endpoint: Option<String>,
    pub userinfo_endpoint: Option<String>,
    pub jwks_uri: Option<String>,
    pub end_session_endpoint: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    pub client_secret_file: Option<PathBuf>,
    pub token_endpoint_auth_method: Option<String>,
    pub redirect_url: Option<String>,
    pub scopes: Option<Vec<String>>,
    pub address_claim: Option<String>,
    pub template_claim: Option<String>,
    pub name_claim: Option<String>,
    pub ignore_tls_errors: Option<bool>,
    pub provision: Option<bool>,
    pub require_verified_email: Option<bool>,
    pub timeout_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct WebSection {
    pub listen: Option<String>,
    pub title: Option<String>,
    pub mail_host: Option<String>,
    pub secure_cookies: Option<bool>,
    pub session_minutes: Option<u64>,
    /// Replaced by `trusted_proxies`; refused when true, with a pointer to it.
    pub trust_x_forwarded_for: Option<bool>,
    pub trusted_proxies: Option<Vec<String>>,
    pub max_connections: Option<u64>,
    pub header_timeout_seconds: Option<u64>,
}

/// The admin channel of a running daemon; unix only, for root and the daemon's user.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ControlSection {
    pub path: Option<PathBuf>,
}

/// A listener: where, who may connect, how many, how long idle.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ListenerSection {
    pub listen: Option<Vec<String>>,
    pub owner: Option<String>,
    pub group: Option<String>,
    pub mode: Option<String>,
    pub allow: Option<Vec<String>>,
    pub trusted: Option<Vec<String>>,
    pub max_connections: Option<usize>,
    pub idle_timeout_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct StoreSection {
    pub url: Option<String>,
    pub url_file: Option<PathBuf>,
    pub max_connections: Option<u32>,
    pub connect_timeout_ms: Option<u64>,
    pub query_timeout_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct CredentialsSection {
    pub key_file: Option<PathBuf>,
    pub argon2_memory_kib: Option<u32>,
    pub argon2_iterations: Option<u32>,
    pub argon2_parallelism: Option<u32>,
    pub rehash_on_login: Option<bool>,
    pub verify_cache_entries: Option<usize>,
    pub verify_cache_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct MetricsSection {
    pub listen: Option<String>,
    pub path: Option<String>,
    pub on_web_listener: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct HashPoolSection {
    pub workers: Option<usize>,
    pub queue: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct LastUseSection {
    pub flush_interval_ms: Option<u64>,
    pub queue: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ThrottleSection {
    pub enabled: Option<bool>,
    pub free_failures: Option<u32>,
    pub base_delay_ms: Option<u64>,
    pub max_delay_ms: Option<u64>,
    pub window_secs: Option<u64>,
    pub network_block_after: Option<u32>,
    pub account_block_after: Option<u32>,
    pub block_secs: Option<u64>,
    pub known_network_secs: Option<u64>,
    pub trusted_networks: Vec<String>,
    pub max_tracked: Option<usize>,
    pub redis_url: Option<String>,
    pub redis_prefix: Option<String>,
    pub redis_timeout_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct LogSection {
    pub level: Option<String>,
    pub format: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct PolicySection {
    pub subaddress_delimiters: Option<String>,
    pub null_sender: Option<String>,
    pub refuse_forged_local_senders: Option<bool>,
    pub trusted_networks: Option<Vec<String>>,
    pub limits: Option<Vec<LimitEntry>>,
    pub idle_timeout_secs: Option<u64>,
    pub max_line_bytes: Option<usize>,
    pub max_attributes: Option<usize>,
    pub max_request_bytes: Option<usize>,
    pub replies: RepliesSection,
}

/// One `[[policy.limits]]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct LimitEntry {
    pub window: Option<String>,
    pub messages: Option<u64>,
    pub recipients: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RepliesSection {
    pub not_owned: Option<String>,
    pub null_sender: Option<String>,
    pub no_access: Option<String>,
    pub forged_sender: Option<String>,
    pub over_limit: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
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
    pub log_level: String,
    pub log_format: LogFormat,
    pub runtime_directory: PathBuf,
    pub auth_socket: ListenerConfig,
    pub userdb_socket: ListenerConfig,
    pub policy_socket: ListenerConfig,
    pub control_socket: ListenerConfig,
    pub policy: PolicySettings,
    /// Sign-in through an OpenID Connect provider; `None` when `[oidc]` is absent.
    pub oidc: Option<crate::oidc::OidcSettings>,
    /// The web page; `None` when `[web]` is absent.
    pub web: Option<crate::web::WebSettings>,
    pub verify_cache: VerifyCacheConfig,
    pub metrics: MetricsSettings,
}

/// Where `/metrics` is served: its own listener, the web page's, both or neither.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricsSettings {
    /// A listener of its own, which also answers `/healthz` and `/readyz`.
    pub listen: Option<std::net::SocketAddr>,
    pub path: String,
    pub on_web_listener: bool,
}

/// One problem, naming the key it is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

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
    pub fn check_descriptors(&self, limit: u64) -> Result<(), String> {
        let budget = self.descriptor_budget();
        let total: u64 = budget.iter().map(|(_, n)| n).sum();
        if total <= limit {
            return Ok(());
        }
        let parts: Vec<String> = budget.iter().map(|(k, n)| format!("{k} {n}")).collect();
        Err(format!(
            "the connection caps need {total} open files ({}), but the open-file limit is {limit}; \
             lower the caps or raise the limit (LimitNOFILE= in the systemd unit, ulimit -n)",
            parts.join(" + ")
        ))
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

pub(crate) fn problem(problems: &mut Vec<Problem>, key: &str, message: impl Into<String>) {
    problems.push(Problem {
        key: key.into(),
        message: message.into(),
    });
}

fn check(file: FileConfig, problems: &mut Vec<Problem>) -> Config {
    let state_directory = file
        .state_directory
        .or_else(|| {
            std::env::var_os("STATE_DIRECTORY")
                .filter(|v| !v.is_empty())
                .map(|v| {
                    // systemd may pass several folders separated by ':'; the first is ours.
                    PathBuf::from(
                        v.to_string_lossy()
                            .split(':')
                            .next()
                            .unwrap_or_default()
                            .to_string(),
                    )
                })
        })
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));

    let runtime_directory = file
        .runtime_directory
        .or_else(|| first_dir_from_env("RUNTIME_DIRECTORY"))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_RUNTIME_DIR));
    let auth_socket = listener(
        "auth_socket",
        &file.auth_socket,
        &[format!("unix:{}", runtime_directory.join("auth").display())],
        problems,
    );
    let userdb_socket = listener(
        "userdb_socket",
        &file.userdb_socket,
        &[format!(
            "unix:{}",
            runtime_directory.join("userdb").display()
        )],
        problems,
    );

    if file.policy_socket.idle_timeout_ms.is_some() {
        problem(
            problems,
            "policy_socket.idle_timeout_ms",
            "the policy listener does not use it: Postfix keeps policy connections open \
             between mails, and [policy] idle_timeout_secs decides how long",
        );
    }
    let policy_socket = listener(
        "policy_socket",
        &file.policy_socket,
        &[format!(
            "unix:{}",
            runtime_directory.join("policy").display()
        )],
        problems,
    );
    let control_path = file
        .control_socket
        .path
        .clone()
        .unwrap_or_else(|| runtime_directory.join("control"));
    let control_socket = ListenerConfig {
        name: "control_socket",
        endpoints: vec![Endpoint::Unix(control_path)],
        owner: None,
        group: None,
        mode: 0o600,
        allow: Vec::new(),
        trusted: Vec::new(),
        max_connections: 16,
        idle_timeout: Duration::from_secs(10),
    };

    let url = store_url(&file.store, &state_directory, problems);
    let max_connections = file.store.max_connections.unwrap_or(16);
    if max_connections == 0 {
        problem(problems, "store.max_connections", "must be at least 1");
    }
    let connect_timeout_ms = file.store.connect_timeout_ms.unwrap_or(3000);
    if !(100..=60_000).contains(&connect_timeout_ms) {
        problem(
            problems,
            "store.connect_timeout_ms",
            "must be between 100 and 60000",
        );
    }
    let query_timeout_ms = file.store.query_timeout_ms.unwrap_or(3000);
    if !(100..=600_000).contains(&query_timeout_ms) {
        problem(
            problems,
            "store.query_timeout_ms",
            "must be between 100 and 600000",
        );
    }

    let defaults = Argon2Params::default();
    let argon2 = Argon2Params {
        memory_kib: file
            .credentials
            .argon2_memory_kib
            .unwrap_or(defaults.memory_kib),
        iterations: file
            .credentials
            .argon2_iterations
            .unwrap_or(defaults.iterations),
        parallelism: file
            .credentials
            .argon2_parallelism
            .unwrap_or(defaults.parallelism),
    };
    if let Err(e) = argon2.validate() {
        problem(problems, "credentials.argon2_*", e);
    }
    if argon2.memory_kib < 8192 {
        problem(
            problems,
            "credentials.argon2_memory_kib",
            "below 8192 KiB is too weak for stored passwords",
        );
    }

    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let hash_workers = match file.hash_pool.workers {
        None | Some(0) => cores,
        Some(n) if n > 256 => {
            problem(problems, "hash_pool.workers", "at most 256");
            cores
        }
        Some(n) => n,
    };
    let hash_queue = file.hash_pool.queue.unwrap_or(64 * hash_workers);

    let mut extra = BTreeMap::new();
    for (name, protocol) in &file.services {
        if name.trim().eq_ignore_ascii_case(crate::auth::WEB_SERVICE) {
            problem(
                problems,
                &format!("services.{name}"),
                "is reserved for the web page's password form; a mail service cannot use that name",
            );
            continue;
        }
        match protocol.parse::<Protocol>() {
            Ok(p) => {
                extra.insert(name.clone(), p);
            }
            Err(e) => problem(problems, &format!("services.{name}"), e.to_string()),
        }
    }

    let last_use_interval = file.last_use.flush_interval_ms.unwrap_or(1000);
    if !(10..=600_000).contains(&last_use_interval) {
        problem(
            problems,
            "last_use.flush_interval_ms",
            "must be between 10 and 600000",
        );
    }

    let throttle = throttle_config(&file.throttle, problems);

    let log_level = file.log.level.unwrap_or_else(|| "info".into());
    if tracing_subscriber::EnvFilter::try_new(&log_level).is_err() {
        problem(
            problems,
            "log.level",
            format!("{log_level:?} is not a level or filter (try info, debug, warn)"),
        );
    }
    let log_format = match file.log.format.as_deref() {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => {
            problem(
                problems,
                "log.format",
                format!("{other:?}: use text or json"),
            );
            LogFormat::Text
        }
    };

    let policy = check_policy(file.policy, problems);
    let oidc = file
        .oidc
        .and_then(|section| crate::oidc::settings::check(section, problems));
    let web = file
        .web
        .and_then(|section| crate::web::settings::check(section, oidc.as_ref(), problems));

    let verify_cache = VerifyCacheConfig {
        entries: file
            .credentials
            .verify_cache_entries
            .unwrap_or(VerifyCacheConfig::default().entries),
        lifetime: Duration::from_secs(
            file.credentials
                .verify_cache_secs
                .unwrap_or(VerifyCacheConfig::default().lifetime.as_secs()),
        ),
    };
    if verify_cache.entries > 10_000_000 {
        problem(
            problems,
            "credentials.verify_cache_entries",
            "must be at most 10000000 (0 turns the cache off)",
        );
    }
    if verify_cache.lifetime > Duration::from_secs(86_400) {
        problem(
            problems,
            "credentials.verify_cache_secs",
            "must be at most 86400 (one day)",
        );
    }
    let metrics = check_metrics(file.metrics, web.is_some(), problems);

    Config {
        source: None,
        oidc,
        web,
        verify_cache,
        metrics,
        key_file: file
            .credentials
            .key_file
            .unwrap_or_else(|| state_directory.join("app-password.key")),
        store: StoreOptions {
            url,
            max_connections: max_connections.max(1),
            connect_timeout: Duration::from_millis(connect_timeout_ms),
            query_timeout: Duration::from_millis(query_timeout_ms),
        },
        state_directory,
        argon2,
        rehash_on_login: file.credentials.rehash_on_login.unwrap_or(true),
        hash_workers,
        hash_queue,
        services: ServiceMap::with_overrides(&extra),
        last_use_interval: Duration::from_millis(last_use_interval),
        last_use_queue: file.last_use.queue.unwrap_or(10_000),
        throttle,
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

fn check_metrics(
    section: MetricsSection,
    web_configured: bool,
    problems: &mut Vec<Problem>,
) -> MetricsSettings {
    let listen = section.listen.as_deref().and_then(|text| {
        text.trim()
            .parse::<std::net::SocketAddr>()
            .map_err(|_| {
                problem(
                    problems,
                    "metrics.listen",
                    format!("{text:?} is not ADDRESS:PORT (e.g. 127.0.0.1:9154)"),
                )
            })
            .ok()
    });
    let path = section.path.unwrap_or_else(|| "/metrics".into());
    if !path.starts_with('/') || path.len() > 200 || path.chars().any(char::is_whitespace) {
        problem(
            problems,
            "metrics.path",
            "must be a URL path starting with / (default /metrics)",
        );
    }
    let on_web_listener = section.on_web_listener.unwrap_or(false);
    if on_web_listener && !web_configured {
        problem(
            problems,
            "metrics.on_web_listener",
            "needs a [web] section (or use metrics.listen for a listener of its own)",
        );
    }
    if ["/healthz", "/readyz"].contains(&path.as_str())
        || (on_web_listener
            && [
                "/",
                "/login",
                "/login/password",
                "/callback",
                "/logout",
                "/app-passwords",
                "/app-passwords/revoke",
            ]
            .contains(&path.as_str()))
    {
        problem(
            problems,
            "metrics.path",
            format!("{path} is already a page of its listener; pick another path"),
        );
    }
    MetricsSettings {
        listen,
        path,
        on_web_listener,
    }
}

fn check_policy(section: PolicySection, problems: &mut Vec<Problem>) -> PolicySettings {
    let defaults = PolicySettings::default();
    let subaddress_delimiters = section
        .subaddress_delimiters
        .unwrap_or(defaults.subaddress_delimiters);
    if subaddress_delimiters.chars().count() > 8
        || subaddress_delimiters
            .chars()
            .any(|c| c == '@' || c.is_whitespace() || c.is_control() || c.is_alphanumeric())
    {
        problem(
            problems,
            "policy.subaddress_delimiters",
            "use up to 8 punctuation characters such as \"+\" or \"+-\" (\"\" turns sub-addressing off)",
        );
    }
    let null_sender = match section.null_sender.as_deref() {
        None | Some("allow") => NullSender::Allow,
        Some("refuse") => NullSender::Refuse,
        Some(other) => {
            problem(
                problems,
                "policy.null_sender",
                format!("{other:?}: use allow or refuse"),
            );
            NullSender::Allow
        }
    };
    let mut trusted_networks = Vec::new();
    for (i, n) in section
        .trusted_networks
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        match parse_networks(n) {
            Ok(nets) if nets.len() == 1 => trusted_networks.extend(nets),
            Ok(_) => problem(
                problems,
                &format!("policy.trusted_networks[{i}]"),
                "one address or network per entry, e.g. \"192.0.2.0/24\"",
            ),
            Err(e) => problem(problems, &format!("policy.trusted_networks[{i}]"), e),
        }
    }
    let default_limits = check_limits(section.limits.unwrap_or_default(), problems);
    let idle_secs = section
        .idle_timeout_secs
        .unwrap_or(defaults.idle_timeout.as_secs());
    if !(1..=3600).contains(&idle_secs) {
        problem(
            problems,
            "policy.idle_timeout_secs",
            "must be between 1 and 3600",
        );
    }
    let codec = CodecLimits {
        max_line: section.max_line_bytes.unwrap_or(defaults.codec.max_line),
        max_attributes: section
            .max_attributes
            .unwrap_or(defaults.codec.max_attributes),
        max_request_bytes: section
            .max_request_bytes
            .unwrap_or(defaults.codec.max_request_bytes),
    };
    if !(512..=65_536).contains(&codec.max_line) {
        problem(
            problems,
            "policy.max_line_bytes",
            "must be between 512 and 65536",
        );
    }
    if !(32..=4096).contains(&codec.max_attributes) {
        problem(
            problems,
            "policy.max_attributes",
            "must be between 32 and 4096",
        );
    }
    if !(4096..=1 << 20).contains(&codec.max_request_bytes)
        || codec.max_request_bytes < codec.max_line
    {
        problem(
            problems,
            "policy.max_request_bytes",
            "must be between 4096 and 1048576, and at least policy.max_line_bytes",
        );
    }
    let texts = check_replies(section.replies, problems);
    PolicySettings {
        subaddress_delimiters,
        null_sender,
        refuse_forged_local_senders: section.refuse_forged_local_senders.unwrap_or(false),
        trusted_networks,
        default_limits,
        texts,
        idle_timeout: Duration::from_secs(idle_secs.clamp(1, 3600)),
        codec,
    }
}

fn check_limits(entries: Vec<LimitEntry>, problems: &mut Vec<Problem>) -> SendLimits {
    let mut windows = Vec::new();
    for (i, entry) in entries.into_iter().enumerate() {
        let key = format!("policy.limits[{i}]");
        let seconds = match entry.window.as_deref().map(parse_window) {
            Some(Ok(s)) => s,
            Some(Err(e)) => {
                problem(problems, &format!("{key}.window"), e);
                continue;
            }
            None => {
                problem(
                    problems,
                    &format!("{key}.window"),
                    "missing; e.g. window = \"1h\"",
                );
                continue;
            }
        };
        windows.push(LimitWindow {
            seconds,
            messages: entry.messages,
            recipients: entry.recipients,
        });
    }
    SendLimits::new(windows).unwrap_or_else(|e| {
        problem(problems, "policy.limits", e);
        SendLimits::none()
    })
}

fn check_replies(section: RepliesSection, problems: &mut Vec<Problem>) -> ReplyTexts {
    let defaults = ReplyTexts::default();
    let mut pick = |value: Option<String>, default: String, key: &str, class, names| {
        let text = value.unwrap_or(default);
        if let Err(e) = check_reply_text(&text, class, names) {
            problem(problems, &format!("policy.replies.{key}"), e);
        }
        text
    };
    ReplyTexts {
        not_owned: pick(
            section.not_owned,
            defaults.not_owned,
            "not_owned",
            '5',
            ReplyTexts::NOT_OWNED_PLACEHOLDERS,
        ),
        null_sender: pick(
            section.null_sender,
            defaults.null_sender,
            "null_sender",
            '5',
            ReplyTexts::NULL_SENDER_PLACEHOLDERS,
        ),
        no_access: pick(
            section.no_access,
            defaults.no_access,
            "no_access",
            '5',
            ReplyTexts::NO_ACCESS_PLACEHOLDERS,
        ),
        forged_sender: pick(
            section.forged_sender,
            defaults.forged_sender,
            "forged_sender",
            '5',
            ReplyTexts::FORGED_SENDER_PLACEHOLDERS,
        ),
        over_limit: pick(
            section.over_limit,
            defaults.over_limit,
            "over_limit",
            '4',
            ReplyTexts::OVER_LIMIT_PLACEHOLDERS,
        ),
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

pub(crate) fn networks(
    key: &str,
    list: &[String],
    problems: &mut Vec<Problem>,
) -> Vec<ipnet::IpNet> {
    list.iter()
        .filter_map(|n| match crate::store::parse_networks(n) {
            Ok(mut nets) if nets.len() == 1 => nets.pop(),
            _ => {
                problem(
                    problems,
                    key,
                    format!("{n:?} is not an address or CIDR network"),
                );
                None
            }
        })
        .collect()
}

fn listener(
    name: &'static str,
    section: &ListenerSection,
    defaults: &[String],
    problems: &mut Vec<Problem>,
) -> ListenerConfig {
    let listen = section.listen.clone().unwrap_or_else(|| defaults.to_vec());
    let endpoints = listen
        .iter()
        .filter_map(|l| match Endpoint::parse(l) {
            Ok(e) => Some(e),
            Err(msg) => {
                problem(problems, &format!("{name}.listen"), msg);
                None
            }
        })
        .collect();
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
    if !(1_000..=86_400_000).contains(&idle) {
        problem(
            problems,
            &format!("{name}.idle_timeout_ms"),
            "must be between 1000 and 86400000",
        );
    }
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

fn throttle_config(section: &ThrottleSection, problems: &mut Vec<Problem>) -> ThrottleConfig {
    let defaults = ThrottleConfig::default();
    let ms = |v: Option<u64>, default: Duration| v.map(Duration::from_millis).unwrap_or(default);
    let secs = |v: Option<u64>, default: Duration| v.map(Duration::from_secs).unwrap_or(default);
    let trusted_networks = networks(
        "throttle.trusted_networks",
        &section.trusted_networks,
        problems,
    );
    let config = ThrottleConfig {
        enabled: section.enabled.unwrap_or(defaults.enabled),
        free_failures: section.free_failures.unwrap_or(defaults.free_failures),
        base_delay: ms(section.base_delay_ms, defaults.base_delay),
        max_delay: ms(section.max_delay_ms, defaults.max_delay),
        window: secs(section.window_secs, defaults.window),
        network_block_after: section
            .network_block_after
            .unwrap_or(defaults.network_block_after),
        account_block_after: section
            .account_block_after
            .unwrap_or(defaults.account_block_after),
        block_duration: secs(section.block_secs, defaults.block_duration),
        known_network_for: secs(section.known_network_secs, defaults.known_network_for),
        trusted_networks,
        max_tracked: section.max_tracked.unwrap_or(defaults.max_tracked),
        redis_url: section
            .redis_url
            .as_deref()
            .map(|url| RedisUrl::new(url.trim())),
        redis_prefix: section
            .redis_prefix
            .clone()
            .unwrap_or(defaults.redis_prefix),
        redis_timeout: ms(section.redis_timeout_ms, defaults.redis_timeout),
    };
    if let Err(found) = config.validate() {
        for (key, message) in found {
            problem(problems, &format!("throttle.{key}"), message);
        }
    }
    config
}

fn store_url(
    store: &StoreSection,
    state_directory: &Path,
    problems: &mut Vec<Problem>,
) -> DatabaseUrl {
    let url = match (&store.url, &store.url_file) {
        (Some(_), Some(_)) => {
            problem(
                problems,
                "store.url_file",
                "set either store.url or store.url_file, not both",
            );
            None
        }
        (Some(url), None) => Some(url.trim().to_string()),
        (None, Some(path)) => match std::fs::read_to_string(path) {
            Ok(text) => Some(text.trim().to_string()),
            Err(e) => {
                problem(
                    problems,
                    "store.url_file",
                    format!("cannot read {}: {e}", path.display()),
                );
                None
            }
        },
        (None, None) => None,
    };
    let url = url.unwrap_or_else(|| {
        format!(
            "sqlite://{}",
            state_directory.join("mailauthd.db").display()
        )
    });
    if crate::store::Dialect::from_url(&url).is_none() {
        problem(
            problems,
            if store.url_file.is_some() { "store.url_file" } else { "store.url" },
            "unsupported database URL: use sqlite://PATH, mysql://USER@HOST/DB (MariaDB) or postgres://USER@HOST/DB",
        );
    }
    DatabaseUrl::new(url)
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn the_store_query_timeout_has_a_default_and_bounds() {
        let c = parse("").unwrap();
        assert_eq!(c.store.query_timeout, Duration::from_secs(3));
        let c = parse("[store]\nquery_timeout_ms = 1500\n").unwrap();
        assert_eq!(c.store.query_timeout, Duration::from_millis(1500));
        let problems = parse("[store]\nquery_timeout_ms = 50\n").unwrap_err();
        assert_eq!(problems[0].key, "store.query_timeout_ms");
    }

    #[test]
    fn connection_caps_must_fit_under_the_open_file_limit() {
        let c = parse("state_directory = \"/srv/m\"\n").unwrap();
        // 1024 each for auth, userdb and policy, 16 control, 16 database, 64 reserved.
        let total = 3 * 1024 + 16 + 16 + RESERVED_DESCRIPTORS;
        assert_eq!(c.check_descriptors(total), Ok(()));
        let message = c.check_descriptors(1024).unwrap_err();
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
        let problems = parse(text).unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        for expected in [
            "colour",
            "credentials.keyfile",
            "store.url",
            "store.max_connections",
            "credentials.argon2_memory_kib",
            "services.lmtp",
            "log.format",
        ] {
            assert!(keys.contains(&expected), "{expected} missing from {keys:?}");
        }
    }

    #[test]
    fn throttle_section_is_checked_key_by_key() {
        let c = parse("").unwrap();
        assert_eq!(c.throttle, ThrottleConfig::default());

        let c = parse(
            "[throttle]\nmax_delay_ms = 2000\ntrusted_networks = [\"10.0.0.0/8\", \"2001:db8::1\"]\n",
        )
        .unwrap();
        assert_eq!(c.throttle.max_delay, Duration::from_millis(2000));
        let shown: Vec<String> = c
            .throttle
            .trusted_networks
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(shown, ["10.0.0.0/8", "2001:db8::1/128"]);

        let problems = parse(
            "[throttle]\nmax_delay_ms = 10000\nbase_delay_ms = 20000\nblock_secs = 0\n\
             max_tracked = 10\ntrusted_networks = [\"10.0.0.0/8\", \"not-a-net\"]\nwindow = 5\n",
        )
        .unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        for expected in [
            "throttle.max_delay_ms",
            "throttle.base_delay_ms",
            "throttle.block_secs",
            "throttle.max_tracked",
            "throttle.trusted_networks",
            "throttle.window",
        ] {
            assert!(keys.contains(&expected), "{expected} missing from {keys:?}");
        }
    }

    #[test]
    fn throttle_redis_keys_are_optional_and_checked() {
        let c = parse("").unwrap();
        assert_eq!(c.throttle.redis_url, None);
        assert_eq!(c.throttle.redis_prefix, "mailauthd:throttle:");
        assert_eq!(c.throttle.redis_timeout, Duration::from_millis(250));

        let c = parse(
            "[throttle]\nredis_url = \"redis://:pw@127.0.0.1:6379/3\"\n\
             redis_prefix = \"site-a:\"\nredis_timeout_ms = 100\n",
        )
        .unwrap();
        let url = c.throttle.redis_url.as_ref().unwrap();
        assert_eq!(url.expose(), "redis://:pw@127.0.0.1:6379/3");
        assert!(!format!("{:?}", c.throttle).contains(":pw@"));
        assert!(c
            .throttle
            .describe()
            .contains("Redis redis://:***@127.0.0.1:6379/3"));
        assert_eq!(c.throttle.redis_prefix, "site-a:");
        assert_eq!(c.throttle.redis_timeout, Duration::from_millis(100));

        let problems = parse(
            "[throttle]\nredis_url = \"127.0.0.1:6379\"\nredis_prefix = \"\"\n\
             redis_timeout_ms = 5000\n",
        )
        .unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "throttle.redis_url",
                "throttle.redis_prefix",
                "throttle.redis_timeout_ms"
            ]
        );
        assert!(
            problems[0].message.contains("redis://HOST:PORT/DB"),
            "{problems:?}"
        );
    }

    #[test]
    fn syntax_errors_are_reported() {
        let problems = parse("[store\nurl=").unwrap_err();
        assert_eq!(problems[0].key, "(syntax)");
    }

    #[test]
    fn url_from_file_is_read_and_hidden_in_debug() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("url");
        std::fs::write(&path, "postgres://mail:s3cret@127.0.0.1/mail\n").unwrap();
        let c = parse(&format!("[store]\nurl_file = {:?}\n", path)).unwrap();
        assert_eq!(
            c.store.url.expose(),
            "postgres://mail:s3cret@127.0.0.1/mail"
        );
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn policy_defaults_and_settings() {
        let c = parse("").unwrap();
        assert_eq!(c.policy.subaddress_delimiters, "+");
        assert_eq!(c.policy.null_sender, NullSender::Allow);
        assert!(c.policy.default_limits.is_none());
        assert_eq!(c.policy.idle_timeout, Duration::from_secs(330));
        let text = r#"
            [policy]
            subaddress_delimiters = "+-"
            null_sender = "refuse"
            refuse_forged_local_senders = true
            trusted_networks = ["127.0.0.1", "2001:db8::/32"]
            idle_timeout_secs = 60
            [[policy.limits]]
            window = "1d"
            messages = 500
            [[policy.limits]]
            window = "1h"
            messages = 100
            recipients = 1000
            [policy.replies]
            not_owned = "5.7.1 {sender} is not yours, {user}"
        "#;
        let p = parse(text).unwrap().policy;
        assert_eq!(p.null_sender, NullSender::Refuse);
        assert!(p.refuse_forged_local_senders);
        assert_eq!(p.trusted_networks.len(), 2);
        assert_eq!(p.default_limits.to_string(), "1h:100:1000,1d:500:-");
        assert_eq!(p.texts.not_owned, "5.7.1 {sender} is not yours, {user}");
        assert_eq!(p.idle_timeout, Duration::from_secs(60));
    }

    #[test]
    fn policy_problems_name_their_keys() {
        let text = r#"
            [policy]
            subaddress_delimiters = "@"
            null_sender = "maybe"
            trusted_networks = ["300.1.1.1"]
            idle_timeout_secs = 0
            max_line_bytes = 10
            [[policy.limits]]
            window = "1w"
            messages = 1
            [[policy.limits]]
            messages = 1
            [policy.replies]
            not_owned = "4.7.1 <{sender}>"
            over_limit = "4.7.1 {who}"
        "#;
        let problems = parse(text).unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        for expected in [
            "policy.subaddress_delimiters",
            "policy.null_sender",
            "policy.trusted_networks[0]",
            "policy.idle_timeout_secs",
            "policy.max_line_bytes",
            "policy.limits[0].window",
            "policy.limits[1].window",
            "policy.replies.not_owned",
            "policy.replies.over_limit",
        ] {
            assert!(keys.contains(&expected), "{expected} missing from {keys:?}");
        }
        let dup = "[[policy.limits]]\nwindow = \"1h\"\nmessages = 1\n[[policy.limits]]\nwindow = \"60m\"\nrecipients = 1\n";
        let keys: Vec<String> = parse(dup).unwrap_err().into_iter().map(|p| p.key).collect();
        assert_eq!(keys, vec!["policy.limits".to_string()]);
    }

    #[test]
    fn oidc_and_web_sections_get_their_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "s3cret-client\n").unwrap();
        let text = format!(
            "[oidc]\nissuer = \"https://sso.example.org/realms/x\"\nclient_id = \"mail\"\n\
             client_secret_file = {secret:?}\nredirect_url = \"https://mail.example.org/callback\"\n[web]\n"
        );
        let c = parse(&text).unwrap();
        let o = c.oidc.as_ref().unwrap();
        assert_eq!(o.scopes, ["openid", "profile", "email", "mailcow_template"]);
        assert_eq!(
            (o.address_claim.as_str(), o.template_claim.as_str()),
            ("email", "mailcow_template")
        );
        assert!(o.provision && !o.ignore_tls_errors && o.endpoints.is_none());
        assert!(
            o.require_verified_email,
            "an absent email_verified is refused by default"
        );
        assert_eq!(o.client_secret.as_ref().unwrap().expose(), b"s3cret-client");
        assert!(!format!("{c:?}").contains("s3cret"));
        let w = c.web.as_ref().unwrap();
        assert_eq!(w.listen.to_string(), "127.0.0.1:8080");
        assert!(w.secure_cookies);
        assert_eq!(w.mail_host.as_deref(), Some("mail.example.org"));
        assert_eq!(
            w.public_root.as_ref().unwrap().as_str(),
            "https://mail.example.org/"
        );
    }

    #[test]
    fn oidc_problems_name_their_keys() {
        let text = r#"
            [oidc]
            issuer = "http://sso.example.org"
            client_secret = "a"
            client_secret_file = "/nonexistent"
            redirect_url = "https://mail.example.org/elsewhere"
            token_endpoint = "https://sso.example.org/token"
            token_endpoint_auth_method = "private_key_jwt"
            scopes = ["profile"]
            [web]
            listen = "localhost"
        "#;
        let problems = parse(text).unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        for expected in [
            "oidc.issuer",
            "oidc.client_id",
            "oidc.client_secret_file",
            "oidc.redirect_url",
            "oidc.authorization_endpoint",
            "oidc.jwks_uri",
            "oidc.token_endpoint_auth_method",
            "oidc.scopes",
        ] {
            assert!(keys.contains(&expected), "{expected} missing from {keys:?}");
        }
    }

    #[test]
    fn require_verified_email_can_be_turned_off_and_must_be_a_boolean() {
        let base = r#"
            [oidc]
            issuer = "http://127.0.0.1:9000"
            client_id = "mail"
            redirect_url = "http://127.0.0.1:8080/callback"
        "#;
        let off = parse(&format!("{base}require_verified_email = false\n")).unwrap();
        assert!(!off.oidc.unwrap().require_verified_email);
        let problems = parse(&format!("{base}require_verified_email = \"no\"\n")).unwrap_err();
        let shown: Vec<String> = problems.iter().map(|p| format!("{p:?}")).collect();
        assert!(
            shown.iter().any(|p| p.contains("require_verified_email")),
            "{shown:?}"
        );
    }

    #[test]
    fn explicit_endpoints_turn_discovery_off() {
        let text = r#"
            [oidc]
            issuer = "http://127.0.0.1:9000"
            client_id = "mail"
            redirect_url = "http://127.0.0.1:8080/callback"
            authorization_endpoint = "http://127.0.0.1:9000/auth"
            token_endpoint = "http://127.0.0.1:9000/token"
            jwks_uri = "http://127.0.0.1:9000/jwks"
            userinfo_endpoint = "http://127.0.0.1:9000/me"
        "#;
        let c = parse(text).unwrap();
        let e = c.oidc.unwrap().endpoints.unwrap();
        assert_eq!(e.token.as_str(), "http://127.0.0.1:9000/token");
        assert_eq!(e.userinfo.unwrap().as_str(), "http://127.0.0.1:9000/me");
        assert!(c.web.is_none());
    }

    #[test]
    fn shipped_example_parses() {
        let text = include_str!("../conf-examples/mailauthd.toml");
        parse(text).unwrap();
        // With the commented [oidc] and [web] sections switched on, their defaults parse too.
        let on = text
            .replace("# [oidc]", "[oidc]")
            .replace("# [web]", "[web]")
            .replace("# issuer = ", "issuer = ")
            .replace("# client_id = ", "client_id = ")
            .replace("# redirect_url = ", "redirect_url = ")
            .replace("# [metrics]", "[metrics]")
            .replace(
                "# listen = \"127.0.0.1:9154\"",
                "listen = \"127.0.0.1:9154\"",
            )
            .replace("# on_web_listener = false", "on_web_listener = true");
        let c = parse(&on).unwrap();
        assert!(c.oidc.is_some() && c.web.is_some());
        assert_eq!(c.metrics.listen, Some("127.0.0.1:9154".parse().unwrap()));
        assert!(c.metrics.on_web_listener);
    }

    #[test]
    fn an_idle_timeout_the_policy_listener_would_ignore_is_refused() {
        let problems = parse("[policy_socket]\nidle_timeout_ms = 1000\n").unwrap_err();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].key, "policy_socket.idle_timeout_ms");
        assert!(problems[0].message.contains("[policy] idle_timeout_secs"));
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
                include_str!("../conf-examples/dovecot/2.3/conf.d/auth-mailauthd.conf.ext"),
            ),
            (
                "2.4",
                include_str!("../conf-examples/dovecot/2.4/conf.d/auth-mailauthd.conf.ext"),
            ),
            (
                "lua",
                include_str!("../conf-examples/dovecot/mailauthd.lua"),
            ),
        ] {
            assert!(text.contains("/run/mailauthd/auth"), "{name}");
            assert!(text.contains("/run/mailauthd/userdb"), "{name}");
            assert!(!text.contains("/run/mailauthd/auth.sock"), "{name}");
            assert!(!text.contains("/run/mailauthd/userdb.sock"), "{name}");
        }
    }

    #[test]
    fn metrics_settings_are_checked() {
        let c = parse("").unwrap();
        assert_eq!(c.metrics.listen, None);
        assert!(!c.metrics.on_web_listener);
        assert_eq!(c.metrics.path, "/metrics");
        let keys = |text: &str| -> Vec<String> {
            parse(text)
                .unwrap_err()
                .into_iter()
                .map(|p| p.key)
                .collect()
        };
        assert_eq!(
            keys("[metrics]\nlisten = \"localhost\"\npath = \"metrics\"\non_web_listener = true\n"),
            ["metrics.listen", "metrics.path", "metrics.on_web_listener"]
        );
        assert_eq!(
            keys("[metrics]\nlisten = \"127.0.0.1:1\"\npath = \"/readyz\"\n"),
            ["metrics.path"]
        );
        assert_eq!(
            keys("[credentials]\nverify_cache_secs = 100000\n"),
            ["credentials.verify_cache_secs"]
        );
    }
}
