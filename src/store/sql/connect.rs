//! Opening the pool: per-dialect connection settings, and retiring the connections a
//! database outage may have left dead.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};

use super::super::sqlite_hot_reads::SqliteHotReads;
use super::super::{Dialect, StoreError, StoreOptions, StoreResult, UrlError};
use super::SqlStore;

static INSTALL_DRIVERS: Once = Once::new();

/// Set on every SQLite connection. WAL lets logins read while the CLI or a sign-in writes.
const SQLITE_PRAGMAS: [&str; 4] = [
    "PRAGMA journal_mode = WAL",
    "PRAGMA synchronous = NORMAL",
    "PRAGMA foreign_keys = ON",
    "PRAGMA busy_timeout = 5000",
];

/// A checkout's ping gets a quarter of the checkout's time (at most 500 ms) before its
/// connection counts as dead, so a dead one still leaves time to open a new one.
fn ping_timeout(connect_timeout: Duration) -> Duration {
    (connect_timeout / 4).clamp(Duration::from_millis(25), Duration::from_millis(500))
}

/// When the database last failed a call. A connection opened before that is not trusted
/// again: a database that hung may have left every pooled connection dead, and waiting
/// for each to time out in turn would keep logins failing long after it is back.
#[derive(Debug)]
pub(super) struct Trouble {
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

    pub(super) fn mark(&self) {
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
        let dialect =
            Dialect::from_url(raw).ok_or_else(|| UrlError::Unsupported(options.url.clone()))?;
        let (url, hot_reads) = match dialect {
            Dialect::Sqlite => {
                let (url, path) = prepare_sqlite_url(raw)?;
                (url, Some(Arc::new(SqliteHotReads::new(path))))
            }
            _ => (raw.to_string(), None),
        };
        let connect = AnyConnectOptions::from_str(&url).map_err(|e| UrlError::Invalid {
            url: options.url.clone(),
            detail: e.to_string(),
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
                        for pragma in SQLITE_PRAGMAS {
                            sqlx::query(pragma).execute(&mut *conn).await?;
                        }
                    }
                    Ok(())
                })
            })
            .connect_lazy_with(connect);
        Ok(SqlStore {
            pool,
            dialect,
            hot_reads,
            trouble,
        })
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
        return Err(UrlError::SqliteWithoutPath.into());
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
