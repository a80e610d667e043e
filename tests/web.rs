//! The web page over real HTTP on an ephemeral port: cookies, CSRF on every form, session
//! rotation at sign-in, app passwords made and revoked, security headers, health checks.
//! (Sign-in through a provider, with a real browser, is tests/e2e/oidc/run.sh.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use mailauthd::auth::password::{hash_argon2id, Argon2Params};
use mailauthd::auth::{AuthRequest, Outcome};
use mailauthd::clock::SystemClock;
use mailauthd::names::{Address, Protocols};
use mailauthd::provision::{self, NewMailbox};
use mailauthd::runtime::Core;
use mailauthd::secret::Secret;
use mailauthd::store::{AppPasswords, AuthSource, Domains, LoginStore, Mailboxes};
use reqwest::header::SET_COOKIE;
use reqwest::StatusCode;

#[path = "common/web_site.rs"]
mod web_site;

use web_site::{start_site, urlencode, Page, Site, TestMailbox};
async fn start() -> (Site, Core, tempfile::TempDir) {
    start_with("", "").await
}

/// A web page with `top` added to the config's top sections and `web` to `[web]`;
/// alice (local) and bob (oidc) at example.org, both imap and smtp.
async fn start_with(top: &str, web: &str) -> (Site, Core, tempfile::TempDir) {
    let mailbox = |address, source| TestMailbox {
        address,
        protocols: "imap,smtp",
        source,
        display_name: "",
        password: "alice-password-1",
    };
    start_site(
        top,
        web,
        &[
            mailbox("alice@example.org", AuthSource::Local),
            mailbox("bob@example.org", AuthSource::Oidc),
        ],
    )
    .await
}

async fn login(core: &Core, secret: &str, service: &str) -> Outcome {
    let secret = Secret::from(secret);
    core.auth
        .authenticate(&AuthRequest {
            login: "alice@example.org",
            secret: &secret,
            kind: mailauthd::auth::SecretKind::Password,
            service,
            remote_ip: Some("192.0.2.1".parse().unwrap()),
            secured: true,
            no_penalty: true,
            admitted: None,
            mechanism: None,
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_mailbox_signs_in_and_manages_app_passwords() {
    let (site, core, _dir) = start().await;

    let front = site.get("/", None).await;
    assert_eq!(front.status, StatusCode::OK);
    let set = front.headers.get(SET_COOKIE).unwrap().to_str().unwrap();
    for flag in ["HttpOnly", "SameSite=Lax", "Secure", "Path=/"] {
        assert!(set.contains(flag), "{flag} missing in {set}");
    }
    for (h, v) in [
        ("cache-control", "no-store"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
    ] {
        assert_eq!(front.headers.get(h).unwrap(), v);
    }
    assert!(front.headers.get("content-security-policy").is_some());
    assert!(
        !front.body.contains("provider-sign-in"),
        "no [oidc], no button"
    );
    let anon = front.cookie.clone().unwrap();
    let csrf = front.csrf();

    // No CSRF token, a wrong one, or no session: refused, nobody signed in.
    let r = site
        .post(
            "/login/password",
            Some(&anon),
            &[
                ("address", "alice@example.org"),
                ("password", "alice-password-1"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.body.contains("Form expired"));
    let r = site
        .post(
            "/login/password",
            Some(&anon),
            &[
                ("csrf", "forged"),
                ("address", "alice@example.org"),
                ("password", "alice-password-1"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);

    // Wrong password: the form again, with a message and the address kept.
    let r = site
        .post(
            "/login/password",
            Some(&anon),
            &[
                ("csrf", &csrf),
                ("address", "alice@example.org"),
                ("password", "wrong"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.body.contains("address or password is wrong"));
    assert!(r.body.contains("value=\"alice@example.org\""));

    // An oidc mailbox is refused even with the right stored password, with the words a
    // wrong password gets: the form does not tell which addresses are oidc.
    let r = site
        .post(
            "/login/password",
            Some(&anon),
            &[
                ("csrf", &csrf),
                ("address", "bob@example.org"),
                ("password", "alice-password-1"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(
        r.body.contains("address or password is wrong"),
        "{}",
        r.body
    );
    assert!(!r.body.contains("signs in with"), "{}", r.body);

    // Right password: a new session id; the old one is worth nothing.
    let r = site
        .post(
            "/login/password",
            Some(&anon),
            &[
                ("csrf", &csrf),
                ("address", "Alice@Example.org"),
                ("password", "alice-password-1"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.location.as_deref(), Some("/"));
    let session = r.cookie.clone().unwrap();
    assert_ne!(session, anon);
    let old = site.get("/", Some(&anon)).await;
    assert!(!old.body.contains("mailbox-address"));
    let home = site.get("/", Some(&session)).await;
    assert!(home
        .body
        .contains("<dd id=\"mailbox-address\">alice@example.org</dd>"));
    assert!(
        home.body.contains("(not allowed for your mailbox)"),
        "POP3 and SIEVE greyed out"
    );
    let csrf = home.csrf();

    // Creating needs the token, a name, a protocol the mailbox allows.
    let r = site
        .post(
            "/app-passwords",
            Some(&session),
            &[("name", "phone"), ("imap", "on")],
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = site
        .post(
            "/app-passwords",
            Some(&session),
            &[("csrf", &csrf), ("name", " "), ("imap", "on")],
        )
        .await;
    assert!(r.body.contains("Give the app password a name"));
    let r = site
        .post(
            "/app-passwords",
            Some(&session),
            &[("csrf", &csrf), ("name", "phone")],
        )
        .await;
    assert!(r.body.contains("Choose at least one"));
    let r = site
        .post(
            "/app-passwords",
            Some(&session),
            &[("csrf", &csrf), ("name", "phone"), ("pop3", "on")],
        )
        .await;
    assert!(r.body.contains("does not allow POP3"), "{}", r.body);
    let r = site
        .post(
            "/app-passwords",
            Some(&session),
            &[
                ("csrf", &csrf),
                ("name", "phone"),
                ("imap", "on"),
                ("expires", "1999-01-01"),
            ],
        )
        .await;
    assert!(r.body.contains("must be in the future"));
    let r = site
        .post(
            "/app-passwords",
            Some(&session),
            &[("csrf", &csrf), ("name", "<phone>"), ("imap", "on")],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.contains("&lt;phone&gt;"), "names are escaped");
    let marker = "id=\"app-password\" aria-label=\"App password\">";
    let start = r.body.find(marker).unwrap() + marker.len();
    let secret = r.body[start..start + 24].to_string();
    // The copy button's script, the one the CSP's hash allows, is on the page.
    let script = r.body.split("<script>").nth(1).unwrap();
    let script = &script[..script.find("</script>").unwrap()];
    let hash = {
        use base64::Engine as _;
        use sha2::Digest as _;
        base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(script))
    };
    let csp = r.headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains(&format!("script-src 'sha256-{hash}';")),
        "{csp}"
    );
    assert_eq!(r.body.matches("<script>").count(), 1);
    assert!(matches!(
        login(&core, &secret, "imap").await,
        Outcome::Ok(_)
    ));
    assert!(matches!(
        login(&core, &secret, "smtp").await,
        Outcome::Fail(_)
    ));

    // Revoking: another mailbox's id finds nothing; our own stops the password at once.
    let apps = core
        .store
        .list_app_passwords("alice@example.org")
        .await
        .unwrap();
    let id = apps[0].id.to_string();
    let r = site
        .post(
            "/app-passwords/revoke",
            Some(&session),
            &[("csrf", &csrf), ("id", "999999")],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert!(site
        .get("/", Some(&session))
        .await
        .body
        .contains("already gone"));
    let r = site
        .post("/app-passwords/revoke", Some(&session), &[("id", &id)])
        .await;
    assert_eq!(
        r.status,
        StatusCode::FORBIDDEN,
        "revoke needs the token too"
    );
    site.post(
        "/app-passwords/revoke",
        Some(&session),
        &[("csrf", &csrf), ("id", &id)],
    )
    .await;
    assert!(site
        .get("/", Some(&session))
        .await
        .body
        .contains("App password revoked"));
    assert!(matches!(
        login(&core, &secret, "imap").await,
        Outcome::Fail(_)
    ));

    // Signing out ends the session.
    let r = site
        .post("/logout", Some(&session), &[("csrf", &csrf)])
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.location.as_deref(), Some("/?signed-out"));
    assert!(r
        .headers
        .get(SET_COOKIE)
        .unwrap()
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    let after = site.get("/?signed-out", Some(&session)).await;
    assert!(after.body.contains("You are signed out."));
    assert!(!after.body.contains("mailbox-address"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_requests_get_clear_pages() {
    let (site, _core, _dir) = start().await;
    assert_eq!(site.get("/healthz", None).await.body, "ok\n");
    assert_eq!(site.get("/readyz", None).await.body, "ready\n");
    let r = site.get("/callback?code=x&state=y", None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.body.contains("not set up here"));
    let r = site.get("/login", None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = site.get("/nowhere", None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.body.contains("There is no such page here."));
    let r = site.post("/app-passwords", None, &[("name", "x")]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.body.contains("not signed in"));
    let r = site
        .post(
            "/login/password",
            None,
            &[("csrf", "x"), ("address", "a@b.org")],
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(!r.body.contains("panicked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabling_a_mailbox_ends_its_web_session() {
    let (site, core, _dir) = start().await;
    let front = site.get("/", None).await;
    let r = site
        .post(
            "/login/password",
            front.cookie.as_deref(),
            &[
                ("csrf", &front.csrf()),
                ("address", "alice@example.org"),
                ("password", "alice-password-1"),
            ],
        )
        .await;
    let session = r.cookie.unwrap();
    assert!(site
        .get("/", Some(&session))
        .await
        .body
        .contains("mailbox-address"));
    let mut m = core
        .store
        .get_mailbox("alice@example.org")
        .await
        .unwrap()
        .unwrap();
    m.state = mailauthd::store::MailboxState::Disabled;
    core.store.update_mailbox(&m, &|_, _| Ok(())).await.unwrap();
    let r = site.get("/", Some(&session)).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.body.contains("Your mailbox is disabled."));
    assert!(!site
        .get("/", Some(&session))
        .await
        .body
        .contains("mailbox-address"));
}

const CHEAP: Argon2Params = Argon2Params {
    memory_kib: 8192,
    iterations: 1,
    parallelism: 1,
};

async fn add_mailbox(
    core: &Core,
    address: &str,
    password: &str,
    source: AuthSource,
    identity: Option<(&str, &str)>,
) {
    provision::create_mailbox(
        &*core.store,
        &SystemClock,
        NewMailbox {
            address: Address::parse(address).unwrap(),
            password_hash: Some(hash_argon2id(password.as_bytes(), CHEAP).unwrap()),
            auth_source: source,
            display_name: String::new(),
            quota: None,
            protocols: Some(Protocols::parse_list("imap,smtp").unwrap()),
            state: None,
            template: None,
            oidc_identity: identity.map(|(i, s)| (i.to_string(), s.to_string())),
            require_active_domain: false,
        },
    )
    .await
    .unwrap();
}

async fn app_password_of(core: &Core, mailbox: &str) -> String {
    let secret = mailauthd::auth::app_password::generate().unwrap();
    core.store
        .create_app_password(&mailauthd::store::NewAppPassword {
            mailbox: mailbox.into(),
            name: "phone".into(),
            lookup_hash: core.auth.key().lookup_hash(secret.expose()),
            protocols: Protocols::ALL,
            networks: Vec::new(),
            expires_at: None,
            created_at: 1,
        })
        .await
        .unwrap();
    String::from_utf8(secret.expose().to_vec()).unwrap()
}

fn refusal_text(p: &Page) -> String {
    let start = p.body.find("role=\"alert\"><p>").expect("a refusal") + 16;
    let end = p.body[start..].find("</p>").unwrap();
    p.body[start..start + end].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_password_form_is_a_door_of_the_decision_core() {
    let (site, core, _dir) = start_with(
        "[throttle]\nfree_failures = 1\nbase_delay_ms = 1\nmax_delay_ms = 5\nnetwork_block_after = 4\nblock_secs = 300\n\
         [metrics]\non_web_listener = true\n",
        "trusted_proxies = [\"127.0.0.1/32\"]\n",
    )
    .await;
    // Each from a client of its own, so none of this adds up to a block.
    let wrong = site
        .sign_in_form("alice@example.org", "wrong", Some("203.0.113.1"))
        .await;
    assert_eq!(wrong.status, StatusCode::FORBIDDEN);
    let generic = refusal_text(&wrong);

    // An app password opens a mailbox, never the page that makes more of them.
    let app = app_password_of(&core, "alice@example.org").await;
    assert!(matches!(login(&core, &app, "imap").await, Outcome::Ok(_)));
    let r = site
        .sign_in_form("alice@example.org", &app, Some("203.0.113.2"))
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(refusal_text(&r), generic);
    // An oidc mailbox, right or wrong stored password, an unknown one: the same words.
    for (address, password, client) in [
        ("bob@example.org", "alice-password-1", "203.0.113.3"),
        ("bob@example.org", "wrong", "203.0.113.4"),
        ("nobody@example.org", "alice-password-1", "203.0.113.5"),
    ] {
        let r = site.sign_in_form(address, password, Some(client)).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{address}");
        assert_eq!(refusal_text(&r), generic, "{address}");
    }

    // Counted like every login: the decision core's metrics name the web door.
    let metrics = site.get("/metrics", None).await.body;
    for series in [
        "protocol=\"web\",mechanism=\"other\",outcome=\"fail\",reason=\"bad_credentials\"",
        "protocol=\"web\",mechanism=\"other\",outcome=\"fail\",reason=\"oidc_needs_app_password\"",
        "protocol=\"web\",mechanism=\"other\",outcome=\"fail\",reason=\"unknown_user\"",
    ] {
        assert!(metrics.contains(series), "{series} missing:\n{metrics}");
    }

    // Throttled like every login, per client address: guesses from one client through
    // the proxy end up blocked, and the block holds for its mail logins too.
    let mut statuses = Vec::new();
    for n in 0..8 {
        let r = site
            .sign_in_form(
                "alice@example.org",
                &format!("guess-{n}"),
                Some("198.51.100.9"),
            )
            .await;
        statuses.push(r.status);
    }
    assert_eq!(
        statuses.last(),
        Some(&StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
    let r = site
        .sign_in_form(
            "alice@example.org",
            "alice-password-1",
            Some("198.51.100.9"),
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::TOO_MANY_REQUESTS,
        "blocked: even the right password"
    );
    let imap = core
        .auth
        .authenticate(&AuthRequest {
            login: "alice@example.org",
            secret: &Secret::from("alice-password-1"),
            kind: mailauthd::auth::SecretKind::Password,
            service: "imap",
            remote_ip: Some("198.51.100.9".parse().unwrap()),
            secured: true,
            no_penalty: false,
            mechanism: Some("PLAIN"),
            admitted: None,
        })
        .await;
    assert_eq!(
        imap.reason(),
        "throttled",
        "the same throttle as the mail doors"
    );
    // Another client is not held by that block.
    let r = site
        .sign_in_form(
            "alice@example.org",
            "alice-password-1",
            Some("198.51.100.10"),
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let metrics = site.get("/metrics", None).await.body;
    assert!(
        metrics.contains("protocol=\"web\",mechanism=\"other\",outcome=\"ok\",reason=\"password\"")
    );
    assert!(metrics
        .contains("protocol=\"web\",mechanism=\"other\",outcome=\"fail\",reason=\"throttled\""));
}

/// Signs alice in and checks the page shows her mailbox.
async fn signed_in(site: &Site, address: &str, password: &str) -> String {
    let r = site.sign_in_form(address, password, None).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let session = r.cookie.unwrap();
    assert!(site
        .get("/", Some(&session))
        .await
        .body
        .contains("mailbox-address"));
    session
}

async fn assert_ended(site: &Site, session: &str, why: &str) {
    let home = site.get("/", Some(session)).await;
    let csrf_form = site
        .post("/app-passwords/revoke", Some(session), &[("id", "1")])
        .await;
    assert_eq!(home.status, StatusCode::FORBIDDEN, "{why}: {}", home.body);
    assert!(home.body.contains("Signed out"), "{why}: {}", home.body);
    assert!(
        home.headers
            .get(SET_COOKIE)
            .is_some_and(|c| c.to_str().unwrap().contains("Max-Age=0")),
        "{why}: the cookie is cleared"
    );
    assert_eq!(csrf_form.status, StatusCode::FORBIDDEN, "{why}");
    let again = site.get("/", Some(session)).await;
    assert!(
        !again.body.contains("mailbox-address"),
        "{why}: gone for good"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_session_ends_when_its_mailbox_changes() {
    let (site, core, _dir) = start().await;
    let store = &*core.store;
    let now = 1_900_000_000;
    add_mailbox(
        &core,
        "carol@example.org",
        "carol-password",
        AuthSource::Local,
        Some(("https://idp.example", "sub-carol")),
    )
    .await;

    // Changes that are no change of credentials keep the session.
    let session = signed_in(&site, "alice@example.org", "alice-password-1").await;
    let m = store
        .get_mailbox("alice@example.org")
        .await
        .unwrap()
        .unwrap();
    provision::update_mailbox(
        store,
        &SystemClock,
        &Address::parse("alice@example.org").unwrap(),
        provision::MailboxChanges {
            display_name: Some("Alice".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let rehashed = hash_argon2id(b"alice-password-1", CHEAP).unwrap();
    assert!(store
        .replace_password_hash(
            "alice@example.org",
            m.password_hash.as_deref().unwrap(),
            &rehashed
        )
        .await
        .unwrap());
    store
        .set_auth_source("alice@example.org", AuthSource::Local, now)
        .await
        .unwrap();
    assert!(site
        .get("/", Some(&session))
        .await
        .body
        .contains("mailbox-address"));

    // A new password.
    store
        .set_password_hash("alice@example.org", Some(&rehashed), now)
        .await
        .unwrap();
    assert_ended(&site, &session, "password changed").await;

    // The auth source switched (and back: the generation moved on).
    let session = signed_in(&site, "alice@example.org", "alice-password-1").await;
    store
        .set_auth_source("alice@example.org", AuthSource::Oidc, now)
        .await
        .unwrap();
    store
        .set_auth_source("alice@example.org", AuthSource::Local, now)
        .await
        .unwrap();
    assert_ended(&site, &session, "auth source switched").await;

    // The identity-provider account unlinked.
    let session = signed_in(&site, "carol@example.org", "carol-password").await;
    provision::update_mailbox(
        store,
        &SystemClock,
        &Address::parse("carol@example.org").unwrap(),
        provision::MailboxChanges {
            unlink_identity: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_ended(&site, &session, "identity unlinked").await;

    // Receive-only, disabled, the domain disabled, deleted.
    for (why, state) in [
        ("receive-only", mailauthd::store::MailboxState::NoLogin),
        ("disabled", mailauthd::store::MailboxState::Disabled),
    ] {
        let session = signed_in(&site, "alice@example.org", "alice-password-1").await;
        let mut m = store
            .get_mailbox("alice@example.org")
            .await
            .unwrap()
            .unwrap();
        m.state = state;
        store.update_mailbox(&m, &|_, _| Ok(())).await.unwrap();
        assert_ended(&site, &session, why).await;
        m.state = mailauthd::store::MailboxState::Active;
        store.update_mailbox(&m, &|_, _| Ok(())).await.unwrap();
    }
    let session = signed_in(&site, "alice@example.org", "alice-password-1").await;
    let mut d = store.get_domain("example.org").await.unwrap().unwrap();
    d.active = false;
    store.update_domain(&d).await.unwrap();
    assert_ended(&site, &session, "domain disabled").await;
    d.active = true;
    store.update_domain(&d).await.unwrap();
    let session = signed_in(&site, "alice@example.org", "alice-password-1").await;
    store.delete_mailbox("alice@example.org").await.unwrap();
    assert_ended(&site, &session, "mailbox deleted").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creating_an_app_password_rechecks_the_mailbox() {
    let (site, core, _dir) = start().await;
    let store = &*core.store;
    let session = signed_in(&site, "alice@example.org", "alice-password-1").await;
    let csrf = site.get("/", Some(&session)).await.csrf();
    let form = [("csrf", csrf.as_str()), ("name", "phone"), ("imap", "on")];
    let create = || site.post("/app-passwords", Some(&session), &form);
    // The postmaster takes IMAP away after sign-in.
    let mut m = store
        .get_mailbox("alice@example.org")
        .await
        .unwrap()
        .unwrap();
    m.protocols = Protocols::parse_list("smtp").unwrap();
    store.update_mailbox(&m, &|_, _| Ok(())).await.unwrap();
    let r = create().await;
    assert!(r.body.contains("does not allow IMAP"), "{}", r.body);
    // ... and makes the mailbox receive-only.
    m.protocols = Protocols::ALL;
    m.state = mailauthd::store::MailboxState::NoLogin;
    store.update_mailbox(&m, &|_, _| Ok(())).await.unwrap();
    let r = create().await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.body.contains("Signed out"), "{}", r.body);
    assert!(store
        .list_app_passwords("alice@example.org")
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_forwarded_for_is_read_only_from_trusted_proxies_right_to_left() {
    let last_login_ip = |core: &Core| {
        let store = core.store.clone();
        async move {
            // Last use is written in batches.
            for _ in 0..100 {
                let m = store
                    .get_mailbox("alice@example.org")
                    .await
                    .unwrap()
                    .unwrap();
                if let Some(ip) = m.last_login.and_then(|l| l.ip) {
                    return ip;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            panic!("no last use recorded");
        }
    };
    let top = "[last_use]\nflush_interval_ms = 10\n";
    // No trusted proxies (the default): the header is whatever the client says.
    let (site, core, _dir) = start_with(top, "").await;
    site.sign_in_form(
        "alice@example.org",
        "alice-password-1",
        Some("198.51.100.9"),
    )
    .await;
    assert_eq!(last_login_ip(&core).await, "127.0.0.1");

    for (header, client) in [
        // The client's own entry is on the left; the proxy appended the real one.
        ("192.0.2.66, 198.51.100.9", "198.51.100.9"),
        ("192.0.2.66, 198.51.100.9:51234", "198.51.100.9"),
        ("192.0.2.66, [2001:db8::9]:443", "2001:db8::9"),
        // The proxy did not know: charged to the proxy, not to the forged entry.
        ("192.0.2.66, unknown", "127.0.0.1"),
    ] {
        let (site, core, _dir) =
            start_with(top, "trusted_proxies = [\"127.0.0.0/8\", \"::1/128\"]\n").await;
        let r = site
            .sign_in_form("alice@example.org", "alice-password-1", Some(header))
            .await;
        assert_eq!(r.status, StatusCode::SEE_OTHER);
        assert_eq!(last_login_ip(&core).await, client, "{header}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_bounds_bodies_heads_and_connections() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (site, _core, _dir) =
        start_with("", "max_connections = 4\nheader_timeout_seconds = 1\n").await;
    let front = site.get("/", None).await;
    // Cookies are __Host- prefixed when Secure; forms post only to this site.
    assert!(front
        .cookie
        .as_deref()
        .unwrap()
        .starts_with("__Host-mailauthd_session="));
    let csp = front.headers.get("content-security-policy").unwrap();
    assert!(
        csp.to_str().unwrap().contains("form-action 'self'"),
        "{csp:?}"
    );
    // One script may run, the copy button's, by its hash: nothing inline by chance.
    let script_src = csp
        .to_str()
        .unwrap()
        .split(';')
        .map(str::trim)
        .find(|d| d.starts_with("script-src"))
        .unwrap()
        .to_string();
    let sources: Vec<&str> = script_src.split_whitespace().skip(1).collect();
    assert_eq!(sources.len(), 1, "{script_src}");
    assert!(sources[0].starts_with("'sha256-"), "{script_src}");

    let big = "x".repeat(64 * 1024);
    let r = site
        .post(
            "/login/password",
            front.cookie.as_deref(),
            &[("csrf", &front.csrf()), ("address", &big)],
        )
        .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);

    let addr = site.base.trim_start_matches("http://").to_string();
    // A header byte now and then does not keep a connection past the header timeout.
    let started = std::time::Instant::now();
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut closed = false;
    for b in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaa" {
        if slow.write_all(&[*b]).await.is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 512];
        match tokio::time::timeout(std::time::Duration::from_millis(300), slow.read(&mut buf)).await
        {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            _ => {}
        }
    }
    assert!(closed, "the slow connection was never closed");
    assert!(started.elapsed() < std::time::Duration::from_secs(4));

    // Four idle connections fill the cap; a fifth is closed at once; the four are not.
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let mut fifth = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(std::time::Duration::from_millis(800), fifth.read(&mut buf))
        .await
        .expect("the fifth connection is closed at once");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    // Once the idle ones time out, the page answers again.
    drop(idle);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(site.get("/healthz", None).await.body, "ok\n");
}

/// A provider that answers discovery (advertising RFC 9207 `iss` or not), has no keys, and
/// refuses every code; it counts the codes it is asked about.
async fn fake_provider(advertises_iss: bool) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use axum::routing::{get, post};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("http://{}", listener.local_addr().unwrap());
    let tokens = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let discovery = serde_json::json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{issuer}/authorize"),
        "token_endpoint": format!("{issuer}/token"),
        "jwks_uri": format!("{issuer}/jwks"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "authorization_response_iss_parameter_supported": advertises_iss,
    })
    .to_string();
    let counter = tokens.clone();
    let app = axum::Router::new()
        .route(
            "/.well-known/openid-configuration",
            get(move || async move { ([("content-type", "application/json")], discovery) }),
        )
        .route(
            "/jwks",
            get(|| async { ([("content-type", "application/json")], "{\"keys\":[]}") }),
        )
        .route(
            "/token",
            post(move || {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                async {
                    (
                        StatusCode::BAD_REQUEST,
                        [("content-type", "application/json")],
                        "{\"error\":\"invalid_grant\"}",
                    )
                }
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (issuer, tokens)
}

/// `/login` in a fresh browser: its cookie and the `state` it was sent to the provider with.
async fn begin_sign_in(site: &Site) -> (String, String) {
    let r = site.get("/login", None).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let url = openidconnect::url::Url::parse(r.location.as_deref().unwrap()).unwrap();
    let state = url
        .query_pairs()
        .find(|(k, _)| k == "state")
        .map(|(_, v)| v.into_owned())
        .unwrap();
    (r.cookie.unwrap(), state)
}

fn query(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", urlencode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

async fn site_with_provider(
    advertises_iss: bool,
) -> (
    Site,
    String,
    Arc<std::sync::atomic::AtomicUsize>,
    Core,
    tempfile::TempDir,
) {
    let (issuer, tokens) = fake_provider(advertises_iss).await;
    let (site, core, dir) = start_with(
        &format!(
            "[oidc]\nissuer = \"{issuer}\"\nclient_id = \"mail\"\nclient_secret = \"s3cret\"\n\
             redirect_url = \"http://127.0.0.1:9/callback\"\ntimeout_ms = 2000\n"
        ),
        "",
    )
    .await;
    (site, issuer, tokens, core, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_error_text_is_shown_only_for_this_browsers_sign_in() {
    let (site, issuer, _tokens, _core, _dir) = site_with_provider(true).await;
    let lure = "Call +1-555-0100 to unlock your account";
    // Anyone can send a browser to /callback with words of their choosing.
    let forged = site
        .get(
            &format!(
                "/callback?{}",
                query(&[
                    ("error", "server_error"),
                    ("error_description", lure),
                    ("state", "x")
                ])
            ),
            None,
        )
        .await;
    assert_eq!(forged.status, StatusCode::BAD_REQUEST);
    assert!(!forged.body.contains("555"), "{}", forged.body);
    let (cookie, state) = begin_sign_in(&site).await;
    let wrong_state = site
        .get(
            &format!(
                "/callback?{}",
                query(&[
                    ("error", "server_error"),
                    ("error_description", lure),
                    ("state", &format!("{state}x")),
                    ("iss", &issuer),
                ])
            ),
            Some(&cookie),
        )
        .await;
    assert!(!wrong_state.body.contains("555"), "{}", wrong_state.body);
    // The real answer to this browser's sign-in: its text is shown.
    let (cookie, state) = begin_sign_in(&site).await;
    let real = site
        .get(
            &format!(
                "/callback?{}",
                query(&[
                    ("error", "server_error"),
                    ("error_description", "maintenance until noon"),
                    ("state", &state),
                    ("iss", &issuer),
                ])
            ),
            Some(&cookie),
        )
        .await;
    assert_eq!(real.status, StatusCode::FORBIDDEN);
    assert!(
        real.body.contains("maintenance until noon"),
        "{}",
        real.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_authorisation_response_iss_is_checked_when_the_provider_advertises_it() {
    let (site, issuer, tokens, _core, _dir) = site_with_provider(true).await;
    let callback = |cookie: String, params: Vec<(&'static str, String)>| {
        let site = &site;
        async move {
            let pairs: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
            site.get(&format!("/callback?{}", query(&pairs)), Some(&cookie))
                .await
        }
    };
    let count = || tokens.load(std::sync::atomic::Ordering::SeqCst);
    // Missing, or naming another provider (a mix-up): refused before the code is used.
    let (cookie, state) = begin_sign_in(&site).await;
    let r = callback(cookie, vec![("code", "c1".into()), ("state", state)]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.body.contains("could not be verified"), "{}", r.body);
    let (cookie, state) = begin_sign_in(&site).await;
    let r = callback(
        cookie,
        vec![
            ("code", "c2".into()),
            ("state", state),
            ("iss", "https://attacker.example".into()),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.body.contains("could not be verified"), "{}", r.body);
    assert_eq!(count(), 0, "no code reached the token endpoint");
    // Ours: on to the token endpoint (which refuses the made-up code).
    let (cookie, state) = begin_sign_in(&site).await;
    let r = callback(
        cookie,
        vec![
            ("code", "c3".into()),
            ("state", state),
            ("iss", issuer.clone()),
        ],
    )
    .await;
    assert!(r.body.contains("did not accept this sign-in"), "{}", r.body);
    assert_eq!(count(), 1);

    // A provider that does not advertise it: no iss is fine, a wrong one still is not.
    let (site, _issuer, tokens, _core, _dir) = site_with_provider(false).await;
    let (cookie, state) = begin_sign_in(&site).await;
    let pairs = [("code", "c4"), ("state", state.as_str())];
    let r = site
        .get(&format!("/callback?{}", query(&pairs)), Some(&cookie))
        .await;
    assert!(r.body.contains("did not accept this sign-in"), "{}", r.body);
    assert_eq!(tokens.load(std::sync::atomic::Ordering::SeqCst), 1);
    let (cookie, state) = begin_sign_in(&site).await;
    let pairs = [
        ("code", "c5"),
        ("state", state.as_str()),
        ("iss", "https://attacker.example"),
    ];
    let r = site
        .get(&format!("/callback?{}", query(&pairs)), Some(&cookie))
        .await;
    assert!(r.body.contains("could not be verified"), "{}", r.body);
    assert_eq!(tokens.load(std::sync::atomic::Ordering::SeqCst), 1);
}
