//! The decision table: a row for every rule of the decision core, on every backend.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::type_complexity
)]

mod common;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use mailauthd::auth::app_password::{self, AppPasswordKey};
use mailauthd::auth::last_use::LastUseWriter;
use mailauthd::auth::password::{self, Argon2Params};
use mailauthd::auth::pool::HashPool;
use mailauthd::auth::services::ServiceMap;
use mailauthd::auth::throttle::{Fingerprinter, Throttle, ThrottleConfig};
use mailauthd::auth::verify_cache::{VerifyCache, VerifyCacheConfig};
use mailauthd::auth::{
    AuthRequest, Authenticator, AuthenticatorParts, Credential, Outcome, SecretKind, TempCause,
    TokenChallenge, TokenError, TokenIdentity, TokenRefusal, TokenVerifier,
};
use mailauthd::clock::ManualClock;
use mailauthd::names::{Address, Protocols};
use mailauthd::provision::{self, NewMailbox};
use mailauthd::secret::Secret;
use mailauthd::store::*;

const NOW: i64 = 1_800_000_000;
const CHEAP: Argon2Params = Argon2Params {
    memory_kib: 256,
    iterations: 1,
    parallelism: 1,
};
const LEGACY_HASH: &str = "{SHA512-CRYPT}$6$.o4raixH9rMjfmnA$JkvuDXKjQuxI20v1Pel0o7Ee27eXvcF0FqmdLbVsLEwXTmY4IPkjy.L.XyRL72am6fwGXhoXOj9owvCT.qhxS0";
const LEGACY_PASSWORD: &str = "correct horse battery staple";

struct Fixture {
    auth: Authenticator,
    writer: LastUseWriter,
    apps: std::collections::HashMap<&'static str, (i64, Secret)>,
}

async fn mailbox(
    s: &dyn Store,
    address: &str,
    source: AuthSource,
    hash: Option<&str>,
    state: MailboxState,
    protocols: &str,
) {
    let new = NewMailbox {
        address: Address::parse(address).unwrap(),
        password_hash: hash.map(str::to_string),
        auth_source: source,
        display_name: String::new(),
        quota: Some(1 << 30),
        protocols: Some(Protocols::parse_list(protocols).unwrap()),
        state: Some(state),
        template: None,
        oidc_identity: None,
        require_active_domain: false,
    };
    provision::create_mailbox(s, &ManualClock::at(NOW), new)
        .await
        .unwrap();
}

async fn app(
    s: &dyn Store,
    key: &AppPasswordKey,
    mailbox: &str,
    protocols: &str,
    networks: &str,
    expires_at: Option<i64>,
) -> (i64, Secret) {
    let secret = app_password::generate().unwrap();
    let id = s
        .create_app_password(&NewAppPassword {
            mailbox: mailbox.into(),
            name: format!("app for {protocols}"),
            lookup_hash: key.lookup_hash(secret.expose()),
            protocols: Protocols::parse_list(protocols).unwrap(),
            networks: parse_networks(networks).unwrap(),
            expires_at,
            created_at: NOW - 100,
        })
        .await
        .unwrap();
    (id, secret)
}

async fn setup(store: Arc<dyn Store>, pool: Arc<HashPool>) -> Fixture {
    setup_with(store, pool, None).await
}

/// [`setup`] with `[oidc] max_days_without_sign_in` as seconds.
async fn setup_with(
    store: Arc<dyn Store>,
    pool: Arc<HashPool>,
    max_age_without_sign_in: Option<i64>,
) -> Fixture {
    // The table is about the rules; repeated refusals would only add delays here.
    // Throttling has its own suite, tests/throttle.rs.
    let throttle = ThrottleConfig {
        enabled: false,
        ..ThrottleConfig::default()
    };
    setup_full(store, pool, max_age_without_sign_in, None, throttle).await
}

/// [`setup_with`], with a token verifier and the throttle's settings.
async fn setup_full(
    store: Arc<dyn Store>,
    pool: Arc<HashPool>,
    max_age_without_sign_in: Option<i64>,
    tokens: Option<Arc<dyn TokenVerifier>>,
    throttle: ThrottleConfig,
) -> Fixture {
    let s = &*store;
    let pw = |p: &str| password::hash_argon2id(p.as_bytes(), CHEAP).unwrap();
    let d = |name: &str, active| Domain {
        name: name.into(),
        active,
        max_mailboxes: None,
        max_quota: None,
        total_quota: None,
        created_at: 0,
    };
    s.create_domain(&d("example.org", true)).await.unwrap();
    s.create_domain(&d("off.example", false)).await.unwrap();
    mailbox(
        s,
        "local@example.org",
        AuthSource::Local,
        Some(&pw("pw-local")),
        MailboxState::Active,
        "all",
    )
    .await;
    mailbox(
        s,
        "oidc@example.org",
        AuthSource::Oidc,
        Some(&pw("pw-oidc")),
        MailboxState::Active,
        "all",
    )
    .await;
    mailbox(
        s,
        "disabled@example.org",
        AuthSource::Local,
        Some(&pw("pw")),
        MailboxState::Disabled,
        "all",
    )
    .await;
    mailbox(
        s,
        "nologin@example.org",
        AuthSource::Local,
        Some(&pw("pw")),
        MailboxState::NoLogin,
        "all",
    )
    .await;
    mailbox(
        s,
        "imaponly@example.org",
        AuthSource::Local,
        Some(&pw("pw")),
        MailboxState::Active,
        "imap",
    )
    .await;
    mailbox(
        s,
        "user@off.example",
        AuthSource::Local,
        Some(&pw("pw")),
        MailboxState::Active,
        "all",
    )
    .await;
    mailbox(
        s,
        "legacy@example.org",
        AuthSource::Local,
        Some(LEGACY_HASH),
        MailboxState::Active,
        "all",
    )
    .await;
    mailbox(
        s,
        "broken@example.org",
        AuthSource::Local,
        Some("{NOPE}abc"),
        MailboxState::Active,
        "all",
    )
    .await;
    mailbox(
        s,
        "noprotocols@example.org",
        AuthSource::Local,
        Some(&pw("pw")),
        MailboxState::Active,
        "none",
    )
    .await;
    mailbox(
        s,
        "nopass@example.org",
        AuthSource::Local,
        None,
        MailboxState::Active,
        "all",
    )
    .await;

    let key = AppPasswordKey::new(vec![42; 32]);
    let mut apps = std::collections::HashMap::new();
    apps.insert(
        "imap",
        app(s, &key, "oidc@example.org", "imap", "", None).await,
    );
    apps.insert(
        "all",
        app(s, &key, "oidc@example.org", "all", "", Some(NOW + 86_400)).await,
    );
    apps.insert(
        "expired",
        app(s, &key, "oidc@example.org", "all", "", Some(NOW - 1)).await,
    );
    apps.insert(
        "net",
        app(
            s,
            &key,
            "oidc@example.org",
            "all",
            "192.0.2.0/24,2001:db8::/32",
            None,
        )
        .await,
    );
    apps.insert(
        "revoked",
        app(s, &key, "oidc@example.org", "all", "", None).await,
    );
    apps.insert(
        "local",
        app(s, &key, "local@example.org", "all", "", None).await,
    );
    apps.insert(
        "imaponly-all",
        app(s, &key, "imaponly@example.org", "all", "", None).await,
    );
    let revoked = apps["revoked"].0;
    s.delete_app_password("oidc@example.org", revoked)
        .await
        .unwrap();

    let (sender, writer) = LastUseWriter::spawn(store.clone(), Duration::from_millis(20), 100);
    let auth = Authenticator::new(AuthenticatorParts {
        store,
        key,
        pool,
        clock: Arc::new(ManualClock::at(NOW)),
        services: ServiceMap::default(),
        argon2: CHEAP,
        rehash_on_login: true,
        last_use: sender,
        throttle: Arc::new(Throttle::in_memory(
            throttle,
            Fingerprinter::with_key([7; 32]),
        )),
        verify_cache: Arc::new(
            VerifyCache::new(VerifyCacheConfig::default(), Arc::new(ManualClock::at(NOW))).unwrap(),
        ),
        max_age_without_sign_in,
        tokens,
    })
    .unwrap();
    Fixture { auth, writer, apps }
}

async fn decide(
    f: &Fixture,
    login: &str,
    secret: &Secret,
    service: &str,
    rip: Option<&str>,
) -> Outcome {
    let rip: Option<IpAddr> = rip.map(|r| r.parse().unwrap());
    f.auth
        .authenticate(&AuthRequest {
            login,
            secret,
            kind: mailauthd::auth::SecretKind::Password,
            service,
            remote_ip: rip,
            secured: true,
            mechanism: Some("PLAIN"),
            no_penalty: false,
            admitted: None,
        })
        .await
}

/// name, login, secret, service, rip, expected outcome, expected reason
type Row<'a> = (
    &'a str,
    &'a str,
    Secret,
    &'a str,
    Option<&'a str>,
    &'a str,
    &'a str,
);

fn expect(outcome: &Outcome, label: &str, reason: &str, row: &str, backend: &str) {
    assert_eq!(
        (outcome.label(), outcome.reason()),
        (label, reason),
        "{backend}: row {row:?} gave {outcome:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rule_of_the_decision_core() {
    for backend in common::backends() {
        let db = common::fresh(&backend).await;
        let f = setup(db.dyn_store(), Arc::new(HashPool::new(2, 64))).await;
        let b = backend.name();
        let s = |t: &str| Secret::from(t);
        let app = |name: &str| f.apps[name].1.clone();

        let rows: Vec<Row> = vec![
            // row, login, secret, service, rip, outcome, reason
            (
                "local password",
                "local@example.org",
                s("pw-local"),
                "imap",
                None,
                "ok",
                "password",
            ),
            (
                "login is normalised",
                "  LOCAL@Example.ORG ",
                s("pw-local"),
                "imap",
                None,
                "ok",
                "password",
            ),
            (
                "submission maps to smtp",
                "local@example.org",
                s("pw-local"),
                "submission",
                None,
                "ok",
                "password",
            ),
            (
                "wrong password",
                "local@example.org",
                s("nope"),
                "imap",
                None,
                "fail",
                "bad_credentials",
            ),
            (
                "unknown user",
                "ghost@example.org",
                s("pw-local"),
                "imap",
                None,
                "fail",
                "unknown_user",
            ),
            (
                "login without @",
                "local",
                s("pw-local"),
                "imap",
                None,
                "fail",
                "unknown_user",
            ),
            (
                "unknown service",
                "local@example.org",
                s("pw-local"),
                "ftp",
                None,
                "fail",
                "unknown_service",
            ),
            (
                "mailbox active 0",
                "disabled@example.org",
                s("pw"),
                "imap",
                None,
                "fail",
                "mailbox_disabled",
            ),
            (
                "mailbox active 2",
                "nologin@example.org",
                s("pw"),
                "imap",
                None,
                "fail",
                "mailbox_no_login",
            ),
            (
                "domain inactive",
                "user@off.example",
                s("pw"),
                "imap",
                None,
                "fail",
                "domain_disabled",
            ),
            (
                "mailbox protocols gate passwords",
                "imaponly@example.org",
                s("pw"),
                "pop3",
                None,
                "fail",
                "protocol_not_allowed",
            ),
            (
                "mailbox protocols allow",
                "imaponly@example.org",
                s("pw"),
                "imap",
                None,
                "ok",
                "password",
            ),
            (
                "mailbox protocols gate app passwords",
                "imaponly@example.org",
                app("imaponly-all"),
                "smtp",
                None,
                "fail",
                "protocol_not_allowed",
            ),
            (
                "oidc refuses stored password",
                "oidc@example.org",
                s("pw-oidc"),
                "imap",
                None,
                "fail",
                "oidc_needs_app_password",
            ),
            (
                "oidc app password",
                "oidc@example.org",
                app("imap"),
                "imap",
                None,
                "ok",
                "app_password",
            ),
            (
                "app password typed in capitals",
                "oidc@example.org",
                Secret::from(String::from_utf8(app("imap").expose().to_ascii_uppercase()).unwrap()),
                "imaps",
                None,
                "ok",
                "app_password",
            ),
            (
                "app password wrong protocol",
                "oidc@example.org",
                app("imap"),
                "pop3",
                None,
                "fail",
                "app_password_protocol",
            ),
            (
                "app password all protocols",
                "oidc@example.org",
                app("all"),
                "managesieve",
                None,
                "ok",
                "app_password",
            ),
            (
                "app password expired",
                "oidc@example.org",
                app("expired"),
                "imap",
                None,
                "fail",
                "app_password_expired",
            ),
            (
                "app password network ok v4",
                "oidc@example.org",
                app("net"),
                "imap",
                Some("192.0.2.77"),
                "ok",
                "app_password",
            ),
            (
                "app password network ok v6",
                "oidc@example.org",
                app("net"),
                "imap",
                Some("2001:db8::5"),
                "ok",
                "app_password",
            ),
            (
                "app password network refused",
                "oidc@example.org",
                app("net"),
                "imap",
                Some("198.51.100.1"),
                "fail",
                "app_password_network",
            ),
            (
                "app password network, no rip",
                "oidc@example.org",
                app("net"),
                "imap",
                None,
                "fail",
                "app_password_network",
            ),
            (
                "revoked app password",
                "oidc@example.org",
                app("revoked"),
                "imap",
                None,
                "fail",
                "oidc_needs_app_password",
            ),
            (
                "another mailbox's app password",
                "local@example.org",
                app("all"),
                "imap",
                None,
                "fail",
                "bad_credentials",
            ),
            (
                "local mailbox app password",
                "local@example.org",
                app("local"),
                "pop3",
                None,
                "ok",
                "app_password",
            ),
            (
                "disabled beats app password",
                "disabled@example.org",
                app("all"),
                "imap",
                None,
                "fail",
                "mailbox_disabled",
            ),
            (
                "unknown scheme refuses",
                "broken@example.org",
                s("abc"),
                "imap",
                None,
                "fail",
                "unusable_stored_hash",
            ),
            (
                "no stored password",
                "nopass@example.org",
                s(""),
                "imap",
                None,
                "fail",
                "bad_credentials",
            ),
            (
                "imported SHA512-CRYPT",
                "legacy@example.org",
                s(LEGACY_PASSWORD),
                "imap",
                None,
                "ok",
                "password",
            ),
            // The web page's password form: the same core, a door of its own.
            (
                "web: local password",
                "local@example.org",
                s("pw-local"),
                "web",
                None,
                "ok",
                "password",
            ),
            (
                "web: the service name in any case",
                "local@example.org",
                s("pw-local"),
                "WEB",
                None,
                "ok",
                "password",
            ),
            (
                "web: login is normalised",
                "  LOCAL@Example.ORG ",
                s("pw-local"),
                "web",
                None,
                "ok",
                "password",
            ),
            (
                "web: wrong password",
                "local@example.org",
                s("nope"),
                "web",
                None,
                "fail",
                "bad_credentials",
            ),
            (
                "web: unknown user",
                "ghost@example.org",
                s("pw-local"),
                "web",
                None,
                "fail",
                "unknown_user",
            ),
            (
                "web: login without @",
                "local",
                s("pw-local"),
                "web",
                None,
                "fail",
                "unknown_user",
            ),
            (
                "web: an app password never opens the page",
                "local@example.org",
                app("local"),
                "web",
                None,
                "fail",
                "bad_credentials",
            ),
            (
                "web: oidc mailbox, its stored password",
                "oidc@example.org",
                s("pw-oidc"),
                "web",
                None,
                "fail",
                "oidc_needs_app_password",
            ),
            (
                "web: oidc mailbox, its app password",
                "oidc@example.org",
                app("all"),
                "web",
                None,
                "fail",
                "oidc_needs_app_password",
            ),
            (
                "web: mailbox active 0",
                "disabled@example.org",
                s("pw"),
                "web",
                None,
                "fail",
                "mailbox_disabled",
            ),
            (
                "web: mailbox active 2",
                "nologin@example.org",
                s("pw"),
                "web",
                None,
                "fail",
                "mailbox_no_login",
            ),
            (
                "web: domain inactive",
                "user@off.example",
                s("pw"),
                "web",
                None,
                "fail",
                "domain_disabled",
            ),
            (
                "web: the page is no mail protocol",
                "noprotocols@example.org",
                s("pw"),
                "web",
                None,
                "ok",
                "password",
            ),
            (
                "web: and the mail protocols stay shut",
                "noprotocols@example.org",
                s("pw"),
                "imap",
                None,
                "fail",
                "protocol_not_allowed",
            ),
            (
                "web: broken stored hash",
                "broken@example.org",
                s("x"),
                "web",
                None,
                "fail",
                "unusable_stored_hash",
            ),
            (
                "web: no stored password",
                "nopass@example.org",
                s(""),
                "web",
                None,
                "fail",
                "bad_credentials",
            ),
            (
                "web: imported SHA512-CRYPT",
                "legacy@example.org",
                s(LEGACY_PASSWORD),
                "web",
                None,
                "ok",
                "password",
            ),
        ];
        for (row, login, secret, service, rip, label, reason) in &rows {
            let outcome = decide(&f, login, secret, service, *rip).await;
            expect(&outcome, label, reason, row, b);
            if let Outcome::Ok(success) = &outcome {
                assert_eq!(
                    success.mailbox,
                    login.trim().to_lowercase(),
                    "{b}: {row}: OK names the canonical address"
                );
            }
        }

        // The imported hash was upgraded in the background; the password still works.
        let mut upgraded = false;
        for _ in 0..100 {
            let view = db
                .store
                .login_view("legacy@example.org")
                .await
                .unwrap()
                .unwrap();
            if view
                .password_hash
                .as_deref()
                .is_some_and(|h| h.starts_with("{ARGON2ID}"))
            {
                upgraded = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(upgraded, "{b}: legacy hash was not rehashed to ARGON2ID");
        expect(
            &decide(&f, "legacy@example.org", &s(LEGACY_PASSWORD), "imap", None).await,
            "ok",
            "password",
            "after rehash",
            b,
        );

        // Revocation, deactivation and auth-source changes apply on the very next attempt.
        let (all_id, all_secret) = f.apps["all"].clone();
        db.store
            .delete_app_password("oidc@example.org", all_id)
            .await
            .unwrap();
        expect(
            &decide(&f, "oidc@example.org", &all_secret, "imap", None).await,
            "fail",
            "oidc_needs_app_password",
            "just revoked",
            b,
        );
        db.store
            .set_auth_source("oidc@example.org", AuthSource::Local, NOW)
            .await
            .unwrap();
        expect(
            &decide(&f, "oidc@example.org", &s("pw-oidc"), "imap", None).await,
            "ok",
            "password",
            "switched to local",
            b,
        );
        db.store
            .set_auth_source("oidc@example.org", AuthSource::Oidc, NOW)
            .await
            .unwrap();
        expect(
            &decide(&f, "oidc@example.org", &s("pw-oidc"), "imap", None).await,
            "fail",
            "oidc_needs_app_password",
            "switched back",
            b,
        );

        // Last use is recorded off the hot path and flushed on shutdown.
        let (net_id, _) = f.apps["net"];
        let Fixture { auth, writer, .. } = f;
        drop(auth);
        writer.shutdown().await;
        let apps = db
            .store
            .list_app_passwords("oidc@example.org")
            .await
            .unwrap();
        let used = apps
            .iter()
            .find(|a| a.id == net_id)
            .unwrap()
            .last_used
            .clone()
            .expect("last use recorded");
        assert_eq!(
            (used.at, used.service.as_deref()),
            (NOW, Some("imap")),
            "{b}"
        );
        assert!(
            matches!(used.ip.as_deref(), Some("192.0.2.77") | Some("2001:db8::5")),
            "{b}: {used:?}"
        );
        let local = db
            .store
            .get_mailbox("local@example.org")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(local.last_login.map(|l| l.at), Some(NOW), "{b}");
        db.finish().await;
    }
}

/// Unknown users go through the same hash pool as real ones: with the pool full, an
/// unknown user gets the pool's temporary failure, not an instant answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_users_cost_hash_work_and_a_full_pool_is_temporary() {
    let db = common::fresh(&common::Backend::Sqlite).await;
    let pool = Arc::new(HashPool::new(1, 0));
    let f = setup(db.dyn_store(), pool.clone()).await;
    let (release, wait) = std::sync::mpsc::channel::<()>();
    let blocker = {
        let pool = pool.clone();
        tokio::spawn(async move {
            pool.run(move |_| wait.recv_timeout(Duration::from_secs(10)))
                .await
        })
    };
    while pool.depth() < 1 {
        tokio::task::yield_now().await;
    }
    let busy = Outcome::TempFail(TempCause::HashPoolBusy);
    assert_eq!(
        decide(&f, "ghost@example.org", &Secret::from("x"), "imap", None).await,
        busy
    );
    assert_eq!(
        decide(
            &f,
            "local@example.org",
            &Secret::from("pw-local"),
            "imap",
            None
        )
        .await,
        busy
    );
    // App passwords need no hashing, so they still pass while the pool is saturated.
    let out = decide(&f, "oidc@example.org", &f.apps["imap"].1, "imap", None).await;
    assert_eq!(out.label(), "ok");
    release.send(()).unwrap();
    blocker.await.unwrap().unwrap().unwrap();
    assert_eq!(
        decide(
            &f,
            "local@example.org",
            &Secret::from("pw-local"),
            "imap",
            None
        )
        .await
        .label(),
        "ok"
    );
    f.writer.shutdown().await;
    db.finish().await;
}

/// A database that goes away gives temporary failures, never "wrong password".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_database_is_a_temporary_failure() {
    let db = common::fresh(&common::Backend::Sqlite).await;
    let f = setup(db.dyn_store(), Arc::new(HashPool::new(2, 8))).await;
    db.store.close().await;
    let out = decide(
        &f,
        "local@example.org",
        &Secret::from("pw-local"),
        "imap",
        None,
    )
    .await;
    assert_eq!(out, Outcome::TempFail(TempCause::StoreUnavailable));
    let out = decide(&f, "oidc@example.org", &f.apps["imap"].1, "imap", None).await;
    assert_eq!(out, Outcome::TempFail(TempCause::StoreUnavailable));
    f.writer.shutdown().await;
}

/// A remembered password saves the hash, never a decision: every change to the mailbox
/// counts on the very next login, cached or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_verification_cache_never_outlives_a_change() {
    let db = common::fresh(&common::Backend::Sqlite).await;
    let pool = Arc::new(HashPool::new(1, 0));
    let f = setup(db.dyn_store(), pool.clone()).await;
    let store = db.dyn_store();
    let local = |pw: &str| {
        let pw = Secret::from(pw);
        let f = &f;
        async move {
            decide(f, "local@example.org", &pw, "imap", None)
                .await
                .reason()
        }
    };
    assert_eq!(local("pw-local").await, "password");
    assert_eq!(f.auth.verify_cache().len(), 1);

    // A hit needs no hash worker: with the only worker held, the login still passes.
    let (release, wait) = std::sync::mpsc::channel::<()>();
    let blocker = {
        let pool = pool.clone();
        tokio::spawn(async move {
            pool.run(move |_| wait.recv_timeout(Duration::from_secs(10)))
                .await
        })
    };
    while pool.depth() < 1 {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        local("pw-local").await,
        "password",
        "answered from the cache"
    );
    assert_eq!(
        local("wrong").await,
        "hash_pool_busy",
        "failures are never cached"
    );
    release.send(()).unwrap();
    blocker.await.unwrap().unwrap().unwrap();

    let mut mailbox = store
        .get_mailbox("local@example.org")
        .await
        .unwrap()
        .unwrap();
    mailbox.state = MailboxState::Disabled;
    store
        .update_mailbox(&mailbox, &|_, _| Ok(()))
        .await
        .unwrap();
    assert_eq!(local("pw-local").await, "mailbox_disabled");
    mailbox.state = MailboxState::Active;
    store
        .update_mailbox(&mailbox, &|_, _| Ok(()))
        .await
        .unwrap();
    assert_eq!(local("pw-local").await, "password");

    store
        .set_auth_source("local@example.org", AuthSource::Oidc, NOW)
        .await
        .unwrap();
    assert_eq!(local("pw-local").await, "oidc_needs_app_password");
    store
        .set_auth_source("local@example.org", AuthSource::Local, NOW)
        .await
        .unwrap();
    assert_eq!(local("pw-local").await, "password");

    let new = password::hash_argon2id(b"pw-new", CHEAP).unwrap();
    store
        .set_password_hash("local@example.org", Some(&new), NOW)
        .await
        .unwrap();
    assert_eq!(
        local("pw-local").await,
        "bad_credentials",
        "old password, cached or not"
    );
    assert_eq!(local("pw-new").await, "password");
    f.writer.shutdown().await;
    db.finish().await;
}

/// What a web page session is held to: the credential generation moves with every change of
/// how the mailbox proves who it is, and with nothing else; on every backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_credential_generation_moves_with_every_credential_change() {
    for backend in common::backends() {
        let db = common::fresh(&backend).await;
        let b = backend.name();
        let store = db.dyn_store();
        let s = &*store;
        common::create_example_org(s).await;
        let new = NewMailbox {
            address: Address::parse("bound@example.org").unwrap(),
            password_hash: Some("{PLAIN}one".into()),
            auth_source: AuthSource::Oidc,
            display_name: String::new(),
            quota: None,
            protocols: None,
            state: None,
            template: None,
            oidc_identity: Some(("https://idp.example".into(), "sub-1".into())),
            require_active_domain: false,
        };
        provision::create_mailbox(s, &ManualClock::at(NOW), new)
            .await
            .unwrap();
        let address = Address::parse("bound@example.org").unwrap();
        let generation = || async {
            s.session_view("bound@example.org")
                .await
                .unwrap()
                .unwrap()
                .credential_generation
        };
        let view = s.session_view("bound@example.org").await.unwrap().unwrap();
        assert_eq!(
            (
                view.auth_source,
                view.oidc_issuer.as_deref(),
                view.oidc_subject.as_deref(),
                view.state,
                view.domain_active,
                view.protocols,
                view.credential_generation
            ),
            (
                AuthSource::Oidc,
                Some("https://idp.example"),
                Some("sub-1"),
                MailboxState::Active,
                true,
                Protocols::ALL,
                0
            ),
            "{b}"
        );
        assert_eq!(s.session_view("ghost@example.org").await.unwrap(), None);

        // No change of credentials: the same generation.
        let clock = ManualClock::at(NOW);
        provision::update_mailbox(
            s,
            &clock,
            &address,
            provision::MailboxChanges {
                display_name: Some("B".into()),
                state: Some(MailboxState::NoLogin),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert!(s
            .replace_password_hash("bound@example.org", "{PLAIN}one", "{PLAIN}one-rehashed")
            .await
            .unwrap());
        s.set_auth_source("bound@example.org", AuthSource::Oidc, NOW)
            .await
            .unwrap();
        assert_eq!(generation().await, 0, "{b}: nothing changed");
        let view = s.session_view("bound@example.org").await.unwrap().unwrap();
        assert_eq!(view.state, MailboxState::NoLogin, "{b}");

        // Each change of credentials: one step.
        s.set_password_hash("bound@example.org", Some("{PLAIN}two"), NOW)
            .await
            .unwrap();
        assert_eq!(generation().await, 1, "{b}: new password");
        s.set_auth_source("bound@example.org", AuthSource::Local, NOW)
            .await
            .unwrap();
        assert_eq!(generation().await, 2, "{b}: auth source switched");
        provision::update_mailbox(
            s,
            &clock,
            &address,
            provision::MailboxChanges {
                unlink_identity: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(generation().await, 3, "{b}: identity unlinked");
        let view = s.session_view("bound@example.org").await.unwrap().unwrap();
        assert_eq!((view.oidc_issuer, view.oidc_subject), (None, None), "{b}");
        // Unlinking what is not linked changes nothing.
        provision::update_mailbox(
            s,
            &clock,
            &address,
            provision::MailboxChanges {
                unlink_identity: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(generation().await, 3, "{b}: nothing left to unlink");
        db.finish().await;
    }
}

/// Rule 4's identity-provider part: a mailbox the liveness check suspended is refused with
/// `identity_revoked`, one past `max_days_without_sign_in` with `sign_in_overdue`, whatever
/// secret it offers; a web sign-in lifts both; `local` mailboxes answer to neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_suspension_and_overdue_sign_in_refuse_mail_logins() {
    const DAY: i64 = 86_400;
    for backend in common::backends() {
        let db = common::fresh(&backend).await;
        let f = setup_with(
            db.dyn_store(),
            Arc::new(HashPool::new(2, 64)),
            Some(30 * DAY),
        )
        .await;
        let b = backend.name();
        let app = f.apps["all"].1.clone();
        let s = &db.store;
        let oidc = "oidc@example.org";

        expect(
            &decide(&f, oidc, &app, "imap", None).await,
            "fail",
            "sign_in_overdue",
            "never signed in",
            b,
        );
        s.record_sign_in(oidc, NOW - 10 * DAY, None).await.unwrap();
        expect(
            &decide(&f, oidc, &app, "imap", None).await,
            "ok",
            "app_password",
            "signed in 10 days ago",
            b,
        );
        s.record_sign_in(oidc, NOW - 31 * DAY, None).await.unwrap();
        expect(
            &decide(&f, oidc, &app, "imap", None).await,
            "fail",
            "sign_in_overdue",
            "signed in 31 days ago",
            b,
        );
        s.record_sign_in(oidc, NOW, None).await.unwrap();
        assert!(s
            .suspend_identity(oidc, "identity_revoked", NOW)
            .await
            .unwrap());
        for (row, secret) in [
            ("suspended, app password", app.clone()),
            ("suspended, wrong secret", Secret::from("wrong")),
        ] {
            expect(
                &decide(&f, oidc, &secret, "imap", None).await,
                "fail",
                "identity_revoked",
                row,
                b,
            );
        }
        s.record_sign_in(oidc, NOW, None).await.unwrap();
        expect(
            &decide(&f, oidc, &app, "imap", None).await,
            "ok",
            "app_password",
            "signed in again",
            b,
        );
        // A local mailbox is neither overdue (no provider sign-in at all) nor suspendable.
        s.suspend_identity("local@example.org", "identity_revoked", NOW)
            .await
            .unwrap();
        expect(
            &decide(
                &f,
                "local@example.org",
                &Secret::from("pw-local"),
                "imap",
                None,
            )
            .await,
            "ok",
            "password",
            "local mailbox",
            b,
        );
        let Fixture { auth, writer, .. } = f;
        drop(auth);
        writer.shutdown().await;
        db.finish().await;
        eprintln!("identity rules passed on {b}");
    }
}

// Bearer tokens (OAUTHBEARER, XOAUTH2, the introspection endpoint): the core's own rules,
// with a verifier that answers from a table. The validator itself is tested with its own
// provider; here only what the core does with each of its answers.

const ISSUER: &str = "https://idp.example";
const DAY: i64 = 86_400;

/// Answers each token from a table; any other token has a bad signature.
struct TableVerifier {
    answers: std::collections::HashMap<String, Result<TokenIdentity, TokenError>>,
    calls: std::sync::atomic::AtomicUsize,
}

impl TableVerifier {
    fn calls(&self) -> usize {
        self.calls.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[async_trait::async_trait]
impl TokenVerifier for TableVerifier {
    async fn verify(&self, token: &str) -> Result<TokenIdentity, TokenError> {
        self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.answers
            .get(token)
            .cloned()
            .unwrap_or(Err(TokenError::Refused(TokenRefusal::BadSignature)))
    }

    fn challenge(&self) -> TokenChallenge {
        TokenChallenge {
            scope: "email".into(),
            openid_configuration: format!("{ISSUER}/.well-known/openid-configuration"),
        }
    }
}

const REFUSALS: [TokenRefusal; 13] = [
    TokenRefusal::Malformed,
    TokenRefusal::TooLong,
    TokenRefusal::Algorithm,
    TokenRefusal::UnknownKey,
    TokenRefusal::BadSignature,
    TokenRefusal::Expired,
    TokenRefusal::NotYetValid,
    TokenRefusal::Issuer,
    TokenRefusal::Audience,
    TokenRefusal::Scope,
    TokenRefusal::Inactive,
    TokenRefusal::MissingClaim,
    TokenRefusal::IdToken,
];

/// The tokens the table knows: `t-<name>` for the identity `sub-<name>`; `t-down` cannot
/// be checked; `t-refused-<code>` is refused with that code.
fn token_table() -> Arc<TableVerifier> {
    let mut answers = std::collections::HashMap::new();
    for name in [
        "tok", "imap", "off", "disabled", "nologin", "local", "susp", "overdue", "unbound",
    ] {
        answers.insert(
            format!("t-{name}"),
            Ok(TokenIdentity {
                issuer: ISSUER.into(),
                subject: format!("sub-{name}"),
                expires_at: NOW + 600,
            }),
        );
    }
    // The same subject at another issuer is another person.
    answers.insert(
        "t-other-issuer".into(),
        Ok(TokenIdentity {
            issuer: "https://other.example".into(),
            subject: "sub-tok".into(),
            expires_at: NOW + 600,
        }),
    );
    answers.insert(
        "t-down".into(),
        Err(TokenError::Unavailable("connection refused".into())),
    );
    for r in REFUSALS {
        answers.insert(
            format!("t-refused-{}", r.code()),
            Err(TokenError::Refused(r)),
        );
    }
    Arc::new(TableVerifier {
        answers,
        calls: Default::default(),
    })
}

/// A mailbox bound to the identity `sub-<subject>` of [`ISSUER`], last signed in on the
/// web `signed_in_days_ago`.
async fn bound_mailbox(
    s: &dyn Store,
    address: &str,
    source: AuthSource,
    state: MailboxState,
    protocols: &str,
    subject: &str,
    signed_in_days_ago: i64,
) {
    let new = NewMailbox {
        address: Address::parse(address).unwrap(),
        password_hash: None,
        auth_source: source,
        display_name: String::new(),
        quota: None,
        protocols: Some(Protocols::parse_list(protocols).unwrap()),
        state: Some(state),
        template: None,
        oidc_identity: Some((ISSUER.into(), format!("sub-{subject}"))),
        require_active_domain: false,
    };
    provision::create_mailbox(s, &ManualClock::at(NOW), new)
        .await
        .unwrap();
    s.record_sign_in(address, NOW - signed_in_days_ago * DAY, None)
        .await
        .unwrap();
}

/// [`setup_full`] with the table's verifier, `max_days_without_sign_in = 30` and a mailbox
/// for each identity of the table but `sub-unbound`.
async fn setup_tokens(
    store: Arc<dyn Store>,
    throttle: ThrottleConfig,
) -> (Fixture, Arc<TableVerifier>) {
    let verifier = token_table();
    let s = &*store;
    let f = setup_full(
        store.clone(),
        Arc::new(HashPool::new(2, 64)),
        Some(30 * DAY),
        Some(verifier.clone()),
        throttle,
    )
    .await;
    use AuthSource::{Local, Oidc};
    use MailboxState::{Active, Disabled, NoLogin};
    for (address, source, state, protocols, subject, days) in [
        ("tok@example.org", Oidc, Active, "all", "tok", 1),
        ("tokimap@example.org", Oidc, Active, "imap", "imap", 1),
        ("tok@off.example", Oidc, Active, "all", "off", 1),
        (
            "tokdisabled@example.org",
            Oidc,
            Disabled,
            "all",
            "disabled",
            1,
        ),
        ("toknologin@example.org", Oidc, NoLogin, "all", "nologin", 1),
        ("toklocal@example.org", Local, Active, "all", "local", 1),
        ("toksusp@example.org", Oidc, Active, "all", "susp", 1),
        ("tokoverdue@example.org", Oidc, Active, "all", "overdue", 31),
    ] {
        bound_mailbox(s, address, source, state, protocols, subject, days).await;
    }
    assert!(s
        .suspend_identity("toksusp@example.org", "identity_revoked", NOW)
        .await
        .unwrap());
    (f, verifier)
}

async fn decide_token(
    f: &Fixture,
    login: &str,
    token: &Secret,
    service: &str,
    rip: Option<&str>,
) -> Outcome {
    let rip: Option<IpAddr> = rip.map(|r| r.parse().unwrap());
    f.auth
        .authenticate(&AuthRequest {
            login,
            secret: token,
            kind: SecretKind::BearerToken,
            service,
            remote_ip: rip,
            secured: true,
            mechanism: Some("OAUTHBEARER"),
            no_penalty: false,
            admitted: None,
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rule_of_the_token_path() {
    for backend in common::backends() {
        let db = common::fresh(&backend).await;
        let throttle = ThrottleConfig {
            enabled: false,
            ..ThrottleConfig::default()
        };
        let (f, verifier) = setup_tokens(db.dyn_store(), throttle).await;
        let b = backend.name();
        let t = |name: &str| Secret::from(format!("t-{name}"));

        // login, token, service, outcome, reason
        let mut rows: Vec<(&str, Secret, &str, &str, &str)> = vec![
            ("tok@example.org", t("tok"), "imap", "ok", "token"),
            ("", t("tok"), "imap", "ok", "token"),
            ("  TOK@Example.ORG ", t("tok"), "submission", "ok", "token"),
            (
                "local@example.org",
                t("tok"),
                "imap",
                "fail",
                "token_not_for_mailbox",
            ),
            (
                "tokimap@example.org",
                t("tok"),
                "imap",
                "fail",
                "token_not_for_mailbox",
            ),
            (
                "ghost@example.org",
                t("tok"),
                "imap",
                "fail",
                "token_not_for_mailbox",
            ),
            ("tok", t("tok"), "imap", "fail", "token_not_for_mailbox"),
            ("", t("unbound"), "imap", "fail", "token_unbound"),
            (
                "tok@example.org",
                t("unbound"),
                "imap",
                "fail",
                "token_unbound",
            ),
            ("", t("other-issuer"), "imap", "fail", "token_unbound"),
            ("", t("local"), "imap", "fail", "token_for_local_mailbox"),
            (
                "toklocal@example.org",
                t("local"),
                "imap",
                "fail",
                "token_for_local_mailbox",
            ),
            ("", t("disabled"), "imap", "fail", "mailbox_disabled"),
            ("", t("nologin"), "imap", "fail", "mailbox_no_login"),
            ("", t("off"), "imap", "fail", "domain_disabled"),
            ("", t("imap"), "pop3", "fail", "protocol_not_allowed"),
            ("", t("imap"), "imap", "ok", "token"),
            ("", t("susp"), "imap", "fail", "identity_revoked"),
            ("", t("overdue"), "imap", "fail", "sign_in_overdue"),
            ("", t("nonsense"), "imap", "fail", "token_bad_signature"),
            (
                "tok@example.org",
                t("down"),
                "imap",
                "tempfail",
                "identity_provider_unavailable",
            ),
            (
                "",
                Secret::new(vec![0xff, 0xfe]),
                "imap",
                "fail",
                "token_malformed",
            ),
        ];
        let refused: Vec<(TokenRefusal, Secret)> = REFUSALS
            .iter()
            .map(|r| (*r, Secret::from(format!("t-refused-{}", r.code()))))
            .collect();
        for (r, secret) in &refused {
            rows.push(("tok@example.org", secret.clone(), "imap", "fail", r.code()));
        }
        for (login, token, service, label, reason) in &rows {
            let row = format!(
                "{login:?} with {:?} on {service}",
                String::from_utf8_lossy(token.expose())
            );
            let out = decide_token(&f, login, token, service, Some("192.0.2.1")).await;
            expect(&out, label, reason, &row, b);
            if let Outcome::Ok(success) = &out {
                // Whatever name the client gave, the answer names the canonical mailbox.
                let expected = if token.expose() == b"t-imap" {
                    "tokimap@example.org"
                } else {
                    "tok@example.org"
                };
                assert_eq!(success.mailbox, expected, "{b}: {row}");
                assert_eq!(success.credential, Credential::Token, "{b}: {row}");
            }
        }
        assert_eq!(
            verifier.calls(),
            rows.len() - 1,
            "{b}: all but the non-UTF-8 one asked"
        );

        // The web page takes no token, and an unknown service is refused before the
        // provider is asked anything.
        let before = verifier.calls();
        expect(
            &decide_token(&f, "tok@example.org", &t("tok"), "web", None).await,
            "fail",
            "tokens_not_accepted",
            "web door",
            b,
        );
        expect(
            &decide_token(&f, "", &t("tok"), "ftp", None).await,
            "fail",
            "unknown_service",
            "unknown service",
            b,
        );
        assert_eq!(verifier.calls(), before, "{b}");

        // A password is never taken for a token, nor a token for a password.
        expect(
            &decide(&f, "tok@example.org", &t("tok"), "imap", None).await,
            "fail",
            "oidc_needs_app_password",
            "token offered as a password",
            b,
        );
        expect(
            &decide_token(
                &f,
                "local@example.org",
                &Secret::from("pw-local"),
                "imap",
                None,
            )
            .await,
            "fail",
            "token_bad_signature",
            "password offered as a token",
            b,
        );
        let Fixture { auth, writer, .. } = f;
        drop(auth);
        writer.shutdown().await;
        let used = db
            .store
            .get_mailbox("tok@example.org")
            .await
            .unwrap()
            .unwrap()
            .last_login
            .expect("a token login is a last use");
        assert_eq!(used.at, NOW, "{b}");
        db.finish().await;
    }
}

/// Without `[oauth]` no token is accepted, whatever it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_verifier_no_token_is_accepted() {
    let db = common::fresh(&common::Backend::Sqlite).await;
    let f = setup(db.dyn_store(), Arc::new(HashPool::new(2, 8))).await;
    assert!(!f.auth.accepts_tokens());
    assert_eq!(f.auth.token_challenge(), None);
    for (login, service) in [("oidc@example.org", "imap"), ("", "imap"), ("", "web")] {
        expect(
            &decide_token(&f, login, &Secret::from("t-tok"), service, None).await,
            "fail",
            "tokens_not_accepted",
            &format!("{login:?} on {service}"),
            "sqlite",
        );
    }
    f.writer.shutdown().await;
    db.finish().await;
}

/// A token valid for its whole life still opens its mailbox only while the mailbox may log
/// in: every change counts on the very next login, however often the same token came.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_token_never_outlives_a_change_of_its_mailbox() {
    for backend in common::backends() {
        let db = common::fresh(&backend).await;
        let b = backend.name();
        let throttle = ThrottleConfig {
            enabled: false,
            ..ThrottleConfig::default()
        };
        let (f, verifier) = setup_tokens(db.dyn_store(), throttle).await;
        let s = &*db.store;
        let token = Secret::from("t-tok");
        let reason = || async {
            decide_token(&f, "", &token, "imap", Some("192.0.2.1"))
                .await
                .reason()
        };
        assert_eq!(reason().await, "token", "{b}");
        assert_eq!(reason().await, "token", "{b}: the same token again");

        let mut mailbox = s.get_mailbox("tok@example.org").await.unwrap().unwrap();
        mailbox.state = MailboxState::Disabled;
        s.update_mailbox(&mailbox, &|_, _| Ok(())).await.unwrap();
        assert_eq!(reason().await, "mailbox_disabled", "{b}: disabled");
        mailbox.state = MailboxState::Active;
        s.update_mailbox(&mailbox, &|_, _| Ok(())).await.unwrap();
        assert_eq!(reason().await, "token", "{b}: enabled again");

        s.suspend_identity("tok@example.org", "identity_revoked", NOW)
            .await
            .unwrap();
        assert_eq!(reason().await, "identity_revoked", "{b}: suspended");
        s.record_sign_in("tok@example.org", NOW, None)
            .await
            .unwrap();
        assert_eq!(reason().await, "token", "{b}: signed in again");

        s.set_auth_source("tok@example.org", AuthSource::Local, NOW)
            .await
            .unwrap();
        assert_eq!(reason().await, "token_for_local_mailbox", "{b}: made local");
        s.set_auth_source("tok@example.org", AuthSource::Oidc, NOW)
            .await
            .unwrap();
        assert_eq!(reason().await, "token", "{b}: oidc again");

        provision::update_mailbox(
            s,
            &ManualClock::at(NOW),
            &Address::parse("tok@example.org").unwrap(),
            provision::MailboxChanges {
                unlink_identity: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(reason().await, "token_unbound", "{b}: unlinked");
        assert_eq!(
            decide_token(&f, "tok@example.org", &token, "imap", None)
                .await
                .reason(),
            "token_unbound",
            "{b}: unlinked, named"
        );
        // The verifier said "valid" every time: only the store changed.
        assert_eq!(verifier.calls(), 10, "{b}");
        let Fixture { auth, writer, .. } = f;
        drop(auth);
        writer.shutdown().await;
        db.finish().await;
    }
}

fn token_throttle() -> ThrottleConfig {
    ThrottleConfig {
        free_failures: 2,
        base_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(4),
        window: Duration::from_secs(600),
        network_block_after: 5,
        account_block_after: 8,
        block_duration: Duration::from_secs(60),
        known_network_for: Duration::ZERO,
        ..ThrottleConfig::default()
    }
}

/// Refused tokens are guesses like wrong passwords: enough of them from one network block
/// it, tokens and passwords alike. A provider that cannot be reached is nobody's guess.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_tokens_count_toward_the_throttle_and_an_outage_does_not() {
    let db = common::fresh(&common::Backend::Sqlite).await;
    let (f, _) = setup_tokens(db.dyn_store(), token_throttle()).await;
    let good = Secret::from("t-tok");

    // Twenty tokens the provider cannot check, from one network: never blocked.
    for i in 0..20 {
        let down = Secret::from("t-down");
        let out = decide_token(&f, "tok@example.org", &down, "imap", Some("192.0.2.20")).await;
        assert_eq!(
            out,
            Outcome::TempFail(TempCause::IdentityProviderUnavailable),
            "attempt {i}"
        );
    }
    expect(
        &decide_token(&f, "tok@example.org", &good, "imap", Some("192.0.2.20")).await,
        "ok",
        "token",
        "after the outage",
        "sqlite",
    );

    // Five different bad tokens from one network block it, for tokens and passwords.
    for i in 0..5 {
        let bad = Secret::from(format!("forged-{i}"));
        expect(
            &decide_token(&f, "", &bad, "imap", Some("192.0.2.10")).await,
            "fail",
            "token_bad_signature",
            &format!("forged {i}"),
            "sqlite",
        );
    }
    for (row, out) in [
        (
            "good token, nameless",
            decide_token(&f, "", &good, "imap", Some("192.0.2.10")).await,
        ),
        (
            "good token, named",
            decide_token(&f, "tok@example.org", &good, "imap", Some("192.0.2.10")).await,
        ),
        (
            "right password",
            decide(
                &f,
                "local@example.org",
                &Secret::from("pw-local"),
                "imap",
                Some("192.0.2.10"),
            )
            .await,
        ),
    ] {
        expect(&out, "fail", "throttled", row, "sqlite");
    }
    // Elsewhere the same token passes.
    expect(
        &decide_token(&f, "", &good, "imap", Some("198.51.100.7")).await,
        "ok",
        "token",
        "another network",
        "sqlite",
    );

    // Tokens offered for one named mailbox count against it, like passwords: its password
    // logins are blocked. Its own tokens are not held up, for no one guesses a token:
    // strangers cannot lock the owner's webmail out.
    for i in 0..8 {
        let bad = Secret::from(format!("guess-{i}"));
        let rip = format!("203.0.113.{i}");
        expect(
            &decide_token(&f, "tokimap@example.org", &bad, "imap", Some(&rip)).await,
            "fail",
            "token_bad_signature",
            &format!("guess {i}"),
            "sqlite",
        );
    }
    expect(
        &decide_token(
            &f,
            "tokimap@example.org",
            &Secret::from("t-imap"),
            "imap",
            Some("198.51.100.8"),
        )
        .await,
        "ok",
        "token",
        "the owner's token, the account blocked",
        "sqlite",
    );
    expect(
        &decide_token(
            &f,
            "tokimap@example.org",
            &Secret::from("guess-9"),
            "imap",
            Some("198.51.100.9"),
        )
        .await,
        "fail",
        "token_bad_signature",
        "a forged token, the account blocked: refused for what it is",
        "sqlite",
    );
    f.writer.shutdown().await;
    db.finish().await;
}

/// A token without a name counts against an account of its own: nameless attempts (the
/// introspection endpoint, OAUTHBEARER without `a=`) must not add up on one shared account
/// that would then block them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nameless_token_attempts_do_not_share_one_account() {
    let db = common::fresh(&common::Backend::Sqlite).await;
    let (f, _) = setup_tokens(db.dyn_store(), token_throttle()).await;
    // No address either (the introspection endpoint has none): only the accounts count.
    for i in 0..12 {
        let bad = Secret::from(format!("forged-{i}"));
        expect(
            &decide_token(&f, "", &bad, "imap", None).await,
            "fail",
            "token_bad_signature",
            &format!("forged {i}"),
            "sqlite",
        );
    }
    expect(
        &decide_token(&f, "", &Secret::from("t-tok"), "imap", None).await,
        "ok",
        "token",
        "after twelve bad tokens",
        "sqlite",
    );
    let listed = f.auth.throttle().list(NOW * 1000).await;
    assert_eq!(listed.len(), 12, "{listed:?}");
    let mut keys: Vec<String> = listed.iter().map(|l| l.key.to_string()).collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 12, "one account per token: {keys:?}");
    for l in &listed {
        let key = l.key.to_string();
        let hex = key
            .strip_prefix("token:")
            .unwrap_or_else(|| panic!("{key}"));
        assert!(
            hex.len() == 16 && hex.bytes().all(|c| c.is_ascii_hexdigit()),
            "{key}"
        );
        assert!(!key.contains("forged"), "no token in the throttle: {key}");
        assert_eq!(l.failures, 1, "{key}");
    }
    // The same bad token again is the same account.
    decide_token(&f, "", &Secret::from("forged-0"), "imap", None).await;
    assert_eq!(f.auth.throttle().list(NOW * 1000).await.len(), 12);
    f.writer.shutdown().await;
    db.finish().await;
}
