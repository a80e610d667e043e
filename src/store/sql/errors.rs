//! Driver errors as [`StoreError`]s: which ones are an outage, which a refusal.

use sqlx::error::ErrorKind;

use super::super::{Record, Refusal, StoreError, StoreResult};

/// A failed statement. Connection trouble and lock contention are temporary
/// (`Unavailable`); `what` names the rows in the message of anything else.
pub(super) fn store_error(e: sqlx::Error, what: &str) -> StoreError {
    match e {
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            if !is_key_violation(db.kind()) && is_transient_code(&code) {
                StoreError::Unavailable(db.message().to_string())
            } else {
                StoreError::Database {
                    what: what.to_string(),
                    detail: db.message().to_string(),
                }
            }
        }
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => StoreError::Unavailable(e.to_string()),
        sqlx::Error::Decode(_)
        | sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnIndexOutOfBounds { .. }
        | sqlx::Error::TypeNotFound { .. } => StoreError::Corrupt {
            what: what.to_string(),
            detail: e.to_string(),
        },
        other => StoreError::Database {
            what: what.to_string(),
            detail: other.to_string(),
        },
    }
}

/// A failed statement that writes `record`: a duplicate key is `Conflict(record)`, and a
/// foreign key that says no is `Refused(Dangling(record))`; the rest as [`store_error`].
pub(super) fn write_error(e: sqlx::Error, record: Record) -> StoreError {
    match key_violation(&e) {
        Some(ErrorKind::UniqueViolation) => StoreError::Conflict(record),
        Some(_) => StoreError::Refused(Refusal::Dangling(record)),
        None => store_error(e, &record.to_string()),
    }
}

/// [`write_error`] for a row that belongs to `parent`: a foreign key that says no means
/// the parent is missing.
pub(super) fn write_error_under(e: sqlx::Error, record: Record, parent: Record) -> StoreError {
    match key_violation(&e) {
        Some(ErrorKind::ForeignKeyViolation) => StoreError::NotFound(parent),
        _ => write_error(e, record),
    }
}

/// [`store_error`] for a write whose only expected refusal is a missing `parent`.
pub(super) fn missing_parent(e: sqlx::Error, what: &str, parent: Record) -> StoreError {
    match key_violation(&e) {
        Some(ErrorKind::ForeignKeyViolation) => StoreError::NotFound(parent),
        _ => store_error(e, what),
    }
}

/// The two ways a caller names what a failed statement was about.
pub(super) trait SqlxResult<T> {
    /// See [`store_error`].
    fn context(self, what: &str) -> StoreResult<T>;
    /// See [`write_error`].
    fn writing(self, record: Record) -> StoreResult<T>;
    /// See [`write_error_under`].
    fn writing_under(self, record: Record, parent: Record) -> StoreResult<T>;
}

impl<T> SqlxResult<T> for Result<T, sqlx::Error> {
    fn context(self, what: &str) -> StoreResult<T> {
        self.map_err(|e| store_error(e, what))
    }

    fn writing(self, record: Record) -> StoreResult<T> {
        self.map_err(|e| write_error(e, record))
    }

    fn writing_under(self, record: Record, parent: Record) -> StoreResult<T> {
        self.map_err(|e| write_error_under(e, record, parent))
    }
}

/// `Ok` when a statement changed at least one row, else `NotFound(record)`.
pub(super) fn found(rows_changed: u64, record: Record) -> StoreResult<()> {
    if rows_changed == 0 {
        Err(StoreError::NotFound(record))
    } else {
        Ok(())
    }
}

/// A duplicate key or a foreign key that says no: what a caller may be asked to decide on.
fn is_key_violation(kind: ErrorKind) -> bool {
    matches!(
        kind,
        ErrorKind::UniqueViolation | ErrorKind::ForeignKeyViolation
    )
}

fn key_violation(e: &sqlx::Error) -> Option<ErrorKind> {
    match e {
        sqlx::Error::Database(db) if is_key_violation(db.kind()) => Some(db.kind()),
        _ => None,
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
