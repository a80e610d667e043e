//! `mailauthd domain`: the domains this server serves, and their limits.

use super::values::size;
use super::{conflict, require_domain, Ctx};
use crate::cli::{CliError, DomainCommand, DomainLimits};
use crate::clock::{format_time, Clock};
use crate::names::normalize_domain;
use crate::size::format_size;
use crate::store::{Domain, Domains};

pub(super) async fn run(ctx: &Ctx, command: DomainCommand) -> Result<(), CliError> {
    match command {
        DomainCommand::Add {
            name,
            limits,
            inactive,
        } => add(ctx, &name, &limits, inactive).await,
        DomainCommand::List => list(ctx).await,
        DomainCommand::Show { name } => show(ctx, &name).await,
        DomainCommand::Set {
            name,
            limits,
            active,
        } => set(ctx, &name, &limits, active).await,
        DomainCommand::Remove { name } => {
            let name = normalize_domain(&name)?;
            ctx.store.delete_domain(&name).await?;
            ctx.out.done(&format!("domain {name} removed"));
            Ok(())
        }
    }
}

/// A limit option: `None` = not given, `Some(None)` = "unlimited" (or "none").
fn limit(
    value: Option<&str>,
    parse: impl Fn(&str) -> Result<u64, CliError>,
) -> Result<Option<Option<u64>>, CliError> {
    match value {
        None => Ok(None),
        Some(v) if v.eq_ignore_ascii_case("unlimited") || v.eq_ignore_ascii_case("none") => {
            Ok(Some(None))
        }
        Some(v) => parse(v).map(|n| Some(Some(n))),
    }
}

fn count(v: &str) -> Result<u64, CliError> {
    v.trim().parse().map_err(|_| {
        CliError::usage(format!(
            "invalid number {v:?}: use a whole number or \"unlimited\""
        ))
    })
}

fn show_limit(v: Option<u64>, sized: bool) -> String {
    match v {
        None => "unlimited".into(),
        Some(n) if sized => format_size(n),
        Some(n) => n.to_string(),
    }
}

async fn add(ctx: &Ctx, name: &str, limits: &DomainLimits, inactive: bool) -> Result<(), CliError> {
    let name = normalize_domain(name)?;
    let d = Domain {
        name: name.clone(),
        active: !inactive,
        max_mailboxes: limit(limits.max_mailboxes.as_deref(), count)?.flatten(),
        max_quota: limit(limits.max_quota.as_deref(), size)?.flatten(),
        total_quota: limit(limits.quota.as_deref(), size)?.flatten(),
        created_at: ctx.clock.now(),
    };
    if let (Some(max), Some(total)) = (d.max_quota, d.total_quota) {
        if max > total {
            return Err(CliError::refused(format!(
                "--max-quota {} is larger than the total --quota {}",
                format_size(max),
                format_size(total)
            )));
        }
    }
    if ctx
        .store
        .list_alias_domains()
        .await?
        .iter()
        .any(|a| a.name == name)
    {
        return Err(CliError::refused(format!(
            "{name} is already an alias domain"
        )));
    }
    ctx.store
        .create_domain(&d)
        .await
        .map_err(conflict(&format!("domain {name} already exists")))?;
    ctx.out.done(&format!("domain {name} added"));
    Ok(())
}

async fn list(ctx: &Ctx) -> Result<(), CliError> {
    let domains = ctx.store.list_domains().await?;
    let mut rows = Vec::new();
    let mut listed = Vec::new();
    for d in domains {
        let usage = ctx.store.domain_usage(&d.name).await?;
        rows.push(vec![
            d.name.clone(),
            if d.active { "yes" } else { "no" }.into(),
            format!("{}/{}", usage.mailboxes, show_limit(d.max_mailboxes, false)),
            show_limit(d.max_quota, true),
            format!(
                "{}/{}",
                format_size(usage.quota_sum),
                show_limit(d.total_quota, true)
            ),
        ]);
        listed.push(serde_json::json!({ "domain": d, "usage": usage }));
    }
    ctx.out.list(
        &listed,
        &[
            "DOMAIN",
            "ACTIVE",
            "MAILBOXES",
            "MAX QUOTA",
            "QUOTA USED/TOTAL",
        ],
        rows,
    );
    Ok(())
}

async fn show(ctx: &Ctx, name: &str) -> Result<(), CliError> {
    let name = normalize_domain(name)?;
    let d = require_domain(ctx, &name).await?;
    let usage = ctx.store.domain_usage(&name).await?;
    let aliases: Vec<String> = ctx
        .store
        .list_alias_domains()
        .await?
        .into_iter()
        .filter(|a| a.target == name)
        .map(|a| a.name)
        .collect();
    ctx.out.record(
        &serde_json::json!({ "domain": d, "usage": usage, "alias_domains": aliases }),
        &[
            ("domain", d.name.clone()),
            ("active", d.active.to_string()),
            (
                "mailboxes",
                format!(
                    "{} of {}",
                    usage.mailboxes,
                    show_limit(d.max_mailboxes, false)
                ),
            ),
            ("max quota per mailbox", show_limit(d.max_quota, true)),
            (
                "quota assigned",
                format!(
                    "{} of {}",
                    format_size(usage.quota_sum),
                    show_limit(d.total_quota, true)
                ),
            ),
            (
                "alias domains",
                if aliases.is_empty() {
                    "-".into()
                } else {
                    aliases.join(", ")
                },
            ),
            ("created", format_time(d.created_at)),
        ],
    );
    Ok(())
}

async fn set(
    ctx: &Ctx,
    name: &str,
    limits: &DomainLimits,
    active: Option<bool>,
) -> Result<(), CliError> {
    let name = normalize_domain(name)?;
    let mut d = require_domain(ctx, &name).await?;
    if let Some(v) = limit(limits.max_mailboxes.as_deref(), count)? {
        d.max_mailboxes = v;
    }
    if let Some(v) = limit(limits.max_quota.as_deref(), size)? {
        d.max_quota = v;
    }
    if let Some(v) = limit(limits.quota.as_deref(), size)? {
        d.total_quota = v;
    }
    if let Some(a) = active {
        d.active = a;
    }
    ctx.store.update_domain(&d).await?;
    let usage = ctx.store.domain_usage(&name).await?;
    if d.max_mailboxes.is_some_and(|m| usage.mailboxes > m)
        || d.total_quota.is_some_and(|t| usage.quota_sum > t)
    {
        eprintln!("mailauthd: note: {name} is now over its new limits; existing mailboxes stay, new ones are refused");
    }
    ctx.out.done(&format!("domain {name} updated"));
    Ok(())
}
