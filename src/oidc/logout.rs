//! OpenID Connect Back-Channel Logout 1.0: the checks of a logout token (§2.6).
//!
//! The provider POSTs a logout token when a person signs out there; what it names (a
//! provider session `sid`, or an account `sub`) is to be signed out here. Anyone can POST,
//! so the token is believed only once it has passed every check below; the signature and
//! key choice are [`super::jwt`]'s. Whether its `jti` was seen before is the caller's check,
//! against the store, so a replay to any daemon of the database is caught.

use serde_json::{Map, Value};
use thiserror::Error;

use super::jwt::{self, JwtError, KeySource};
use crate::clock::UnixTime;

/// The `events` member a logout token must have.
pub const EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";
/// A token issued longer ago than this is refused: the provider sends it as it logs out.
pub const MAX_AGE_SECS: i64 = 10 * 60;
/// Clocks may differ this much between the provider and here.
pub const SKEW_SECS: i64 = 60;

/// A logout token that passed every check but the replay check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogoutToken {
    pub issuer: String,
    pub subject: Option<String>,
    pub sid: Option<String>,
    pub jti: String,
    /// Until when the `jti` must be remembered: after it, the token is too old anyway.
    pub remember_until: UnixTime,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum LogoutRefusal {
    #[error("{0}")]
    Jwt(#[from] JwtError),
    #[error("iss is not the provider's issuer")]
    Issuer,
    #[error("aud does not name this client")]
    Audience,
    #[error("no iat")]
    NoIssuedAt,
    #[error("iat is too far in the past")]
    TooOld,
    #[error("iat is in the future")]
    Future,
    #[error("exp has passed")]
    Expired,
    #[error("no events claim with the back-channel logout event")]
    NoEvent,
    #[error("the back-channel logout event is not a JSON object")]
    EventNotObject,
    #[error("a logout token must not have a nonce")]
    Nonce,
    #[error("neither sub nor sid")]
    NoSubject,
    #[error("no jti")]
    NoJti,
    #[error("this logout token was used before (jti replayed)")]
    Replayed,
}

impl LogoutRefusal {
    /// A short code for the audit line and the metric.
    pub fn code(&self) -> &'static str {
        match self {
            LogoutRefusal::Jwt(JwtError::Malformed(_)) => "malformed",
            LogoutRefusal::Jwt(JwtError::Algorithm(_)) => "algorithm",
            LogoutRefusal::Jwt(JwtError::Critical) => "critical_header",
            LogoutRefusal::Jwt(JwtError::UnknownKey(_)) => "unknown_key",
            LogoutRefusal::Jwt(JwtError::BadSignature) => "bad_signature",
            LogoutRefusal::Jwt(JwtError::Keys(_)) => "keys_unavailable",
            LogoutRefusal::Issuer => "issuer",
            LogoutRefusal::Audience => "audience",
            LogoutRefusal::NoIssuedAt => "no_iat",
            LogoutRefusal::TooOld => "too_old",
            LogoutRefusal::Future => "future_iat",
            LogoutRefusal::Expired => "expired",
            LogoutRefusal::NoEvent => "no_event",
            LogoutRefusal::EventNotObject => "event_not_object",
            LogoutRefusal::Nonce => "nonce",
            LogoutRefusal::NoSubject => "no_sub_or_sid",
            LogoutRefusal::NoJti => "no_jti",
            LogoutRefusal::Replayed => "replayed",
        }
    }
}

fn text<'a>(claims: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    claims
        .get(name)
        .and_then(Value::as_str)
        .filter(|v| !v.is_empty())
}

/// The claim checks of §2.6 steps 3–5 (all but the signature and the replay).
pub fn check_claims(
    claims: &Map<String, Value>,
    issuer: &str,
    client_id: &str,
    now: UnixTime,
) -> Result<LogoutToken, LogoutRefusal> {
    if text(claims, "iss") != Some(issuer) {
        return Err(LogoutRefusal::Issuer);
    }
    let audience = match claims.get("aud") {
        Some(Value::String(a)) => a == client_id,
        Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(client_id)),
        _ => false,
    };
    if !audience {
        return Err(LogoutRefusal::Audience);
    }
    let Some(iat) = claims.get("iat").and_then(Value::as_i64) else {
        return Err(LogoutRefusal::NoIssuedAt);
    };
    if iat > now.saturating_add(SKEW_SECS) {
        return Err(LogoutRefusal::Future);
    }
    if iat < now.saturating_sub(MAX_AGE_SECS) {
        return Err(LogoutRefusal::TooOld);
    }
    if let Some(exp) = claims.get("exp") {
        match exp.as_i64() {
            Some(exp) if exp.saturating_add(SKEW_SECS) > now => {}
            _ => return Err(LogoutRefusal::Expired),
        }
    }
    let event = claims
        .get("events")
        .and_then(Value::as_object)
        .and_then(|events| events.get(EVENT));
    match event {
        None => return Err(LogoutRefusal::NoEvent),
        Some(Value::Object(_)) => {}
        Some(_) => return Err(LogoutRefusal::EventNotObject),
    }
    if claims.contains_key("nonce") {
        return Err(LogoutRefusal::Nonce);
    }
    let subject = text(claims, "sub").map(str::to_string);
    let sid = text(claims, "sid").map(str::to_string);
    if subject.is_none() && sid.is_none() {
        return Err(LogoutRefusal::NoSubject);
    }
    let Some(jti) = text(claims, "jti") else {
        return Err(LogoutRefusal::NoJti);
    };
    Ok(LogoutToken {
        issuer: issuer.to_string(),
        subject,
        sid,
        jti: jti.to_string(),
        remember_until: iat.saturating_add(MAX_AGE_SECS).saturating_add(SKEW_SECS),
    })
}

/// Verifies the token's signature with the provider's keys, then its claims.
pub async fn validate(
    token: &str,
    keys: &dyn KeySource,
    issuer: &str,
    client_id: &str,
    now: UnixTime,
) -> Result<LogoutToken, LogoutRefusal> {
    let claims = jwt::verify(token, keys).await?;
    check_claims(&claims, issuer, client_id, now)
}

#[cfg(test)]
mod tests {
    use async_trait::async_trait;
    use openidconnect::core::CoreJsonWebKey;
    use serde_json::json;

    use super::super::fetch::FetchError;
    use super::super::jwt::test_keys::RsaTestKey;
    use super::*;

    const ISS: &str = "https://idp.example";
    const NOW: i64 = 1_800_000_000;

    struct Keys(Vec<CoreJsonWebKey>);

    #[async_trait]
    impl KeySource for Keys {
        async fn keys(&self, _refetch: bool) -> Result<Vec<CoreJsonWebKey>, FetchError> {
            Ok(self.0.clone())
        }
    }

    fn good() -> Value {
        json!({
            "iss": ISS,
            "aud": "mailauthd",
            "iat": NOW,
            "exp": NOW + 120,
            "jti": "j-1",
            "sid": "s-1",
            "sub": "alice",
            "events": {EVENT: {}},
        })
    }

    async fn run(claims: Value) -> Result<LogoutToken, LogoutRefusal> {
        let key = RsaTestKey::new("k1");
        let token = key.sign(&claims);
        validate(&token, &Keys(vec![key.public()]), ISS, "mailauthd", NOW).await
    }

    fn without(name: &str) -> Value {
        let mut c = good();
        c.as_object_mut().unwrap().remove(name);
        c
    }

    fn with(name: &str, value: Value) -> Value {
        let mut c = good();
        c[name] = value;
        c
    }

    #[tokio::test]
    async fn a_good_logout_token_names_the_session_and_account() {
        let t = run(good()).await.unwrap();
        assert_eq!(t.sid.as_deref(), Some("s-1"));
        assert_eq!(t.subject.as_deref(), Some("alice"));
        assert_eq!(t.jti, "j-1");
        assert!(t.remember_until >= NOW + MAX_AGE_SECS);
        // aud as a list; no exp; sid alone; sub alone.
        assert!(run(with("aud", json!(["other", "mailauthd"])))
            .await
            .is_ok());
        assert!(run(without("exp")).await.is_ok());
        assert!(run(without("sub")).await.is_ok());
        assert!(run(without("sid")).await.is_ok());
    }

    #[tokio::test]
    async fn wrong_issuer_is_refused() {
        assert_eq!(
            run(with("iss", json!("https://evil.example"))).await,
            Err(LogoutRefusal::Issuer)
        );
        assert_eq!(
            run(with("iss", json!(format!("{ISS}/")))).await,
            Err(LogoutRefusal::Issuer)
        );
        assert_eq!(run(without("iss")).await, Err(LogoutRefusal::Issuer));
    }

    #[tokio::test]
    async fn wrong_audience_is_refused() {
        assert_eq!(
            run(with("aud", json!("another-client"))).await,
            Err(LogoutRefusal::Audience)
        );
        assert_eq!(
            run(with("aud", json!(["a", "b"]))).await,
            Err(LogoutRefusal::Audience)
        );
        assert_eq!(run(without("aud")).await, Err(LogoutRefusal::Audience));
    }

    #[tokio::test]
    async fn missing_old_or_future_iat_is_refused() {
        assert_eq!(run(without("iat")).await, Err(LogoutRefusal::NoIssuedAt));
        assert_eq!(
            run(with("iat", json!("yesterday"))).await,
            Err(LogoutRefusal::NoIssuedAt)
        );
        assert_eq!(
            run(with("iat", json!(NOW - MAX_AGE_SECS - 1))).await,
            Err(LogoutRefusal::TooOld)
        );
        assert!(run(with("iat", json!(NOW - MAX_AGE_SECS))).await.is_ok());
        assert_eq!(
            run(with("iat", json!(NOW + SKEW_SECS + 1))).await,
            Err(LogoutRefusal::Future)
        );
        assert!(run(with("iat", json!(NOW + SKEW_SECS))).await.is_ok());
    }

    #[tokio::test]
    async fn an_expired_token_is_refused() {
        assert_eq!(
            run(with("exp", json!(NOW - SKEW_SECS))).await,
            Err(LogoutRefusal::Expired)
        );
        assert_eq!(
            run(with("exp", json!("soon"))).await,
            Err(LogoutRefusal::Expired)
        );
        assert!(run(with("exp", json!(NOW - SKEW_SECS + 1))).await.is_ok());
    }

    #[tokio::test]
    async fn missing_events_or_an_event_that_is_no_object_is_refused() {
        assert_eq!(run(without("events")).await, Err(LogoutRefusal::NoEvent));
        assert_eq!(
            run(with("events", json!({"http://example/other": {}}))).await,
            Err(LogoutRefusal::NoEvent)
        );
        assert_eq!(
            run(with("events", json!([EVENT]))).await,
            Err(LogoutRefusal::NoEvent)
        );
        for not_object in [json!(true), json!("x"), json!([]), json!(null)] {
            assert_eq!(
                run(with("events", json!({EVENT: not_object}))).await,
                Err(LogoutRefusal::EventNotObject)
            );
        }
    }

    #[tokio::test]
    async fn a_nonce_is_refused() {
        assert_eq!(
            run(with("nonce", json!("n"))).await,
            Err(LogoutRefusal::Nonce)
        );
    }

    #[tokio::test]
    async fn neither_sub_nor_sid_is_refused() {
        let mut c = good();
        c.as_object_mut().unwrap().remove("sub");
        c.as_object_mut().unwrap().remove("sid");
        assert_eq!(run(c).await, Err(LogoutRefusal::NoSubject));
        assert_eq!(
            run(with("sub", json!("")).clone()).await.map(|t| t.subject),
            Ok(None),
            "an empty sub is no sub"
        );
    }

    #[tokio::test]
    async fn a_missing_jti_is_refused() {
        assert_eq!(run(without("jti")).await, Err(LogoutRefusal::NoJti));
    }

    #[tokio::test]
    async fn a_forged_signature_is_refused_before_any_claim() {
        let key = RsaTestKey::new("k1");
        let forger = RsaTestKey::new("k1");
        let got = validate(
            &forger.sign(&good()),
            &Keys(vec![key.public()]),
            ISS,
            "mailauthd",
            NOW,
        )
        .await;
        assert_eq!(got, Err(LogoutRefusal::Jwt(JwtError::BadSignature)));
    }
}
