//! The hot reads on SQLite (a login's mailbox and app password, the policy's sender
//! checks, a web session's re-check), run straight on the calling thread.
//!
//! sqlx gives every SQLite connection a thread of its own and hands each query to it and
//! back; for an indexed read that takes microseconds, the two thread switches cost many
//! times the query (a profile of app-password logins showed over half of all CPU time in
//! those switches). Here a small set of read-only connections is used in place: a read
//! holds one for the length of one statement, in WAL mode never waits for a writer, and
//! sees every commit made before it started, so a revocation still applies on the next
//! login. The SQL text and the row decoders are the ones sqlx runs on every other backend
//! (`rows.rs`). Writes, and every read not on a hot path, stay on sqlx.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use rusqlite::{ErrorCode, OpenFlags, Params};

use super::rows::Select;
use super::{StoreError, StoreResult};

/// Connections kept open; more than the runtime's worker threads never run at once.
const IDLE_CONNECTIONS: usize = 8;

pub(super) struct SqliteHotReads {
    path: PathBuf,
    idle: Mutex<Vec<rusqlite::Connection>>,
    closed: AtomicBool,
}

impl SqliteHotReads {
    pub(super) fn new(path: PathBuf) -> Self {
        SqliteHotReads {
            path,
            idle: Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
        }
    }

    /// After this every read fails as unavailable, as the sqlx pool's do once closed.
    pub(super) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// The first row of `select`, decoded, or `None`.
    pub(super) fn first_row<T>(
        &self,
        select: &Select<T>,
        params: impl Params,
    ) -> StoreResult<Option<T>> {
        let mut first = None;
        self.read_rows(select, params, |row| {
            first = Some(row);
            false
        })?;
        Ok(first)
    }

    /// Every row of `select`, decoded.
    pub(super) fn all_rows<T>(
        &self,
        select: &Select<T>,
        params: impl Params,
    ) -> StoreResult<Vec<T>> {
        let mut all = Vec::new();
        self.read_rows(select, params, |row| {
            all.push(row);
            true
        })?;
        Ok(all)
    }

    /// Hands each decoded row of `select` to `take` for as long as it returns `true`.
    fn read_rows<T>(
        &self,
        select: &Select<T>,
        params: impl Params,
        mut take: impl FnMut(T) -> bool,
    ) -> StoreResult<()> {
        let what = select.what;
        self.with(what, |conn| {
            let mut stmt = conn
                .prepare_cached(&select.sql)
                .map_err(|e| store_error(e, what))?;
            let mut rows = stmt.query(params).map_err(|e| store_error(e, what))?;
            while let Some(row) = rows.next().map_err(|e| store_error(e, what))? {
                if !take(select.read(row)?) {
                    break;
                }
            }
            Ok(())
        })
    }

    fn with<T>(
        &self,
        what: &str,
        read: impl FnOnce(&rusqlite::Connection) -> StoreResult<T>,
    ) -> StoreResult<T> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("the store is closed".into()));
        }
        let pooled = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let conn = match pooled {
            Some(conn) => conn,
            None => self.open().map_err(|e| store_error(e, what))?,
        };
        let result = read(&conn);
        // A connection that failed may be broken (file replaced, disk error): drop it.
        if result.is_ok() {
            let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
            if idle.len() < IDLE_CONNECTIONS && !self.closed.load(Ordering::SeqCst) {
                idle.push(conn);
            }
        }
        result
    }

    fn open(&self) -> rusqlite::Result<rusqlite::Connection> {
        // No create flag: the database exists once migrations ran, and a missing file is
        // an outage to report, not an empty store to invent. Opened read-write (a WAL
        // reader writes its read marks to the -shm file) but refusing to change data.
        let conn = rusqlite::Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.pragma_update(None, "query_only", true)?;
        conn.set_prepared_statement_cache_capacity(32);
        Ok(conn)
    }
}

impl std::fmt::Debug for SqliteHotReads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteHotReads")
            .field("path", &self.path)
            .field("closed", &self.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// A missing, locked or unreadable file is an outage, as a lost connection is on a network
/// database; anything else (a statement the file cannot run) is not.
fn store_error(e: rusqlite::Error, what: &str) -> StoreError {
    match e.sqlite_error_code() {
        Some(
            ErrorCode::DatabaseBusy
            | ErrorCode::DatabaseLocked
            | ErrorCode::CannotOpen
            | ErrorCode::SystemIoFailure
            | ErrorCode::NotADatabase
            | ErrorCode::DatabaseCorrupt
            | ErrorCode::OutOfMemory
            | ErrorCode::PermissionDenied,
        ) => StoreError::Unavailable(format!("{what}: {e}")),
        _ => StoreError::Database {
            what: what.to_string(),
            detail: e.to_string(),
        },
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::store::rows::ints;

    fn database(dir: &tempfile::TempDir) -> (PathBuf, rusqlite::Connection) {
        let path = dir.path().join("t.db");
        let writer = rusqlite::Connection::open(&path).unwrap();
        writer
            .execute_batch(
                "PRAGMA journal_mode = WAL; CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER);",
            )
            .unwrap();
        (path, writer)
    }

    #[test]
    fn a_pooled_connection_sees_every_later_commit() {
        let dir = tempfile::tempdir().unwrap();
        let (path, writer) = database(&dir);
        let reads = SqliteHotReads::new(path);
        let select = ints("SELECT v FROM t WHERE k = ?", "t");
        let get = || reads.first_row(&select, ["a"]);
        assert_eq!(get().unwrap(), None);
        writer.execute("INSERT INTO t VALUES ('a', 1)", []).unwrap();
        assert_eq!(
            get().unwrap(),
            Some(1),
            "the insert is seen by a reused connection"
        );
        writer
            .execute("UPDATE t SET v = 2 WHERE k = 'a'", [])
            .unwrap();
        assert_eq!(get().unwrap(), Some(2));
        writer.execute("DELETE FROM t", []).unwrap();
        assert_eq!(get().unwrap(), None, "a revocation counts on the next read");
        let all = reads.all_rows(&ints("SELECT v FROM t", "t"), []).unwrap();
        assert!(all.is_empty());
    }

    #[test]
    fn a_missing_file_or_a_closed_store_is_unavailable_not_empty() {
        let dir = tempfile::tempdir().unwrap();
        let missing = SqliteHotReads::new(dir.path().join("nothing-here.db"));
        let err = missing
            .first_row(&ints("SELECT 1", "mailbox"), [])
            .unwrap_err();
        assert!(err.is_unavailable(), "{err}");
        assert!(
            !dir.path().join("nothing-here.db").exists(),
            "no file created"
        );

        let (path, _writer) = database(&dir);
        let reads = SqliteHotReads::new(path);
        assert_eq!(
            reads.first_row(&ints("SELECT 7", "t"), []).unwrap(),
            Some(7)
        );
        reads.close();
        assert!(reads
            .first_row(&ints("SELECT 7", "t"), [])
            .unwrap_err()
            .is_unavailable());
    }

    #[test]
    fn the_read_connections_cannot_write() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _writer) = database(&dir);
        let reads = SqliteHotReads::new(path);
        let err = reads
            .first_row(&ints("INSERT INTO t VALUES ('x', 1) RETURNING v", "t"), [])
            .unwrap_err();
        assert!(!err.is_unavailable(), "{err}");
    }
}
