//! `mailauthd policy test`: one policy request from stdin through the real decisions.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use super::output::Output;
use super::{admin, CliError};
use crate::clock::SystemClock;
use crate::policy::{Decision, DecisionError, PolicyService};
use crate::proto::postfix_policy::{decode, encode_action, Decoded, Limits, PolicyRequest};

pub async fn run(config_path: Option<&Path>, out: &Output) -> Result<(), CliError> {
    let config = admin::load_config(config_path)?;
    let limits = config.policy.codec;
    let input = read_stdin(limits.max_request_bytes)?;
    let request = parse(&input, &limits)?;
    let store = admin::open_store(&config).await?;
    let service = PolicyService::new(store.clone(), Arc::new(SystemClock), config.policy);
    let result = service.decide(&request).await;
    store.close().await;
    report(out, &request, &result);
    match result {
        Ok(Decision::Dunno(_)) => Ok(()),
        Ok(_) => Err(CliError::refused("")),
        Err(e @ DecisionError::Request(_)) => Err(CliError::usage(e.to_string())),
        Err(e) if e.is_temporary() => Err(CliError::temporary(e.to_string())),
        Err(e) => Err(CliError::refused(e.to_string())),
    }
}

fn read_stdin(max: usize) -> Result<Vec<u8>, CliError> {
    let mut input = Vec::new();
    // One byte over the cap is enough to tell that the request is too large.
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    std::io::stdin()
        .lock()
        .take(limit)
        .read_to_end(&mut input)
        .map_err(|e| CliError::usage(format!("cannot read standard input: {e}")))?;
    Ok(input)
}

/// What a person types is forgiven two things Postfix never omits: the `request=` line and
/// the closing empty line. Anything else the daemon would refuse is refused here too.
fn parse(input: &[u8], limits: &Limits) -> Result<PolicyRequest, CliError> {
    let mut text = Vec::with_capacity(input.len() + 32);
    let body = trim_trailing_newlines(input);
    text.extend_from_slice(body);
    if !body.is_empty() {
        text.push(b'\n');
    }
    // Added last, so the line numbers in error messages are those of the input.
    let has_request = input
        .split(|&b| b == b'\n')
        .any(|line| line.starts_with(b"request="));
    if !has_request {
        text.extend_from_slice(b"request=smtpd_access_policy\n");
    }
    text.push(b'\n');
    let limits = Limits {
        // The added request line must not push a request that fits over the cap.
        max_request_bytes: limits.max_request_bytes.saturating_add(32),
        max_attributes: limits.max_attributes.saturating_add(1),
        ..*limits
    };
    match decode(&text, &limits) {
        Decoded::Request { request, consumed } if consumed == text.len() => Ok(request),
        Decoded::Request { .. } => Err(CliError::usage(
            "standard input holds more than one request (an empty line ends one)",
        )),
        Decoded::Invalid(e) => Err(CliError::usage(e.to_string())),
        Decoded::NeedMore => Err(CliError::usage("incomplete request")),
    }
}

fn trim_trailing_newlines(mut bytes: &[u8]) -> &[u8] {
    while let Some(rest) = bytes
        .strip_suffix(b"\n")
        .or_else(|| bytes.strip_suffix(b"\r"))
    {
        bytes = rest;
    }
    bytes
}

fn report(out: &Output, request: &PolicyRequest, result: &Result<Decision, DecisionError>) {
    let (action, result_label, reason) = match result {
        Ok(d) => {
            let wire = encode_action(&d.action());
            let line = String::from_utf8_lossy(&wire);
            let action = line
                .trim_end_matches('\n')
                .trim_start_matches("action=")
                .to_string();
            (action, d.label(), d.reason().code())
        }
        Err(e) => (
            "(no reply: the daemon would close the connection)".to_string(),
            "error",
            e.code(),
        ),
    };
    let user = request.sasl_username.clone().unwrap_or_else(|| "-".into());
    let sender = match request.sender.as_deref() {
        None => "-".to_string(),
        Some("") => "<>".to_string(),
        Some(s) => s.to_string(),
    };
    out.record(
        &serde_json::json!({
            "result": result_label, "action": action, "reason": reason,
            "user": request.sasl_username, "sender": request.sender,
        }),
        &[
            ("action", action.clone()),
            ("reason", reason.to_string()),
            ("user", user),
            ("sender", sender),
        ],
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(input: &str) -> Result<PolicyRequest, CliError> {
        parse(input.as_bytes(), &Limits::default())
    }

    #[test]
    fn typed_input_is_completed() {
        let r = parsed("sasl_username=a@x.org\nsender=a@x.org").unwrap();
        assert_eq!(r.request, "smtpd_access_policy");
        assert_eq!(r.sender.as_deref(), Some("a@x.org"));
        let r = parsed("request=smtpd_access_policy\r\nsender=\r\n\r\n").unwrap();
        assert_eq!(r.sender.as_deref(), Some(""));
        assert_eq!(parsed("").unwrap().request, "smtpd_access_policy");
    }

    #[test]
    fn bad_input_is_a_usage_error() {
        for bad in ["sender a@x.org\n", "a=1\n\nb=2\n", "size=x\n"] {
            assert_eq!(parsed(bad).map(|_| ()).unwrap_err().code, 2, "{bad:?}");
        }
    }
}
