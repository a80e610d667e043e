//! `mailauthd app-password`: the passwords mail clients use, one per device or program.
//! The secret is printed once at creation; the store keeps only its keyed lookup hash.

use super::values::describe_use;
use super::{require_mailbox, Ctx};
use crate::auth::app_password;
use crate::cli::{AppPasswordCommand, CliError};
use crate::clock::{format_time, parse_date, Clock, UnixTime};
use crate::names::{Address, Protocols};
use crate::store::{parse_networks, AppPasswords, NewAppPassword};

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
fn expiry(ctx: &Ctx, expires: Option<&str>) -> Result<Option<UnixTime>, CliError> {
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
    let name = name.trim().to_string();
    if name.is_empty() || name.len() > 100 || name.chars().any(|c| c.is_control()) {
        return Err(CliError::usage(
            "--name must be 1 to 100 printable characters",
        ));
    }
    let wanted = Protocols::parse_list(protocols)?;
    if wanted == Protocols::NONE {
        return Err(CliError::usage(
            "--protocols must name at least one of imap, pop3, sieve, smtp",
        ));
    }
    let expires_at = expiry(ctx, expires)?;
    let networks = parse_networks(networks.unwrap_or("")).map_err(CliError::usage)?;
    let m = require_mailbox(ctx, &address).await?;
    let key = crate::keyfile::load_or_create(&ctx.config.key_file)
        .map_err(|e| CliError::refused(e.to_string()))?;
    let secret =
        app_password::generate().map_err(|e| CliError::refused(format!("no randomness: {e}")))?;
    let new = NewAppPassword {
        mailbox: m.address.clone(),
        name: name.clone(),
        lookup_hash: key.lookup_hash(secret.expose()),
        protocols: wanted,
        networks,
        expires_at,
        created_at: ctx.clock.now(),
    };
    let id = ctx.store.create_app_password(&new).await?;
    let shown = String::from_utf8_lossy(secret.expose()).into_owned();
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
