//! The `aliases` and `send_as` tables, as the CLI sees them; the sender policy reads them
//! in `policy.rs`.

use async_trait::async_trait;

use super::super::rows::{ALIASES, ALIAS_INSERT, SEND_AS, SEND_AS_INSERT};
use super::super::{Alias, Aliases, Record, SendAs, StoreResult};
use super::errors::{found, SqlxResult};
use super::mailboxes::canonical_address;
use super::{where_equal, SqlStore};

#[async_trait]
impl Aliases for SqlStore {
    async fn add_alias(&self, a: &Alias) -> StoreResult<()> {
        canonical_address(&a.address, "alias")?;
        canonical_address(&a.target, "alias target")?;
        let (alias, domain) = (Record::alias(&a.address, Some(&a.target)), &a.domain);
        let values = ALIAS_INSERT.values(a);
        self.write_under(
            ALIAS_INSERT.sql,
            &values,
            alias,
            Record::Domain(domain.clone()),
        )
        .await
    }

    async fn list_aliases(&self, domain: Option<&str>) -> StoreResult<Vec<Alias>> {
        let (filter, params) = where_equal("domain", domain);
        let select = ALIASES.with(&format!("{filter}ORDER BY address, target"));
        self.fetch_all(&select, &params).await
    }

    async fn delete_alias(&self, address: &str, target: Option<&str>) -> StoreResult<u64> {
        let changed = match target {
            Some(t) => {
                let sql = "DELETE FROM aliases WHERE address = ? AND target = ?";
                self.execute(sql, &[address.into(), t.into()]).await
            }
            None => {
                let sql = "DELETE FROM aliases WHERE address = ?";
                self.execute(sql, &[address.into()]).await
            }
        }
        .context("alias")?;
        found(changed, Record::alias(address, None)).map(|()| changed)
    }

    async fn grant_send_as(&self, g: &SendAs) -> StoreResult<()> {
        let grant = Record::send_as(&g.mailbox, &g.pattern);
        let mailbox = Record::Mailbox(g.mailbox.clone());
        let values = SEND_AS_INSERT.values(g);
        self.write_under(SEND_AS_INSERT.sql, &values, grant, mailbox)
            .await
    }

    async fn list_send_as(&self, mailbox: Option<&str>) -> StoreResult<Vec<SendAs>> {
        let (filter, params) = where_equal("mailbox", mailbox);
        let select = SEND_AS.with(&format!("{filter}ORDER BY mailbox, pattern"));
        self.fetch_all(&select, &params).await
    }

    async fn revoke_send_as(&self, mailbox: &str, pattern: &str) -> StoreResult<()> {
        let sql = "DELETE FROM send_as WHERE mailbox = ? AND pattern = ?";
        let grant = Record::send_as(mailbox, pattern);
        self.change(sql, &[mailbox.into(), pattern.into()], grant)
            .await
    }
}
