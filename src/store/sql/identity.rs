//! The identity-liveness columns of `mailboxes` and the `identity_check_lease` row.

use async_trait::async_trait;

use super::super::rows::{IDENTITY_STANDING, LINKED_MAILBOXES};
use super::super::{IdentityStanding, IdentityStore, LinkedMailbox, Record, StoreResult};
use super::errors::SqlxResult;
use super::{where_equal, SqlStore};
use crate::clock::UnixTime;

const LEASE: &str = "liveness";

#[async_trait]
impl IdentityStore for SqlStore {
    async fn linked_mailboxes(&self, address: Option<&str>) -> StoreResult<Vec<LinkedMailbox>> {
        let (filter, params) = where_equal("address", address);
        let filter = if filter.is_empty() {
            "WHERE ".to_string()
        } else {
            format!("{filter}AND ")
        };
        let select = LINKED_MAILBOXES.with(&format!(
            "{filter}oidc_issuer IS NOT NULL AND oidc_subject IS NOT NULL ORDER BY address"
        ));
        self.fetch_all(&select, &params).await
    }

    async fn store_refresh_token(&self, address: &str, sealed: Option<&str>) -> StoreResult<()> {
        let sql = "UPDATE mailboxes SET refresh_token = ? WHERE address = ?";
        let params = [sealed.into(), address.into()];
        self.change(sql, &params, mailbox(address)).await
    }

    async fn record_sign_in(
        &self,
        address: &str,
        at: UnixTime,
        sealed: Option<&str>,
    ) -> StoreResult<()> {
        let sql = "UPDATE mailboxes SET last_sign_in_at = ?, identity_suspended_at = NULL, \
                   identity_suspended_reason = NULL, \
                   refresh_token = CASE WHEN ? IS NULL THEN refresh_token ELSE ? END \
                   WHERE address = ?";
        let params = [at.into(), sealed.into(), sealed.into(), address.into()];
        self.change(sql, &params, mailbox(address)).await
    }

    async fn record_identity_check(
        &self,
        address: &str,
        at: UnixTime,
        answer: &str,
    ) -> StoreResult<()> {
        let sql = "UPDATE mailboxes SET identity_checked_at = ?, identity_answer = ? \
                   WHERE address = ?";
        let params = [at.into(), answer.into(), address.into()];
        self.change(sql, &params, mailbox(address)).await
    }

    async fn suspend_identity(
        &self,
        address: &str,
        reason: &str,
        at: UnixTime,
    ) -> StoreResult<bool> {
        let sql = "UPDATE mailboxes SET identity_suspended_at = ?, identity_suspended_reason = ?, \
                   credential_generation = credential_generation + 1 \
                   WHERE address = ? AND identity_suspended_at IS NULL";
        let params = [at.into(), reason.into(), address.into()];
        let changed = self.execute(sql, &params).await.context("mailbox")?;
        Ok(changed > 0)
    }

    async fn identity_standing(&self, address: &str) -> StoreResult<Option<IdentityStanding>> {
        self.fetch_optional(&IDENTITY_STANDING, &[address.into()])
            .await
    }

    async fn take_check_lease(
        &self,
        holder: &str,
        now: UnixTime,
        until: UnixTime,
    ) -> StoreResult<bool> {
        let sql = "UPDATE identity_check_lease SET holder = ?, expires_at = ? \
                   WHERE name = ? AND (expires_at < ? OR holder = ?)";
        let params = [
            holder.into(),
            until.into(),
            LEASE.into(),
            now.into(),
            holder.into(),
        ];
        let changed = self.execute(sql, &params).await.context("check lease")?;
        Ok(changed > 0)
    }

    async fn release_check_lease(&self, holder: &str) -> StoreResult<()> {
        let sql = "UPDATE identity_check_lease SET holder = NULL, expires_at = 0 \
                   WHERE name = ? AND holder = ?";
        self.execute(sql, &[LEASE.into(), holder.into()])
            .await
            .context("check lease")?;
        Ok(())
    }
}

fn mailbox(address: &str) -> Record {
    Record::Mailbox(address.to_string())
}
