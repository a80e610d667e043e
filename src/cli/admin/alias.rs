//! `mailauthd alias`: addresses delivered to other mailboxes, which those mailboxes may
//! also send as.

use super::values::dated_row;
use super::{conflict, require_domain, Ctx};
use crate::cli::{AliasCommand, CliError};
use crate::clock::Clock;
use crate::names::{normalize_domain, Address};
use crate::store::{Alias, Aliases, Mailboxes};

pub(super) async fn run(ctx: &Ctx, command: AliasCommand) -> Result<(), CliError> {
    match command {
        AliasCommand::Add { address, targets } => add(ctx, &address, &targets).await?,
        AliasCommand::List { domain } => {
            let domain = domain.as_deref().map(normalize_domain).transpose()?;
            let list = ctx.store.list_aliases(domain.as_deref()).await?;
            ctx.out.rows(&list, &["ALIAS", "TARGET", "CREATED"], |a| {
                dated_row(&a.address, &a.target, a.created_at)
            });
        }
        AliasCommand::Remove { address, target } => {
            let address = Address::parse(&address)?;
            let target = target.as_deref().map(Address::parse).transpose()?;
            let n = ctx
                .store
                .delete_alias(address.as_str(), target.as_ref().map(Address::as_str))
                .await?;
            ctx.out
                .done(&format!("alias {address}: {n} target(s) removed"));
        }
    }
    Ok(())
}

async fn add(ctx: &Ctx, address: &str, targets: &str) -> Result<(), CliError> {
    let address = Address::parse(address)?;
    require_domain(ctx, address.domain()).await?;
    let targets: Vec<Address> = targets
        .split(',')
        .filter(|t| !t.trim().is_empty())
        .map(Address::parse)
        .collect::<Result<_, _>>()?;
    if targets.is_empty() {
        return Err(CliError::usage("name at least one target address"));
    }
    if ctx.store.get_mailbox(address.as_str()).await?.is_some() {
        return Err(CliError::refused(format!(
            "{address} is a mailbox; an alias needs an address of its own"
        )));
    }
    for t in &targets {
        let a = Alias {
            address: address.to_string(),
            target: t.to_string(),
            domain: address.domain().to_string(),
            created_at: ctx.clock.now(),
        };
        ctx.store
            .add_alias(&a)
            .await
            .map_err(conflict(&format!("alias {address} -> {t} already exists")))?;
    }
    let shown: Vec<String> = targets.iter().map(ToString::to_string).collect();
    ctx.out
        .done(&format!("alias {address} -> {} added", shown.join(", ")));
    Ok(())
}
