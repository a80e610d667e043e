//! `mailauthd send-as`: explicit grants to send as other addresses, a whole domain, or
//! anything.

use super::values::dated_row;
use super::{conflict, require_mailbox, Ctx};
use crate::cli::{CliError, SendAsCommand};
use crate::clock::Clock;
use crate::names::{normalize_domain, Address};
use crate::store::{Aliases, SendAs};

pub(super) async fn run(ctx: &Ctx, command: SendAsCommand) -> Result<(), CliError> {
    match command {
        SendAsCommand::Grant { mailbox, pattern } => {
            let mailbox = Address::parse(&mailbox)?;
            let pattern = send_as_pattern(&pattern)?;
            require_mailbox(ctx, &mailbox).await?;
            let g = SendAs {
                mailbox: mailbox.to_string(),
                pattern: pattern.clone(),
                created_at: ctx.clock.now(),
            };
            ctx.store
                .grant_send_as(&g)
                .await
                .map_err(conflict(&format!(
                    "{mailbox} may already send as {pattern}"
                )))?;
            ctx.out.done(&format!("{mailbox} may send as {pattern}"));
        }
        SendAsCommand::List { mailbox } => {
            let mailbox = mailbox.as_deref().map(Address::parse).transpose()?;
            let list = ctx
                .store
                .list_send_as(mailbox.as_ref().map(Address::as_str))
                .await?;
            ctx.out
                .rows(&list, &["MAILBOX", "MAY SEND AS", "GRANTED"], |g| {
                    dated_row(&g.mailbox, &g.pattern, g.created_at)
                });
        }
        SendAsCommand::Revoke { mailbox, pattern } => {
            let mailbox = Address::parse(&mailbox)?;
            let pattern = send_as_pattern(&pattern)?;
            ctx.store.revoke_send_as(mailbox.as_str(), &pattern).await?;
            ctx.out
                .done(&format!("{mailbox} may no longer send as {pattern}"));
        }
    }
    Ok(())
}

/// What a grant covers: one address, `@domain` for all of a domain, or `*` for anything.
fn send_as_pattern(p: &str) -> Result<String, CliError> {
    let p = p.trim();
    if p == "*" {
        return Ok("*".into());
    }
    if let Some(domain) = p.strip_prefix('@') {
        return Ok(format!("@{}", normalize_domain(domain)?));
    }
    Ok(Address::parse(p)?.to_string())
}
