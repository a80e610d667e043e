//! The validator against a provider on 127.0.0.1: discovery, key set and introspection
//! served in-process, every request counted.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};

use super::*;
use crate::clock::ManualClock;
use crate::oidc::jwt::test_keys::{b64, es256, RsaTestKey};

const NOW: i64 = 1_800_000_000;

#[derive(Clone)]
enum Answer {
    Json(Value),
    Status(u16),
    NotJson,
    Slow,
    /// This object padded past the body cap: a provider that never stops talking.
    Huge(Value),
}

struct Fake {
    issuer: String,
    keys: Mutex<Vec<Value>>,
    keys_down: AtomicBool,
    discovery_hits: AtomicUsize,
    jwks_hits: AtomicUsize,
    introspect_hits: AtomicUsize,
    answer: Mutex<Answer>,
    last_auth: Mutex<Option<String>>,
    last_body: Mutex<String>,
}

impl Fake {
    fn hits(&self) -> (usize, usize, usize) {
        (
            self.discovery_hits.load(Ordering::SeqCst),
            self.jwks_hits.load(Ordering::SeqCst),
            self.introspect_hits.load(Ordering::SeqCst),
        )
    }

    fn answer(&self, a: Answer) {
        *self.answer.lock().unwrap() = a;
    }
}

/// axum is built without its JSON extractor; the body is written by hand.
fn json_body(v: Value) -> Response {
    ([("content-type", "application/json")], v.to_string()).into_response()
}

async fn discovery(State(f): State<Arc<Fake>>) -> Response {
    f.discovery_hits.fetch_add(1, Ordering::SeqCst);
    json_body(json!({
        "issuer": f.issuer,
        "jwks_uri": format!("{}/jwks", f.issuer),
        "introspection_endpoint": format!("{}/introspect", f.issuer),
        "authorization_endpoint": format!("{}/auth", f.issuer),
        "token_endpoint_auth_methods_supported": ["client_secret_basic"],
    }))
}

async fn jwks(State(f): State<Arc<Fake>>) -> Response {
    f.jwks_hits.fetch_add(1, Ordering::SeqCst);
    if f.keys_down.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let keys = f.keys.lock().unwrap().clone();
    json_body(json!({ "keys": keys }))
}

async fn introspect(State(f): State<Arc<Fake>>, headers: HeaderMap, body: String) -> Response {
    f.introspect_hits.fetch_add(1, Ordering::SeqCst);
    *f.last_auth.lock().unwrap() = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    *f.last_body.lock().unwrap() = body;
    let answer = f.answer.lock().unwrap().clone();
    match answer {
        Answer::Json(v) => json_body(v),
        Answer::Status(s) => StatusCode::from_u16(s).unwrap().into_response(),
        Answer::NotJson => "<html>sign in</html>".into_response(),
        Answer::Slow => {
            tokio::time::sleep(Duration::from_secs(2)).await;
            json_body(json!({"active": true}))
        }
        Answer::Huge(mut v) => {
            v["padding"] = Value::String("x".repeat(300 * 1024));
            json_body(v)
        }
    }
}

struct Setup {
    fake: Arc<Fake>,
    validator: TokenValidator,
    clock: ManualClock,
    key: RsaTestKey,
}

/// A free port nobody listens on.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn setup(oauth: &str) -> Setup {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("http://{}", listener.local_addr().unwrap());
    let key = RsaTestKey::new("k1");
    let fake = Arc::new(Fake {
        issuer: issuer.clone(),
        keys: Mutex::new(vec![key.public_json()]),
        keys_down: AtomicBool::new(false),
        discovery_hits: AtomicUsize::new(0),
        jwks_hits: AtomicUsize::new(0),
        introspect_hits: AtomicUsize::new(0),
        answer: Mutex::new(Answer::Json(json!({"active": false}))),
        last_auth: Mutex::new(None),
        last_body: Mutex::new(String::new()),
    });
    let app = Router::new()
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/jwks", get(jwks))
        .route("/introspect", post(introspect))
        .with_state(fake.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let text = format!(
        "[oidc]\nissuer = {issuer:?}\nclient_id = \"mailauthd\"\nclient_secret = \"s3cret\"\n\
         redirect_url = \"http://127.0.0.1:8080/callback\"\n[oauth]\n{oauth}\n"
    );
    let config = crate::config::parse(&text).unwrap();
    let clock = ManualClock::at(NOW);
    let validator = TokenValidator::new(
        config.oauth.as_ref().unwrap(),
        config.oidc.as_ref().unwrap(),
        Arc::new(clock.clone()),
    )
    .unwrap();
    Setup {
        fake,
        validator,
        clock,
        key,
    }
}

const AUD: &str = "audiences = [\"roundcube\"]";

impl Setup {
    fn claims(&self) -> Value {
        json!({
            "iss": self.fake.issuer, "sub": "alice", "aud": "roundcube",
            "exp": NOW + 300, "iat": NOW - 5, "scope": "openid email",
        })
    }

    fn claims_with(&self, changes: Value) -> Value {
        let mut c = self.claims();
        for (k, v) in changes.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c
    }

    fn jwt(&self, changes: Value) -> String {
        self.key.sign(&self.claims_with(changes))
    }

    async fn refusal(&self, token: &str) -> TokenRefusal {
        match self.validator.verify(token).await {
            Err(TokenError::Refused(r)) => r,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    async fn unavailable(&self, token: &str) {
        let got = self.validator.verify(token).await;
        assert!(matches!(got, Err(TokenError::Unavailable(_))), "{got:?}");
    }
}

#[tokio::test]
async fn a_good_jwt_gives_the_identity() {
    let s = setup(AUD).await;
    let id = s.validator.verify(&s.jwt(json!({}))).await.unwrap();
    assert_eq!(
        id,
        TokenIdentity {
            issuer: s.fake.issuer.clone(),
            subject: "alice".into(),
            expires_at: NOW + 300,
        }
    );
    assert_eq!(
        s.fake.hits(),
        (1, 1, 0),
        "discovery and keys once, no introspection"
    );
    // ES256 works as well.
    let (jwk, token) = es256("e1", &s.claims());
    s.fake
        .keys
        .lock()
        .unwrap()
        .push(serde_json::to_value(jwk).unwrap());
    s.clock.advance(11);
    assert_eq!(s.validator.verify(&token).await.unwrap().subject, "alice");
    assert_eq!(s.validator.challenge().scope, "openid");
    assert_eq!(
        s.validator.challenge().openid_configuration,
        format!("{}/.well-known/openid-configuration", s.fake.issuer)
    );
}

#[tokio::test]
async fn unsigned_and_hmac_tokens_are_refused_before_any_key_is_fetched() {
    let s = setup(AUD).await;
    let body = b64(s.claims().to_string().as_bytes());
    let none = format!("{}.{body}.", b64(br#"{"alg":"none"}"#));
    assert_eq!(s.refusal(&none).await, TokenRefusal::Algorithm);
    let input = format!("{}.{body}", b64(br#"{"alg":"HS256","kid":"k1"}"#));
    let n = s.key.key.rsa().unwrap().n().to_vec();
    for secret in [s.key.public_json().to_string().into_bytes(), n] {
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&secret).unwrap();
        mac.update(input.as_bytes());
        let token = format!("{input}.{}", b64(&mac.finalize().into_bytes()));
        assert_eq!(s.refusal(&token).await, TokenRefusal::Algorithm);
    }
    assert_eq!(s.fake.hits(), (0, 0, 0));
}

#[tokio::test]
async fn time_claims_honour_the_skew() {
    let lenient = setup(AUD).await;
    let strict = setup(&format!("{AUD}\nclock_skew_seconds = 0")).await;
    // The default 60 seconds either way, then none.
    for (s, claims, want) in [
        (
            &lenient,
            json!({"exp": NOW - 61}),
            Some(TokenRefusal::Expired),
        ),
        (
            &lenient,
            json!({"nbf": NOW + 120}),
            Some(TokenRefusal::NotYetValid),
        ),
        (&lenient, json!({"exp": NOW - 30}), None),
        (&lenient, json!({"nbf": NOW + 30}), None),
        (
            &strict,
            json!({"exp": NOW - 30}),
            Some(TokenRefusal::Expired),
        ),
        (
            &strict,
            json!({"nbf": NOW + 30}),
            Some(TokenRefusal::NotYetValid),
        ),
    ] {
        let got = match s.validator.verify(&s.jwt(claims.clone())).await {
            Ok(_) => None,
            Err(TokenError::Refused(r)) => Some(r),
            Err(e) => panic!("{claims}: {e:?}"),
        };
        assert_eq!(got, want, "{claims}");
    }
}

#[tokio::test]
async fn issuer_audience_subject_and_scope_are_checked() {
    let s = setup(&format!("{AUD}\nrequired_scope = \"email\"")).await;
    let cases = [
        (json!({"iss": "http://127.0.0.1:1"}), TokenRefusal::Issuer),
        (json!({"aud": "other"}), TokenRefusal::Audience),
        (json!({"aud": ["other", "account"]}), TokenRefusal::Audience),
        (json!({"sub": null}), TokenRefusal::MissingClaim),
        (json!({"exp": null}), TokenRefusal::MissingClaim),
        (json!({"scope": "openid profile"}), TokenRefusal::Scope),
    ];
    for (changes, refusal) in cases {
        assert_eq!(
            s.refusal(&s.jwt(changes.clone())).await,
            refusal,
            "{changes}"
        );
    }
    for changes in [
        json!({"aud": ["account", "roundcube"]}),
        json!({"aud": "account", "azp": "roundcube"}),
        json!({"scope": "email"}),
    ] {
        assert!(
            s.validator.verify(&s.jwt(changes.clone())).await.is_ok(),
            "{changes}"
        );
    }
    assert_eq!(s.validator.challenge().scope, "email");
}

#[tokio::test]
async fn an_unknown_kid_refetches_once_and_refetches_are_rate_limited() {
    let s = setup(AUD).await;
    assert!(s.validator.verify(&s.jwt(json!({}))).await.is_ok());
    assert_eq!(s.fake.hits().1, 1);
    s.clock.advance(11);
    let stranger = RsaTestKey::new("stranger");
    assert_eq!(
        s.refusal(&stranger.sign(&s.claims())).await,
        TokenRefusal::UnknownKey
    );
    assert_eq!(s.fake.hits().1, 2, "exactly one refetch");
    // Another made-up kid right after: no new fetch.
    let other = RsaTestKey::new("other");
    assert_eq!(
        s.refusal(&other.sign(&s.claims())).await,
        TokenRefusal::UnknownKey
    );
    assert_eq!(s.fake.hits().1, 2, "refetches are rate-limited");
    // A key rotated in at the provider is found once the limit has passed.
    s.fake.keys.lock().unwrap().push(other.public_json());
    s.clock.advance(11);
    let token = other.sign(&s.claims_with(json!({"sub": "bob"})));
    assert_eq!(s.validator.verify(&token).await.unwrap().subject, "bob");
    assert_eq!(s.fake.hits().1, 3);
}

#[tokio::test]
async fn an_unknown_kid_while_the_keys_cannot_be_fetched_is_unavailable_not_refused() {
    let s = setup(AUD).await;
    assert!(s.validator.verify(&s.jwt(json!({}))).await.is_ok());
    s.fake.keys_down.store(true, Ordering::SeqCst);
    s.clock.advance(11);
    // A key rotated in at the provider, which cannot be asked for its new key set.
    let rotated = RsaTestKey::new("rotated");
    let token = rotated.sign(&s.claims());
    s.unavailable(&token).await;
    // During the back-off that follows, too, without asking again.
    let hits = s.fake.hits().1;
    s.unavailable(&token).await;
    assert_eq!(s.fake.hits().1, hits, "the back-off asks nobody");
    // Tokens signed with a key of the copy still log in meanwhile.
    assert!(s
        .validator
        .verify(&s.jwt(json!({"sub": "carol"})))
        .await
        .is_ok());
    // Not cached: once the provider is back with the new key, the token is good.
    s.fake.keys.lock().unwrap().push(rotated.public_json());
    s.fake.keys_down.store(false, Ordering::SeqCst);
    s.clock.advance(11);
    assert!(s.validator.verify(&token).await.is_ok());
}

#[tokio::test]
async fn keys_that_cannot_be_fetched_make_tokens_unavailable_not_refused() {
    let s = setup(AUD).await;
    s.fake.keys_down.store(true, Ordering::SeqCst);
    let token = s.jwt(json!({}));
    s.unavailable(&token).await;
    // Not cached: once the provider is back (and the short back-off over), it works.
    s.fake.keys_down.store(false, Ordering::SeqCst);
    s.clock.advance(3);
    assert!(s.validator.verify(&token).await.is_ok());
    // A provider that is not there at all.
    let gone = format!(
        "[oidc]\nissuer = \"http://127.0.0.1:{}\"\nclient_id = \"m\"\n\
         redirect_url = \"http://127.0.0.1:8080/callback\"\n[oauth]\n{AUD}\n",
        closed_port()
    );
    let config = crate::config::parse(&gone).unwrap();
    let v = TokenValidator::new(
        config.oauth.as_ref().unwrap(),
        config.oidc.as_ref().unwrap(),
        Arc::new(ManualClock::at(NOW)),
    )
    .unwrap();
    assert!(matches!(
        v.verify(&token).await,
        Err(TokenError::Unavailable(_))
    ));
    assert!(matches!(
        v.verify("opaque-token").await,
        Err(TokenError::Unavailable(_))
    ));
}

#[tokio::test]
async fn an_overlong_token_is_refused_without_a_network_call() {
    let s = setup(AUD).await;
    let long = format!("{}.{}", s.jwt(json!({})), "A".repeat(16 * 1024));
    assert_eq!(s.refusal(&long).await, TokenRefusal::TooLong);
    assert_eq!(
        s.refusal(&"x".repeat(16 * 1024)).await,
        TokenRefusal::TooLong
    );
    assert_eq!(s.refusal("").await, TokenRefusal::Malformed);
    assert_eq!(s.refusal("has space").await, TokenRefusal::Malformed);
    assert_eq!(s.fake.hits(), (0, 0, 0));
}

fn active(issuer: &str) -> Value {
    json!({
        "active": true, "iss": issuer, "sub": "alice", "client_id": "roundcube",
        "exp": NOW + 300, "scope": "openid email", "token_type": "Bearer",
    })
}

#[tokio::test]
async fn an_opaque_token_is_introspected_with_our_client_credentials() {
    let s = setup(AUD).await;
    s.fake.answer(Answer::Json(active(&s.fake.issuer)));
    let id = s.validator.verify("opaque.token-1").await.unwrap();
    assert_eq!((id.subject.as_str(), id.expires_at), ("alice", NOW + 300));
    assert_eq!(s.fake.hits().2, 1);
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("mailauthd:s3cret")
    );
    assert_eq!(
        s.fake.last_auth.lock().unwrap().as_deref(),
        Some(basic.as_str())
    );
    let body = s.fake.last_body.lock().unwrap().clone();
    assert!(
        body.split('&').any(|p| p == "token=opaque.token-1"),
        "{body}"
    );
    // No iss in the answer is accepted; another one is not.
    let mut no_iss = active(&s.fake.issuer);
    no_iss.as_object_mut().unwrap().remove("iss");
    s.fake.answer(Answer::Json(no_iss));
    assert!(s.validator.verify("opaque-2").await.is_ok());
    s.fake.answer(Answer::Json(active("https://other.example")));
    assert_eq!(s.refusal("opaque-3").await, TokenRefusal::Issuer);
    s.fake.answer(Answer::Json(json!({"active": false})));
    assert_eq!(s.refusal("opaque-4").await, TokenRefusal::Inactive);
    s.fake
        .answer(Answer::Json(json!({"active": "true", "sub": "x"})));
    assert_eq!(s.refusal("opaque-5").await, TokenRefusal::Inactive);
}

#[tokio::test]
async fn introspection_that_fails_is_unavailable() {
    let s = setup(&format!("{AUD}\ntimeout_ms = 300")).await;
    for (i, answer) in [
        Answer::Status(500),
        Answer::Status(401),
        Answer::NotJson,
        Answer::Slow,
    ]
    .into_iter()
    .enumerate()
    {
        s.fake.answer(answer);
        let token = format!("opaque-{i}");
        s.unavailable(&token).await;
        // Never cached.
        s.fake.answer(Answer::Json(active(&s.fake.issuer)));
        assert!(s.validator.verify(&token).await.is_ok());
    }
    let down = setup(&format!(
        "{AUD}\nintrospection_url = \"http://127.0.0.1:{}/introspect\"",
        closed_port()
    ))
    .await;
    down.unavailable("opaque").await;
}

#[tokio::test]
async fn an_answer_past_the_body_cap_is_unavailable_even_when_it_says_active() {
    let s = setup(AUD).await;
    s.fake.answer(Answer::Huge(active(&s.fake.issuer)));
    match s.validator.verify("opaque-huge").await {
        Err(TokenError::Unavailable(why)) => assert!(why.contains("longer than"), "{why}"),
        other => panic!("expected a temporary failure, got {other:?}"),
    }
    // The same answer without the padding passes: it was the size that was refused.
    s.fake.answer(Answer::Json(active(&s.fake.issuer)));
    assert!(s.validator.verify("opaque-huge").await.is_ok());
}

#[tokio::test]
async fn the_introspection_mode_decides_which_tokens_go_to_the_provider() {
    let never = setup(&format!("{AUD}\nintrospection = \"never\"")).await;
    assert_eq!(never.refusal("opaque").await, TokenRefusal::Malformed);
    assert!(never.validator.verify(&never.jwt(json!({}))).await.is_ok());
    assert_eq!(never.fake.hits().2, 0);
    let always = setup(&format!("{AUD}\nintrospection = \"always\"")).await;
    always.fake.answer(Answer::Json(json!({"active": false})));
    // A JWT that would verify is still refused once the provider says it is revoked.
    assert_eq!(
        always.refusal(&always.jwt(json!({}))).await,
        TokenRefusal::Inactive
    );
    assert_eq!(always.fake.hits(), (1, 0, 1));
}

#[tokio::test]
async fn a_cached_verdict_makes_no_second_call() {
    let s = setup(AUD).await;
    s.fake.answer(Answer::Json(active(&s.fake.issuer)));
    for _ in 0..3 {
        assert!(s.validator.verify("opaque").await.is_ok());
    }
    assert_eq!(s.fake.hits().2, 1);
    let token = s.jwt(json!({}));
    for _ in 0..3 {
        assert!(s.validator.verify(&token).await.is_ok());
    }
    // A refusal is kept briefly too.
    s.fake.answer(Answer::Json(json!({"active": false})));
    for _ in 0..3 {
        assert_eq!(s.refusal("revoked").await, TokenRefusal::Inactive);
    }
    assert_eq!(s.fake.hits(), (1, 1, 2));
    s.clock.advance(cache::REFUSAL_SECONDS);
    assert_eq!(s.refusal("revoked").await, TokenRefusal::Inactive);
    assert_eq!(s.fake.hits().2, 3);
}

#[tokio::test]
async fn the_cache_never_vouches_for_a_token_past_its_exp() {
    let s = setup(&format!(
        "{AUD}\nclock_skew_seconds = 0\ncache_seconds = 3600"
    ))
    .await;
    let mut answer = active(&s.fake.issuer);
    answer["exp"] = json!(NOW + 100);
    s.fake.answer(Answer::Json(answer));
    assert!(s.validator.verify("opaque").await.is_ok());
    s.clock.advance(99);
    assert!(s.validator.verify("opaque").await.is_ok());
    assert_eq!(s.fake.hits().2, 1);
    s.clock.advance(1);
    assert_eq!(s.refusal("opaque").await, TokenRefusal::Expired);
    assert_eq!(s.fake.hits().2, 2, "asked again once exp has come");
}

#[tokio::test]
async fn the_cache_is_bounded() {
    let s = setup(&format!("{AUD}\ncache_size = 2")).await;
    s.fake.answer(Answer::Json(active(&s.fake.issuer)));
    for t in ["t1", "t2", "t3"] {
        assert!(s.validator.verify(t).await.is_ok());
    }
    assert_eq!(s.validator.cache.entries(), 2);
    for t in ["t1", "t2", "t3"] {
        assert!(s.validator.verify(t).await.is_ok());
    }
    assert!(
        s.fake.hits().2 >= 4,
        "a token was evicted and asked for again"
    );
    assert_eq!(s.validator.cache.entries(), 2);
}
