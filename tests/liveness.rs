//! The identity-liveness check against a fake provider over real HTTP: each kind of answer
//! to a refresh classified, and the pass's rules — one refusal of many suspends it; an
//! unreachable provider, a 5xx, our client refused or too many refusals suspend nobody; the
//! lease keeps a second pass out; a store that fails mid-pass suspends nobody; `--dry-run`
//! changes nothing but keeps a rotated token. Then `mailauthd idp check` through the real
//! binary: its lines and exit codes, and `auth test` refusing the suspended mailbox until a
//! sign-in lifts it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use serde_json::{json, Value};

use mailauthd::auth::app_password::AppPasswordKey;
use mailauthd::clock::{Clock, ManualClock, SystemClock};
use mailauthd::liveness::{Liveness, PassEnd, PassError, PassOptions};
use mailauthd::names::Address;
use mailauthd::oidc::liveness::{Answer, Change};
use mailauthd::oidc::refresh::RefreshAnswer;
use mailauthd::oidc::sealed::{Owner, SealingKey, Unsealed};
use mailauthd::oidc::{LivenessSettings, OidcSettings, RelyingParty};
use mailauthd::provision::{self, NewMailbox};
use mailauthd::secret::Secret;
use mailauthd::store::*;

const ISSUER_PATH: &str = "";
const CLIENT_SECRET: &str = "client-secret-1";

/// The fake provider: what each refresh token gets, by its prefix.
/// `ok-…` fine; `rotate-…` fine with a new token `ok-…`; `gone-…` invalid_grant;
/// `boom-…` HTTP 500; `hang-…` no answer for 30 s. A wrong client secret: invalid_client.
struct Fake {
    issuer: String,
    secret: String,
    refreshes: usize,
    /// Closed when a `close-…` token arrives, to take the store away mid-pass.
    store_to_close: Option<Arc<SqlStore>>,
}

type Shared = Arc<Mutex<Fake>>;

fn json_response(status: u16, v: Value) -> Response {
    (
        axum::http::StatusCode::from_u16(status).unwrap(),
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

async fn discovery(State(s): State<Shared>) -> Response {
    let issuer = s.lock().unwrap().issuer.clone();
    let mut doc = common::discovery_document(&issuer);
    doc["scopes_supported"] = json!(["openid", "email", "offline_access"]);
    doc["token_endpoint_auth_methods_supported"] = json!(["client_secret_post"]);
    json_response(200, doc)
}

async fn jwks() -> Response {
    json_response(200, json!({ "keys": [] }))
}

async fn token(State(s): State<Shared>, Form(form): Form<HashMap<String, String>>) -> Response {
    let (secret, closing) = {
        let mut f = s.lock().unwrap();
        f.refreshes += 1;
        (f.secret.clone(), f.store_to_close.clone())
    };
    if form.get("grant_type").map(String::as_str) != Some("refresh_token") {
        return json_response(400, json!({"error": "unsupported_grant_type"}));
    }
    if form.get("client_secret") != Some(&secret) {
        return json_response(401, json!({"error": "invalid_client"}));
    }
    let rt = form.get("refresh_token").cloned().unwrap_or_default();
    let fine = json!({"access_token": "a", "token_type": "Bearer", "expires_in": 60});
    if rt.starts_with("ok-") {
        json_response(200, fine)
    } else if let Some(rest) = rt.strip_prefix("rotate-") {
        json_response(
            200,
            json!({"access_token": "a", "token_type": "Bearer", "refresh_token": format!("ok-{rest}")}),
        )
    } else if rt.starts_with("gone-") {
        json_response(
            400,
            json!({"error": "invalid_grant", "error_description": "user disabled"}),
        )
    } else if rt.starts_with("boom-") {
        json_response(500, json!({"error": "server_error"}))
    } else if rt.starts_with("hang-") {
        tokio::time::sleep(Duration::from_secs(30)).await;
        json_response(200, fine)
    } else if let Some(rest) = rt.strip_prefix("close-") {
        if let Some(store) = closing {
            store.close().await;
        }
        json_response(
            200,
            json!({"access_token": "a", "token_type": "Bearer", "refresh_token": format!("ok-{rest}")}),
        )
    } else {
        json_response(400, json!({"error": "invalid_grant"}))
    }
}

async fn fake_provider() -> (Shared, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("http://{}{ISSUER_PATH}", listener.local_addr().unwrap());
    let shared = Arc::new(Mutex::new(Fake {
        issuer: issuer.clone(),
        secret: CLIENT_SECRET.into(),
        refreshes: 0,
        store_to_close: None,
    }));
    let app = Router::new()
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/jwks", get(jwks))
        .route("/token", post(token))
        .with_state(shared.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (shared, issuer)
}

fn settings(issuer: &str) -> OidcSettings {
    common::oidc_settings(issuer, CLIENT_SECRET, &["openid", "email"])
}

fn rp(issuer: &str) -> Arc<RelyingParty> {
    Arc::new(RelyingParty::new(settings(issuer), Arc::new(SystemClock)).unwrap())
}

#[tokio::test]
async fn every_refresh_answer_is_classified() {
    let (fake, issuer) = fake_provider().await;
    let rp = rp(&issuer);
    let ask = |t: &str| {
        let rp = rp.clone();
        let t = Secret::from(t);
        async move { rp.refresh(&t).await }
    };
    assert_eq!(ask("ok-1").await, RefreshAnswer::Ok { rotated: None });
    assert_eq!(
        ask("rotate-1").await,
        RefreshAnswer::Ok {
            rotated: Some(Secret::from("ok-1"))
        }
    );
    assert_eq!(ask("gone-1").await.code(), "invalid_grant");
    assert_eq!(ask("boom-1").await.code(), "provider_error");
    let started = std::time::Instant::now();
    assert_eq!(ask("hang-1").await.code(), "unreachable");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the timeout holds"
    );
    fake.lock().unwrap().secret = "rotated-secret".into();
    assert_eq!(ask("ok-1").await.code(), "invalid_client");

    // Nobody listening: unreachable, for the metadata as for the token endpoint.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let down = RelyingParty::new(settings(&closed), Arc::new(SystemClock)).unwrap();
    assert_eq!(
        down.refresh(&Secret::from("ok-1")).await.code(),
        "unreachable"
    );
}

#[tokio::test]
async fn a_sign_in_asks_for_offline_access_when_the_provider_offers_it() {
    let (_fake, issuer) = fake_provider().await;
    let auth = rp(&issuer).begin().await.unwrap();
    let url = auth.url.to_string();
    assert!(url.contains("offline_access"), "{url}");
}

const ISSUER_ROW: &str = "https://sso.example.org";

struct Site {
    db: common::TestDb,
    key: Arc<SealingKey>,
    fake: Shared,
    issuer: String,
}

/// A domain and one linked mailbox per token, `<token>@example.org` with its token sealed.
async fn site(backend: &common::Backend, tokens: &[&str]) -> Site {
    let (fake, issuer) = fake_provider().await;
    let db = common::fresh(backend).await;
    let s = &*db.store;
    let clock = ManualClock::at(1000);
    common::create_example_org(s).await;
    let key = Arc::new(SealingKey::derive(&AppPasswordKey::new(vec![9; 32])));
    for t in tokens {
        add_linked(s, &clock, &key, t).await;
    }
    Site {
        db,
        key,
        fake,
        issuer,
    }
}

async fn add_linked(s: &SqlStore, clock: &ManualClock, key: &SealingKey, token: &str) {
    let address = format!("{token}@example.org");
    let subject = format!("sub-{token}");
    provision::create_mailbox(
        s,
        clock,
        NewMailbox {
            address: Address::parse(&address).unwrap(),
            password_hash: None,
            auth_source: AuthSource::Oidc,
            display_name: "T".into(),
            quota: None,
            protocols: None,
            state: None,
            template: None,
            oidc_identity: Some((ISSUER_ROW.into(), subject.clone())),
            require_active_domain: false,
        },
    )
    .await
    .unwrap();
    if token.starts_with("none-") {
        return;
    }
    let sealed = key
        .seal(
            &Secret::from(token),
            Owner {
                address: &address,
                issuer: ISSUER_ROW,
                subject: &subject,
            },
        )
        .unwrap();
    s.record_sign_in(&address, clock.now(), Some(&sealed))
        .await
        .unwrap();
}

impl Site {
    fn liveness(&self) -> Liveness {
        self.liveness_on(self.db.dyn_store())
    }

    /// One pass with the default options; it must run to its end.
    async fn pass(&self) -> mailauthd::liveness::PassReport {
        self.liveness()
            .run_pass(&PassOptions::default())
            .await
            .unwrap()
    }

    fn liveness_on(&self, store: Arc<dyn Store>) -> Liveness {
        Liveness {
            store,
            rp: rp(&self.issuer),
            key: self.key.clone(),
            clock: Arc::new(SystemClock),
            settings: LivenessSettings {
                concurrency: 3,
                ..LivenessSettings::default()
            },
            request_timeout: Duration::from_secs(3),
        }
    }

    async fn suspended(&self) -> Vec<String> {
        let mut out = Vec::new();
        for m in self.db.store.linked_mailboxes(None).await.unwrap() {
            if m.suspension.is_some() {
                out.push(m.address);
            }
        }
        out
    }

    async fn token_of(&self, who: &str) -> Option<String> {
        let address = format!("{who}@example.org");
        let m = self
            .db
            .store
            .linked_mailboxes(Some(&address))
            .await
            .unwrap()
            .pop()
            .unwrap();
        let owner = Owner {
            address: &m.address,
            issuer: &m.issuer,
            subject: &m.subject,
        };
        match self.key.open(m.sealed_refresh_token.as_deref()?, owner) {
            Unsealed::Token(t) => Some(String::from_utf8(t.expose().to_vec()).unwrap()),
            Unsealed::Unusable(_) => None,
        }
    }
}

fn tokens(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i:02}")).collect()
}

/// [`site`] with `ok` mailboxes the provider keeps (`ok-00`…) and `others`.
async fn site_after_ok(backend: &common::Backend, ok: usize, others: &[impl AsRef<str>]) -> Site {
    let mut all = tokens("ok", ok);
    all.extend(others.iter().map(|o| o.as_ref().to_string()));
    let names: Vec<&str> = all.iter().map(String::as_str).collect();
    site(backend, &names).await
}

fn change_of(report: &mailauthd::liveness::PassReport, address: &str) -> (Answer, Change) {
    let c = report
        .mailboxes
        .iter()
        .find(|c| c.address == address)
        .unwrap_or_else(|| panic!("{address} not in the report"));
    (c.answer, c.change)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_refusal_among_many_is_suspended_and_a_rotated_token_kept() {
    for backend in common::backends() {
        let site = site_after_ok(&backend, 10, &["gone-1", "rotate-1", "none-1"]).await;
        let before = site
            .db
            .store
            .session_view("gone-1@example.org")
            .await
            .unwrap()
            .unwrap();
        let report = site.pass().await;
        assert_eq!(report.end, PassEnd::Applied, "{}", backend.name());
        assert_eq!(report.mailboxes.len(), 13);
        assert_eq!(
            change_of(&report, "gone-1@example.org"),
            (Answer::InvalidGrant, Change::Suspended)
        );
        assert_eq!(
            change_of(&report, "none-1@example.org"),
            (Answer::NoRefreshToken, Change::None)
        );
        assert_eq!(
            change_of(&report, "ok-03@example.org"),
            (Answer::Ok, Change::None)
        );
        assert_eq!(site.suspended().await, ["gone-1@example.org"]);
        assert_eq!(site.token_of("rotate-1").await.as_deref(), Some("ok-1"));
        let after = site
            .db
            .store
            .session_view("gone-1@example.org")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            after.credential_generation,
            before.credential_generation + 1,
            "page sessions end"
        );
        assert!(
            report.summary().starts_with("checked 13: "),
            "{}",
            report.summary()
        );

        // The next pass: still suspended, nothing new.
        let again = site.pass().await;
        assert_eq!(
            change_of(&again, "gone-1@example.org"),
            (Answer::InvalidGrant, Change::StillSuspended)
        );
        let standing = site
            .db
            .store
            .identity_standing("gone-1@example.org")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(standing.answer.as_deref(), Some("invalid_grant"));
        site.db.finish().await;
        eprintln!("liveness pass passed on {}", backend.name());
    }
}

#[tokio::test]
async fn a_provider_error_or_our_client_refused_suspends_nobody() {
    // `a-gone` is asked before the 500 (by address; no known prefix: invalid_grant).
    let site = site_after_ok(&common::Backend::Sqlite, 6, &["a-gone", "boom-1"]).await;
    let report = site.pass().await;
    assert_eq!(report.end, PassEnd::ProviderDown);
    assert!(report.problem().unwrap().contains("brake"));
    assert!(site.suspended().await.is_empty());
    assert_eq!(
        change_of(&report, "a-gone@example.org"),
        (Answer::InvalidGrant, Change::Withheld)
    );
    // Asked after the 500, or not at all: the pass stopped there.
    assert!(report
        .mailboxes
        .iter()
        .all(|c| c.change != Change::Suspended));

    site.fake.lock().unwrap().secret = "rotated".into();
    let report = site.pass().await;
    assert_eq!(report.end, PassEnd::ClientRefused);
    assert!(report.problem().unwrap().contains("invalid_client"));
    assert!(site.suspended().await.is_empty());
    site.db.finish().await;
}

#[tokio::test]
async fn a_hanging_provider_is_unreachable_and_stops_the_pass() {
    let site = site_after_ok(&common::Backend::Sqlite, 3, &["gone-1", "hang-1"]).await;
    let started = std::time::Instant::now();
    let report = site.pass().await;
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(report.end, PassEnd::ProviderDown);
    assert_eq!(
        change_of(&report, "hang-1@example.org").0,
        Answer::Unreachable
    );
    assert!(site.suspended().await.is_empty());
    site.db.finish().await;
}

#[tokio::test]
async fn more_refusals_than_the_share_hold_the_brake() {
    let site = site_after_ok(&common::Backend::Sqlite, 17, &tokens("gone", 3)).await;
    let report = site.pass().await;
    assert_eq!(
        report.end,
        PassEnd::Brake {
            refused: 3,
            allowed: 2
        }
    );
    assert!(site.suspended().await.is_empty());
    assert_eq!(
        change_of(&report, "gone-00@example.org"),
        (Answer::InvalidGrant, Change::Withheld)
    );
    site.db.finish().await;
}

#[tokio::test]
async fn dry_run_changes_nothing_but_keeps_a_rotated_token() {
    let site = site(&common::Backend::Sqlite, &["gone-1", "rotate-1", "ok-1"]).await;
    let options = PassOptions {
        only: None,
        dry_run: true,
    };
    let report = site.liveness().run_pass(&options).await.unwrap();
    assert_eq!(report.end, PassEnd::Applied);
    assert_eq!(
        change_of(&report, "gone-1@example.org"),
        (Answer::InvalidGrant, Change::Withheld)
    );
    assert!(site.suspended().await.is_empty());
    assert_eq!(site.token_of("rotate-1").await.as_deref(), Some("ok-1"));
    let standing = site
        .db
        .store
        .identity_standing("gone-1@example.org")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(standing.checked_at, None, "nothing recorded");
    site.db.finish().await;
}

#[tokio::test]
async fn the_lease_keeps_a_second_pass_out() {
    let site = site(&common::Backend::Sqlite, &["ok-1"]).await;
    let now = SystemClock.now();
    assert!(site
        .db
        .store
        .take_check_lease("someone-else", now, now + 300)
        .await
        .unwrap());
    let refused = site.liveness().run_pass(&PassOptions::default()).await;
    assert!(matches!(refused, Err(PassError::Busy)), "{refused:?}");
    assert_eq!(site.fake.lock().unwrap().refreshes, 0, "nobody was asked");
    site.db
        .store
        .release_check_lease("someone-else")
        .await
        .unwrap();
    assert!(site
        .liveness()
        .run_pass(&PassOptions::default())
        .await
        .is_ok());

    // A pass waiting on a provider that hangs holds the lease: a second one is told so.
    add_linked(&site.db.store, &ManualClock::at(1000), &site.key, "hang-1").await;
    let first = site.liveness();
    let running = tokio::spawn(async move { first.run_pass(&PassOptions::default()).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = site.liveness();
    let refused = second.run_pass(&PassOptions::default()).await;
    assert!(matches!(refused, Err(PassError::Busy)), "{refused:?}");
    let first = running.await.unwrap().unwrap();
    assert_eq!(first.end, PassEnd::ProviderDown);
    site.db.finish().await;
}

#[tokio::test]
async fn a_store_lost_mid_pass_suspends_nobody() {
    // One worker: "close-1" (after "a-gone") takes the store away while the pass runs.
    let site = site(&common::Backend::Sqlite, &["a-gone", "close-1", "ok-1"]).await;
    // `a-gone` is no known prefix: the fake answers invalid_grant.
    let second = Arc::new(
        mailauthd::store::open(&common::options(&site.db.url))
            .await
            .unwrap(),
    );
    site.fake.lock().unwrap().store_to_close = Some(second.clone());
    let mut liveness = site.liveness_on(second.clone());
    liveness.settings.concurrency = 1;
    let report = liveness.run_pass(&PassOptions::default()).await.unwrap();
    assert!(
        matches!(report.end, PassEnd::StoreDown(_)),
        "{:?}",
        report.end
    );
    assert!(report.problem().unwrap().contains("store"));
    assert!(site.suspended().await.is_empty(), "nobody suspended");
    assert!(report
        .mailboxes
        .iter()
        .all(|c| c.change != Change::Suspended));
    site.db.finish().await;
}

#[tokio::test]
async fn a_web_sign_in_lifts_the_suspension() {
    let site = site(&common::Backend::Sqlite, &["gone-1", "ok-1"]).await;
    site.pass().await;
    assert_eq!(site.suspended().await, ["gone-1@example.org"]);
    let mailbox = site
        .db
        .store
        .get_mailbox("gone-1@example.org")
        .await
        .unwrap()
        .unwrap();
    let claims = provision::SignInClaims {
        issuer: ISSUER_ROW.into(),
        subject: "sub-gone-1".into(),
        address: "gone-1@example.org".into(),
        email_verified: Some(true),
        display_name: None,
        template_values: Vec::new(),
    };
    provision::record_sign_in(
        &*site.db.store,
        &SystemClock,
        &site.key,
        &mailbox,
        &claims,
        Some(&Secret::from("ok-new")),
    )
    .await
    .unwrap();
    assert!(site.suspended().await.is_empty());
    assert_eq!(site.token_of("gone-1").await.as_deref(), Some("ok-new"));
    let report = site.pass().await;
    assert_eq!(
        change_of(&report, "gone-1@example.org"),
        (Answer::Ok, Change::None)
    );
    site.db.finish().await;
}

use common::Run;

/// [`common::mailauthd`] off the runtime's threads: the fake provider it talks to runs on them.
async fn mailauthd(config: &std::path::Path, args: &[&str], stdin: &str) -> Run {
    let config = config.to_path_buf();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let stdin = stdin.to_string();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        common::mailauthd(&config, &args, &stdin)
    })
    .await
    .unwrap()
}

/// A config on a SQLite store in `dir` with `[oidc]` at `issuer`; its store and key file
/// made, with one linked mailbox per token (see [`add_linked`]).
async fn cli_site(
    dir: &std::path::Path,
    issuer: &str,
    extra: &str,
    tokens: &[&str],
) -> std::path::PathBuf {
    let path = dir.join("mailauthd.toml");
    std::fs::write(
        &path,
        format!(
            "state_directory = {:?}\n[oidc]\nissuer = {issuer:?}\nclient_id = \"mailauthd\"\n\
             client_secret = {CLIENT_SECRET:?}\nredirect_url = \"http://127.0.0.1:1/callback\"\n\
             timeout_ms = 700\n{extra}",
            dir.join("state").display().to_string()
        ),
    )
    .unwrap();
    let config = mailauthd::config::load(&path).unwrap();
    let key = mailauthd::keyfile::load_or_create(&config.key_file).unwrap();
    let sealing = SealingKey::derive(&key);
    let store = mailauthd::store::open(&config.store).await.unwrap();
    store.migrate().await.unwrap();
    common::create_example_org(&store).await;
    for t in tokens {
        add_linked(&store, &ManualClock::at(SystemClock.now()), &sealing, t).await;
    }
    store.close().await;
    path
}

fn lines(run: &Run) -> Vec<&str> {
    run.stdout.lines().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idp_check_through_the_binary_prints_lines_and_exits_by_the_contract() {
    let (fake, issuer) = fake_provider().await;
    let dir = tempfile::tempdir().unwrap();
    let config = cli_site(
        dir.path(),
        &issuer,
        "",
        &["gone-1", "ok-1", "ok-2", "rotate-1", "none-1"],
    )
    .await;

    // An app password that works before the check.
    let created = mailauthd(
        &config,
        &[
            "app-password",
            "create",
            "gone-1@example.org",
            "--name",
            "phone",
            "--protocols",
            "imap",
        ],
        "",
    )
    .await;
    assert_eq!(created.code, 0, "{}{}", created.stdout, created.stderr);
    let secret = created
        .stdout
        .lines()
        .find(|l| l.starts_with("    ") && !l.trim().is_empty())
        .unwrap()
        .trim()
        .to_string();
    let login = |expect: i32| {
        let config = config.clone();
        let secret = secret.clone();
        async move {
            let run = mailauthd(
                &config,
                &["auth", "test", "gone-1@example.org", "--service", "imap"],
                &format!("{secret}\n"),
            )
            .await;
            assert_eq!(run.code, expect, "{}{}", run.stdout, run.stderr);
            run
        }
    };
    login(0).await;

    // --dry-run: would suspend, changes nothing, exit 0.
    let dry = mailauthd(&config, &["idp", "check", "--dry-run"], "").await;
    assert_eq!(dry.code, 0, "{}{}", dry.stdout, dry.stderr);
    assert!(
        lines(&dry).contains(&"gone-1@example.org\tinvalid_grant\twithheld"),
        "{}",
        dry.stdout
    );
    assert!(
        lines(&dry).contains(&"none-1@example.org\tno_refresh_token\tnone"),
        "{}",
        dry.stdout
    );
    login(0).await;

    // The real pass: suspended, exit 0, one line per mailbox and the summary.
    let run = mailauthd(&config, &["idp", "check"], "").await;
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let out = lines(&run);
    assert_eq!(out.len(), 6, "{}", run.stdout);
    assert!(out.contains(&"gone-1@example.org\tinvalid_grant\tsuspended"));
    assert!(out.contains(&"ok-1@example.org\tok\tnone"));
    assert!(out.contains(&"rotate-1@example.org\tok\tnone"));
    assert!(out[5].starts_with("checked 5:"), "{}", out[5]);

    // The app password is refused with the reason in the audit line; mail still arrives
    // (the mailbox is there and active).
    let refused = login(1).await;
    assert!(
        refused.stdout.contains("identity_revoked"),
        "{}",
        refused.stdout
    );
    assert!(
        refused.stderr.contains("reason=\"identity_revoked\""),
        "the audit line: {}",
        refused.stderr
    );
    let show = mailauthd(&config, &["mailbox", "show", "gone-1@example.org"], "").await;
    let identity = show
        .stdout
        .lines()
        .find(|l| l.starts_with("identity:"))
        .unwrap_or_else(|| panic!("{}", show.stdout));
    assert!(
        identity.contains("suspended") && identity.contains("identity_revoked"),
        "{identity}"
    );
    let ok_show = mailauthd(&config, &["mailbox", "show", "ok-1@example.org"], "").await;
    assert!(
        ok_show
            .stdout
            .lines()
            .any(|l| l.starts_with("identity:") && l.contains(" ok")),
        "{}",
        ok_show.stdout
    );
    assert!(show.stdout.contains("active"));

    // One mailbox only; still suspended.
    let one = mailauthd(&config, &["idp", "check", "gone-1@example.org"], "").await;
    assert_eq!(one.code, 0);
    assert_eq!(
        lines(&one)[0],
        "gone-1@example.org\tinvalid_grant\tstill_suspended"
    );

    // Usage: an unknown or unlinked address.
    for address in ["nobody@example.org", "not an address"] {
        let bad = mailauthd(&config, &["idp", "check", address], "").await;
        assert_eq!(bad.code, 2, "{address}: {}{}", bad.stdout, bad.stderr);
    }

    // Our client refused: exit 1, nobody suspended, the message says why.
    fake.lock().unwrap().secret = "rotated".into();
    let client = mailauthd(&config, &["idp", "check"], "").await;
    assert_eq!(client.code, 1, "{}{}", client.stdout, client.stderr);
    assert!(
        client.stderr.contains("invalid_client"),
        "{}",
        client.stderr
    );
    fake.lock().unwrap().secret = CLIENT_SECRET.into();

    // The provider down: exit 3 and a message that says so.
    let down_dir = tempfile::tempdir().unwrap();
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let down = cli_site(down_dir.path(), &closed, "", &["gone-1", "ok-1"]).await;
    let run = mailauthd(&down, &["idp", "check"], "").await;
    assert_eq!(run.code, 3, "{}{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("unreachable"), "{}", run.stderr);
    assert!(
        lines(&run).iter().all(|l| !l.ends_with("\tsuspended")),
        "{}",
        run.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idp_check_holds_the_brake_with_exit_1() {
    let (_fake, issuer) = fake_provider().await;
    let dir = tempfile::tempdir().unwrap();
    let config = cli_site(
        dir.path(),
        &issuer,
        "liveness_max_suspend_percent = 10\n",
        &["gone-1", "gone-2", "ok-1"],
    )
    .await;
    let run = mailauthd(&config, &["idp", "check"], "").await;
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("brake"), "{}", run.stderr);
    assert!(lines(&run).contains(&"gone-1@example.org\tinvalid_grant\twithheld"));
    let show = mailauthd(&config, &["mailbox", "show", "gone-1@example.org"], "").await;
    assert!(
        show.stdout
            .lines()
            .any(|l| l.starts_with("identity:") && !l.contains("suspended")),
        "{}",
        show.stdout
    );
}

/// `mailauthd serve` with `[oidc] liveness_check_hours` set runs passes by itself: here
/// every ~1 s. Waits up to 20 s for `done`, then stops the daemon (SIGTERM) and returns its
/// log.
async fn serve_until(
    dir: &std::path::Path,
    config: &std::path::Path,
    done: impl Fn(&str) -> bool,
) -> String {
    let log_path = dir.join("daemon.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_mailauthd"))
        .arg("--config")
        .arg(config)
        .arg("serve")
        .env_remove("MAILAUTHD_CONFIG")
        .env_remove("MAILAUTHD_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut text = String::new();
    while std::time::Instant::now() < deadline {
        text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if done(&text) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = std::process::Command::new("kill")
        .arg(child.id().to_string())
        .status();
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(
        status.success(),
        "the daemon stops cleanly: {status:?}\n{text}"
    );
    std::fs::read_to_string(&log_path).unwrap_or_default()
}

async fn suspended_in(config: &std::path::Path) -> Vec<String> {
    let config = mailauthd::config::load(config).unwrap();
    let store = mailauthd::store::open(&config.store).await.unwrap();
    let out = store
        .linked_mailboxes(None)
        .await
        .unwrap()
        .into_iter()
        .filter(|m| m.suspension.is_some())
        .map(|m| m.address)
        .collect();
    store.close().await;
    out
}

/// [`cli_site`] with a runtime directory in `dir`, for a daemon to serve from.
async fn daemon_site(
    dir: &std::path::Path,
    issuer: &str,
    extra: &str,
    tokens: &[&str],
) -> std::path::PathBuf {
    std::fs::create_dir_all(dir.join("run")).unwrap();
    let config = cli_site(dir, issuer, extra, tokens).await;
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!("runtime_directory = {:?}\n{text}", dir.join("run")),
    )
    .unwrap();
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_checks_by_itself_and_logs_the_brake() {
    let (_fake, issuer) = fake_provider().await;
    let every = "liveness_check_hours = 0.0003\n";

    let dir = tempfile::tempdir().unwrap();
    let config = daemon_site(dir.path(), &issuer, every, &["gone-1", "ok-1", "ok-2"]).await;
    let log = serve_until(dir.path(), &config, |log| {
        log.contains("identity check done")
    })
    .await;
    assert!(log.contains("identity check done"), "{log}");
    assert_eq!(suspended_in(&config).await, ["gone-1@example.org"], "{log}");

    let dir = tempfile::tempdir().unwrap();
    let config = daemon_site(dir.path(), &issuer, every, &["gone-1", "gone-2", "ok-1"]).await;
    let log = serve_until(dir.path(), &config, |log| log.contains("brake")).await;
    assert!(
        log.lines()
            .any(|l| l.contains("ERROR") && l.contains("brake")),
        "{log}"
    );
    assert!(suspended_in(&config).await.is_empty(), "{log}");
}

/// Not a test: how long one pass over many linked mailboxes takes against the fake
/// provider on loopback (`bench/liveness-pass.sh` runs it). No timing is asserted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run with bench/liveness-pass.sh"]
async fn bench_one_pass_over_many_linked_mailboxes() {
    let n: usize = std::env::var("BENCH_MAILBOXES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let concurrency: usize = std::env::var("BENCH_CONCURRENCY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let site = site(&common::Backend::Sqlite, &[]).await;
    let clock = ManualClock::at(1000);
    let started = std::time::Instant::now();
    for i in 0..n {
        // One in a hundred refused: under the 10 % brake, so the pass suspends them.
        let token = if i % 100 == 0 {
            format!("gone-{i:05}")
        } else {
            format!("ok-{i:05}")
        };
        add_linked(&site.db.store, &clock, &site.key, &token).await;
    }
    let populated = started.elapsed();
    let mut liveness = site.liveness();
    liveness.settings.concurrency = concurrency;
    let started = std::time::Instant::now();
    let report = liveness.run_pass(&PassOptions::default()).await.unwrap();
    let took = started.elapsed();
    assert_eq!(report.end, PassEnd::Applied);
    println!(
        "liveness pass: {n} linked mailboxes, concurrency {concurrency}: {:.2} s \
         ({:.0} mailboxes/s); {}; populating took {:.1} s",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64(),
        report.summary(),
        populated.as_secs_f64()
    );
    site.db.finish().await;
}

fn metrics() -> String {
    mailauthd::metrics::render(&mailauthd::metrics::Levels {
        hash_pool_depth: 0,
        hash_pool_workers: 0,
        verify_cache_entries: 0,
    })
}

fn counter(text: &str, series: &str) -> f64 {
    common::series(text, series).unwrap_or(0.0)
}

/// The metrics the contract names move with a pass (other tests of this binary may move
/// them too, so only growth is checked).
#[tokio::test]
async fn a_pass_counts_answers_suspensions_and_brakes() {
    let checks = r#"mailauthd_identity_checks_total{answer="invalid_grant"}"#;
    let suspensions = "mailauthd_identity_suspensions_total";
    let brakes = "mailauthd_identity_check_brake_total";
    let before = metrics();
    let first = site(&common::Backend::Sqlite, &["gone-1", "ok-1", "ok-2"]).await;
    first.pass().await;
    let after = metrics();
    assert!(
        counter(&after, checks) >= counter(&before, checks) + 1.0,
        "{after}"
    );
    assert!(
        counter(&after, suspensions) >= counter(&before, suspensions) + 1.0,
        "{after}"
    );
    let braked = site(&common::Backend::Sqlite, &["gone-1", "gone-2", "ok-1"]).await;
    let report = braked.pass().await;
    assert!(matches!(report.end, PassEnd::Brake { .. }));
    let last = metrics();
    assert!(
        counter(&last, brakes) >= counter(&after, brakes) + 1.0,
        "{last}"
    );
    first.db.finish().await;
    braked.db.finish().await;
}

/// A key file replaced since the tokens were sealed: they do not open, which is "no
/// refresh token", never a refusal; the provider is not even asked.
#[tokio::test]
async fn tokens_sealed_under_another_key_file_are_no_refresh_token() {
    let site = site(&common::Backend::Sqlite, &["gone-1", "ok-1"]).await;
    let mut liveness = site.liveness();
    liveness.key = Arc::new(SealingKey::derive(&AppPasswordKey::new(vec![1; 32])));
    let report = liveness.run_pass(&PassOptions::default()).await.unwrap();
    assert_eq!(report.end, PassEnd::Applied);
    assert!(report
        .mailboxes
        .iter()
        .all(|c| (c.answer, c.change) == (Answer::NoRefreshToken, Change::None)));
    assert!(site.suspended().await.is_empty());
    assert_eq!(site.fake.lock().unwrap().refreshes, 0);
    site.db.finish().await;
}
