//! Load generator for mailauthd's benchmarks (see `bench/README.md`).
//!
//! Speaks the client side of Dovecot's auth-client protocol (pipelined `AUTH` requests
//! with PLAIN, or XOAUTH2 and OAUTHBEARER carrying access tokens, replies matched by id)
//! and of Postfix's SMTPD policy protocol (one request at a time per connection, as
//! Postfix does). Every run is bounded: it stops after
//! `--duration` seconds (or `--requests` requests), waits at most `--drain-timeout` for
//! replies still in flight, and exits.
//!
//! What is reported, per group of connections:
//! - `rps`: replies received inside the measured window (after `--warmup`) per second;
//! - outcome counts and latencies (send to reply) for every request sent inside the
//!   measured window, including replies that arrived while draining, so slow stragglers
//!   are not left out of the percentiles;
//! - `unanswered`: requests that never got a reply (connection lost, or still pending
//!   when the drain timeout expired).
//!
//! `loadgen tokens` makes the access tokens for the token runs: an RSA key of its own, the
//! key set a provider would publish, and RS256 JWTs for given subjects, each one distinct.
//!
//! Build: `cargo build --release --example loadgen`; run with `--help` for the modes.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine as _;
use clap::{Args, Parser, Subcommand};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{watch, Notify};

#[derive(Parser, Debug)]
#[command(
    name = "loadgen",
    about = "Load generator for Dovecot auth-client and Postfix policy servers",
    after_help = "TARGET is unix:/path/to/socket, /path/to/socket, tcp:HOST:PORT or HOST:PORT.\n\
                  Latencies are per request, from the moment it is written to the moment its reply is read."
)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Args, Debug, Clone)]
struct Common {
    /// Seconds to send requests for (after the warm-up); always bounds the run
    #[arg(long, global = true, default_value_t = 10.0)]
    duration: f64,
    /// Stop each group after this many requests (sent after the warm-up) instead
    #[arg(long, global = true)]
    requests: Option<u64>,
    /// Seconds of load before measuring starts (not counted)
    #[arg(long, global = true, default_value_t = 0.0)]
    warmup: f64,
    /// Seconds to wait for replies still in flight at the end
    #[arg(long, global = true, default_value_t = 10.0)]
    drain_timeout: f64,
    /// Seconds to wait for all connections to finish their handshake before starting
    #[arg(long, global = true, default_value_t = 5.0)]
    connect_timeout: f64,
    /// Runtime threads of the load generator itself (1 leaves the other cores to the server)
    #[arg(long, global = true, default_value_t = 1)]
    threads: usize,
    /// Print one JSON object instead of the human summary
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// Dovecot auth-client protocol: pipelined AUTH PLAIN requests
    Auth {
        #[command(flatten)]
        opts: AuthOpts,
    },
    /// Postfix SMTPD policy protocol: one request at a time per connection
    Policy {
        #[command(flatten)]
        opts: PolicyOpts,
    },
    /// Several groups at once on one timeline, each reported on its own, e.g.
    /// --auth 'name=argon2,target=unix:/run/auth,creds=a.tsv,connections=8,pipeline=2'
    /// --auth 'name=app,target=unix:/run/auth,creds=b.tsv,connections=4,pipeline=1'
    /// --policy 'name=policy,target=unix:/run/policy,senders=s.tsv,connections=4'
    Mixed {
        /// An auth group: comma-separated key=value (name, target, creds, connections,
        /// pipeline, service, rip, secured=1)
        #[arg(long = "auth", value_name = "SPEC")]
        auth: Vec<String>,
        /// A policy group: comma-separated key=value (name, target, senders, connections,
        /// recipient)
        #[arg(long = "policy", value_name = "SPEC")]
        policy: Vec<String>,
    },
    /// Make RS256 access tokens, as an OpenID provider issues them, for the token runs
    Tokens {
        #[command(flatten)]
        opts: TokenOpts,
    },
}

#[derive(Args, Debug, Clone)]
struct TokenOpts {
    /// One `address<TAB>subject` per line: whose tokens to make, used in turn
    #[arg(long)]
    subjects: PathBuf,
    /// How many tokens to make (each one distinct: its own `jti`)
    #[arg(long)]
    count: usize,
    /// The tokens' `iss`
    #[arg(long)]
    issuer: String,
    /// The tokens' `aud` and `azp`: the webmail's client id
    #[arg(long, default_value = "webmail")]
    audience: String,
    /// The tokens' `scope`
    #[arg(long, default_value = "openid email")]
    scope: String,
    /// Seconds the tokens are valid for
    #[arg(long, default_value_t = 3600)]
    lifetime: i64,
    /// Where the key set (JWKS) with the signing key's public half is written
    #[arg(long)]
    jwks: PathBuf,
    /// Where the `address<TAB>token` lines are written
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args, Debug, Clone)]
struct AuthOpts {
    /// Auth socket to connect to
    #[arg(long)]
    target: String,
    /// Credentials file: one `user<TAB>password` per line, used in turn
    #[arg(long)]
    creds: PathBuf,
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Requests kept in flight per connection
    #[arg(long, default_value_t = 8)]
    pipeline: usize,
    /// Value of `service=` in each AUTH request
    #[arg(long, default_value = "imap")]
    service: String,
    /// Send `rip=ADDR` (the mail client's address) with each request
    #[arg(long)]
    rip: Option<String>,
    /// Mark requests `secured` (the client connection used TLS)
    #[arg(long)]
    secured: bool,
    /// SASL mechanism: plain (the creds' second column is a password), xoauth2 or
    /// oauthbearer (it is an access token)
    #[arg(long, default_value = "plain")]
    mech: Mech,
    /// Name shown in the report
    #[arg(long, default_value = "auth")]
    name: String,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Mech {
    Plain,
    Xoauth2,
    Oauthbearer,
}

impl std::str::FromStr for Mech {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        <Mech as clap::ValueEnum>::from_str(s, true)
    }
}

impl Mech {
    fn name(self) -> &'static str {
        match self {
            Mech::Plain => "PLAIN",
            Mech::Xoauth2 => "XOAUTH2",
            Mech::Oauthbearer => "OAUTHBEARER",
        }
    }

    /// The initial response for `user` with `secret`, before base64.
    fn initial_response(self, user: &str, secret: &str) -> Vec<u8> {
        match self {
            Mech::Plain => format!("\0{user}\0{secret}").into_bytes(),
            Mech::Xoauth2 => format!("user={user}\x01auth=Bearer {secret}\x01\x01").into_bytes(),
            // RFC 7628's GS2 header names the login; `=` and `,` in it are escaped.
            Mech::Oauthbearer => {
                let user = user.replace('=', "=3D").replace(',', "=2C");
                format!("n,a={user},\x01auth=Bearer {secret}\x01\x01").into_bytes()
            }
        }
    }
}

#[derive(Args, Debug, Clone)]
struct PolicyOpts {
    /// Policy socket to connect to
    #[arg(long)]
    target: String,
    /// One `sasl_username<TAB>sender` per line (a single field is used for both)
    #[arg(long)]
    senders: PathBuf,
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Recipient address in each request
    #[arg(long, default_value = "someone@example.net")]
    recipient: String,
    /// Name shown in the report
    #[arg(long, default_value = "policy")]
    name: String,
}

// ---------------------------------------------------------------------------------------
// Targets and connections

#[derive(Clone, Debug)]
enum Target {
    Unix(PathBuf),
    Tcp(String),
}

impl Target {
    fn parse(s: &str) -> Result<Target> {
        if let Some(p) = s.strip_prefix("unix:") {
            return Ok(Target::Unix(PathBuf::from(p)));
        }
        if s.starts_with('/') || s.starts_with("./") {
            return Ok(Target::Unix(PathBuf::from(s)));
        }
        let addr = s.strip_prefix("tcp:").unwrap_or(s);
        if addr.rsplit_once(':').is_none() {
            bail!("{s:?} is neither unix:/path nor tcp:HOST:PORT");
        }
        Ok(Target::Tcp(addr.to_string()))
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Unix(p) => write!(f, "unix:{}", p.display()),
            Target::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

type Reader = BufReader<Box<dyn AsyncRead + Unpin + Send>>;
type Writer = Box<dyn AsyncWrite + Unpin + Send>;

async fn connect(target: &Target) -> std::io::Result<(Reader, Writer)> {
    let (r, w): (Box<dyn AsyncRead + Unpin + Send>, Writer) = match target {
        Target::Unix(path) => {
            let s = tokio::net::UnixStream::connect(path).await?;
            let (r, w) = s.into_split();
            (Box::new(r), Box::new(w))
        }
        Target::Tcp(addr) => {
            let s = tokio::net::TcpStream::connect(addr.as_str()).await?;
            s.set_nodelay(true)?;
            let (r, w) = s.into_split();
            (Box::new(r), Box::new(w))
        }
    };
    Ok((BufReader::with_capacity(64 * 1024, r), w))
}

// ---------------------------------------------------------------------------------------
// Groups

#[derive(Clone)]
struct AuthGroup {
    pipeline: usize,
    /// Everything of an AUTH line after the id, one per credential, ready to write.
    tails: Arc<Vec<Vec<u8>>>,
}

#[derive(Clone)]
struct PolicyGroup {
    pairs: Arc<Vec<(String, String)>>,
    recipient: String,
}

#[derive(Clone)]
enum Kind {
    Auth(AuthGroup),
    Policy(PolicyGroup),
}

#[derive(Clone)]
struct Group {
    name: String,
    target: Target,
    connections: usize,
    kind: Kind,
    /// Requests left to send in the measured window when `--requests` is given.
    budget: Option<Arc<AtomicI64>>,
}

impl Group {
    fn describe(&self) -> String {
        match &self.kind {
            Kind::Auth(a) => format!("{} conns x {} in flight", self.connections, a.pipeline),
            Kind::Policy(_) => format!("{} conns x 1 in flight", self.connections),
        }
    }
}

fn read_pairs(path: &Path) -> Result<Vec<(String, String)>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let pairs: Vec<(String, String)> = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| match l.split_once('\t') {
            Some((a, b)) => (a.to_string(), b.to_string()),
            None => (l.to_string(), l.to_string()),
        })
        .collect();
    if pairs.is_empty() {
        bail!("{} holds no entries", path.display());
    }
    Ok(pairs)
}

fn auth_group(o: &AuthOpts, budget: Option<u64>) -> Result<Group> {
    if o.connections == 0 || o.pipeline == 0 {
        bail!("{}: connections and pipeline must be at least 1", o.name);
    }
    let creds = read_pairs(&o.creds)?;
    let mut options = format!("\t{}\tservice={}", o.mech.name(), o.service);
    if o.secured {
        options.push_str("\tsecured");
    }
    if let Some(rip) = &o.rip {
        options.push_str(&format!("\trip={rip}"));
    }
    let tails = creds
        .iter()
        .map(|(user, secret)| {
            let raw = o.mech.initial_response(user, secret);
            let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
            format!("{options}\tresp={b64}\n").into_bytes()
        })
        .collect();
    Ok(Group {
        name: o.name.clone(),
        target: Target::parse(&o.target)?,
        connections: o.connections,
        kind: Kind::Auth(AuthGroup {
            pipeline: o.pipeline,
            tails: Arc::new(tails),
        }),
        budget: budget.map(|n| Arc::new(AtomicI64::new(n as i64))),
    })
}

fn policy_group(o: &PolicyOpts, budget: Option<u64>) -> Result<Group> {
    if o.connections == 0 {
        bail!("{}: connections must be at least 1", o.name);
    }
    Ok(Group {
        name: o.name.clone(),
        target: Target::parse(&o.target)?,
        connections: o.connections,
        kind: Kind::Policy(PolicyGroup {
            pairs: Arc::new(read_pairs(&o.senders)?),
            recipient: o.recipient.clone(),
        }),
        budget: budget.map(|n| Arc::new(AtomicI64::new(n as i64))),
    })
}

/// `name=app,target=unix:/x,connections=4` into a map.
fn spec_map(spec: &str) -> Result<HashMap<String, String>> {
    spec.split(',')
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .ok_or_else(|| anyhow!("{p:?} in {spec:?} is not key=value"))
        })
        .collect()
}

fn take<T: std::str::FromStr>(
    m: &mut HashMap<String, String>,
    key: &str,
    default: Option<T>,
) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    match m.remove(key) {
        Some(v) => v.parse().map_err(|e| anyhow!("{key}={v}: {e}")),
        None => default.ok_or_else(|| anyhow!("missing {key}=")),
    }
}

fn auth_spec(spec: &str) -> Result<AuthOpts> {
    let mut m = spec_map(spec)?;
    let o = AuthOpts {
        name: take(&mut m, "name", Some("auth".to_string()))?,
        target: take(&mut m, "target", None)?,
        creds: take(&mut m, "creds", None)?,
        connections: take(&mut m, "connections", Some(4))?,
        pipeline: take(&mut m, "pipeline", Some(1))?,
        service: take(&mut m, "service", Some("imap".to_string()))?,
        rip: m.remove("rip"),
        secured: take(&mut m, "secured", Some(0u8))? != 0,
        mech: take(&mut m, "mech", Some(Mech::Plain))?,
    };
    if let Some(k) = m.keys().next() {
        bail!("unknown key {k:?} in auth spec {spec:?}");
    }
    Ok(o)
}

fn policy_spec(spec: &str) -> Result<PolicyOpts> {
    let mut m = spec_map(spec)?;
    let o = PolicyOpts {
        name: take(&mut m, "name", Some("policy".to_string()))?,
        target: take(&mut m, "target", None)?,
        senders: take(&mut m, "senders", None)?,
        connections: take(&mut m, "connections", Some(4))?,
        recipient: take(&mut m, "recipient", Some("someone@example.net".to_string()))?,
    };
    if let Some(k) = m.keys().next() {
        bail!("unknown key {k:?} in policy spec {spec:?}");
    }
    Ok(o)
}

// ---------------------------------------------------------------------------------------
// Timeline and statistics

#[derive(Clone, Copy, Debug)]
struct Timeline {
    /// Requests sent from here on are measured.
    measure_start: Instant,
    /// No request is sent from here on.
    end: Instant,
    /// Replies still missing here are given up on.
    drain_until: Instant,
}

#[derive(Default)]
struct Stats {
    /// Every reply, warm-up and drain included (to divide server CPU time by).
    total: u64,
    /// Replies received inside [measure_start, end].
    in_window: u64,
    /// Latest reply counted in `in_window`, for runs that end by request count.
    last_in_window: Option<Instant>,
    // Outcomes of measured requests (sent after measure_start), whenever they arrived.
    ok: u64,
    fail: u64,
    tempfail: u64,
    other: u64,
    drained: u64,
    unanswered: u64,
    lat_us: Vec<u32>,
    /// Policy actions by their first word.
    actions: BTreeMap<String, u64>,
    errors: u64,
    first_error: Option<String>,
    connects: u64,
}

impl Stats {
    fn error(&mut self, what: impl std::fmt::Display) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(what.to_string());
        }
    }

    /// Books one reply to a request sent at `sent`.
    fn reply(&mut self, tl: &Timeline, sent: Instant, now: Instant, outcome: Outcome) {
        self.total += 1;
        if now >= tl.measure_start && now <= tl.end {
            self.in_window += 1;
            self.last_in_window = Some(self.last_in_window.map_or(now, |t| t.max(now)));
        }
        if sent < tl.measure_start {
            return;
        }
        if now > tl.end {
            self.drained += 1;
        }
        match outcome {
            Outcome::Ok => self.ok += 1,
            Outcome::Fail => self.fail += 1,
            Outcome::TempFail => self.tempfail += 1,
            Outcome::Other => self.other += 1,
        }
        let us = now.duration_since(sent).as_micros().min(u32::MAX as u128) as u32;
        self.lat_us.push(us);
    }

    /// Requests that will never be answered.
    fn lost(&mut self, tl: &Timeline, inflight: &HashMap<u32, Instant>) {
        self.unanswered += inflight
            .values()
            .filter(|s| **s >= tl.measure_start)
            .count() as u64;
    }

    fn merge(&mut self, o: Stats) {
        self.total += o.total;
        self.in_window += o.in_window;
        self.last_in_window = match (self.last_in_window, o.last_in_window) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        self.ok += o.ok;
        self.fail += o.fail;
        self.tempfail += o.tempfail;
        self.other += o.other;
        self.drained += o.drained;
        self.unanswered += o.unanswered;
        self.lat_us.extend(o.lat_us);
        for (k, v) in o.actions {
            *self.actions.entry(k).or_default() += v;
        }
        self.errors += o.errors;
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
        self.connects += o.connects;
    }
}

#[derive(Clone, Copy)]
enum Outcome {
    Ok,
    Fail,
    TempFail,
    Other,
}

/// Takes one request from the group's budget; always true without `--requests`.
fn take_budget(budget: &Option<Arc<AtomicI64>>, tl: &Timeline, now: Instant) -> bool {
    match budget {
        // Warm-up requests do not count against the budget.
        Some(b) if now >= tl.measure_start => b.fetch_sub(1, Ordering::AcqRel) > 0,
        _ => true,
    }
}

/// The start signal every connection waits for once its handshake is done.
struct Start {
    ready: AtomicUsize,
    all_ready: Notify,
    go: watch::Receiver<Option<Timeline>>,
}

impl Start {
    fn report_ready(&self, total: usize) {
        if self.ready.fetch_add(1, Ordering::AcqRel) + 1 >= total {
            self.all_ready.notify_one();
        }
    }

    async fn wait(&self) -> Timeline {
        let mut rx = self.go.clone();
        let t = rx
            .wait_for(|t| t.is_some())
            .await
            .expect("start sender dropped");
        t.expect("checked by wait_for")
    }
}

// ---------------------------------------------------------------------------------------
// Auth connections

/// Reads the server handshake up to DONE and sends ours. Errors are fatal for the
/// connection; the caller reconnects.
async fn auth_handshake(r: &mut Reader, w: &mut Writer, cpid: u32, until: Instant) -> Result<()> {
    let mut line = Vec::with_capacity(256);
    let mut first = true;
    loop {
        line.clear();
        let n = tokio::time::timeout_at(until.into(), r.read_until(b'\n', &mut line))
            .await
            .map_err(|_| anyhow!("handshake timed out"))??;
        if n == 0 {
            bail!("server closed the connection during the handshake");
        }
        if first && !line.starts_with(b"VERSION\t1\t") {
            bail!(
                "not a Dovecot auth server: first line {:?}",
                String::from_utf8_lossy(&line)
            );
        }
        first = false;
        if line.starts_with(b"DONE") {
            break;
        }
    }
    w.write_all(format!("VERSION\t1\t2\nCPID\t{cpid}\n").as_bytes())
        .await?;
    Ok(())
}

fn classify_auth(line: &[u8]) -> Option<(u32, Outcome)> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let mut fields = line.split(|b| *b == b'\t');
    let cmd = fields.next()?;
    let id: u32 = std::str::from_utf8(fields.next()?).ok()?.parse().ok()?;
    let outcome = match cmd {
        b"OK" => Outcome::Ok,
        b"FAIL" => {
            if fields.any(|f| f == b"code=temp_fail" || f == b"temp") {
                Outcome::TempFail
            } else {
                Outcome::Fail
            }
        }
        _ => Outcome::Other,
    };
    Some((id, outcome))
}

async fn auth_connection(
    group: Group,
    spec: AuthGroup,
    index: usize,
    start: Arc<Start>,
    startup_deadline: Instant,
) -> Stats {
    let mut stats = Stats::default();
    let total = group.connections;
    let cpid = std::process::id()
        .wrapping_mul(1000)
        .wrapping_add(index as u32);
    // Spread connections over the credentials so they do not all ask for the same user.
    let mut cred = (index * spec.tails.len()) / total.max(1);
    let mut next_id: u32 = 1;

    // First connection, before the common start.
    let first = async {
        let (mut r, mut w) = connect(&group.target).await?;
        auth_handshake(&mut r, &mut w, cpid, startup_deadline).await?;
        anyhow::Ok((r, w))
    }
    .await;
    start.report_ready(total);
    let tl = start.wait().await;
    let mut conn = match first {
        Ok(c) => {
            stats.connects += 1;
            Some(c)
        }
        Err(e) => {
            stats.error(format!("connect: {e:#}"));
            None
        }
    };

    let mut inflight: HashMap<u32, Instant> = HashMap::with_capacity(spec.pipeline * 2);
    let mut out: Vec<u8> = Vec::with_capacity(spec.pipeline * 160);
    let mut line: Vec<u8> = Vec::with_capacity(512);
    let mut budget_done = false;
    'connection: loop {
        let (r, w) = match conn.as_mut() {
            Some(c) => (&mut c.0, &mut c.1),
            None => {
                if Instant::now() >= tl.end {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                let attempt = async {
                    let (mut r, mut w) = connect(&group.target).await?;
                    auth_handshake(&mut r, &mut w, cpid, tl.drain_until).await?;
                    anyhow::Ok((r, w))
                }
                .await;
                match attempt {
                    Ok(c) => {
                        stats.connects += 1;
                        conn = Some(c);
                    }
                    Err(e) => stats.error(format!("reconnect: {e:#}")),
                }
                continue;
            }
        };
        line.clear();
        loop {
            let now = Instant::now();
            if now < tl.end && !budget_done {
                while inflight.len() < spec.pipeline {
                    let sent = Instant::now();
                    if !take_budget(&group.budget, &tl, sent) {
                        budget_done = true;
                        break;
                    }
                    let id = next_id;
                    next_id = next_id.checked_add(1).unwrap_or(1);
                    out.extend_from_slice(b"AUTH\t");
                    out.extend_from_slice(id.to_string().as_bytes());
                    out.extend_from_slice(&spec.tails[cred]);
                    cred = (cred + 1) % spec.tails.len();
                    inflight.insert(id, sent);
                }
                if !out.is_empty() {
                    let written = w.write_all(&out).await;
                    out.clear();
                    if let Err(e) = written {
                        stats.error(format!("write: {e}"));
                        stats.lost(&tl, &inflight);
                        inflight.clear();
                        conn = None;
                        continue 'connection;
                    }
                }
            }
            if inflight.is_empty() && (now >= tl.end || budget_done) {
                break 'connection;
            }
            let deadline = if now < tl.end { tl.end } else { tl.drain_until };
            match tokio::time::timeout_at(deadline.into(), r.read_until(b'\n', &mut line)).await {
                // The window closed: go round once more to stop sending, then drain.
                Err(_) if deadline == tl.end => continue,
                Err(_) => {
                    stats.lost(&tl, &inflight);
                    break 'connection;
                }
                Ok(Ok(0)) => {
                    stats.error("server closed the connection");
                    stats.lost(&tl, &inflight);
                    inflight.clear();
                    conn = None;
                    continue 'connection;
                }
                Ok(Err(e)) => {
                    stats.error(format!("read: {e}"));
                    stats.lost(&tl, &inflight);
                    inflight.clear();
                    conn = None;
                    continue 'connection;
                }
                Ok(Ok(_)) => {
                    if !line.ends_with(b"\n") {
                        continue; // partial line before the timeout; keep reading into it
                    }
                    // A refused token gets RFC 7628's error challenge first; the client's
                    // dummy reply (0x01) lets the server send the FAIL that is counted.
                    if let Some(id) = line.strip_prefix(b"CONT\t") {
                        let id = id.split(|b| *b == b'\t').next().unwrap_or_default();
                        out.extend_from_slice(b"CONT\t");
                        out.extend_from_slice(id);
                        out.extend_from_slice(b"\tAQ==\n");
                        let written = w.write_all(&out).await;
                        out.clear();
                        line.clear();
                        if let Err(e) = written {
                            stats.error(format!("write: {e}"));
                            stats.lost(&tl, &inflight);
                            inflight.clear();
                            conn = None;
                            continue 'connection;
                        }
                        continue;
                    }
                    let now = Instant::now();
                    match classify_auth(&line) {
                        Some((id, outcome)) => match inflight.remove(&id) {
                            Some(sent) => stats.reply(&tl, sent, now, outcome),
                            None => stats.error(format!("reply for unknown id {id}")),
                        },
                        None => stats.error(format!(
                            "unexpected line {:?}",
                            String::from_utf8_lossy(&line[..line.len().min(80)])
                        )),
                    }
                    line.clear();
                }
            }
        }
    }
    stats
}

// ---------------------------------------------------------------------------------------
// Policy connections

/// A request block in the attribute order Postfix 3.7 writes.
fn policy_request(
    buf: &mut Vec<u8>,
    user: &str,
    sender: &str,
    recipient: &str,
    conn: usize,
    seq: u64,
) {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(900);
    let _ = write!(
        s,
        "request=smtpd_access_policy\n\
         protocol_state=RCPT\n\
         protocol_name=ESMTP\n\
         helo_name=[192.168.1.23]\n\
         queue_id=\n\
         sender={sender}\n\
         recipient={recipient}\n\
         recipient_count=0\n\
         client_address=192.0.2.{host}\n\
         client_name=unknown\n\
         reverse_client_name=unknown\n\
         instance={conn:x}.{seq:x}.{salt:x}.0\n\
         sasl_method=PLAIN\n\
         sasl_username={user}\n\
         sasl_sender=\n\
         size=12345\n\
         ccert_subject=\n\
         ccert_issuer=\n\
         ccert_fingerprint=\n\
         encryption_protocol=TLSv1.3\n\
         encryption_cipher=TLS_AES_256_GCM_SHA384\n\
         encryption_keysize=256\n\
         etrn_domain=\n\
         stress=\n\
         ccert_pubkey_fingerprint=\n\
         client_port={port}\n\
         policy_context=submission\n\
         server_address=192.0.2.10\n\
         server_port=587\n\
         \n",
        host = 1 + (seq % 250),
        salt = 0x6650_f1c3u32,
        port = 1024 + (seq % 60000),
    );
    buf.extend_from_slice(s.as_bytes());
}

fn classify_action(action: &str) -> Outcome {
    let word = action.split_whitespace().next().unwrap_or("");
    let upper = word.to_ascii_uppercase();
    match upper.as_str() {
        "DUNNO" | "OK" | "PREPEND" | "FILTER" | "INFO" => Outcome::Ok,
        "REJECT" | "DEFER" | "DEFER_IF_PERMIT" | "DEFER_IF_REJECT" | "BCC" | "DISCARD" | "HOLD"
        | "REDIRECT" => Outcome::Fail,
        w if w.starts_with('4') => Outcome::TempFail,
        w if w.starts_with('5') => Outcome::Fail,
        _ => Outcome::Other,
    }
}

async fn policy_connection(
    group: Group,
    spec: PolicyGroup,
    index: usize,
    start: Arc<Start>,
) -> Stats {
    let mut stats = Stats::default();
    let total = group.connections;
    let mut pair = (index * spec.pairs.len()) / total.max(1);
    let mut seq: u64 = 0;
    let first = connect(&group.target).await;
    start.report_ready(total);
    let tl = start.wait().await;
    let mut conn = match first {
        Ok(c) => {
            stats.connects += 1;
            Some(c)
        }
        Err(e) => {
            stats.error(format!("connect: {e}"));
            None
        }
    };
    let mut out = Vec::with_capacity(1024);
    let mut line = Vec::with_capacity(256);
    'connection: loop {
        let (r, w) = match conn.as_mut() {
            Some(c) => (&mut c.0, &mut c.1),
            None => {
                if Instant::now() >= tl.end {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                match connect(&group.target).await {
                    Ok(c) => {
                        stats.connects += 1;
                        conn = Some(c);
                    }
                    Err(e) => stats.error(format!("reconnect: {e}")),
                }
                continue;
            }
        };
        loop {
            let sent = Instant::now();
            if sent >= tl.end || !take_budget(&group.budget, &tl, sent) {
                break 'connection;
            }
            let (user, sender) = &spec.pairs[pair];
            pair = (pair + 1) % spec.pairs.len();
            seq += 1;
            out.clear();
            policy_request(&mut out, user, sender, &spec.recipient, index, seq);
            let mut pending = HashMap::new();
            pending.insert(0u32, sent);
            if let Err(e) = w.write_all(&out).await {
                stats.error(format!("write: {e}"));
                stats.lost(&tl, &pending);
                conn = None;
                continue 'connection;
            }
            // Read `action=...` lines up to the blank line that ends the reply.
            let mut action: Option<String> = None;
            loop {
                line.clear();
                let read =
                    tokio::time::timeout_at(tl.drain_until.into(), r.read_until(b'\n', &mut line))
                        .await;
                match read {
                    Err(_) => {
                        stats.lost(&tl, &pending);
                        break 'connection;
                    }
                    Ok(Ok(0)) | Ok(Err(_)) => {
                        stats.error("server closed the connection or read failed");
                        stats.lost(&tl, &pending);
                        conn = None;
                        continue 'connection;
                    }
                    Ok(Ok(_)) => {}
                }
                let text = String::from_utf8_lossy(&line);
                let text = text.trim_end_matches(['\n', '\r']);
                if text.is_empty() {
                    break;
                }
                if action.is_none() {
                    action = text.strip_prefix("action=").map(str::to_string);
                }
            }
            let now = Instant::now();
            let outcome = match &action {
                Some(a) => classify_action(a),
                None => {
                    stats.error("reply without action=");
                    Outcome::Other
                }
            };
            if sent >= tl.measure_start {
                let word = action
                    .as_deref()
                    .and_then(|a| a.split_whitespace().next())
                    .unwrap_or("(none)")
                    .to_ascii_uppercase();
                *stats.actions.entry(word).or_default() += 1;
            }
            stats.reply(&tl, sent, now, outcome);
        }
    }
    stats
}

// ---------------------------------------------------------------------------------------
// Running and reporting

async fn run_groups(groups: Vec<Group>, common: &Common) -> Result<Vec<(Group, Stats, f64)>> {
    let total: usize = groups.iter().map(|g| g.connections).sum();
    let (go_tx, go_rx) = watch::channel(None);
    let start = Arc::new(Start {
        ready: AtomicUsize::new(0),
        all_ready: Notify::new(),
        go: go_rx,
    });
    let startup_deadline = Instant::now() + Duration::from_secs_f64(common.connect_timeout);
    let mut handles = Vec::new();
    for (gi, g) in groups.iter().enumerate() {
        for i in 0..g.connections {
            let (g2, start2) = (g.clone(), start.clone());
            let h = match &g.kind {
                Kind::Auth(a) => {
                    tokio::spawn(auth_connection(g2, a.clone(), i, start2, startup_deadline))
                }
                Kind::Policy(p) => tokio::spawn(policy_connection(g2, p.clone(), i, start2)),
            };
            handles.push((gi, h));
        }
    }
    // Every connection reports in once (connected or not); start when all have, or at the
    // deadline.
    let _ = tokio::time::timeout_at(startup_deadline.into(), async {
        while start.ready.load(Ordering::Acquire) < total {
            start.all_ready.notified().await;
        }
    })
    .await;
    let now = Instant::now();
    let measure_start = now + Duration::from_secs_f64(common.warmup);
    let end = measure_start + Duration::from_secs_f64(common.duration);
    let tl = Timeline {
        measure_start,
        end,
        drain_until: end + Duration::from_secs_f64(common.drain_timeout),
    };
    let _ = go_tx.send(Some(tl));
    let mut per_group: Vec<Stats> = groups.iter().map(|_| Stats::default()).collect();
    for (gi, h) in handles {
        match h.await {
            Ok(s) => per_group[gi].merge(s),
            Err(e) => per_group[gi].error(format!("connection task failed: {e}")),
        }
    }
    let window = |s: &Stats| -> f64 {
        let end = if common.requests.is_some() {
            s.last_in_window.unwrap_or(tl.end).min(tl.end)
        } else {
            tl.end
        };
        end.saturating_duration_since(tl.measure_start)
            .as_secs_f64()
            .max(1e-9)
    };
    Ok(groups
        .into_iter()
        .zip(per_group)
        .map(|(g, mut s)| {
            s.lat_us.sort_unstable();
            let w = window(&s);
            (g, s, w)
        })
        .collect())
}

fn percentile(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1] as f64 / 1000.0
}

fn report(group: &Group, s: &Stats, window: f64) -> Value {
    let lat = &s.lat_us;
    let mean = if lat.is_empty() {
        f64::NAN
    } else {
        lat.iter().map(|v| *v as f64).sum::<f64>() / lat.len() as f64 / 1000.0
    };
    let num = |v: f64| {
        if v.is_finite() {
            json!((v * 1000.0).round() / 1000.0)
        } else {
            Value::Null
        }
    };
    let (mode, pipeline) = match &group.kind {
        Kind::Auth(a) => ("auth", a.pipeline),
        Kind::Policy(_) => ("policy", 1),
    };
    json!({
        "name": group.name,
        "mode": mode,
        "target": group.target.to_string(),
        "connections": group.connections,
        "pipeline": pipeline,
        "window_s": (window * 1000.0).round() / 1000.0,
        "rps": (s.in_window as f64 / window * 10.0).round() / 10.0,
        "replies_in_window": s.in_window,
        "replies_total": s.total,
        "measured": lat.len(),
        "ok": s.ok,
        "fail": s.fail,
        "tempfail": s.tempfail,
        "other": s.other,
        "drained": s.drained,
        "unanswered": s.unanswered,
        "errors": s.errors,
        "first_error": s.first_error,
        "connects": s.connects,
        "actions": s.actions,
        "latency_ms": {
            "mean": num(mean),
            "p50": num(percentile(lat, 0.50)),
            "p90": num(percentile(lat, 0.90)),
            "p99": num(percentile(lat, 0.99)),
            "max": num(percentile(lat, 1.0)),
        },
    })
}

fn human(group: &Group, v: &Value) -> String {
    let l = &v["latency_ms"];
    let f = |x: &Value| x.as_f64().map_or("-".to_string(), |x| format!("{x:.3}"));
    let mut line = format!(
        "{name:<12} {target} ({desc}, {w}s): {rps:.1}/s  ok={ok} fail={fail} tempfail={tf} other={other} unanswered={un}  latency ms p50={p50} p90={p90} p99={p99} max={max}",
        name = group.name,
        target = group.target,
        desc = group.describe(),
        w = v["window_s"],
        rps = v["rps"].as_f64().unwrap_or(0.0),
        ok = v["ok"],
        fail = v["fail"],
        tf = v["tempfail"],
        other = v["other"],
        un = v["unanswered"],
        p50 = f(&l["p50"]),
        p90 = f(&l["p90"]),
        p99 = f(&l["p99"]),
        max = f(&l["max"]),
    );
    if let Some(obj) = v["actions"].as_object().filter(|o| !o.is_empty()) {
        let acts: Vec<String> = obj.iter().map(|(k, n)| format!("{k}={n}")).collect();
        line.push_str(&format!("  actions: {}", acts.join(" ")));
    }
    if v["errors"].as_u64().unwrap_or(0) > 0 {
        line.push_str(&format!(
            "  errors={} (first: {})",
            v["errors"],
            v["first_error"].as_str().unwrap_or("?")
        ));
    }
    line
}

/// CPU time (user + system) this process has used, from /proc/self/stat (Linux).
fn own_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after ")".
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // USER_HZ is 100 on every Linux architecture that matters here.
    Some(ticks / 100.0)
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let c = &cli.common;
    if !(c.duration > 0.0 && c.duration <= 3600.0) {
        bail!("--duration must be between 0 and 3600 seconds");
    }
    if c.warmup < 0.0 || c.drain_timeout < 0.0 || c.connect_timeout <= 0.0 {
        bail!("--warmup, --drain-timeout and --connect-timeout must not be negative");
    }
    let groups = match &cli.mode {
        Mode::Auth { opts } => vec![auth_group(opts, c.requests)?],
        Mode::Policy { opts } => vec![policy_group(opts, c.requests)?],
        Mode::Tokens { opts } => return make_tokens(opts),
        Mode::Mixed { auth, policy } => {
            let mut g = Vec::new();
            for s in auth {
                g.push(auth_group(&auth_spec(s)?, c.requests)?);
            }
            for s in policy {
                g.push(policy_group(&policy_spec(s)?, c.requests)?);
            }
            if g.is_empty() {
                bail!("mixed needs at least one --auth or --policy group");
            }
            g
        }
    };
    let runtime = if c.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(c.threads)
            .enable_all()
            .build()?
    };
    let results = runtime.block_on(run_groups(groups, c))?;
    let reports: Vec<Value> = results.iter().map(|(g, s, w)| report(g, s, *w)).collect();
    if c.json {
        let mut out = if reports.len() == 1 {
            reports[0].clone()
        } else {
            json!({ "groups": reports })
        };
        out["loadgen_cpu_s"] = own_cpu_seconds().map_or(Value::Null, |s| json!(s));
        println!("{out}");
    } else {
        for ((g, _, _), v) in results.iter().zip(&reports) {
            println!("{}", human(g, v));
        }
    }
    // Nonzero when nothing at all was answered, so scripts notice a dead target.
    if results.iter().all(|(_, s, _)| s.lat_us.is_empty()) {
        std::process::exit(1);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Access tokens for the token runs

/// An RSA-2048 key, its JWKS, and `count` RS256 JWTs over the subjects in turn, signed on
/// every core (signing is the slow part: about a millisecond each).
fn make_tokens(o: &TokenOpts) -> Result<()> {
    use openssl::hash::MessageDigest;
    use openssl::pkey::PKey;
    use openssl::rsa::Rsa;
    use openssl::sign::Signer;

    let subjects = Arc::new(read_pairs(&o.subjects)?);
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let rsa = Rsa::generate(2048)?;
    let kid = format!("bench-{}", std::process::id());
    let jwks = json!({"keys": [{
        "kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid,
        "n": b64(&rsa.n().to_vec()), "e": b64(&rsa.e().to_vec()),
    }]});
    std::fs::write(&o.jwks, jwks.to_string())
        .with_context(|| format!("writing {}", o.jwks.display()))?;
    let key = PKey::from_rsa(rsa)?;
    let header = b64(json!({"alg": "RS256", "typ": "at+jwt", "kid": kid})
        .to_string()
        .as_bytes());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let lines: Vec<String> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let (key, header, subjects) = (&key, &header, &subjects);
                scope.spawn(move || -> Result<Vec<String>> {
                    let mut lines = Vec::new();
                    for i in (t..o.count).step_by(threads) {
                        let (address, subject) = &subjects[i % subjects.len()];
                        let claims = json!({
                            "iss": o.issuer, "sub": subject, "aud": o.audience,
                            "azp": o.audience, "client_id": o.audience, "scope": o.scope,
                            "iat": now, "exp": now + o.lifetime, "jti": format!("bench-{i}"),
                        });
                        let input = format!("{header}.{}", b64(claims.to_string().as_bytes()));
                        let mut signer = Signer::new(MessageDigest::sha256(), key)?;
                        signer.update(input.as_bytes())?;
                        let signature = b64(&signer.sign_to_vec()?);
                        lines.push(format!("{address}\t{input}.{signature}\n"));
                    }
                    Ok(lines)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().map_err(|_| anyhow!("a signing thread panicked"))?)
            .collect::<Result<Vec<_>>>()
            .map(|v| v.concat())
    })?;
    std::fs::write(&o.out, lines.concat())
        .with_context(|| format!("writing {}", o.out.display()))?;
    Ok(())
}
