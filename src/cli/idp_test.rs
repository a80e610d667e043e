//! `mailauthd idp test`: the identity provider checked step by step, ✓ or ✗ with a hint.

use std::path::Path;

use super::output::Output;
use super::{admin, CliError};
use crate::oidc::probe::{self, Status};

pub async fn run(config_path: Option<&Path>, out: &Output) -> Result<(), CliError> {
    let config = admin::load_config(config_path)?;
    let Some(settings) = config.oidc.as_ref() else {
        return Err(CliError::usage(
            "no [oidc] section in the config: there is no identity provider to test",
        ));
    };
    if !out.is_json() {
        println!(
            "identity provider {} (client {})",
            settings.issuer, settings.client_id
        );
    }
    let steps = probe::run(settings).await;
    let failed = steps.iter().filter(|s| s.status == Status::Fail).count();
    if out.is_json() {
        out.json(&serde_json::json!({ "ok": failed == 0, "steps": steps }));
    } else {
        for step in &steps {
            let mark = match step.status {
                Status::Pass => "✓",
                Status::Fail => "✗",
                Status::Warn => "!",
            };
            println!("{mark} {}: {}", step.title, step.detail);
            if !step.hint.is_empty() {
                println!("    hint: {}", step.hint);
            }
        }
        if failed == 0 {
            println!("all steps passed");
        } else {
            println!("{failed} step(s) failed");
        }
    }
    if failed == 0 {
        Ok(())
    } else {
        Err(CliError::refused(""))
    }
}
