//! `mailauthd template`: mailbox templates (quota, protocols, state, sending limits) that
//! an identity-provider claim chooses. Mailboxes that follow a template pick up a change
//! on their next sign-in.

use super::values::{settings, show_quota};
use super::{conflict, Ctx};
use crate::cli::{CliError, TemplateCommand, TemplateFields};
use crate::clock::{format_time, Clock};
use crate::names::Protocols;
use crate::store::{MailboxState, SendLimits, Template, Templates};

pub(super) async fn run(ctx: &Ctx, command: TemplateCommand) -> Result<(), CliError> {
    match command {
        TemplateCommand::Add { name, fields } => add(ctx, &name, fields).await,
        TemplateCommand::List => {
            let list = ctx.store.list_templates().await?;
            ctx.out.rows(
                &list,
                &["TEMPLATE", "QUOTA", "PROTOCOLS", "ACTIVE"],
                template_row,
            );
            Ok(())
        }
        TemplateCommand::Show { name } => show(ctx, &name).await,
        TemplateCommand::Set { name, fields } => set(ctx, &name, fields).await,
        TemplateCommand::Remove { name } => {
            ctx.store.delete_template(&name).await?;
            ctx.out.done(&format!("template {name} removed"));
            Ok(())
        }
    }
}

/// A template name, or a claim value that maps to one: 1 to 100 printable characters.
pub(super) fn template_name(name: &str) -> Result<String, CliError> {
    let n = name.trim();
    if n.is_empty() || n.len() > 100 || n.chars().any(|c| c.is_control()) {
        return Err(CliError::usage(format!("invalid template name {name:?}")));
    }
    Ok(n.to_string())
}

pub(super) async fn require_template(ctx: &Ctx, name: &str) -> Result<Template, CliError> {
    ctx.store
        .get_template(name)
        .await?
        .ok_or_else(|| CliError::refused(format!("template {name} does not exist")))
}

/// `--send-limits`: `None` = not given, `Some(None)` = back to the default.
fn send_limits(v: Option<&str>) -> Result<Option<Option<SendLimits>>, CliError> {
    match v.map(str::trim) {
        None => Ok(None),
        Some("default") => Ok(Some(None)),
        Some(text) => text
            .parse::<SendLimits>()
            .map(|l| Some(Some(l)))
            .map_err(|e| CliError::usage(format!("--send-limits: {e}"))),
    }
}

fn template_row(t: &Template) -> Vec<String> {
    vec![
        t.name.clone(),
        show_quota(t.quota),
        t.protocols.to_string(),
        t.state.code().to_string(),
    ]
}

async fn add(ctx: &Ctx, name: &str, fields: TemplateFields) -> Result<(), CliError> {
    let name = template_name(name)?;
    let now = ctx.clock.now();
    let given = settings(&fields.settings)?;
    let t = Template {
        name: name.clone(),
        quota: given.quota.unwrap_or(0),
        protocols: given.protocols.unwrap_or(Protocols::ALL),
        state: given.state.unwrap_or(MailboxState::Active),
        created_at: now,
        updated_at: now,
    };
    let limits = send_limits(fields.send_limits.as_deref())?;
    ctx.store
        .create_template(&t)
        .await
        .map_err(conflict(&format!("template {name} already exists")))?;
    if let Some(limits) = limits {
        ctx.store
            .set_template_send_limits(&name, limits.as_ref(), now)
            .await?;
    }
    ctx.out.done(&format!("template {name} added"));
    Ok(())
}

async fn show(ctx: &Ctx, name: &str) -> Result<(), CliError> {
    let t = require_template(ctx, name).await?;
    let limits = ctx.store.template_send_limits(&t.name).await?;
    let shown_limits = limits.as_ref().map_or_else(
        || "default (the [policy] limits of the config file)".to_string(),
        ToString::to_string,
    );
    let mut json = serde_json::to_value(&t).unwrap_or_default();
    if let Some(obj) = json.as_object_mut() {
        obj.insert(
            "send_limits".into(),
            limits.as_ref().map_or(serde_json::Value::Null, |l| {
                serde_json::Value::String(l.to_string())
            }),
        );
    }
    ctx.out.record(
        &json,
        &[
            ("template", t.name.clone()),
            ("quota", show_quota(t.quota)),
            ("protocols", t.protocols.to_string()),
            ("active", t.state.to_string()),
            ("send limits", shown_limits),
            ("content hash", t.content_hash()),
            ("updated", format_time(t.updated_at)),
        ],
    );
    Ok(())
}

async fn set(ctx: &Ctx, name: &str, fields: TemplateFields) -> Result<(), CliError> {
    let mut t = require_template(ctx, name).await?;
    let given = settings(&fields.settings)?;
    t.quota = given.quota.unwrap_or(t.quota);
    t.protocols = given.protocols.unwrap_or(t.protocols);
    t.state = given.state.unwrap_or(t.state);
    t.updated_at = ctx.clock.now();
    let limits = send_limits(fields.send_limits.as_deref())?;
    ctx.store.update_template(&t).await?;
    if let Some(limits) = limits {
        ctx.store
            .set_template_send_limits(name, limits.as_ref(), t.updated_at)
            .await?;
    }
    ctx.out.done(&format!(
        "template {name} updated; mailboxes following it change on their next sign-in"
    ));
    Ok(())
}
