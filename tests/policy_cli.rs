//! `mailauthd policy test` and `template --send-limits`, run as a postmaster would.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};

use common::{mailauthd, Run};

fn ok(config: &Path, args: &[&str]) {
    let run = mailauthd(config, args, "");
    assert_eq!(run.code, 0, "{args:?}: {}{}", run.stdout, run.stderr);
}

fn write_config(dir: &Path, name: &str, extra: &str) -> PathBuf {
    let path = dir.join(name);
    let state = dir.join("state");
    std::fs::write(
        &path,
        format!(
            "state_directory = {:?}\n{extra}",
            state.display().to_string()
        ),
    )
    .unwrap();
    path
}

fn policy(config: &Path, attributes: &str) -> Run {
    mailauthd(config, &["policy", "test"], attributes)
}

fn field<'a>(run: &'a Run, name: &str) -> &'a str {
    run.stdout
        .lines()
        .find_map(|l| l.strip_prefix(name).map(str::trim))
        .unwrap_or_else(|| panic!("no {name} in {}", run.stdout))
}

#[test]
fn policy_test_prints_the_action_and_exits_by_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "mailauthd.toml", "");
    ok(&config, &["domain", "add", "example.org"]);
    for mailbox in ["alice@example.org", "bob@example.org"] {
        ok(&config, &["mailbox", "add", mailbox, "--no-password"]);
    }
    ok(
        &config,
        &[
            "alias",
            "add",
            "sales@example.org",
            "alice@example.org,bob@example.org",
        ],
    );
    ok(
        &config,
        &["send-as", "grant", "bob@example.org", "@example.net"],
    );

    let own = policy(
        &config,
        "protocol_state=RCPT\nsasl_username=alice@example.org\nsender=alice+x@example.org\n",
    );
    assert_eq!(own.code, 0, "{}{}", own.stdout, own.stderr);
    assert_eq!(field(&own, "action"), "DUNNO");
    assert_eq!(field(&own, "reason"), "subaddress");
    // The audit line goes to stderr, as the daemon would log it.
    assert!(
        own.stderr.contains("reason=\"subaddress\""),
        "{}",
        own.stderr
    );

    let alias = policy(
        &config,
        "request=smtpd_access_policy\nsasl_username=bob@example.org\nsender=sales@example.org\n\n",
    );
    assert_eq!((alias.code, field(&alias, "reason")), (0, "alias"));
    let granted = policy(
        &config,
        "sasl_username=bob@example.org\nsender=news@example.net\n",
    );
    assert_eq!((granted.code, field(&granted, "reason")), (0, "send_as"));

    let other = policy(
        &config,
        "sasl_username=alice@example.org\nsender=bob@example.org\n",
    );
    assert_eq!(other.code, 1, "{}{}", other.stdout, other.stderr);
    assert_eq!(
        field(&other, "action"),
        "REJECT 5.7.1 <bob@example.org>: not owned by alice@example.org"
    );
    assert_eq!(field(&other, "reason"), "not_owned");

    let json = mailauthd(
        &config,
        &["--json", "policy", "test"],
        "sasl_username=alice@example.org\nsender=bob@example.org\n",
    );
    let value: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(value["result"], "reject");
    assert_eq!(value["reason"], "not_owned");
    assert_eq!(json.code, 1);

    // Access re-check: disabled after login.
    ok(
        &config,
        &["mailbox", "set", "alice@example.org", "--active", "0"],
    );
    let disabled = policy(
        &config,
        "sasl_username=alice@example.org\nsender=alice@example.org\n",
    );
    assert_eq!(
        (disabled.code, field(&disabled, "reason")),
        (1, "mailbox_disabled")
    );

    let unauthenticated = policy(&config, "sender=alice@example.org\n");
    assert_eq!(
        (unauthenticated.code, field(&unauthenticated, "reason")),
        (0, "unauthenticated")
    );

    // Malformed input is a usage error, and line numbers are the input's own.
    let bad = policy(&config, "sender alice@example.org\n");
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(bad.stderr.contains("line 1"), "{}", bad.stderr);
    let two = policy(&config, "sender=a@example.org\n\nsender=b@example.org\n");
    assert_eq!(two.code, 2, "{}", two.stderr);
    let other_type = policy(&config, "request=junk_policy\n");
    assert_eq!(other_type.code, 2, "{}", other_type.stderr);
}

#[test]
fn policy_settings_and_template_limits_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "mailauthd.toml",
        "[policy]\nnull_sender = \"refuse\"\n[policy.replies]\nnot_owned = \"5.7.1 {sender} is not yours\"\n",
    );
    ok(&config, &["domain", "add", "example.org"]);
    ok(
        &config,
        &[
            "template",
            "add",
            "staff",
            "--send-limits",
            "1h:100:1000,1d:500:-",
        ],
    );
    ok(
        &config,
        &[
            "mailbox",
            "add",
            "alice@example.org",
            "--no-password",
            "--template",
            "staff",
        ],
    );

    let show = mailauthd(&config, &["template", "show", "staff"], "");
    assert_eq!(field(&show, "send limits"), "1h:100:1000,1d:500:-");
    ok(
        &config,
        &["template", "set", "staff", "--send-limits", "none"],
    );
    let show = mailauthd(&config, &["--json", "template", "show", "staff"], "");
    let value: serde_json::Value = serde_json::from_str(&show.stdout).unwrap();
    assert_eq!(value["send_limits"], "none");
    ok(
        &config,
        &["template", "set", "staff", "--send-limits", "default"],
    );
    let show = mailauthd(&config, &["template", "show", "staff"], "");
    assert!(
        field(&show, "send limits").starts_with("default"),
        "{}",
        show.stdout
    );
    let bad = mailauthd(
        &config,
        &["template", "set", "staff", "--send-limits", "1w:1:1"],
        "",
    );
    assert_eq!(bad.code, 2, "{}", bad.stderr);

    let null = policy(&config, "sasl_username=alice@example.org\nsender=\n");
    assert_eq!(null.code, 1, "{}{}", null.stdout, null.stderr);
    assert_eq!(field(&null, "reason"), "null_sender_refused");
    let other = policy(
        &config,
        "sasl_username=alice@example.org\nsender=eve@example.org\n",
    );
    assert_eq!(
        field(&other, "action"),
        "REJECT 5.7.1 eve@example.org is not yours"
    );

    let broken = write_config(
        dir.path(),
        "broken.toml",
        "[policy]\nnull_sender = \"sometimes\"\n",
    );
    let run = policy(&broken, "sender=a@example.org\n");
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("policy.null_sender"), "{}", run.stderr);
}

#[test]
fn policy_test_without_a_database_is_a_temporary_failure() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "mailauthd.toml",
        "[store]\nurl = \"postgres://mailauthd@127.0.0.1:1/none\"\nconnect_timeout_ms = 300\n",
    );
    let run = policy(
        &config,
        "sasl_username=alice@example.org\nsender=alice@example.org\n",
    );
    assert_eq!(run.code, 3, "{}{}", run.stdout, run.stderr);
}
