//! The introspection endpoint Dovecot 2.4 asks (`POST /oauth2/introspect`), over real HTTP
//! on an ephemeral port, with a verifier that answers from a table: who may ask, what each
//! answer of the decision core becomes, and that the throttle counts what comes through.
//! (The real validator and the real Dovecot are the end-to-end suites' business.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mailauthd::auth::app_password::AppPasswordKey;
use mailauthd::auth::last_use::LastUseWriter;
use mailauthd::auth::password::Argon2Params;
use mailauthd::auth::pool::HashPool;
use mailauthd::auth::services::ServiceMap;
use mailauthd::auth::throttle::{Fingerprinter, Throttle, ThrottleConfig};
use mailauthd::auth::verify_cache::{VerifyCache, VerifyCacheConfig};
use mailauthd::auth::{
    Authenticator, AuthenticatorParts, TokenChallenge, TokenError, TokenIdentity, TokenRefusal,
    TokenVerifier,
};
use mailauthd::clock::{Clock, SystemClock};
use mailauthd::names::{Address, Protocols};
use mailauthd::oidc::tokens::IntrospectionClient;
use mailauthd::provision::{self, NewMailbox};
use mailauthd::secret::Secret;
use mailauthd::store::{AuthSource, MailboxState, Store};
use reqwest::StatusCode;

const ISSUER: &str = "https://idp.example";
const EXP: i64 = 4_000_000_000;
const PATH: &str = "/oauth2/introspect";

struct TableVerifier {
    answers: HashMap<&'static str, Result<TokenIdentity, TokenError>>,
    calls: AtomicUsize,
}

#[async_trait::async_trait]
impl TokenVerifier for TableVerifier {
    async fn verify(&self, token: &str) -> Result<TokenIdentity, TokenError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
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

fn identity(subject: &str) -> Result<TokenIdentity, TokenError> {
    Ok(TokenIdentity {
        issuer: ISSUER.into(),
        subject: subject.into(),
        expires_at: EXP,
    })
}

struct Endpoint {
    base: String,
    http: reqwest::Client,
    auth: Arc<Authenticator>,
    store: Arc<dyn Store>,
    verifier: Arc<TableVerifier>,
    state: Arc<mailauthd::web::WebState>,
    _db: common::TestDb,
    _dir: tempfile::TempDir,
}

/// The web listener with the endpoint open to `dovecot` / `introspection-secret` (unless
/// `clients` is false); `bob@example.org` (imap only) is bound to `sub-bob`, the `local`
/// mailbox `carol@example.org` to `sub-carol`.
async fn start(clients: bool) -> Endpoint {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "state_directory = {:?}\nruntime_directory = {:?}\n[web]\nlisten = \"127.0.0.1:0\"\ntitle = \"Test Mail\"\n",
        dir.path().join("state"),
        dir.path().join("run"),
    );
    let config = mailauthd::config::parse(&text).unwrap();
    let db = common::fresh(&common::Backend::Sqlite).await;
    let store = db.dyn_store();
    common::create_example_org(&*store).await;
    for (address, source, subject) in [
        ("bob@example.org", AuthSource::Oidc, "sub-bob"),
        ("carol@example.org", AuthSource::Local, "sub-carol"),
    ] {
        provision::create_mailbox(
            &*store,
            &SystemClock,
            NewMailbox {
                address: Address::parse(address).unwrap(),
                password_hash: None,
                auth_source: source,
                display_name: String::new(),
                quota: None,
                protocols: Some(Protocols::parse_list("imap").unwrap()),
                state: Some(MailboxState::Active),
                template: None,
                oidc_identity: Some((ISSUER.into(), subject.into())),
                require_active_domain: false,
            },
        )
        .await
        .unwrap();
    }
    let verifier = Arc::new(TableVerifier {
        answers: HashMap::from([
            ("tok-bob", identity("sub-bob")),
            ("tok-carol", identity("sub-carol")),
            ("tok-nobody", identity("sub-nobody")),
            (
                "tok-expired",
                Err(TokenError::Refused(TokenRefusal::Expired)),
            ),
            (
                "tok-down",
                Err(TokenError::Unavailable("connection refused".into())),
            ),
        ]),
        calls: AtomicUsize::new(0),
    });
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let (sender, writer) = LastUseWriter::spawn(store.clone(), Duration::from_millis(20), 100);
    // The writer lives as long as the test's runtime.
    std::mem::forget(writer);
    let auth = Arc::new(
        Authenticator::new(AuthenticatorParts {
            store: store.clone(),
            key: AppPasswordKey::new(vec![42; 32]),
            pool: Arc::new(HashPool::new(1, 8)),
            clock: clock.clone(),
            services: ServiceMap::default(),
            argon2: Argon2Params {
                memory_kib: 256,
                iterations: 1,
                parallelism: 1,
            },
            rehash_on_login: false,
            last_use: sender,
            throttle: Arc::new(Throttle::in_memory(
                ThrottleConfig::default(),
                Fingerprinter::with_key([7; 32]),
            )),
            verify_cache: Arc::new(
                VerifyCache::new(VerifyCacheConfig::default(), clock.clone()).unwrap(),
            ),
            max_age_without_sign_in: None,
            tokens: Some(verifier.clone()),
        })
        .unwrap(),
    );
    let state = mailauthd::web::state(
        config.web.clone().unwrap(),
        None,
        &config.metrics,
        None,
        store.clone(),
        auth.clone(),
        clock,
    )
    .unwrap();
    if clients {
        state.set_introspection_clients(vec![
            IntrospectionClient {
                client_id: "other".into(),
                client_secret: Secret::from("other-secret"),
            },
            IntrospectionClient {
                client_id: "dovecot".into(),
                client_secret: Secret::from("introspection-secret"),
            },
        ]);
    }
    let server = mailauthd::web::start(
        state.clone(),
        &mut mailauthd::activation::Activated::default(),
    )
    .await
    .unwrap();
    let base = format!("http://{}", server.local_addr);
    std::mem::forget(server);
    Endpoint {
        base,
        http: reqwest::Client::new(),
        auth,
        store,
        verifier,
        state,
        _db: db,
        _dir: dir,
    }
}

struct Answer {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    json: serde_json::Value,
}

impl Endpoint {
    /// POSTs `body` (a form) to `path_and_query`, as `who` (id, secret) if given.
    async fn post(&self, path_and_query: &str, who: Option<(&str, &str)>, body: String) -> Answer {
        let mut req = self
            .http
            .post(format!("{}{path_and_query}", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        if let Some((id, secret)) = who {
            req = req.basic_auth(id, Some(secret));
        }
        let r = req.send().await.unwrap();
        let status = r.status();
        let headers = r.headers().clone();
        let text = r.text().await.unwrap();
        let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
        Answer {
            status,
            headers,
            json,
        }
    }

    async fn introspect(&self, service: &str, token: &str) -> Answer {
        self.post(
            &format!("{PATH}?service={service}"),
            Some(("dovecot", "introspection-secret")),
            format!("token={token}&token_type_hint=access_token"),
        )
        .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_configured_clients_there_is_no_endpoint() {
    let e = start(false).await;
    let a = e.introspect("imap", "tok-bob").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(e.verifier.calls.load(Ordering::SeqCst), 0);
    // Closed again once opened: the list is what decides.
    e.state.set_introspection_clients(vec![IntrospectionClient {
        client_id: "dovecot".into(),
        client_secret: Secret::from("introspection-secret"),
    }]);
    assert_eq!(e.introspect("imap", "tok-bob").await.status, StatusCode::OK);
    e.state.set_introspection_clients(Vec::new());
    assert_eq!(
        e.introspect("imap", "tok-bob").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_configured_clients_may_ask() {
    let e = start(true).await;
    let body = || "token=tok-bob".to_string();
    let path = format!("{PATH}?service=imap");
    for (row, who) in [
        ("no credentials", None),
        ("wrong secret", Some(("dovecot", "other-secret"))),
        (
            "unknown client",
            Some(("roundcube", "introspection-secret")),
        ),
        ("empty", Some(("", ""))),
    ] {
        let a = e.post(&path, who, body()).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{row}");
        assert_eq!(
            a.headers.get("www-authenticate").unwrap(),
            "Basic realm=\"mailauthd\"",
            "{row}"
        );
        assert_eq!(a.headers.get("cache-control").unwrap(), "no-store", "{row}");
        assert_eq!(a.json["error"], "invalid_client", "{row}");
    }
    // Strangers are turned away before the body is read or the token looked at, even
    // a body far too large.
    // The server may answer and close before the client has sent the whole body; then
    // the client sees the connection go instead of the 401, which is as good.
    let huge = format!("token={}", "a".repeat(64 * 1024));
    let sent = e
        .http
        .post(format!("{}{path}", e.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(huge.clone())
        .send()
        .await;
    match sent {
        Ok(r) => assert_eq!(r.status(), StatusCode::UNAUTHORIZED),
        Err(err) => assert!(!err.is_timeout() && err.status().is_none(), "{err}"),
    }
    assert_eq!(e.verifier.calls.load(Ordering::SeqCst), 0);

    // Either configured client may ask.
    let a = e.post(&path, Some(("other", "other-secret")), body()).await;
    assert_eq!(
        (a.status, a.json["active"].clone()),
        (StatusCode::OK, true.into())
    );
    let a = e
        .post(&path, Some(("dovecot", "introspection-secret")), huge)
        .await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(a.headers.get("cache-control").unwrap(), "no-store");
    assert_eq!(e.verifier.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_decision_becomes_its_answer() {
    let e = start(true).await;

    let a = e.introspect("imap", "tok-bob").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.headers.get("cache-control").unwrap(), "no-store");
    assert!(a
        .headers
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    assert_eq!(
        a.json,
        serde_json::json!({
            "active": true,
            "username": "bob@example.org",
            "sub": "sub-bob",
            "iss": ISSUER,
            "exp": EXP,
        })
    );
    // `protocol=` names the service too; submission is SMTP, which bob may not use.
    let a = e
        .post(
            &format!("{PATH}?protocol=imap"),
            Some(("dovecot", "introspection-secret")),
            "token=tok-bob".into(),
        )
        .await;
    assert_eq!(a.json["active"], true);
    let a = e.introspect("submission", "tok-bob").await;
    assert_eq!(
        (a.status, a.json.clone()),
        (StatusCode::OK, serde_json::json!({"active": false}))
    );

    // Every refusal says no more than `active: false`.
    for token in ["tok-expired", "tok-forged", "tok-nobody", "tok-carol"] {
        let a = e.introspect("imap", token).await;
        assert_eq!(a.status, StatusCode::OK, "{token}");
        assert_eq!(a.json, serde_json::json!({"active": false}), "{token}");
        assert_eq!(
            a.headers.get("cache-control").unwrap(),
            "no-store",
            "{token}"
        );
    }
    // An unknown service is refused too (and audited as such), never a temporary failure.
    let a = e.introspect("ftp", "tok-bob").await;
    assert_eq!(a.json, serde_json::json!({"active": false}));

    // A provider nobody can reach: try again later, never "inactive".
    let a = e.introspect("imap", "tok-down").await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(a.json["error"], "temporarily_unavailable");
    assert_eq!(a.headers.get("cache-control").unwrap(), "no-store");

    // The mailbox disabled: the same valid token is inactive at once.
    let mut bob = e
        .store
        .get_mailbox("bob@example.org")
        .await
        .unwrap()
        .unwrap();
    bob.state = MailboxState::Disabled;
    e.store.update_mailbox(&bob, &|_, _| Ok(())).await.unwrap();
    let a = e.introspect("imap", "tok-bob").await;
    assert_eq!(a.json, serde_json::json!({"active": false}));

    // What the request lacks.
    let who = Some(("dovecot", "introspection-secret"));
    for (row, path, body) in [
        ("no service", PATH.to_string(), "token=tok-bob"),
        ("empty service", format!("{PATH}?service="), "token=tok-bob"),
        (
            "no token",
            format!("{PATH}?service=imap"),
            "token_type_hint=access_token",
        ),
        ("empty token", format!("{PATH}?service=imap"), "token="),
    ] {
        let a = e.post(&path, who, body.into()).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{row}");
        assert_eq!(a.json["error"], "invalid_request", "{row}");
        assert_eq!(a.headers.get("cache-control").unwrap(), "no-store", "{row}");
    }
    // Only POST.
    let r = e
        .http
        .get(format!("{}{PATH}?service=imap&token=tok-bob", e.base))
        .basic_auth("dovecot", Some("introspection-secret"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
}

/// The endpoint is one more door of the decision core: what it refuses is counted by the
/// throttle, each token against an account of its own (Dovecot sends no client address).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoint_goes_through_the_throttle() {
    let e = start(true).await;
    let now = SystemClock.now_ms();
    assert!(e.auth.throttle().list(now).await.is_empty());
    for token in ["forged-1", "forged-2", "tok-nobody"] {
        assert_eq!(e.introspect("imap", token).await.json["active"], false);
    }
    // Neither an outage nor an accepted token is a failure.
    assert_eq!(
        e.introspect("imap", "tok-down").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(e.introspect("imap", "tok-bob").await.json["active"], true);
    let listed = e.auth.throttle().list(SystemClock.now_ms()).await;
    assert_eq!(listed.len(), 3, "{listed:?}");
    for l in &listed {
        assert!(l.key.to_string().starts_with("token:"), "{listed:?}");
        assert_eq!(l.failures, 1, "{listed:?}");
    }
}

/// Dovecot 2.4 has one `introspection_url` for all protocols: the protocol and the mail
/// client's address come in the headers `send_auth_headers = yes` adds, and they win over
/// the URL's `?service=`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dovecot_auth_headers_name_the_protocol_and_the_client() {
    let e = start(true).await;
    let ask = |protocol: &'static str, remote: &'static str, token: &'static str| {
        e.http
            .post(format!("{}{PATH}?service=imap", e.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("X-Dovecot-Auth-Protocol", protocol)
            .header("X-Dovecot-Auth-Remote", remote)
            .basic_auth("dovecot", Some("introspection-secret"))
            .body(format!("token={token}"))
            .send()
    };
    // bob's mailbox allows IMAP only: the URL says imap, the header says pop3.
    let r = ask("pop3", "198.51.100.7", "tok-bob").await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(body, serde_json::json!({"active": false}));
    // The refusal was counted against the client's address too, not only the token.
    let listed = e.auth.throttle().list(SystemClock.now_ms()).await;
    assert!(
        listed
            .iter()
            .any(|l| l.key.to_string().contains("198.51.100.7") && l.failures >= 1),
        "{listed:?}"
    );
    let r = ask("imap", "198.51.100.7", "tok-bob").await.unwrap();
    let body: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(body["active"], true);
    assert_eq!(body["username"], "bob@example.org");
}
