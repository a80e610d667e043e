//! The `domains` and `alias_domains` tables, and the domain lock every mailbox write takes.

use async_trait::async_trait;
use sqlx::AnyConnection;

use super::super::param::Param;
use super::super::rows::{
    usage_from, Select, ALIAS_DOMAINS, ALIAS_DOMAIN_INSERT, DOMAINS, DOMAIN_INSERT, DOMAIN_UPDATE,
};
use super::super::{
    AliasDomain, Dialect, Domain, DomainUsage, Domains, Record, Refusal, StoreError, StoreResult,
};
use super::errors::SqlxResult;
use super::statement::{self, Rows};
use super::SqlStore;

#[async_trait]
impl Domains for SqlStore {
    async fn create_domain(&self, d: &Domain) -> StoreResult<()> {
        let record = Record::Domain(d.name.clone());
        let sql = DOMAIN_INSERT.sql;
        self.write(sql, &DOMAIN_INSERT.values(d), &record)
            .await
            .map(drop)
    }

    async fn update_domain(&self, d: &Domain) -> StoreResult<()> {
        let record = Record::Domain(d.name.clone());
        self.change(DOMAIN_UPDATE.sql, &DOMAIN_UPDATE.values(d), record)
            .await
    }

    async fn get_domain(&self, name: &str) -> StoreResult<Option<Domain>> {
        self.fetch_optional(&DOMAINS.with("WHERE name = ?"), &[name.into()])
            .await
    }

    async fn list_domains(&self) -> StoreResult<Vec<Domain>> {
        self.fetch_all(&DOMAINS.with("ORDER BY name"), &[]).await
    }

    async fn domain_usage(&self, name: &str) -> StoreResult<DomainUsage> {
        usage(&self.pool, self.dialect, name, None).await
    }

    async fn delete_domain(&self, name: &str) -> StoreResult<()> {
        let usage = self.domain_usage(name).await?;
        if usage.mailboxes > 0 {
            return Err(StoreError::Refused(Refusal::DomainNotEmpty {
                domain: name.to_string(),
                mailboxes: usage.mailboxes,
            }));
        }
        let sql = "DELETE FROM domains WHERE name = ?";
        self.change(sql, &[name.into()], Record::Domain(name.to_string()))
            .await
    }

    async fn create_alias_domain(&self, a: &AliasDomain) -> StoreResult<()> {
        if self.get_domain(&a.name).await?.is_some() {
            return Err(StoreError::Conflict(Record::Domain(a.name.clone())));
        }
        let record = Record::AliasDomain(a.name.clone());
        let sql = ALIAS_DOMAIN_INSERT.sql;
        self.write(sql, &ALIAS_DOMAIN_INSERT.values(a), &record)
            .await
            .map(drop)
    }

    async fn list_alias_domains(&self) -> StoreResult<Vec<AliasDomain>> {
        self.fetch_all(&ALIAS_DOMAINS.with("ORDER BY name"), &[])
            .await
    }

    async fn delete_alias_domain(&self, name: &str) -> StoreResult<()> {
        let sql = "DELETE FROM alias_domains WHERE name = ?";
        self.change(sql, &[name.into()], Record::AliasDomain(name.to_string()))
            .await
    }
}

/// Takes the domain's row lock first (an UPDATE, which every dialect turns into a write
/// lock), then reads the domain and its usage without `excluding` (the mailbox being
/// changed), so concurrent writers for one domain queue here and each sees the others'
/// committed mailboxes.
pub(super) async fn lock_domain(
    tx: &mut AnyConnection,
    dialect: Dialect,
    domain: &str,
    excluding: Option<&str>,
) -> StoreResult<(Domain, DomainUsage)> {
    let missing = || StoreError::NotFound(Record::Domain(domain.to_string()));
    let lock = "UPDATE domains SET lock_version = lock_version + 1 WHERE name = ?";
    let changed = statement::execute(&mut *tx, dialect, lock, &[domain.into()])
        .await
        .context("domain")?;
    if changed == 0 {
        return Err(missing());
    }
    let select = DOMAINS.with("WHERE name = ?");
    let d = statement::fetch(&mut *tx, dialect, &select, &[domain.into()], Rows::First)
        .await?
        .pop()
        .ok_or_else(missing)?;
    Ok((d, usage(tx, dialect, domain, excluding).await?))
}

/// A domain's mailbox count and quota sum, without `excluding`.
async fn usage<'c>(
    on: impl sqlx::Executor<'c, Database = sqlx::Any>,
    dialect: Dialect,
    domain: &str,
    excluding: Option<&str>,
) -> StoreResult<DomainUsage> {
    let cast = dialect.bigint_cast();
    let sql = format!(
        "SELECT COUNT(*), CAST(COALESCE(SUM(quota), 0) AS {cast}), \
         CAST(COALESCE(SUM(CASE WHEN quota = 0 THEN 1 ELSE 0 END), 0) AS {cast}) \
         FROM mailboxes WHERE domain = ?{}",
        if excluding.is_some() {
            " AND address <> ?"
        } else {
            ""
        }
    );
    let mut params: Vec<Param<'_>> = vec![domain.into()];
    params.extend(excluding.map(Param::from));
    let select = Select::built(sql, "domain usage", usage_from);
    // An aggregate always returns its one row.
    let mut rows = statement::fetch(on, dialect, &select, &params, Rows::First).await?;
    Ok(rows.pop().unwrap_or_default())
}
