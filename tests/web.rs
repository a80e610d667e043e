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
use mailauthd::store::{AuthSource, Store};
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use reqwest::StatusCode;

struct Page {
    status: StatusCode,
    cookie: Option<String>,
    location: Option<String>,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Page {
    fn csrf(&self) -> String {
        let start = self
            .body
            .find("name=\"csrf\" value=\"")
            .expect("a CSRF field")
            + 19;
        let end = self.body[start..].find('"').unwrap();
        self.body[start..start + end].to_string()
    }
}

struct Site {
    base: String,
    http: reqwest::Client,
}

impl Site {
    async fn get(&self, path: &str, cookie: Option<&str>) -> Page {
        let mut req = self.http.get(format!("{}{path}", self.base));
        if let Some(c) = cookie {
            req = req.header(COOKIE, c);
        }
        page(req.send().await.unwrap()).await
    }

    async fn post(&self, path: &str, cookie: Option<&str>, form: &[(&str, &str)]) -> Page {
        let body: String = form
            .iter()
            .map(|(k, v)| format!("{k}={}", urlencode(v)))
            .collect::<Vec<_>>()
            .join("&");
        let mut req = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        if let Some(c) = cookie {
            req = req.header(COOKIE, c);
        }
        page(req.send().await.unwrap()).await
    }
}

fn urlencode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn page(r: reqwest::Response) -> Page {
    let status = r.status();
    let headers = r.headers().clone();
    let cookie = headers
        .get(SET_COOKIE)
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_string());
    let location = headers
        .get(LOCATION)
        .map(|v| v.to_str().unwrap().to_string());
    Page {
        status,
        cookie,
        location,
        headers,
        body: r.text().await.unwrap(),
    }
}

async fn start() -> (Site, Core, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "state_directory = {:?}\nruntime_directory = {:?}\n[credentials]\nargon2_memory_kib = 8192\nargon2_iterations = 1\n[web]\nlisten = \"127.0.0.1:0\"\ntitle = \"Test Mail\"\n",
        dir.path().join("state"),
        dir.path().join("run"),
    );
    let config = mailauthd::config::parse(&text).unwrap();
    let core = Core::start(&config).await.unwrap();
    let store: Arc<dyn mailauthd::store::Store> = core.store.clone();
    store
        .create_domain(&mailauthd::store::Domain {
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
    for (address, source) in [
        ("alice@example.org", AuthSource::Local),
        ("bob@example.org", AuthSource::Oidc),
    ] {
        provision::create_mailbox(
            &*store,
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
                oidc_identity: None,
                require_active_domain: false,
            },
        )
        .await
        .unwrap();
    }
    let settings = config.web.clone().unwrap();
    let state = mailauthd::web::state(
        &config,
        settings,
        store,
        core.auth.clone(),
        Arc::new(SystemClock),
    )
    .unwrap();
    let server = mailauthd::web::start(state, &mut mailauthd::activation::Activated::default())
        .await
        .unwrap();
    let base = format!("http://{}", server.local_addr);
    // The server lives as long as the test's runtime.
    std::mem::forget(server);
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    (Site { base, http }, core, dir)
}

async fn login(core: &Core, secret: &str, service: &str) -> Outcome {
    let secret = Secret::from(secret);
    core.auth
        .authenticate(&AuthRequest {
            login: "alice@example.org",
            secret: &secret,
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

    // An oidc mailbox is sent to the provider, even with the right stored password.
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
    assert!(r.body.contains("This mailbox signs in with"), "{}", r.body);

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
