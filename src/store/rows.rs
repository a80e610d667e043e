//! Records as rows: for each table, the columns the store selects with the decoder that
//! reads them in that order, and the INSERT with the values it binds in its order.
//!
//! Keeping a column list and the code that reads or fills it side by side is what keeps
//! them in step; adding a column means changing this file and the migrations, and the
//! statements in `sql/` that change it. A decoder reads through [`Columns`], so one decoder
//! serves both ways a row is fetched: through sqlx (`AnyRow`, every backend) and through
//! the SQLite hot reads (`rusqlite::Row`, see `sqlite_hot_reads`).

use std::borrow::Cow;

use ipnet::IpNet;
use sqlx::any::AnyRow;
use sqlx::Row;
use thiserror::Error;

use super::param::Param;
use super::records::{
    format_networks, parse_networks, Alias, AliasDomain, AppPassword, AuthSource, Domain,
    DomainUsage, IdentityStanding, LastUseInfo, LimitsError, LinkedMailbox, LoginView, Mailbox,
    MailboxState, Mapping, NewAppPassword, Overrides, SendAs, SendLimits, SenderAccount,
    ServedDomain, SessionView, Suspension, Template, ValueError,
};
use super::{StoreError, StoreResult};
use crate::names::Protocols;

/// Why a stored row could not be read. The messages are the ones sqlx gives for its own
/// decode errors, whichever driver read the row.
#[derive(Debug, Error)]
pub(super) enum RowError {
    /// A column sqlx could not read as the type the schema gives it.
    #[error(transparent)]
    Column(#[from] sqlx::Error),
    /// The same, on a hot read.
    #[error("error occurred while decoding: {0}")]
    SqliteColumn(#[from] rusqlite::Error),
    #[error("error occurred while decoding: invalid active value {0}")]
    StateCode(i64),
    #[error("error occurred while decoding: {0}")]
    Value(#[from] ValueError),
    #[error("error occurred while decoding: stored send limits: {0}")]
    SendLimits(LimitsError),
}

pub(super) type Decoded<T> = Result<T, RowError>;

/// Reads a row into a record; a plain function, so it can be handed to either driver.
pub(super) type Decoder<T> = fn(&dyn Columns) -> Decoded<T>;

/// A query and the decoder of its rows, and what the rows are called in an error.
pub(super) struct Select<T> {
    pub(super) sql: Cow<'static, str>,
    pub(super) what: &'static str,
    pub(super) decode: Decoder<T>,
    /// A read on the path of a login, a policy request or a page request: on SQLite it
    /// runs on the calling thread (`sqlite_hot_reads`).
    pub(super) hot: bool,
}

impl<T> Select<T> {
    const fn new(sql: &'static str, what: &'static str, decode: Decoder<T>) -> Self {
        Select {
            sql: Cow::Borrowed(sql),
            what,
            decode,
            hot: false,
        }
    }

    /// A query built at run time.
    pub(super) fn built(sql: String, what: &'static str, decode: Decoder<T>) -> Self {
        Select {
            sql: Cow::Owned(sql),
            what,
            decode,
            hot: false,
        }
    }

    /// A query on a hot path; see [`Select::hot`](field@Select::hot).
    const fn hot(sql: &'static str, what: &'static str, decode: Decoder<T>) -> Self {
        Select {
            sql: Cow::Borrowed(sql),
            what,
            decode,
            hot: true,
        }
    }

    /// This query with `clause` (a filter, an order) appended.
    pub(super) fn with(&self, clause: &str) -> Select<T> {
        Select {
            sql: Cow::Owned(format!("{} {clause}", self.sql)),
            what: self.what,
            decode: self.decode,
            hot: self.hot,
        }
    }

    /// Decodes one row; one that does not decode is a damaged row, not an outage.
    pub(super) fn read(&self, row: &dyn Columns) -> StoreResult<T> {
        (self.decode)(row).map_err(|e| StoreError::Corrupt {
            what: self.what.to_string(),
            detail: e.to_string(),
        })
    }
}

/// A result row, whichever driver fetched it. The schema has only text and 64-bit integer
/// columns, either of them nullable; the provided methods read what those stand for.
pub(super) trait Columns {
    fn text(&self, i: usize) -> Decoded<String>;
    fn opt_text(&self, i: usize) -> Decoded<Option<String>>;
    fn int(&self, i: usize) -> Decoded<i64>;
    fn opt_int(&self, i: usize) -> Decoded<Option<i64>>;

    /// A 0/1 column.
    fn flag(&self, i: usize) -> Decoded<bool> {
        Ok(self.int(i)? != 0)
    }

    /// A count or a size in bytes; a negative value (never written) reads as 0.
    fn unsigned(&self, i: usize) -> Decoded<u64> {
        Ok(to_u64(self.int(i)?))
    }

    fn opt_unsigned(&self, i: usize) -> Decoded<Option<u64>> {
        Ok(self.opt_int(i)?.map(to_u64))
    }

    fn protocols(&self, i: usize) -> Decoded<Protocols> {
        Ok(Protocols::from_stored(&self.text(i)?))
    }

    /// The `active` column of mailboxes and templates: mailcow's 0/1/2.
    fn state(&self, i: usize) -> Decoded<MailboxState> {
        let code = self.int(i)?;
        MailboxState::from_code(code).ok_or(RowError::StateCode(code))
    }

    fn auth_source(&self, i: usize) -> Decoded<AuthSource> {
        Ok(self.text(i)?.parse::<AuthSource>()?)
    }

    /// Three columns from `i`: when, from where, through which service.
    fn last_use(&self, i: usize) -> Decoded<Option<LastUseInfo>> {
        let at = self.opt_int(i)?;
        let ip = self.opt_text(i + 1)?;
        let service = self.opt_text(i + 2)?;
        Ok(at.map(|at| LastUseInfo { at, ip, service }))
    }

    /// Two columns from `i`: a suspension's time and reason; none when the time is null.
    fn suspension(&self, i: usize) -> Decoded<Option<Suspension>> {
        let Some(at) = self.opt_int(i)? else {
            return Ok(None);
        };
        let reason = self.opt_text(i + 1)?.unwrap_or_default();
        Ok(Some(Suspension { at, reason }))
    }

    fn overrides(&self, i: usize) -> Decoded<Overrides> {
        Ok(Overrides::from_stored(&self.text(i)?))
    }

    fn networks(&self, i: usize) -> Decoded<Vec<IpNet>> {
        Ok(parse_networks(&self.text(i)?)?)
    }

    fn send_limits(&self, i: usize) -> Decoded<SendLimits> {
        self.text(i)?.parse().map_err(RowError::SendLimits)
    }

    /// A template's send limits, read through a LEFT JOIN: none without a row.
    fn opt_send_limits(&self, i: usize) -> Decoded<Option<SendLimits>> {
        match self.opt_text(i)? {
            Some(text) => text.parse().map(Some).map_err(RowError::SendLimits),
            None => Ok(None),
        }
    }
}

/// The four reads of a driver's row type, through its own getter.
macro_rules! columns_through {
    ($row:ty, $get:ident) => {
        impl Columns for $row {
            fn text(&self, i: usize) -> Decoded<String> {
                Ok(self.$get(i)?)
            }
            fn opt_text(&self, i: usize) -> Decoded<Option<String>> {
                Ok(self.$get(i)?)
            }
            fn int(&self, i: usize) -> Decoded<i64> {
                Ok(self.$get(i)?)
            }
            fn opt_int(&self, i: usize) -> Decoded<Option<i64>> {
                Ok(self.$get(i)?)
            }
        }
    };
}

columns_through!(AnyRow, try_get);
columns_through!(rusqlite::Row<'_>, get);

/// `fn name -> Record { field: read, … }`: a decoder that fills the fields from the
/// columns in the order the fields are written, each through the [`Columns`] method
/// `read`; `read[n]` is a read of `n` columns (`last_use[3]`). Writing the fields in the
/// order of the SELECT is all it takes to keep the two in step: no column index to
/// miscount. `fn name(at) -> …` reads from column `at` on (joined queries put a record's
/// columns after others).
macro_rules! decoder {
    ($(#[$doc:meta])* fn $name:ident -> $record:ident { $($fields:tt)+ }) => {
        $(#[$doc])*
        #[allow(unused_assignments)] // the last read moves past the last column
        pub(super) fn $name(r: &dyn Columns) -> Decoded<$record> {
            decoder!(@read r, 0, $record { $($fields)+ })
        }
    };
    ($(#[$doc:meta])* fn $name:ident($at:ident) -> $record:ident { $($fields:tt)+ }) => {
        $(#[$doc])*
        #[allow(unused_assignments)] // the last read moves past the last column
        fn $name(r: &dyn Columns, $at: usize) -> Decoded<$record> {
            decoder!(@read r, $at, $record { $($fields)+ })
        }
    };
    (@width) => { 1 };
    (@width $width:literal) => { $width };
    (@read $r:ident, $start:expr, $record:ident {
        $($field:ident: $read:ident $([$width:literal])?),+ $(,)?
    }) => {{
        let mut at = $start;
        Ok($record {
            $($field: {
                let value = $r.$read(at)?;
                at += decoder!(@width $($width)?);
                value
            }),+
        })
    }};
}

/// The values a [`Write`] binds, in the order of its placeholders.
macro_rules! binds {
    ($($value:expr),+ $(,)?) => {
        vec![$(Param::from($value)),+]
    };
}

/// A statement that writes a record (an INSERT, an UPDATE), and the values it binds in
/// the order of its placeholders.
pub(super) struct Write<T> {
    pub(super) sql: &'static str,
    values: for<'a> fn(&'a T) -> Vec<Param<'a>>,
}

impl<T> Write<T> {
    /// What the statement binds to write `value`.
    pub(super) fn values<'a>(&self, value: &'a T) -> Vec<Param<'a>> {
        (self.values)(value)
    }
}

/// `SELECT, INSERT: Record in "table" as "what", fn decoder { field: read, … }`: a table
/// whose columns are the record's fields, named alike and read and written whole: its
/// SELECT (to add clauses to with [`Select::with`]), the decoder of its rows and its INSERT,
/// from one list, so a column cannot be added to one of them and not the others.
macro_rules! whole_rows {
    ($select:ident, $insert:ident: $record:ident in $table:literal as $what:literal,
     fn $decoder:ident { $first:ident: $first_read:ident $(, $field:ident: $read:ident)* $(,)? }) => {
        pub(super) const $select: Select<$record> = Select::new(
            concat!("SELECT ", stringify!($first) $(, ", ", stringify!($field))*, " FROM ", $table),
            $what,
            $decoder,
        );

        decoder! {
            fn $decoder -> $record { $first: $first_read $(, $field: $read)* }
        }

        pub(super) const $insert: Write<$record> = Write {
            sql: concat!(
                "INSERT INTO ", $table, " (", stringify!($first) $(, ", ", stringify!($field))*,
                ") VALUES (?", $(whole_rows!(@another $field),)* ")"
            ),
            values: |r| binds! { &r.$first $(, &r.$field)* },
        };
    };
    (@another $field:ident) => {
        ", ?"
    };
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// The first column as text.
pub(super) fn first_text(r: &dyn Columns) -> Decoded<String> {
    r.text(0)
}

/// The first column as an integer.
pub(super) fn first_int(r: &dyn Columns) -> Decoded<i64> {
    r.int(0)
}

/// `sql`, whose rows are one text column.
pub(super) const fn texts(sql: &'static str, what: &'static str) -> Select<String> {
    Select::new(sql, what, first_text)
}

/// `sql`, whose rows are one integer column.
pub(super) const fn ints(sql: &'static str, what: &'static str) -> Select<i64> {
    Select::new(sql, what, first_int)
}

pub(super) const DOMAINS: Select<Domain> = Select::new(
    "SELECT name, active, max_mailboxes, max_quota, total_quota, created_at FROM domains",
    "domain",
    domain_from,
);

decoder! {
    fn domain_from -> Domain {
        name: text, active: flag, max_mailboxes: opt_unsigned, max_quota: opt_unsigned,
        total_quota: opt_unsigned, created_at: int,
    }
}

pub(super) const DOMAIN_INSERT: Write<Domain> = Write {
    sql: "INSERT INTO domains (name, active, max_mailboxes, max_quota, total_quota, created_at, \
          lock_version) VALUES (?, ?, ?, ?, ?, ?, 0)",
    values: |d| {
        binds! {
            &d.name, d.active, d.max_mailboxes, d.max_quota, d.total_quota, d.created_at,
        }
    },
};

/// Everything but the name and the creation time.
pub(super) const DOMAIN_UPDATE: Write<Domain> = Write {
    sql: "UPDATE domains SET active = ?, max_mailboxes = ?, max_quota = ?, total_quota = ? \
          WHERE name = ?",
    values: |d| binds! { d.active, d.max_mailboxes, d.max_quota, d.total_quota, &d.name },
};

decoder! {
    /// Mailbox count, quota sum, unlimited mailboxes: the usage query of `sql::domains`.
    fn usage_from -> DomainUsage {
        mailboxes: unsigned, quota_sum: unsigned, unlimited_mailboxes: unsigned,
    }
}

whole_rows! {
    ALIAS_DOMAINS, ALIAS_DOMAIN_INSERT: AliasDomain in "alias_domains" as "alias domains",
    fn alias_domain_from { name: text, target: text, active: flag, created_at: int }
}

pub(super) const TEMPLATES: Select<Template> = Select::new(
    "SELECT name, quota, protocols, active, created_at, updated_at FROM templates",
    "template",
    template_from,
);

decoder! {
    fn template_from -> Template {
        name: text, quota: unsigned, protocols: protocols, state: state, created_at: int,
        updated_at: int,
    }
}

pub(super) const TEMPLATE_INSERT: Write<Template> = Write {
    sql: "INSERT INTO templates (name, quota, protocols, active, created_at, updated_at) \
          VALUES (?, ?, ?, ?, ?, ?)",
    values: |t| {
        binds! {
            &t.name, t.quota, t.protocols.to_string(), t.state.code(), t.created_at, t.updated_at,
        }
    },
};

pub(super) const TEMPLATE_UPDATE: Write<Template> = Write {
    sql: "UPDATE templates SET quota = ?, protocols = ?, active = ?, updated_at = ? WHERE name = ?",
    values: |t| {
        binds! {
            t.quota, t.protocols.to_string(), t.state.code(), t.updated_at, &t.name,
        }
    },
};

whole_rows! {
    MAPPINGS, MAPPING_INSERT: Mapping in "template_mappings" as "mappings",
    fn mapping_from { claim_value: text, position: int, template: text }
}

pub(super) const MAILBOXES: Select<Mailbox> = Select::new(
    "SELECT address, domain, password_hash, auth_source, oidc_issuer, oidc_subject, \
     display_name, quota, protocols, active, template, template_hash, created_at, updated_at, \
     last_login_at, last_login_ip, last_login_service, overrides FROM mailboxes",
    "mailbox",
    mailbox_from,
);

decoder! {
    fn mailbox_from -> Mailbox {
        address: text, domain: text, password_hash: opt_text, auth_source: auth_source,
        oidc_issuer: opt_text, oidc_subject: opt_text, display_name: text, quota: unsigned,
        protocols: protocols, state: state, template: opt_text, template_hash: opt_text,
        created_at: int, updated_at: int, last_login: last_use[3], overrides: overrides,
    }
}

/// What a new mailbox starts with; its last login and credential generation start empty.
pub(super) const MAILBOX_INSERT: Write<Mailbox> = Write {
    sql: "INSERT INTO mailboxes (address, domain, password_hash, auth_source, oidc_issuer, \
          oidc_subject, display_name, quota, protocols, active, template, template_hash, \
          overrides, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    values: |m| {
        binds! {
            &m.address, &m.domain, m.password_hash.as_deref(), m.auth_source.name(),
            m.oidc_issuer.as_deref(), m.oidc_subject.as_deref(), &m.display_name, m.quota,
            m.protocols.to_string(), m.state.code(), m.template.as_deref(),
            m.template_hash.as_deref(), m.overrides.to_string(), m.created_at, m.updated_at,
        }
    },
};

/// Everything but the password hash and the auth source, which have statements of their
/// own. Removing the identity binding (unlink) bumps the credential generation, which ends
/// the page sessions made with it.
pub(super) const MAILBOX_UPDATE: Write<Mailbox> = Write {
    sql: "UPDATE mailboxes SET credential_generation = credential_generation + \
          CASE WHEN ? IS NULL AND oidc_subject IS NOT NULL THEN 1 ELSE 0 END, \
          oidc_issuer = ?, oidc_subject = ?, display_name = ?, quota = ?, protocols = ?, \
          active = ?, template = ?, template_hash = ?, overrides = ?, updated_at = ? \
          WHERE address = ?",
    values: |m| {
        binds! {
            m.oidc_subject.as_deref(), m.oidc_issuer.as_deref(), m.oidc_subject.as_deref(),
            &m.display_name, m.quota, m.protocols.to_string(), m.state.code(),
            m.template.as_deref(), m.template_hash.as_deref(), m.overrides.to_string(),
            m.updated_at, &m.address,
        }
    },
};

pub(super) const APP_PASSWORDS: Select<AppPassword> = Select::new(
    "SELECT id, mailbox, name, protocols, networks, expires_at, created_at, \
     last_used_at, last_used_ip, last_used_service FROM app_passwords",
    "app passwords",
    app_password_from,
);

pub(super) fn app_password_from(r: &dyn Columns) -> Decoded<AppPassword> {
    app_password_at(r, 0)
}

decoder! {
    fn app_password_at(base) -> AppPassword {
        id: int, mailbox: text, name: text, protocols: protocols, networks: networks,
        expires_at: opt_int, created_at: int, last_used: last_use[3],
    }
}

pub(super) const APP_PASSWORD_INSERT: Write<NewAppPassword> = Write {
    sql: "INSERT INTO app_passwords (mailbox, name, lookup_hash, protocols, networks, expires_at, \
          created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
    values: |a| {
        binds! {
            &a.mailbox, &a.name, &a.lookup_hash, a.protocols.to_string(),
            format_networks(&a.networks), a.expires_at, a.created_at,
        }
    },
};

pub(super) const LOGIN_VIEW: Select<LoginView> = Select::hot(
    "SELECT m.address, m.password_hash, m.auth_source, m.protocols, m.active, d.active, m.quota, \
     m.identity_suspended_reason, m.last_sign_in_at \
     FROM mailboxes m JOIN domains d ON d.name = m.domain WHERE m.address = ?",
    "mailbox",
    login_view_from,
);

/// The columns [`LOGIN_VIEW`] reads, before those of the app password.
const LOGIN_VIEW_COLUMNS: usize = 9;

/// Binds the lookup hash, then the address.
pub(super) const LOGIN_VIEW_WITH_APP_PASSWORD: Select<(LoginView, Option<AppPassword>)> = Select::hot(
    "SELECT m.address, m.password_hash, m.auth_source, m.protocols, m.active, d.active, m.quota, \
     m.identity_suspended_reason, m.last_sign_in_at, a.id, a.mailbox, a.name, a.protocols, a.networks, a.expires_at, a.created_at, \
     a.last_used_at, a.last_used_ip, a.last_used_service \
     FROM mailboxes m JOIN domains d ON d.name = m.domain \
     LEFT JOIN app_passwords a ON a.lookup_hash = ? AND a.mailbox = m.address \
     WHERE m.address = ?",
    "mailbox",
    login_view_with_app_password_from,
);

/// [`LOGIN_VIEW`]'s columns for the mailbox bound to an identity-provider account: binds
/// the issuer, then the subject. The unique index on both makes it one row at most.
pub(super) const LOGIN_VIEW_BY_IDENTITY: Select<LoginView> = Select::hot(
    "SELECT m.address, m.password_hash, m.auth_source, m.protocols, m.active, d.active, m.quota, \
     m.identity_suspended_reason, m.last_sign_in_at \
     FROM mailboxes m JOIN domains d ON d.name = m.domain \
     WHERE m.oidc_issuer = ? AND m.oidc_subject = ?",
    "mailbox",
    login_view_from,
);

decoder! {
    fn login_view_from -> LoginView {
        address: text, password_hash: opt_text, auth_source: auth_source, protocols: protocols,
        state: state, domain_active: flag, quota: unsigned, identity_suspended: opt_text,
        last_sign_in_at: opt_int,
    }
}

pub(super) fn login_view_with_app_password_from(
    r: &dyn Columns,
) -> Decoded<(LoginView, Option<AppPassword>)> {
    let view = login_view_from(r)?;
    let app = match r.opt_int(LOGIN_VIEW_COLUMNS)? {
        Some(_) => Some(app_password_at(r, LOGIN_VIEW_COLUMNS)?),
        None => None,
    };
    Ok((view, app))
}

pub(super) const SESSION_VIEW: Select<SessionView> = Select::hot(
    "SELECT m.address, m.auth_source, m.oidc_issuer, m.oidc_subject, m.protocols, m.active, \
     d.active, m.credential_generation \
     FROM mailboxes m JOIN domains d ON d.name = m.domain WHERE m.address = ?",
    "mailbox",
    session_view_from,
);

decoder! {
    fn session_view_from -> SessionView {
        address: text, auth_source: auth_source, oidc_issuer: opt_text, oidc_subject: opt_text,
        protocols: protocols, state: state, domain_active: flag, credential_generation: int,
    }
}

whole_rows! {
    ALIASES, ALIAS_INSERT: Alias in "aliases" as "aliases",
    fn alias_from { address: text, target: text, domain: text, created_at: int }
}

whole_rows! {
    SEND_AS, SEND_AS_INSERT: SendAs in "send_as" as "send-as grants",
    fn send_as_from { mailbox: text, pattern: text, created_at: int }
}

pub(super) const SENDER_ACCOUNT: Select<SenderAccount> = Select::hot(
    "SELECT m.address, m.domain, m.active, m.protocols, d.active, l.limits \
     FROM mailboxes m JOIN domains d ON d.name = m.domain \
     LEFT JOIN template_send_limits l ON l.template = m.template \
     WHERE m.address = ?",
    "mailbox",
    sender_account_from,
);

decoder! {
    fn sender_account_from -> SenderAccount {
        address: text, domain: text, state: state, protocols: protocols, domain_active: flag,
        send_limits: opt_send_limits,
    }
}

/// Binds the name twice. `create_alias_domain` refuses names that are domains, so at most
/// one row comes back.
pub(super) const SERVED_DOMAIN: Select<ServedDomain> = Select::hot(
    "SELECT name, active, 0 FROM domains WHERE name = ? \
     UNION ALL SELECT target, active, 1 FROM alias_domains WHERE name = ?",
    "domain",
    served_domain_from,
);

pub(super) fn served_domain_from(r: &dyn Columns) -> Decoded<ServedDomain> {
    let active = r.flag(1)?;
    Ok(if r.int(2)? == 0 {
        ServedDomain::Domain { active }
    } else {
        ServedDomain::Alias {
            target: r.text(0)?,
            active,
        }
    })
}

/// Binds the address twice.
pub(super) const ADDRESS_EXISTS: Select<String> = Select::hot(
    "SELECT address FROM mailboxes WHERE address = ? \
     UNION ALL SELECT address FROM aliases WHERE address = ?",
    "address",
    first_text,
);

pub(super) const TEMPLATE_SEND_LIMITS: Select<SendLimits> = Select::hot(
    "SELECT limits FROM template_send_limits WHERE template = ?",
    "template send limits",
    send_limits_from,
);

pub(super) fn send_limits_from(r: &dyn Columns) -> Decoded<SendLimits> {
    r.send_limits(0)
}

/// A row of `send_permission`'s query: 0 and an alias, or 1 and a pattern.
pub(super) fn permission_row_from(r: &dyn Columns) -> Decoded<(i64, String)> {
    Ok((r.int(0)?, r.text(1)?))
}

pub(super) const LINKED_MAILBOXES: Select<LinkedMailbox> = Select::new(
    "SELECT address, oidc_issuer, oidc_subject, refresh_token, identity_suspended_at, \
     identity_suspended_reason FROM mailboxes",
    "mailbox",
    linked_mailbox_from,
);

decoder! {
    fn linked_mailbox_from -> LinkedMailbox {
        address: text, issuer: text, subject: text, sealed_refresh_token: opt_text,
        suspension: suspension[2],
    }
}

pub(super) const IDENTITY_STANDING: Select<IdentityStanding> = Select::new(
    "SELECT refresh_token, identity_suspended_at, identity_suspended_reason, \
     identity_checked_at, identity_answer, last_sign_in_at FROM mailboxes WHERE address = ?",
    "mailbox",
    identity_standing_from,
);

pub(super) fn identity_standing_from(r: &dyn Columns) -> Decoded<IdentityStanding> {
    Ok(IdentityStanding {
        has_refresh_token: r.opt_text(0)?.is_some_and(|t| !t.is_empty()),
        suspension: r.suspension(1)?,
        checked_at: r.opt_int(3)?,
        answer: r.opt_text(4)?,
        last_sign_in_at: r.opt_int(5)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_rows_name_the_columns_once_each_in_the_order_of_the_fields() {
        assert_eq!(
            ALIAS_DOMAINS.sql,
            "SELECT name, target, active, created_at FROM alias_domains"
        );
        assert_eq!(
            ALIAS_DOMAIN_INSERT.sql,
            "INSERT INTO alias_domains (name, target, active, created_at) VALUES (?, ?, ?, ?)"
        );
        assert_eq!(
            MAPPING_INSERT.sql,
            "INSERT INTO template_mappings (claim_value, position, template) VALUES (?, ?, ?)"
        );
        assert_eq!(
            SEND_AS.sql,
            "SELECT mailbox, pattern, created_at FROM send_as"
        );
        let grant = SendAs {
            mailbox: "a@example.org".into(),
            pattern: "*@example.org".into(),
            created_at: 7,
        };
        let values = SEND_AS_INSERT.values(&grant);
        assert!(matches!(
            values.as_slice(),
            [
                Param::Text("a@example.org"),
                Param::Text("*@example.org"),
                Param::Int(7)
            ]
        ));
    }
}
