//! A deadline for every store call of the running daemon, on network databases.
//!
//! A database that hangs (a frozen server, a network that drops packets) leaves sqlx
//! waiting on its connections for as long as TCP does: logins would hang with it, and the
//! connections they hold would keep the pool full after the database is back. Here every
//! call ends within `query_timeout` with [`StoreError::TimedOut`] (a temporary failure,
//! never "wrong password"), and a call that timed out or lost its connection tells the
//! store, which then retires every connection opened before it (see
//! `SqlStore::connection_trouble`): the next login gets a fresh connection at once instead
//! of waiting for each dead one to time out in turn.

use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;

use super::{
    Alias, AliasDomain, Aliases, AppPassword, AppPasswords, AuthSource, Dialect, Domain,
    DomainUsage, Domains, IdentityStanding, IdentityStore, LastUse, LimitCheck, LinkedMailbox,
    LoginStore, LoginView, Mailbox, Mailboxes, Mapping, NewAppPassword, PolicyStore, SendAs,
    SendLimits, SendPermission, SenderAccount, ServedDomain, SessionView, SqlStore, Store,
    StoreError, StoreResult, Template, Templates,
};
use super::{PendingSignInRecord, ProviderSessions, SessionScope, SessionStore, Swept, WebSession};
use crate::clock::UnixTime;

/// [`SqlStore`] with a deadline on every call.
pub struct GuardedStore {
    inner: SqlStore,
    /// `None` on SQLite: a local file does not hang, and its lock waits have their own
    /// timeout (busy_timeout).
    limit: Option<Duration>,
}

impl GuardedStore {
    pub fn new(inner: SqlStore, limit: Duration) -> Self {
        let limit = (inner.dialect() != Dialect::Sqlite).then_some(limit);
        GuardedStore { inner, limit }
    }

    pub fn inner(&self) -> &SqlStore {
        &self.inner
    }

    pub async fn close(&self) {
        self.inner.close().await;
    }

    async fn within<T>(&self, call: impl Future<Output = StoreResult<T>>) -> StoreResult<T> {
        let Some(limit) = self.limit else {
            return call.await;
        };
        // Pinned here, so the call (and the connection it holds) is dropped only after
        // the store has been told: its connection is then retired, not pinged.
        let mut call = std::pin::pin!(call);
        match tokio::time::timeout(limit, &mut call).await {
            Ok(Err(e)) if e.is_unavailable() => {
                self.inner.connection_trouble();
                Err(e)
            }
            Ok(result) => result,
            Err(_) => {
                self.inner.connection_trouble();
                Err(StoreError::TimedOut(limit))
            }
        }
    }
}

#[async_trait]
impl Store for GuardedStore {
    async fn migrate(&self) -> StoreResult<Vec<String>> {
        // Migrations may take long; they run before the daemon serves anything.
        self.inner.migrate().await
    }

    async fn ping(&self) -> StoreResult<()> {
        self.within(self.inner.ping()).await
    }
}

/// Implements a store trait for [`GuardedStore`]: for each method, given by its name, its
/// arguments and what it returns, a method that calls the inner store's method of the same
/// name within [`GuardedStore::within`].
macro_rules! within_deadline {
    ($trait:ident { $($name:ident($($arg:ident: $ty:ty),*) -> $ret:ty;)* }) => {
        #[async_trait]
        impl $trait for GuardedStore {
            $(
                async fn $name(&self $(, $arg: $ty)*) -> StoreResult<$ret> {
                    self.within(self.inner.$name($($arg),*)).await
                }
            )*
        }
    };
}

within_deadline!(LoginStore {
    login_view(address: &str) -> Option<LoginView>;
    login_view_with_app_password(address: &str, lookup_hash: &str)
        -> Option<(LoginView, Option<AppPassword>)>;
    login_view_by_identity(issuer: &str, subject: &str) -> Option<LoginView>;
    replace_password_hash(address: &str, old: &str, new: &str) -> bool;
    record_last_use(uses: &[LastUse]) -> ();
});

within_deadline!(PolicyStore {
    sender_account(address: &str) -> Option<SenderAccount>;
    served_domain(domain: &str) -> Option<ServedDomain>;
    address_exists(address: &str) -> bool;
    send_permission(mailbox: &str, addresses: &[String]) -> Option<SendPermission>;
});

within_deadline!(Domains {
    create_domain(domain: &Domain) -> ();
    update_domain(domain: &Domain) -> ();
    get_domain(name: &str) -> Option<Domain>;
    list_domains() -> Vec<Domain>;
    domain_usage(name: &str) -> DomainUsage;
    delete_domain(name: &str) -> ();
    create_alias_domain(alias: &AliasDomain) -> ();
    list_alias_domains() -> Vec<AliasDomain>;
    delete_alias_domain(name: &str) -> ();
});

within_deadline!(Templates {
    create_template(template: &Template) -> ();
    update_template(template: &Template) -> ();
    get_template(name: &str) -> Option<Template>;
    list_templates() -> Vec<Template>;
    delete_template(name: &str) -> ();
    list_mappings() -> Vec<Mapping>;
    put_mapping(mapping: &Mapping) -> ();
    delete_mapping(claim_value: &str) -> ();
    default_template() -> Option<String>;
    set_default_template(name: Option<&str>) -> ();
    template_send_limits(template: &str) -> Option<SendLimits>;
    set_template_send_limits(template: &str, limits: Option<&SendLimits>, now: UnixTime) -> ();
});

within_deadline!(Mailboxes {
    create_mailbox(mailbox: &Mailbox, check: LimitCheck<'_>) -> ();
    update_mailbox(mailbox: &Mailbox, check: LimitCheck<'_>) -> ();
    update_mailbox_if(mailbox: &Mailbox, expected: &Mailbox, check: LimitCheck<'_>) -> bool;
    get_mailbox(address: &str) -> Option<Mailbox>;
    find_mailbox_by_oidc(issuer: &str, subject: &str) -> Option<Mailbox>;
    list_mailboxes(domain: Option<&str>) -> Vec<Mailbox>;
    delete_mailbox(address: &str) -> ();
    set_password_hash(address: &str, hash: Option<&str>, now: UnixTime) -> ();
    set_auth_source(address: &str, source: AuthSource, now: UnixTime) -> ();
    session_view(address: &str) -> Option<SessionView>;
});

within_deadline!(AppPasswords {
    create_app_password(app_password: &NewAppPassword) -> i64;
    list_app_passwords(mailbox: &str) -> Vec<AppPassword>;
    delete_app_password(mailbox: &str, id: i64) -> ();
});

within_deadline!(Aliases {
    add_alias(alias: &Alias) -> ();
    list_aliases(domain: Option<&str>) -> Vec<Alias>;
    delete_alias(address: &str, target: Option<&str>) -> u64;
    grant_send_as(grant: &SendAs) -> ();
    list_send_as(mailbox: Option<&str>) -> Vec<SendAs>;
    revoke_send_as(mailbox: &str, pattern: &str) -> ();
});

within_deadline!(SessionStore {
    create_web_session(digest: &str, session: &WebSession) -> ();
    web_session(digest: &str, now: UnixTime) -> Option<WebSession>;
    set_session_pending(digest: &str, pending: &PendingSignInRecord, now: UnixTime) -> bool;
    take_session_pending(digest: &str, now: UnixTime) -> Option<PendingSignInRecord>;
    set_session_notice(digest: &str, notice: &str, now: UnixTime) -> bool;
    take_session_notice(digest: &str) -> Option<String>;
    delete_web_session(digest: &str) -> ();
    end_provider_sessions(which: ProviderSessions<'_>) -> u64;
    trim_web_sessions(scope: SessionScope<'_>, keep: u64) -> u64;
    sweep_expired(now: UnixTime, batch: u64) -> Swept;
    record_logout_token(issuer: &str, jti: &str, expires_at: UnixTime) -> bool;
    logout_once(jti: &str, remember_until: UnixTime, which: ProviderSessions<'_>) -> Option<u64>;
});

within_deadline!(IdentityStore {
    linked_mailboxes(address: Option<&str>) -> Vec<LinkedMailbox>;
    store_refresh_token(address: &str, sealed: Option<&str>) -> ();
    record_sign_in(address: &str, at: UnixTime, sealed: Option<&str>) -> ();
    record_identity_check(address: &str, at: UnixTime, answer: &str) -> ();
    suspend_identity(address: &str, reason: &str, at: UnixTime) -> bool;
    identity_standing(address: &str) -> Option<IdentityStanding>;
    take_check_lease(holder: &str, now: UnixTime, until: UnixTime) -> bool;
    release_check_lease(holder: &str) -> ();
});
