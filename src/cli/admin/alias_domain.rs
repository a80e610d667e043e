//! `mailauthd alias-domain`: another name for a served domain.

use super::values::dated_row;
use super::{conflict, require_domain, Ctx};
use crate::cli::{AliasDomainCommand, CliError};
use crate::clock::Clock;
use crate::names::normalize_domain;
use crate::store::{AliasDomain, Domains};

pub(super) async fn run(ctx: &Ctx, command: AliasDomainCommand) -> Result<(), CliError> {
    match command {
        AliasDomainCommand::Add { alias, target } => {
            let alias = normalize_domain(&alias)?;
            let target = normalize_domain(&target)?;
            require_domain(ctx, &target).await?;
            ctx.store
                .create_alias_domain(&AliasDomain {
                    name: alias.clone(),
                    target: target.clone(),
                    active: true,
                    created_at: ctx.clock.now(),
                })
                .await
                .map_err(conflict(&format!(
                    "{alias} already exists as a domain or alias domain"
                )))?;
            ctx.out
                .done(&format!("alias domain {alias} -> {target} added"));
        }
        AliasDomainCommand::List => {
            let list = ctx.store.list_alias_domains().await?;
            ctx.out
                .rows(&list, &["ALIAS DOMAIN", "TARGET", "CREATED"], |a| {
                    dated_row(&a.name, &a.target, a.created_at)
                });
        }
        AliasDomainCommand::Remove { alias } => {
            let alias = normalize_domain(&alias)?;
            ctx.store.delete_alias_domain(&alias).await?;
            ctx.out.done(&format!("alias domain {alias} removed"));
        }
    }
    Ok(())
}
