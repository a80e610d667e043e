//! `mailauthd mapping`: which template a claim value chooses, tried in the postmaster's
//! order, and the default template for a sign-in that matches none.

use super::template::{require_template, template_name};
use super::Ctx;
use crate::cli::{CliError, MappingCommand};
use crate::store::{Mapping, Templates};

pub(super) async fn run(ctx: &Ctx, command: MappingCommand) -> Result<(), CliError> {
    match command {
        MappingCommand::Add {
            value,
            template,
            position,
        } => add(ctx, &value, &template, position).await?,
        MappingCommand::List => list(ctx).await?,
        MappingCommand::Remove { value } => {
            ctx.store.delete_mapping(&value).await?;
            ctx.out.done(&format!("mapping for {value:?} removed"));
        }
        MappingCommand::Default { template, clear } => {
            if clear {
                ctx.store.set_default_template(None).await?;
                ctx.out.done(
                    "default template cleared; sign-ins without a matching mapping are refused",
                );
            } else if let Some(t) = template {
                ctx.store.set_default_template(Some(&t)).await?;
                ctx.out.done(&format!("default template is {t}"));
            }
        }
    }
    Ok(())
}

/// Maps `value` to `template` at the position `at`, or last.
async fn add(ctx: &Ctx, value: &str, template: &str, at: Option<i64>) -> Result<(), CliError> {
    let value = template_name(value)?;
    require_template(ctx, template).await?;
    let position = match at {
        Some(p) => p,
        // Appended last, with room to put one between later.
        None => {
            ctx.store
                .list_mappings()
                .await?
                .iter()
                .map(|m| m.position)
                .max()
                .unwrap_or(0)
                + 10
        }
    };
    ctx.store
        .put_mapping(&Mapping {
            claim_value: value.clone(),
            position,
            template: template.to_string(),
        })
        .await?;
    ctx.out.done(&format!(
        "claim value {value:?} maps to template {template} (position {position})"
    ));
    Ok(())
}

async fn list(ctx: &Ctx) -> Result<(), CliError> {
    let list = ctx.store.list_mappings().await?;
    let default = ctx.store.default_template().await?;
    let rows = list
        .iter()
        .map(|m| {
            vec![
                m.position.to_string(),
                m.claim_value.clone(),
                m.template.clone(),
            ]
        })
        .chain(
            default
                .iter()
                .map(|d| vec!["default".into(), "(no match)".into(), d.clone()]),
        )
        .collect();
    if ctx.out.is_json() {
        ctx.out
            .json(&serde_json::json!({ "mappings": list, "default_template": default }));
    } else {
        ctx.out
            .list(&list, &["POSITION", "CLAIM VALUE", "TEMPLATE"], rows);
    }
    Ok(())
}
