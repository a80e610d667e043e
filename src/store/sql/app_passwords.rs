//! The `app_passwords` table, as the CLI and the web page see it.

use async_trait::async_trait;

use super::super::rows::{ints, Select, APP_PASSWORDS, APP_PASSWORD_INSERT};
use super::super::{AppPassword, AppPasswords, NewAppPassword, Record, StoreError, StoreResult};
use super::SqlStore;

const ID_BY_LOOKUP_HASH: Select<i64> = ints(
    "SELECT id FROM app_passwords WHERE lookup_hash = ?",
    "app password",
);

#[async_trait]
impl AppPasswords for SqlStore {
    async fn create_app_password(&self, a: &NewAppPassword) -> StoreResult<i64> {
        let owner = || Record::Mailbox(a.mailbox.clone());
        let record = Record::NewAppPassword {
            mailbox: a.mailbox.clone(),
            name: a.name.clone(),
        };
        let values = APP_PASSWORD_INSERT.values(a);
        self.write_under(APP_PASSWORD_INSERT.sql, &values, record, owner())
            .await?;
        // The lookup hash is unique, so it finds the new row on every dialect without
        // RETURNING or last-insert-id differences. Gone already: its mailbox was removed
        // meanwhile, and the app password with it.
        let lookup = [(&a.lookup_hash).into()];
        self.fetch_optional(&ID_BY_LOOKUP_HASH, &lookup)
            .await?
            .ok_or_else(|| StoreError::NotFound(owner()))
    }

    async fn list_app_passwords(&self, mailbox: &str) -> StoreResult<Vec<AppPassword>> {
        let select = APP_PASSWORDS.with("WHERE mailbox = ? ORDER BY id");
        self.fetch_all(&select, &[mailbox.into()]).await
    }

    async fn delete_app_password(&self, mailbox: &str, id: i64) -> StoreResult<()> {
        let sql = "DELETE FROM app_passwords WHERE mailbox = ? AND id = ?";
        let record = Record::AppPassword {
            mailbox: mailbox.to_string(),
            id,
        };
        self.change(sql, &[mailbox.into(), id.into()], record).await
    }
}
