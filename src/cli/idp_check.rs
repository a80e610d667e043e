//! `mailauthd idp check [ADDRESS] [--dry-run]`: one liveness pass now, printed one line per
//! mailbox; the exit code says whether its answers were applied (see `IDP_CHECK_HELP`).

use std::path::Path;
use std::sync::Arc;

use super::output::Output;
use super::{admin, CliError};
use crate::clock::{Clock, SystemClock};
use crate::liveness::{Liveness, PassEnd, PassError, PassOptions};
use crate::names::Address;
use crate::oidc::RelyingParty;
use crate::sealed::SealingKey;
use crate::store::Store;

pub async fn run(
    config_path: Option<&Path>,
    out: &Output,
    address: Option<&str>,
    dry_run: bool,
) -> Result<(), CliError> {
    let config = admin::load_config(config_path)?;
    let Some(settings) = config.oidc.clone() else {
        return Err(CliError::usage(
            "no [oidc] section in the config: there is no identity provider to check against",
        ));
    };
    let only = address
        .map(|a| Address::parse(a).map(|a| a.as_str().to_string()))
        .transpose()
        .map_err(|e| CliError::usage(e.to_string()))?;
    let store: Arc<dyn Store> = admin::open_store(&config).await?;
    let key = crate::keyfile::load_or_create(&config.key_file)
        .map_err(|e| CliError::refused(e.to_string()))?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let request_timeout = settings.timeout * 3;
    let liveness_settings = settings.liveness.clone();
    let rp =
        RelyingParty::new(settings, clock.clone()).map_err(|e| CliError::refused(e.to_string()))?;
    let liveness = Liveness {
        store,
        rp: Arc::new(rp),
        key: Arc::new(SealingKey::derive(&key)),
        clock,
        settings: liveness_settings,
        request_timeout,
    };
    let report = match liveness.run_pass(&PassOptions { only, dry_run }).await {
        Ok(r) => r,
        Err(PassError::NotLinked(a)) => {
            return Err(CliError::usage(format!(
                "{a} is not a mailbox linked to an identity-provider account"
            )))
        }
        Err(e @ PassError::Busy) => return Err(CliError::temporary(e.to_string())),
        Err(PassError::Store(e)) if e.is_unavailable() => {
            return Err(CliError::temporary(format!(
                "the store is unavailable ({e}); nobody was suspended"
            )))
        }
        Err(PassError::Store(e)) => return Err(e.into()),
    };
    if out.is_json() {
        out.json(&serde_json::json!({
            "mailboxes": report.mailboxes,
            "summary": report.summary(),
            "dry_run": dry_run,
            "problem": report.problem(),
        }));
    } else {
        for c in &report.mailboxes {
            println!("{}\t{}\t{}", c.address, c.answer, c.change);
        }
        println!("{}", report.summary());
    }
    let problem = report.problem().unwrap_or_default();
    match report.end {
        PassEnd::Applied => Ok(()),
        PassEnd::Brake { .. } | PassEnd::ClientRefused => Err(CliError::refused(problem)),
        PassEnd::ProviderDown | PassEnd::StoreDown(_) => Err(CliError::temporary(problem)),
    }
}
