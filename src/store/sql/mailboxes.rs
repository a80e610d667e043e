//! The `mailboxes` table: creating and changing mailboxes under their domain's lock, and
//! the reads of the CLI and the web page.

use async_trait::async_trait;

use super::super::rows::{MAILBOXES, MAILBOX_INSERT, MAILBOX_UPDATE, SESSION_VIEW};
use super::super::{
    AuthSource, LimitCheck, Mailbox, Mailboxes, Record, Refusal, SessionView, StoreError,
    StoreResult,
};
use super::domains::lock_domain;
use super::errors::{found, SqlxResult};
use super::statement::{self, Rows};
use super::{where_equal, SqlStore};
use crate::clock::UnixTime;
use crate::names::Address;

impl SqlStore {
    /// Writes a mailbox's changeable fields, in the transaction that holds its domain's
    /// lock. With `expected`, only while the stored row still agrees with it (a
    /// compare-and-set): every mailbox write takes the domain lock first, so the row read
    /// here cannot change before the write. Returns whether it wrote.
    async fn write_mailbox(
        &self,
        m: &Mailbox,
        expected: Option<&Mailbox>,
        check: LimitCheck<'_>,
    ) -> StoreResult<bool> {
        let mut tx = self.pool.begin().await.context("mailbox")?;
        let (domain, usage) =
            lock_domain(&mut tx, self.dialect, &m.domain, Some(&m.address)).await?;
        if let Some(expected) = expected {
            let select = MAILBOXES.with(&format!("WHERE address = ?{}", self.dialect.for_update()));
            let params = [(&m.address).into()];
            let rows = statement::fetch(&mut *tx, self.dialect, &select, &params, Rows::First);
            let current = rows.await?.pop();
            if !current.is_some_and(|c| same_writable_fields(&c, expected)) {
                return Ok(false);
            }
        }
        check(&domain, &usage).map_err(StoreError::Limit)?;
        let values = MAILBOX_UPDATE.values(m);
        let changed = statement::execute(&mut *tx, self.dialect, MAILBOX_UPDATE.sql, &values)
            .await
            .writing(mailbox(&m.address))?;
        found(changed, mailbox(&m.address))?;
        tx.commit().await.context("mailbox")?;
        Ok(true)
    }
}

#[async_trait]
impl Mailboxes for SqlStore {
    async fn create_mailbox(&self, m: &Mailbox, check: LimitCheck<'_>) -> StoreResult<()> {
        canonical_address(&m.address, "mailbox")?;
        let mut tx = self.pool.begin().await.context("mailbox")?;
        let (domain, usage) = lock_domain(&mut tx, self.dialect, &m.domain, None).await?;
        check(&domain, &usage).map_err(StoreError::Limit)?;
        let values = MAILBOX_INSERT.values(m);
        statement::execute(&mut *tx, self.dialect, MAILBOX_INSERT.sql, &values)
            .await
            .writing(Record::Mailbox(m.address.clone()))?;
        tx.commit().await.context("mailbox")
    }

    async fn update_mailbox(&self, m: &Mailbox, check: LimitCheck<'_>) -> StoreResult<()> {
        self.write_mailbox(m, None, check).await.map(|_| ())
    }

    async fn update_mailbox_if(
        &self,
        m: &Mailbox,
        expected: &Mailbox,
        check: LimitCheck<'_>,
    ) -> StoreResult<bool> {
        self.write_mailbox(m, Some(expected), check).await
    }

    async fn get_mailbox(&self, address: &str) -> StoreResult<Option<Mailbox>> {
        self.fetch_optional(&MAILBOXES.with("WHERE address = ?"), &[address.into()])
            .await
    }

    async fn find_mailbox_by_oidc(
        &self,
        issuer: &str,
        subject: &str,
    ) -> StoreResult<Option<Mailbox>> {
        let select = MAILBOXES.with("WHERE oidc_issuer = ? AND oidc_subject = ?");
        self.fetch_optional(&select, &[issuer.into(), subject.into()])
            .await
    }

    async fn list_mailboxes(&self, domain: Option<&str>) -> StoreResult<Vec<Mailbox>> {
        let (filter, params) = where_equal("domain", domain);
        let select = MAILBOXES.with(&format!("{filter}ORDER BY address"));
        self.fetch_all(&select, &params).await
    }

    async fn delete_mailbox(&self, address: &str) -> StoreResult<()> {
        let sql = "DELETE FROM mailboxes WHERE address = ?";
        self.change(sql, &[address.into()], mailbox(address)).await
    }

    async fn set_password_hash(
        &self,
        address: &str,
        hash: Option<&str>,
        now: UnixTime,
    ) -> StoreResult<()> {
        let sql = "UPDATE mailboxes SET password_hash = ?, updated_at = ?, \
                   credential_generation = credential_generation + 1 WHERE address = ?";
        let params = [hash.into(), now.into(), address.into()];
        self.change(sql, &params, mailbox(address)).await
    }

    async fn set_auth_source(
        &self,
        address: &str,
        source: AuthSource,
        now: UnixTime,
    ) -> StoreResult<()> {
        let sql = "UPDATE mailboxes SET credential_generation = credential_generation + \
                   CASE WHEN auth_source = ? THEN 0 ELSE 1 END, \
                   auth_source = ?, updated_at = ? WHERE address = ?";
        let name = source.name();
        let params = [name.into(), name.into(), now.into(), address.into()];
        self.change(sql, &params, mailbox(address)).await
    }

    async fn session_view(&self, address: &str) -> StoreResult<Option<SessionView>> {
        self.fetch_optional(&SESSION_VIEW, &[address.into()]).await
    }
}

fn mailbox(address: &str) -> Record {
    Record::Mailbox(address.to_string())
}

/// The store writes addresses only in the form [`Address::parse`] gives them, so no other
/// way in (an import, a future caller) can create a mailbox that two spellings reach.
pub(super) fn canonical_address(address: &str, role: &'static str) -> StoreResult<()> {
    match Address::parse(address) {
        Ok(a) if a.as_str() == address => Ok(()),
        Ok(a) => Err(StoreError::Refused(Refusal::NotCanonical {
            role,
            address: address.to_string(),
            canonical: a.to_string(),
        })),
        Err(reason) => Err(StoreError::Refused(Refusal::BadAddress { role, reason })),
    }
}

/// Whether two mailbox rows agree on everything [`SqlStore::write_mailbox`] writes, and on
/// the auth source, which decides whether a sign-in may write at all.
fn same_writable_fields(a: &Mailbox, b: &Mailbox) -> bool {
    a.oidc_issuer == b.oidc_issuer
        && a.oidc_subject == b.oidc_subject
        && a.display_name == b.display_name
        && a.quota == b.quota
        && a.protocols == b.protocols
        && a.state == b.state
        && a.template == b.template
        && a.template_hash == b.template_hash
        && a.overrides == b.overrides
        && a.auth_source == b.auth_source
}
