//! The relying party against a small fake provider that can misbehave on purpose: ID tokens
//! with the wrong audience, expired, unsigned, signed by a stranger or for another nonce; a
//! token endpoint that refuses or is too slow; a provider that is down; claims of the wrong
//! type. Each must end in a clear error and never in claims.
//! (The happy path with a real provider and a real browser is tests/e2e/oidc/run.sh.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use chrono::{TimeDelta, Utc};
use openidconnect::core::{
    CoreGenderClaim, CoreJweContentEncryptionAlgorithm, CoreJwsSigningAlgorithm,
    CoreRsaPrivateSigningKey,
};
use openidconnect::url::Url;
use openidconnect::{
    Audience, IdToken, IdTokenClaims, IssuerUrl, JsonWebKeyId, PrivateSigningKey, StandardClaims,
    SubjectIdentifier,
};
use serde_json::{json, Value};

use mailauthd::clock::SystemClock;
use mailauthd::oidc::{ExtraClaims, OidcError, OidcSettings, RelyingParty};

const KEY_PEM: &str = include_str!("fixtures/oidc-test-rsa.pem");

#[derive(Clone, Debug, PartialEq)]
enum Token {
    Good,
    WrongAudience,
    Expired,
    WrongNonce,
    Unsigned,
    StrangerKey,
    Refused,
    Slow,
}

struct Fake {
    issuer: String,
    scenario: Token,
    nonce: String,
    userinfo: Value,
    token_form: Vec<(String, String)>,
}

type Shared = Arc<Mutex<Fake>>;

fn signing_key(kid: &str) -> CoreRsaPrivateSigningKey {
    CoreRsaPrivateSigningKey::from_pem(KEY_PEM, Some(JsonWebKeyId::new(kid.into()))).unwrap()
}

fn id_token(fake: &Fake) -> String {
    let now = Utc::now();
    let (aud, exp, nonce) = match fake.scenario {
        Token::WrongAudience => (
            "someone-else",
            now + TimeDelta::minutes(5),
            fake.nonce.clone(),
        ),
        Token::Expired => ("mailauthd", now - TimeDelta::minutes(5), fake.nonce.clone()),
        Token::WrongNonce => ("mailauthd", now + TimeDelta::minutes(5), "another".into()),
        _ => ("mailauthd", now + TimeDelta::minutes(5), fake.nonce.clone()),
    };
    let mut extra = serde_json::Map::new();
    extra.insert("nonce".into(), json!(nonce));
    let claims = IdTokenClaims::new(
        IssuerUrl::new(fake.issuer.clone()).unwrap(),
        vec![Audience::new(aud.into())],
        exp,
        now - TimeDelta::minutes(10),
        StandardClaims::new(SubjectIdentifier::new("subject-1".into())),
        ExtraClaims::default(),
    )
    .set_nonce(Some(openidconnect::Nonce::new(nonce)));
    if fake.scenario == Token::Unsigned {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let payload = serde_json::to_vec(&claims).unwrap();
        return format!(
            "{}.{}.",
            b64.encode(br#"{"alg":"none"}"#),
            b64.encode(payload)
        );
    }
    // A stranger's key has another kid, so it is not in the published key set.
    let kid = if fake.scenario == Token::StrangerKey {
        "stranger"
    } else {
        "k1"
    };
    let token: IdToken<
        ExtraClaims,
        CoreGenderClaim,
        CoreJweContentEncryptionAlgorithm,
        CoreJwsSigningAlgorithm,
    > = IdToken::new(
        claims,
        &signing_key(kid),
        CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
        None,
        None,
    )
    .unwrap();
    token.to_string()
}

fn json_response(status: axum::http::StatusCode, v: Value) -> Response {
    (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

#[allow(non_snake_case)]
fn Json(v: Value) -> Response {
    json_response(axum::http::StatusCode::OK, v)
}

async fn discovery(State(s): State<Shared>) -> Response {
    let issuer = s.lock().unwrap().issuer.clone();
    let mut doc = common::discovery_document(&issuer);
    doc["userinfo_endpoint"] = json!(format!("{issuer}/userinfo"));
    doc["token_endpoint_auth_methods_supported"] = json!(["client_secret_post"]);
    Json(doc)
}

async fn jwks() -> Response {
    let key = signing_key("k1").as_verification_key();
    Json(json!({ "keys": [key] }))
}

async fn token(State(s): State<Shared>, Form(form): Form<Vec<(String, String)>>) -> Response {
    let (scenario, body) = {
        let mut f = s.lock().unwrap();
        f.token_form = form.clone();
        (f.scenario.clone(), id_token(&f))
    };
    let secret_ok = form
        .iter()
        .any(|(k, v)| k == "client_secret" && v == "client-secret-1");
    if !secret_ok {
        return json_response(
            axum::http::StatusCode::UNAUTHORIZED,
            json!({"error": "invalid_client"}),
        );
    }
    match scenario {
        Token::Refused => json_response(
            axum::http::StatusCode::BAD_REQUEST,
            json!({"error": "invalid_grant", "error_description": "code already used"}),
        ),
        Token::Slow => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            Json(json!({}))
        }
        _ => Json(json!({
            "access_token": "access-1",
            "token_type": "Bearer",
            "expires_in": 300,
            "id_token": body,
        })),
    }
}

async fn userinfo(State(s): State<Shared>, headers: axum::http::HeaderMap) -> Response {
    let bearer = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if bearer != Some("Bearer access-1") {
        return json_response(
            axum::http::StatusCode::UNAUTHORIZED,
            json!({"error": "invalid_token"}),
        );
    }
    Json(s.lock().unwrap().userinfo.clone())
}

async fn fake_provider() -> (Shared, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("http://{}", listener.local_addr().unwrap());
    let shared = Arc::new(Mutex::new(Fake {
        issuer: issuer.clone(),
        scenario: Token::Good,
        nonce: String::new(),
        userinfo: json!({
            "sub": "subject-1",
            "email": "Alice@Example.ORG",
            "email_verified": true,
            "name": "Alice",
            "mailcow_template": ["students", "staff"],
        }),
        token_form: Vec::new(),
    }));
    let app = Router::new()
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/jwks", get(jwks))
        .route("/token", post(token))
        .route("/userinfo", get(userinfo))
        .with_state(shared.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (shared, issuer)
}

fn settings(issuer: &str) -> OidcSettings {
    common::oidc_settings(
        issuer,
        "client-secret-1",
        &["openid", "email", "mailcow_template"],
    )
}

async fn attempt(
    rp: &RelyingParty,
    fake: &Shared,
    scenario: Token,
) -> Result<mailauthd::oidc::Identity, OidcError> {
    let auth = rp.begin().await.unwrap();
    {
        let mut f = fake.lock().unwrap();
        f.scenario = scenario;
        f.nonce = String::from_utf8(auth.pending.nonce.expose().to_vec()).unwrap();
    }
    let url = auth.url.to_string();
    assert!(url.contains("code_challenge_method=S256"), "{url}");
    assert!(url.contains("state=") && url.contains("nonce="), "{url}");
    assert!(url.contains("mailcow_template"), "{url}");
    assert!(
        !url.contains("offline_access"),
        "not asked of a provider that does not list it: {url}"
    );
    rp.finish(&auth.pending, "code-1").await
}

#[tokio::test]
async fn a_good_sign_in_merges_userinfo_over_the_id_token() {
    let (fake, issuer) = fake_provider().await;
    let rp = RelyingParty::new(settings(&issuer), Arc::new(SystemClock)).unwrap();
    let identity = attempt(&rp, &fake, Token::Good).await.unwrap();
    let c = &identity.claims;
    assert_eq!(c.issuer, issuer);
    assert_eq!(c.subject, "subject-1");
    assert_eq!(c.address, "Alice@Example.ORG");
    assert_eq!(c.email_verified, Some(true));
    assert_eq!(c.template_values, vec!["students", "staff"]);
    // The provider advertised client_secret_post only, so that is what we used; and PKCE.
    let form = fake.lock().unwrap().token_form.clone();
    let has = |k: &str, v: &str| form.iter().any(|(a, b)| a == k && b == v);
    assert!(has("client_secret", "client-secret-1"), "{form:?}");
    assert!(form.iter().any(|(k, _)| k == "code_verifier"), "{form:?}");
    let raw = String::from_utf8(identity.id_token.expose().to_vec()).unwrap();
    assert!(raw.starts_with("eyJ"));
    assert!(
        !format!("{identity:?}").contains(&raw),
        "the ID token stays out of Debug"
    );
}

#[tokio::test]
async fn bad_id_tokens_are_refused() {
    let (fake, issuer) = fake_provider().await;
    let rp = RelyingParty::new(settings(&issuer), Arc::new(SystemClock)).unwrap();
    for bad in [
        Token::WrongAudience,
        Token::Expired,
        Token::WrongNonce,
        Token::Unsigned,
        Token::StrangerKey,
    ] {
        let e = attempt(&rp, &fake, bad.clone()).await.unwrap_err();
        assert!(matches!(e, OidcError::IdToken(_)), "{bad:?}: {e:?}");
        assert!(
            e.person_message().contains("could not be verified"),
            "{bad:?}"
        );
    }
}

#[tokio::test]
async fn token_endpoint_refusals_and_timeouts_are_clear() {
    let (fake, issuer) = fake_provider().await;
    let rp = RelyingParty::new(settings(&issuer), Arc::new(SystemClock)).unwrap();
    let e = attempt(&rp, &fake, Token::Refused).await.unwrap_err();
    assert!(
        matches!(&e, OidcError::TokenRefused { error, .. } if error == "invalid_grant"),
        "{e:?}"
    );
    let started = std::time::Instant::now();
    let e = attempt(&rp, &fake, Token::Slow).await.unwrap_err();
    assert!(matches!(e, OidcError::Unreachable(_)), "{e:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the timeout applies"
    );
}

#[tokio::test]
async fn claims_of_the_wrong_type_are_named() {
    let (fake, issuer) = fake_provider().await;
    fake.lock().unwrap().userinfo =
        json!({"sub": "subject-1", "email": "a@example.org", "mailcow_template": 5});
    let rp = RelyingParty::new(settings(&issuer), Arc::new(SystemClock)).unwrap();
    let e = attempt(&rp, &fake, Token::Good).await.unwrap_err();
    assert!(matches!(e, OidcError::Claims(_)), "{e:?}");
    assert!(e.to_string().contains("mailcow_template"), "{e}");
}

#[tokio::test]
async fn a_provider_that_is_down_is_unreachable_not_a_crash() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let issuer = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let rp = RelyingParty::new(settings(&issuer), Arc::new(SystemClock)).unwrap();
    let e = match rp.begin().await {
        Err(e) => e,
        Ok(_) => panic!("a provider that is down gave an authorization URL"),
    };
    assert!(matches!(e, OidcError::Unreachable(_)), "{e:?}");
    assert!(e.person_message().contains("cannot be reached"));
}

#[tokio::test]
async fn explicit_endpoints_work_without_discovery() {
    let (fake, issuer) = fake_provider().await;
    let mut s = settings(&issuer);
    s.endpoints = Some(mailauthd::oidc::ExplicitEndpoints {
        authorization: Url::parse(&format!("{issuer}/auth")).unwrap(),
        token: Url::parse(&format!("{issuer}/token")).unwrap(),
        userinfo: Some(Url::parse(&format!("{issuer}/userinfo")).unwrap()),
        jwks: Url::parse(&format!("{issuer}/jwks")).unwrap(),
        end_session: None,
    });
    // Nothing advertised without discovery: say how the client authenticates.
    s.client_auth = Some(mailauthd::oidc::ClientAuth::Post);
    let rp = RelyingParty::new(s, Arc::new(SystemClock)).unwrap();
    let identity = attempt(&rp, &fake, Token::Good).await.unwrap();
    assert_eq!(identity.claims.template_values, vec!["students", "staff"]);
}

#[tokio::test]
async fn idp_test_proves_the_client_credentials() {
    use mailauthd::oidc::probe::{self, Status};
    let (fake, issuer) = fake_provider().await;
    fake.lock().unwrap().scenario = Token::Refused;
    let steps = probe::run(&settings(&issuer)).await;
    let status = |title: &str| {
        steps
            .iter()
            .find(|s| s.title == title)
            .map(|s| s.status.clone())
            .unwrap_or_else(|| panic!("no step {title}: {steps:?}"))
    };
    assert_eq!(status("discovery"), Status::Pass, "{steps:?}");
    assert_eq!(status("JWKS"), Status::Pass, "{steps:?}");
    assert_eq!(status("token endpoint"), Status::Pass, "{steps:?}");
    assert_eq!(status("userinfo endpoint"), Status::Pass, "{steps:?}");
    assert_eq!(
        status("logout"),
        Status::Warn,
        "no end_session_endpoint advertised"
    );

    let mut wrong = settings(&issuer);
    wrong.client_secret = Some("not-it".into());
    let steps = probe::run(&wrong).await;
    let token = steps.iter().find(|s| s.title == "token endpoint").unwrap();
    assert_eq!(token.status, Status::Fail);
    assert!(token.detail.contains("invalid_client"), "{token:?}");
    assert!(token.hint.contains("client_secret"), "{token:?}");

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let down = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let steps = probe::run(&settings(&down)).await;
    assert_eq!(steps.len(), 1, "{steps:?}");
    assert_eq!(steps[0].status, Status::Fail);
    assert!(steps[0].hint.contains("oidc.issuer"), "{steps:?}");
}
