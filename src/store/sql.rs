//! The SQL store: one implementation for SQLite, MariaDB/MySQL and PostgreSQL through
//! sqlx's `Any` driver. Queries use portable SQL; [`Dialect`] rewrites placeholders.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::Once;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

use super::records::*;
use super::sqlite_reads::SqliteReads;
use super::{
    Aliases, AppPasswords, Dialect, Domains, LimitCheck, LoginStore, Mailboxes, PolicyStore, Store,
    StoreError, StoreOptions, StoreResult, Templates, MIGRATIONS,
};
use crate::clock::UnixTime;
use crate::names::{Address, Protocols};

static INSTALL_DRIVERS: Once = Once::new();

#[derive(Clone, Debug)]
pub struct SqlStore {
    pool: AnyPool,
    dialect: Dialect,
    /// SQLite only: the hot reads, without sqlx's thread hop.
    fast: Option<Arc<SqliteReads>>,
    trouble: Arc<Trouble>,
}

/// A checkout's ping gets a quarter of the checkout's time (at most 500 ms) before its
/// connection counts as dead, so a dead one still leaves time to open a new one.
fn ping_timeout(connect_timeout: Duration) -> Duration {
    (connect_timeout / 4).clamp(Duration::from_millis(25), Duration::from_millis(500))
}

/// When the database last failed a call. A connection opened before that is not trusted
/// again: a database that hung may have left every pooled connection dead, and waiting
/// for each to time out in turn would keep logins failing long after it is back.
#[derive(Debug)]
struct Trouble {
    epoch: Instant,
    /// Microseconds after `epoch` plus one; 0: never.
    last: std::sync::atomic::AtomicU64,
}

impl Trouble {
    fn new() -> Self {
        Trouble {
            epoch: Instant::now(),
            last: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn now_us(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX - 1)
    }

    fn mark(&self) {
        self.last.store(
            self.now_us().saturating_add(1),
            std::sync::atomic::Ordering::SeqCst,
        );
    }

    /// Whether a connection of this age was opened before the last trouble.
    fn predates_trouble(&self, age: Duration) -> bool {
        let last = self.last.load(std::sync::atomic::Ordering::SeqCst);
        if last == 0 {
            return false;
        }
        let age_us = u64::try_from(age.as_micros()).unwrap_or(u64::MAX);
        let opened = self.now_us().saturating_sub(age_us).saturating_add(1);
        opened <= last
    }
}

fn retired() -> sqlx::Error {
    sqlx::Error::Io(std::io::Error::other(
        "connection opened before the database last failed; replaced by a new one",
    ))
}

impl SqlStore {
    pub async fn connect(options: &StoreOptions) -> StoreResult<Self> {
        INSTALL_DRIVERS.call_once(sqlx::any::install_default_drivers);
        let raw = options.url.expose();
        let dialect = Dialect::from_url(raw).ok_or_else(|| {
            StoreError::Database(format!(
                "unsupported database URL {}: use sqlite://, mysql:// (MariaDB) or postgres://",
                options.url
            ))
        })?;
        let (url, fast) = match dialect {
            Dialect::Sqlite => {
                let (url, path) = prepare_sqlite_url(raw)?;
                (url, Some(Arc::new(SqliteReads::new(path))))
            }
            _ => (raw.to_string(), None),
        };
        let connect = AnyConnectOptions::from_str(&url).map_err(|e| {
            StoreError::Database(format!("invalid database URL {}: {e}", options.url))
        })?;
        let trouble = Arc::new(Trouble::new());
        let network = dialect != Dialect::Sqlite;
        let on_checkout = trouble.clone();
        let on_release = trouble.clone();
        let ping_limit = ping_timeout(options.connect_timeout);
        let pool = AnyPoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .min_connections(0)
            .acquire_timeout(options.connect_timeout)
            // A ping before every query doubles the cost of a login on SQLite, whose
            // connections are a local file and never go stale. Network databases get one,
            // with a deadline of its own (sqlx's would wait as long as the checkout), so
            // connections cut by a server restart are replaced without a failed login.
            .test_before_acquire(false)
            .before_acquire(move |conn, meta| {
                let trouble = on_checkout.clone();
                Box::pin(async move {
                    if !network {
                        return Ok(true);
                    }
                    // An error closes the connection without a goodbye: a dead one would
                    // not answer that either.
                    if trouble.predates_trouble(meta.age) {
                        return Err(retired());
                    }
                    match tokio::time::timeout(ping_limit, sqlx::Connection::ping(conn)).await {
                        Ok(Ok(())) => Ok(true),
                        Ok(Err(e)) => {
                            trouble.mark();
                            Err(e)
                        }
                        Err(_) => {
                            // The others are likely as dead: retire them all now.
                            trouble.mark();
                            Err(sqlx::Error::Io(std::io::Error::new(
                                std::io::ErrorKind::TimedOut,
                                "pooled connection did not answer a ping",
                            )))
                        }
                    }
                })
            })
            .after_release(move |_conn, meta| {
                let trouble = on_release.clone();
                // Not back into the pool (and not pinged, which could hang) when the
                // database failed since it was opened.
                Box::pin(async move {
                    if network && trouble.predates_trouble(meta.age) {
                        Err(retired())
                    } else {
                        Ok(true)
                    }
                })
            })
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if dialect == Dialect::Sqlite {
                        // WAL lets logins read while the CLI or a sign-in writes.
                        sqlx::query("PRAGMA journal_mode = WAL")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA synchronous = NORMAL")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA foreign_keys = ON")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA busy_timeout = 5000")
                            .execute(&mut *conn)
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect_lazy_with(connect);
        Ok(SqlStore {
            pool,
            dialect,
            fast,
            trouble,
        })
    }

    /// A call failed for want of the database (timed out, connection lost): every
    /// connection opened until now is retired at its next checkout or release, without
    /// waiting on it.
    pub fn connection_trouble(&self) {
        self.trouble.mark();
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    pub async fn close(&self) {
        if let Some(fast) = &self.fast {
            fast.close();
        }
        self.pool.close().await;
    }

    fn q<'a>(&self, sql: &'a str) -> std::borrow::Cow<'a, str> {
        self.dialect.sql(sql)
    }

    /// Writes a mailbox's changeable fields, in the transaction that holds its domain's
    /// lock. With `expected`, only while the stored row still agrees with it (a
    /// compare-and-set): every mailbox write takes the domain lock first, so the row read
    /// here cannot change before the write. Returns whether it wrote.
    async fn write_mailbox(
        &self,
        m: &Mailbox,
        expected: Option<&Mailbox>,
        check: LimitCheck<'_>,
    ) -> StoreResult<bool> {
        let mut tx = decode(self.pool.begin().await, "mailbox")?;
        let (domain, usage) =
            lock_domain(&mut tx, self.dialect, &m.domain, Some(&m.address)).await?;
        if let Some(expected) = expected {
            let row = decode(
                sqlx::query(&self.q(&format!(
                    "{} WHERE address = ?{}",
                    MAILBOX_COLUMNS,
                    self.dialect.for_update()
                )))
                .bind(&m.address)
                .fetch_optional(&mut *tx)
                .await,
                "mailbox",
            )?;
            let current = row
                .map(|r| decode(mailbox_from(&r), "mailbox"))
                .transpose()?;
            if !current.is_some_and(|c| same_writable_fields(&c, expected)) {
                return Ok(false);
            }
        }
        check(&domain, &usage).map_err(StoreError::Refused)?;
        let done = sqlx::query(&self.q(
            // Removing the identity binding (unlink) ends the page sessions made with it.
            "UPDATE mailboxes SET credential_generation = credential_generation + \
             CASE WHEN ? IS NULL AND oidc_subject IS NOT NULL THEN 1 ELSE 0 END, \
             oidc_issuer = ?, oidc_subject = ?, display_name = ?, quota = ?, protocols = ?, \
             active = ?, template = ?, template_hash = ?, overrides = ?, updated_at = ? WHERE address = ?",
        ))
        .bind(m.oidc_subject.as_deref())
        .bind(m.oidc_issuer.as_deref())
        .bind(m.oidc_subject.as_deref())
        .bind(&m.display_name)
        .bind(to_i64(m.quota))
        .bind(m.protocols.to_string())
        .bind(m.state.code())
        .bind(m.template.as_deref())
        .bind(m.template_hash.as_deref())
        .bind(m.overrides.to_string())
        .bind(m.updated_at)
        .bind(&m.address)
        .execute(&mut *tx)
        .await
        .map_err(|e| map_err(e, &format!("mailbox {}", m.address)))?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("mailbox {}", m.address)));
        }
        decode(tx.commit().await, "mailbox")?;
        Ok(true)
    }

    async fn applied_versions(&self) -> StoreResult<Vec<i64>> {
        sqlx::query(&self.q("SELECT version FROM mailauthd_migrations ORDER BY version"))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| map_err(e, "migrations"))?
            .iter()
            .map(|r| r.try_get::<i64, _>(0).map_err(|e| map_err(e, "migrations")))
            .collect()
    }
}

/// SQLite creates the file only with `mode=rwc`, and not its folder. Returns the URL to
/// connect with and the database file's path.
fn prepare_sqlite_url(url: &str) -> StoreResult<(String, PathBuf)> {
    let path = url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:")
        .split('?')
        .next()
        .unwrap_or("");
    if path.is_empty() || path == ":memory:" {
        return Err(StoreError::Database(
            "sqlite URL needs a file path, e.g. sqlite:///var/lib/mailauthd/mailauthd.db".into(),
        ));
    }
    if let Some(parent) = Path::new(path)
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
    {
        std::fs::create_dir_all(parent).map_err(|e| {
            StoreError::Unavailable(format!(
                "cannot create database folder {}: {e}",
                parent.display()
            ))
        })?;
    }
    let file = PathBuf::from(path);
    if url.contains("mode=") {
        return Ok((url.to_string(), file));
    }
    let sep = if url.contains('?') { '&' } else { '?' };
    Ok((format!("{url}{sep}mode=rwc"), file))
}

/// Connection trouble and lock contention are temporary; constraint violations are not.
fn map_err(e: sqlx::Error, what: &str) -> StoreError {
    use sqlx::error::ErrorKind;
    match e {
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            match db.kind() {
                ErrorKind::UniqueViolation => StoreError::Conflict(what.to_string()),
                ErrorKind::ForeignKeyViolation => StoreError::Refused(format!(
                    "{what}: it refers to something that does not exist, or is still referred to"
                )),
                _ if is_transient_code(&code) => StoreError::Unavailable(db.message().to_string()),
                _ => StoreError::Database(format!("{what}: {}", db.message())),
            }
        }
        sqlx::Error::RowNotFound => StoreError::NotFound(what.to_string()),
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => StoreError::Unavailable(e.to_string()),
        other => StoreError::Database(format!("{what}: {other}")),
    }
}

fn is_transient_code(code: &str) -> bool {
    // PostgreSQL: class 08 (connection), 57P (shutdown), 40001/40P01 (serialization,
    // deadlock), 53 (resources). MySQL: gone away, lost, too many connections, lock wait,
    // deadlock. SQLite: BUSY, LOCKED.
    code.starts_with("08")
        || code.starts_with("57P")
        || code.starts_with("53")
        || code == "40001"
        || code == "40P01"
        || ["55000", "3D000", "57014", "28000", "28P01"].contains(&code)
        || [
            "1040", "1045", "1049", "1205", "1213", "2002", "2006", "2013", "HY000",
        ]
        .contains(&code)
        || ["5", "6", "261", "262", "517"].contains(&code)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn opt_u64(v: Option<i64>) -> Option<u64> {
    v.map(to_u64)
}

fn opt_i64(v: Option<u64>) -> Option<i64> {
    v.map(to_i64)
}

fn state_of(code: i64) -> Result<MailboxState, sqlx::Error> {
    MailboxState::from_code(code)
        .ok_or_else(|| sqlx::Error::Decode(format!("invalid active value {code}").into()))
}

fn auth_source_of(s: &str) -> Result<AuthSource, sqlx::Error> {
    s.parse()
        .map_err(|e: ValueError| sqlx::Error::Decode(Box::new(e)))
}

fn last_use_of(
    at: Option<i64>,
    ip: Option<String>,
    service: Option<String>,
) -> Option<LastUseInfo> {
    at.map(|at| LastUseInfo { at, ip, service })
}

/// A result row, whichever way it was fetched: the decoders of the hot reads serve both
/// sqlx and the direct SQLite reads.
pub(super) trait Columns {
    fn text(&self, i: usize) -> Result<String, sqlx::Error>;
    fn opt_text(&self, i: usize) -> Result<Option<String>, sqlx::Error>;
    fn int(&self, i: usize) -> Result<i64, sqlx::Error>;
    fn opt_int(&self, i: usize) -> Result<Option<i64>, sqlx::Error>;
}

impl Columns for AnyRow {
    fn text(&self, i: usize) -> Result<String, sqlx::Error> {
        self.try_get(i)
    }

    fn opt_text(&self, i: usize) -> Result<Option<String>, sqlx::Error> {
        self.try_get(i)
    }

    fn int(&self, i: usize) -> Result<i64, sqlx::Error> {
        self.try_get(i)
    }

    fn opt_int(&self, i: usize) -> Result<Option<i64>, sqlx::Error> {
        self.try_get(i)
    }
}

const DOMAIN_COLUMNS: &str =
    "SELECT name, active, max_mailboxes, max_quota, total_quota, created_at FROM domains";

fn domain_from(row: &AnyRow) -> Result<Domain, sqlx::Error> {
    Ok(Domain {
        name: row.try_get(0)?,
        active: row.try_get::<i64, _>(1)? != 0,
        max_mailboxes: opt_u64(row.try_get(2)?),
        max_quota: opt_u64(row.try_get(3)?),
        total_quota: opt_u64(row.try_get(4)?),
        created_at: row.try_get(5)?,
    })
}

const TEMPLATE_COLUMNS: &str =
    "SELECT name, quota, protocols, active, created_at, updated_at FROM templates";

fn template_from(row: &AnyRow) -> Result<Template, sqlx::Error> {
    Ok(Template {
        name: row.try_get(0)?,
        quota: to_u64(row.try_get(1)?),
        protocols: Protocols::from_stored(&row.try_get::<String, _>(2)?),
        state: state_of(row.try_get(3)?)?,
        created_at: row.try_get(4)?,
        updated_at: row.try_get(5)?,
    })
}

const MAILBOX_COLUMNS: &str =
    "SELECT address, domain, password_hash, auth_source, oidc_issuer, oidc_subject, \
     display_name, quota, protocols, active, template, template_hash, created_at, updated_at, \
     last_login_at, last_login_ip, last_login_service, overrides FROM mailboxes";

fn mailbox_from(row: &AnyRow) -> Result<Mailbox, sqlx::Error> {
    Ok(Mailbox {
        address: row.try_get(0)?,
        domain: row.try_get(1)?,
        password_hash: row.try_get(2)?,
        auth_source: auth_source_of(&row.try_get::<String, _>(3)?)?,
        oidc_issuer: row.try_get(4)?,
        oidc_subject: row.try_get(5)?,
        display_name: row.try_get(6)?,
        quota: to_u64(row.try_get(7)?),
        protocols: Protocols::from_stored(&row.try_get::<String, _>(8)?),
        state: state_of(row.try_get(9)?)?,
        template: row.try_get(10)?,
        template_hash: row.try_get(11)?,
        overrides: Overrides::from_stored(&row.try_get::<String, _>(17)?),
        created_at: row.try_get(12)?,
        updated_at: row.try_get(13)?,
        last_login: last_use_of(row.try_get(14)?, row.try_get(15)?, row.try_get(16)?),
    })
}

const APP_PASSWORD_COLUMNS: &str =
    "SELECT id, mailbox, name, protocols, networks, expires_at, created_at, \
     last_used_at, last_used_ip, last_used_service FROM app_passwords";

fn app_password_from(row: &AnyRow) -> Result<AppPassword, sqlx::Error> {
    app_password_at(row, 0)
}

/// An app password whose columns start at `base` (joined queries put them after others).
fn app_password_at(row: &impl Columns, base: usize) -> Result<AppPassword, sqlx::Error> {
    let networks = row.text(base + 4)?;
    Ok(AppPassword {
        id: row.int(base)?,
        mailbox: row.text(base + 1)?,
        name: row.text(base + 2)?,
        protocols: Protocols::from_stored(&row.text(base + 3)?),
        networks: parse_networks(&networks).map_err(|e| sqlx::Error::Decode(e.into()))?,
        expires_at: row.opt_int(base + 5)?,
        created_at: row.int(base + 6)?,
        last_used: last_use_of(
            row.opt_int(base + 7)?,
            row.opt_text(base + 8)?,
            row.opt_text(base + 9)?,
        ),
    })
}

const LOGIN_VIEW_SQL: &str =
    "SELECT m.address, m.password_hash, m.auth_source, m.protocols, m.active, d.active, m.quota \
     FROM mailboxes m JOIN domains d ON d.name = m.domain WHERE m.address = ?";

const LOGIN_VIEW_WITH_APP_PASSWORD_SQL: &str =
    "SELECT m.address, m.password_hash, m.auth_source, m.protocols, m.active, d.active, m.quota, \
     a.id, a.mailbox, a.name, a.protocols, a.networks, a.expires_at, a.created_at, \
     a.last_used_at, a.last_used_ip, a.last_used_service \
     FROM mailboxes m JOIN domains d ON d.name = m.domain \
     LEFT JOIN app_passwords a ON a.lookup_hash = ? AND a.mailbox = m.address \
     WHERE m.address = ?";

fn login_view_from(r: &impl Columns) -> Result<LoginView, sqlx::Error> {
    Ok(LoginView {
        address: r.text(0)?,
        password_hash: r.opt_text(1)?,
        auth_source: auth_source_of(&r.text(2)?)?,
        protocols: Protocols::from_stored(&r.text(3)?),
        state: state_of(r.int(4)?)?,
        domain_active: r.int(5)? != 0,
        quota: to_u64(r.int(6)?),
    })
}

fn login_view_with_app_password_from(
    r: &impl Columns,
) -> Result<(LoginView, Option<AppPassword>), sqlx::Error> {
    let view = login_view_from(r)?;
    let app = match r.opt_int(7)? {
        Some(_) => Some(app_password_at(r, 7)?),
        None => None,
    };
    Ok((view, app))
}

const SESSION_VIEW_SQL: &str =
    "SELECT m.address, m.auth_source, m.oidc_issuer, m.oidc_subject, m.protocols, m.active, \
     d.active, m.credential_generation \
     FROM mailboxes m JOIN domains d ON d.name = m.domain WHERE m.address = ?";

fn session_view_from(r: &impl Columns) -> Result<SessionView, sqlx::Error> {
    Ok(SessionView {
        address: r.text(0)?,
        auth_source: auth_source_of(&r.text(1)?)?,
        oidc_issuer: r.opt_text(2)?,
        oidc_subject: r.opt_text(3)?,
        protocols: Protocols::from_stored(&r.text(4)?),
        state: state_of(r.int(5)?)?,
        domain_active: r.int(6)? != 0,
        credential_generation: r.int(7)?,
    })
}

const SENDER_ACCOUNT_SQL: &str =
    "SELECT m.address, m.domain, m.active, m.protocols, d.active, l.limits \
     FROM mailboxes m JOIN domains d ON d.name = m.domain \
     LEFT JOIN template_send_limits l ON l.template = m.template \
     WHERE m.address = ?";

fn sender_account_from(r: &impl Columns) -> Result<SenderAccount, sqlx::Error> {
    let limits = r.opt_text(5)?;
    Ok(SenderAccount {
        address: r.text(0)?,
        domain: r.text(1)?,
        state: state_of(r.int(2)?)?,
        protocols: Protocols::from_stored(&r.text(3)?),
        domain_active: r.int(4)? != 0,
        send_limits: limits.as_deref().map(send_limits_of).transpose()?,
    })
}

// create_alias_domain refuses names that are domains, so at most one row comes back.
const SERVED_DOMAIN_SQL: &str = "SELECT name, active, 0 FROM domains WHERE name = ? \
     UNION ALL SELECT target, active, 1 FROM alias_domains WHERE name = ?";

const ADDRESS_EXISTS_SQL: &str = "SELECT address FROM mailboxes WHERE address = ? \
     UNION ALL SELECT address FROM aliases WHERE address = ?";

fn served_domain_from(r: &impl Columns) -> Result<ServedDomain, sqlx::Error> {
    let active = r.int(1)? != 0;
    Ok(if r.int(2)? == 0 {
        ServedDomain::Domain { active }
    } else {
        ServedDomain::Alias {
            target: r.text(0)?,
            active,
        }
    })
}

const TEMPLATE_SEND_LIMITS_SQL: &str = "SELECT limits FROM template_send_limits WHERE template = ?";

fn send_limits_from(r: &impl Columns) -> Result<SendLimits, sqlx::Error> {
    send_limits_of(&r.text(0)?)
}

/// A row of [`SqlStore::send_permission`]'s query: 0 and an alias, or 1 and a pattern.
fn permission_row_from(r: &impl Columns) -> Result<(i64, String), sqlx::Error> {
    Ok((r.int(0)?, r.text(1)?))
}

fn decode<T>(r: Result<T, sqlx::Error>, what: &str) -> StoreResult<T> {
    r.map_err(|e| map_err(e, what))
}

#[async_trait]
impl Store for SqlStore {
    async fn migrate(&self) -> StoreResult<Vec<String>> {
        let create = "CREATE TABLE IF NOT EXISTS mailauthd_migrations (\
                      version BIGINT NOT NULL PRIMARY KEY, name VARCHAR(255) NOT NULL, applied_at BIGINT NOT NULL)";
        decode(sqlx::query(create).execute(&self.pool).await, "migrations")?;
        let applied = self.applied_versions().await?;
        let mut newly = Vec::new();
        for m in MIGRATIONS.iter().filter(|m| !applied.contains(&m.version)) {
            let mut tx = decode(self.pool.begin().await, "migrations")?;
            for stmt in m.statements(self.dialect) {
                sqlx::query(&stmt).execute(&mut *tx).await.map_err(|e| {
                    StoreError::Database(format!("migration {} failed: {e}", m.name))
                })?;
            }
            let now = crate::clock::Clock::now(&crate::clock::SystemClock);
            decode(
                sqlx::query(&self.q(
                    "INSERT INTO mailauthd_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                ))
                .bind(m.version)
                .bind(m.name)
                .bind(now)
                .execute(&mut *tx)
                .await,
                "migrations",
            )?;
            decode(tx.commit().await, "migrations")?;
            newly.push(m.name.to_string());
        }
        Ok(newly)
    }

    async fn ping(&self) -> StoreResult<()> {
        decode(sqlx::query("SELECT 1").execute(&self.pool).await, "ping").map(|_| ())
    }
}

#[async_trait]
impl LoginStore for SqlStore {
    async fn login_view(&self, address: &str) -> StoreResult<Option<LoginView>> {
        if let Some(fast) = &self.fast {
            return fast.optional(LOGIN_VIEW_SQL, &[&address], "mailbox", |r| {
                login_view_from(r)
            });
        }
        let row = decode(
            sqlx::query(&self.q(LOGIN_VIEW_SQL))
                .bind(address)
                .fetch_optional(&self.pool)
                .await,
            "mailbox",
        )?;
        row.map(|r| decode(login_view_from(&r), "mailbox"))
            .transpose()
    }

    async fn login_view_with_app_password(
        &self,
        address: &str,
        lookup_hash: &str,
    ) -> StoreResult<Option<(LoginView, Option<AppPassword>)>> {
        if let Some(fast) = &self.fast {
            return fast.optional(
                LOGIN_VIEW_WITH_APP_PASSWORD_SQL,
                &[&lookup_hash, &address],
                "mailbox",
                |r| login_view_with_app_password_from(r),
            );
        }
        let row = decode(
            sqlx::query(&self.q(LOGIN_VIEW_WITH_APP_PASSWORD_SQL))
                .bind(lookup_hash)
                .bind(address)
                .fetch_optional(&self.pool)
                .await,
            "mailbox",
        )?;
        row.map(|r| decode(login_view_with_app_password_from(&r), "mailbox"))
            .transpose()
    }

    async fn replace_password_hash(
        &self,
        address: &str,
        old: &str,
        new: &str,
    ) -> StoreResult<bool> {
        let done = decode(
            sqlx::query(&self.q(
                "UPDATE mailboxes SET password_hash = ? WHERE address = ? AND password_hash = ?",
            ))
            .bind(new)
            .bind(address)
            .bind(old)
            .execute(&self.pool)
            .await,
            "mailbox",
        )?;
        Ok(done.rows_affected() > 0)
    }

    async fn record_last_use(&self, uses: &[LastUse]) -> StoreResult<()> {
        if uses.is_empty() {
            return Ok(());
        }
        let mut tx = decode(self.pool.begin().await, "last use")?;
        for u in uses {
            // The guard on the time keeps an older record, flushed late, from overwriting a newer one.
            decode(
                sqlx::query(&self.q(
                    "UPDATE mailboxes SET last_login_at = ?, last_login_ip = ?, last_login_service = ? \
                     WHERE address = ? AND (last_login_at IS NULL OR last_login_at <= ?)",
                ))
                .bind(u.at)
                .bind(u.ip.as_deref())
                .bind(&u.service)
                .bind(&u.mailbox)
                .bind(u.at)
                .execute(&mut *tx)
                .await,
                "last use",
            )?;
            if let Some(id) = u.app_password_id {
                decode(
                    sqlx::query(&self.q(
                        "UPDATE app_passwords SET last_used_at = ?, last_used_ip = ?, last_used_service = ? \
                         WHERE id = ? AND (last_used_at IS NULL OR last_used_at <= ?)",
                    ))
                    .bind(u.at)
                    .bind(u.ip.as_deref())
                    .bind(&u.service)
                    .bind(id)
                    .bind(u.at)
                    .execute(&mut *tx)
                    .await,
                    "last use",
                )?;
            }
        }
        decode(tx.commit().await, "last use")
    }
}

#[async_trait]
impl PolicyStore for SqlStore {
    async fn sender_account(&self, address: &str) -> StoreResult<Option<SenderAccount>> {
        if let Some(fast) = &self.fast {
            return fast.optional(SENDER_ACCOUNT_SQL, &[&address], "mailbox", |r| {
                sender_account_from(r)
            });
        }
        let row = decode(
            sqlx::query(&self.q(SENDER_ACCOUNT_SQL))
                .bind(address)
                .fetch_optional(&self.pool)
                .await,
            "mailbox",
        )?;
        row.map(|r| decode(sender_account_from(&r), "mailbox"))
            .transpose()
    }

    async fn served_domain(&self, domain: &str) -> StoreResult<Option<ServedDomain>> {
        if let Some(fast) = &self.fast {
            return fast.optional(SERVED_DOMAIN_SQL, &[&domain, &domain], "domain", |r| {
                served_domain_from(r)
            });
        }
        let row = decode(
            sqlx::query(&self.q(SERVED_DOMAIN_SQL))
                .bind(domain)
                .bind(domain)
                .fetch_optional(&self.pool)
                .await,
            "domain",
        )?;
        row.map(|r| decode(served_domain_from(&r), "domain"))
            .transpose()
    }

    async fn address_exists(&self, address: &str) -> StoreResult<bool> {
        if let Some(fast) = &self.fast {
            return fast
                .optional(ADDRESS_EXISTS_SQL, &[&address, &address], "address", |r| {
                    r.text(0)
                })
                .map(|found| found.is_some());
        }
        let row = decode(
            sqlx::query(&self.q(ADDRESS_EXISTS_SQL))
                .bind(address)
                .bind(address)
                .fetch_optional(&self.pool)
                .await,
            "address",
        )?;
        Ok(row.is_some())
    }

    async fn send_permission(
        &self,
        mailbox: &str,
        addresses: &[String],
    ) -> StoreResult<Option<SendPermission>> {
        let mut patterns: Vec<String> = addresses.to_vec();
        for a in addresses {
            if let Some((_, domain)) = a.rsplit_once('@') {
                let p = format!("@{domain}");
                if !patterns.contains(&p) {
                    patterns.push(p);
                }
            }
        }
        patterns.push("*".into());
        // Both halves are primary-key lookups: aliases (address, target) and
        // send_as (mailbox, pattern).
        let aliases = if addresses.is_empty() {
            String::new()
        } else {
            format!(
                "SELECT 0, address FROM aliases WHERE target = ? AND address IN ({}) UNION ALL ",
                placeholders(addresses.len())
            )
        };
        let sql = format!(
            "{aliases}SELECT 1, pattern FROM send_as WHERE mailbox = ? AND pattern IN ({})",
            placeholders(patterns.len())
        );
        let rows = match &self.fast {
            Some(fast) => {
                let mut params: Vec<&dyn rusqlite::ToSql> = Vec::new();
                if !addresses.is_empty() {
                    params.push(&mailbox);
                    params.extend(addresses.iter().map(|a| a as &dyn rusqlite::ToSql));
                }
                params.push(&mailbox);
                params.extend(patterns.iter().map(|p| p as &dyn rusqlite::ToSql));
                fast.all(&sql, &params, "send permission", |r| permission_row_from(r))?
            }
            None => {
                let sql = self.q(&sql);
                let mut query = sqlx::query(&sql);
                if !addresses.is_empty() {
                    query = query.bind(mailbox);
                    for a in addresses {
                        query = query.bind(a);
                    }
                }
                query = query.bind(mailbox);
                for p in &patterns {
                    query = query.bind(p);
                }
                decode(query.fetch_all(&self.pool).await, "send permission")?
                    .iter()
                    .map(|r| decode(permission_row_from(r), "send permission"))
                    .collect::<StoreResult<Vec<_>>>()?
            }
        };
        let mut found: Option<SendPermission> = None;
        for (kind, name) in rows {
            if kind == 0 {
                return Ok(Some(SendPermission::Alias { address: name }));
            }
            // Several grants may match; name the most specific one in the log.
            let better = match &found {
                Some(SendPermission::SendAs { pattern }) => {
                    pattern_rank(&name) < pattern_rank(pattern)
                }
                _ => true,
            };
            if better {
                found = Some(SendPermission::SendAs { pattern: name });
            }
        }
        Ok(found)
    }
}

#[async_trait]
impl Domains for SqlStore {
    async fn create_domain(&self, d: &Domain) -> StoreResult<()> {
        let q = self.q(
            "INSERT INTO domains (name, active, max_mailboxes, max_quota, total_quota, created_at, lock_version) \
             VALUES (?, ?, ?, ?, ?, ?, 0)",
        );
        sqlx::query(&q)
            .bind(&d.name)
            .bind(i64::from(d.active))
            .bind(opt_i64(d.max_mailboxes))
            .bind(opt_i64(d.max_quota))
            .bind(opt_i64(d.total_quota))
            .bind(d.created_at)
            .execute(&self.pool)
            .await
            .map_err(|e| map_err(e, &format!("domain {}", d.name)))?;
        Ok(())
    }

    async fn update_domain(&self, d: &Domain) -> StoreResult<()> {
        let q = self.q(
            "UPDATE domains SET active = ?, max_mailboxes = ?, max_quota = ?, total_quota = ? WHERE name = ?",
        );
        let done = sqlx::query(&q)
            .bind(i64::from(d.active))
            .bind(opt_i64(d.max_mailboxes))
            .bind(opt_i64(d.max_quota))
            .bind(opt_i64(d.total_quota))
            .bind(&d.name)
            .execute(&self.pool)
            .await
            .map_err(|e| map_err(e, &format!("domain {}", d.name)))?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("domain {}", d.name)));
        }
        Ok(())
    }

    async fn get_domain(&self, name: &str) -> StoreResult<Option<Domain>> {
        let row = decode(
            sqlx::query(&self.q(&format!("{} WHERE name = ?", DOMAIN_COLUMNS)))
                .bind(name)
                .fetch_optional(&self.pool)
                .await,
            "domain",
        )?;
        row.map(|r| decode(domain_from(&r), "domain")).transpose()
    }

    async fn list_domains(&self) -> StoreResult<Vec<Domain>> {
        let rows = decode(
            sqlx::query(&self.q(&format!("{} ORDER BY name", DOMAIN_COLUMNS)))
                .fetch_all(&self.pool)
                .await,
            "domains",
        )?;
        rows.iter()
            .map(|r| decode(domain_from(r), "domain"))
            .collect()
    }

    async fn domain_usage(&self, name: &str) -> StoreResult<DomainUsage> {
        let q = usage_query(self.dialect, false);
        let row = decode(
            sqlx::query(&q).bind(name).fetch_one(&self.pool).await,
            "domain usage",
        )?;
        decode(usage_from(&row), "domain usage")
    }

    async fn delete_domain(&self, name: &str) -> StoreResult<()> {
        let usage = self.domain_usage(name).await?;
        if usage.mailboxes > 0 {
            return Err(StoreError::Refused(format!(
                "domain {name} still has {} mailbox(es); remove them first",
                usage.mailboxes
            )));
        }
        let done = decode(
            sqlx::query(&self.q("DELETE FROM domains WHERE name = ?"))
                .bind(name)
                .execute(&self.pool)
                .await,
            &format!("domain {name}"),
        )?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("domain {name}")));
        }
        Ok(())
    }

    async fn create_alias_domain(&self, a: &AliasDomain) -> StoreResult<()> {
        if self.get_domain(&a.name).await?.is_some() {
            return Err(StoreError::Conflict(format!("{} (as a domain)", a.name)));
        }
        sqlx::query(
            &self.q(
                "INSERT INTO alias_domains (name, target, active, created_at) VALUES (?, ?, ?, ?)",
            ),
        )
        .bind(&a.name)
        .bind(&a.target)
        .bind(i64::from(a.active))
        .bind(a.created_at)
        .execute(&self.pool)
        .await
        .map_err(|e| map_err(e, &format!("alias domain {}", a.name)))?;
        Ok(())
    }

    async fn list_alias_domains(&self) -> StoreResult<Vec<AliasDomain>> {
        let rows = decode(
            sqlx::query("SELECT name, target, active, created_at FROM alias_domains ORDER BY name")
                .fetch_all(&self.pool)
                .await,
            "alias domains",
        )?;
        rows.iter()
            .map(|r| {
                decode(
                    (|| {
                        Ok(AliasDomain {
                            name: r.try_get(0)?,
                            target: r.try_get(1)?,
                            active: r.try_get::<i64, _>(2)? != 0,
                            created_at: r.try_get(3)?,
                        })
                    })(),
                    "alias domain",
                )
            })
            .collect()
    }

    async fn delete_alias_domain(&self, name: &str) -> StoreResult<()> {
        let done = decode(
            sqlx::query(&self.q("DELETE FROM alias_domains WHERE name = ?"))
                .bind(name)
                .execute(&self.pool)
                .await,
            "alias domain",
        )?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("alias domain {name}")));
        }
        Ok(())
    }
}

#[async_trait]
impl Templates for SqlStore {
    async fn create_template(&self, t: &Template) -> StoreResult<()> {
        sqlx::query(&self.q(
            "INSERT INTO templates (name, quota, protocols, active, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)",
        ))
        .bind(&t.name)
        .bind(to_i64(t.quota))
        .bind(t.protocols.to_string())
        .bind(t.state.code())
        .bind(t.created_at)
        .bind(t.updated_at)
        .execute(&self.pool)
        .await
        .map_err(|e| map_err(e, &format!("template {}", t.name)))?;
        Ok(())
    }

    async fn update_template(&self, t: &Template) -> StoreResult<()> {
        let done = decode(
            sqlx::query(&self.q("UPDATE templates SET quota = ?, protocols = ?, active = ?, updated_at = ? WHERE name = ?"))
                .bind(to_i64(t.quota))
                .bind(t.protocols.to_string())
                .bind(t.state.code())
                .bind(t.updated_at)
                .bind(&t.name)
                .execute(&self.pool)
                .await,
            "template",
        )?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("template {}", t.name)));
        }
        Ok(())
    }

    async fn get_template(&self, name: &str) -> StoreResult<Option<Template>> {
        let row = decode(
            sqlx::query(&self.q(&format!("{} WHERE name = ?", TEMPLATE_COLUMNS)))
                .bind(name)
                .fetch_optional(&self.pool)
                .await,
            "template",
        )?;
        row.map(|r| decode(template_from(&r), "template"))
            .transpose()
    }

    async fn list_templates(&self) -> StoreResult<Vec<Template>> {
        let rows = decode(
            sqlx::query(&self.q(&format!("{} ORDER BY name", TEMPLATE_COLUMNS)))
                .fetch_all(&self.pool)
                .await,
            "templates",
        )?;
        rows.iter()
            .map(|r| decode(template_from(r), "template"))
            .collect()
    }

    async fn delete_template(&self, name: &str) -> StoreResult<()> {
        if self.default_template().await?.as_deref() == Some(name) {
            return Err(StoreError::Refused(format!(
                "template {name} is the default template; set another default or clear it first"
            )));
        }
        let done = sqlx::query(&self.q("DELETE FROM templates WHERE name = ?"))
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(|e| match map_err(e, "") {
                StoreError::Refused(_) => StoreError::Refused(format!(
                    "template {name} is used by a mapping; remove the mapping first"
                )),
                other => other,
            })?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("template {name}")));
        }
        Ok(())
    }

    async fn list_mappings(&self) -> StoreResult<Vec<Mapping>> {
        let rows = decode(
            sqlx::query("SELECT claim_value, position, template FROM template_mappings ORDER BY position, claim_value")
                .fetch_all(&self.pool)
                .await,
            "mappings",
        )?;
        rows.iter()
            .map(|r| {
                decode(
                    (|| {
                        Ok(Mapping {
                            claim_value: r.try_get(0)?,
                            position: r.try_get(1)?,
                            template: r.try_get(2)?,
                        })
                    })(),
                    "mapping",
                )
            })
            .collect()
    }

    async fn put_mapping(&self, m: &Mapping) -> StoreResult<()> {
        let mut tx = decode(self.pool.begin().await, "mapping")?;
        decode(
            sqlx::query(&self.q("DELETE FROM template_mappings WHERE claim_value = ?"))
                .bind(&m.claim_value)
                .execute(&mut *tx)
                .await,
            "mapping",
        )?;
        sqlx::query(
            &self.q(
                "INSERT INTO template_mappings (claim_value, position, template) VALUES (?, ?, ?)",
            ),
        )
        .bind(&m.claim_value)
        .bind(m.position)
        .bind(&m.template)
        .execute(&mut *tx)
        .await
        .map_err(|e| match map_err(e, "mapping") {
            StoreError::Refused(_) => StoreError::NotFound(format!("template {}", m.template)),
            other => other,
        })?;
        decode(tx.commit().await, "mapping")
    }

    async fn delete_mapping(&self, claim_value: &str) -> StoreResult<()> {
        let done = decode(
            sqlx::query(&self.q("DELETE FROM template_mappings WHERE claim_value = ?"))
                .bind(claim_value)
                .execute(&self.pool)
                .await,
            "mapping",
        )?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("mapping for {claim_value:?}")));
        }
        Ok(())
    }

    async fn default_template(&self) -> StoreResult<Option<String>> {
        let row = decode(
            sqlx::query(&self.q("SELECT value FROM settings WHERE name = ?"))
                .bind("default_template")
                .fetch_optional(&self.pool)
                .await,
            "settings",
        )?;
        row.map(|r| decode(r.try_get::<String, _>(0), "settings"))
            .transpose()
    }

    async fn set_default_template(&self, name: Option<&str>) -> StoreResult<()> {
        if let Some(name) = name {
            if self.get_template(name).await?.is_none() {
                return Err(StoreError::NotFound(format!("template {name}")));
            }
        }
        let mut tx = decode(self.pool.begin().await, "settings")?;
        decode(
            sqlx::query(&self.q("DELETE FROM settings WHERE name = ?"))
                .bind("default_template")
                .execute(&mut *tx)
                .await,
            "settings",
        )?;
        if let Some(name) = name {
            decode(
                sqlx::query(&self.q("INSERT INTO settings (name, value) VALUES (?, ?)"))
                    .bind("default_template")
                    .bind(name)
                    .execute(&mut *tx)
                    .await,
                "settings",
            )?;
        }
        decode(tx.commit().await, "settings")
    }

    async fn template_send_limits(&self, template: &str) -> StoreResult<Option<SendLimits>> {
        if let Some(fast) = &self.fast {
            return fast.optional(
                TEMPLATE_SEND_LIMITS_SQL,
                &[&template],
                "template send limits",
                |r| send_limits_from(r),
            );
        }
        let row = decode(
            sqlx::query(&self.q(TEMPLATE_SEND_LIMITS_SQL))
                .bind(template)
                .fetch_optional(&self.pool)
                .await,
            "template send limits",
        )?;
        row.map(|r| decode(send_limits_from(&r), "template send limits"))
            .transpose()
    }

    async fn set_template_send_limits(
        &self,
        template: &str,
        limits: Option<&SendLimits>,
        now: UnixTime,
    ) -> StoreResult<()> {
        let mut tx = decode(self.pool.begin().await, "template send limits")?;
        decode(
            sqlx::query(&self.q("DELETE FROM template_send_limits WHERE template = ?"))
                .bind(template)
                .execute(&mut *tx)
                .await,
            "template send limits",
        )?;
        if let Some(limits) = limits {
            sqlx::query(&self.q(
                "INSERT INTO template_send_limits (template, limits, updated_at) VALUES (?, ?, ?)",
            ))
            .bind(template)
            .bind(limits.to_string())
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(|e| match map_err(e, "template send limits") {
                StoreError::Refused(_) => StoreError::NotFound(format!("template {template}")),
                other => other,
            })?;
        }
        decode(tx.commit().await, "template send limits")
    }
}

#[async_trait]
impl Mailboxes for SqlStore {
    async fn create_mailbox(&self, m: &Mailbox, check: LimitCheck<'_>) -> StoreResult<()> {
        canonical_address(&m.address, "mailbox")?;
        let mut tx = decode(self.pool.begin().await, "mailbox")?;
        let (domain, usage) = lock_domain(&mut tx, self.dialect, &m.domain, None).await?;
        check(&domain, &usage).map_err(StoreError::Refused)?;
        sqlx::query(&self.q(
            "INSERT INTO mailboxes (address, domain, password_hash, auth_source, oidc_issuer, oidc_subject, \
             display_name, quota, protocols, active, template, template_hash, overrides, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        ))
        .bind(&m.address)
        .bind(&m.domain)
        .bind(m.password_hash.as_deref())
        .bind(m.auth_source.name())
        .bind(m.oidc_issuer.as_deref())
        .bind(m.oidc_subject.as_deref())
        .bind(&m.display_name)
        .bind(to_i64(m.quota))
        .bind(m.protocols.to_string())
        .bind(m.state.code())
        .bind(m.template.as_deref())
        .bind(m.template_hash.as_deref())
        .bind(m.overrides.to_string())
        .bind(m.created_at)
        .bind(m.updated_at)
        .execute(&mut *tx)
        .await
        .map_err(|e| map_err(e, &format!("mailbox {}", m.address)))?;
        decode(tx.commit().await, "mailbox")
    }

    async fn update_mailbox(&self, m: &Mailbox, check: LimitCheck<'_>) -> StoreResult<()> {
        self.write_mailbox(m, None, check).await.map(|_| ())
    }

    async fn update_mailbox_if(
        &self,
        m: &Mailbox,
        expected: &Mailbox,
        check: LimitCheck<'_>,
    ) -> StoreResult<bool> {
        self.write_mailbox(m, Some(expected), check).await
    }

    async fn get_mailbox(&self, address: &str) -> StoreResult<Option<Mailbox>> {
        let row = decode(
            sqlx::query(&self.q(&format!("{} WHERE address = ?", MAILBOX_COLUMNS)))
                .bind(address)
                .fetch_optional(&self.pool)
                .await,
            "mailbox",
        )?;
        row.map(|r| decode(mailbox_from(&r), "mailbox")).transpose()
    }

    async fn find_mailbox_by_oidc(
        &self,
        issuer: &str,
        subject: &str,
    ) -> StoreResult<Option<Mailbox>> {
        let row = decode(
            sqlx::query(&self.q(&format!(
                "{} WHERE oidc_issuer = ? AND oidc_subject = ?",
                MAILBOX_COLUMNS
            )))
            .bind(issuer)
            .bind(subject)
            .fetch_optional(&self.pool)
            .await,
            "mailbox",
        )?;
        row.map(|r| decode(mailbox_from(&r), "mailbox")).transpose()
    }

    async fn list_mailboxes(&self, domain: Option<&str>) -> StoreResult<Vec<Mailbox>> {
        let rows = match domain {
            Some(d) => {
                sqlx::query(&self.q(&format!(
                    "{} WHERE domain = ? ORDER BY address",
                    MAILBOX_COLUMNS
                )))
                .bind(d)
                .fetch_all(&self.pool)
                .await
            }
            None => {
                sqlx::query(&self.q(&format!("{} ORDER BY address", MAILBOX_COLUMNS)))
                    .fetch_all(&self.pool)
                    .await
            }
        };
        decode(rows, "mailboxes")?
            .iter()
            .map(|r| decode(mailbox_from(r), "mailbox"))
            .collect()
    }

    async fn delete_mailbox(&self, address: &str) -> StoreResult<()> {
        let done = decode(
            sqlx::query(&self.q("DELETE FROM mailboxes WHERE address = ?"))
                .bind(address)
                .execute(&self.pool)
                .await,
            "mailbox",
        )?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("mailbox {address}")));
        }
        Ok(())
    }

    async fn set_password_hash(
        &self,
        address: &str,
        hash: Option<&str>,
        now: UnixTime,
    ) -> StoreResult<()> {
        let done = decode(
            sqlx::query(
                &self.q("UPDATE mailboxes SET password_hash = ?, updated_at = ?, \
                     credential_generation = credential_generation + 1 WHERE address = ?"),
            )
            .bind(hash)
            .bind(now)
            .bind(address)
            .execute(&self.pool)
            .await,
            "mailbox",
        )?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("mailbox {address}")));
        }
        Ok(())
    }

    async fn set_auth_source(
        &self,
        address: &str,
        source: AuthSource,
        now: UnixTime,
    ) -> StoreResult<()> {
        let done = decode(
            sqlx::query(&self.q("UPDATE mailboxes SET \
                     credential_generation = credential_generation + \
                     CASE WHEN auth_source = ? THEN 0 ELSE 1 END, \
                     auth_source = ?, updated_at = ? WHERE address = ?"))
            .bind(source.name())
            .bind(source.name())
            .bind(now)
            .bind(address)
            .execute(&self.pool)
            .await,
            "mailbox",
        )?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("mailbox {address}")));
        }
        Ok(())
    }

    async fn session_view(&self, address: &str) -> StoreResult<Option<SessionView>> {
        if let Some(fast) = &self.fast {
            return fast.optional(SESSION_VIEW_SQL, &[&address], "mailbox", |r| {
                session_view_from(r)
            });
        }
        let row = decode(
            sqlx::query(&self.q(SESSION_VIEW_SQL))
                .bind(address)
                .fetch_optional(&self.pool)
                .await,
            "mailbox",
        )?;
        row.map(|r| decode(session_view_from(&r), "mailbox"))
            .transpose()
    }
}

#[async_trait]
impl AppPasswords for SqlStore {
    async fn create_app_password(&self, a: &NewAppPassword) -> StoreResult<i64> {
        sqlx::query(&self.q(
            "INSERT INTO app_passwords (mailbox, name, lookup_hash, protocols, networks, expires_at, created_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        ))
        .bind(&a.mailbox)
        .bind(&a.name)
        .bind(&a.lookup_hash)
        .bind(a.protocols.to_string())
        .bind(format_networks(&a.networks))
        .bind(a.expires_at)
        .bind(a.created_at)
        .execute(&self.pool)
        .await
        .map_err(|e| match map_err(e, "app password") {
            StoreError::Refused(_) => StoreError::NotFound(format!("mailbox {}", a.mailbox)),
            other => other,
        })?;
        // The lookup hash is unique, so it finds the new row on every dialect without
        // RETURNING or last-insert-id differences.
        let row = decode(
            sqlx::query(&self.q("SELECT id FROM app_passwords WHERE lookup_hash = ?"))
                .bind(&a.lookup_hash)
                .fetch_one(&self.pool)
                .await,
            "app password",
        )?;
        decode(row.try_get::<i64, _>(0), "app password")
    }

    async fn list_app_passwords(&self, mailbox: &str) -> StoreResult<Vec<AppPassword>> {
        let rows = decode(
            sqlx::query(&self.q(&format!(
                "{} WHERE mailbox = ? ORDER BY id",
                APP_PASSWORD_COLUMNS
            )))
            .bind(mailbox)
            .fetch_all(&self.pool)
            .await,
            "app passwords",
        )?;
        rows.iter()
            .map(|r| decode(app_password_from(r), "app password"))
            .collect()
    }

    async fn delete_app_password(&self, mailbox: &str, id: i64) -> StoreResult<()> {
        let done = decode(
            sqlx::query(&self.q("DELETE FROM app_passwords WHERE mailbox = ? AND id = ?"))
                .bind(mailbox)
                .bind(id)
                .execute(&self.pool)
                .await,
            "app password",
        )?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!(
                "app password {id} of {mailbox}"
            )));
        }
        Ok(())
    }
}

#[async_trait]
impl Aliases for SqlStore {
    async fn add_alias(&self, a: &Alias) -> StoreResult<()> {
        canonical_address(&a.address, "alias")?;
        canonical_address(&a.target, "alias target")?;
        sqlx::query(
            &self
                .q("INSERT INTO aliases (address, target, domain, created_at) VALUES (?, ?, ?, ?)"),
        )
        .bind(&a.address)
        .bind(&a.target)
        .bind(&a.domain)
        .bind(a.created_at)
        .execute(&self.pool)
        .await
        .map_err(|e| {
            match map_err(e, &format!("alias {} -> {}", a.address, a.target)) {
                StoreError::Refused(_) => StoreError::NotFound(format!("domain {}", a.domain)),
                other => other,
            }
        })?;
        Ok(())
    }

    async fn list_aliases(&self, domain: Option<&str>) -> StoreResult<Vec<Alias>> {
        let base = "SELECT address, target, domain, created_at FROM aliases";
        let rows = match domain {
            Some(d) => {
                sqlx::query(&self.q(&format!(
                    "{} WHERE domain = ? ORDER BY address, target",
                    base
                )))
                .bind(d)
                .fetch_all(&self.pool)
                .await
            }
            None => {
                sqlx::query(&self.q(&format!("{} ORDER BY address, target", base)))
                    .fetch_all(&self.pool)
                    .await
            }
        };
        decode(rows, "aliases")?
            .iter()
            .map(|r| {
                decode(
                    (|| {
                        Ok(Alias {
                            address: r.try_get(0)?,
                            target: r.try_get(1)?,
                            domain: r.try_get(2)?,
                            created_at: r.try_get(3)?,
                        })
                    })(),
                    "alias",
                )
            })
            .collect()
    }

    async fn delete_alias(&self, address: &str, target: Option<&str>) -> StoreResult<u64> {
        let done = match target {
            Some(t) => {
                sqlx::query(&self.q("DELETE FROM aliases WHERE address = ? AND target = ?"))
                    .bind(address)
                    .bind(t)
                    .execute(&self.pool)
                    .await
            }
            None => {
                sqlx::query(&self.q("DELETE FROM aliases WHERE address = ?"))
                    .bind(address)
                    .execute(&self.pool)
                    .await
            }
        };
        let n = decode(done, "alias")?.rows_affected();
        if n == 0 {
            return Err(StoreError::NotFound(format!("alias {address}")));
        }
        Ok(n)
    }

    async fn grant_send_as(&self, g: &SendAs) -> StoreResult<()> {
        sqlx::query(&self.q("INSERT INTO send_as (mailbox, pattern, created_at) VALUES (?, ?, ?)"))
            .bind(&g.mailbox)
            .bind(&g.pattern)
            .bind(g.created_at)
            .execute(&self.pool)
            .await
            .map_err(|e| {
                match map_err(e, &format!("send-as grant {} for {}", g.pattern, g.mailbox)) {
                    StoreError::Refused(_) => {
                        StoreError::NotFound(format!("mailbox {}", g.mailbox))
                    }
                    other => other,
                }
            })?;
        Ok(())
    }

    async fn list_send_as(&self, mailbox: Option<&str>) -> StoreResult<Vec<SendAs>> {
        let base = "SELECT mailbox, pattern, created_at FROM send_as";
        let rows = match mailbox {
            Some(m) => {
                sqlx::query(&self.q(&format!("{} WHERE mailbox = ? ORDER BY pattern", base)))
                    .bind(m)
                    .fetch_all(&self.pool)
                    .await
            }
            None => {
                sqlx::query(&self.q(&format!("{} ORDER BY mailbox, pattern", base)))
                    .fetch_all(&self.pool)
                    .await
            }
        };
        decode(rows, "send-as grants")?
            .iter()
            .map(|r| {
                decode(
                    (|| {
                        Ok(SendAs {
                            mailbox: r.try_get(0)?,
                            pattern: r.try_get(1)?,
                            created_at: r.try_get(2)?,
                        })
                    })(),
                    "send-as grant",
                )
            })
            .collect()
    }

    async fn revoke_send_as(&self, mailbox: &str, pattern: &str) -> StoreResult<()> {
        let done = decode(
            sqlx::query(&self.q("DELETE FROM send_as WHERE mailbox = ? AND pattern = ?"))
                .bind(mailbox)
                .bind(pattern)
                .execute(&self.pool)
                .await,
            "send-as grant",
        )?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!(
                "send-as grant {pattern} for {mailbox}"
            )));
        }
        Ok(())
    }
}

/// Address grants before `@domain` grants before `*`.
fn pattern_rank(pattern: &str) -> u8 {
    match pattern {
        "*" => 2,
        p if p.starts_with('@') => 1,
        _ => 0,
    }
}

fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}

fn send_limits_of(text: &str) -> Result<SendLimits, sqlx::Error> {
    text.parse()
        .map_err(|e: LimitsError| sqlx::Error::Decode(format!("stored send limits: {e}").into()))
}

fn usage_query(dialect: Dialect, excluding: bool) -> String {
    let cast = dialect.bigint_cast();
    let sql = format!(
        "SELECT COUNT(*), CAST(COALESCE(SUM(quota), 0) AS {cast}), \
         CAST(COALESCE(SUM(CASE WHEN quota = 0 THEN 1 ELSE 0 END), 0) AS {cast}) \
         FROM mailboxes WHERE domain = ?{}",
        if excluding { " AND address <> ?" } else { "" }
    );
    dialect.sql(&sql).into_owned()
}

fn usage_from(row: &AnyRow) -> Result<DomainUsage, sqlx::Error> {
    Ok(DomainUsage {
        mailboxes: to_u64(row.try_get(0)?),
        quota_sum: to_u64(row.try_get(1)?),
        unlimited_mailboxes: to_u64(row.try_get(2)?),
    })
}

/// Takes the domain's row lock first (an UPDATE, which every dialect turns into a write
/// lock), then reads the domain and its usage, so concurrent writers for one domain queue
/// here and each sees the others' committed mailboxes.
/// The store writes addresses only in the form [`Address::parse`] gives them, so no other
/// way in (an import, a future caller) can create a mailbox that two spellings reach.
fn canonical_address(address: &str, what: &str) -> StoreResult<()> {
    match Address::parse(address) {
        Ok(a) if a.as_str() == address => Ok(()),
        Ok(a) => Err(StoreError::Refused(format!(
            "{what} address {address:?} is not in canonical form (it would be {a})"
        ))),
        Err(e) => Err(StoreError::Refused(format!("{what} address refused: {e}"))),
    }
}

/// Whether two mailbox rows agree on everything [`SqlStore::write_mailbox`] writes, and on
/// the auth source, which decides whether a sign-in may write at all.
fn same_writable_fields(a: &Mailbox, b: &Mailbox) -> bool {
    a.oidc_issuer == b.oidc_issuer
        && a.oidc_subject == b.oidc_subject
        && a.display_name == b.display_name
        && a.quota == b.quota
        && a.protocols == b.protocols
        && a.state == b.state
        && a.template == b.template
        && a.template_hash == b.template_hash
        && a.overrides == b.overrides
        && a.auth_source == b.auth_source
}

async fn lock_domain(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    dialect: Dialect,
    domain: &str,
    excluding: Option<&str>,
) -> StoreResult<(Domain, DomainUsage)> {
    let done = decode(
        sqlx::query(
            &dialect.sql("UPDATE domains SET lock_version = lock_version + 1 WHERE name = ?"),
        )
        .bind(domain)
        .execute(&mut **tx)
        .await,
        "domain",
    )?;
    if done.rows_affected() == 0 {
        return Err(StoreError::NotFound(format!("domain {domain}")));
    }
    let row = decode(
        sqlx::query(&dialect.sql(&format!("{} WHERE name = ?", DOMAIN_COLUMNS)))
            .bind(domain)
            .fetch_one(&mut **tx)
            .await,
        "domain",
    )?;
    let d = decode(domain_from(&row), "domain")?;
    let q = usage_query(dialect, excluding.is_some());
    let mut query = sqlx::query(&q).bind(domain);
    if let Some(address) = excluding {
        query = query.bind(address);
    }
    let row = decode(query.fetch_one(&mut **tx).await, "domain usage")?;
    Ok((d, decode(usage_from(&row), "domain usage")?))
}
