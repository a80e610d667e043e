//! `mailauthd app-password`: the passwords mail clients use, one per device or program.
//! The secret is printed once at creation; the store keeps only its keyed lookup hash.

use super::values::describe_use;
use super::{require_mailbox, Ctx};
use crate::cli::{AppPasswordCommand, CliError};
use crate::clock::{format_time, parse_date, Clock, UnixTime};
use crate::names::{Address, Protocols};
use crate::provision::{issue_app_password, AppPasswordRequest, DuplicateName, IssuedAppPassword};
use crate::store::{parse_networks, AppPasswords};

pub(super) async fn run(ctx: &Ctx, command: AppPasswordCommand) -> Result<(), CliError> {
    match command {
        AppPasswordCommand::Create {
            address,
            name,
            protocols,
            expires,
            networks,
        } => {
            create(
                ctx,
                &address,
                &name,
                &protocols,
                expires.as_deref(),
                networks.as_deref(),
            )
            .await
        }
        AppPasswordCommand::List { address } => list(ctx, &address).await,
        AppPasswordCommand::Revoke { address, id } => {
            let address = Address::parse(&address)?;
            ctx.store.delete_app_password(address.as_str(), id).await?;
            ctx.out.done(&format!(
                "app password {id} of {address} revoked; the next login with it fails"
            ));
            Ok(())
        }
    }
}

/// `--expires YYYY-MM-DD`: the start of that day (UTC), so "expires 2027-06-01" stops
/// working then. It must be in the future.
pub(super) fn expiry(ctx: &Ctx, expires: Option<&str>) -> Result<Option<UnixTime>, CliError> {
    let Some(d) = expires else {
        return Ok(None);
    };
    let day = parse_date(d)
        .ok_or_else(|| CliError::usage(format!("invalid --expires {d:?}: use YYYY-MM-DD")))?;
    if day <= ctx.clock.now() {
        return Err(CliError::usage(format!(
            "--expires {d} is not in the future"
        )));
    }
    Ok(Some(day))
}

async fn create(
    ctx: &Ctx,
    address: &str,
    name: &str,
    protocols: &str,
    expires: Option<&str>,
    networks: Option<&str>,
) -> Result<(), CliError> {
    let address = Address::parse(address)?;
    let wanted = Protocols::parse_list(protocols)?;
    let expires_at = expiry(ctx, expires)?;
    let networks = parse_networks(networks.unwrap_or("")).map_err(CliError::usage)?;
    let m = require_mailbox(ctx, &address).await?;
    let issued = issue(
        ctx,
        AppPasswordRequest {
            mailbox: &m.address,
            name,
            protocols: wanted,
            // The postmaster may make one ahead of a change to the mailbox; see the note.
            allowed: None,
            networks,
            expires_at,
            duplicate_name: DuplicateName::Refuse,
            now: ctx.clock.now(),
        },
    )
    .await?;
    let (id, name) = (issued.id, issued.name.clone());
    let shown = issued.shown();
    if ctx.out.is_json() {
        ctx.out.json(&serde_json::json!({
            "id": id, "mailbox": m.address, "name": name, "protocols": wanted,
            "expires_at": expires_at, "password": shown,
        }));
    } else {
        println!(
            "app password {id} ({name}) for {} — shown only this once:",
            m.address
        );
        println!();
        println!("    {shown}");
        println!();
        println!(
            "protocols: {wanted}; expires: {}",
            expires_at
                .map(format_time)
                .unwrap_or_else(|| "never".into())
        );
    }
    let blocked: Vec<String> = wanted
        .iter()
        .filter(|p| !m.protocols.contains(*p))
        .map(|p| p.to_string())
        .collect();
    if !blocked.is_empty() {
        eprintln!(
            "mailauthd: note: the mailbox itself does not allow {}; those logins stay refused until it does",
            blocked.join(",")
        );
    }
    Ok(())
}

/// Issues an app password under the key file's key (made on first use), for `app-password
/// add` and the `device` commands alike.
pub(super) async fn issue(
    ctx: &Ctx,
    request: AppPasswordRequest<'_>,
) -> Result<IssuedAppPassword, CliError> {
    let key = crate::keyfile::load_or_create(&ctx.config.key_file)
        .map_err(|e| CliError::refused(e.to_string()))?;
    Ok(issue_app_password(ctx.store.as_ref(), &key, request).await?)
}

async fn list(ctx: &Ctx, address: &str) -> Result<(), CliError> {
    let address = Address::parse(address)?;
    let m = require_mailbox(ctx, &address).await?;
    let list = ctx.store.list_app_passwords(&m.address).await?;
    let now = ctx.clock.now();
    let headers = ["ID", "NAME", "PROTOCOLS", "EXPIRES", "CREATED", "LAST USED"];
    ctx.out.rows(&list, &headers, |a| {
        let expires = match a.expires_at {
            None => "never".into(),
            Some(t) if t <= now => format!("expired {}", format_time(t)),
            Some(t) => format_time(t),
        };
        let last_used = a.last_used.as_ref().map(describe_use);
        vec![
            a.id.to_string(),
            a.name.clone(),
            a.protocols.to_string(),
            expires,
            format_time(a.created_at),
            last_used.unwrap_or_else(|| "never".into()),
        ]
    });
    Ok(())
}
