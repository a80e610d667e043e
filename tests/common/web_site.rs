//! The web page's test client, shared by tests/web.rs and tests/web_devices.rs: pages
//! fetched over real HTTP with their status, session cookie, headers and body.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use mailauthd::auth::password::{hash_argon2id, Argon2Params};
use mailauthd::clock::{Clock, SystemClock};
use mailauthd::names::{Address, Protocols};
use mailauthd::provision::{self, NewMailbox};
use mailauthd::runtime::Core;
use mailauthd::store::AuthSource;
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use reqwest::StatusCode;

pub struct Page {
    pub status: StatusCode,
    pub cookie: Option<String>,
    pub location: Option<String>,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Page {
    pub fn csrf(&self) -> String {
        let start = self
            .body
            .find("name=\"csrf\" value=\"")
            .expect("a CSRF field")
            + 19;
        let end = self.body[start..].find('"').unwrap();
        self.body[start..start + end].to_string()
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap())
            .unwrap_or("")
    }

    /// The text of the element with this id (no nested markup).
    pub fn by_id(&self, id: &str) -> Option<String> {
        let at = self.body.find(&format!("id=\"{id}\""))?;
        let start = at + self.body[at..].find('>')? + 1;
        let end = start + self.body[start..].find('<')?;
        Some(self.body[start..end].to_string())
    }
}

pub struct Site {
    pub base: String,
    pub http: reqwest::Client,
}

impl Site {
    pub async fn get(&self, path: &str, cookie: Option<&str>) -> Page {
        let mut req = self.http.get(format!("{}{path}", self.base));
        if let Some(c) = cookie {
            req = req.header(COOKIE, c);
        }
        page(req.send().await.unwrap()).await
    }

    pub async fn get_with_host(&self, path: &str, host: &str) -> Page {
        let req = self
            .http
            .get(format!("{}{path}", self.base))
            .header("host", host);
        page(req.send().await.unwrap()).await
    }

    pub async fn post_body(&self, path: &str, body: Vec<u8>) -> Page {
        let req = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "text/xml")
            .body(body);
        page(req.send().await.unwrap()).await
    }

    pub async fn post(&self, path: &str, cookie: Option<&str>, form: &[(&str, &str)]) -> Page {
        self.post_from(path, cookie, form, None).await
    }

    /// A form post, through a proxy that says the client is `forwarded_for`.
    pub async fn post_from(
        &self,
        path: &str,
        cookie: Option<&str>,
        form: &[(&str, &str)],
        forwarded_for: Option<&str>,
    ) -> Page {
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
        if let Some(f) = forwarded_for {
            req = req.header("x-forwarded-for", f);
        }
        page(req.send().await.unwrap()).await
    }

    /// Signs in with the password form from a fresh anonymous session.
    pub async fn sign_in_form(
        &self,
        address: &str,
        password: &str,
        forwarded_for: Option<&str>,
    ) -> Page {
        let front = self.get("/", None).await;
        self.post_from(
            "/login/password",
            front.cookie.as_deref(),
            &[
                ("csrf", &front.csrf()),
                ("address", address),
                ("password", password),
            ],
            forwarded_for,
        )
        .await
    }
}

pub fn urlencode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub async fn page(r: reqwest::Response) -> Page {
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

/// A mailbox at example.org the test site starts with.
pub struct TestMailbox<'a> {
    pub address: &'a str,
    pub protocols: &'a str,
    pub source: AuthSource,
    pub display_name: &'a str,
    pub password: &'a str,
}

/// The web page over HTTP on an ephemeral port: `top` added to the config's top sections
/// and `web` to `[web]`, the domain example.org with `mailboxes`, cheap Argon2id.
pub async fn start_site(
    top: &str,
    web: &str,
    mailboxes: &[TestMailbox<'_>],
) -> (Site, Core, tempfile::TempDir) {
    start_site_with_clock(top, web, mailboxes, Arc::new(SystemClock)).await
}

/// [`start_site`] with the web page on `clock` (sessions, one-time results, downloads).
pub async fn start_site_with_clock(
    top: &str,
    web: &str,
    mailboxes: &[TestMailbox<'_>],
    clock: Arc<dyn Clock>,
) -> (Site, Core, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "state_directory = {:?}\nruntime_directory = {:?}\n[credentials]\nargon2_memory_kib = 8192\nargon2_iterations = 1\n{top}\n[web]\nlisten = \"127.0.0.1:0\"\ntitle = \"Test Mail\"\n{web}\n",
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
    for m in mailboxes {
        provision::create_mailbox(
            &*store,
            &SystemClock,
            NewMailbox {
                address: Address::parse(m.address).unwrap(),
                password_hash: Some(hash_argon2id(m.password.as_bytes(), cheap).unwrap()),
                auth_source: m.source,
                display_name: m.display_name.into(),
                quota: None,
                protocols: Some(Protocols::parse_list(m.protocols).unwrap()),
                state: None,
                template: None,
                oidc_identity: None,
                require_active_domain: false,
            },
        )
        .await
        .unwrap();
    }
    let state = mailauthd::web::state(
        config.web.clone().unwrap(),
        config.oidc.as_ref(),
        &config.metrics,
        config.clients.clone(),
        store,
        core.auth.clone(),
        clock,
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
