//! What can go wrong in a store call, as values a caller can decide on.
//!
//! The one distinction every caller must make is [`StoreError::is_unavailable`]: the
//! database could not answer (down, timed out, busy), which is a temporary failure and
//! never "wrong password" or "no such mailbox". Everything else names what was refused and
//! why, in words a postmaster can act on; the command line prints them as they are.

use std::fmt;
use std::time::Duration;

use thiserror::Error;

use super::domain_limits::LimitBreach;
use super::url::DatabaseUrl;
use crate::names::NameError;

pub type StoreResult<T> = Result<T, StoreError>;

#[derive(Debug, Error)]
pub enum StoreError {
    /// The database cannot be reached or answered with a transient error. Callers turn this
    /// into a temporary failure, never into "wrong password".
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The call's deadline passed ([`super::GuardedStore`]); as temporary as `Unavailable`.
    #[error("database unavailable: the database did not answer within {} ms", .0.as_millis())]
    TimedOut(Duration),
    #[error("{0} not found")]
    NotFound(Record),
    #[error("{0} already exists")]
    Conflict(Record),
    /// The caller's limit check, run inside the transaction, refused the write; nothing was
    /// written.
    #[error("{0}")]
    Limit(LimitBreach),
    /// A rule of the store refused the change; nothing was written.
    #[error("{0}")]
    Refused(Refusal),
    /// A stored value this version cannot read (a column of the wrong type, an unknown
    /// state code): a damaged row or a newer schema, not an outage.
    #[error("database error: {what}: {detail}")]
    Corrupt { what: String, detail: String },
    #[error("database error: migration {name} failed: {detail}")]
    Migration { name: &'static str, detail: String },
    #[error("database error: {0}")]
    Url(#[from] UrlError),
    /// Anything else the database refused; not temporary.
    #[error("database error: {what}: {detail}")]
    Database { what: String, detail: String },
}

impl StoreError {
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_) | StoreError::TimedOut(_))
    }
}

/// The row a write or a lookup was about, as a person would name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    Domain(String),
    AliasDomain(String),
    Template(String),
    /// A mapping, by its claim value.
    Mapping(String),
    Mailbox(String),
    AppPassword {
        mailbox: String,
        id: i64,
    },
    /// An app password being created, before it has an id.
    NewAppPassword {
        mailbox: String,
        name: String,
    },
    /// An alias address; with a target, that one row of it.
    Alias {
        address: String,
        target: Option<String>,
    },
    SendAs {
        mailbox: String,
        pattern: String,
    },
    /// A row of the `settings` table, by name.
    Setting(&'static str),
}

impl Record {
    pub fn alias(address: &str, target: Option<&str>) -> Self {
        Record::Alias {
            address: address.to_string(),
            target: target.map(str::to_string),
        }
    }

    pub fn send_as(mailbox: &str, pattern: &str) -> Self {
        Record::SendAs {
            mailbox: mailbox.to_string(),
            pattern: pattern.to_string(),
        }
    }
}

impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Record::Domain(name) => write!(f, "domain {name}"),
            Record::AliasDomain(name) => write!(f, "alias domain {name}"),
            Record::Template(name) => write!(f, "template {name}"),
            Record::Mapping(claim_value) => write!(f, "mapping for {claim_value:?}"),
            Record::Mailbox(address) => write!(f, "mailbox {address}"),
            Record::AppPassword { mailbox, id } => write!(f, "app password {id} of {mailbox}"),
            Record::NewAppPassword { mailbox, name } => {
                write!(f, "app password {name:?} of {mailbox}")
            }
            Record::Alias {
                address,
                target: None,
            } => write!(f, "alias {address}"),
            Record::Alias {
                address,
                target: Some(target),
            } => write!(f, "alias {address} -> {target}"),
            Record::SendAs { mailbox, pattern } => {
                write!(f, "send-as grant {pattern} for {mailbox}")
            }
            Record::Setting(name) => write!(f, "setting {name}"),
        }
    }
}

/// A change the store refuses by a rule of its own.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum Refusal {
    /// The store writes addresses only in the form `Address::parse` gives them.
    #[error("{role} address {address:?} is not in canonical form (it would be {canonical})")]
    NotCanonical {
        role: &'static str,
        address: String,
        canonical: String,
    },
    #[error("{role} address refused: {reason}")]
    BadAddress {
        role: &'static str,
        reason: NameError,
    },
    #[error("domain {domain} still has {mailboxes} mailbox(es); remove them first")]
    DomainNotEmpty { domain: String, mailboxes: u64 },
    #[error("template {0} is the default template; set another default or clear it first")]
    DefaultTemplate(String),
    #[error("template {0} is used by a mapping; remove the mapping first")]
    TemplateMapped(String),
    /// A foreign key said no.
    #[error("{0}: it refers to something that does not exist, or is still referred to")]
    Dangling(Record),
}

/// A `[store] url` this build cannot open.
#[derive(Debug, Error)]
pub enum UrlError {
    #[error("unsupported database URL {0}: use sqlite://, mysql:// (MariaDB) or postgres://")]
    Unsupported(DatabaseUrl),
    #[error("invalid database URL {url}: {detail}")]
    Invalid { url: DatabaseUrl, detail: String },
    #[error("sqlite URL needs a file path, e.g. sqlite:///var/lib/mailauthd/mailauthd.db")]
    SqliteWithoutPath,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The command line prints these as they are, and tests and people grep for them.
    #[test]
    fn messages_name_the_row_and_what_to_do() {
        let cases: Vec<(StoreError, &str)> = vec![
            (
                StoreError::NotFound(Record::Mailbox("a@example.org".into())),
                "mailbox a@example.org not found",
            ),
            (
                StoreError::Conflict(Record::Domain("example.org".into())),
                "domain example.org already exists",
            ),
            (
                StoreError::NotFound(Record::Mapping("staff".into())),
                "mapping for \"staff\" not found",
            ),
            (
                StoreError::NotFound(Record::AppPassword {
                    mailbox: "a@example.org".into(),
                    id: 7,
                }),
                "app password 7 of a@example.org not found",
            ),
            (
                StoreError::Conflict(Record::Alias {
                    address: "x@example.org".into(),
                    target: Some("a@example.org".into()),
                }),
                "alias x@example.org -> a@example.org already exists",
            ),
            (
                StoreError::NotFound(Record::SendAs {
                    mailbox: "a@example.org".into(),
                    pattern: "@example.net".into(),
                }),
                "send-as grant @example.net for a@example.org not found",
            ),
            (
                StoreError::Refused(Refusal::DomainNotEmpty {
                    domain: "example.org".into(),
                    mailboxes: 2,
                }),
                "domain example.org still has 2 mailbox(es); remove them first",
            ),
            (
                StoreError::TimedOut(Duration::from_millis(3000)),
                "database unavailable: the database did not answer within 3000 ms",
            ),
            (
                StoreError::Url(UrlError::Unsupported(DatabaseUrl::new(
                    "postgress://mail:secret@db/mail",
                ))),
                "database error: unsupported database URL postgress://mail:***@db/mail: use sqlite://, mysql:// (MariaDB) or postgres://",
            ),
        ];
        for (error, text) in cases {
            assert_eq!(error.to_string(), text);
        }
        assert!(StoreError::TimedOut(Duration::from_secs(1)).is_unavailable());
        assert!(!StoreError::NotFound(Record::Setting("default_template")).is_unavailable());
    }
}
