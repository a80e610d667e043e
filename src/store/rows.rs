//! Records as rows: for each table, the columns the store selects with the decoder that
//! reads them in that order, and the INSERT with the values it binds in its order.
//!
//! Keeping a column list and the code that reads or fills it side by side is what keeps
//! them in step; adding a column means changing this file and the migrations, and the
//! statements in `sql/` that change it. A decoder reads through [`Columns`], so one decoder
//! serves both ways a row is fetched: through sqlx (`AnyRow`, every backend) and through
//! the SQLite hot reads (`rusqlite::Row`, see `sqlite_hot_reads`).

use std::borrow::Cow;

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
}

impl Columns for AnyRow {
    fn text(&self, i: usize) -> Decoded<String> {
        Ok(self.try_get(i)?)
    }

    fn opt_text(&self, i: usize) -> Decoded<Option<String>> {
        Ok(self.try_get(i)?)
    }

    fn int(&self, i: usize) -> Decoded<i64> {
        Ok(self.try_get(i)?)
    }

    fn opt_int(&self, i: usize) -> Decoded<Option<i64>> {
        Ok(self.try_get(i)?)
    }
}

impl Columns for rusqlite::Row<'_> {
    fn text(&self, i: usize) -> Decoded<String> {
        Ok(self.get(i)?)
    }

    fn opt_text(&self, i: usize) -> Decoded<Option<String>> {
        Ok(self.get(i)?)
    }

    fn int(&self, i: usize) -> Decoded<i64> {
        Ok(self.get(i)?)
    }

    fn opt_int(&self, i: usize) -> Decoded<Option<i64>> {
        Ok(self.get(i)?)
    }
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

pub(super) fn domain_from(r: &dyn Columns) -> Decoded<Domain> {
    Ok(Domain {
        name: r.text(0)?,
        active: r.flag(1)?,
        max_mailboxes: r.opt_unsigned(2)?,
        max_quota: r.opt_unsigned(3)?,
        total_quota: r.opt_unsigned(4)?,
        created_at: r.int(5)?,
    })
}

pub(super) const DOMAIN_INSERT: Write<Domain> = Write {
    sql: "INSERT INTO domains (name, active, max_mailboxes, max_quota, total_quota, created_at, \
          lock_version) VALUES (?, ?, ?, ?, ?, ?, 0)",
    values: |d| {
        vec![
            (&d.name).into(),
            d.active.into(),
            d.max_mailboxes.into(),
            d.max_quota.into(),
            d.total_quota.into(),
            d.created_at.into(),
        ]
    },
};

/// Everything but the name and the creation time.
pub(super) const DOMAIN_UPDATE: Write<Domain> = Write {
    sql: "UPDATE domains SET active = ?, max_mailboxes = ?, max_quota = ?, total_quota = ? \
          WHERE name = ?",
    values: |d| {
        vec![
            d.active.into(),
            d.max_mailboxes.into(),
            d.max_quota.into(),
            d.total_quota.into(),
            (&d.name).into(),
        ]
    },
};

/// Mailbox count, quota sum, unlimited mailboxes: the usage query of `sql::domains`.
pub(super) fn usage_from(r: &dyn Columns) -> Decoded<DomainUsage> {
    Ok(DomainUsage {
        mailboxes: r.unsigned(0)?,
        quota_sum: r.unsigned(1)?,
        unlimited_mailboxes: r.unsigned(2)?,
    })
}

pub(super) const ALIAS_DOMAINS: Select<AliasDomain> = Select::new(
    "SELECT name, target, active, created_at FROM alias_domains",
    "alias domains",
    alias_domain_from,
);

pub(super) fn alias_domain_from(r: &dyn Columns) -> Decoded<AliasDomain> {
    Ok(AliasDomain {
        name: r.text(0)?,
        target: r.text(1)?,
        active: r.flag(2)?,
        created_at: r.int(3)?,
    })
}

pub(super) const ALIAS_DOMAIN_INSERT: Write<AliasDomain> = Write {
    sql: "INSERT INTO alias_domains (name, target, active, created_at) VALUES (?, ?, ?, ?)",
    values: |a| {
        vec![
            (&a.name).into(),
            (&a.target).into(),
            a.active.into(),
            a.created_at.into(),
        ]
    },
};

pub(super) const TEMPLATES: Select<Template> = Select::new(
    "SELECT name, quota, protocols, active, created_at, updated_at FROM templates",
    "template",
    template_from,
);

pub(super) fn template_from(r: &dyn Columns) -> Decoded<Template> {
    Ok(Template {
        name: r.text(0)?,
        quota: r.unsigned(1)?,
        protocols: r.protocols(2)?,
        state: r.state(3)?,
        created_at: r.int(4)?,
        updated_at: r.int(5)?,
    })
}

pub(super) const TEMPLATE_INSERT: Write<Template> = Write {
    sql: "INSERT INTO templates (name, quota, protocols, active, created_at, updated_at) \
          VALUES (?, ?, ?, ?, ?, ?)",
    values: |t| {
        vec![
            (&t.name).into(),
            t.quota.into(),
            t.protocols.to_string().into(),
            t.state.code().into(),
            t.created_at.into(),
            t.updated_at.into(),
        ]
    },
};

pub(super) const TEMPLATE_UPDATE: Write<Template> = Write {
    sql: "UPDATE templates SET quota = ?, protocols = ?, active = ?, updated_at = ? WHERE name = ?",
    values: |t| {
        vec![
            t.quota.into(),
            t.protocols.to_string().into(),
            t.state.code().into(),
            t.updated_at.into(),
            (&t.name).into(),
        ]
    },
};

pub(super) const MAPPINGS: Select<Mapping> = Select::new(
    "SELECT claim_value, position, template FROM template_mappings",
    "mappings",
    mapping_from,
);

pub(super) fn mapping_from(r: &dyn Columns) -> Decoded<Mapping> {
    Ok(Mapping {
        claim_value: r.text(0)?,
        position: r.int(1)?,
        template: r.text(2)?,
    })
}

pub(super) const MAPPING_INSERT: Write<Mapping> = Write {
    sql: "INSERT INTO template_mappings (claim_value, position, template) VALUES (?, ?, ?)",
    values: |m| {
        vec![
            (&m.claim_value).into(),
            m.position.into(),
            (&m.template).into(),
        ]
    },
};

pub(super) const MAILBOXES: Select<Mailbox> = Select::new(
    "SELECT address, domain, password_hash, auth_source, oidc_issuer, oidc_subject, \
     display_name, quota, protocols, active, template, template_hash, created_at, updated_at, \
     last_login_at, last_login_ip, last_login_service, overrides FROM mailboxes",
    "mailbox",
    mailbox_from,
);

pub(super) fn mailbox_from(r: &dyn Columns) -> Decoded<Mailbox> {
    Ok(Mailbox {
        address: r.text(0)?,
        domain: r.text(1)?,
        password_hash: r.opt_text(2)?,
        auth_source: r.auth_source(3)?,
        oidc_issuer: r.opt_text(4)?,
        oidc_subject: r.opt_text(5)?,
        display_name: r.text(6)?,
        quota: r.unsigned(7)?,
        protocols: r.protocols(8)?,
        state: r.state(9)?,
        template: r.opt_text(10)?,
        template_hash: r.opt_text(11)?,
        overrides: Overrides::from_stored(&r.text(17)?),
        created_at: r.int(12)?,
        updated_at: r.int(13)?,
        last_login: r.last_use(14)?,
    })
}

/// What a new mailbox starts with; its last login and credential generation start empty.
pub(super) const MAILBOX_INSERT: Write<Mailbox> = Write {
    sql: "INSERT INTO mailboxes (address, domain, password_hash, auth_source, oidc_issuer, \
          oidc_subject, display_name, quota, protocols, active, template, template_hash, \
          overrides, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    values: |m| {
        vec![
            (&m.address).into(),
            (&m.domain).into(),
            m.password_hash.as_deref().into(),
            m.auth_source.name().into(),
            m.oidc_issuer.as_deref().into(),
            m.oidc_subject.as_deref().into(),
            (&m.display_name).into(),
            m.quota.into(),
            m.protocols.to_string().into(),
            m.state.code().into(),
            m.template.as_deref().into(),
            m.template_hash.as_deref().into(),
            m.overrides.to_string().into(),
            m.created_at.into(),
            m.updated_at.into(),
        ]
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
        vec![
            m.oidc_subject.as_deref().into(),
            m.oidc_issuer.as_deref().into(),
            m.oidc_subject.as_deref().into(),
            (&m.display_name).into(),
            m.quota.into(),
            m.protocols.to_string().into(),
            m.state.code().into(),
            m.template.as_deref().into(),
            m.template_hash.as_deref().into(),
            m.overrides.to_string().into(),
            m.updated_at.into(),
            (&m.address).into(),
        ]
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

pub(super) const APP_PASSWORD_INSERT: Write<NewAppPassword> = Write {
    sql: "INSERT INTO app_passwords (mailbox, name, lookup_hash, protocols, networks, expires_at, \
          created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
    values: |a| {
        vec![
            (&a.mailbox).into(),
            (&a.name).into(),
            (&a.lookup_hash).into(),
            a.protocols.to_string().into(),
            format_networks(&a.networks).into(),
            a.expires_at.into(),
            a.created_at.into(),
        ]
    },
};

/// An app password whose columns start at `base` (joined queries put them after others).
fn app_password_at(r: &dyn Columns, base: usize) -> Decoded<AppPassword> {
    Ok(AppPassword {
        id: r.int(base)?,
        mailbox: r.text(base + 1)?,
        name: r.text(base + 2)?,
        protocols: r.protocols(base + 3)?,
        networks: parse_networks(&r.text(base + 4)?)?,
        expires_at: r.opt_int(base + 5)?,
        created_at: r.int(base + 6)?,
        last_used: r.last_use(base + 7)?,
    })
}

pub(super) const LOGIN_VIEW: Select<LoginView> = Select::hot(
    "SELECT m.address, m.password_hash, m.auth_source, m.protocols, m.active, d.active, m.quota, \
     m.identity_suspended_reason, m.last_sign_in_at \
     FROM mailboxes m JOIN domains d ON d.name = m.domain WHERE m.address = ?",
    "mailbox",
    login_view_from,
);

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

pub(super) fn login_view_from(r: &dyn Columns) -> Decoded<LoginView> {
    Ok(LoginView {
        address: r.text(0)?,
        password_hash: r.opt_text(1)?,
        auth_source: r.auth_source(2)?,
        protocols: r.protocols(3)?,
        state: r.state(4)?,
        domain_active: r.flag(5)?,
        quota: r.unsigned(6)?,
        identity_suspended: r.opt_text(7)?,
        last_sign_in_at: r.opt_int(8)?,
    })
}

pub(super) fn login_view_with_app_password_from(
    r: &dyn Columns,
) -> Decoded<(LoginView, Option<AppPassword>)> {
    let view = login_view_from(r)?;
    let app = match r.opt_int(9)? {
        Some(_) => Some(app_password_at(r, 9)?),
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

pub(super) fn session_view_from(r: &dyn Columns) -> Decoded<SessionView> {
    Ok(SessionView {
        address: r.text(0)?,
        auth_source: r.auth_source(1)?,
        oidc_issuer: r.opt_text(2)?,
        oidc_subject: r.opt_text(3)?,
        protocols: r.protocols(4)?,
        state: r.state(5)?,
        domain_active: r.flag(6)?,
        credential_generation: r.int(7)?,
    })
}

pub(super) const ALIASES: Select<Alias> = Select::new(
    "SELECT address, target, domain, created_at FROM aliases",
    "aliases",
    alias_from,
);

pub(super) fn alias_from(r: &dyn Columns) -> Decoded<Alias> {
    Ok(Alias {
        address: r.text(0)?,
        target: r.text(1)?,
        domain: r.text(2)?,
        created_at: r.int(3)?,
    })
}

pub(super) const ALIAS_INSERT: Write<Alias> = Write {
    sql: "INSERT INTO aliases (address, target, domain, created_at) VALUES (?, ?, ?, ?)",
    values: |a| {
        vec![
            (&a.address).into(),
            (&a.target).into(),
            (&a.domain).into(),
            a.created_at.into(),
        ]
    },
};

pub(super) const SEND_AS: Select<SendAs> = Select::new(
    "SELECT mailbox, pattern, created_at FROM send_as",
    "send-as grants",
    send_as_from,
);

pub(super) fn send_as_from(r: &dyn Columns) -> Decoded<SendAs> {
    Ok(SendAs {
        mailbox: r.text(0)?,
        pattern: r.text(1)?,
        created_at: r.int(2)?,
    })
}

pub(super) const SEND_AS_INSERT: Write<SendAs> = Write {
    sql: "INSERT INTO send_as (mailbox, pattern, created_at) VALUES (?, ?, ?)",
    values: |g| {
        vec![
            (&g.mailbox).into(),
            (&g.pattern).into(),
            g.created_at.into(),
        ]
    },
};

pub(super) const SENDER_ACCOUNT: Select<SenderAccount> = Select::hot(
    "SELECT m.address, m.domain, m.active, m.protocols, d.active, l.limits \
     FROM mailboxes m JOIN domains d ON d.name = m.domain \
     LEFT JOIN template_send_limits l ON l.template = m.template \
     WHERE m.address = ?",
    "mailbox",
    sender_account_from,
);

pub(super) fn sender_account_from(r: &dyn Columns) -> Decoded<SenderAccount> {
    let limits = r.opt_text(5)?;
    Ok(SenderAccount {
        address: r.text(0)?,
        domain: r.text(1)?,
        state: r.state(2)?,
        protocols: r.protocols(3)?,
        domain_active: r.flag(4)?,
        send_limits: limits.as_deref().map(send_limits_of).transpose()?,
    })
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
    send_limits_of(&r.text(0)?)
}

fn send_limits_of(text: &str) -> Decoded<SendLimits> {
    text.parse().map_err(RowError::SendLimits)
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

pub(super) fn linked_mailbox_from(r: &dyn Columns) -> Decoded<LinkedMailbox> {
    Ok(LinkedMailbox {
        address: r.text(0)?,
        issuer: r.text(1)?,
        subject: r.text(2)?,
        sealed_refresh_token: r.opt_text(3)?,
        suspension: suspension_at(r, 4)?,
    })
}

/// A suspension's time and reason at `base` and `base + 1`; none when the time is null.
fn suspension_at(r: &dyn Columns, base: usize) -> Decoded<Option<Suspension>> {
    Ok(match r.opt_int(base)? {
        Some(at) => Some(Suspension {
            at,
            reason: r.opt_text(base + 1)?.unwrap_or_default(),
        }),
        None => None,
    })
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
        suspension: suspension_at(r, 1)?,
        checked_at: r.opt_int(3)?,
        answer: r.opt_text(4)?,
        last_sign_in_at: r.opt_int(5)?,
    })
}
