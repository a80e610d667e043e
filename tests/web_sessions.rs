//! Page sessions in the store and back-channel logout, over real HTTP, on every backend:
//! two daemons on one database share sessions, a session survives a restart, a logout
//! token from the provider ends the sessions it names on both, forged and replayed tokens
//! are refused with the sessions untouched, a flood of anonymous sessions stays bounded,
//! and a store that is gone answers 503.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "common/web_site.rs"]
mod web_site;

use std::sync::Arc;

use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use base64::Engine;
use openidconnect::core::CoreRsaPrivateSigningKey;
use openidconnect::{JsonWebKeyId, PrivateSigningKey};
use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::sign::Signer;
use reqwest::StatusCode;
use serde_json::{json, Value};

use mailauthd::auth::password::{hash_argon2id, Argon2Params};
use mailauthd::clock::SystemClock;
use mailauthd::names::{Address, Protocols};
use mailauthd::provision::{self, NewMailbox};
use mailauthd::runtime::Core;
use mailauthd::store::*;
use mailauthd::web::session::{digest, random_token, COOKIE};
use web_site::{Page, Site};

const KEY_PEM: &str = include_str!("fixtures/oidc-test-rsa.pem");
const EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// Key set fetches from every fake provider of this file.
static JWKS_FETCHES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A provider that publishes discovery and the fixture key, and nothing else: the page
/// only needs its issuer and keys to check logout tokens.
async fn provider() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("http://{}", listener.local_addr().unwrap());
    let doc = common::discovery_document(&issuer);
    let key = CoreRsaPrivateSigningKey::from_pem(KEY_PEM, Some(JsonWebKeyId::new("k1".into())))
        .unwrap()
        .as_verification_key();
    let keys = json!({ "keys": [key] });
    let app = Router::new()
        .route(
            "/.well-known/openid-configuration",
            get(move || async move { json_body(&doc) }),
        )
        .route(
            "/jwks",
            get(move || async move {
                JWKS_FETCHES.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                json_body(&keys)
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    issuer
}

fn json_body(v: &Value) -> axum::response::Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn sign_with(pem: &[u8], header: &Value, claims: &Value) -> String {
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let key = PKey::private_key_from_pem(pem).unwrap();
    let mut signer = Signer::new(MessageDigest::sha256(), &key).unwrap();
    signer.update(input.as_bytes()).unwrap();
    format!("{input}.{}", b64(&signer.sign_to_vec().unwrap()))
}

fn logout_claims(issuer: &str, sid: Option<&str>, sub: Option<&str>, jti: &str) -> Value {
    let mut c = json!({
        "iss": issuer,
        "aud": "mail",
        "iat": chrono::Utc::now().timestamp(),
        "jti": jti,
        "events": {EVENT: {}},
    });
    if let Some(s) = sid {
        c["sid"] = json!(s);
    }
    if let Some(s) = sub {
        c["sub"] = json!(s);
    }
    c
}

fn logout_token(claims: &Value) -> String {
    let header = json!({"alg": "RS256", "kid": "k1", "typ": "logout+jwt"});
    sign_with(KEY_PEM.as_bytes(), &header, claims)
}

/// One daemon's web page (and its core) on the database at `url`.
struct Daemon {
    site: Site,
    core: Core,
    server: mailauthd::web::WebServer,
    _dir: tempfile::TempDir,
}

async fn daemon(url: &str, issuer: &str, extra_web: &str) -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "state_directory = {:?}\nruntime_directory = {:?}\n[store]\nurl = {url:?}\n\
         [credentials]\nargon2_memory_kib = 8192\nargon2_iterations = 1\n\
         [oidc]\nissuer = \"{issuer}\"\nclient_id = \"mail\"\nclient_secret = \"s3cret\"\n\
         redirect_url = \"http://127.0.0.1:9/callback\"\ntimeout_ms = 2000\n\
         [web]\nlisten = \"127.0.0.1:0\"\ntitle = \"Test Mail\"\nsecure_cookies = false\n{extra_web}\n",
        dir.path().join("state"),
        dir.path().join("run"),
    );
    let config = mailauthd::config::parse(&text).unwrap();
    let core = Core::start(&config).await.unwrap();
    let store: Arc<dyn Store> = core.store.clone();
    let state = mailauthd::web::state(
        config.web.clone().unwrap(),
        config.oidc.as_ref(),
        &config.metrics,
        None,
        store,
        core.auth.clone(),
        Arc::new(SystemClock),
    )
    .unwrap();
    let server = mailauthd::web::start(state, &mut mailauthd::activation::Activated::default())
        .await
        .unwrap();
    let site = Site {
        base: format!("http://{}", server.local_addr),
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
    };
    Daemon {
        site,
        core,
        server,
        _dir: dir,
    }
}

impl Daemon {
    async fn stop(self) {
        self.server.stop().await;
        self.core.shutdown().await;
    }

    async fn logout(&self, token: &str) -> Page {
        self.site
            .post("/backchannel-logout", None, &[("logout_token", token)])
            .await
    }
}

/// Signs alice in with her password through the form; her session cookie.
async fn alice_cookie(site: &Site) -> String {
    site.sign_in_form("alice@example.org", "alice-password-1", None)
        .await
        .cookie
        .unwrap()
}

/// The domain and three mailboxes: a password one and two of the provider.
async fn populate(store: &dyn Store, issuer: &str) {
    store
        .create_domain(&Domain {
            name: "example.org".into(),
            active: true,
            max_mailboxes: None,
            max_quota: None,
            total_quota: None,
            created_at: 1,
        })
        .await
        .unwrap();
    let cheap = Argon2Params {
        memory_kib: 8192,
        iterations: 1,
        parallelism: 1,
    };
    for (address, source, subject) in [
        ("alice@example.org", AuthSource::Local, None),
        ("bob@example.org", AuthSource::Oidc, Some("sub-bob")),
        ("carol@example.org", AuthSource::Oidc, Some("sub-carol")),
    ] {
        provision::create_mailbox(
            store,
            &SystemClock,
            NewMailbox {
                address: Address::parse(address).unwrap(),
                password_hash: Some(hash_argon2id(b"alice-password-1", cheap).unwrap()),
                auth_source: source,
                display_name: String::new(),
                quota: None,
                protocols: Some(Protocols::parse_list("imap,smtp").unwrap()),
                state: None,
                template: None,
                oidc_identity: subject.map(|s| (issuer.to_string(), s.to_string())),
                require_active_domain: false,
            },
        )
        .await
        .unwrap();
    }
}

/// A session signed in through the provider, as the callback stores it; returns the cookie.
async fn provider_session(
    store: &dyn Store,
    issuer: &str,
    mailbox: &str,
    subject: &str,
    sid: &str,
) -> String {
    let generation = store
        .session_view(mailbox)
        .await
        .unwrap()
        .unwrap()
        .credential_generation;
    let id = random_token().unwrap();
    let now = chrono::Utc::now().timestamp();
    let session = WebSession {
        csrf: random_token().unwrap(),
        created_at: now,
        expires_at: now + 3600,
        user: Some(SessionUser {
            mailbox: mailbox.into(),
            generation,
            via: SignedInWith::Provider {
                id_token: "header.claims.signature".into(),
                issuer: issuer.into(),
                subject: subject.into(),
                sid: Some(sid.into()),
            },
        }),
        pending: None,
        notice: None,
    };
    store
        .create_web_session(&digest(&id), &session)
        .await
        .unwrap();
    format!("{COOKIE}={id}")
}

/// Whether the cookie opens the mailbox page of `address` on this site.
async fn signed_in_as(site: &Site, cookie: &str, address: &str) -> bool {
    let page = site.get("/", Some(cookie)).await;
    page.status == StatusCode::OK
        && page.body.contains(address)
        && !page.body.contains("/login/password")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_page_session_survives_a_restart_and_works_on_the_other_daemon() {
    let issuer = provider().await;
    for backend in common::backends() {
        let db = common::fresh(&backend).await;
        populate(&*db.store, &issuer).await;
        let a = daemon(&db.url, &issuer, "").await;
        let b = daemon(&db.url, &issuer, "").await;
        let signed = a
            .site
            .sign_in_form("alice@example.org", "alice-password-1", None)
            .await;
        assert_eq!(signed.status, StatusCode::SEE_OTHER, "{}", signed.body);
        let cookie = signed.cookie.clone().unwrap();
        assert!(signed_in_as(&a.site, &cookie, "alice@example.org").await);
        assert!(
            signed_in_as(&b.site, &cookie, "alice@example.org").await,
            "{}: the other daemon knows the session",
            backend.name()
        );
        // The store keeps the digest, never the id.
        let id = cookie.split_once('=').unwrap().1;
        assert!(db.store.web_session(id, 0).await.unwrap().is_none());
        assert!(db
            .store
            .web_session(&digest(id), 0)
            .await
            .unwrap()
            .is_some());

        // A restart of A: still signed in, through A and B.
        a.stop().await;
        let a = daemon(&db.url, &issuer, "").await;
        assert!(
            signed_in_as(&a.site, &cookie, "alice@example.org").await,
            "{}: the session outlived the restart",
            backend.name()
        );
        // A form of A's page posted to B: the CSRF token is the session's, on both.
        let page = a.site.get("/", Some(&cookie)).await;
        let csrf = page.csrf();
        let out = b
            .site
            .post("/logout", Some(&cookie), &[("csrf", &csrf)])
            .await;
        assert_eq!(out.status, StatusCode::SEE_OTHER, "{}", out.body);
        assert!(!signed_in_as(&a.site, &cookie, "alice@example.org").await);
        a.stop().await;
        b.stop().await;
        db.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_logout_token_ends_the_named_sessions_on_both_daemons_and_nothing_else() {
    let issuer = provider().await;
    for backend in common::backends() {
        let name = backend.name();
        let db = common::fresh(&backend).await;
        let store = db.dyn_store();
        populate(&*store, &issuer).await;
        let a = daemon(&db.url, &issuer, "").await;
        let b = daemon(&db.url, &issuer, "").await;
        let bob_1 = provider_session(&*store, &issuer, "bob@example.org", "sub-bob", "sid-1").await;
        let bob_2 = provider_session(&*store, &issuer, "bob@example.org", "sub-bob", "sid-2").await;
        let carol =
            provider_session(&*store, &issuer, "carol@example.org", "sub-carol", "sid-9").await;
        let alice = alice_cookie(&a.site).await;
        for site in [&a.site, &b.site] {
            assert!(
                signed_in_as(site, &bob_1, "bob@example.org").await,
                "{name}"
            );
            assert!(signed_in_as(site, &bob_2, "bob@example.org").await);
        }

        // Forged: signed by another key under the provider's kid; unsigned; HS256 with
        // the public key as the secret; for another client; too old. All 400, nothing ends.
        let good = logout_claims(&issuer, Some("sid-1"), Some("sub-bob"), "jti-1");
        let stranger = openssl::rsa::Rsa::generate(2048).unwrap();
        let stranger_pem = stranger.private_key_to_pem().unwrap();
        let forged = sign_with(&stranger_pem, &json!({"alg": "RS256", "kid": "k1"}), &good);
        let unsigned = format!(
            "{}.{}.",
            b64(br#"{"alg":"none"}"#),
            b64(good.to_string().as_bytes())
        );
        let hs256 = {
            use hmac::{Hmac, Mac};
            let input = format!(
                "{}.{}",
                b64(br#"{"alg":"HS256","kid":"k1"}"#),
                b64(good.to_string().as_bytes())
            );
            let public = PKey::private_key_from_pem(KEY_PEM.as_bytes())
                .unwrap()
                .public_key_to_pem()
                .unwrap();
            let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&public).unwrap();
            mac.update(input.as_bytes());
            format!("{input}.{}", b64(&mac.finalize().into_bytes()))
        };
        let mut other_client = good.clone();
        other_client["aud"] = json!("someone-else");
        let mut old = good.clone();
        old["iat"] = json!(chrono::Utc::now().timestamp() - 3600);
        let mut with_nonce = good.clone();
        with_nonce["nonce"] = json!("n");
        for (what, token) in [
            ("forged", forged),
            ("unsigned", unsigned),
            ("hs256", hs256),
            ("other client", logout_token(&other_client)),
            ("too old", logout_token(&old)),
            ("nonce", logout_token(&with_nonce)),
            ("garbage", "not-a-jwt".to_string()),
        ] {
            let answer = a.logout(&token).await;
            assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{name}: {what}");
            let body: Value = serde_json::from_str(&answer.body).unwrap();
            assert_eq!(body["error"], "invalid_request", "{what}");
        }
        let no_field = a
            .site
            .post("/backchannel-logout", None, &[("x", "y")])
            .await;
        assert_eq!(no_field.status, StatusCode::BAD_REQUEST);
        assert!(
            signed_in_as(&b.site, &bob_1, "bob@example.org").await,
            "{name}: untouched"
        );

        // The real one, to A: bob's sid-1 session ends on A and on B; his other stays.
        let token = logout_token(&good);
        let answer = a.logout(&token).await;
        assert_eq!(answer.status, StatusCode::OK, "{name}: {}", answer.body);
        assert!(answer.header("cache-control").contains("no-store"));
        for site in [&a.site, &b.site] {
            assert!(
                !signed_in_as(site, &bob_1, "bob@example.org").await,
                "{name}: ended"
            );
            assert!(
                signed_in_as(site, &bob_2, "bob@example.org").await,
                "{name}: other sid"
            );
        }
        // Replayed to B: refused, and a session begun since with that sid stays.
        let bob_again =
            provider_session(&*store, &issuer, "bob@example.org", "sub-bob", "sid-1").await;
        let replay = b.logout(&token).await;
        assert_eq!(replay.status, StatusCode::BAD_REQUEST, "{name}: replay");
        assert!(replay.body.contains("replayed"), "{}", replay.body);
        assert!(signed_in_as(&a.site, &bob_again, "bob@example.org").await);

        // By sub alone, to B: every session of bob ends; carol's and alice's stay.
        let by_sub = logout_token(&logout_claims(&issuer, None, Some("sub-bob"), "jti-2"));
        assert_eq!(b.logout(&by_sub).await.status, StatusCode::OK);
        for cookie in [&bob_2, &bob_again] {
            assert!(!signed_in_as(&a.site, cookie, "bob@example.org").await);
        }
        assert!(signed_in_as(&a.site, &carol, "carol@example.org").await);
        assert!(signed_in_as(&b.site, &alice, "alice@example.org").await);
        // Mail logins are not suspended by a page logout.
        let bob_box = store.get_mailbox("bob@example.org").await.unwrap().unwrap();
        assert_eq!(bob_box.state, MailboxState::Active);

        let metrics = mailauthd::metrics::render(&mailauthd::metrics::Levels {
            hash_pool_depth: 0,
            hash_pool_workers: 0,
            verify_cache_entries: 0,
        });
        let ok = "mailauthd_backchannel_logouts_total{result=\"ok\",reason=\"ok\"}";
        let replayed =
            "mailauthd_backchannel_logouts_total{result=\"refused\",reason=\"replayed\"}";
        assert!(
            common::series(&metrics, ok).is_some_and(|n| n >= 2.0),
            "a counter by outcome: {metrics}"
        );
        assert!(common::series(&metrics, replayed).is_some());
        a.stop().await;
        b.stop().await;
        db.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_anonymous_sessions_stays_bounded_and_signed_in_people_stay() {
    let issuer = provider().await;
    for backend in common::backends() {
        let db = common::fresh(&backend).await;
        populate(&*db.store, &issuer).await;
        let a = daemon(&db.url, &issuer, "max_anonymous_sessions = 25").await;
        let alice = alice_cookie(&a.site).await;
        // Every visit without a cookie makes an anonymous session (the form's CSRF token).
        for _ in 0..120 {
            let page = a.site.get("/", None).await;
            assert_eq!(page.status, StatusCode::OK);
            assert!(page.cookie.is_some());
        }
        let stored = anonymous_rows(&db.url).await;
        assert!(
            stored <= 25,
            "{}: {stored} anonymous sessions kept, the cap is 25",
            backend.name()
        );
        assert!(stored >= 20, "{stored}: the newest are kept");
        assert!(signed_in_as(&a.site, &alice, "alice@example.org").await);
        a.stop().await;
        db.finish().await;
    }
}

/// Anonymous rows in the sessions table, counted straight in the database.
async fn anonymous_rows(url: &str) -> i64 {
    use sqlx::Connection;
    let sql = "SELECT COUNT(*) FROM web_sessions WHERE mailbox IS NULL";
    if url.starts_with("mysql") {
        let mut c = sqlx::MySqlConnection::connect(url).await.unwrap();
        sqlx::query_scalar(sql).fetch_one(&mut c).await.unwrap()
    } else if url.starts_with("postgres") {
        let mut c = sqlx::PgConnection::connect(url).await.unwrap();
        sqlx::query_scalar(sql).fetch_one(&mut c).await.unwrap()
    } else {
        let mut c = sqlx::SqliteConnection::connect(url).await.unwrap();
        sqlx::query_scalar(sql).fetch_one(&mut c).await.unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_that_is_gone_answers_503_and_keeps_the_session() {
    let issuer = provider().await;
    for backend in common::backends() {
        let db = common::fresh(&backend).await;
        populate(&*db.store, &issuer).await;
        let a = daemon(&db.url, &issuer, "").await;
        let cookie = alice_cookie(&a.site).await;
        // The daemon's database goes away under it.
        a.core.store.inner().close().await;
        for (path, cookie) in [("/", Some(cookie.as_str())), ("/", None), ("/login", None)] {
            let page = a.site.get(path, cookie).await;
            assert_eq!(
                page.status,
                StatusCode::SERVICE_UNAVAILABLE,
                "{}: {path}: {}",
                backend.name(),
                page.body
            );
            assert!(page.body.contains("unavailable"), "{}", page.body);
            assert!(page.cookie.is_none(), "no cookie cleared or replaced");
        }
        let token = logout_token(&logout_claims(&issuer, Some("s"), None, "j"));
        let answer = a.logout(&token).await;
        assert_eq!(
            answer.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            answer.body
        );
        // Back with a fresh daemon: the session was never lost.
        let b = daemon(&db.url, &issuer, "").await;
        assert!(signed_in_as(&b.site, &cookie, "alice@example.org").await);
        b.stop().await;
        a.server.stop().await;
        db.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kids_and_big_bodies_cannot_make_the_page_hammer_the_provider() {
    let issuer = provider().await;
    let backend = common::Backend::Sqlite;
    let db = common::fresh(&backend).await;
    populate(&*db.store, &issuer).await;
    let a = daemon(&db.url, &issuer, "").await;
    let claims = logout_claims(&issuer, Some("s"), None, "j-kid");
    let before = JWKS_FETCHES.load(std::sync::atomic::Ordering::SeqCst);
    for n in 0..10 {
        let header = json!({"alg": "RS256", "kid": format!("made-up-{n}")});
        let token = sign_with(KEY_PEM.as_bytes(), &header, &claims);
        let answer = a.logout(&token).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.body);
        assert!(answer.body.contains("kid"), "{}", answer.body);
    }
    let fetched = JWKS_FETCHES.load(std::sync::atomic::Ordering::SeqCst) - before;
    // The first load, and no refetch within 30 s of it however many unknown kids come.
    assert!(
        fetched <= 2,
        "{fetched} key set fetches for 10 unknown kids"
    );
    assert!(fetched >= 1);
    // A body past the page's 16 KiB limit is refused before it is read.
    let big = "a".repeat(20 * 1024);
    let answer = a.logout(&big).await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    a.stop().await;
    db.finish().await;
}
