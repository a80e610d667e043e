//! `mailauthd device profile`, run as a postmaster types it against the real binary, and
//! its output read back: the settings, the QR code's PNG, the Apple profile, and every
//! refusal leaving no app password behind.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_mailauthd");

struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Setup {
    /// A fresh state directory; `clients` is appended to the config as written.
    fn new(clients: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("mailauthd.toml");
        std::fs::write(
            &config,
            format!(
                "state_directory = {:?}\n[credentials]\nargon2_memory_kib = 8192\n\
                 argon2_iterations = 1\n{clients}",
                dir.path().join("state"),
            ),
        )
        .unwrap();
        let s = Setup { dir, config };
        s.ok(&["domain", "add", "example.org"], None);
        s
    }

    fn with_clients() -> Self {
        Setup::new("[clients]\nhost = \"mail.example.org\"\n")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn run(&self, args: &[&str], stdin: Option<&str>) -> Output {
        common::output_with_stdin(
            Command::new(BIN)
                .arg("--config")
                .arg(&self.config)
                .args(args)
                .current_dir(self.dir.path()),
            stdin.unwrap_or(""),
        )
    }

    fn ok(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let out = self.run(args, stdin);
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        out
    }

    /// A local mailbox with a password of its own, allowed `protocols`.
    fn mailbox(&self, address: &str, protocols: &str) {
        self.ok(
            &[
                "mailbox",
                "add",
                address,
                "--password-stdin",
                "--protocols",
                protocols,
            ],
            Some("correct horse battery staple\n"),
        );
    }

    /// The names of the mailbox's app passwords.
    fn app_passwords(&self, address: &str) -> Vec<String> {
        let out = self.ok(&["--json", "app-password", "list", address], None);
        let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        list.as_array()
            .unwrap()
            .iter()
            .map(|a| a["name"].as_str().unwrap().to_string())
            .collect()
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Every string under a key named `key`, anywhere in `v`.
fn strings_under(v: &serde_json::Value, key: &str, found: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, child) in map {
                match child {
                    serde_json::Value::String(s) if k == key => found.push(s.clone()),
                    _ => strings_under(child, key, found),
                }
            }
        }
        serde_json::Value::Array(items) => {
            for child in items {
                strings_under(child, key, found);
            }
        }
        _ => {}
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// `device profile ADDRESS --kind KIND --protocols PROTOCOLS`, then `more`.
fn profile_args<'a>(
    address: &'a str,
    kind: &'a str,
    protocols: &'a str,
    more: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec![
        "device",
        "profile",
        address,
        "--kind",
        kind,
        "--protocols",
        protocols,
    ];
    args.extend_from_slice(more);
    args
}

#[test]
fn settings_json_has_the_servers_and_a_password_for_only_the_chosen_protocols() {
    let s = Setup::with_clients();
    s.mailbox("alice@example.org", "all");
    let out = s.ok(
        &[
            "--json",
            "device",
            "profile",
            "alice@example.org",
            "--kind",
            "settings",
            "--protocols",
            "imap,smtp",
        ],
        None,
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(&out)));
    let all = v.to_string();
    assert!(all.contains("mail.example.org"), "{all}");
    assert!(all.contains("993") && all.contains("465"), "{all}");
    assert!(!all.contains("995"), "POP3 was not chosen: {all}");
    let mut passwords = Vec::new();
    strings_under(&v, "password", &mut passwords);
    assert_eq!(passwords.len(), 1, "{all}");
    let secret = &passwords[0];
    assert!(stderr(&out).contains("(Mail program)"), "{}", stderr(&out));

    let imap = s.run(
        &["auth", "test", "alice@example.org", "--service", "imap"],
        Some(secret),
    );
    assert_eq!(imap.status.code(), Some(0), "{}", text(&imap));
    let pop3 = s.run(
        &["auth", "test", "alice@example.org", "--service", "pop3"],
        Some(secret),
    );
    assert_eq!(pop3.status.code(), Some(1), "{}", text(&pop3));
    assert!(
        text(&pop3).contains("app_password_protocol"),
        "{}",
        text(&pop3)
    );
}

#[test]
fn android_png_is_written_with_mode_0600() {
    let s = Setup::with_clients();
    s.mailbox("alice@example.org", "all");
    let file = s.path("q.png");
    let out = s.ok(
        &profile_args(
            "alice@example.org",
            "android",
            "imap,smtp",
            &["--output", file.to_str().unwrap()],
        ),
        None,
    );
    assert!(out.stdout.is_empty(), "the secret goes only into the file");
    let png = std::fs::read(&file).unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert_eq!(mode(&file), 0o600);
    assert!(stderr(&out).contains("(Android)"), "{}", stderr(&out));
    assert_eq!(s.app_passwords("alice@example.org"), ["Android"]);

    let svg = s.ok(
        &profile_args("alice@example.org", "android", "imap", &["--format", "svg"]),
        None,
    );
    assert!(
        String::from_utf8_lossy(&svg.stdout).contains("<svg"),
        "{}",
        text(&svg)
    );
}

#[test]
fn apple_profile_is_written_unsigned_without_a_certificate() {
    let s = Setup::with_clients();
    s.mailbox("alice@example.org", "all");
    let file = s.path("p.mobileconfig");
    let out = s.ok(
        &profile_args(
            "alice@example.org",
            "apple",
            "imap,smtp",
            &["--output", file.to_str().unwrap()],
        ),
        None,
    );
    let profile = String::from_utf8(std::fs::read(&file).unwrap()).unwrap();
    assert!(profile.contains("com.apple.mail.managed"), "{profile}");
    assert!(profile.contains("mail.example.org"), "{profile}");
    assert!(profile.contains("alice@example.org"), "{profile}");
    assert_eq!(mode(&file), 0o600);
    assert!(stderr(&out).contains("NOT signed"), "{}", stderr(&out));
    assert_eq!(
        s.app_passwords("alice@example.org"),
        ["iPhone / iPad / Mac"]
    );
}

#[test]
fn a_protocol_the_mailbox_does_not_allow_is_refused_and_nothing_is_issued() {
    let s = Setup::with_clients();
    s.mailbox("bob@example.org", "imap");
    let file = s.path("bob.mobileconfig");
    let out = s.run(
        &profile_args(
            "bob@example.org",
            "apple",
            "imap,smtp",
            &["--output", file.to_str().unwrap()],
        ),
        None,
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr(&out).contains("does not allow SMTP"),
        "{}",
        text(&out)
    );
    assert!(!file.exists(), "the refused profile's file is removed");
    assert!(s.app_passwords("bob@example.org").is_empty());

    let missing = s.run(
        &profile_args("nobody@example.org", "settings", "imap", &[]),
        None,
    );
    assert_eq!(missing.status.code(), Some(1), "{}", text(&missing));
    assert!(stderr(&missing).contains("does not exist"));
}

#[test]
fn a_mailbox_that_allows_no_protocol_is_told_so_and_nothing_is_issued() {
    let s = Setup::with_clients();
    s.mailbox("carol@example.org", "none");
    for kind in ["apple", "android", "settings"] {
        let out = s.run(&profile_args("carol@example.org", kind, "imap", &[]), None);
        assert_eq!(out.status.code(), Some(1), "{kind}: {}", text(&out));
        assert!(
            stderr(&out).contains("carol@example.org allows no protocol")
                && stderr(&out).contains("mailauthd mailbox set carol@example.org --protocols"),
            "{kind}: {}",
            text(&out)
        );
    }
    assert!(s.app_passwords("carol@example.org").is_empty());
}

#[test]
fn without_clients_or_a_mail_host_device_setup_is_refused_clearly() {
    let s = Setup::new("");
    s.mailbox("alice@example.org", "all");
    let out = s.run(
        &profile_args("alice@example.org", "settings", "imap", &[]),
        None,
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let message = stderr(&out);
    assert!(message.contains("device setup is off"), "{message}");
    assert!(
        message.contains("[clients]") && message.contains("web.mail_host"),
        "{message}"
    );
    assert!(out.stdout.is_empty());
    assert!(s.app_passwords("alice@example.org").is_empty());
}

#[test]
fn an_existing_output_file_is_never_overwritten() {
    let s = Setup::with_clients();
    s.mailbox("alice@example.org", "all");
    let file = s.path("taken.png");
    std::fs::write(&file, "keep me").unwrap();
    let out = s.run(
        &profile_args(
            "alice@example.org",
            "android",
            "imap",
            &["--output", file.to_str().unwrap()],
        ),
        None,
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(stderr(&out).contains("already exists"), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
    assert!(s.app_passwords("alice@example.org").is_empty());
}

#[test]
fn usage_mistakes_exit_2_before_anything_is_issued() {
    let s = Setup::with_clients();
    s.mailbox("alice@example.org", "all");
    for args in [
        &["--kind", "apple", "--protocols", "imap", "--format", "svg"][..],
        &["--kind", "settings", "--protocols", "imap,nntp"][..],
        &["--kind", "settings", "--protocols", "none"][..],
        &[
            "--kind",
            "settings",
            "--protocols",
            "imap",
            "--expires",
            "2001-01-01",
        ][..],
        &["--kind", "windows", "--protocols", "imap"][..],
    ] {
        let mut all = vec!["device", "profile", "alice@example.org"];
        all.extend_from_slice(args);
        let out = s.run(&all, None);
        assert_eq!(out.status.code(), Some(2), "{all:?}: {}", text(&out));
    }
    assert!(s.app_passwords("alice@example.org").is_empty());
}

#[test]
fn a_second_profile_gets_a_numbered_name() {
    let s = Setup::with_clients();
    s.mailbox("alice@example.org", "all");
    let args = [
        "device",
        "profile",
        "alice@example.org",
        "--kind",
        "settings",
        "--protocols",
        "imap,smtp",
    ];
    let first = s.ok(&args, None);
    let second = s.ok(&args, None);
    assert!(
        stderr(&first).contains("(Mail program)"),
        "{}",
        text(&first)
    );
    assert!(
        stderr(&second).contains("(Mail program (2))"),
        "{}",
        text(&second)
    );
    assert_ne!(first.stdout, second.stdout, "each carries its own password");
    let mut names = s.app_passwords("alice@example.org");
    names.sort();
    assert_eq!(names, ["Mail program", "Mail program (2)"]);

    let named = s.ok(
        &profile_args(
            "alice@example.org",
            "settings",
            "imap",
            &["--name", "Work laptop"],
        ),
        None,
    );
    assert!(stderr(&named).contains("(Work laptop)"), "{}", text(&named));
}
