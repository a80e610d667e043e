//! `SqlStore`: the one implementation of the store traits, for SQLite, MariaDB/MySQL and
//! PostgreSQL, over sqlx's `Any` driver (why one SQL text: see the `store` module doc).
//!
//! One file per group of tables, each implementing its trait: `login.rs`, `policy.rs`,
//! `domains.rs`, `templates.rs`, `mailboxes.rs`, `app_passwords.rs`, `aliases.rs`, `sessions.rs`.
//! Around them: `connect.rs` opens the pool, `statement.rs` sends statements and decodes
//! rows, `errors.rs` turns driver errors into [`StoreError`]s. Queries are written with `?`
//! placeholders; [`Dialect`] rewrites them where needed.

mod aliases;
mod app_passwords;
mod connect;
mod domains;
mod errors;
mod identity;
mod login;
mod mailboxes;
mod policy;
mod sessions;
mod statement;
mod templates;

use std::sync::Arc;

use async_trait::async_trait;
use rusqlite::params_from_iter;
use sqlx::AnyPool;

use self::connect::Trouble;
use self::errors::{found, write_error, SqlxResult};
use self::statement::Rows;
use super::param::Param;
use super::rows::{ints, Select};
use super::sqlite_hot_reads::SqliteHotReads;
use super::{Dialect, Record, Store, StoreError, StoreResult, MIGRATIONS};

#[derive(Clone, Debug)]
pub struct SqlStore {
    pool: AnyPool,
    dialect: Dialect,
    /// SQLite only: the hot reads, without sqlx's thread hop.
    hot_reads: Option<Arc<SqliteHotReads>>,
    trouble: Arc<Trouble>,
}

impl SqlStore {
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
        if let Some(hot_reads) = &self.hot_reads {
            hot_reads.close();
        }
        self.pool.close().await;
    }

    /// Runs a statement on the pool; returns how many rows it changed.
    async fn execute(&self, sql: &str, params: &[Param<'_>]) -> Result<u64, sqlx::Error> {
        statement::execute(&self.pool, self.dialect, sql, params).await
    }

    /// Runs a statement that writes `record` (errors as `errors::write_error` says); returns
    /// how many rows it changed.
    async fn write(&self, sql: &str, params: &[Param<'_>], record: &Record) -> StoreResult<u64> {
        let result = self.execute(sql, params).await;
        result.map_err(|e| write_error(e, record.clone()))
    }

    /// [`SqlStore::write`] that must change a row: none changed is `NotFound(record)`.
    async fn change(&self, sql: &str, params: &[Param<'_>], record: Record) -> StoreResult<()> {
        let changed = self.write(sql, params, &record).await?;
        found(changed, record)
    }

    /// [`SqlStore::write`] of a row that belongs to `parent`: a missing parent is
    /// `NotFound(parent)`.
    async fn write_under(
        &self,
        sql: &str,
        params: &[Param<'_>],
        record: Record,
        parent: Record,
    ) -> StoreResult<()> {
        let result = self.execute(sql, params).await;
        result.map(drop).writing_under(record, parent)
    }

    /// The first row of `select`; a hot read on SQLite runs on this thread.
    async fn fetch_optional<T: Clone + Send + Sync + 'static>(
        &self,
        select: &Select<T>,
        params: &[Param<'_>],
    ) -> Fetched<T> {
        match &self.hot_reads {
            Some(hot) if select.hot => hot.first_row_kept(select, params),
            _ => {
                let rows = statement::fetch(&self.pool, self.dialect, select, params, Rows::First);
                Ok(rows.await?.pop())
            }
        }
    }

    /// Every row of `select`; a hot read on SQLite runs on this thread.
    async fn fetch_all<T>(&self, select: &Select<T>, params: &[Param<'_>]) -> Listed<T> {
        match &self.hot_reads {
            Some(hot) if select.hot => hot.all_rows(select, params_from_iter(params)),
            _ => statement::fetch(&self.pool, self.dialect, select, params, Rows::All).await,
        }
    }
}

type Fetched<T> = StoreResult<Option<T>>;
type Listed<T> = StoreResult<Vec<T>>;

/// `WHERE column = ? ` and its parameter when a value is given, else nothing: the filter of
/// a listing.
fn where_equal<'a>(column: &str, value: Option<&'a str>) -> (String, Vec<Param<'a>>) {
    match value {
        Some(v) => (format!("WHERE {column} = ? "), vec![v.into()]),
        None => (String::new(), Vec::new()),
    }
}

/// `?, ?, …`: the placeholders of an `IN (…)` list of `n` values.
fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}

#[async_trait]
impl Store for SqlStore {
    async fn migrate(&self) -> StoreResult<Vec<String>> {
        let create = "CREATE TABLE IF NOT EXISTS mailauthd_migrations (\
                      version BIGINT NOT NULL PRIMARY KEY, name VARCHAR(255) NOT NULL, applied_at BIGINT NOT NULL)";
        self.execute(create, &[]).await.context("migrations")?;
        let versions = ints(
            "SELECT version FROM mailauthd_migrations ORDER BY version",
            "migrations",
        );
        let applied = self.fetch_all(&versions, &[]).await?;
        let mut newly = Vec::new();
        for m in MIGRATIONS.iter().filter(|m| !applied.contains(&m.version)) {
            let mut tx = self.pool.begin().await.context("migrations")?;
            for stmt in m.statements(self.dialect) {
                // Sent as written: DDL has no placeholders to rewrite.
                sqlx::query(&stmt)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| StoreError::Migration {
                        name: m.name,
                        detail: e.to_string(),
                    })?;
            }
            let now = crate::clock::Clock::now(&crate::clock::SystemClock);
            statement::execute(
                &mut *tx,
                self.dialect,
                "INSERT INTO mailauthd_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                &[m.version.into(), m.name.into(), now.into()],
            )
            .await
            .context("migrations")?;
            tx.commit().await.context("migrations")?;
            newly.push(m.name.to_string());
        }
        Ok(newly)
    }

    async fn ping(&self) -> StoreResult<()> {
        self.execute("SELECT 1", &[]).await.context("ping")?;
        Ok(())
    }
}
