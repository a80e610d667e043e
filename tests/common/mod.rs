//! Test databases: SQLite always; MariaDB and PostgreSQL when their URLs are given.
//!
//! `MAILAUTHD_TEST_MYSQL_URL` and `MAILAUTHD_TEST_POSTGRES_URL` name a server and a database
//! the tests may create other databases from. Outside CI a missing URL means "SQLite only";
//! in CI (`CI` set) it is a failure, so a missing server can never pass as a skip. The same
//! holds for `MAILAUTHD_TEST_REDIS_URL`, the Redis the shared-throttle tests use.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod relay;

use std::sync::Arc;
use std::time::Duration;

use mailauthd::store::{self, DatabaseUrl, SqlStore, Store, StoreOptions};
use sqlx::Connection;

#[derive(Clone, Debug)]
pub enum Backend {
    Sqlite,
    Mysql(String),
    Postgres(String),
}

impl Backend {
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Mysql(_) => "mysql",
            Backend::Postgres(_) => "postgres",
        }
    }
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false")
}

/// The Redis to test against, or `None` (with a note) outside CI when none is given.
pub fn redis_url(test: &str) -> Option<String> {
    match std::env::var("MAILAUTHD_TEST_REDIS_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if in_ci() => panic!("MAILAUTHD_TEST_REDIS_URL is not set: in CI {test} must run"),
        _ => {
            eprintln!("note: MAILAUTHD_TEST_REDIS_URL not set; {test} skipped outside CI");
            None
        }
    }
}

/// A Redis key prefix no other test run uses, so runs against one Redis never meet.
pub fn unique_redis_prefix() -> String {
    format!("{}:throttle:", unique_name())
}

/// Removes every key under `prefix` (a test's own, from [`unique_redis_prefix`]).
pub async fn remove_redis_keys(url: &str, prefix: &str) {
    let mut conn = ::redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let keys: Vec<String> = ::redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    if !keys.is_empty() {
        let _: i64 = ::redis::cmd("DEL")
            .arg(&keys)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
}

pub fn backends() -> Vec<Backend> {
    let in_ci = in_ci();
    let mut list = vec![Backend::Sqlite];
    for (var, make) in [
        (
            "MAILAUTHD_TEST_MYSQL_URL",
            Backend::Mysql as fn(String) -> Backend,
        ),
        (
            "MAILAUTHD_TEST_POSTGRES_URL",
            Backend::Postgres as fn(String) -> Backend,
        ),
    ] {
        match std::env::var(var) {
            Ok(url) if !url.is_empty() => list.push(make(url)),
            _ if in_ci => panic!("{var} is not set: in CI every store backend must be tested"),
            _ => eprintln!("note: {var} not set; testing without that backend"),
        }
    }
    list
}

pub struct TestDb {
    pub store: Arc<SqlStore>,
    pub url: String,
    backend: Backend,
    name: String,
    _dir: Option<tempfile::TempDir>,
}

fn unique_name() -> String {
    let mut bytes = [0u8; 6];
    getrandom::fill(&mut bytes).unwrap();
    let suffix: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("mailauthd_t_{suffix}")
}

/// Same server, another database name (keeps credentials and query string).
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let after_scheme = base.find("://").map(|i| i + 3).unwrap_or(0);
    let host_end = base[after_scheme..]
        .find('/')
        .map(|i| i + after_scheme)
        .unwrap_or(base.len());
    format!("{}/{db}{query}", &base[..host_end])
}

pub fn options(url: &str) -> StoreOptions {
    StoreOptions {
        url: DatabaseUrl::new(url),
        max_connections: 16,
        connect_timeout: Duration::from_secs(10),
        query_timeout: Duration::from_secs(30),
    }
}

pub async fn fresh(backend: &Backend) -> TestDb {
    let name = unique_name();
    let (url, dir) = match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().unwrap();
            (
                format!("sqlite://{}/{name}.db", dir.path().display()),
                Some(dir),
            )
        }
        Backend::Mysql(admin) => {
            let mut conn = sqlx::MySqlConnection::connect(admin)
                .await
                .expect("connect to MariaDB");
            sqlx::query(&format!(
                "CREATE DATABASE {name} CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
            ))
            .execute(&mut conn)
            .await
            .unwrap();
            (with_database(admin, &name), None)
        }
        Backend::Postgres(admin) => {
            let mut conn = sqlx::PgConnection::connect(admin)
                .await
                .expect("connect to PostgreSQL");
            sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(&mut conn)
                .await
                .unwrap();
            (with_database(admin, &name), None)
        }
    };
    let store = store::open(&options(&url)).await.unwrap();
    store.migrate().await.unwrap();
    TestDb {
        store: Arc::new(store),
        url,
        backend: backend.clone(),
        name,
        _dir: dir,
    }
}

impl TestDb {
    /// Closes the pool and drops the server-side database.
    pub async fn finish(self) {
        self.store.close().await;
        match &self.backend {
            Backend::Sqlite => {}
            Backend::Mysql(admin) => {
                let mut conn = sqlx::MySqlConnection::connect(admin).await.unwrap();
                sqlx::query(&format!("DROP DATABASE {}", self.name))
                    .execute(&mut conn)
                    .await
                    .unwrap();
            }
            Backend::Postgres(admin) => {
                let mut conn = sqlx::PgConnection::connect(admin).await.unwrap();
                sqlx::query(&format!("DROP DATABASE {} WITH (FORCE)", self.name))
                    .execute(&mut conn)
                    .await
                    .unwrap();
            }
        }
    }

    pub fn dyn_store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }
}

/// The domain most tests keep their mailboxes in: active, without quotas or limits.
pub async fn create_example_org<S: store::Domains + ?Sized>(s: &S) {
    s.create_domain(&store::Domain {
        name: "example.org".into(),
        active: true,
        max_mailboxes: None,
        max_quota: None,
        total_quota: None,
        created_at: 0,
    })
    .await
    .unwrap();
}

/// `[oidc]` settings for a fake provider at `issuer` that knows `client_secret`, asking for
/// `scopes`; the rest as a config without those keys gives, but a timeout short enough
/// for a provider that never answers.
pub fn oidc_settings(
    issuer: &str,
    client_secret: &str,
    scopes: &[&str],
) -> mailauthd::oidc::OidcSettings {
    mailauthd::oidc::OidcSettings {
        display_name: "Test".into(),
        issuer: issuer.to_string(),
        endpoints: None,
        client_id: "mailauthd".into(),
        client_secret: Some(client_secret.into()),
        client_auth: None,
        redirect_url: openidconnect::url::Url::parse("http://127.0.0.1:1/callback").unwrap(),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        address_claim: "email".into(),
        template_claim: "mailcow_template".into(),
        name_claim: "name".into(),
        ignore_tls_errors: false,
        provision: true,
        require_verified_email: true,
        timeout: Duration::from_millis(700),
        liveness: mailauthd::oidc::LivenessSettings::default(),
    }
}

/// The discovery document of a fake provider at `issuer`: the fields every relying party
/// needs, endpoints under the issuer, RS256 ID tokens.
pub fn discovery_document(issuer: &str) -> serde_json::Value {
    serde_json::json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{issuer}/auth"),
        "token_endpoint": format!("{issuer}/token"),
        "jwks_uri": format!("{issuer}/jwks"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
    })
}

/// What one run of the command line gave: its exit code and both outputs as text.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `command` with `stdin` written to it and closed, and waits for its output.
pub fn output_with_stdin(command: &mut std::process::Command, stdin: &str) -> std::process::Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// Runs `mailauthd --config CONFIG ARGS…` with `stdin`, whatever its exit code. The
/// environment's `MAILAUTHD_CONFIG` and `MAILAUTHD_LOG` are removed so only `config` counts.
pub fn mailauthd(config: &std::path::Path, args: &[&str], stdin: &str) -> Run {
    let out = output_with_stdin(
        std::process::Command::new(env!("CARGO_BIN_EXE_mailauthd"))
            .arg("--config")
            .arg(config)
            .args(args)
            .env_remove("MAILAUTHD_CONFIG")
            .env_remove("MAILAUTHD_LOG"),
        stdin,
    );
    Run {
        code: out.status.code().unwrap(),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

/// Runs `mailauthd --config CONFIG ARGS…` with `stdin`, requires success, returns stdout.
pub fn cli_ok(config: &std::path::Path, args: &[&str], stdin: Option<&str>) -> String {
    let out = output_with_stdin(
        std::process::Command::new(env!("CARGO_BIN_EXE_mailauthd"))
            .arg("--config")
            .arg(config)
            .args(args),
        stdin.unwrap_or(""),
    );
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A plain HTTP/1.0 GET to 127.0.0.1:`port`: the status and the body.
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    let (status, _, body) = http_raw(
        port,
        &format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"),
    );
    (status, body)
}

/// A raw HTTP/1.0 exchange with 127.0.0.1:`port`: status, headers and body as text.
pub fn http_raw(port: u16, request: &str) -> (u16, String, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (status, head.to_string(), body.to_string())
}

/// The value of one series in a Prometheus text exposition.
pub fn series(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name_and_labels) && l[name_and_labels.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A loopback TCP port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
