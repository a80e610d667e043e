//! `mailauthd mailbox`: add, import, show, change and remove mailboxes. Every write goes
//! through [`crate::provision`]; passwords are read from stdin or a prompt and hashed here.

use std::path::Path;

use thiserror::Error;

use super::values::{describe_use, settings, show_quota, Settings};
use super::{require_domain, require_mailbox, Ctx};
use crate::auth::password::{self, HashError};
use crate::cli::{secrets, CliError, MailboxCommand, MailboxFields};
use crate::clock::format_time;
use crate::names::{normalize_domain, Address, NameError};
use crate::provision::{self, MailboxChanges, NewMailbox, ProvisionError};
use crate::secret::Secret;
use crate::size::{parse_size, SizeError};
use crate::store::{AppPasswords, AuthSource, IdentityStanding, IdentityStore, Mailbox, Mailboxes};

pub(super) async fn run(ctx: &Ctx, command: MailboxCommand) -> Result<(), CliError> {
    match command {
        MailboxCommand::Import {
            file,
            dry_run,
            template,
        } => import(ctx, &file, dry_run, template).await,
        MailboxCommand::Add {
            address,
            password_stdin,
            no_password,
            password_hash_stdin,
            authsource,
            fields,
        } => {
            let password = PasswordFlags {
                stdin: password_stdin,
                hash_stdin: password_hash_stdin,
                none: no_password,
            };
            add(ctx, &address, password, &authsource, fields).await
        }
        MailboxCommand::List { domain } => list(ctx, domain.as_deref()).await,
        MailboxCommand::Show { address } => show(ctx, &address).await,
        MailboxCommand::Set {
            address,
            password_stdin,
            password_prompt,
            reset,
            fields,
        } => {
            let password = match (password_stdin, password_prompt) {
                (true, _) => Some(PasswordInput::Stdin),
                (false, true) => Some(PasswordInput::Prompt),
                (false, false) => None,
            };
            set(ctx, &address, password, reset, fields).await
        }
        MailboxCommand::SetAuthsource { address, source } => {
            set_auth_source(ctx, &address, &source).await
        }
        MailboxCommand::Unlink { address } => unlink(ctx, &address).await,
        MailboxCommand::Remove { address } => {
            let address = Address::parse(&address)?;
            provision::remove_mailbox(&*ctx.store, &address).await?;
            ctx.out.done(&format!("mailbox {address} removed"));
            Ok(())
        }
    }
}

/// How `mailbox add` was told to get the password; none of them means a prompt.
struct PasswordFlags {
    stdin: bool,
    hash_stdin: bool,
    none: bool,
}

/// Where a new password is read from.
enum PasswordInput {
    Stdin,
    Prompt,
}

/// Reads a new password and hashes it with the configured Argon2id parameters.
async fn new_password_hash(ctx: &Ctx, input: PasswordInput) -> Result<String, CliError> {
    let secret = match input {
        PasswordInput::Stdin => secrets::from_stdin()?,
        PasswordInput::Prompt => secrets::prompt_new()?,
    };
    let params = ctx.config.argon2;
    tokio::task::spawn_blocking(move || password::hash_argon2id(secret.expose(), params))
        .await
        .map_err(|e| CliError::refused(format!("hashing failed: {e}")))?
        .map_err(|e| CliError::refused(format!("hashing failed: {e}")))
}

/// A hash someone brings from another system: accepted only if we can verify its scheme.
fn imported_hash(text: Secret) -> Result<String, CliError> {
    let hash = String::from_utf8(text.expose().to_vec())
        .map_err(|_| CliError::usage("the hash is not text"))?;
    let hash = hash.trim().to_string();
    password::scheme_of(&hash)
        .map_err(|e| CliError::usage(format!("cannot use that hash: {e}")))?;
    Ok(hash)
}

async fn add(
    ctx: &Ctx,
    address: &str,
    password: PasswordFlags,
    authsource: &str,
    fields: MailboxFields,
) -> Result<(), CliError> {
    let address = Address::parse(address)?;
    let source: AuthSource = authsource.parse().map_err(CliError::usage)?;
    let Settings {
        quota,
        protocols,
        state,
    } = settings(&fields.settings)?;
    // Check what can be checked before asking for a password.
    require_domain(ctx, address.domain()).await?;
    let hash = if password.hash_stdin {
        Some(imported_hash(secrets::from_stdin()?)?)
    } else if password.stdin {
        Some(new_password_hash(ctx, PasswordInput::Stdin).await?)
    } else if password.none || source == AuthSource::Oidc {
        None
    } else {
        Some(new_password_hash(ctx, PasswordInput::Prompt).await?)
    };
    let new = NewMailbox {
        address: address.clone(),
        password_hash: hash,
        auth_source: source,
        display_name: fields.name.unwrap_or_default(),
        quota,
        protocols,
        state,
        template: fields.template,
        oidc_identity: None,
        require_active_domain: false,
    };
    let m = provision::create_mailbox(&*ctx.store, &ctx.clock, new).await?;
    ctx.out.done(&format!(
        "mailbox {} added (quota {}, protocols {}, auth source {})",
        m.address,
        show_quota(m.quota),
        m.protocols,
        m.auth_source
    ));
    Ok(())
}

async fn list(ctx: &Ctx, domain: Option<&str>) -> Result<(), CliError> {
    let domain = domain.map(normalize_domain).transpose()?;
    let list = ctx.store.list_mailboxes(domain.as_deref()).await?;
    let headers = [
        "ADDRESS",
        "ACTIVE",
        "AUTH",
        "QUOTA",
        "PROTOCOLS",
        "TEMPLATE",
        "LAST LOGIN",
    ];
    ctx.out.rows(&list, &headers, |m| {
        let last_login = m.last_login.as_ref().map(|l| format_time(l.at));
        vec![
            m.address.clone(),
            m.state.code().to_string(),
            m.auth_source.to_string(),
            show_quota(m.quota),
            m.protocols.to_string(),
            m.template.clone().unwrap_or_else(|| "-".into()),
            last_login.unwrap_or_else(|| "never".into()),
        ]
    });
    Ok(())
}

async fn show(ctx: &Ctx, address: &str) -> Result<(), CliError> {
    let address = Address::parse(address)?;
    let m = require_mailbox(ctx, &address).await?;
    let apps = ctx.store.list_app_passwords(m.address.as_str()).await?;
    let standing = ctx.store.identity_standing(m.address.as_str()).await?;
    let identity = identity_line(&m, standing.as_ref());
    let last = m
        .last_login
        .as_ref()
        .map(describe_use)
        .unwrap_or_else(|| "never".into());
    ctx.out.record(
        &serde_json::json!({ "mailbox": m, "has_password": m.has_password(), "app_passwords": apps.len(), "identity": standing }),
        &[
            ("address", m.address.clone()),
            ("display name", m.display_name.clone()),
            ("active", m.state.to_string()),
            ("auth source", m.auth_source.to_string()),
            ("stored password", if m.has_password() { "set" } else { "none" }.into()),
            ("quota", show_quota(m.quota)),
            ("protocols", m.protocols.to_string()),
            ("template", m.template.clone().unwrap_or_else(|| "-".into())),
            (
                "set by hand",
                if m.overrides.is_empty() {
                    "-".into()
                } else {
                    format!("{} (kept when the template is re-applied)", m.overrides)
                },
            ),
            (
                "oidc identity",
                match (&m.oidc_issuer, &m.oidc_subject) {
                    (Some(i), Some(s)) => format!("{s} at {i}"),
                    _ => "-".into(),
                },
            ),
            ("identity:", identity),
            ("app passwords", apps.len().to_string()),
            ("last login", last),
            ("created", format_time(m.created_at)),
        ],
    );
    Ok(())
}

/// The `identity:` line: whether the provider still knows the person, as far as the last
/// liveness check and sign-in tell.
fn identity_line(m: &Mailbox, standing: Option<&IdentityStanding>) -> String {
    let Some(s) = standing.filter(|_| m.oidc_subject.is_some()) else {
        return "- (not linked to an identity-provider account)".into();
    };
    let mut parts = vec![match &s.suspension {
        Some(sus) => format!(
            "suspended ({}) since {}; app passwords refused until the next web sign-in",
            sus.reason,
            format_time(sus.at)
        ),
        None => "ok".into(),
    }];
    parts.push(match (s.checked_at, s.answer.as_deref()) {
        (Some(at), Some(answer)) => format!("last check {} said {answer}", format_time(at)),
        _ => "never checked".into(),
    });
    if !s.has_refresh_token {
        parts.push("no refresh token".into());
    }
    parts.push(match s.last_sign_in_at {
        Some(at) => format!("last web sign-in {}", format_time(at)),
        None => "no web sign-in recorded".into(),
    });
    parts.join("; ")
}

async fn set(
    ctx: &Ctx,
    address: &str,
    password: Option<PasswordInput>,
    reset: bool,
    fields: MailboxFields,
) -> Result<(), CliError> {
    let address = Address::parse(address)?;
    let given = settings(&fields.settings)?;
    let changes = MailboxChanges {
        display_name: fields.name,
        quota: given.quota,
        protocols: given.protocols,
        state: given.state,
        template: fields.template,
        reset,
        unlink_identity: false,
    };
    let existing = require_mailbox(ctx, &address).await?;
    let new_hash = match password {
        Some(input) => Some(new_password_hash(ctx, input).await?),
        None => None,
    };
    provision::update_mailbox(&*ctx.store, &ctx.clock, &address, changes).await?;
    if let Some(hash) = new_hash {
        provision::set_password_hash(&*ctx.store, &ctx.clock, &address, &hash).await?;
        if existing.auth_source == AuthSource::Oidc {
            eprintln!("mailauthd: note: {address} signs in through the identity provider; the password is kept for a switch back to local");
        }
    }
    ctx.out.done(&format!("mailbox {address} updated"));
    Ok(())
}

async fn set_auth_source(ctx: &Ctx, address: &str, source: &str) -> Result<(), CliError> {
    let address = Address::parse(address)?;
    let source: AuthSource = source.parse().map_err(CliError::usage)?;
    let m = require_mailbox(ctx, &address).await?;
    provision::set_auth_source(&*ctx.store, &ctx.clock, &address, source).await?;
    let note = match (source, m.has_password()) {
        (AuthSource::Local, false) => {
            "; it has no stored password yet: set one with mailbox set --password-stdin"
        }
        (AuthSource::Local, true) => "; its stored password works again",
        (AuthSource::Oidc, true) => "; its stored password is kept but no longer accepted for mail",
        (AuthSource::Oidc, false) => "",
    };
    ctx.out.done(&format!(
        "mailbox {address} now authenticates with {source}{note}"
    ));
    Ok(())
}

async fn unlink(ctx: &Ctx, address: &str) -> Result<(), CliError> {
    let address = Address::parse(address)?;
    let before = require_mailbox(ctx, &address).await?;
    let changes = MailboxChanges {
        unlink_identity: true,
        ..Default::default()
    };
    provision::update_mailbox(&*ctx.store, &ctx.clock, &address, changes).await?;
    match (before.oidc_issuer, before.oidc_subject) {
        (Some(issuer), Some(subject)) => ctx.out.done(&format!(
            "mailbox {address} is no longer bound to {subject} at {issuer}; the next sign-in with this address binds it"
        )),
        _ => ctx.out.done(&format!(
            "mailbox {address} was not bound to an identity-provider account"
        )),
    }
    Ok(())
}

/// Why a passwd-file line cannot be imported.
#[derive(Debug, Error)]
enum PasswdLineError {
    #[error("no password field")]
    NoPassword,
    #[error(transparent)]
    Address(#[from] NameError),
    #[error(transparent)]
    Hash(#[from] HashError),
    #[error(transparent)]
    Quota(#[from] SizeError),
}

/// A mailbox to import, as one passwd-file line gives it.
struct PasswdEntry {
    address: Address,
    hash: String,
    quota: Option<u64>,
}

/// One passwd-file line: `user:password[:uid:gid:gecos:home:shell:extra fields]`.
fn passwd_line(line: &str) -> Result<PasswdEntry, PasswdLineError> {
    let mut fields = line.splitn(8, ':');
    let user = fields.next().unwrap_or("");
    let hash = fields.next().ok_or(PasswdLineError::NoPassword)?;
    let address = Address::parse(user)?;
    password::scheme_of(hash)?;
    let extra = fields.nth(5).unwrap_or("");
    let quota = extra
        .split_whitespace()
        .find_map(|f| {
            f.strip_prefix("userdb_quota_rule=*:storage=")
                .or_else(|| f.strip_prefix("userdb_quota_rule=*:bytes="))
        })
        .map(parse_size)
        .transpose()?;
    Ok(PasswdEntry {
        address,
        hash: hash.to_string(),
        quota,
    })
}

/// Reads a passwd-file (`-` for stdin) and checks every line before anything is created.
/// Each entry comes with its line number.
fn passwd_file(file: &Path) -> Result<Vec<(usize, PasswdEntry)>, CliError> {
    let text = if file.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .map_err(|e| CliError::refused(e.to_string()))?;
        s
    } else {
        std::fs::read_to_string(file)
            .map_err(|e| CliError::refused(format!("cannot read {}: {e}", file.display())))?
    };
    let mut parsed = Vec::new();
    let mut problems = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match passwd_line(line) {
            Ok(entry) => parsed.push((n + 1, entry)),
            Err(e) => problems.push(format!("line {}: {e}", n + 1)),
        }
    }
    if !problems.is_empty() {
        return Err(CliError::usage(format!(
            "nothing imported; fix these lines first:\n  {}",
            problems.join("\n  ")
        )));
    }
    Ok(parsed)
}

async fn import(
    ctx: &Ctx,
    file: &Path,
    dry_run: bool,
    template: Option<String>,
) -> Result<(), CliError> {
    let parsed = passwd_file(file)?;
    if dry_run {
        ctx.out.done(&format!(
            "{} mailbox(es) would be imported; nothing was changed",
            parsed.len()
        ));
        return Ok(());
    }
    let (mut created, mut refused) = (0, Vec::new());
    for (
        n,
        PasswdEntry {
            address,
            hash,
            quota,
        },
    ) in parsed
    {
        let new = NewMailbox {
            address: address.clone(),
            password_hash: Some(hash),
            auth_source: AuthSource::Local,
            display_name: String::new(),
            quota,
            protocols: None,
            state: None,
            template: template.clone(),
            oidc_identity: None,
            require_active_domain: false,
        };
        match provision::create_mailbox(&*ctx.store, &ctx.clock, new).await {
            Ok(_) => created += 1,
            Err(ProvisionError::Store(e)) if e.is_unavailable() => return Err(e.into()),
            Err(e) => refused.push(format!("line {n} ({address}): {e}")),
        }
    }
    if refused.is_empty() {
        ctx.out.done(&format!("{created} mailbox(es) imported"));
        Ok(())
    } else {
        Err(CliError::refused(format!(
            "{created} imported, {} refused:\n  {}",
            refused.len(),
            refused.join("\n  ")
        )))
    }
}
