//! What the sender policy reads: each answer one query, on SQLite a hot read.

use async_trait::async_trait;

use super::super::param::Param;
use super::super::rows::{
    permission_row_from, Select, ADDRESS_EXISTS, SENDER_ACCOUNT, SERVED_DOMAIN,
};
use super::super::{PolicyStore, SendPermission, SenderAccount, ServedDomain, StoreResult};
use super::{placeholders, SqlStore};

#[async_trait]
impl PolicyStore for SqlStore {
    async fn sender_account(&self, address: &str) -> StoreResult<Option<SenderAccount>> {
        self.fetch_optional(&SENDER_ACCOUNT, &[address.into()])
            .await
    }

    async fn served_domain(&self, domain: &str) -> StoreResult<Option<ServedDomain>> {
        let params = [domain.into(), domain.into()];
        self.fetch_optional(&SERVED_DOMAIN, &params).await
    }

    async fn address_exists(&self, address: &str) -> StoreResult<bool> {
        let params = [address.into(), address.into()];
        let found = self.fetch_optional(&ADDRESS_EXISTS, &params).await?;
        Ok(found.is_some())
    }

    async fn send_permission(
        &self,
        mailbox: &str,
        addresses: &[String],
    ) -> StoreResult<Option<SendPermission>> {
        let mut patterns: Vec<String> = addresses.to_vec();
        for a in addresses {
            if let Some((_, domain)) = a.rsplit_once('@') {
                let p = format!("@{domain}");
                if !patterns.contains(&p) {
                    patterns.push(p);
                }
            }
        }
        patterns.push("*".into());
        // Both halves are primary-key lookups: aliases (address, target) and
        // send_as (mailbox, pattern).
        let mut params: Vec<Param<'_>> = Vec::new();
        let aliases = if addresses.is_empty() {
            String::new()
        } else {
            params.push(mailbox.into());
            params.extend(addresses.iter().map(Param::from));
            format!(
                "SELECT 0, address FROM aliases WHERE target = ? AND address IN ({}) UNION ALL ",
                placeholders(addresses.len())
            )
        };
        params.push(mailbox.into());
        params.extend(patterns.iter().map(Param::from));
        let sql = format!(
            "{aliases}SELECT 1, pattern FROM send_as WHERE mailbox = ? AND pattern IN ({})",
            placeholders(patterns.len())
        );
        let select = Select {
            hot: true,
            ..Select::built(sql, "send permission", permission_row_from)
        };
        let rows = self.fetch_all(&select, &params).await?;
        let mut found: Option<SendPermission> = None;
        for (kind, name) in rows {
            if kind == 0 {
                return Ok(Some(SendPermission::Alias { address: name }));
            }
            // Several grants may match; name the most specific one in the log.
            let better = match &found {
                Some(SendPermission::SendAs { pattern }) => {
                    pattern_rank(&name) < pattern_rank(pattern)
                }
                _ => true,
            };
            if better {
                found = Some(SendPermission::SendAs { pattern: name });
            }
        }
        Ok(found)
    }
}

/// Address grants before `@domain` grants before `*`.
fn pattern_rank(pattern: &str) -> u8 {
    match pattern {
        "*" => 2,
        p if p.starts_with('@') => 1,
        _ => 0,
    }
}
