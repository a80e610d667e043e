//! The documentation, exercised: every config block marked `<!-- config-check -->` passes
//! the real `mailauthd config check`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::{Command, Output};

mod doc_blocks;

const BIN: &str = env!("CARGO_BIN_EXE_mailauthd");

/// The documents whose marked blocks are checked, by path in the repository.
fn documents() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut paths = vec![root.join("README.md")];
    let mut docs: Vec<_> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    paths.extend(docs);
    paths
        .into_iter()
        .map(|p| {
            let name = p.strip_prefix(root).unwrap().display().to_string();
            (name, std::fs::read_to_string(&p).unwrap())
        })
        .collect()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A config made of a minimal base (state in `dir`) and `block`, with any client secret
/// file the block names replaced by one in `dir` (the test cannot write to /etc).
fn config_with(dir: &Path, block: &str, secret_file: Option<&Path>) -> std::path::PathBuf {
    let mut config = format!(
        "state_directory = {:?}\nruntime_directory = {:?}\n\n",
        dir.join("state"),
        dir.join("run")
    );
    for line in block.lines() {
        match (
            line.trim_start().starts_with("client_secret_file"),
            secret_file,
        ) {
            (true, Some(file)) => config.push_str(&format!("client_secret_file = {file:?}\n")),
            _ => {
                config.push_str(line);
                config.push('\n');
            }
        }
    }
    let path = dir.join("mailauthd.toml");
    std::fs::write(&path, config).unwrap();
    path
}

fn config_check(config: &Path) -> Output {
    Command::new(BIN)
        .args(["--config", config.to_str().unwrap(), "config", "check"])
        .env_remove("MAILAUTHD_CONFIG")
        .output()
        .unwrap()
}

#[test]
fn every_marked_config_block_passes_config_check() {
    let mut checked = 0;
    for (name, doc) in documents() {
        for (line, block) in doc_blocks::marked(&doc, "<!-- config-check -->", "toml") {
            let dir = tempfile::tempdir().unwrap();
            let secret = dir.path().join("oidc-client-secret");
            std::fs::write(&secret, "  s3cret-from-the-provider\n").unwrap();
            let config = config_with(dir.path(), &block, Some(&secret));
            let out = config_check(&config);
            assert_eq!(
                out.status.code(),
                Some(0),
                "{name}:{line}: config check refused the block:\n{block}\n{}",
                text(&out)
            );
            let t = text(&out);
            if block.contains("[oidc]") {
                assert!(t.contains("identity provider"), "{name}:{line}: {t}");
            }
            if block.contains("[web]") {
                assert!(t.contains("web page"), "{name}:{line}: {t}");
            }
            checked += 1;

            // The check bites: without the secret file the same block is refused.
            if block.contains("client_secret_file") {
                let missing = dir.path().join("no-such-secret");
                let config = config_with(dir.path(), &block, Some(&missing));
                let out = config_check(&config);
                assert_eq!(out.status.code(), Some(2), "{name}:{line}: {}", text(&out));
                assert!(
                    text(&out).contains("oidc.client_secret_file"),
                    "{name}:{line}: {}",
                    text(&out)
                );
            }
        }
    }
    let oidc = documents()
        .into_iter()
        .find(|(name, _)| name == "docs/oidc.md")
        .unwrap()
        .1;
    for provider in [
        "kc.example.org/realms/",
        "authentik.example.org/application/o/",
    ] {
        assert!(
            doc_blocks::marked(&oidc, "<!-- config-check -->", "toml")
                .iter()
                .any(|(_, b)| b.contains(provider)),
            "docs/oidc.md has no checked block for {provider}"
        );
    }
    assert!(checked >= 5, "only {checked} marked config blocks found");
    eprintln!("{checked} config blocks from the documentation passed config check");
}

#[test]
fn doc_blocks_are_found_as_marked() {
    let doc = "intro\n<!-- a:begin -->\n```sh\none \\\n  two\n# note\n\nthree\n```\n\
               ```text\nnot this\n```\n<!-- a:end -->\n<!-- m -->\n```toml\nx = 1\n```\n";
    let region = doc_blocks::regions(doc, "<!-- a:begin -->", "<!-- a:end -->");
    assert_eq!(region.len(), 1);
    let sh = doc_blocks::fenced(region[0], "sh");
    assert_eq!(sh.len(), 1);
    assert_eq!(doc_blocks::commands(&sh[0]), vec!["one two", "three"]);
    assert_eq!(
        doc_blocks::marked(doc, "<!-- m -->", "toml"),
        vec![(14, "x = 1\n".to_string())]
    );
}

/// What one command of docs/troubleshooting.md must do: its standard input, exit code,
/// and texts its output must contain.
struct Expect {
    command: &'static str,
    stdin: &'static str,
    code: i32,
    needles: &'static [&'static str],
}

/// Stands for dave's app password in [`Expect::stdin`]; the real one is made at setup.
const DAVES_APP_PASSWORD: &str = "<dave's app password>";

const TROUBLESHOOTING: &[Expect] = &[
    Expect {
        command: "mailauthd config check",
        stdin: "",
        code: 0,
        needles: &["is valid", "app-password.key", "web page"],
    },
    Expect {
        command: "ls -l /run/mailauthd",
        stdin: "",
        code: 0,
        needles: &["srw-rw---- ", " auth\n", " userdb\n", " policy\n", "srw------- "],
    },
    Expect {
        command: "curl -sS http://127.0.0.1:8080/readyz",
        stdin: "",
        code: 0,
        needles: &["ready"],
    },
    Expect {
        command: "mailauthd domain list",
        stdin: "",
        code: 0,
        needles: &["example.org  yes     2/2"],
    },
    Expect {
        command: "mailauthd domain show example.org",
        stdin: "",
        code: 0,
        needles: &[
            "mailboxes              2 of 2",
            "max quota per mailbox  5G",
            "quota assigned         6G of 10G",
        ],
    },
    Expect {
        command: "mailauthd mapping list",
        stdin: "",
        code: 0,
        needles: &["staff        staff", "default   (no match)   students"],
    },
    Expect {
        command: "mailauthd template show students",
        stdin: "",
        code: 0,
        needles: &["protocols     imap,smtp"],
    },
    Expect {
        command: "mailauthd mailbox show dave@example.org",
        stdin: "",
        code: 0,
        needles: &["auth source      oidc", "template         students"],
    },
    Expect {
        command: "mailauthd mailbox unlink dave@example.org",
        stdin: "",
        code: 0,
        needles: &["dave@example.org was not bound to an identity-provider account"],
    },
    Expect {
        command: "mailauthd auth test alice@example.org --service imap --rip 192.0.2.7",
        stdin: "correct horse battery staple\n",
        code: 0,
        needles: &["result      accepted", "reason      password", "credential  stored password"],
    },
    Expect {
        command: "mailauthd auth test dave@example.org --service imap --rip 192.0.2.7",
        stdin: "his old password\n",
        code: 1,
        needles: &["result      refused", "reason      oidc_needs_app_password"],
    },
    Expect {
        command: "mailauthd auth test dave@example.org --service smtp --rip 192.0.2.7",
        stdin: DAVES_APP_PASSWORD,
        code: 1,
        needles: &["reason      app_password_protocol"],
    },
    Expect {
        command: "mailauthd auth test dave@example.org --service pop3 --rip 192.0.2.7",
        stdin: DAVES_APP_PASSWORD,
        code: 1,
        needles: &["reason      protocol_not_allowed"],
    },
    Expect {
        command: "mailauthd app-password list dave@example.org",
        stdin: "",
        code: 0,
        needles: &["phone", "imap"],
    },
    Expect {
        command: "mailauthd throttle list",
        stdin: "",
        code: 0,
        needles: &["network  192.0.2.7/32", "blocked until", "account  dave@example.org"],
    },
    Expect {
        command: "mailauthd throttle clear 192.0.2.7",
        stdin: "",
        code: 0,
        needles: &["1 throttle entry cleared"],
    },
    Expect {
        command: "printf 'protocol_state=RCPT\\nsasl_username=alice@example.org\\nsender=sales@example.org\\n' | mailauthd policy test",
        stdin: "",
        code: 1,
        needles: &[
            "REJECT 5.7.1 <sales@example.org>: not owned by alice@example.org",
            "not_owned",
        ],
    },
];

/// A daemon for the troubleshooting page: its config, its state, and its log.
struct Scratch {
    dir: tempfile::TempDir,
    config: std::path::PathBuf,
    daemon: Option<std::process::Child>,
}

impl Scratch {
    fn cli(&self, args: &[&str], stdin: &str) -> Output {
        let out = common::output_with_stdin(
            Command::new(BIN)
                .args(args)
                .env("MAILAUTHD_CONFIG", &self.config),
            stdin,
        );
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        out
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(child) = &mut self.daemon {
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let _ = child.wait();
        }
    }
}

/// Waits up to 20 s for `ready` to say yes.
fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !ready() {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// One AUTH PLAIN over the daemon's auth socket, as Postfix or the Dovecot adapter would
/// send it; returns the reply line.
fn auth_over_socket(socket: &Path, id: u32, user: &str, password: &str, rip: &str) -> String {
    use base64::Engine as _;
    use std::io::{BufRead, BufReader, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(socket).unwrap();
    let resp = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
    write!(
        stream,
        "VERSION\t1\t2\nCPID\t{id}\nAUTH\t{id}\tPLAIN\tservice=imap\trip={rip}\tresp={resp}\n"
    )
    .unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "connection closed"
        );
        if line.starts_with("OK\t") || line.starts_with("FAIL\t") {
            return line;
        }
    }
}

/// The mailboxes the page's examples talk about, and a daemon that holds a block for
/// 192.0.2.7 after dave's phone tried three wrong passwords.
fn troubleshooting_scratch() -> (Scratch, String) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mailauthd.toml");
    std::fs::write(
        &config,
        format!(
            "state_directory = {:?}\nruntime_directory = {:?}\n\
             [credentials]\nargon2_memory_kib = 8192\nargon2_iterations = 1\n\
             [throttle]\nfree_failures = 1\nbase_delay_ms = 1\nmax_delay_ms = 5\n\
             network_block_after = 3\naccount_block_after = 50\n\
             [web]\nlisten = \"127.0.0.1:0\"\nsecure_cookies = false\n",
            dir.path().join("state"),
            dir.path().join("run"),
        ),
    )
    .unwrap();
    let mut s = Scratch {
        dir,
        config,
        daemon: None,
    };
    let setup: &[(&[&str], &str)] = &[
        (
            &[
                "domain",
                "add",
                "example.org",
                "--max-mailboxes",
                "2",
                "--max-quota",
                "5G",
                "--quota",
                "10G",
            ],
            "",
        ),
        (
            &[
                "template",
                "add",
                "staff",
                "--quota",
                "5G",
                "--protocols",
                "imap,pop3,sieve,smtp",
            ],
            "",
        ),
        (
            &[
                "template",
                "add",
                "students",
                "--quota",
                "1G",
                "--protocols",
                "imap,smtp",
            ],
            "",
        ),
        (&["mapping", "add", "staff", "staff"], ""),
        (&["mapping", "default", "students"], ""),
        (
            &[
                "mailbox",
                "add",
                "alice@example.org",
                "--password-stdin",
                "--template",
                "staff",
            ],
            "correct horse battery staple\n",
        ),
        (
            &[
                "mailbox",
                "add",
                "dave@example.org",
                "--no-password",
                "--authsource",
                "oidc",
                "--template",
                "students",
            ],
            "",
        ),
    ];
    for (args, stdin) in setup {
        s.cli(args, stdin);
    }
    let created = s.cli(
        &[
            "--json",
            "app-password",
            "create",
            "dave@example.org",
            "--name",
            "phone",
            "--protocols",
            "imap",
        ],
        "",
    );
    let created: serde_json::Value = serde_json::from_slice(&created.stdout).unwrap();
    let app_password = created["password"].as_str().unwrap().to_string();

    let log = std::fs::File::create(s.dir.path().join("daemon.log")).unwrap();
    s.daemon = Some(
        Command::new(BIN)
            .arg("serve")
            .env("MAILAUTHD_CONFIG", &s.config)
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    wait_until("mailauthd ready", || s.log().contains("mailauthd ready"));
    let socket = s.dir.path().join("run/auth");
    for (i, old) in ["old-pass-1", "old-pass-2", "old-pass-3"]
        .iter()
        .enumerate()
    {
        let reply = auth_over_socket(&socket, i as u32 + 1, "dave@example.org", old, "192.0.2.7");
        assert!(reply.starts_with("FAIL\t"), "{reply}");
    }
    (s, app_password)
}

#[test]
fn the_troubleshooting_commands_work_as_written() {
    let doc = include_str!("../docs/troubleshooting.md");
    let commands: Vec<String> = doc_blocks::regions(
        doc,
        "<!-- troubleshoot:begin -->",
        "<!-- troubleshoot:end -->",
    )
    .into_iter()
    .flat_map(|region| doc_blocks::fenced(region, "sh"))
    .flat_map(|block| doc_blocks::commands(&block))
    .collect();
    let documented: Vec<&str> = commands.iter().map(String::as_str).collect();
    let expected: Vec<&str> = TROUBLESHOOTING.iter().map(|e| e.command).collect();
    assert_eq!(
        documented, expected,
        "the page's commands and this test's expectations must match one to one"
    );

    let (scratch, app_password) = troubleshooting_scratch();
    let web = scratch
        .log()
        .lines()
        .find_map(|l| l.split("web page listening listen=").nth(1))
        .map(|a| a.trim().to_string())
        .expect("web listener address in the log");
    let run = scratch.dir.path().join("run");
    for e in TROUBLESHOOTING {
        // The only liberties taken with the text: where the scratch daemon's sockets and
        // web page are.
        let line = e
            .command
            .replace("/run/mailauthd", run.to_str().unwrap())
            .replace("127.0.0.1:8080", &web);
        let stdin = if e.stdin == DAVES_APP_PASSWORD {
            format!("{app_password}\n")
        } else {
            e.stdin.to_string()
        };
        let mut child = Command::new("sh")
            .args(["-c", &line])
            .current_dir(scratch.dir.path())
            .env("PATH", doc_blocks::path_with(BIN))
            .env("MAILAUTHD_CONFIG", &scratch.config)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(stdin.as_bytes())
                .unwrap();
        }
        let out = child.wait_with_output().unwrap();
        let all = text(&out);
        eprintln!("$ {}\n{all}", e.command);
        assert_eq!(out.status.code(), Some(e.code), "{}:\n{all}", e.command);
        for needle in e.needles {
            assert!(
                all.contains(needle),
                "{}: no {needle:?} in\n{all}",
                e.command
            );
        }
    }

    // The log lines the page tells postmasters to look for.
    let log = scratch.log();
    for line in [
        "mailauthd ready",
        "blocked after repeated failures key=192.0.2.7/32 kind=\"network\" failures=3 blocked_secs=900",
        "auth service=\"imap\" user=\"dave@example.org\" rip=\"192.0.2.7\" mech=\"PLAIN\" outcome=\"fail\" reason=\"oidc_needs_app_password\"",
    ] {
        assert!(log.contains(line), "no {line:?} in the daemon's log:\n{log}");
    }
}
