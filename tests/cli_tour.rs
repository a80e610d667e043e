//! The README's CLI tour, run as written against the real binary, then checked.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

mod doc_blocks;

const BIN: &str = env!("CARGO_BIN_EXE_mailauthd");

fn tour() -> String {
    let readme = include_str!("../README.md");
    let tour = doc_blocks::regions(readme, "<!-- tour:begin -->", "<!-- tour:end -->");
    assert_eq!(tour.len(), 1, "one tour in the README");
    doc_blocks::fenced(tour[0], "sh").concat()
}

fn mailauthd(dir: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    common::output_with_stdin(
        Command::new(BIN)
            .args(args)
            .current_dir(dir)
            .env("MAILAUTHD_CONFIG", dir.join("conf-examples/mailauthd.toml"))
            .env("STATE_DIRECTORY", dir.join("state")),
        stdin.unwrap_or(""),
    )
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("conf-examples")).unwrap();
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/conf-examples/mailauthd.toml"),
        dir.path().join("conf-examples/mailauthd.toml"),
    )
    .unwrap();
    dir
}

#[test]
fn the_readme_tour_works_as_written() {
    let dir = setup();
    let out = Command::new("sh")
        .args(["-e", "-x", "-c", &tour()])
        .current_dir(dir.path())
        .env("PATH", doc_blocks::path_with(BIN))
        .env_remove("MAILAUTHD_CONFIG")
        .output()
        .unwrap();
    assert!(out.status.success(), "tour failed:\n{}", text(&out));
    let all = text(&out);
    assert!(all.contains("result      accepted"), "{all}");
    assert!(all.contains("shown only this once"), "{all}");

    // What the tour claims, checked through the JSON interface.
    let show = mailauthd(
        dir.path(),
        &["--json", "mailbox", "show", "alice@example.org"],
        None,
    );
    let v: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!(v["mailbox"]["auth_source"], "oidc");
    assert_eq!(v["mailbox"]["quota"], 5u64 << 30);
    assert_eq!(v["has_password"], true);
    assert_eq!(v["app_passwords"], 1);

    // After the switch to oidc the stored password is refused, an app password works.
    let refused = mailauthd(
        dir.path(),
        &["auth", "test", "alice@example.org"],
        Some("correct horse battery staple\n"),
    );
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(text(&refused).contains("oidc_needs_app_password"));
    let created = mailauthd(
        dir.path(),
        &[
            "--json",
            "app-password",
            "create",
            "alice@example.org",
            "--name",
            "laptop",
            "--protocols",
            "imap",
        ],
        None,
    );
    let created: serde_json::Value = serde_json::from_slice(&created.stdout).unwrap();
    let secret = created["password"].as_str().unwrap().to_string();
    let id = created["id"].as_i64().unwrap().to_string();
    let ok = mailauthd(
        dir.path(),
        &["auth", "test", "alice@example.org", "--service", "imap"],
        Some(&secret),
    );
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok));
    let pop = mailauthd(
        dir.path(),
        &["auth", "test", "alice@example.org", "--service", "pop3"],
        Some(&secret),
    );
    assert_eq!(pop.status.code(), Some(1));
    assert!(text(&pop).contains("app_password_protocol"));
    let list = mailauthd(
        dir.path(),
        &["--json", "app-password", "list", "alice@example.org"],
        None,
    );
    let list: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    let laptop = list
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "laptop")
        .unwrap();
    assert_eq!(
        laptop["last_used"]["service"], "imap",
        "last use flushed by auth test"
    );
    let revoke = mailauthd(
        dir.path(),
        &["app-password", "revoke", "alice@example.org", &id],
        None,
    );
    assert!(revoke.status.success());
    let gone = mailauthd(
        dir.path(),
        &["auth", "test", "alice@example.org", "--service", "imap"],
        Some(&secret),
    );
    assert_eq!(gone.status.code(), Some(1), "revoked on the next attempt");

    // Switching back restores the stored password.
    assert!(mailauthd(
        dir.path(),
        &["mailbox", "set-authsource", "alice@example.org", "local"],
        None
    )
    .status
    .success());
    let back = mailauthd(
        dir.path(),
        &["auth", "test", "alice@example.org"],
        Some("correct horse battery staple"),
    );
    assert_eq!(back.status.code(), Some(0), "{}", text(&back));
}

#[test]
fn mistakes_get_clear_messages_nonzero_exits_and_change_nothing() {
    let dir = setup();
    let d = dir.path();
    assert!(mailauthd(
        d,
        &[
            "domain",
            "add",
            "example.org",
            "--max-quota",
            "10G",
            "--max-mailboxes",
            "1"
        ],
        None
    )
    .status
    .success());
    let cases: Vec<(Vec<&str>, Option<&str>, i32, &str)> = vec![
        (
            vec!["domain", "add", "example.org"],
            None,
            1,
            "already exists",
        ),
        (
            vec!["domain", "add", "not a domain"],
            None,
            2,
            "not a valid domain",
        ),
        (
            vec!["domain", "add", "x.example", "--max-quota", "10Q"],
            None,
            2,
            "invalid size \"10Q\"",
        ),
        (
            vec!["mailbox", "add", "alice"],
            None,
            2,
            "not a mail address",
        ),
        (
            vec![
                "mailbox",
                "add",
                "\u{212A}elvin@example.org",
                "--no-password",
            ],
            None,
            2,
            "the part before @ may only use ASCII characters",
        ),
        (
            vec!["mailbox", "add", "../etc@example.org", "--no-password"],
            None,
            2,
            "the part before @ may not contain /",
        ),
        (
            vec!["alias", "add", "m\u{fc}ller@example.org", "bob@example.org"],
            None,
            2,
            "may only use ASCII characters",
        ),
        (
            vec!["mailbox", "add", "alice@nowhere.org", "--password-stdin"],
            Some("pw\n"),
            1,
            "domain nowhere.org does not exist",
        ),
        (
            vec![
                "mailbox",
                "add",
                "alice@example.org",
                "--password-stdin",
                "--template",
                "nope",
            ],
            Some("pw\n"),
            1,
            "template nope does not exist",
        ),
        (
            vec![
                "mailbox",
                "add",
                "alice@example.org",
                "--password-stdin",
                "--quota",
                "11G",
            ],
            Some("pw\n"),
            1,
            "over the maximum of 10G",
        ),
        (
            vec![
                "mailbox",
                "add",
                "alice@example.org",
                "--password-stdin",
                "--protocols",
                "imap,ftp",
            ],
            Some("pw\n"),
            2,
            "unknown protocol \"ftp\"",
        ),
        (
            vec![
                "mailbox",
                "add",
                "alice@example.org",
                "--password-stdin",
                "--active",
                "7",
            ],
            Some("pw\n"),
            2,
            "invalid active state",
        ),
        (
            vec!["mailbox", "add", "alice@example.org"],
            None,
            2,
            "--password-stdin",
        ),
        (
            vec!["mailbox", "set-authsource", "ghost@example.org", "oidc"],
            None,
            1,
            "does not exist",
        ),
        (
            vec!["mailbox", "set-authsource", "ghost@example.org", "ldap"],
            None,
            2,
            "invalid authentication source",
        ),
        (
            vec![
                "app-password",
                "create",
                "ghost@example.org",
                "--name",
                "x",
                "--protocols",
                "imap",
            ],
            None,
            1,
            "does not exist",
        ),
        (
            vec![
                "app-password",
                "create",
                "ghost@example.org",
                "--name",
                "x",
                "--protocols",
                "imap",
                "--expires",
                "2027-02-30",
            ],
            None,
            2,
            "YYYY-MM-DD",
        ),
        (
            vec!["mapping", "add", "x", "nope"],
            None,
            1,
            "template nope does not exist",
        ),
        (vec!["frobnicate"], None, 2, "unrecognized subcommand"),
    ];
    for (args, stdin, code, needle) in cases {
        let out = mailauthd(d, &args, stdin);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {}", text(&out));
        assert!(
            text(&out).contains(needle),
            "{args:?}: expected {needle:?} in {}",
            text(&out)
        );
    }
    let list = mailauthd(d, &["--json", "mailbox", "list"], None);
    assert_eq!(
        String::from_utf8_lossy(&list.stdout).trim(),
        "[]",
        "nothing was created"
    );

    // Limits: the second mailbox is over the domain's mailbox limit.
    assert!(mailauthd(
        d,
        &[
            "mailbox",
            "add",
            "a@example.org",
            "--no-password",
            "--quota",
            "1G"
        ],
        None
    )
    .status
    .success());
    let over = mailauthd(
        d,
        &[
            "mailbox",
            "add",
            "b@example.org",
            "--no-password",
            "--quota",
            "1G",
        ],
        None,
    );
    assert_eq!(over.status.code(), Some(1));
    assert!(
        text(&over).contains("mailbox limit for example.org is reached"),
        "{}",
        text(&over)
    );
}

#[test]
fn config_check_reports_every_problem_and_auth_test_exit_codes() {
    let dir = setup();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "colour = 1\n[store]\nurl = \"redis://x\"\n[log]\nformat = \"xml\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["--config", bad.to_str().unwrap(), "config", "check"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let t = text(&out);
    for key in ["colour", "store.url", "log.format"] {
        assert!(t.contains(key), "{key} missing in {t}");
    }

    // A database that cannot be reached is a temporary failure (exit 3), not a refusal.
    let down = dir.path().join("down.toml");
    std::fs::write(
        &down,
        format!(
            "state_directory = {:?}\n[store]\nurl = \"postgres://mailauthd@127.0.0.1:1/none\"\nconnect_timeout_ms = 300\n",
            dir.path().join("state")
        ),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args([
            "--config",
            down.to_str().unwrap(),
            "auth",
            "test",
            "alice@example.org",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"pw\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));

    let help = Command::new(BIN).arg("--help").output().unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("3  temporary failure"));
}

#[test]
fn mailboxes_import_from_a_dovecot_passwd_file_with_their_hashes() {
    let dir = setup();
    let d = dir.path();
    assert!(mailauthd(d, &["domain", "add", "example.org"], None)
        .status
        .success());
    let fixtures = include_str!("fixtures/doveadm-pw.tsv");
    let mut passwd = String::new();
    let mut logins = Vec::new();
    for (i, line) in fixtures.lines().filter(|l| !l.starts_with('#')).enumerate() {
        let cols: Vec<&str> = line.split('\t').collect();
        if cols.len() != 3 || cols[1].is_empty() || cols[1].contains(':') || cols[1].contains('\n')
        {
            continue;
        }
        let user = format!("user{i}@example.org");
        passwd.push_str(&format!(
            "{user}:{}::::::userdb_quota_rule=*:storage=1G\n",
            cols[2]
        ));
        logins.push((user, cols[1].to_string(), cols[0].to_string()));
    }
    let file = d.join("passwd");

    // One bad line and nothing is imported.
    std::fs::write(&file, format!("{passwd}broken@example.org:{{NOPE}}xyz\n")).unwrap();
    let out = mailauthd(d, &["mailbox", "import", file.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("unknown password scheme"),
        "{}",
        text(&out)
    );
    let list = mailauthd(d, &["--json", "mailbox", "list"], None);
    assert_eq!(String::from_utf8_lossy(&list.stdout).trim(), "[]");

    std::fs::write(&file, &passwd).unwrap();
    let out = mailauthd(d, &["mailbox", "import", file.to_str().unwrap()], None);
    assert!(out.status.success(), "{}", text(&out));
    let mut schemes = std::collections::BTreeSet::new();
    for (user, password, scheme) in &logins {
        let ok = mailauthd(
            d,
            &["auth", "test", user, "--service", "imap"],
            Some(&format!("{password}\n")),
        );
        assert_eq!(ok.status.code(), Some(0), "{scheme} {user}: {}", text(&ok));
        schemes.insert(scheme.split('.').next().unwrap().to_string());
    }
    for scheme in [
        "ARGON2ID",
        "ARGON2I",
        "BLF-CRYPT",
        "SHA512-CRYPT",
        "SHA256-CRYPT",
        "SSHA512",
        "SSHA256",
        "SSHA",
        "PLAIN",
    ] {
        assert!(
            schemes.contains(scheme),
            "{scheme} not covered by the import test"
        );
    }
    let show = mailauthd(d, &["--json", "mailbox", "show", &logins[0].0], None);
    let v: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!(v["mailbox"]["quota"], 1u64 << 30);

    // A single hash can be set on a new mailbox too.
    let (_, password, _) = &logins[0];
    let hash = passwd.lines().next().unwrap().split(':').nth(1).unwrap();
    let out = mailauthd(
        d,
        &[
            "mailbox",
            "add",
            "solo@example.org",
            "--password-hash-stdin",
        ],
        Some(hash),
    );
    assert!(out.status.success(), "{}", text(&out));
    let ok = mailauthd(d, &["auth", "test", "solo@example.org"], Some(password));
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok));
}

/// `mailbox set` settings are shown as set by hand; `--reset` and `--template` hand them
/// back to the template.
#[test]
fn mailbox_set_by_hand_is_shown_and_reset_hands_back_to_the_template() {
    let dir = setup();
    let d = dir.path();
    let ok = |args: &[&str]| {
        let out = mailauthd(d, args, None);
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        text(&out)
    };
    let json = |address: &str| -> serde_json::Value {
        let out = mailauthd(d, &["--json", "mailbox", "show", address], None);
        serde_json::from_slice(&out.stdout).unwrap()
    };
    ok(&["domain", "add", "example.org"]);
    ok(&[
        "template",
        "add",
        "staff",
        "--quota",
        "2G",
        "--protocols",
        "imap,smtp",
    ]);
    ok(&[
        "mailbox",
        "add",
        "olga@example.org",
        "--authsource",
        "oidc",
        "--template",
        "staff",
    ]);
    assert_eq!(
        json("olga@example.org")["mailbox"]["overrides"],
        serde_json::json!([])
    );

    ok(&[
        "mailbox",
        "set",
        "olga@example.org",
        "--active",
        "0",
        "--quota",
        "1G",
    ]);
    let v = json("olga@example.org");
    assert_eq!(
        v["mailbox"]["overrides"],
        serde_json::json!(["quota", "state"])
    );
    assert_eq!(v["mailbox"]["state"], "disabled");
    let shown = ok(&["mailbox", "show", "olga@example.org"]);
    assert!(
        shown.contains("quota,state (kept when the template is re-applied)"),
        "{shown}"
    );

    ok(&["mailbox", "set", "olga@example.org", "--reset"]);
    let v = json("olga@example.org");
    assert_eq!(v["mailbox"]["overrides"], serde_json::json!([]));
    assert_eq!(
        (
            v["mailbox"]["state"].as_str(),
            v["mailbox"]["quota"].as_u64()
        ),
        (Some("active"), Some(2 << 30))
    );

    ok(&["mailbox", "add", "plain@example.org", "--no-password"]);
    let out = mailauthd(d, &["mailbox", "set", "plain@example.org", "--reset"], None);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("follows no template; name one with --template NAME"));
    let out = mailauthd(
        d,
        &[
            "mailbox",
            "set",
            "plain@example.org",
            "--reset",
            "--template",
            "staff",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}
