//! The mailbox store: the traits domain code sees, and their one implementation over
//! SQLite, MariaDB/MySQL and PostgreSQL.
//!
//! # Who sees what
//!
//! [`Store`] is all of it; the daemon holds one `Arc<dyn Store>` and hands each part the
//! narrowest trait it needs:
//!
//! - [`LoginStore`]: the decision core (`auth/`) and its last-use writer. One read per
//!   login (mailbox, domain state and the app password in one query; for a bearer token,
//!   the mailbox bound to its identity), the hash upgrade after a login, the last-use
//!   records. The userdb door reads `login_view` too.
//! - [`PolicyStore`]: the sender policy (`policy.rs`). Four reads, each one query.
//! - [`IdentityStore`]: the identity-liveness check and the web sign-in: sealed refresh
//!   tokens, suspensions, the pass lease (`identity.rs`).
//! - [`Directory`]: the command line, provisioning and the web page, which read and change
//!   what is stored. It is made of one trait per group of tables, each implemented in its
//!   own file of `sql/`: [`Domains`], [`Templates`], [`Mailboxes`], [`AppPasswords`],
//!   [`Aliases`].
//! - [`SessionStore`]: the web page's sessions and the logout tokens it has seen, shared
//!   by every daemon on the database (`sessions.rs`).
//!
//! [`Store`] itself adds what concerns the database as a whole: [`Store::migrate`] and
//! [`Store::ping`]. The backend is chosen once from the URL ([`open`]); nothing outside
//! this module builds a query or asks which backend it is.
//!
//! # One SQL text over `sqlx::Any`, not a file per backend
//!
//! [`SqlStore`] runs the same SQL text on all three backends through sqlx's `Any` driver.
//! The schema is kept plain so that this works: TEXT and BIGINT columns, times as unix
//! seconds, states as small integers, no RETURNING, no upserts, no enums. What still
//! differs is small and named in one place, [`Dialect`]: PostgreSQL's numbered
//! placeholders (rewritten from `?`), row locks (`FOR UPDATE`, which SQLite has no need
//! of), the integer type of a cast, and SQLite's connection settings (WAL, busy timeout,
//! no ping before each query).
//!
//! A file per backend would hold some sixty statements three times over, to be kept in step
//! by hand. The queries that matter most are the subtle ones (the compare-and-set of
//! [`Mailboxes::update_mailbox_if`], the domain lock that makes limits hold under
//! concurrent sign-ins, the guard that keeps a late last-use record from overwriting a
//! newer one); a fix made in one copy and forgotten in another would show only on that
//! backend. With one text, the conformance suite (`tests/store.rs`, run on all three)
//! tests the very statements each backend runs.
//!
//! What `Any` costs, and how it is paid: no compile-time checked queries (`sqlx::query!`
//! needs one database at build time), so `tests/store.rs` checks every statement on every
//! backend instead; values limited to what `Any` carries, which the plain schema already
//! is; and no placeholder rewriting, which [`Dialect::rewrite_placeholders`] does. Where
//! the dialects differ most is DDL (`AUTOINCREMENT`, `SERIAL`, `AUTO_INCREMENT`): each
//! migration is still one text, with those differences written in braces (`{text 253}`,
//! `{now}`, …) that `migrate.rs` renders for the database at hand, and a test checks that
//! the three create the same tables, columns and indexes. The hot reads on SQLite
//! go around sqlx for speed (`sqlite_hot_reads`) but run the same SQL text and decoders.
//!
//! # Files
//!
//! - `sql/`: [`SqlStore`], one file per group of tables, plus connecting, sending
//!   statements and mapping errors;
//! - `rows.rs`: each table's columns, the decoders that read them and the values that
//!   fill them, which both drivers share; `param.rs`: a bound value;
//! - `sqlite_hot_reads.rs`: the hot reads on SQLite; `sqlite_snapshot.rs`: their rows,
//!   kept until the next commit;
//! - `guard.rs`: [`GuardedStore`], a deadline on every call of the running daemon;
//! - `records.rs`, `error.rs`, `domain_limits.rs`, `url.rs`: the values that cross the
//!   traits;
//! - `dialect.rs`, `migrate.rs` and `migrations/`.

mod dialect;
mod domain_limits;
mod error;
mod guard;
mod identity;
mod migrate;
mod param;
mod records;
mod rows;
mod sessions;
mod sql;
mod sqlite_hot_reads;
mod sqlite_snapshot;
mod url;

use std::time::Duration;

use async_trait::async_trait;

pub use dialect::Dialect;
pub use domain_limits::{LimitBreach, LimitCheck};
pub use error::{Record, Refusal, StoreError, StoreResult, UrlError};
pub use guard::GuardedStore;
pub use identity::IdentityStore;
pub use migrate::{applied_migrations, MIGRATIONS};
pub use records::*;
pub use sessions::*;
pub use sql::SqlStore;
pub use url::DatabaseUrl;

use crate::clock::UnixTime;

/// How the store connects; from the `[store]` config section. Read once at start-up: a
/// reload that changes any of it says the store waits for a restart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreOptions {
    pub url: DatabaseUrl,
    pub max_connections: u32,
    pub connect_timeout: Duration,
    /// How long one store call of the daemon may take on a network database.
    pub query_timeout: Duration,
}

/// Opens the backend the URL names. Does not migrate: see [`Store::migrate`].
pub async fn open(options: &StoreOptions) -> StoreResult<SqlStore> {
    SqlStore::connect(options).await
}

/// Everything, as the daemon holds it.
#[async_trait]
pub trait Store: LoginStore + PolicyStore + Directory + SessionStore + IdentityStore {
    /// Applies the migrations not applied yet; returns their names.
    async fn migrate(&self) -> StoreResult<Vec<String>>;
    async fn ping(&self) -> StoreResult<()>;
}

/// What the decision core reads and writes.
#[async_trait]
pub trait LoginStore: Send + Sync + 'static {
    /// Mailbox and domain state in one query.
    async fn login_view(&self, address: &str) -> StoreResult<Option<LoginView>>;
    /// [`LoginStore::login_view`] plus the app password with this lookup hash if it
    /// belongs to the same mailbox, in one query.
    async fn login_view_with_app_password(
        &self,
        address: &str,
        lookup_hash: &str,
    ) -> StoreResult<Option<(LoginView, Option<AppPassword>)>>;
    /// [`LoginStore::login_view`] of the mailbox bound to this identity-provider account
    /// (a bearer token's `iss` and `sub`), in one query; `None` when none is bound.
    async fn login_view_by_identity(
        &self,
        issuer: &str,
        subject: &str,
    ) -> StoreResult<Option<LoginView>>;
    /// Replaces the hash only if it is still `old`, so a rehash never undoes a password
    /// change that happened meanwhile. Returns whether it replaced. The same password in a
    /// new scheme: the credential generation stays.
    async fn replace_password_hash(&self, address: &str, old: &str, new: &str)
        -> StoreResult<bool>;
    /// Never moves a last use back in time, so a batch flushed late loses to a newer one.
    async fn record_last_use(&self, uses: &[LastUse]) -> StoreResult<()>;
}

/// What the sender policy reads.
#[async_trait]
pub trait PolicyStore: Send + Sync + 'static {
    /// The mailbox, its domain's state and its template's sending limits, in one query.
    async fn sender_account(&self, address: &str) -> StoreResult<Option<SenderAccount>>;
    /// Whether `domain` is served here, as a domain or as an alias domain.
    async fn served_domain(&self, domain: &str) -> StoreResult<Option<ServedDomain>>;
    /// Whether `address` (canonical) is a mailbox or an alias here, whoever it belongs to.
    async fn address_exists(&self, address: &str) -> StoreResult<bool>;
    /// An alias (with `mailbox` among its targets) or a send-as grant of `mailbox` that
    /// covers one of `addresses` (canonical), in one query of primary-key lookups. Grants
    /// match an address, its `@domain`, or `*`; with no addresses only `*` can match. An
    /// alias wins over a grant, an address grant over `@domain`, `@domain` over `*`.
    async fn send_permission(
        &self,
        mailbox: &str,
        addresses: &[String],
    ) -> StoreResult<Option<SendPermission>>;
}

/// What the command line, provisioning and the web page read and change.
pub trait Directory: Domains + Templates + Mailboxes + AppPasswords + Aliases {}

impl<T: Domains + Templates + Mailboxes + AppPasswords + Aliases + ?Sized> Directory for T {}

/// Domains and alias domains.
#[async_trait]
pub trait Domains: Send + Sync + 'static {
    async fn create_domain(&self, domain: &Domain) -> StoreResult<()>;
    async fn update_domain(&self, domain: &Domain) -> StoreResult<()>;
    async fn get_domain(&self, name: &str) -> StoreResult<Option<Domain>>;
    async fn list_domains(&self) -> StoreResult<Vec<Domain>>;
    async fn domain_usage(&self, name: &str) -> StoreResult<DomainUsage>;
    /// Refuses while the domain has mailboxes.
    async fn delete_domain(&self, name: &str) -> StoreResult<()>;
    /// Refuses a name that is a domain.
    async fn create_alias_domain(&self, alias: &AliasDomain) -> StoreResult<()>;
    async fn list_alias_domains(&self) -> StoreResult<Vec<AliasDomain>>;
    async fn delete_alias_domain(&self, name: &str) -> StoreResult<()>;
}

/// Templates, the mappings that pick one at sign-in, the default template, and each
/// template's sending limits.
#[async_trait]
pub trait Templates: Send + Sync + 'static {
    async fn create_template(&self, template: &Template) -> StoreResult<()>;
    async fn update_template(&self, template: &Template) -> StoreResult<()>;
    async fn get_template(&self, name: &str) -> StoreResult<Option<Template>>;
    async fn list_templates(&self) -> StoreResult<Vec<Template>>;
    /// Refuses the default template and one a mapping uses.
    async fn delete_template(&self, name: &str) -> StoreResult<()>;
    /// In the postmaster's order.
    async fn list_mappings(&self) -> StoreResult<Vec<Mapping>>;
    /// Adds the mapping, or replaces the one with its claim value.
    async fn put_mapping(&self, mapping: &Mapping) -> StoreResult<()>;
    async fn delete_mapping(&self, claim_value: &str) -> StoreResult<()>;
    async fn default_template(&self) -> StoreResult<Option<String>>;
    async fn set_default_template(&self, name: Option<&str>) -> StoreResult<()>;
    /// `None`: the template has no limits of its own and sends under the default.
    async fn template_send_limits(&self, template: &str) -> StoreResult<Option<SendLimits>>;
    /// `None` removes the template's own limits, so the default applies again.
    async fn set_template_send_limits(
        &self,
        template: &str,
        limits: Option<&SendLimits>,
        now: UnixTime,
    ) -> StoreResult<()>;
}

/// Mailboxes.
#[async_trait]
pub trait Mailboxes: Send + Sync + 'static {
    /// Refuses an address that is not in canonical form ([`crate::names::Address`]).
    async fn create_mailbox(&self, mailbox: &Mailbox, check: LimitCheck<'_>) -> StoreResult<()>;
    /// Writes everything but the password hash and auth source, which have their own methods.
    /// Unlinking the identity (issuer and subject set to none) bumps the credential generation.
    async fn update_mailbox(&self, mailbox: &Mailbox, check: LimitCheck<'_>) -> StoreResult<()>;
    /// [`Mailboxes::update_mailbox`] as a compare-and-set: writes only while the stored
    /// mailbox still has `expected`'s values in everything that method writes (and the same
    /// auth source), so two writers that read the same row cannot both win. `Ok(false)`:
    /// the row changed or went away meanwhile and nothing was written; read it again and
    /// decide again.
    async fn update_mailbox_if(
        &self,
        mailbox: &Mailbox,
        expected: &Mailbox,
        check: LimitCheck<'_>,
    ) -> StoreResult<bool>;
    async fn get_mailbox(&self, address: &str) -> StoreResult<Option<Mailbox>>;
    /// The mailbox bound to this identity-provider account, if any.
    async fn find_mailbox_by_oidc(
        &self,
        issuer: &str,
        subject: &str,
    ) -> StoreResult<Option<Mailbox>>;
    async fn list_mailboxes(&self, domain: Option<&str>) -> StoreResult<Vec<Mailbox>>;
    async fn delete_mailbox(&self, address: &str) -> StoreResult<()>;
    /// A new password: bumps the credential generation, ending page sessions.
    async fn set_password_hash(
        &self,
        address: &str,
        hash: Option<&str>,
        now: UnixTime,
    ) -> StoreResult<()>;
    /// Bumps the credential generation when the source changes.
    async fn set_auth_source(
        &self,
        address: &str,
        source: AuthSource,
        now: UnixTime,
    ) -> StoreResult<()>;
    /// The mailbox state a web page session is re-checked against, in one query.
    async fn session_view(&self, address: &str) -> StoreResult<Option<SessionView>>;
}

/// App passwords. The decision core finds them through
/// [`LoginStore::login_view_with_app_password`].
#[async_trait]
pub trait AppPasswords: Send + Sync + 'static {
    /// Returns the new app password's id.
    async fn create_app_password(&self, app_password: &NewAppPassword) -> StoreResult<i64>;
    async fn list_app_passwords(&self, mailbox: &str) -> StoreResult<Vec<AppPassword>>;
    /// Only `mailbox`'s own: another mailbox's id is not found.
    async fn delete_app_password(&self, mailbox: &str, id: i64) -> StoreResult<()>;
}

/// Aliases and send-as grants: the other addresses a mailbox receives at or sends as.
#[async_trait]
pub trait Aliases: Send + Sync + 'static {
    /// Refuses addresses that are not in canonical form.
    async fn add_alias(&self, alias: &Alias) -> StoreResult<()>;
    async fn list_aliases(&self, domain: Option<&str>) -> StoreResult<Vec<Alias>>;
    /// Every target of `address`, or only `target`; returns how many rows went.
    async fn delete_alias(&self, address: &str, target: Option<&str>) -> StoreResult<u64>;
    async fn grant_send_as(&self, grant: &SendAs) -> StoreResult<()>;
    async fn list_send_as(&self, mailbox: Option<&str>) -> StoreResult<Vec<SendAs>>;
    async fn revoke_send_as(&self, mailbox: &str, pattern: &str) -> StoreResult<()>;
}
