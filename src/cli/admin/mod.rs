//! Admin commands, one file per noun of the command line. Each translates its arguments into
//! store reads and provisioning calls, and prints the outcome as a table, a record or a
//! one-line confirmation (JSON with `--json`).
//!
//! Mailboxes are created, changed and removed only through [`crate::provision`], so that
//! a domain's limits and the templates mean the same here as for a sign-in. The other
//! nouns (domains, alias domains, templates, mappings, app passwords, aliases and send-as
//! grants) are rows of their own, written through the store directly.

mod alias;
mod alias_domain;
mod app_password;
mod device;
mod domain;
mod mailbox;
mod mapping;
mod send_as;
mod template;
mod values;

use std::path::Path;
use std::sync::Arc;

use super::output::Output;
use super::{CliError, Command};
use crate::clock::SystemClock;
use crate::config::{self, Config};
use crate::names::Address;
use crate::store::{Domain, Domains, Mailbox, Mailboxes, SqlStore, Store, StoreError, MIGRATIONS};

/// What every admin command works with: the config, the open store, the clock and the
/// output format.
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
        Command::Domain(c) => domain::run(&ctx, c).await,
        Command::AliasDomain(c) => alias_domain::run(&ctx, c).await,
        Command::Mailbox(c) => mailbox::run(&ctx, c).await,
        Command::Template(c) => template::run(&ctx, c).await,
        Command::Mapping(c) => mapping::run(&ctx, c).await,
        Command::AppPassword(c) => app_password::run(&ctx, c).await,
        Command::Device(c) => device::run(&ctx, c).await,
        Command::Alias(c) => alias::run(&ctx, c).await,
        Command::SendAs(c) => send_as::run(&ctx, c).await,
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

/// A store error as the CLI reports it, with `message` for a row that already exists.
fn conflict(message: &str) -> impl Fn(StoreError) -> CliError + '_ {
    move |e| match e {
        StoreError::Conflict(_) => CliError::refused(message.to_string()),
        other => other.into(),
    }
}
