//! The real daemon on temporary unix sockets, spoken to in raw protocol bytes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use nix::sys::resource::{getrlimit, setrlimit, Resource};

const BIN: &str = env!("CARGO_BIN_EXE_mailauthd");

struct Daemon {
    /// The running daemon; `None` while the test data is being written.
    child: Option<Child>,
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Daemon {
    fn start(store_url: Option<&str>) -> Daemon {
        Daemon::start_with(store_url, None, true)
    }

    /// `key_file`: share one app-password key between daemons; `seed`: create the test
    /// domain and mailboxes (only the first daemon on a shared database does).
    fn start_with(store_url: Option<&str>, key_file: Option<&Path>, seed: bool) -> Daemon {
        Daemon::start_throttled(store_url, key_file, seed, "")
    }

    /// Like `start_with`, with more `[throttle]` lines (such as `redis_url`).
    fn start_throttled(
        store_url: Option<&str>,
        key_file: Option<&Path>,
        seed: bool,
        throttle: &str,
    ) -> Daemon {
        Daemon::start_custom(store_url, key_file, seed, "", throttle)
    }

    /// `auth_socket`: more `[auth_socket]` lines; `throttle`: `[throttle]` lines that
    /// replace the test defaults of the same key, and any sections after it.
    fn start_custom(
        store_url: Option<&str>,
        key_file: Option<&Path>,
        seed: bool,
        auth_socket: &str,
        throttle: &str,
    ) -> Daemon {
        Daemon::start_full(
            store_url,
            key_file,
            seed,
            throttle,
            &format!("idle_timeout_ms = 60000\nmax_connections = 4096\n{auth_socket}"),
            "",
            None,
        )
    }

    /// The seeded test data, with these `[auth_socket]` lines and more sections after
    /// `[throttle]`.
    fn start_sections(auth_socket: &str, sections: &str) -> Daemon {
        Daemon::start_full(None, None, true, "", auth_socket, sections, None)
    }

    fn start_full(
        store_url: Option<&str>,
        key_file: Option<&Path>,
        seed: bool,
        throttle: &str,
        auth_socket: &str,
        sections: &str,
        store_lines: Option<&str>,
    ) -> Daemon {
        // Test defaults, unless `throttle` sets the same key.
        let defaults: String = [
            "base_delay_ms = 1",
            "max_delay_ms = 5",
            "network_block_after = 6",
            "block_secs = 600",
        ]
        .iter()
        .filter(|line| {
            let key = line.split(' ').next().unwrap();
            !throttle.lines().any(|l| l.starts_with(&format!("{key} ")))
        })
        .map(|line| format!("{line}\n"))
        .collect();
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("mailauthd.toml");
        let store = store_url
            .map(|u| format!("url = {u:?}\n"))
            .unwrap_or_default()
            // A server that went away is noticed in half a second; SQLite, opened and
            // migrated by the seeding CLI while the machine may be busy, gets longer.
            + store_lines.unwrap_or(if store_url.is_some() {
                "connect_timeout_ms = 500\n"
            } else {
                "connect_timeout_ms = 5000\n"
            });
        std::fs::write(
            &config,
            format!(
                "state_directory = {state:?}\nruntime_directory = {run:?}\n[store]\n{store}\
                 [credentials]\n{key}argon2_memory_kib = 8192\nargon2_iterations = 1\n\
                 [auth_socket]\n{auth_socket}\
                 [throttle]\n{defaults}{throttle}\n\
                 {sections}",
                state = dir.path().join("state"),
                run = dir.path().join("run"),
                key = key_file
                    .map(|k| format!("key_file = {k:?}\n"))
                    .unwrap_or_default(),
            ),
        )
        .unwrap();
        let mut d = Daemon {
            child: None,
            dir,
            config,
        };
        if seed {
            d.cli(&["domain", "add", "example.org"], None);
            d.cli(
                &["mailbox", "add", "alice@example.org", "--password-stdin"],
                Some("alice-pw\n"),
            );
            d.cli(
                &["mailbox", "add", "bob@example.org", "--authsource", "oidc"],
                None,
            );
        }
        d.child = Some(
            Command::new(BIN)
                .args(["--config", d.config.to_str().unwrap(), "serve"])
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap(),
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while !d.socket("userdb").exists() {
            assert!(
                Instant::now() < deadline,
                "daemon did not create its sockets"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        d
    }

    fn socket(&self, name: &str) -> PathBuf {
        self.dir.path().join("run").join(name)
    }

    fn cli(&self, args: &[&str], stdin: Option<&str>) -> String {
        common::cli_ok(&self.config, args, stdin)
    }

    fn app_password(&self, address: &str, protocols: &str) -> String {
        let out = self.cli(
            &[
                "--json",
                "app-password",
                "create",
                address,
                "--name",
                "t",
                "--protocols",
                protocols,
            ],
            None,
        );
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["password"].as_str().unwrap().to_string()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let _ = child.wait();
        }
    }
}

struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    fn connect(path: &Path) -> Client {
        let s = UnixStream::connect(path).unwrap();
        // Only a guard against a hang: the bound tests queue hundreds of hashes on one
        // worker, which on a loaded machine take longer than a person would wait.
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        Client {
            reader: BufReader::new(s.try_clone().unwrap()),
            writer: s,
        }
    }

    fn line(&mut self) -> Option<String> {
        let mut l = String::new();
        match self.reader.read_line(&mut l) {
            Ok(0) => None,
            Ok(_) => Some(l.trim_end_matches('\n').to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => None,
            Err(e) => panic!("read: {e}"),
        }
    }

    fn handshake(path: &Path) -> (Client, Vec<String>) {
        let mut c = Client::connect(path);
        let mut lines = Vec::new();
        loop {
            let l = c.line().expect("handshake");
            let done = l == "DONE";
            lines.push(l);
            if done {
                break;
            }
        }
        c.send("VERSION\t1\t2\nCPID\t4242\n");
        (c, lines)
    }

    fn send(&mut self, s: &str) {
        self.writer.write_all(s.as_bytes()).unwrap();
    }

    fn closed(&mut self) -> bool {
        let mut rest = Vec::new();
        matches!(self.reader.read_to_end(&mut rest), Ok(_) | Err(_)) && rest.is_empty()
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn plain(user: &str, pass: &str) -> String {
    b64(format!("\0{user}\0{pass}").as_bytes())
}

/// The PostgreSQL server to test against, or `None` (with a note) outside CI when none is
/// given: these tests share one database between daemons or cut its connections, which a
/// SQLite file cannot show.
fn postgres_admin(test: &str) -> Option<String> {
    let admin = std::env::var("MAILAUTHD_TEST_POSTGRES_URL")
        .ok()
        .filter(|u| !u.is_empty());
    if admin.is_none() {
        assert!(
            std::env::var("CI").is_err(),
            "MAILAUTHD_TEST_POSTGRES_URL is required in CI"
        );
        eprintln!("note: MAILAUTHD_TEST_POSTGRES_URL not set; {test} skipped outside CI");
    }
    admin
}

/// A fresh PostgreSQL database for two daemons and the app-password key file they share.
/// The test's own pool is closed at once, so only the daemons hold connections.
struct TwoDaemonDb {
    rt: tokio::runtime::Runtime,
    db: common::TestDb,
    key: PathBuf,
    _dir: tempfile::TempDir,
}

impl TwoDaemonDb {
    fn new(admin: String) -> Self {
        Self::on(common::Backend::Postgres(admin))
    }

    fn on(backend: common::Backend) -> Self {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let db = rt.block_on(common::fresh(&backend));
        rt.block_on(db.store.close());
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("app-password.key");
        Self {
            rt,
            db,
            key,
            _dir: dir,
        }
    }
}

#[test]
fn protocol_conversations_with_the_real_daemon() {
    let d = Daemon::start(None);
    let app = d.app_password("bob@example.org", "imap");
    let auth = d.socket("auth");

    // The handshake is exactly what Dovecot 2.3 emits: MECH lines before SPID.
    let (mut c, hello) = Client::handshake(&auth);
    let kinds: Vec<&str> = hello
        .iter()
        .map(|l| l.split('\t').next().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["VERSION", "MECH", "MECH", "SPID", "CUID", "COOKIE", "DONE"]
    );
    assert_eq!(hello[0], "VERSION\t1\t2");
    assert_eq!(
        &hello[1..3],
        ["MECH\tPLAIN\tplaintext", "MECH\tLOGIN\tplaintext"]
    );

    // PLAIN with initial response, as Postfix sends it; OK carries the canonical user.
    c.send(&format!(
        "AUTH\t1\tPLAIN\tservice=smtp\tnologin\tlip=127.0.0.1\trip=192.0.2.7\tresp={}\n",
        plain("Alice@EXAMPLE.org", "alice-pw")
    ));
    assert_eq!(c.line().unwrap(), "OK\t1\tuser=alice@example.org");
    c.send(&format!(
        "AUTH\t2\tPLAIN\tservice=imap\tresp={}\n",
        plain("alice@example.org", "wrong")
    ));
    assert_eq!(
        c.line().unwrap(),
        "FAIL\t2\tuser=alice@example.org\treason=Authentication failed"
    );

    // LOGIN with CONT round trips.
    c.send("AUTH\t3\tLOGIN\tservice=smtp\tnologin\n");
    assert_eq!(c.line().unwrap(), format!("CONT\t3\t{}", b64(b"Username:")));
    c.send(&format!("CONT\t3\t{}\n", b64(b"alice@example.org")));
    assert_eq!(c.line().unwrap(), format!("CONT\t3\t{}", b64(b"Password:")));
    c.send(&format!("CONT\t3\t{}\n", b64(b"alice-pw")));
    assert_eq!(c.line().unwrap(), "OK\t3\tuser=alice@example.org");

    // Interleaved: a slow Argon2 login and a fast app password; both answered, the app
    // password not held up behind the hash.
    c.send(&format!(
        "AUTH\t10\tPLAIN\tservice=imap\tresp={}\nAUTH\t11\tPLAIN\tservice=imap\tresp={}\n",
        plain("alice@example.org", "alice-pw"),
        plain("bob@example.org", &app)
    ));
    let mut replies = vec![c.line().unwrap(), c.line().unwrap()];
    replies.sort();
    assert_eq!(
        replies,
        [
            "OK\t10\tuser=alice@example.org",
            "OK\t11\tuser=bob@example.org"
        ]
    );

    // CANCEL ends a request; its id may be used again.
    c.send("AUTH\t20\tLOGIN\tservice=imap\nCANCEL\t20\n");
    assert_eq!(
        c.line().unwrap(),
        format!("CONT\t20\t{}", b64(b"Username:"))
    );
    c.send(&format!(
        "AUTH\t20\tPLAIN\tservice=imap\tresp={}\n",
        plain("bob@example.org", &app)
    ));
    assert_eq!(c.line().unwrap(), "OK\t20\tuser=bob@example.org");

    // Bad base64 fails that request only; unsupported mechanism likewise.
    c.send("AUTH\t21\tPLAIN\tservice=imap\tresp=!!!\n");
    assert!(c.line().unwrap().starts_with("FAIL\t21\t"));
    c.send("AUTH\t22\tCRAM-MD5\tservice=imap\n");
    assert!(c.line().unwrap().starts_with("FAIL\t22\t"));
    // Without [oauth] the token mechanisms are neither offered nor accepted.
    c.send(&format!(
        "AUTH\t24\tXOAUTH2\tservice=imap\tresp={}\nAUTH\t25\toauthbearer\tservice=imap\n",
        b64(b"user=bob@example.org\x01auth=Bearer abc\x01\x01")
    ));
    for id in [24, 25] {
        assert_eq!(
            c.line().unwrap(),
            format!("FAIL\t{id}\treason=Unsupported authentication mechanism")
        );
    }
    // The app password is for IMAP only.
    c.send(&format!(
        "AUTH\t23\tPLAIN\tservice=pop3\tresp={}\n",
        plain("bob@example.org", &app)
    ));
    assert!(c.line().unwrap().starts_with("FAIL\t23\t"));

    // A reused id while the request is open closes the connection.
    c.send("AUTH\t30\tLOGIN\tservice=imap\n");
    assert!(c.line().unwrap().starts_with("CONT\t30"));
    c.send("AUTH\t30\tLOGIN\tservice=imap\n");
    assert!(c.closed(), "reused id must close the connection");

    // Over-long lines, garbage and unknown commands close the connection; others go on.
    let (mut long, _) = Client::handshake(&auth);
    long.send(&format!(
        "AUTH\t1\tPLAIN\tservice=imap\tresp={}\n",
        "A".repeat(20_000)
    ));
    assert!(long.closed());
    let (mut junk, _) = Client::handshake(&auth);
    junk.writer
        .write_all(b"\x00\x01\x02\xff\xfe garbage\n")
        .unwrap();
    assert!(junk.closed());
    let (mut unknown, _) = Client::handshake(&auth);
    unknown.send("FROB\t1\n");
    assert!(unknown.closed());
    let mut early = Client::connect(&auth);
    while early.line().unwrap() != "DONE" {}
    early.send(&format!(
        "AUTH\t1\tPLAIN\tservice=imap\tresp={}\n",
        plain("alice@example.org", "alice-pw")
    ));
    assert!(early.closed(), "AUTH before VERSION");

    // Thousands of idle connections do not stop a new one from being served. This
    // process needs a file per connection too.
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    let idle_count: u64 = 2000;
    if soft < idle_count + 200 {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    }
    assert!(
        hard >= idle_count + 200,
        "the hard open-file limit {hard} is too low for this test"
    );
    let idle: Vec<UnixStream> = (0..idle_count)
        .map(|_| UnixStream::connect(&auth).unwrap())
        .collect();
    let (mut fresh, _) = Client::handshake(&auth);
    fresh.send(&format!(
        "AUTH\t1\tPLAIN\tservice=imap\tresp={}\n",
        plain("bob@example.org", &app)
    ));
    assert_eq!(fresh.line().unwrap(), "OK\t1\tuser=bob@example.org");
    drop(idle);

    // Revocation applies on the very next attempt.
    let list = d.cli(&["--json", "app-password", "list", "bob@example.org"], None);
    let id = serde_json::from_str::<serde_json::Value>(&list).unwrap()[0]["id"].to_string();
    d.cli(&["app-password", "revoke", "bob@example.org", &id], None);
    fresh.send(&format!(
        "AUTH\t2\tPLAIN\tservice=imap\tresp={}\n",
        plain("bob@example.org", &app)
    ));
    assert!(fresh.line().unwrap().starts_with("FAIL\t2\t"));
}

/// A client that leaks connections fills the auth socket's cap (here 40) with idle ones,
/// some after the handshake, some silent. A new connection (Postfix's, for one SMTP
/// session) still gets its handshake at once and logs in: the longest-idle connection is
/// closed to make room, whatever the idle timeout (600 s here). A flood of 1,100 more keeps
/// the cap and leaves the userdb and policy sockets answering.
#[test]
fn a_full_auth_socket_makes_room_by_closing_its_longest_idle_connection() {
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let d = Daemon::start_sections(
        "max_connections = 40\nidle_timeout_ms = 600000\n",
        &format!(
            "[userdb_socket]\nmax_connections = 20\n[policy_socket]\nmax_connections = 20\n\
             [metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n"
        ),
    );
    let auth = d.socket("auth");
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if soft < 1400 {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    }
    assert!(
        hard >= 1400,
        "the hard open-file limit {hard} is too low for this test"
    );

    // The leak: 20 connections that did the handshake like Dovecot, then 20 silent ones.
    let mut leaked: Vec<Client> = (0..20).map(|_| Client::handshake(&auth).0).collect();
    for _ in 0..20 {
        leaked.push(Client::connect(&auth));
        std::thread::sleep(Duration::from_millis(2));
    }
    // Every one of them is being served (got its handshake): the cap is exactly full.
    for c in &mut leaked[20..] {
        assert!(c.line().unwrap().starts_with("VERSION\t"));
    }

    let started = Instant::now();
    let (mut fresh, hello) = Client::handshake(&auth);
    let waited = started.elapsed();
    assert_eq!(hello.last().unwrap(), "DONE");
    fresh.send(&format!(
        "AUTH\t1\tPLAIN\tservice=smtp\tnologin\tresp={}\n",
        plain("alice@example.org", "alice-pw")
    ));
    assert_eq!(fresh.line().unwrap(), "OK\t1\tuser=alice@example.org");
    eprintln!("handshake on a full auth socket after {waited:?}");
    assert!(
        waited < Duration::from_secs(3),
        "a new connection waited {waited:?} for its handshake"
    );
    // The room came from the connection idle longest, the first leaked one.
    leaked[0]
        .writer
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert!(leaked[0].closed(), "the longest-idle connection was closed");

    // A connection with a request in flight is not taken: a login pipelined with the next
    // connection's arrival is answered.
    let (mut busy, _) = Client::handshake(&auth);
    busy.send(&format!(
        "AUTH\t7\tPLAIN\tservice=imap\tresp={}\n",
        plain("alice@example.org", "alice-pw")
    ));
    let (mut next, _) = Client::handshake(&auth);
    assert_eq!(busy.line().unwrap(), "OK\t7\tuser=alice@example.org");
    next.send(&format!(
        "AUTH\t1\tPLAIN\tservice=imap\tresp={}\n",
        plain("alice@example.org", "alice-pw")
    ));
    assert_eq!(next.line().unwrap(), "OK\t1\tuser=alice@example.org");

    // The flood: 1,100 connections more, all held open by this process.
    let flood: Vec<UnixStream> = (0..1100)
        .map(|_| UnixStream::connect(&auth).unwrap())
        .collect();
    // Meanwhile the other listeners answer at once.
    let started = Instant::now();
    let mut userdb = Client::connect(&d.socket("userdb"));
    assert!(userdb.line().unwrap().starts_with("VERSION\t1\t"));
    assert!(userdb.line().unwrap().starts_with("SPID\t"));
    userdb.send("VERSION\t1\t1\nUSER\t1\talice@example.org\tservice=lmtp\n");
    assert!(userdb
        .line()
        .unwrap()
        .starts_with("USER\t1\talice@example.org"));
    let mut policy = Client::connect(&d.socket("policy"));
    policy.send(
        "request=smtpd_access_policy\nprotocol_state=RCPT\nsasl_username=alice@example.org\n\
         sender=alice@example.org\nrecipient=x@example.com\nclient_address=192.0.2.1\n\n",
    );
    assert_eq!(policy.line().unwrap(), "action=DUNNO");
    eprintln!(
        "userdb and policy answered during the flood in {:?}",
        started.elapsed()
    );
    // And the auth socket itself still takes a login on a new connection.
    let started = Instant::now();
    let (mut after, _) = Client::handshake(&auth);
    after.send(&format!(
        "AUTH\t1\tPLAIN\tservice=imap\tresp={}\n",
        plain("alice@example.org", "alice-pw")
    ));
    assert_eq!(after.line().unwrap(), "OK\t1\tuser=alice@example.org");
    eprintln!(
        "login on a new auth connection during the flood in {:?}",
        started.elapsed()
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(flood);

    let (status, text) = http_get(metrics_port, "/metrics");
    assert_eq!(status, 200);
    let evicted = text
        .lines()
        .find(|l| l.starts_with("mailauthd_connections_evicted_total{listener=\"auth_socket\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(evicted >= 1000.0, "evictions counted: {evicted}\n{text}");
}

/// Minimal HTTP/1.0 GET on loopback: status and body.
fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, body.to_string())
}

#[test]
fn userdb_lookups() {
    let d = Daemon::start(None);
    d.cli(
        &["mailbox", "set", "alice@example.org", "--quota", "2G"],
        None,
    );
    d.cli(
        &[
            "mailbox",
            "add",
            "carol@example.org",
            "--no-password",
            "--active",
            "2",
        ],
        None,
    );
    d.cli(
        &[
            "mailbox",
            "add",
            "dave@example.org",
            "--no-password",
            "--active",
            "0",
        ],
        None,
    );
    let mut c = Client::connect(&d.socket("userdb"));
    assert!(c.line().unwrap().starts_with("VERSION\t1\t"));
    assert!(c.line().unwrap().starts_with("SPID\t"));
    c.send("VERSION\t1\t1\nUSER\t1\tAlice@example.org\tservice=lmtp\n");
    assert_eq!(
        c.line().unwrap(),
        "USER\t1\talice@example.org\tquota_rule=*:bytes=2147483648"
    );
    c.send("USER\t2\tcarol@example.org\tservice=lmtp\nUSER\t3\tdave@example.org\tservice=lmtp\nUSER\t4\tghost@example.org\tservice=lmtp\n");
    assert!(
        c.line().unwrap().starts_with("USER\t2\tcarol@example.org"),
        "active 2 still receives mail"
    );
    assert_eq!(c.line().unwrap(), "NOTFOUND\t3");
    assert_eq!(c.line().unwrap(), "NOTFOUND\t4");
    c.send("PASS\t5\talice@example.org\tservice=lmtp\n");
    assert!(c
        .line()
        .unwrap()
        .starts_with("PASS\t5\tuser=alice@example.org"));
}

/// The database goes away and comes back: the handshake keeps working, SMTP callers get a
/// closed connection (Postfix: 454), others FAIL with code=temp_fail, then it recovers.
#[test]
fn store_outage_is_temporary_and_recovers() {
    let Some(admin) = postgres_admin("outage test") else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(common::fresh(&common::Backend::Postgres(admin.clone())));
    rt.block_on(db.store.close());
    let d = Daemon::start(Some(&db.url));
    let auth = d.socket("auth");
    let (mut c, _) = Client::handshake(&auth);
    c.send(&format!(
        "AUTH\t1\tPLAIN\tservice=imap\tresp={}\n",
        plain("alice@example.org", "alice-pw")
    ));
    assert_eq!(c.line().unwrap(), "OK\t1\tuser=alice@example.org");

    let name = db.url.rsplit('/').next().unwrap().to_string();
    let psql = |sql: &str| {
        let out = Command::new("psql")
            .args([admin.as_str(), "-v", "ON_ERROR_STOP=1", "-qAtc", sql])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    psql(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false"));
    psql(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
    ));

    let (mut imap, hello) = Client::handshake(&auth);
    assert_eq!(
        hello.last().unwrap(),
        "DONE",
        "handshake works during the outage"
    );
    imap.send(&format!(
        "AUTH\t1\tPLAIN\tservice=imap\tresp={}\n",
        plain("alice@example.org", "alice-pw")
    ));
    let reply = imap.line().unwrap();
    assert!(
        reply.starts_with("FAIL\t1\t") && reply.contains("code=temp_fail"),
        "{reply}"
    );
    let (mut smtp, _) = Client::handshake(&auth);
    smtp.send(&format!(
        "AUTH\t1\tPLAIN\tservice=smtp\tnologin\tresp={}\n",
        plain("alice@example.org", "alice-pw")
    ));
    assert!(smtp.closed(), "SMTP callers get a closed connection");

    psql(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true"));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (mut again, _) = Client::handshake(&auth);
        again.send(&format!(
            "AUTH\t1\tPLAIN\tservice=imap\tresp={}\n",
            plain("alice@example.org", "alice-pw")
        ));
        let reply = again.line().unwrap();
        if reply == "OK\t1\tuser=alice@example.org" {
            break;
        }
        assert!(Instant::now() < deadline, "did not recover: {reply}");
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(d);
    rt.block_on(db.finish());
}

/// A TCP relay to the real database that the test can freeze: from then on nothing passes
/// on the connections it carries, and they stay open, never answering (a database that
/// hangs, a network that drops its packets). Connections accepted while frozen get the
/// same. After `thaw`, new connections pass again; the frozen ones stay dead, as
/// connections to a server that restarted behind a dropping firewall do.
struct FreezingRelay {
    port: u16,
    epoch: tokio::sync::watch::Sender<u64>,
    frozen: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Frozen connections, kept open until the relay goes.
    graveyard: std::sync::Arc<std::sync::Mutex<Vec<tokio::net::TcpStream>>>,
    acceptor: tokio::task::AbortHandle,
}

impl FreezingRelay {
    async fn start(upstream: String) -> FreezingRelay {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (epoch, _) = tokio::sync::watch::channel(0u64);
        let frozen = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let graveyard = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (epochs, frozen2, graves) = (epoch.clone(), frozen.clone(), graveyard.clone());
        let acceptor = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if frozen2.load(Ordering::SeqCst) {
                    graves.lock().unwrap().push(client);
                    continue;
                }
                let mut changed = epochs.subscribe();
                let graves = graves.clone();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let freeze = tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => false,
                        _ = changed.changed() => true,
                    };
                    if freeze {
                        graves.lock().unwrap().extend([client, server]);
                    }
                });
            }
        })
        .abort_handle();
        FreezingRelay {
            port,
            epoch,
            frozen,
            graveyard,
            acceptor,
        }
    }

    fn freeze(&self) {
        self.frozen.store(true, std::sync::atomic::Ordering::SeqCst);
        self.epoch.send_modify(|e| *e += 1);
    }

    fn thaw(&self) {
        self.frozen
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for FreezingRelay {
    fn drop(&mut self) {
        self.acceptor.abort();
        self.graveyard.lock().unwrap().clear();
    }
}

/// One login on a new connection: the reply line, and how long it took.
fn timed_login(auth: &Path, id: u32) -> (String, Duration) {
    let started = Instant::now();
    let (mut c, _) = Client::handshake(auth);
    c.writer
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    c.send(&format!(
        "AUTH\t{id}\tPLAIN\tservice=imap\tresp={}\n",
        plain("alice@example.org", "alice-pw")
    ));
    let reply = c.line().unwrap_or_else(|| "closed".into());
    (reply, started.elapsed())
}

/// PostgreSQL hangs (behind a relay that stops passing anything, its connections left
/// open), then comes back while every connection the daemon had stays dead. Logins during
/// the hang get a temporary failure within the deadline, never a hang and never "wrong
/// password"; once the database answers again, logins succeed at once, not after each
/// dead pooled connection has timed out in turn. Default store timeouts (3 s).
#[test]
fn logins_recover_at_once_when_a_database_that_hung_comes_back() {
    let Some(admin) = postgres_admin("recovery test") else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(common::fresh(&common::Backend::Postgres(admin)));
    rt.block_on(db.store.close());
    let upstream = {
        let rest = db.url.split_once("://").unwrap().1;
        let host_port = rest.split_once('@').map_or(rest, |(_, h)| h);
        host_port.split('/').next().unwrap().to_string()
    };
    let relay = rt.block_on(FreezingRelay::start(upstream.clone()));
    let via_relay = db
        .url
        .replacen(&upstream, &format!("127.0.0.1:{}", relay.port), 1);
    let d = Daemon::start_full(
        Some(&via_relay),
        None,
        true,
        "",
        "idle_timeout_ms = 60000\n",
        "",
        Some(""),
    );
    let auth = d.socket("auth");

    // Several pooled connections, as a busy server has.
    let parallel = |n: u32, first_id: u32| -> Vec<(String, Duration)> {
        let threads: Vec<_> = (0..n)
            .map(|i| {
                let auth = auth.clone();
                std::thread::spawn(move || timed_login(&auth, first_id + i))
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    };
    for (i, (reply, _)) in parallel(16, 1).iter().enumerate() {
        assert_eq!(reply, &format!("OK\t{}\tuser=alice@example.org", i + 1));
    }

    // The hang, with logins arriving meanwhile.
    relay.freeze();
    for (i, (reply, took)) in parallel(4, 100).iter().enumerate() {
        let id = 100 + i;
        assert!(
            reply.starts_with(&format!("FAIL\t{id}\t")) && reply.contains("code=temp_fail"),
            "during the hang: {reply}"
        );
        assert!(*took < Duration::from_secs(10), "a login hung for {took:?}");
        eprintln!("login during the hang: temporary failure after {took:?}");
    }

    // The database answers again; the daemon's old connections do not.
    relay.thaw();
    let back = Instant::now();
    let mut id = 200;
    let recovered = loop {
        let (reply, _) = timed_login(&auth, id);
        if reply == format!("OK\t{id}\tuser=alice@example.org") {
            break back.elapsed();
        }
        assert!(
            reply.starts_with(&format!("FAIL\t{id}\t")) && reply.contains("code=temp_fail"),
            "while recovering: {reply}"
        );
        assert!(
            back.elapsed() < Duration::from_secs(30),
            "no login succeeded within 30 s of the database coming back"
        );
        id += 1;
        std::thread::sleep(Duration::from_millis(20));
    };
    eprintln!("database recovery: first login OK {recovered:?} after the database came back ({} refused before)", id - 200);
    assert!(
        recovered < Duration::from_secs(3),
        "logins recovered only {recovered:?} after the database came back"
    );
    // And they stay recovered, in parallel too.
    for (i, (reply, _)) in parallel(16, 300).iter().enumerate() {
        assert_eq!(
            reply,
            &format!("OK\t{}\tuser=alice@example.org", 300 + i),
            "after recovery"
        );
    }

    // A second, quiet hang: nothing asks the database meanwhile, so the first login after
    // it is the one that finds every pooled connection dead.
    relay.freeze();
    std::thread::sleep(Duration::from_secs(1));
    relay.thaw();
    let back = Instant::now();
    let mut id = 400;
    let recovered = loop {
        let (reply, _) = timed_login(&auth, id);
        if reply == format!("OK\t{id}\tuser=alice@example.org") {
            break back.elapsed();
        }
        assert!(
            reply.contains("code=temp_fail"),
            "after the quiet hang: {reply}"
        );
        assert!(
            back.elapsed() < Duration::from_secs(30),
            "no recovery after the quiet hang"
        );
        id += 1;
    };
    eprintln!("database recovery after a quiet hang: first login OK after {recovered:?} ({} refused before)", id - 400);
    assert!(
        recovered < Duration::from_secs(3),
        "after a quiet hang, logins recovered only after {recovered:?}"
    );
    drop(relay);
    drop(d);
    rt.block_on(db.finish());
}

/// Repeated failures from one network get blocked; the block shows in `throttle list`
/// and `throttle clear` lifts it, through the running daemon's control socket.
#[test]
fn repeated_failures_are_throttled_and_the_cli_lifts_the_block() {
    let d = Daemon::start(None);
    let (mut c, _) = Client::handshake(&d.socket("auth"));
    let attempt = |c: &mut Client, id: u32, pass: &str| {
        c.send(&format!(
            "AUTH\t{id}\tPLAIN\tservice=imap\trip=192.0.2.99\tresp={}\n",
            plain("alice@example.org", pass)
        ));
        c.line().unwrap()
    };
    for id in 1..=6 {
        assert!(attempt(&mut c, id, &format!("guess-{id}")).starts_with(&format!("FAIL\t{id}\t")));
    }
    // Blocked now: even the right password is refused from that network.
    assert!(attempt(&mut c, 7, "alice-pw").starts_with("FAIL\t7\t"));
    let list = d.cli(&["--json", "throttle", "list"], None);
    let entries: serde_json::Value = serde_json::from_str(&list).unwrap();
    let blocked = entries
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["key"] == "192.0.2.99/32")
        .expect("network listed");
    assert!(blocked["blocked_until_ms"].is_i64(), "{blocked}");
    // Another network is not affected.
    c.send(&format!(
        "AUTH\t8\tPLAIN\tservice=imap\trip=198.51.100.5\tresp={}\n",
        plain("alice@example.org", "alice-pw")
    ));
    assert_eq!(c.line().unwrap(), "OK\t8\tuser=alice@example.org");
    let cleared = d.cli(&["throttle", "clear", "192.0.2.99"], None);
    assert!(cleared.contains("cleared"), "{cleared}");
    assert_eq!(
        attempt(&mut c, 9, "alice-pw"),
        "OK\t9\tuser=alice@example.org"
    );
}

/// A conversation recorded from the real Postfix 3.7 (tests/e2e/postfix/run.sh), replayed
/// against the daemon: every reply must match, except the per-process SPID, CUID and
/// COOKIE values.
#[test]
fn replays_a_recorded_postfix_conversation() {
    let d = Daemon::start(None);
    d.cli(
        &["mailbox", "set", "alice@example.org", "--password-stdin"],
        Some("correct horse battery staple\n"),
    );
    let fixture = include_str!("fixtures/postfix-3.7-auth.txt");
    let mut c = Client::connect(&d.socket("auth"));
    let mut replies = 0;
    for line in fixture
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        if line.starts_with("connection ") {
            continue;
        }
        if let Some(sent) = line.strip_prefix("C: ") {
            // Every client line must also parse with the pure codec.
            mailauthd::proto::dovecot_auth::parse_client_line(sent.as_bytes()).unwrap();
            c.send(&format!("{sent}\n"));
        } else if let Some(expected) = line.strip_prefix("S: ") {
            let got = c.line().expect("reply");
            let word = expected.split('\t').next().unwrap();
            if ["SPID", "CUID", "COOKIE"].contains(&word) {
                assert_eq!(got.split('\t').next().unwrap(), word);
            } else {
                assert_eq!(got, expected);
            }
            replies += 1;
        }
    }
    assert!(replies >= 12, "the fixture holds a whole conversation");
}

/// Two daemons on one PostgreSQL database with a shared key: an app password created and
/// revoked through one is accepted, then refused, by the other on its next login.
#[test]
fn two_daemons_on_one_database_see_changes_at_once() {
    let Some(admin) = postgres_admin("two-daemon test") else {
        return;
    };
    two_daemons_see_changes_at_once(TwoDaemonDb::new(admin));
}

/// The same on one SQLite file, where each daemon keeps the rows of its hot reads until
/// the next commit: changes made through the other daemon's CLI, another process, still
/// count on the very next login, however often the row was read before.
#[test]
fn two_daemons_on_one_sqlite_file_see_changes_at_once() {
    two_daemons_see_changes_at_once(TwoDaemonDb::on(common::Backend::Sqlite));
}

fn two_daemons_see_changes_at_once(TwoDaemonDb { rt, db, key, _dir }: TwoDaemonDb) {
    let a = Daemon::start_with(Some(&db.url), Some(&key), true);
    let b = Daemon::start_with(Some(&db.url), Some(&key), false);
    let app = a.app_password("bob@example.org", "imap");
    let login = |d: &Daemon, id: u32| {
        let (mut c, _) = Client::handshake(&d.socket("auth"));
        c.send(&format!(
            "AUTH\t{id}\tPLAIN\tservice=imap\tresp={}\n",
            plain("bob@example.org", &app)
        ));
        c.line().unwrap()
    };
    for d in [&a, &b, &a, &b] {
        assert_eq!(
            login(d, 1),
            "OK\t1\tuser=bob@example.org",
            "created through A, accepted by both"
        );
    }
    let list = b.cli(&["--json", "app-password", "list", "bob@example.org"], None);
    let id = serde_json::from_str::<serde_json::Value>(&list).unwrap()[0]["id"].to_string();
    b.cli(&["app-password", "revoke", "bob@example.org", &id], None);
    assert!(
        login(&a, 2).starts_with("FAIL\t2\t"),
        "revoked through B, refused by A at once"
    );
    a.cli(
        &["mailbox", "set-authsource", "bob@example.org", "local"],
        None,
    );
    a.cli(
        &["mailbox", "set", "bob@example.org", "--password-stdin"],
        Some("bob-pw\n"),
    );
    let (mut c, _) = Client::handshake(&b.socket("auth"));
    c.send(&format!(
        "AUTH\t3\tPLAIN\tservice=imap\tresp={}\n",
        plain("bob@example.org", "bob-pw")
    ));
    assert_eq!(
        c.line().unwrap(),
        "OK\t3\tuser=bob@example.org",
        "auth source switched through A, seen by B"
    );
    drop((a, b));
    rt.block_on(db.finish());
}

/// Two daemons on one PostgreSQL database and one Redis: failures through A block the
/// network at B, B lists the block, `throttle clear` through B's control socket lifts it
/// at A, and a stale password repeated through both counts once.
#[test]
fn two_daemons_share_throttle_state_through_redis() {
    let Some(admin) = postgres_admin("two-daemon Redis test") else {
        return;
    };
    let Some(redis) = common::redis_url("the two-daemon Redis throttle test") else {
        return;
    };
    let TwoDaemonDb { rt, db, key, _dir } = TwoDaemonDb::new(admin);
    let throttle = format!(
        "redis_url = {redis:?}\nredis_prefix = {:?}\n",
        common::unique_redis_prefix()
    );
    let a = Daemon::start_throttled(Some(&db.url), Some(&key), true, &throttle);
    let b = Daemon::start_throttled(Some(&db.url), Some(&key), false, &throttle);
    let login = |d: &Daemon, id: u32, rip: &str, pass: &str| {
        let (mut c, _) = Client::handshake(&d.socket("auth"));
        c.send(&format!(
            "AUTH\t{id}\tPLAIN\tservice=imap\trip={rip}\tresp={}\n",
            plain("alice@example.org", pass)
        ));
        c.line().unwrap()
    };

    for id in 1..=6 {
        let reply = login(&a, id, "192.0.2.99", &format!("guess-{id}"));
        assert!(reply.starts_with(&format!("FAIL\t{id}\t")), "{reply}");
    }
    assert!(
        login(&b, 7, "192.0.2.99", "alice-pw").starts_with("FAIL\t7\t"),
        "six failures through A block the network at B"
    );
    assert_eq!(
        login(&b, 8, "198.51.100.5", "alice-pw"),
        "OK\t8\tuser=alice@example.org",
        "other networks pass"
    );
    let list = b.cli(&["--json", "throttle", "list"], None);
    let entries: serde_json::Value = serde_json::from_str(&list).unwrap();
    let blocked = entries
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["key"] == "192.0.2.99/32")
        .unwrap_or_else(|| panic!("B lists what A recorded: {list}"));
    assert!(blocked["blocked_until_ms"].is_i64(), "{blocked}");
    assert_eq!(blocked["failures"], 6, "{blocked}");

    let cleared = b.cli(&["throttle", "clear", "192.0.2.99"], None);
    assert!(cleared.contains("1 throttle entry cleared"), "{cleared}");
    assert_eq!(
        login(&a, 9, "192.0.2.99", "alice-pw"),
        "OK\t9\tuser=alice@example.org",
        "cleared through B, lifted at A"
    );

    // One stale password through both daemons, far more often than the block threshold:
    // both derive the fingerprint key from the shared key file, so it counts once.
    for id in 10..30 {
        let d = if id % 2 == 0 { &a } else { &b };
        assert!(login(d, id, "192.0.2.77", "last year's password").starts_with("FAIL"));
    }
    let list = a.cli(&["--json", "throttle", "list"], None);
    let entries: serde_json::Value = serde_json::from_str(&list).unwrap();
    let stale = entries
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["key"] == "192.0.2.77/32")
        .unwrap_or_else(|| panic!("stale client listed: {list}"));
    assert_eq!(stale["failures"], 1, "{stale}");
    assert_eq!(
        login(&b, 30, "192.0.2.77", "alice-pw"),
        "OK\t30\tuser=alice@example.org",
        "a stale client is not blocked"
    );

    // Pipelined guesses through A are charged while in flight with Redis too.
    let (mut c, _) = Client::handshake(&a.socket("auth"));
    let mut requests: Vec<String> = (100..140)
        .map(|id| {
            guess(
                id,
                "192.0.2.88",
                "alice@example.org",
                &format!("guess-{id}"),
            )
        })
        .collect();
    requests.push(guess(140, "192.0.2.88", "alice@example.org", "alice-pw"));
    let replies = pipelined(&mut c, &requests);
    assert!(
        replies.values().all(|r| r.starts_with("FAIL")),
        "{replies:?}"
    );
    let net = throttle_entry(&b, "192.0.2.88/32").expect("B lists the network");
    assert!(net["failures"].as_u64().unwrap() <= 6, "{net}");
    assert!(net["blocked_until_ms"].is_i64(), "{net}");

    // Strangers block alice's account through B; the networks she logged in from
    // (198.51.100.5, through B above) and her app passwords still pass through A.
    let app = a.app_password("alice@example.org", "imap");
    let (mut c, _) = Client::handshake(&b.socket("auth"));
    for id in 200..230 {
        c.send(&guess(
            id,
            &format!("203.0.113.{}", id - 200),
            "alice@example.org",
            &format!("g{id}"),
        ));
        assert!(c.line().unwrap().starts_with("FAIL"));
    }
    let account = throttle_entry(&a, "alice@example.org").expect("A lists the account");
    assert!(account["blocked_until_ms"].is_i64(), "{account}");
    assert!(login(&a, 231, "203.0.113.99", "alice-pw").starts_with("FAIL"));
    assert_eq!(
        login(&a, 232, "203.0.113.98", &app),
        "OK\t232\tuser=alice@example.org"
    );
    assert_eq!(
        login(&a, 233, "198.51.100.5", "alice-pw"),
        "OK\t233\tuser=alice@example.org",
        "a network alice logged in from through B is known at A"
    );

    a.cli(&["throttle", "clear"], None);
    println!("two daemons shared throttle state through redis");
    drop((a, b));
    rt.block_on(db.finish());
}

/// What `throttle list` holds against `key`, if anything.
fn throttle_entry(d: &Daemon, key: &str) -> Option<serde_json::Value> {
    let list = d.cli(&["--json", "throttle", "list"], None);
    let entries: serde_json::Value = serde_json::from_str(&list).unwrap();
    entries
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["key"] == key)
        .cloned()
}

/// Sends every line at once on one connection and returns the replies by request id.
fn pipelined(c: &mut Client, requests: &[String]) -> std::collections::BTreeMap<u32, String> {
    c.send(&requests.concat());
    let mut replies = std::collections::BTreeMap::new();
    while replies.len() < requests.len() {
        let line = c.line().expect("a reply for every request");
        let id: u32 = line.split('\t').nth(1).unwrap().parse().unwrap();
        replies.insert(id, line);
    }
    replies
}

fn guess(id: u32, rip: &str, user: &str, pass: &str) -> String {
    format!(
        "AUTH\t{id}\tPLAIN\tservice=imap\trip={rip}\tresp={}\n",
        plain(user, pass)
    )
}

/// The daemon's count of decisions on IMAP PLAIN logins that ended with `reason`.
fn decided(port: u16, outcome: &str, reason: &str) -> f64 {
    let (_, body) = common::http_get(port, "/metrics");
    common::series(
        &body,
        &format!(
            "mailauthd_auth_requests_total{{protocol=\"imap\",mechanism=\"plain\",outcome=\"{outcome}\",reason=\"{reason}\"}}"
        ),
    )
    .unwrap_or(0.0)
}

/// A daemon on SQLite with `/metrics` on a port of its own, and more `[throttle]` lines.
fn with_metrics(throttle: &str) -> (Daemon, u16) {
    let port = common::free_port();
    let d = Daemon::start_custom(
        None,
        None,
        true,
        "",
        &format!("{throttle}[metrics]\nlisten = \"127.0.0.1:{port}\"\n"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "metrics listener did not come up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (d, port)
}

/// 120 wrong guesses and the right password pipelined on one connection: every attempt
/// is charged while it is in flight and in the order it arrived, so no more than
/// `network_block_after` (6) reach the password check, and the right password, sent last,
/// is refused.
#[test]
fn pipelined_guesses_are_charged_before_they_are_decided() {
    let (d, port) = with_metrics("");
    let (mut c, _) = Client::handshake(&d.socket("auth"));
    let mut requests: Vec<String> = (1..=120)
        .map(|id| {
            guess(
                id,
                "192.0.2.50",
                "alice@example.org",
                &format!("guess-{id}"),
            )
        })
        .collect();
    requests.push(guess(121, "192.0.2.50", "alice@example.org", "alice-pw"));
    let replies = pipelined(&mut c, &requests);
    for (id, reply) in &replies {
        assert!(reply.starts_with(&format!("FAIL\t{id}\t")), "{reply}");
    }
    let net = throttle_entry(&d, "192.0.2.50/32").expect("the network is listed");
    assert!(net["blocked_until_ms"].is_i64(), "{net}");
    let checked = decided(port, "fail", "bad_credentials");
    assert!(
        checked <= 6.0,
        "{checked} guesses reached the password check"
    );
    assert_eq!(checked + decided(port, "fail", "throttled"), 121.0);
    assert!(net["failures"].as_u64().unwrap() <= 6, "{net}");
    // The owner, from elsewhere, is not held up by any of it.
    c.send(&guess(
        200,
        "198.51.100.20",
        "alice@example.org",
        "alice-pw",
    ));
    assert_eq!(c.line().unwrap(), "OK\t200\tuser=alice@example.org");
}

/// The same with one connection per guess, all at once, as 60 Postfix smtpd processes
/// would open them: the attempts in flight count, whichever connection they came on, so
/// at most 6 of the 60 reach the password check, and the right password after them is
/// refused while the block holds.
#[test]
fn parallel_connections_are_charged_while_in_flight() {
    let (d, port) = with_metrics("");
    let auth = d.socket("auth");
    let start = std::sync::Arc::new(std::sync::Barrier::new(60));
    let threads: Vec<_> = (1..=60u32)
        .map(|id| {
            let (auth, start) = (auth.clone(), start.clone());
            std::thread::spawn(move || {
                let (mut c, _) = Client::handshake(&auth);
                start.wait();
                c.send(&guess(
                    id,
                    "192.0.2.51",
                    "alice@example.org",
                    &format!("guess-{id}"),
                ));
                c.line().unwrap()
            })
        })
        .collect();
    for t in threads {
        let reply = t.join().unwrap();
        assert!(reply.starts_with("FAIL\t"), "{reply}");
    }
    let checked = decided(port, "fail", "bad_credentials");
    assert!(
        checked <= 6.0,
        "{checked} guesses reached the password check"
    );
    assert_eq!(checked + decided(port, "fail", "throttled"), 60.0);
    let net = throttle_entry(&d, "192.0.2.51/32").expect("the network is listed");
    assert!(net["blocked_until_ms"].is_i64(), "{net}");
    let (mut c, _) = Client::handshake(&auth);
    c.send(&guess(61, "192.0.2.51", "alice@example.org", "alice-pw"));
    assert!(c.line().unwrap().starts_with("FAIL\t61\t"));
}

/// One hash worker with a queue of 2: 40 parallel wrong guesses mostly get "busy", and
/// each of those counts as a failure, so the source ends blocked and its account counted
/// as if the guesses had come one by one.
#[test]
fn guesses_refused_by_a_busy_hash_pool_are_charged() {
    let d = Daemon::start_custom(
        None,
        None,
        true,
        "",
        "network_block_after = 30\naccount_block_after = 100\n[hash_pool]\nworkers = 1\nqueue = 2\n",
    );
    let (mut c, _) = Client::handshake(&d.socket("auth"));
    let requests: Vec<String> = (1..=40)
        .map(|id| {
            guess(
                id,
                "192.0.2.60",
                "alice@example.org",
                &format!("guess-{id}"),
            )
        })
        .collect();
    let replies = pipelined(&mut c, &requests);
    let busy = replies.values().filter(|r| r.contains("temp_fail")).count();
    assert!(
        busy >= 10,
        "the pool was busy for {busy} of 40: {replies:?}"
    );
    let net = throttle_entry(&d, "192.0.2.60/32").expect("the network is listed");
    assert!(net["blocked_until_ms"].is_i64(), "{net}");
    assert_eq!(net["failures"], 30, "{net}");
    let account = throttle_entry(&d, "alice@example.org").expect("the account is listed");
    assert_eq!(account["failures"], 30, "{account}");
    c.send(&guess(41, "192.0.2.60", "alice@example.org", "alice-pw"));
    assert!(c.line().unwrap().starts_with("FAIL\t41\t"), "blocked");
}

/// Strangers block alice's account for password guessing, from many networks. The block
/// refuses the right password from a stranger's network, but never alice's app password
/// (from anywhere) nor her password from a network she logged in from before.
#[test]
fn strangers_cannot_lock_the_owner_out() {
    let d = Daemon::start_custom(
        None,
        None,
        true,
        "",
        "network_block_after = 100\naccount_block_after = 8\n",
    );
    d.cli(
        &["mailbox", "add", "carol@example.org", "--password-stdin"],
        Some("carol-pw\n"),
    );
    let app = d.app_password("carol@example.org", "imap,smtp");
    let (mut c, _) = Client::handshake(&d.socket("auth"));
    let mut login = |id: u32, rip: &str, pass: &str| {
        c.send(&guess(id, rip, "carol@example.org", pass));
        c.line().unwrap()
    };
    assert_eq!(
        login(1, "198.51.100.7", "carol-pw"),
        "OK\t1\tuser=carol@example.org"
    );
    for id in 2..=9 {
        let reply = login(id, &format!("203.0.113.{id}"), &format!("guess-{id}"));
        assert!(reply.starts_with(&format!("FAIL\t{id}\t")), "{reply}");
    }
    let account = throttle_entry(&d, "carol@example.org").expect("the account is listed");
    assert!(account["blocked_until_ms"].is_i64(), "{account}");
    assert!(
        login(10, "203.0.113.50", "carol-pw").starts_with("FAIL\t10\t"),
        "a stranger's network may not try passwords while the account is blocked"
    );
    assert_eq!(
        login(11, "203.0.113.51", &app),
        "OK\t11\tuser=carol@example.org",
        "an app password passes from anywhere"
    );
    assert_eq!(
        login(12, "198.51.100.7", "carol-pw"),
        "OK\t12\tuser=carol@example.org",
        "the owner's own network passes with the password"
    );

    // A password shaped like an app password is exempt from the block only as an app
    // password: while the account is blocked it never reaches the stored password.
    d.cli(
        &["mailbox", "add", "dave@example.org", "--password-stdin"],
        Some("abcdabcdabcdabcdabcd\n"),
    );
    let (mut c, _) = Client::handshake(&d.socket("auth"));
    for id in 20..=27 {
        c.send(&guess(
            id,
            &format!("203.0.113.{id}"),
            "dave@example.org",
            &format!("guess-{id}"),
        ));
        assert!(c.line().unwrap().starts_with("FAIL"));
    }
    c.send(&guess(
        30,
        "203.0.113.60",
        "dave@example.org",
        "abcdabcdabcdabcdabcd",
    ));
    assert!(
        c.line().unwrap().starts_with("FAIL\t30\t"),
        "blocked for passwords"
    );
    c.send(&guess(
        31,
        "203.0.113.60",
        "dave@example.org",
        "abcd-abcd-abcd-abcd-abcd",
    ));
    assert!(
        c.line().unwrap().starts_with("FAIL\t31\t"),
        "blocked for passwords"
    );
    d.cli(&["throttle", "clear", "dave@example.org"], None);
    c.send(&guess(
        32,
        "203.0.113.60",
        "dave@example.org",
        "abcdabcdabcdabcdabcd",
    ));
    assert_eq!(
        c.line().unwrap(),
        "OK\t32\tuser=dave@example.org",
        "once lifted"
    );
}

/// A TCP client outside the listener's `trusted` list is itself the source: the `rip`
/// it claims is not believed, so it cannot spread guesses over made-up addresses.
#[test]
fn a_tcp_client_is_the_source_unless_trusted() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let d = Daemon::start_custom(
        None,
        None,
        true,
        &format!("listen = [\"tcp:127.0.0.1:{port}\"]\n"),
        "",
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let stream = loop {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("connect: {e}"),
        }
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    let mut line = String::new();
    while line.trim_end() != "DONE" {
        line.clear();
        reader.read_line(&mut line).unwrap();
    }
    writer.write_all(b"VERSION\t1\t2\nCPID\t1\n").unwrap();
    let mut ask = |id: u32, rip: &str, pass: &str| {
        writer
            .write_all(guess(id, rip, "alice@example.org", pass).as_bytes())
            .unwrap();
        let mut reply = String::new();
        reader.read_line(&mut reply).unwrap();
        reply.trim_end().to_string()
    };
    for id in 1..=6 {
        let reply = ask(id, &format!("192.0.2.{id}"), &format!("guess-{id}"));
        assert!(reply.starts_with(&format!("FAIL\t{id}\t")), "{reply}");
    }
    assert!(
        ask(7, "198.51.100.1", "alice-pw").starts_with("FAIL\t7\t"),
        "the client itself is blocked, whatever rip it names"
    );
    let net = throttle_entry(&d, "127.0.0.1/32").expect("the peer's own address is counted");
    assert!(net["blocked_until_ms"].is_i64(), "{net}");
    assert!(throttle_entry(&d, "192.0.2.1/32").is_none());
}

/// Eight connections pipelining 120 slow logins each: no more than 512 requests are
/// decided at once over all connections (each holds memory while it waits); the rest get
/// a quick temporary failure instead of piling up, and every request gets an answer.
#[test]
fn requests_decided_at_once_are_bounded_over_all_connections() {
    let (d, port) = with_metrics("enabled = false\n[hash_pool]\nworkers = 1\nqueue = 1000\n");
    let start = std::sync::Arc::new(std::sync::Barrier::new(8));
    let threads: Vec<_> = (0..8u32)
        .map(|c| {
            let (auth, start) = (d.socket("auth"), start.clone());
            std::thread::spawn(move || {
                let (mut client, _) = Client::handshake(&auth);
                let requests: Vec<String> = (1..=120)
                    .map(|id| guess(id, &format!("192.0.2.{c}"), "alice@example.org", "wrong"))
                    .collect();
                start.wait();
                pipelined(&mut client, &requests)
            })
        })
        .collect();
    let mut temp = 0;
    for t in threads {
        let replies = t.join().unwrap();
        assert_eq!(replies.len(), 120);
        temp += replies
            .values()
            .filter(|r| r.contains("code=temp_fail"))
            .count();
    }
    let (_, body) = common::http_get(port, "/metrics");
    let overloaded = common::series(&body, "mailauthd_auth_overloaded_total").unwrap_or(0.0);
    // 960 sent at once, one hash worker: most of the 448 beyond the cap, even if a
    // few dozen were decided before the last arrived.
    assert!(
        overloaded >= 300.0,
        "{overloaded} refused at the cap:\n{body}"
    );
    assert!(temp as f64 >= overloaded, "{temp} temporary failures");
}

/// A blocked source's refusals are held back (here 2 s each) without taking the places
/// of logins being decided: 600 of them in flight leave room for everyone else.
#[test]
fn a_blocked_source_cannot_crowd_out_other_logins() {
    let d = Daemon::start_custom(
        None,
        None,
        true,
        "",
        "max_delay_ms = 2000\nnetwork_block_after = 2\n",
    );
    let (mut c, _) = Client::handshake(&d.socket("auth"));
    for id in 1..=2 {
        c.send(&guess(
            id,
            "192.0.2.70",
            "alice@example.org",
            &format!("guess-{id}"),
        ));
        assert!(c.line().unwrap().starts_with("FAIL"));
    }
    let flood: Vec<_> = (0..5u32)
        .map(|_| {
            let auth = d.socket("auth");
            std::thread::spawn(move || {
                let (mut c, _) = Client::handshake(&auth);
                let requests: Vec<String> = (1..=120)
                    .map(|id| guess(id, "192.0.2.70", "alice@example.org", &format!("g{id}")))
                    .collect();
                pipelined(&mut c, &requests)
            })
        })
        .collect();
    // While the 600 refusals are held back, another network logs in at once.
    std::thread::sleep(Duration::from_millis(500));
    let (mut other, _) = Client::handshake(&d.socket("auth"));
    other.send(&guess(1, "198.51.100.30", "alice@example.org", "alice-pw"));
    assert_eq!(other.line().unwrap(), "OK\t1\tuser=alice@example.org");
    for t in flood {
        let replies = t.join().unwrap();
        assert!(replies
            .values()
            .all(|r| r.starts_with("FAIL") && !r.contains("temp_fail")));
    }
}

/// Passwords shaped like app passwords, guessed at once from many networks: the account's
/// attempts in flight still count, so no more than `account_block_after` (5) reach the
/// stored password, and the right one among them is refused.
#[test]
fn app_password_shaped_guesses_are_limited_by_the_account_too() {
    let (d, port) = with_metrics("network_block_after = 100\naccount_block_after = 5\n");
    d.cli(
        &["mailbox", "add", "erin@example.org", "--password-stdin"],
        Some("qwertasdfgzxcvbpoiuy\n"),
    );
    let (mut c, _) = Client::handshake(&d.socket("auth"));
    let mut requests: Vec<String> = (1..=40)
        .map(|id| {
            let pass: String = format!("{id:0>20}")
                .chars()
                .map(|d| (b'a' + d.to_digit(10).unwrap() as u8) as char)
                .collect();
            guess(id, &format!("203.0.113.{id}"), "erin@example.org", &pass)
        })
        .collect();
    requests.push(guess(
        41,
        "203.0.113.41",
        "erin@example.org",
        "qwertasdfgzxcvbpoiuy",
    ));
    let replies = pipelined(&mut c, &requests);
    assert!(
        replies.values().all(|r| r.starts_with("FAIL")),
        "{replies:?}"
    );
    let checked = decided(port, "fail", "bad_credentials");
    assert!(checked <= 5.0, "{checked} reached the stored password");
    assert_eq!(checked + decided(port, "fail", "throttled"), 41.0);
}

/// One Postfix policy request on `c` for alice's message `instance`, its answer line.
fn policy_ask(c: &mut Client, state: &str, instance: &str, recipient: &str) -> String {
    c.send(&format!(
        "request=smtpd_access_policy\nprotocol_state={state}\nprotocol_name=ESMTP\n\
         client_address=192.0.2.10\nsasl_method=PLAIN\nsasl_username=alice@example.org\n\
         sender=alice@example.org\nrecipient={recipient}\ninstance={instance}\n\
         recipient_count=1\n\n"
    ));
    let action = c.line().unwrap();
    assert_eq!(
        c.line().unwrap(),
        "",
        "a policy answer ends with an empty line"
    );
    action
}

/// Two daemons on one PostgreSQL database and one Redis (`[redis] url`), a limit of 2
/// messages an hour: requests alternate between the daemons' policy sockets, a message
/// asked about at both counts once, and the third message is deferred with 4.7.1 by
/// either daemon.
#[test]
fn two_daemons_share_sending_limits_through_redis() {
    let Some(admin) = postgres_admin("two-daemon sending-limit test") else {
        return;
    };
    let Some(redis) = common::redis_url("the two-daemon sending-limit test") else {
        return;
    };
    let TwoDaemonDb { rt, db, key, _dir } = TwoDaemonDb::new(admin);
    let limits_prefix = common::unique_redis_prefix().replace(":throttle:", ":limits:");
    let sections = format!(
        "[redis]\nurl = {redis:?}\nsend_limits_prefix = {limits_prefix:?}\n\
         [[policy.limits]]\nwindow = \"1h\"\nmessages = 2\n"
    );
    let start = |seed: bool| {
        Daemon::start_full(
            Some(&db.url),
            Some(&key),
            seed,
            &format!("redis_prefix = {:?}\n", common::unique_redis_prefix()),
            "",
            &sections,
            None,
        )
    };
    let a = start(true);
    let b = start(false);
    let mut at_a = Client::connect(&a.socket("policy"));
    let mut at_b = Client::connect(&b.socket("policy"));

    // Message 1: RCPT at A, a second recipient and END-OF-MESSAGE at B (as when two
    // smtpd processes behind a balancer asked different daemons): one message.
    assert_eq!(
        policy_ask(&mut at_a, "RCPT", "M1", "x@example.net"),
        "action=DUNNO"
    );
    assert_eq!(
        policy_ask(&mut at_b, "RCPT", "M1", "y@example.net"),
        "action=DUNNO"
    );
    assert_eq!(
        policy_ask(&mut at_b, "END-OF-MESSAGE", "M1", ""),
        "action=DUNNO"
    );
    // Message 2 at B.
    assert_eq!(
        policy_ask(&mut at_b, "RCPT", "M2", "x@example.net"),
        "action=DUNNO"
    );
    // Message 3 at either daemon: over the limit of 2 an hour.
    let deferred = "action=DEFER_IF_PERMIT 4.7.1 <alice@example.org>: sending limit of 2 \
                    messages per 1h reached, try again later";
    assert_eq!(
        policy_ask(&mut at_a, "RCPT", "M3", "x@example.net"),
        deferred
    );
    assert_eq!(
        policy_ask(&mut at_b, "RCPT", "M3", "x@example.net"),
        deferred
    );
    assert_eq!(policy_ask(&mut at_a, "MAIL", "M4", ""), deferred);
    // Messages already counted still get their recipients.
    assert_eq!(
        policy_ask(&mut at_a, "RCPT", "M2", "z@example.net"),
        "action=DUNNO"
    );
    drop((at_a, at_b, a, b));
    rt.block_on(common::remove_redis_keys(&redis, &limits_prefix));
    rt.block_on(db.finish());
    println!("two daemons shared sending limits through redis");
}

/// A daemon whose Redis is unreachable from the start: policy requests are answered at
/// once from its own memory (the limit of 2 still holds, nothing is refused for Redis),
/// and the log says so once, not once per request.
#[test]
fn an_unreachable_redis_is_logged_once_and_limits_hold_from_memory() {
    let sections = "[redis]\nurl = \"redis://127.0.0.1:1/\"\n\
                    [[policy.limits]]\nwindow = \"1h\"\nmessages = 2\n";
    let mut d = Daemon::start_full(None, None, true, "", "", sections, None);
    // Started again with its log in a file, to count the lines.
    if let Some(mut child) = d.child.take() {
        let _ = Command::new("kill").arg(child.id().to_string()).status();
        let _ = child.wait();
    }
    let log = d.dir.path().join("daemon.log");
    d.child = Some(
        Command::new(BIN)
            .args(["--config", d.config.to_str().unwrap(), "serve"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut c = loop {
        if let Ok(s) = UnixStream::connect(d.socket("policy")) {
            drop(s);
            break Client::connect(&d.socket("policy"));
        }
        assert!(Instant::now() < deadline, "policy socket did not come back");
        std::thread::sleep(Duration::from_millis(50));
    };
    let started = Instant::now();
    let mut answers = Vec::new();
    for m in 1..=6 {
        answers.push(policy_ask(
            &mut c,
            "RCPT",
            &format!("M{m}"),
            "x@example.net",
        ));
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        answers[..2],
        ["action=DUNNO", "action=DUNNO"],
        "{answers:?}"
    );
    for a in &answers[2..] {
        assert!(a.starts_with("action=DEFER_IF_PERMIT 4.7.1 "), "{a}");
    }
    let text = std::fs::read_to_string(&log).unwrap();
    let lines = text.matches("Redis does not answer").count();
    assert_eq!(lines, 1, "{text}");
    assert!(
        text.contains("sending limits count in this daemon's"),
        "{text}"
    );
}

// ---------------------------------------------------------------------------
// Bearer tokens (OAUTHBEARER, XOAUTH2)
// ---------------------------------------------------------------------------

/// Stands in for the provider's validator: refuses every token starting with `bad`, says
/// the provider is down for `down`, and vouches for any other token as subject `sub-<token>`.
struct FakeVerifier {
    calls: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

const ISSUER: &str = "https://id.example.org";

#[async_trait::async_trait]
impl mailauthd::auth::TokenVerifier for FakeVerifier {
    async fn verify(
        &self,
        token: &str,
    ) -> Result<mailauthd::auth::TokenIdentity, mailauthd::auth::TokenError> {
        use mailauthd::auth::{TokenError, TokenRefusal};
        self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if token.starts_with("bad") {
            return Err(TokenError::Refused(TokenRefusal::BadSignature));
        }
        if token == "down" {
            return Err(TokenError::Unavailable("provider down".into()));
        }
        Ok(mailauthd::auth::TokenIdentity {
            issuer: ISSUER.into(),
            subject: format!("sub-{token}"),
            expires_at: 4_000_000_000,
        })
    }

    fn challenge(&self) -> mailauthd::auth::TokenChallenge {
        mailauthd::auth::TokenChallenge {
            scope: "email".into(),
            openid_configuration: format!("{ISSUER}/.well-known/openid-configuration"),
        }
    }
}

/// The auth-socket driver in this process, on a unix socket of its own, with a decision
/// core that has (or has not) a token verifier: the daemon's binary cannot be handed a
/// fake one.
struct TokenServer {
    rt: tokio::runtime::Runtime,
    stop: tokio_util::sync::CancellationToken,
    path: PathBuf,
    /// Tokens the verifier was asked about.
    verified: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    _dir: tempfile::TempDir,
    _db: common::TestDb,
}

impl TokenServer {
    fn start(tokens: bool) -> TokenServer {
        use mailauthd::auth::app_password::AppPasswordKey;
        use mailauthd::auth::last_use::LastUseWriter;
        use mailauthd::auth::password::{self, Argon2Params};
        use mailauthd::auth::pool::HashPool;
        use mailauthd::auth::services::ServiceMap;
        use mailauthd::auth::throttle::{Fingerprinter, Throttle, ThrottleConfig};
        use mailauthd::auth::verify_cache::{VerifyCache, VerifyCacheConfig};
        use mailauthd::auth::{Authenticator, AuthenticatorParts, TokenVerifier};
        use mailauthd::clock::SystemClock;
        use mailauthd::names::{Address, Protocols};
        use mailauthd::provision::{self, NewMailbox};
        use mailauthd::server::auth_conn::{serve_connection, AuthService};
        use mailauthd::server::connections::Activity;
        use mailauthd::server::listener::Peer;
        use mailauthd::store::{AuthSource, MailboxState};
        use std::sync::Arc;

        const CHEAP: Argon2Params = Argon2Params {
            memory_kib: 256,
            iterations: 1,
            parallelism: 1,
        };
        let rt = tokio::runtime::Runtime::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth");
        let stop = tokio_util::sync::CancellationToken::new();
        let db = rt.block_on(async {
            let db = common::fresh(&common::Backend::Sqlite).await;
            let store = db.dyn_store();
            common::create_example_org(&*store).await;
            for (address, source, identity) in [
                ("alice@example.org", AuthSource::Local, None),
                (
                    "bob@example.org",
                    AuthSource::Oidc,
                    Some((ISSUER.to_string(), "sub-bob".to_string())),
                ),
            ] {
                let new = NewMailbox {
                    address: Address::parse(address).unwrap(),
                    password_hash: (source == AuthSource::Local)
                        .then(|| password::hash_argon2id(b"alice-pw", CHEAP).unwrap()),
                    auth_source: source,
                    display_name: String::new(),
                    quota: None,
                    protocols: Some(Protocols::ALL),
                    state: Some(MailboxState::Active),
                    template: None,
                    oidc_identity: identity,
                    require_active_domain: false,
                };
                provision::create_mailbox(&*store, &SystemClock, new)
                    .await
                    .unwrap();
            }
            db
        });
        let listener = {
            let _guard = rt.enter();
            tokio::net::UnixListener::bind(&path).unwrap()
        };
        let store = db.dyn_store();
        let stop_accepting = stop.clone();
        let verified = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let calls = verified.clone();
        rt.spawn(async move {
            let (sender, _writer) =
                LastUseWriter::spawn(store.clone(), Duration::from_millis(20), 100);
            let verifier: Option<Arc<dyn TokenVerifier>> =
                tokens.then(|| Arc::new(FakeVerifier { calls }) as Arc<dyn TokenVerifier>);
            let auth = Authenticator::new(AuthenticatorParts {
                store,
                key: AppPasswordKey::new(vec![42; 32]),
                pool: Arc::new(HashPool::new(2, 64)),
                clock: Arc::new(SystemClock),
                services: ServiceMap::default(),
                argon2: CHEAP,
                rehash_on_login: false,
                last_use: sender,
                throttle: Arc::new(Throttle::in_memory(
                    ThrottleConfig {
                        enabled: false,
                        ..ThrottleConfig::default()
                    },
                    Fingerprinter::with_key([7; 32]),
                )),
                verify_cache: Arc::new(
                    VerifyCache::new(VerifyCacheConfig::default(), Arc::new(SystemClock)).unwrap(),
                ),
                max_age_without_sign_in: None,
                tokens: verifier,
            })
            .unwrap();
            let service = Arc::new(AuthService::new(Arc::new(auth), Duration::from_secs(60)));
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    _ = stop_accepting.cancelled() => break,
                };
                let (stream, _) = accepted.unwrap();
                let peer = Peer {
                    description: "test".into(),
                    ip: None,
                    trusted: true,
                    control_allowed: false,
                };
                tokio::spawn(serve_connection(
                    Box::new(stream),
                    peer,
                    service.clone(),
                    Activity::detached(stop_accepting.child_token()),
                ));
            }
        });
        TokenServer {
            rt,
            stop,
            path,
            verified,
            _dir: dir,
            _db: db,
        }
    }

    fn client(&self) -> (Client, Vec<String>) {
        Client::handshake(&self.path)
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.cancel();
        // Let the connections see the stop before the runtime goes.
        self.rt
            .block_on(async { tokio::time::sleep(Duration::from_millis(20)).await });
    }
}

fn oauthbearer(authzid: Option<&str>, token: &str) -> String {
    let a = authzid.map(|a| format!("a={a}")).unwrap_or_default();
    b64(
        format!("n,{a},\x01host=mail.example.org\x01port=143\x01auth=Bearer {token}\x01\x01")
            .as_bytes(),
    )
}

fn xoauth2(user: &str, token: &str) -> String {
    b64(format!("user={user}\x01auth=Bearer {token}\x01\x01").as_bytes())
}

/// What a refused token's error challenge must say (RFC 7628 section 3.2.2).
fn error_challenge(status: &str) -> String {
    b64(format!(
        r#"{{"status":"{status}","schemes":"bearer","scope":"email","openid-configuration":"{ISSUER}/.well-known/openid-configuration"}}"#
    )
    .as_bytes())
}

#[test]
fn token_mechanisms_are_offered_with_dovecots_flags_when_tokens_are_accepted() {
    let server = TokenServer::start(true);
    let (_, hello) = server.client();
    let mechs: Vec<&str> = hello
        .iter()
        .filter(|l| l.starts_with("MECH\t"))
        .map(String::as_str)
        .collect();
    assert_eq!(
        mechs,
        [
            "MECH\tPLAIN\tplaintext",
            "MECH\tLOGIN\tplaintext",
            "MECH\tOAUTHBEARER\tplaintext",
            "MECH\tXOAUTH2\tplaintext"
        ]
    );

    let off = TokenServer::start(false);
    let (mut c, hello) = off.client();
    assert_eq!(hello.iter().filter(|l| l.starts_with("MECH\t")).count(), 2);
    c.send(&format!(
        "AUTH\t1\tOAUTHBEARER\tservice=imap\tresp={}\nAUTH\t2\tXOAUTH2\tservice=imap\n",
        oauthbearer(None, "good")
    ));
    for id in [1, 2] {
        assert_eq!(
            c.line().unwrap(),
            format!("FAIL\t{id}\treason=Unsupported authentication mechanism")
        );
    }
    // Passwords still work beside them.
    c.send(&format!(
        "AUTH\t3\tPLAIN\tservice=imap\tresp={}\n",
        plain("alice@example.org", "alice-pw")
    ));
    assert_eq!(c.line().unwrap(), "OK\t3\tuser=alice@example.org");
}

#[test]
fn a_refused_token_gets_the_error_challenge_then_fails() {
    let server = TokenServer::start(true);
    let (mut c, _) = server.client();

    // OAUTHBEARER with a name: CONT with the JSON, the client's ^A, then FAIL.
    c.send(&format!(
        "AUTH\t1\tOAUTHBEARER\tservice=imap\tresp={}\n",
        oauthbearer(Some("bob@example.org"), "bad-token")
    ));
    assert_eq!(
        c.line().unwrap(),
        format!("CONT\t1\t{}", error_challenge("invalid_token"))
    );
    c.send("CONT\t1\tAQ==\n");
    assert_eq!(
        c.line().unwrap(),
        "FAIL\t1\tuser=bob@example.org\treason=Authentication failed"
    );

    // XOAUTH2: the same, with Google's status; an empty answer ends it as well.
    c.send(&format!(
        "AUTH\t2\tXOAUTH2\tservice=submission\tresp={}\n",
        xoauth2("bob@example.org", "bad-token")
    ));
    assert_eq!(
        c.line().unwrap(),
        format!("CONT\t2\t{}", error_challenge("401"))
    );
    c.send("CONT\t2\t\n");
    assert_eq!(
        c.line().unwrap(),
        "FAIL\t2\tuser=bob@example.org\treason=Authentication failed"
    );

    // Without a name, and without an initial response: the empty challenge first.
    c.send("AUTH\t3\tOAUTHBEARER\tservice=imap\n");
    assert_eq!(c.line().unwrap(), "CONT\t3\t");
    c.send(&format!("CONT\t3\t{}\n", oauthbearer(None, "bad")));
    assert_eq!(
        c.line().unwrap(),
        format!("CONT\t3\t{}", error_challenge("invalid_token"))
    );
    c.send("CONT\t3\tAQ==\n");
    assert_eq!(c.line().unwrap(), "FAIL\t3\treason=Authentication failed");

    // A CANCEL during the error exchange ends it; the id is free again.
    c.send(&format!(
        "AUTH\t4\tOAUTHBEARER\tservice=imap\tresp={}\n",
        oauthbearer(None, "bad")
    ));
    assert!(c.line().unwrap().starts_with("CONT\t4\teyJ"));
    c.send("CANCEL\t4\n");
    c.send(&format!(
        "AUTH\t4\tPLAIN\tservice=imap\tresp={}\n",
        plain("alice@example.org", "alice-pw")
    ));
    assert_eq!(c.line().unwrap(), "OK\t4\tuser=alice@example.org");

    // A new AUTH with the id still in its error exchange is a reused id, as for any
    // open exchange: the connection is closed.
    c.send(&format!(
        "AUTH\t5\tXOAUTH2\tservice=imap\tresp={}\n",
        xoauth2("bob@example.org", "bad")
    ));
    assert!(c.line().unwrap().starts_with("CONT\t5\teyJ"));
    c.send(&format!(
        "AUTH\t5\tXOAUTH2\tservice=imap\tresp={}\n",
        xoauth2("bob@example.org", "bad")
    ));
    assert!(c.closed(), "reused id must close the connection");
}

#[test]
fn pipelined_token_logins_are_each_answered() {
    let server = TokenServer::start(true);
    let (mut c, _) = server.client();
    // Forty token logins at once, both mechanisms, with passwords in between.
    let mut requests = Vec::new();
    for id in 1..=40u32 {
        requests.push(match id % 4 {
            0 => format!(
                "AUTH\t{id}\tPLAIN\tservice=imap\tresp={}\n",
                plain("alice@example.org", "alice-pw")
            ),
            1 => format!(
                "AUTH\t{id}\tOAUTHBEARER\tservice=imap\tresp={}\n",
                oauthbearer(Some("bob@example.org"), &format!("bad{id}"))
            ),
            2 => format!(
                "AUTH\t{id}\tXOAUTH2\tservice=imap\tresp={}\n",
                xoauth2("bob@example.org", &format!("bad{id}"))
            ),
            _ => format!(
                "AUTH\t{id}\tOAUTHBEARER\tservice=pop3\tresp={}\n",
                oauthbearer(None, &format!("bad{id}"))
            ),
        });
    }
    let replies = pipelined(&mut c, &requests);
    let mut acks = String::new();
    for (id, reply) in &replies {
        match id % 4 {
            0 => assert_eq!(reply, &format!("OK\t{id}\tuser=alice@example.org")),
            2 => {
                assert_eq!(reply, &format!("CONT\t{id}\t{}", error_challenge("401")));
                acks.push_str(&format!("CONT\t{id}\tAQ==\n"));
            }
            _ => {
                assert_eq!(
                    reply,
                    &format!("CONT\t{id}\t{}", error_challenge("invalid_token"))
                );
                acks.push_str(&format!("CONT\t{id}\tAQ==\n"));
            }
        }
    }
    // All the acknowledgements at once, too.
    c.send(&acks);
    let mut failed = std::collections::BTreeMap::new();
    while failed.len() < 30 {
        let line = c.line().expect("a FAIL for every acknowledged error");
        let id: u32 = line.split('\t').nth(1).unwrap().parse().unwrap();
        failed.insert(id, line);
    }
    for (id, line) in failed {
        assert_ne!(id % 4, 0);
        let user = if id % 4 == 3 {
            String::new()
        } else {
            "\tuser=bob@example.org".to_string()
        };
        assert_eq!(
            line,
            format!("FAIL\t{id}{user}\treason=Authentication failed")
        );
    }
    // The connection is still in order.
    c.send(&format!(
        "AUTH\t99\tPLAIN\tservice=imap\tresp={}\n",
        plain("alice@example.org", "alice-pw")
    ));
    assert_eq!(c.line().unwrap(), "OK\t99\tuser=alice@example.org");
}

#[test]
fn malformed_token_messages_fail_at_once() {
    let server = TokenServer::start(true);
    let (mut c, _) = server.client();
    let cases: &[(&str, &[u8])] = &[
        ("OAUTHBEARER", b"p=tls-unique,,\x01auth=Bearer abc\x01\x01"),
        ("OAUTHBEARER", b"x,,\x01auth=Bearer abc\x01\x01"),
        ("OAUTHBEARER", b"n,a=jo=41e,\x01auth=Bearer abc\x01\x01"),
        ("OAUTHBEARER", b"n,a=joe\x01auth=Bearer abc\x01\x01"),
        ("OAUTHBEARER", b"n,,\x01host=x\x01\x01"),
        ("OAUTHBEARER", b"n,,\x01auth=Basic abc\x01\x01"),
        ("OAUTHBEARER", b"n,,\x01auth=Bearer abc\x01"),
        ("OAUTHBEARER", b"n,,\x01auth=Bearer a b\x01\x01"),
        ("XOAUTH2", b"auth=Bearer abc\x01\x01"),
        ("XOAUTH2", b"user=joe\x01\x01"),
        ("XOAUTH2", b"user=jo\te\x01auth=Bearer abc\x01\x01"),
    ];
    for (i, (mech, message)) in cases.iter().enumerate() {
        let id = i + 1;
        c.send(&format!(
            "AUTH\t{id}\t{mech}\tservice=imap\tresp={}\n",
            b64(message)
        ));
        assert_eq!(
            c.line().unwrap(),
            format!("FAIL\t{id}\treason=Authentication failed"),
            "{message:?}"
        );
    }
    // The same after the empty challenge.
    c.send("AUTH\t50\tOAUTHBEARER\tservice=imap\n");
    assert_eq!(c.line().unwrap(), "CONT\t50\t");
    c.send(&format!(
        "CONT\t50\t{}\n",
        b64(b"y,a=,\x01auth=Bearer abc\x01\x01")
    ));
    assert_eq!(c.line().unwrap(), "FAIL\t50\treason=Authentication failed");
    // None of these reached the verifier, and the connection goes on.
    assert_eq!(server.verified.load(std::sync::atomic::Ordering::SeqCst), 0);
    c.send(&format!(
        "AUTH\t51\tPLAIN\tservice=imap\tresp={}\n",
        plain("alice@example.org", "alice-pw")
    ));
    assert_eq!(c.line().unwrap(), "OK\t51\tuser=alice@example.org");
}

#[test]
fn over_long_tokens_are_refused() {
    let server = TokenServer::start(true);
    let (mut c, _) = server.client();
    // Over the codec's 8 KiB but inside the 16 KiB line: refused by the codec, at once,
    // and the connection goes on.
    let long = "a".repeat(9 * 1024);
    c.send(&format!(
        "AUTH\t1\tOAUTHBEARER\tservice=imap\tresp={}\nAUTH\t2\tXOAUTH2\tservice=imap\tresp={}\n",
        oauthbearer(None, &long),
        xoauth2("bob@example.org", &long)
    ));
    assert_eq!(c.line().unwrap(), "FAIL\t1\treason=Authentication failed");
    assert_eq!(c.line().unwrap(), "FAIL\t2\treason=Authentication failed");
    assert_eq!(server.verified.load(std::sync::atomic::Ordering::SeqCst), 0);
    c.send(&format!(
        "AUTH\t3\tPLAIN\tservice=imap\tresp={}\n",
        plain("alice@example.org", "alice-pw")
    ));
    assert_eq!(c.line().unwrap(), "OK\t3\tuser=alice@example.org");

    // A 16 KiB token does not even fit in a line of the protocol (base64 makes it
    // 21 KiB): the connection is closed, as for any over-long line.
    let huge = "a".repeat(16 * 1024);
    c.send(&format!(
        "AUTH\t4\tOAUTHBEARER\tservice=imap\tresp={}\n",
        oauthbearer(None, &huge)
    ));
    assert!(c.closed(), "an over-long line must close the connection");
    // Others are unaffected.
    let (mut other, _) = server.client();
    other.send(&format!(
        "AUTH\t1\tOAUTHBEARER\tservice=imap\tresp={}\n",
        oauthbearer(None, "bad")
    ));
    assert!(other.line().unwrap().starts_with("CONT\t1\teyJ"));
}

/// Token messages that cannot be read never reach the provider, and the daemon's audit
/// line says why, in the fields fail2ban's filter reads (with no name, as none was read).
#[test]
fn unreadable_token_messages_get_an_audit_line_with_their_reason() {
    // A provider that is not there: nothing here may need it.
    let issuer = format!("http://127.0.0.1:{}", common::free_port());
    let sections = format!(
        "[oidc]\nissuer = \"{issuer}\"\nclient_id = \"mailauthd\"\n\
         redirect_url = \"http://127.0.0.1:9/callback\"\n\
         [oauth]\naudiences = [\"webmail\"]\n"
    );
    let mut d = Daemon::start_full(None, None, true, "", "", &sections, None);
    if let Some(mut child) = d.child.take() {
        let _ = Command::new("kill").arg(child.id().to_string()).status();
        let _ = child.wait();
    }
    let log = d.dir.path().join("daemon.log");
    d.child = Some(
        Command::new(BIN)
            .args(["--config", d.config.to_str().unwrap(), "serve"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while UnixStream::connect(d.socket("auth")).is_err() {
        assert!(
            Instant::now() < deadline,
            "the auth socket did not come back"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (mut c, _) = Client::handshake(&d.socket("auth"));
    let cases: &[(&str, &[u8], &str)] = &[
        (
            "OAUTHBEARER",
            b"p=tls-unique,,\x01auth=Bearer abc\x01\x01",
            "channel_binding",
        ),
        ("OAUTHBEARER", b"n,,\x01host=x\x01\x01", "malformed_request"),
        (
            "XOAUTH2",
            b"user=joe\x01auth=Basic abc\x01\x01",
            "malformed_request",
        ),
        (
            "XOAUTH2",
            b"user=joe\x01auth=Bearer a b\x01\x01",
            "token_malformed",
        ),
    ];
    for (i, (mech, message, _)) in cases.iter().enumerate() {
        let id = i + 1;
        c.send(&format!(
            "AUTH\t{id}\t{mech}\tservice=imap\trip=192.0.2.7\tresp={}\n",
            b64(message)
        ));
        assert_eq!(
            c.line().unwrap(),
            format!("FAIL\t{id}\treason=Authentication failed")
        );
    }
    let long = "a".repeat(9 * 1024);
    c.send(&format!(
        "AUTH\t9\tXOAUTH2\tservice=pop3\trip=192.0.2.7\tresp={}\n",
        xoauth2("joe@example.org", &long)
    ));
    assert_eq!(c.line().unwrap(), "FAIL\t9\treason=Authentication failed");
    let text = std::fs::read_to_string(&log).unwrap();
    let audit: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(" auth service=") && l.contains("outcome=\"fail\""))
        .collect();
    let expected: Vec<(&str, &str, &str)> = cases
        .iter()
        .map(|(mech, _, reason)| ("imap", *mech, *reason))
        .chain([("pop3", "XOAUTH2", "token_too_long")])
        .collect();
    assert_eq!(audit.len(), expected.len(), "{text}");
    for (line, (service, mech, reason)) in audit.iter().zip(expected) {
        let want = format!(
            "auth service=\"{service}\" user=\"\" rip=\"192.0.2.7\" mech=\"{mech}\" outcome=\"fail\" reason=\"{reason}\""
        );
        assert!(line.trim_end().ends_with(&want), "{line}\nwanted: {want}");
    }
}
