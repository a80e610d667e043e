//! A deadline for every store call of the running daemon, on network databases.
//!
//! A database that hangs (a frozen server, a network that drops packets) leaves sqlx
//! waiting on its connections for as long as TCP does: logins would hang with it, and the
//! connections they hold would keep the pool full after the database is back. Here every
//! call ends within `query_timeout` with [`StoreError::Unavailable`] (a temporary failure,
//! never "wrong password"), and a call that timed out or lost its connection tells the
//! store, which then retires every connection opened before it (see
//! `SqlStore::connection_trouble`): the next login gets a fresh connection at once instead
//! of waiting for each dead one to time out in turn.

use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;

use super::{
    Alias, AliasDomain, Aliases, AppPassword, AppPasswords, AuthSource, Domain, DomainUsage,
    Domains, LastUse, LimitCheck, LoginStore, LoginView, Mailbox, Mailboxes, Mapping,
    NewAppPassword, PolicyStore, SendAs, SendLimits, SendPermission, SenderAccount, ServedDomain,
    SessionView, SqlStore, Store, StoreError, StoreResult, Template, Templates,
};
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
        let limit = (inner.dialect() != super::Dialect::Sqlite).then_some(limit);
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
                Err(StoreError::Unavailable(format!(
                    "the database did not answer within {} ms",
                    limit.as_millis()
                )))
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

#[async_trait]
impl LoginStore for GuardedStore {
    async fn login_view(&self, address: &str) -> StoreResult<Option<LoginView>> {
        self.within(self.inner.login_view(address)).await
    }

    async fn login_view_with_app_password(
        &self,
        address: &str,
        lookup_hash: &str,
    ) -> StoreResult<Option<(LoginView, Option<AppPassword>)>> {
        self.within(
            self.inner
                .login_view_with_app_password(address, lookup_hash),
        )
        .await
    }

    async fn replace_password_hash(
        &self,
        address: &str,
        old: &str,
        new: &str,
    ) -> StoreResult<bool> {
        self.within(self.inner.replace_password_hash(address, old, new))
            .await
    }

    async fn record_last_use(&self, uses: &[LastUse]) -> StoreResult<()> {
        self.within(self.inner.record_last_use(uses)).await
    }
}

#[async_trait]
impl PolicyStore for GuardedStore {
    async fn sender_account(&self, address: &str) -> StoreResult<Option<SenderAccount>> {
        self.within(self.inner.sender_account(address)).await
    }

    async fn served_domain(&self, domain: &str) -> StoreResult<Option<ServedDomain>> {
        self.within(self.inner.served_domain(domain)).await
    }

    async fn address_exists(&self, address: &str) -> StoreResult<bool> {
        self.within(self.inner.address_exists(address)).await
    }

    async fn send_permission(
        &self,
        mailbox: &str,
        addresses: &[String],
    ) -> StoreResult<Option<SendPermission>> {
        self.within(self.inner.send_permission(mailbox, addresses))
            .await
    }
}

#[async_trait]
impl Domains for GuardedStore {
    async fn create_domain(&self, domain: &Domain) -> StoreResult<()> {
        self.within(self.inner.create_domain(domain)).await
    }

    async fn update_domain(&self, domain: &Domain) -> StoreResult<()> {
        self.within(self.inner.update_domain(domain)).await
    }

    async fn get_domain(&self, name: &str) -> StoreResult<Option<Domain>> {
        self.within(self.inner.get_domain(name)).await
    }

    async fn list_domains(&self) -> StoreResult<Vec<Domain>> {
        self.within(self.inner.list_domains()).await
    }

    async fn domain_usage(&self, name: &str) -> StoreResult<DomainUsage> {
        self.within(self.inner.domain_usage(name)).await
    }

    async fn delete_domain(&self, name: &str) -> StoreResult<()> {
        self.within(self.inner.delete_domain(name)).await
    }

    async fn create_alias_domain(&self, alias: &AliasDomain) -> StoreResult<()> {
        self.within(self.inner.create_alias_domain(alias)).await
    }

    async fn list_alias_domains(&self) -> StoreResult<Vec<AliasDomain>> {
        self.within(self.inner.list_alias_domains()).await
    }

    async fn delete_alias_domain(&self, name: &str) -> StoreResult<()> {
        self.within(self.inner.delete_alias_domain(name)).await
    }
}

#[async_trait]
impl Templates for GuardedStore {
    async fn create_template(&self, template: &Template) -> StoreResult<()> {
        self.within(self.inner.create_template(template)).await
    }

    async fn update_template(&self, template: &Template) -> StoreResult<()> {
        self.within(self.inner.update_template(template)).await
    }

    async fn get_template(&self, name: &str) -> StoreResult<Option<Template>> {
        self.within(self.inner.get_template(name)).await
    }

    async fn list_templates(&self) -> StoreResult<Vec<Template>> {
        self.within(self.inner.list_templates()).await
    }

    async fn delete_template(&self, name: &str) -> StoreResult<()> {
        self.within(self.inner.delete_template(name)).await
    }

    async fn list_mappings(&self) -> StoreResult<Vec<Mapping>> {
        self.within(self.inner.list_mappings()).await
    }

    async fn put_mapping(&self, mapping: &Mapping) -> StoreResult<()> {
        self.within(self.inner.put_mapping(mapping)).await
    }

    async fn delete_mapping(&self, claim_value: &str) -> StoreResult<()> {
        self.within(self.inner.delete_mapping(claim_value)).await
    }

    async fn default_template(&self) -> StoreResult<Option<String>> {
        self.within(self.inner.default_template()).await
    }

    async fn set_default_template(&self, name: Option<&str>) -> StoreResult<()> {
        self.within(self.inner.set_default_template(name)).await
    }

    async fn template_send_limits(&self, template: &str) -> StoreResult<Option<SendLimits>> {
        self.within(self.inner.template_send_limits(template)).await
    }

    async fn set_template_send_limits(
        &self,
        template: &str,
        limits: Option<&SendLimits>,
        now: UnixTime,
    ) -> StoreResult<()> {
        self.within(self.inner.set_template_send_limits(template, limits, now))
            .await
    }
}

#[async_trait]
impl Mailboxes for GuardedStore {
    async fn create_mailbox(&self, mailbox: &Mailbox, check: LimitCheck<'_>) -> StoreResult<()> {
        self.within(self.inner.create_mailbox(mailbox, check)).await
    }

    async fn update_mailbox(&self, mailbox: &Mailbox, check: LimitCheck<'_>) -> StoreResult<()> {
        self.within(self.inner.update_mailbox(mailbox, check)).await
    }

    async fn update_mailbox_if(
        &self,
        mailbox: &Mailbox,
        expected: &Mailbox,
        check: LimitCheck<'_>,
    ) -> StoreResult<bool> {
        self.within(self.inner.update_mailbox_if(mailbox, expected, check))
            .await
    }

    async fn get_mailbox(&self, address: &str) -> StoreResult<Option<Mailbox>> {
        self.within(self.inner.get_mailbox(address)).await
    }

    async fn find_mailbox_by_oidc(
        &self,
        issuer: &str,
        subject: &str,
    ) -> StoreResult<Option<Mailbox>> {
        self.within(self.inner.find_mailbox_by_oidc(issuer, subject))
            .await
    }

    async fn list_mailboxes(&self, domain: Option<&str>) -> StoreResult<Vec<Mailbox>> {
        self.within(self.inner.list_mailboxes(domain)).await
    }

    async fn delete_mailbox(&self, address: &str) -> StoreResult<()> {
        self.within(self.inner.delete_mailbox(address)).await
    }

    async fn set_password_hash(
        &self,
        address: &str,
        hash: Option<&str>,
        now: UnixTime,
    ) -> StoreResult<()> {
        self.within(self.inner.set_password_hash(address, hash, now))
            .await
    }

    async fn set_auth_source(
        &self,
        address: &str,
        source: AuthSource,
        now: UnixTime,
    ) -> StoreResult<()> {
        self.within(self.inner.set_auth_source(address, source, now))
            .await
    }

    async fn session_view(&self, address: &str) -> StoreResult<Option<SessionView>> {
        self.within(self.inner.session_view(address)).await
    }
}

#[async_trait]
impl AppPasswords for GuardedStore {
    async fn create_app_password(&self, app_password: &NewAppPassword) -> StoreResult<i64> {
        self.within(self.inner.create_app_password(app_password))
            .await
    }

    async fn list_app_passwords(&self, mailbox: &str) -> StoreResult<Vec<AppPassword>> {
        self.within(self.inner.list_app_passwords(mailbox)).await
    }

    async fn delete_app_password(&self, mailbox: &str, id: i64) -> StoreResult<()> {
        self.within(self.inner.delete_app_password(mailbox, id))
            .await
    }
}

#[async_trait]
impl Aliases for GuardedStore {
    async fn add_alias(&self, alias: &Alias) -> StoreResult<()> {
        self.within(self.inner.add_alias(alias)).await
    }

    async fn list_aliases(&self, domain: Option<&str>) -> StoreResult<Vec<Alias>> {
        self.within(self.inner.list_aliases(domain)).await
    }

    async fn delete_alias(&self, address: &str, target: Option<&str>) -> StoreResult<u64> {
        self.within(self.inner.delete_alias(address, target)).await
    }

    async fn grant_send_as(&self, grant: &SendAs) -> StoreResult<()> {
        self.within(self.inner.grant_send_as(grant)).await
    }

    async fn list_send_as(&self, mailbox: Option<&str>) -> StoreResult<Vec<SendAs>> {
        self.within(self.inner.list_send_as(mailbox)).await
    }

    async fn revoke_send_as(&self, mailbox: &str, pattern: &str) -> StoreResult<()> {
        self.within(self.inner.revoke_send_as(mailbox, pattern))
            .await
    }
}
