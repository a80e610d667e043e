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
//!
//! A single-row read is answered from the [`Snapshot`] when nothing has been committed since
//! it was last made (see `sqlite_snapshot`).

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use rusqlite::{params_from_iter, ErrorCode, OpenFlags, Params};

use super::param::Param;
use super::rows::Select;
use super::sqlite_snapshot::{ReadKey, Snapshot};
use super::{StoreError, StoreResult};

/// Connections kept open; more than the runtime's worker threads never run at once.
const IDLE_CONNECTIONS: usize = 8;

pub(super) struct SqliteHotReads {
    path: PathBuf,
    idle: Mutex<Vec<rusqlite::Connection>>,
    snapshot: Snapshot,
    closed: AtomicBool,
    /// Reads that went to the file, for the tests to tell them from kept rows.
    #[cfg(test)]
    file_reads: std::sync::atomic::AtomicU64,
}

impl SqliteHotReads {
    pub(super) fn new(path: PathBuf) -> Self {
        SqliteHotReads {
            path,
            idle: Mutex::new(Vec::new()),
            snapshot: Snapshot::new(),
            closed: AtomicBool::new(false),
            #[cfg(test)]
            file_reads: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// After this every read fails as unavailable, as the sqlx pool's do once closed.
    pub(super) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        self.snapshot.clear();
    }

    /// The first row of `select`, decoded, or `None`: the row kept from the same read if
    /// nothing was committed since, else read from the database (and kept).
    pub(super) fn first_row_kept<T: Clone + Send + Sync + 'static>(
        &self,
        select: &Select<T>,
        params: &[Param<'_>],
    ) -> StoreResult<Option<T>> {
        let Cow::Borrowed(sql) = select.sql else {
            return self.first_row(select, params_from_iter(params));
        };
        if self.closed.load(Ordering::SeqCst) {
            return Err(closed());
        }
        // Read before the database is: a commit in between makes the row newer than the
        // generation it is kept under, never older.
        let generation = self.snapshot.generation();
        let key = ReadKey::new(sql, params);
        if let Some(generation) = generation {
            if let Some(row) = self.snapshot.get::<Option<T>>(generation, &key) {
                return Ok(row);
            }
        }
        let row = self.first_row(select, params_from_iter(params))?;
        if let Some(generation) = generation {
            self.snapshot.keep(generation, key, row.clone());
        }
        Ok(row)
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
            return Err(closed());
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
        #[cfg(test)]
        self.file_reads.fetch_add(1, Ordering::SeqCst);
        let result = read(&conn);
        // A connection that failed may be broken (file replaced, disk error): drop it.
        if result.is_ok() {
            // The first that has read from the file keeps its WAL index open for the snapshot.
            let Some(conn) = self.pin_for_snapshot(conn) else {
                return result;
            };
            let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
            if idle.len() < IDLE_CONNECTIONS && !self.closed.load(Ordering::SeqCst) {
                idle.push(conn);
            }
        }
        result
    }

    fn pin_for_snapshot(&self, conn: rusqlite::Connection) -> Option<rusqlite::Connection> {
        if self.snapshot.is_watching() || self.closed.load(Ordering::SeqCst) {
            return Some(conn);
        }
        self.snapshot.watch(&self.path, conn)
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

fn closed() -> StoreError {
    StoreError::Unavailable("the store is closed".into())
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
    fn a_kept_row_serves_until_any_commit_and_never_after_one() {
        let dir = tempfile::tempdir().unwrap();
        let (path, writer) = database(&dir);
        writer
            .execute_batch("CREATE TABLE other (x INTEGER); INSERT INTO t VALUES ('a', 1);")
            .unwrap();
        let reads = SqliteHotReads::new(path.clone());
        let select = ints("SELECT v FROM t WHERE k = ?", "t");
        let get = |k: &str| reads.first_row_kept(&select, &[k.into()]).unwrap();
        let from_file = || reads.file_reads.load(Ordering::SeqCst);

        assert_eq!(get("a"), Some(1));
        assert_eq!(get("a"), Some(1));
        let after_warm_up = from_file();
        for _ in 0..100 {
            assert_eq!(get("a"), Some(1));
        }
        assert_eq!(get("nobody"), None);
        assert_eq!(get("nobody"), None);
        assert_eq!(
            from_file(),
            after_warm_up + 1,
            "nothing committed: the kept rows answer (one read for the new key)"
        );

        writer.execute("INSERT INTO other VALUES (1)", []).unwrap();
        assert_eq!(get("a"), Some(1));
        assert_eq!(
            from_file(),
            after_warm_up + 2,
            "any commit, even to another table, makes the row read again"
        );

        // Another connection on its own (as another process would be) changes the row.
        let other = rusqlite::Connection::open(&path).unwrap();
        other
            .execute("UPDATE t SET v = 2 WHERE k = 'a'", [])
            .unwrap();
        assert_eq!(get("a"), Some(2), "an update counts on the very next read");
        other.execute("DELETE FROM t WHERE k = 'a'", []).unwrap();
        assert_eq!(get("a"), None, "a revocation counts on the very next read");
        other
            .execute("INSERT INTO t VALUES ('nobody', 3)", [])
            .unwrap();
        assert_eq!(
            get("nobody"),
            Some(3),
            "a kept absence ends with a commit too"
        );

        // A checkpoint that restarts the log rewrites the header's salts: still no stale row.
        writer
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
            .unwrap();
        other
            .execute("UPDATE t SET v = 4 WHERE k = 'nobody'", [])
            .unwrap();
        assert_eq!(get("nobody"), Some(4));

        reads.close();
        assert!(reads
            .first_row_kept(&select, &["nobody".into()])
            .unwrap_err()
            .is_unavailable());
    }

    #[test]
    fn readers_racing_a_writer_never_see_a_row_older_than_the_last_commit() {
        use std::sync::atomic::AtomicI64;
        let dir = tempfile::tempdir().unwrap();
        let (path, writer) = database(&dir);
        writer.execute("INSERT INTO t VALUES ('a', 0)", []).unwrap();
        let reads = SqliteHotReads::new(path);
        let select = ints("SELECT v FROM t WHERE k = ?", "t");
        let committed = AtomicI64::new(0);
        let done = AtomicBool::new(false);
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    while !done.load(Ordering::SeqCst) {
                        let before = committed.load(Ordering::SeqCst);
                        let seen = reads
                            .first_row_kept(&select, &["a".into()])
                            .unwrap()
                            .unwrap();
                        assert!(seen >= before, "read {seen} after {before} was committed");
                    }
                });
            }
            for v in 1..=300 {
                writer
                    .execute("UPDATE t SET v = ? WHERE k = 'a'", [v])
                    .unwrap();
                committed.store(v, Ordering::SeqCst);
            }
            done.store(true, Ordering::SeqCst);
        });
        assert!(reads.file_reads.load(Ordering::SeqCst) > 1);
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
