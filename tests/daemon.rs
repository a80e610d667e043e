//! The real binary as systemd runs it: readiness and reload over `NOTIFY_SOCKET`, socket
//! modes and owners, `/metrics` counting what the test did, reload without dropping
//! connections, SIGTERM draining a burst, and sockets passed by `systemd-socket-activate`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{free_port, http_get, http_raw, series};

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;

const BIN: &str = env!("CARGO_BIN_EXE_mailauthd");

struct Daemon {
    child: Option<Child>,
    dir: tempfile::TempDir,
    config: PathBuf,
    notify: UnixDatagram,
    log: PathBuf,
    /// Lines of the `[credentials]` section.
    credentials: String,
}

impl Daemon {
    /// A config and a seeded store, not yet running. `extra` is appended to the config.
    fn prepare(extra: &str) -> Daemon {
        Daemon::prepare_with("argon2_memory_kib = 8192\nargon2_iterations = 1\n", extra)
    }

    fn prepare_with(credentials: &str, extra: &str) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("mailauthd.toml");
        let notify_path = dir.path().join("notify");
        let notify = UnixDatagram::bind(&notify_path).unwrap();
        notify
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let d = Daemon {
            child: None,
            log: dir.path().join("daemon.log"),
            config,
            dir,
            notify,
            credentials: credentials.to_string(),
        };
        d.write_config(extra);
        d.cli(&["domain", "add", "example.org"], None);
        d.cli(
            &["mailbox", "add", "alice@example.org", "--password-stdin"],
            Some("alice-pw\n"),
        );
        d
    }

    fn write_config(&self, extra: &str) {
        std::fs::write(
            &self.config,
            format!(
                "state_directory = {state:?}\nruntime_directory = {run:?}\n\
                 [credentials]\n{credentials}\
                 [throttle]\nbase_delay_ms = 1\nmax_delay_ms = 5\n{extra}",
                credentials = self.credentials,
                state = self.dir.path().join("state"),
                run = self.dir.path().join("run"),
            ),
        )
        .unwrap();
    }

    fn run(&mut self) {
        self.spawn(Command::new(BIN).args(["--config", self.config.to_str().unwrap(), "serve"]));
        self.expect_notify("READY=1");
    }

    fn spawn(&mut self, command: &mut Command) {
        let log = std::fs::File::create(&self.log).unwrap();
        self.child = Some(
            command
                .env("NOTIFY_SOCKET", self.dir.path().join("notify"))
                .env_remove("MAILAUTHD_LOG")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
    }

    /// The next notification that contains `want` (earlier ones, such as status lines, are
    /// passed over); returns all of it.
    fn expect_notify(&self, want: &str) -> String {
        let mut buf = vec![0u8; 4096];
        let mut seen = Vec::new();
        loop {
            let n = self.notify.recv(&mut buf).unwrap_or_else(|e| {
                panic!(
                    "no notification {want:?} ({e}) after {seen:?}; log:\n{}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                )
            });
            let text = String::from_utf8_lossy(&buf[..n]).to_string();
            if text.contains(want) {
                return text;
            }
            seen.push(text);
        }
    }

    fn socket(&self, name: &str) -> PathBuf {
        self.dir.path().join("run").join(name)
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().unwrap().id().to_string();
        assert!(Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success());
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap()
    }

    /// Waits for a line in the daemon's log (written a moment after the notification).
    fn wait_log(&self, want: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = self.log_text();
            if text.contains(want) {
                return text;
            }
            assert!(Instant::now() < deadline, "no {want:?} in log:\n{text}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn cli(&self, args: &[&str], stdin: Option<&str>) -> String {
        common::cli_ok(&self.config, args, stdin)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A Dovecot auth-protocol client past the handshake.
struct AuthClient {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl AuthClient {
    fn connect(path: &Path) -> AuthClient {
        let s = UnixStream::connect(path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut c = AuthClient {
            reader: BufReader::new(s.try_clone().unwrap()),
            writer: s,
        };
        while c.line().expect("handshake") != "DONE" {}
        c.writer.write_all(b"VERSION\t1\t2\nCPID\t77\n").unwrap();
        c
    }

    fn line(&mut self) -> Option<String> {
        let mut l = String::new();
        match self.reader.read_line(&mut l) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(l.trim_end_matches('\n').to_string()),
        }
    }

    fn send_plain(&mut self, id: u32, user: &str, pass: &str) {
        let resp = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{pass}"));
        writeln!(
            self.writer,
            "AUTH\t{id}\tPLAIN\tservice=imap\trip=192.0.2.9\tresp={resp}"
        )
        .unwrap();
    }

    fn plain(&mut self, id: u32, user: &str, pass: &str) -> String {
        self.send_plain(id, user, pass);
        self.line().expect("an answer")
    }
}

/// systemd's own activation tool, or `None` outside CI on a machine without it (the test
/// then says so); in CI its absence fails the test.
fn socket_activate_tool() -> Option<&'static str> {
    let tool = "systemd-socket-activate";
    let found = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return Some(tool);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{tool} is missing (Debian package systemd); CI needs it"
    );
    eprintln!("note: {tool} not installed; socket activation not tested here");
    None
}

fn names_of_self() -> (String, String, u32, u32) {
    let uid = nix::unistd::Uid::effective();
    let gid = nix::unistd::Gid::effective();
    if uid.is_root() {
        // Root hands sockets to other users, as it does for postfix and dovecot.
        let user = nix::unistd::User::from_name("nobody").unwrap().unwrap();
        let group = nix::unistd::Group::from_name("nogroup").unwrap().unwrap();
        return (
            "nobody".into(),
            "nogroup".into(),
            user.uid.as_raw(),
            group.gid.as_raw(),
        );
    }
    let user = nix::unistd::User::from_uid(uid).unwrap().unwrap();
    let group = nix::unistd::Group::from_gid(gid).unwrap().unwrap();
    (user.name, group.name, uid.as_raw(), gid.as_raw())
}

#[test]
fn readiness_socket_modes_and_metrics_that_count_what_happened() {
    let (user, group, uid, gid) = names_of_self();
    let port = free_port();
    let mut d = Daemon::prepare(&format!(
        "[auth_socket]\nowner = {user:?}\ngroup = {group:?}\nmode = \"0660\"\n\
         [policy_socket]\nmode = \"0600\"\n\
         [metrics]\nlisten = \"127.0.0.1:{port}\"\n"
    ));
    d.run();

    // Modes and owners are set before the socket listens.
    let auth = std::fs::metadata(d.socket("auth")).unwrap();
    assert_eq!(auth.permissions().mode() & 0o7777, 0o660);
    assert_eq!((auth.uid(), auth.gid()), (uid, gid));
    let policy = std::fs::metadata(d.socket("policy")).unwrap();
    assert_eq!(policy.permissions().mode() & 0o7777, 0o600);

    let (status, body) = http_get(port, "/metrics");
    assert_eq!(status, 200, "{body}");
    let ok = "mailauthd_auth_requests_total{protocol=\"imap\",mechanism=\"plain\",outcome=\"ok\",reason=\"password\"}";
    let bad = "mailauthd_auth_requests_total{protocol=\"imap\",mechanism=\"plain\",outcome=\"fail\",reason=\"bad_credentials\"}";
    assert_eq!(series(&body, ok), None, "nothing counted yet:\n{body}");

    let mut c = AuthClient::connect(&d.socket("auth"));
    assert!(c
        .plain(1, "alice@example.org", "alice-pw")
        .starts_with("OK\t1\t"));
    assert!(c
        .plain(2, "alice@example.org", "alice-pw")
        .starts_with("OK\t2\t"));
    assert!(c
        .plain(3, "alice@example.org", "wrong")
        .starts_with("FAIL\t3\t"));
    let mut p = UnixStream::connect(d.socket("policy")).unwrap();
    p.write_all(
        b"request=smtpd_access_policy\nprotocol_state=RCPT\nsasl_username=alice@example.org\n\
          sender=alice@example.org\nrecipient=x@example.net\n\n",
    )
    .unwrap();
    let mut reply = [0u8; 64];
    let n = p.read(&mut reply).unwrap();
    assert_eq!(&reply[..n], b"action=DUNNO\n\n");

    let (_, body) = http_get(port, "/metrics");
    assert_eq!(series(&body, ok), Some(2.0), "{body}");
    assert_eq!(series(&body, bad), Some(1.0), "{body}");
    assert_eq!(
        series(
            &body,
            "mailauthd_auth_duration_seconds_count{outcome=\"ok\",secret=\"password\"}"
        ),
        Some(2.0)
    );
    // The first login and the wrong password hashed; the repeat was remembered.
    assert_eq!(
        series(
            &body,
            "mailauthd_verify_cache_lookups_total{result=\"hit\",reason=\"stored_password\"}"
        ),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        series(
            &body,
            "mailauthd_verify_cache_lookups_total{result=\"miss\",reason=\"stored_password\"}"
        ),
        Some(2.0)
    );
    assert_eq!(
        series(
            &body,
            "mailauthd_policy_requests_total{action=\"dunno\",reason=\"own_address\"}"
        ),
        Some(1.0),
        "{body}"
    );
    assert_eq!(series(&body, "mailauthd_hash_pool_queue_depth"), Some(0.0));
    assert_eq!(http_get(port, "/healthz"), (200, "ok\n".into()));
    assert_eq!(http_get(port, "/readyz"), (200, "ready\n".into()));
    assert_eq!(http_get(port, "/nothing").0, 404);
}

#[test]
fn reload_applies_live_settings_keeps_connections_and_survives_a_broken_file() {
    let web_port = free_port();
    let web = |name: &str, workers: u32| {
        format!(
            "[hash_pool]\nworkers = {workers}\n\
             [web]\nlisten = \"127.0.0.1:{web_port}\"\nsecure_cookies = false\n\
             [oidc]\nissuer = \"http://127.0.0.1:9/\"\nclient_id = \"mail\"\ndisplay_name = {name:?}\n\
             redirect_url = \"http://127.0.0.1:{web_port}/callback\"\n\
             authorization_endpoint = \"http://127.0.0.1:9/auth\"\ntoken_endpoint = \"http://127.0.0.1:9/token\"\n\
             jwks_uri = \"http://127.0.0.1:9/jwks\"\n"
        )
    };
    let mut d = Daemon::prepare(&web("Old Provider", 2));
    d.run();
    let pid = d.child.as_ref().unwrap().id();
    let mut c = AuthClient::connect(&d.socket("auth"));
    assert!(c
        .plain(1, "alice@example.org", "alice-pw")
        .starts_with("OK\t1\t"));
    assert!(http_get(web_port, "/").1.contains("Old Provider"));

    // Lines before the first header belong to [throttle], the last section of the base.
    d.write_config(&format!(
        "network_block_after = 2\n[log]\nlevel = \"debug\"\n{}liveness_check_hours = 0\n",
        web("New Provider", 3)
    ));
    d.signal("-HUP");
    d.expect_notify("RELOADING=1");
    d.expect_notify("READY=1");
    let log = d.wait_log("these changes take effect after a restart");
    assert!(log.contains("log level changed"), "{log}");
    assert!(log.contains("applied=log.level, oidc, throttle"), "{log}");
    assert!(
        log.contains("keys=hash_pool, oidc.liveness_*/max_days_without_sign_in"),
        "{log}"
    );
    assert!(
        http_get(web_port, "/").1.contains("New Provider"),
        "the sign-in button names the reloaded provider"
    );
    // The connection opened before the reload is still served, by the same process, and
    // the new throttle threshold holds: two failures now block the network.
    assert!(c
        .plain(2, "alice@example.org", "wrong")
        .starts_with("FAIL\t2\t"));
    assert!(c
        .plain(4, "alice@example.org", "wrong again")
        .starts_with("FAIL\t4\t"));
    assert!(c
        .plain(5, "alice@example.org", "alice-pw")
        .starts_with("FAIL\t5\t"));
    d.wait_log("reason=\"throttled\"");
    assert_eq!(d.child.as_ref().unwrap().id(), pid);
    d.cli(&["throttle", "clear"], None);

    std::fs::write(&d.config, "this is [not toml").unwrap();
    d.signal("-HUP");
    d.expect_notify("RELOADING=1");
    let ready = d.expect_notify("READY=1");
    let failed = d.wait_log("reload refused, keeping the running configuration");
    assert!(failed.contains("mailauthd.toml"), "{failed}");
    assert!(
        ready.contains("STATUS=serving") && ready.contains("last reload failed"),
        "{ready}"
    );
    assert!(http_get(web_port, "/").1.contains("New Provider"));
    assert!(c
        .plain(3, "alice@example.org", "alice-pw")
        .starts_with("OK\t3\t"));
}

#[test]
fn sigterm_drains_a_burst_and_flushes_every_last_use() {
    // One hash worker and no verification cache: the burst is still queued when the
    // signal arrives, so draining has real work to finish.
    let mut d = Daemon::prepare_with(
        "verify_cache_entries = 0\nargon2_memory_kib = 32768\nargon2_iterations = 3\n",
        "[hash_pool]\nworkers = 1\nqueue = 100\n",
    );
    let users: Vec<String> = (0..12).map(|i| format!("u{i}@example.org")).collect();
    for u in &users {
        d.cli(
            &["mailbox", "add", u, "--password-stdin"],
            Some("pw-burst\n"),
        );
    }
    d.run();
    let mut clients: Vec<AuthClient> = users
        .iter()
        .map(|_| AuthClient::connect(&d.socket("auth")))
        .collect();
    for (client, user) in clients.iter_mut().zip(&users) {
        client.send_plain(1, user, "pw-burst");
    }
    // Let every request reach the daemon, then stop it while most still wait for a hash.
    std::thread::sleep(Duration::from_millis(100));
    d.signal("-TERM");
    d.expect_notify("STOPPING=1");
    let answers: Vec<Option<String>> = clients.iter_mut().map(AuthClient::line).collect();
    let status = d.child.as_mut().unwrap().wait().unwrap();
    assert!(status.success(), "exit {status:?}: {}", d.log_text());
    d.child = None;
    let log = d.log_text();
    let after_signal = log
        .split_once("stopping: draining connections")
        .map(|(_, rest)| rest.matches("outcome=\"ok\"").count())
        .unwrap_or(0);
    assert!(
        after_signal > 0,
        "some logins were still waiting for a hash when SIGTERM came:\n{log}"
    );
    for (user, answer) in users.iter().zip(&answers) {
        let answer = answer.as_deref().unwrap_or("(closed)");
        assert!(
            answer.starts_with("OK\t1\t"),
            "{user}: a request received before SIGTERM is answered: {answer}"
        );
        let shown: serde_json::Value =
            serde_json::from_str(&d.cli(&["--json", "mailbox", "show", user], None)).unwrap();
        assert!(
            !shown["mailbox"]["last_login"]["at"].is_null(),
            "{user}: the answered login's last use was flushed: {shown}"
        );
    }
}

#[test]
fn sockets_passed_by_systemd_are_used_by_name() {
    let Some(tool) = socket_activate_tool() else {
        return;
    };
    let mut d = Daemon::prepare("");
    let passed = d.dir.path().join("passed");
    std::fs::create_dir(&passed).unwrap();
    let (auth, policy) = (passed.join("auth"), passed.join("policy"));
    d.spawn(
        Command::new(tool)
            .arg("-l")
            .arg(&auth)
            .arg("-l")
            .arg(&policy)
            .arg("--fdname=auth:policy")
            .arg("-E")
            .arg("NOTIFY_SOCKET")
            .args([BIN, "--config", d.config.to_str().unwrap(), "serve"]),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !auth.exists() {
        assert!(
            Instant::now() < deadline,
            "systemd-socket-activate did not listen"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The first connection starts the daemon, which answers it on the passed socket.
    let mut c = AuthClient::connect(&auth);
    let ready = d.expect_notify("READY=1");
    assert!(
        ready.contains("auth unix:") && ready.contains("/passed/auth"),
        "{ready}"
    );
    assert!(c
        .plain(1, "alice@example.org", "alice-pw")
        .starts_with("OK\t1\t"));
    assert!(
        !d.socket("auth").exists(),
        "the configured auth path is not bound when systemd passed one"
    );
    assert!(
        d.socket("userdb").exists(),
        "listeners without a passed socket bind as configured"
    );
    let mut p = UnixStream::connect(&policy).unwrap();
    p.write_all(b"request=smtpd_access_policy\nprotocol_state=RCPT\n\n")
        .unwrap();
    let mut reply = [0u8; 64];
    let n = p.read(&mut reply).unwrap();
    assert!(reply[..n].starts_with(b"action="), "{:?}", &reply[..n]);
}

#[test]
fn a_socket_with_an_unknown_name_stops_the_start_with_a_clear_message() {
    let Some(tool) = socket_activate_tool() else {
        return;
    };
    let mut d = Daemon::prepare("");
    let sock = d.dir.path().join("odd");
    d.spawn(
        Command::new(tool)
            .arg("-l")
            .arg(&sock)
            .arg("--fdname=imap")
            .args([BIN, "--config", d.config.to_str().unwrap(), "serve"]),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        assert!(
            Instant::now() < deadline,
            "systemd-socket-activate did not listen"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let _trigger = UnixStream::connect(&sock).unwrap();
    let log = d.wait_log("systemd passed a socket named \"imap\"");
    assert!(
        log.contains("auth, userdb, policy, control, web, metrics"),
        "{log}"
    );
    assert!(!d.socket("auth").exists(), "nothing was started");
}

#[test]
fn logs_are_json_on_request_and_unstamped_under_journald() {
    let mut d = Daemon::prepare("");
    d.spawn(Command::new(BIN).args([
        "--config",
        d.config.to_str().unwrap(),
        "--log-format",
        "json",
        "serve",
    ]));
    d.expect_notify("READY=1");
    let log = d.wait_log("mailauthd ready");
    let first: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    assert!(
        first["timestamp"].is_string() && first["level"].is_string(),
        "{first}"
    );
    d.signal("-TERM");
    assert!(d.child.as_mut().unwrap().wait().unwrap().success());

    d.spawn(
        Command::new(BIN)
            .args(["--config", d.config.to_str().unwrap(), "serve"])
            .env("JOURNAL_STREAM", "8:12345"),
    );
    d.expect_notify("READY=1");
    let log = d.wait_log("mailauthd ready");
    let line = log.lines().find(|l| l.contains("mailauthd ready")).unwrap();
    assert!(
        line.trim_start().starts_with("INFO mailauthd ready"),
        "journald adds its own time stamp: {line}"
    );
}

/// `serve` with this config text: its exit code and what it printed.
fn serve_once(dir: &Path, text: &str) -> (i32, String) {
    let config = dir.join("broken.toml");
    std::fs::write(&config, text).unwrap();
    let out = Command::new(BIN)
        .args(["--config", config.to_str().unwrap(), "serve"])
        .env_remove("NOTIFY_SOCKET")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn start_up_failures_name_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let base = format!(
        "state_directory = {:?}\nruntime_directory = {:?}\n",
        dir.path().join("state"),
        dir.path().join("run")
    );

    let (code, err) = serve_once(
        dir.path(),
        &format!("{base}[store]\nurl = \"postgress://mail@127.0.0.1/mail\"\n"),
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("store.url") && err.contains("unsupported database URL"),
        "{err}"
    );

    let (code, err) = serve_once(
        dir.path(),
        &format!(
            "{base}[oidc]\nissuer = \"https://idp.example.org\"\nclient_id = \"mail\"\n\
             client_secret_file = \"/nonexistent/oidc-secret\"\n\
             redirect_url = \"https://mail.example.org/callback\"\n[web]\n"
        ),
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("oidc.client_secret_file") && err.contains("/nonexistent/oidc-secret"),
        "{err}"
    );

    let short_key = dir.path().join("short.key");
    std::fs::write(&short_key, b"0123456789").unwrap();
    std::fs::set_permissions(&short_key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (code, err) = serve_once(
        dir.path(),
        &format!("{base}[credentials]\nkey_file = {short_key:?}\n"),
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("short.key") && err.contains("expected 32"),
        "{err}"
    );

    // A folder where the key should be: unreadable as a key, whoever runs the test.
    let folder_key = dir.path().join("folder.key");
    std::fs::create_dir(&folder_key).unwrap();
    let (code, err) = serve_once(
        dir.path(),
        &format!("{base}[credentials]\nkey_file = {folder_key:?}\n"),
    );
    assert_ne!(code, 0);
    assert!(err.contains("folder.key"), "{err}");

    let (code, err) = serve_once(
        dir.path(),
        &format!("{base}[auth_socket]\nowner = \"no-such-user-here\"\n"),
    );
    assert_ne!(code, 0);
    assert!(err.contains("no such user \"no-such-user-here\""), "{err}");
    assert!(
        !dir.path().join("run/auth").exists(),
        "no socket is left with the wrong owner"
    );

    // A socket path held by another running daemon.
    let mut first = Daemon::prepare("");
    first.run();
    let (code, err) = serve_once(
        dir.path(),
        &format!(
            "{base}[auth_socket]\nlisten = [\"unix:{}\"]\n",
            first.socket("auth").display()
        ),
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("socket is in use by a running process"),
        "{err}"
    );
    assert!(
        first.socket("auth").exists(),
        "the running daemon keeps its socket"
    );
}

/// Percentile of sorted latencies.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// One slow HTTP client: a header byte every two seconds, never a whole head. `Ok(how long
/// until the server closed it)`, `Err` when it was still open after `give_up`.
async fn slow_http_client(port: u16, give_up: Duration) -> Result<Duration, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let started = Instant::now();
    let mut s = match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
        Ok(s) => s,
        Err(e) => return Err(format!("connect: {e}")),
    };
    let head = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ";
    let mut buf = [0u8; 1024];
    for i in 0.. {
        let byte = head.get(i).copied().unwrap_or(b'a');
        if s.write_all(&[byte]).await.is_err() {
            return Ok(started.elapsed());
        }
        match tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(started.elapsed()),
            Ok(Ok(_)) | Err(_) => {}
        }
        if started.elapsed() > give_up {
            return Err(format!("still open after {:?}", started.elapsed()));
        }
    }
    unreachable!()
}

/// Slow HTTP against the web page (a header byte every 2 s on thousands of connections)
/// while app-password logins and userdb lookups go on: the auth and userdb sockets keep
/// answering, and the server closes every slow connection (beyond `[web] max_connections`
/// at once, the rest after the header timeout). `MAILAUTHD_SLOW_CONNECTIONS` sets how many
/// (default 5000; `bench/slow-http.sh` runs the 20,000 of the issue).
#[test]
fn a_slow_http_flood_on_the_web_page_starves_neither_auth_nor_userdb() {
    let wanted: usize = std::env::var("MAILAUTHD_SLOW_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    // Room for the slow clients here and the daemon's own descriptors (it inherits this).
    let (soft, hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    if soft < hard {
        nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard)
            .unwrap();
    }
    let slow_count = wanted.min(
        usize::try_from(hard)
            .unwrap_or(usize::MAX)
            .saturating_sub(1500),
    );
    assert!(
        slow_count >= 1000,
        "descriptor limit {hard} is too low for this test"
    );

    let web_port = free_port();
    let mut d = Daemon::prepare(&format!(
        "[web]\nlisten = \"127.0.0.1:{web_port}\"\nsecure_cookies = false\n"
    ));
    let created = d.cli(
        &[
            "--json",
            "app-password",
            "create",
            "alice@example.org",
            "--name",
            "phone",
            "--protocols",
            "imap",
        ],
        None,
    );
    let created: serde_json::Value = serde_json::from_str(&created).unwrap();
    let app = created["password"].as_str().unwrap().to_string();
    d.run();
    assert_eq!(http_get(web_port, "/healthz"), (200, "ok\n".into()));

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let flood_started = Instant::now();
    let slow = runtime.spawn(async move {
        let mut tasks = Vec::with_capacity(slow_count);
        for i in 0..slow_count {
            tasks.push(tokio::spawn(slow_http_client(
                web_port,
                Duration::from_secs(40),
            )));
            // Opened over about two seconds, as a flood from many machines would be.
            if i % 250 == 249 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let mut results = Vec::with_capacity(slow_count);
        for t in tasks {
            results.push(t.await.unwrap());
        }
        results
    });

    // Meanwhile: app-password logins on the auth socket, USER lookups on the userdb socket.
    let mut auth = AuthClient::connect(&d.socket("auth"));
    let userdb = UnixStream::connect(d.socket("userdb")).unwrap();
    userdb
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut userdb_reader = BufReader::new(userdb.try_clone().unwrap());
    let mut userdb_writer = userdb;
    let mut line = String::new();
    for _ in 0..2 {
        line.clear();
        userdb_reader.read_line(&mut line).unwrap(); // VERSION, SPID
    }
    userdb_writer.write_all(b"VERSION\t1\t1\n").unwrap();
    let mut auth_latency = Vec::new();
    let mut userdb_latency = Vec::new();
    let mut id = 0u32;
    while flood_started.elapsed() < Duration::from_secs(14) {
        id += 1;
        let t = Instant::now();
        let reply = auth.plain(id, "alice@example.org", &app);
        auth_latency.push(t.elapsed());
        assert!(reply.starts_with(&format!("OK\t{id}\t")), "{reply}");
        let t = Instant::now();
        writeln!(userdb_writer, "USER\t{id}\talice@example.org\tservice=lmtp").unwrap();
        line.clear();
        userdb_reader
            .read_line(&mut line)
            .expect("the userdb socket answers during the flood");
        userdb_latency.push(t.elapsed());
        assert!(
            line.starts_with(&format!("USER\t{id}\talice@example.org")),
            "{line}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }

    let results = runtime.block_on(slow).unwrap();
    let still_open: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        still_open.is_empty(),
        "{} of {slow_count} slow connections were not closed by the server, e.g. {:?}",
        still_open.len(),
        still_open.first()
    );
    let mut closed: Vec<Duration> = results.into_iter().map(Result::unwrap).collect();
    closed.sort();
    auth_latency.sort();
    userdb_latency.sort();
    eprintln!(
        "{slow_count} slow connections: closed after p50 {:?}, max {:?}; \
         {} app-password logins meanwhile: p50 {:?}, p99 {:?}, max {:?}; \
         userdb lookups: p50 {:?}, p99 {:?}",
        percentile(&closed, 0.5),
        closed.last().unwrap(),
        auth_latency.len(),
        percentile(&auth_latency, 0.5),
        percentile(&auth_latency, 0.99),
        auth_latency.last().unwrap(),
        percentile(&userdb_latency, 0.5),
        percentile(&userdb_latency, 0.99),
    );
    // The header timeout (10 s by default) closes the ones that were served, with room for
    // a loaded machine; a byte every 2 s never extends it.
    assert!(
        *closed.last().unwrap() < Duration::from_secs(25),
        "a slow connection lasted {:?}",
        closed.last().unwrap()
    );
    assert!(auth_latency.len() > 100, "logins kept going");
    // Answering, not merely eventually: every login well inside Postfix's 10 s SASL timeout.
    assert!(
        *auth_latency.last().unwrap() < Duration::from_secs(2),
        "{:?}",
        auth_latency.last()
    );
    assert_eq!(http_get(web_port, "/healthz"), (200, "ok\n".into()));
    assert!(
        d.log_text().contains("connection limit reached"),
        "the cap was hit and said so"
    );
}

/// The page's password form is a door of the decision core in the real daemon: one audit
/// line in the format fail2ban reads (`service="web"`, the client behind the trusted
/// proxy as `rip`), and the web door in `/metrics`.
#[test]
fn the_password_form_writes_the_audit_line_of_every_door() {
    let web_port = free_port();
    let metrics_port = free_port();
    let mut d = Daemon::prepare(&format!(
        "[web]\nlisten = \"127.0.0.1:{web_port}\"\nsecure_cookies = false\n\
         trusted_proxies = [\"127.0.0.1/32\"]\n\
         [metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n"
    ));
    d.run();
    let (status, head, body) = http_raw(web_port, "GET / HTTP/1.0\r\nHost: x\r\n\r\n");
    assert_eq!(status, 200);
    let cookie = head
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .and_then(|c| c.split(';').next())
        .unwrap()
        .to_string();
    let start = body.find("name=\"csrf\" value=\"").unwrap() + 19;
    let csrf = &body[start..start + body[start..].find('"').unwrap()];
    let form = format!("csrf={csrf}&address=alice%40example.org&password=wrong");
    let (status, _, _) = http_raw(
        web_port,
        &format!(
            "POST /login/password HTTP/1.0\r\nHost: x\r\nCookie: {cookie}\r\n\
             X-Forwarded-For: 192.0.2.66, 198.51.100.7\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
            form.len()
        ),
    );
    assert_eq!(status, 403);
    d.wait_log(
        "WARN auth service=\"web\" user=\"alice@example.org\" rip=\"198.51.100.7\" mech=\"form\" outcome=\"fail\" reason=\"bad_credentials\"",
    );
    let (_, metrics) = http_get(metrics_port, "/metrics");
    assert_eq!(
        series(
            &metrics,
            "mailauthd_auth_requests_total{protocol=\"web\",mechanism=\"other\",outcome=\"fail\",reason=\"bad_credentials\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
}

/// Listener caps that together need more descriptors than the process may open stop the
/// start with a message that names each cap and the limit; caps that fit start.
#[test]
fn connection_caps_must_fit_under_the_open_file_limit() {
    let mut d = Daemon::prepare("");
    // 3 × 1024 (auth, userdb, policy) + 16 + 16 + 64 is more than 1024.
    let out = Command::new("prlimit")
        .args(["--nofile=1024:1024", "--", BIN])
        .args(["--config", d.config.to_str().unwrap(), "serve"])
        .env_remove("NOTIFY_SOCKET")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    for part in [
        "need 3168 open files",
        "auth_socket.max_connections 1024",
        "policy_socket.max_connections 1024",
        "open-file limit is 1024",
        "LimitNOFILE=",
    ] {
        assert!(err.contains(part), "{part:?} missing in: {err}");
    }
    assert!(!d.socket("auth").exists(), "nothing was bound");

    d.write_config(
        "[auth_socket]\nmax_connections = 600\n[userdb_socket]\nmax_connections = 100\n\
         [policy_socket]\nmax_connections = 100\n",
    );
    d.spawn(
        Command::new("prlimit")
            .args(["--nofile=1024:1024", "--", BIN])
            .args(["--config", d.config.to_str().unwrap(), "serve"]),
    );
    d.expect_notify("READY=1");
    let mut c = AuthClient::connect(&d.socket("auth"));
    assert_eq!(
        c.plain(1, "alice@example.org", "alice-pw"),
        "OK\t1\tuser=alice@example.org"
    );
}
