//! `mailauthd auth test`: one login through the real decision core, like `doveadm auth test`.

use std::net::IpAddr;
use std::path::Path;

use super::output::Output;
use super::{admin, secrets, CliError};
use crate::auth::{AuthRequest, Credential, Outcome};
use crate::runtime::Core;

pub async fn run(
    config_path: Option<&Path>,
    out: &Output,
    login: &str,
    service: &str,
    rip: Option<IpAddr>,
    secured: bool,
) -> Result<(), CliError> {
    let config = admin::load_config(config_path)?;
    let secret = secrets::for_test()?;
    let core = Core::start(&config).await.map_err(|e| {
        if e.is_temporary() {
            CliError::temporary(e.to_string())
        } else {
            CliError::refused(e.to_string())
        }
    })?;
    let started = std::time::Instant::now();
    let outcome = core
        .auth
        .authenticate(&AuthRequest {
            login,
            secret: &secret,
            kind: crate::auth::SecretKind::Password,
            service,
            remote_ip: rip,
            secured,
            mechanism: Some("PLAIN"),
            no_penalty: false,
            admitted: None,
        })
        .await;
    let elapsed = started.elapsed();
    core.shutdown().await;
    report(out, login, service, &outcome, elapsed);
    match outcome {
        Outcome::Ok(_) => Ok(()),
        Outcome::Fail(_) => Err(CliError::refused("")),
        Outcome::TempFail(_) => Err(CliError::temporary("")),
    }
}

fn report(
    out: &Output,
    login: &str,
    service: &str,
    outcome: &Outcome,
    elapsed: std::time::Duration,
) {
    let millis = format!("{:.1} ms", elapsed.as_secs_f64() * 1000.0);
    let (result, user, credential) = match outcome {
        Outcome::Ok(s) => (
            "accepted",
            s.mailbox.clone(),
            match &s.credential {
                Credential::Password => "stored password".to_string(),
                Credential::AppPassword { id, name } => format!("app password {id} ({name})"),
                Credential::Token => "access token".to_string(),
            },
        ),
        Outcome::Fail(_) => ("refused", login.to_string(), "-".into()),
        Outcome::TempFail(_) => ("temporary failure", login.to_string(), "-".into()),
    };
    out.record(
        &serde_json::json!({
            "result": outcome.label(), "reason": outcome.reason(), "user": user,
            "service": service, "credential": credential, "elapsed_ms": elapsed.as_secs_f64() * 1000.0,
        }),
        &[
            ("result", result.to_string()),
            ("reason", outcome.reason().to_string()),
            ("user", user.clone()),
            ("service", service.to_string()),
            ("credential", credential.clone()),
            ("time", millis),
        ],
    );
}
