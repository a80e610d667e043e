//! Admin commands: they translate arguments into store and provisioning calls.

use std::path::Path;
use std::sync::Arc;

use super::output::Output;
use super::*;
use crate::auth::app_password;
use crate::auth::password;
use crate::clock::{format_time, parse_date, Clock, SystemClock};
use crate::config::{self, Config};
use crate::names::{normalize_domain, Address, Protocols};
use crate::provision::{self, MailboxChanges, NewMailbox};
use crate::size::{format_size, parse_size};
use crate::store::*;

struct Ctx {
    config: Config,
    store: Arc<SqlStore>,
    clock: SystemClock,
    out: Output,
}

pub fn load_config(path: Option<&Path>) -> Result<Config, CliError> {
    let path = config::resolve_path(path);
    config::load(&path).map_err(|e| CliError::usage(e.to_string().trim_end().to_string()))
}

/// Opens the store and brings its schema up to date, so a fresh SQLite file just works.
pub async fn open_store(config: &Config) -> Result<Arc<SqlStore>, CliError> {
    let store = crate::store::open(&config.store).await?;
    store.migrate().await.map_err(|e| match e {
        e if e.is_unavailable() => CliError::temporary(format!("{e} ({})", config.store.url)),
        e => CliError::refused(format!("{e} ({})", config.store.url)),
    })?;
    Ok(Arc::new(store))
}

pub fn config_check(path: Option<&Path>, out: &Output) -> Result<(), CliError> {
    let resolved = config::resolve_path(path);
    match config::load(&resolved) {
        Ok(c) => {
            let fields = [
                ("config", resolved.display().to_string()),
                ("store", c.store.url.to_string()),
                ("key file", c.key_file.display().to_string()),
                (
                    "hash workers",
                    format!("{} (+{} queued)", c.hash_workers, c.hash_queue),
                ),
                ("throttle", c.throttle.describe()),
            ];
            let mut fields = fields.to_vec();
            if let Some(o) = &c.oidc {
                fields.push((
                    "identity provider",
                    format!(
                        "{} (client {}){}",
                        o.issuer,
                        o.client_id,
                        if o.ignore_tls_errors {
                            "; TLS NOT CHECKED (ignore_tls_errors)"
                        } else {
                            ""
                        }
                    ),
                ));
            }
            if let Some(w) = &c.web {
                fields.push(("web page", format!("http://{}", w.listen)));
            }
            if out.is_json() {
                out.json(&serde_json::json!({ "ok": true, "config": resolved, "store": c.store.url.to_string() }));
            } else {
                println!("{} is valid", resolved.display());
                out.record(&(), &fields[1..]);
            }
            Ok(())
        }
        Err(e) => {
            if out.is_json() {
                let problems: Vec<_> = e
                    .problems
                    .iter()
                    .map(|p| serde_json::json!({ "key": p.key, "message": p.message }))
                    .collect();
                out.json(
                    &serde_json::json!({ "ok": false, "config": resolved, "problems": problems }),
                );
                Err(CliError::usage(""))
            } else {
                Err(CliError::usage(e.to_string().trim_end().to_string()))
            }
        }
    }
}

pub async fn run(
    config_path: Option<&Path>,
    out: &Output,
    command: Command,
) -> Result<(), CliError> {
    let config = load_config(config_path)?;
    let store = open_store(&config).await?;
    let ctx = Ctx {
        config,
        store,
        clock: SystemClock,
        out: Output::new(out.is_json()),
    };
    let result = match command {
        Command::Migrate => migrate(&ctx).await,
        Command::Domain(c) => domain(&ctx, c).await,
        Command::AliasDomain(c) => alias_domain(&ctx, c).await,
        Command::Mailbox(c) => mailbox(&ctx, c).await,
        Command::Template(c) => template(&ctx, c).await,
        Command::Mapping(c) => mapping(&ctx, c).await,
        Command::AppPassword(c) => app_password_cmd(&ctx, c).await,
        Command::Alias(c) => alias(&ctx, c).await,
        Command::SendAs(c) => send_as(&ctx, c).await,
        Command::Serve
        | Command::Config(_)
        | Command::Auth(_)
        | Command::Idp(_)
        | Command::Throttle(_)
        | Command::Policy(_) => Err(CliError::usage("not an admin command")),
    };
    ctx.store.close().await;
    result
}

async fn migrate(ctx: &Ctx) -> Result<(), CliError> {
    // open_store already applied them; the key belongs to the same initial state.
    crate::keyfile::load_or_create(&ctx.config.key_file)
        .map_err(|e| CliError::refused(e.to_string()))?;
    let applied: Vec<&str> = MIGRATIONS.iter().map(|m| m.name).collect();
    ctx.out.done(&format!(
        "database {} ({}) is up to date: {}",
        ctx.config.store.url,
        ctx.store.dialect().name(),
        applied.join(", ")
    ));
    Ok(())
}

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

fn size(v: &str) -> Result<u64, CliError> {
    Ok(parse_size(v)?)
}

fn show_limit(v: Option<u64>, sized: bool) -> String {
    match v {
        None => "unlimited".into(),
        Some(n) if sized => format_size(n),
        Some(n) => n.to_string(),
    }
}

fn show_quota(q: u64) -> String {
    if q == 0 {
        "unlimited".into()
    } else {
        format_size(q)
    }
}

fn state(v: Option<&str>) -> Result<Option<MailboxState>, CliError> {
    v.map(|s| s.parse::<MailboxState>().map_err(CliError::usage))
        .transpose()
}

fn protocols(v: Option<&str>) -> Result<Option<Protocols>, CliError> {
    Ok(v.map(Protocols::parse_list).transpose()?)
}

async fn require_domain(ctx: &Ctx, name: &str) -> Result<Domain, CliError> {
    ctx.store.get_domain(name).await?.ok_or_else(|| {
        CliError::refused(format!(
            "domain {name} does not exist (add it with: mailauthd domain add {name})"
        ))
    })
}

async fn require_mailbox(ctx: &Ctx, address: &Address) -> Result<Mailbox, CliError> {
    ctx.store
        .get_mailbox(address.as_str())
        .await?
        .ok_or_else(|| CliError::refused(format!("mailbox {address} does not exist")))
}

// Domains

async fn domain(ctx: &Ctx, command: DomainCommand) -> Result<(), CliError> {
    match command {
        DomainCommand::Add {
            name,
            limits,
            inactive,
        } => {
            let name = normalize_domain(&name)?;
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
        }
        DomainCommand::List => {
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
        }
        DomainCommand::Show { name } => {
            let name = normalize_domain(&name)?;
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
        }
        DomainCommand::Set {
            name,
            limits,
            active,
        } => {
            let name = normalize_domain(&name)?;
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
        }
        DomainCommand::Remove { name } => {
            let name = normalize_domain(&name)?;
            ctx.store.delete_domain(&name).await?;
            ctx.out.done(&format!("domain {name} removed"));
        }
    }
    Ok(())
}

fn conflict(message: &str) -> impl Fn(StoreError) -> CliError + '_ {
    move |e| match e {
        StoreError::Conflict(_) => CliError::refused(message.to_string()),
        other => other.into(),
    }
}

async fn alias_domain(ctx: &Ctx, command: AliasDomainCommand) -> Result<(), CliError> {
    match command {
        AliasDomainCommand::Add { alias, target } => {
            let alias = normalize_domain(&alias)?;
            let target = normalize_domain(&target)?;
            require_domain(ctx, &target).await?;
            let a = AliasDomain {
                name: alias.clone(),
                target: target.clone(),
                active: true,
                created_at: ctx.clock.now(),
            };
            ctx.store
                .create_alias_domain(&a)
                .await
                .map_err(conflict(&format!(
                    "{alias} already exists as a domain or alias domain"
                )))?;
            ctx.out
                .done(&format!("alias domain {alias} -> {target} added"));
        }
        AliasDomainCommand::List => {
            let list = ctx.store.list_alias_domains().await?;
            let rows = list
                .iter()
                .map(|a| vec![a.name.clone(), a.target.clone(), format_time(a.created_at)])
                .collect();
            ctx.out
                .list(&list, &["ALIAS DOMAIN", "TARGET", "CREATED"], rows);
        }
        AliasDomainCommand::Remove { alias } => {
            let alias = normalize_domain(&alias)?;
            ctx.store.delete_alias_domain(&alias).await?;
            ctx.out.done(&format!("alias domain {alias} removed"));
        }
    }
    Ok(())
}

// Mailboxes

async fn hash_new_password(ctx: &Ctx, secret: crate::secret::Secret) -> Result<String, CliError> {
    let params = ctx.config.argon2;
    tokio::task::spawn_blocking(move || password::hash_argon2id(secret.expose(), params))
        .await
        .map_err(|e| CliError::refused(format!("hashing failed: {e}")))?
        .map_err(|e| CliError::refused(format!("hashing failed: {e}")))
}

async fn mailbox(ctx: &Ctx, command: MailboxCommand) -> Result<(), CliError> {
    match command {
        MailboxCommand::Import {
            file,
            dry_run,
            template,
        } => return import(ctx, &file, dry_run, template).await,
        MailboxCommand::Add {
            address,
            password_stdin,
            no_password,
            password_hash_stdin,
            authsource,
            fields,
        } => {
            let address = Address::parse(&address)?;
            let source: AuthSource = authsource.parse().map_err(CliError::usage)?;
            let quota = fields.quota.as_deref().map(size).transpose()?;
            let (protocols, state) = (
                protocols(fields.protocols.as_deref())?,
                state(fields.active.as_deref())?,
            );
            // Check what can be checked before asking for a password.
            require_domain(ctx, address.domain()).await?;
            let hash = if password_hash_stdin {
                Some(imported_hash(secrets::from_stdin()?)?)
            } else if password_stdin {
                Some(hash_new_password(ctx, secrets::from_stdin()?).await?)
            } else if no_password || source == AuthSource::Oidc {
                None
            } else {
                Some(hash_new_password(ctx, secrets::prompt_new()?).await?)
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
        }
        MailboxCommand::List { domain } => {
            let domain = domain.map(|d| normalize_domain(&d)).transpose()?;
            let list = ctx.store.list_mailboxes(domain.as_deref()).await?;
            let rows = list
                .iter()
                .map(|m| {
                    vec![
                        m.address.clone(),
                        m.state.code().to_string(),
                        m.auth_source.to_string(),
                        show_quota(m.quota),
                        m.protocols.to_string(),
                        m.template.clone().unwrap_or_else(|| "-".into()),
                        m.last_login
                            .as_ref()
                            .map(|l| format_time(l.at))
                            .unwrap_or_else(|| "never".into()),
                    ]
                })
                .collect();
            ctx.out.list(
                &list,
                &[
                    "ADDRESS",
                    "ACTIVE",
                    "AUTH",
                    "QUOTA",
                    "PROTOCOLS",
                    "TEMPLATE",
                    "LAST LOGIN",
                ],
                rows,
            );
        }
        MailboxCommand::Show { address } => {
            let address = Address::parse(&address)?;
            let m = require_mailbox(ctx, &address).await?;
            let apps = ctx.store.list_app_passwords(m.address.as_str()).await?;
            let last = m
                .last_login
                .as_ref()
                .map(describe_use)
                .unwrap_or_else(|| "never".into());
            ctx.out.record(
                &serde_json::json!({ "mailbox": m, "has_password": m.has_password(), "app_passwords": apps.len() }),
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
                    ("app passwords", apps.len().to_string()),
                    ("last login", last),
                    ("created", format_time(m.created_at)),
                ],
            );
        }
        MailboxCommand::Set {
            address,
            password_stdin,
            password_prompt,
            reset,
            fields,
        } => {
            let address = Address::parse(&address)?;
            let changes = MailboxChanges {
                display_name: fields.name,
                quota: fields.quota.as_deref().map(size).transpose()?,
                protocols: protocols(fields.protocols.as_deref())?,
                state: state(fields.active.as_deref())?,
                template: fields.template,
                reset,
                unlink_identity: false,
            };
            let existing = require_mailbox(ctx, &address).await?;
            let new_hash = if password_stdin {
                Some(hash_new_password(ctx, secrets::from_stdin()?).await?)
            } else if password_prompt {
                Some(hash_new_password(ctx, secrets::prompt_new()?).await?)
            } else {
                None
            };
            let m = provision::update_mailbox(&*ctx.store, &ctx.clock, &address, changes).await?;
            if let Some(hash) = new_hash {
                ctx.store
                    .set_password_hash(&m.address, Some(&hash), ctx.clock.now())
                    .await?;
                if existing.auth_source == AuthSource::Oidc {
                    eprintln!("mailauthd: note: {address} signs in through the identity provider; the password is kept for a switch back to local");
                }
            }
            ctx.out.done(&format!("mailbox {address} updated"));
        }
        MailboxCommand::SetAuthsource { address, source } => {
            let address = Address::parse(&address)?;
            let source: AuthSource = source.parse().map_err(CliError::usage)?;
            let m = require_mailbox(ctx, &address).await?;
            ctx.store
                .set_auth_source(&m.address, source, ctx.clock.now())
                .await?;
            let note = match (source, m.has_password()) {
                (AuthSource::Local, false) => {
                    "; it has no stored password yet: set one with mailbox set --password-stdin"
                }
                (AuthSource::Local, true) => "; its stored password works again",
                (AuthSource::Oidc, true) => {
                    "; its stored password is kept but no longer accepted for mail"
                }
                (AuthSource::Oidc, false) => "",
            };
            ctx.out.done(&format!(
                "mailbox {address} now authenticates with {source}{note}"
            ));
        }
        MailboxCommand::Unlink { address } => {
            let address = Address::parse(&address)?;
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
        }
        MailboxCommand::Remove { address } => {
            let address = Address::parse(&address)?;
            ctx.store.delete_mailbox(address.as_str()).await?;
            ctx.out.done(&format!("mailbox {address} removed"));
        }
    }
    Ok(())
}

/// A hash someone brings from another system: accepted only if we can verify its scheme.
fn imported_hash(text: crate::secret::Secret) -> Result<String, CliError> {
    let hash = String::from_utf8(text.expose().to_vec())
        .map_err(|_| CliError::usage("the hash is not text"))?;
    let hash = hash.trim().to_string();
    password::scheme_of(&hash)
        .map_err(|e| CliError::usage(format!("cannot use that hash: {e}")))?;
    Ok(hash)
}

/// One passwd-file line: `user:password[:uid:gid:gecos:home:shell:extra fields]`.
fn passwd_line(line: &str) -> Result<(Address, String, Option<u64>), String> {
    let mut fields = line.splitn(8, ':');
    let user = fields.next().unwrap_or("");
    let hash = fields.next().ok_or("no password field")?;
    let address = Address::parse(user).map_err(|e| e.to_string())?;
    password::scheme_of(hash).map_err(|e| e.to_string())?;
    let extra = fields.nth(5).unwrap_or("");
    let quota = extra
        .split_whitespace()
        .find_map(|f| {
            f.strip_prefix("userdb_quota_rule=*:storage=")
                .or_else(|| f.strip_prefix("userdb_quota_rule=*:bytes="))
        })
        .map(|q| parse_size(q).map_err(|e| e.to_string()))
        .transpose()?;
    Ok((address, hash.to_string(), quota))
}

async fn import(
    ctx: &Ctx,
    file: &Path,
    dry_run: bool,
    template: Option<String>,
) -> Result<(), CliError> {
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
    if dry_run {
        ctx.out.done(&format!(
            "{} mailbox(es) would be imported; nothing was changed",
            parsed.len()
        ));
        return Ok(());
    }
    let (mut created, mut refused) = (0, Vec::new());
    for (n, (address, hash, quota)) in parsed {
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
            Err(crate::provision::ProvisionError::Store(e)) if e.is_unavailable() => {
                return Err(e.into())
            }
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

fn describe_use(l: &LastUseInfo) -> String {
    format!(
        "{} from {} ({})",
        format_time(l.at),
        l.ip.as_deref().unwrap_or("unknown address"),
        l.service.as_deref().unwrap_or("?")
    )
}

// Templates and mappings

fn template_row(t: &Template) -> Vec<String> {
    vec![
        t.name.clone(),
        show_quota(t.quota),
        t.protocols.to_string(),
        t.state.code().to_string(),
    ]
}

async fn template(ctx: &Ctx, command: TemplateCommand) -> Result<(), CliError> {
    match command {
        TemplateCommand::Add { name, fields } => {
            let name = template_name(&name)?;
            let now = ctx.clock.now();
            let t = Template {
                name: name.clone(),
                quota: fields.quota.as_deref().map(size).transpose()?.unwrap_or(0),
                protocols: protocols(fields.protocols.as_deref())?.unwrap_or(Protocols::ALL),
                state: state(fields.active.as_deref())?.unwrap_or(MailboxState::Active),
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
        }
        TemplateCommand::List => {
            let list = ctx.store.list_templates().await?;
            let rows = list.iter().map(template_row).collect();
            ctx.out
                .list(&list, &["TEMPLATE", "QUOTA", "PROTOCOLS", "ACTIVE"], rows);
        }
        TemplateCommand::Show { name } => {
            let t = ctx
                .store
                .get_template(&name)
                .await?
                .ok_or_else(|| CliError::refused(format!("template {name} does not exist")))?;
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
        }
        TemplateCommand::Set { name, fields } => {
            let mut t = ctx
                .store
                .get_template(&name)
                .await?
                .ok_or_else(|| CliError::refused(format!("template {name} does not exist")))?;
            if let Some(q) = fields.quota.as_deref() {
                t.quota = size(q)?;
            }
            if let Some(p) = protocols(fields.protocols.as_deref())? {
                t.protocols = p;
            }
            if let Some(s) = state(fields.active.as_deref())? {
                t.state = s;
            }
            t.updated_at = ctx.clock.now();
            let limits = send_limits(fields.send_limits.as_deref())?;
            ctx.store.update_template(&t).await?;
            if let Some(limits) = limits {
                ctx.store
                    .set_template_send_limits(&name, limits.as_ref(), t.updated_at)
                    .await?;
            }
            ctx.out.done(&format!(
                "template {name} updated; mailboxes following it change on their next sign-in"
            ));
        }
        TemplateCommand::Remove { name } => {
            ctx.store.delete_template(&name).await?;
            ctx.out.done(&format!("template {name} removed"));
        }
    }
    Ok(())
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

fn template_name(name: &str) -> Result<String, CliError> {
    let n = name.trim();
    if n.is_empty() || n.len() > 100 || n.chars().any(|c| c.is_control()) {
        return Err(CliError::usage(format!("invalid template name {name:?}")));
    }
    Ok(n.to_string())
}

async fn mapping(ctx: &Ctx, command: MappingCommand) -> Result<(), CliError> {
    match command {
        MappingCommand::Add {
            value,
            template,
            position,
        } => {
            let value = template_name(&value)?;
            if ctx.store.get_template(&template).await?.is_none() {
                return Err(CliError::refused(format!(
                    "template {template} does not exist"
                )));
            }
            let position = match position {
                Some(p) => p,
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
                    template: template.clone(),
                })
                .await?;
            ctx.out.done(&format!(
                "claim value {value:?} maps to template {template} (position {position})"
            ));
        }
        MappingCommand::List => {
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
        }
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

// App passwords

async fn app_password_cmd(ctx: &Ctx, command: AppPasswordCommand) -> Result<(), CliError> {
    match command {
        AppPasswordCommand::Create {
            address,
            name,
            protocols: list,
            expires,
            networks,
        } => {
            let address = Address::parse(&address)?;
            let name = name.trim().to_string();
            if name.is_empty() || name.len() > 100 || name.chars().any(|c| c.is_control()) {
                return Err(CliError::usage(
                    "--name must be 1 to 100 printable characters",
                ));
            }
            let wanted = Protocols::parse_list(&list)?;
            if wanted == Protocols::NONE {
                return Err(CliError::usage(
                    "--protocols must name at least one of imap, pop3, sieve, smtp",
                ));
            }
            let expires_at = match expires.as_deref() {
                None => None,
                Some(d) => {
                    // Expires at the start of that day (UTC): "expires 2027-06-01" stops working then.
                    let day = parse_date(d).ok_or_else(|| {
                        CliError::usage(format!("invalid --expires {d:?}: use YYYY-MM-DD"))
                    })?;
                    if day <= ctx.clock.now() {
                        return Err(CliError::usage(format!(
                            "--expires {d} is not in the future"
                        )));
                    }
                    Some(day)
                }
            };
            let networks =
                parse_networks(networks.as_deref().unwrap_or("")).map_err(CliError::usage)?;
            let m = require_mailbox(ctx, &address).await?;
            let key = crate::keyfile::load_or_create(&ctx.config.key_file)
                .map_err(|e| CliError::refused(e.to_string()))?;
            let secret = app_password::generate()
                .map_err(|e| CliError::refused(format!("no randomness: {e}")))?;
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
            let blocked: Vec<String> = wanted
                .iter()
                .filter(|p| !m.protocols.contains(*p))
                .map(|p| p.to_string())
                .collect();
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
            if !blocked.is_empty() {
                eprintln!(
                    "mailauthd: note: the mailbox itself does not allow {}; those logins stay refused until it does",
                    blocked.join(",")
                );
            }
        }
        AppPasswordCommand::List { address } => {
            let address = Address::parse(&address)?;
            let m = require_mailbox(ctx, &address).await?;
            let list = ctx.store.list_app_passwords(&m.address).await?;
            let now = ctx.clock.now();
            let rows = list
                .iter()
                .map(|a| {
                    vec![
                        a.id.to_string(),
                        a.name.clone(),
                        a.protocols.to_string(),
                        match a.expires_at {
                            None => "never".into(),
                            Some(t) if t <= now => format!("expired {}", format_time(t)),
                            Some(t) => format_time(t),
                        },
                        format_time(a.created_at),
                        a.last_used
                            .as_ref()
                            .map(describe_use)
                            .unwrap_or_else(|| "never".into()),
                    ]
                })
                .collect();
            ctx.out.list(
                &list,
                &["ID", "NAME", "PROTOCOLS", "EXPIRES", "CREATED", "LAST USED"],
                rows,
            );
        }
        AppPasswordCommand::Revoke { address, id } => {
            let address = Address::parse(&address)?;
            ctx.store.delete_app_password(address.as_str(), id).await?;
            ctx.out.done(&format!(
                "app password {id} of {address} revoked; the next login with it fails"
            ));
        }
    }
    Ok(())
}

// Aliases and send-as grants

async fn alias(ctx: &Ctx, command: AliasCommand) -> Result<(), CliError> {
    match command {
        AliasCommand::Add { address, targets } => {
            let address = Address::parse(&address)?;
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
        }
        AliasCommand::List { domain } => {
            let domain = domain.map(|d| normalize_domain(&d)).transpose()?;
            let list = ctx.store.list_aliases(domain.as_deref()).await?;
            let rows = list
                .iter()
                .map(|a| {
                    vec![
                        a.address.clone(),
                        a.target.clone(),
                        format_time(a.created_at),
                    ]
                })
                .collect();
            ctx.out.list(&list, &["ALIAS", "TARGET", "CREATED"], rows);
        }
        AliasCommand::Remove { address, target } => {
            let address = Address::parse(&address)?;
            let target = target.map(|t| Address::parse(&t)).transpose()?;
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

async fn send_as(ctx: &Ctx, command: SendAsCommand) -> Result<(), CliError> {
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
            let mailbox = mailbox.map(|m| Address::parse(&m)).transpose()?;
            let list = ctx
                .store
                .list_send_as(mailbox.as_ref().map(Address::as_str))
                .await?;
            let rows = list
                .iter()
                .map(|g| {
                    vec![
                        g.mailbox.clone(),
                        g.pattern.clone(),
                        format_time(g.created_at),
                    ]
                })
                .collect();
            ctx.out
                .list(&list, &["MAILBOX", "MAY SEND AS", "GRANTED"], rows);
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
