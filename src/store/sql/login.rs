//! What a login reads and writes: the hot read of the mailbox (with its app password, or by
//! the identity a token names), the hash upgrade, the last-use records.

use async_trait::async_trait;

use super::super::param::Param;
use super::super::rows::{LOGIN_VIEW, LOGIN_VIEW_BY_IDENTITY, LOGIN_VIEW_WITH_APP_PASSWORD};
use super::super::{AppPassword, LastUse, LoginStore, LoginView, StoreResult};
use super::errors::SqlxResult;
use super::statement;
use super::SqlStore;

#[async_trait]
impl LoginStore for SqlStore {
    async fn login_view(&self, address: &str) -> StoreResult<Option<LoginView>> {
        self.fetch_optional(&LOGIN_VIEW, &[address.into()]).await
    }

    async fn login_view_with_app_password(
        &self,
        address: &str,
        lookup_hash: &str,
    ) -> StoreResult<Option<(LoginView, Option<AppPassword>)>> {
        let params = [lookup_hash.into(), address.into()];
        self.fetch_optional(&LOGIN_VIEW_WITH_APP_PASSWORD, &params)
            .await
    }

    async fn login_view_by_identity(
        &self,
        issuer: &str,
        subject: &str,
    ) -> StoreResult<Option<LoginView>> {
        let params = [issuer.into(), subject.into()];
        self.fetch_optional(&LOGIN_VIEW_BY_IDENTITY, &params).await
    }

    async fn replace_password_hash(
        &self,
        address: &str,
        old: &str,
        new: &str,
    ) -> StoreResult<bool> {
        let changed = self
            .execute(
                "UPDATE mailboxes SET password_hash = ? WHERE address = ? AND password_hash = ?",
                &[new.into(), address.into(), old.into()],
            )
            .await
            .context("mailbox")?;
        Ok(changed > 0)
    }

    async fn record_last_use(&self, uses: &[LastUse]) -> StoreResult<()> {
        if uses.is_empty() {
            return Ok(());
        }
        // The guard on the time keeps an older record, flushed late, from overwriting a newer one.
        let mailbox_use = "UPDATE mailboxes SET last_login_at = ?, last_login_ip = ?, \
                           last_login_service = ? \
                           WHERE address = ? AND (last_login_at IS NULL OR last_login_at <= ?)";
        let app_password_use = "UPDATE app_passwords SET last_used_at = ?, last_used_ip = ?, \
                                last_used_service = ? \
                                WHERE id = ? AND (last_used_at IS NULL OR last_used_at <= ?)";
        let what = "last use";
        let mut tx = self.pool.begin().await.context(what)?;
        for u in uses {
            let values = last_use_values(u, (&u.mailbox).into());
            statement::execute(&mut *tx, self.dialect, mailbox_use, &values)
                .await
                .context(what)?;
            if let Some(id) = u.app_password_id {
                let values = last_use_values(u, id.into());
                statement::execute(&mut *tx, self.dialect, app_password_use, &values)
                    .await
                    .context(what)?;
            }
        }
        tx.commit().await.context(what)
    }
}

/// What both last-use statements bind, around the key of their row.
fn last_use_values<'a>(u: &'a LastUse, key: Param<'a>) -> [Param<'a>; 5] {
    let ip = u.ip.as_deref();
    [
        u.at.into(),
        ip.into(),
        (&u.service).into(),
        key,
        u.at.into(),
    ]
}
