//! What a token's claims must say, whether they came from a verified JWT or from the
//! provider's introspection answer: one function, so both ways hold a token to the same
//! rules.
//!
//! The rules, in the order they are checked (the first broken one is the refusal):
//! 1. `iss` is exactly the configured issuer. An introspection answer may leave it out
//!    (RFC 7662 makes it optional and the answer comes from our provider over TLS), but
//!    may not name another one.
//! 2. `exp` is present, a number, and later than now minus the skew.
//! 3. `nbf` and `iat`, when present, are not later than now plus the skew.
//! 4. `aud` (a string or an array) or `azp` names one of the configured audiences; an
//!    introspection answer's `client_id` counts like `azp`.
//! 5. `scope` (space separated, or an array) contains the required scope, if one is set.
//! 6. `sub` is a non-empty string: with the issuer, the identity a mailbox is bound to.

use serde_json::{Map, Value};

use crate::auth::{TokenIdentity, TokenRefusal};
use crate::clock::UnixTime;

/// The fixed part of the rules: from the settings, at start.
#[derive(Clone, Debug)]
pub struct Rules {
    pub issuer: String,
    pub audiences: Vec<String>,
    pub required_scope: Option<String>,
    pub skew_seconds: i64,
}

/// Where the claims came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Jwt,
    Introspection,
}

/// Subjects and issuers longer than this are no identity we store.
const MAX_ID_LEN: usize = 255;

/// A time claim as whole seconds; some providers send fractions.
fn seconds(value: &Value) -> Option<i64> {
    value.as_i64().or_else(|| {
        value
            .as_f64()
            .filter(|f| f.is_finite() && f.abs() < 1e15)
            .map(|f| f.floor() as i64)
    })
}

fn names_audience(value: Option<&Value>, audiences: &[String]) -> bool {
    let allowed = |v: &Value| v.as_str().is_some_and(|s| audiences.iter().any(|a| a == s));
    match value {
        Some(Value::Array(list)) => list.iter().any(allowed),
        Some(v) => allowed(v),
        None => false,
    }
}

fn has_scope(value: Option<&Value>, wanted: &str) -> bool {
    match value {
        Some(Value::String(s)) => s.split_ascii_whitespace().any(|s| s == wanted),
        Some(Value::Array(list)) => list.iter().any(|v| v.as_str() == Some(wanted)),
        _ => false,
    }
}

/// What only ID tokens say: Keycloak's `typ: "ID"`, Cognito's `token_use: "id"`, and the
/// hashes OpenID Connect Core puts in ID tokens alone (`at_hash`, `c_hash`, `s_hash`).
/// RFC 9068's `typ: at+jwt` header would be the clean test, but Keycloak and others mark
/// their access tokens plain `JWT`, so the claims decide.
fn is_id_token(claims: &Map<String, Value>) -> bool {
    let says = |name: &str, value: &str| {
        claims
            .get(name)
            .and_then(Value::as_str)
            .is_some_and(|v| v.eq_ignore_ascii_case(value))
    };
    says("typ", "ID")
        || says("token_use", "id")
        || ["at_hash", "c_hash", "s_hash"]
            .iter()
            .any(|name| claims.contains_key(*name))
}

pub fn check(
    claims: &Map<String, Value>,
    rules: &Rules,
    source: Source,
    now: UnixTime,
) -> Result<TokenIdentity, TokenRefusal> {
    match (claims.get("iss"), source) {
        (Some(Value::String(iss)), _) if *iss == rules.issuer => {}
        (None, Source::Introspection) => {}
        (None, Source::Jwt) => return Err(TokenRefusal::MissingClaim),
        _ => return Err(TokenRefusal::Issuer),
    }
    if source == Source::Jwt && is_id_token(claims) {
        return Err(TokenRefusal::IdToken);
    }
    let exp = claims
        .get("exp")
        .and_then(seconds)
        .ok_or(TokenRefusal::MissingClaim)?;
    if exp <= now.saturating_sub(rules.skew_seconds) {
        return Err(TokenRefusal::Expired);
    }
    let latest = now.saturating_add(rules.skew_seconds);
    for name in ["nbf", "iat"] {
        match claims.get(name) {
            None | Some(Value::Null) => {}
            Some(v) => match seconds(v) {
                Some(t) if t <= latest => {}
                Some(_) => return Err(TokenRefusal::NotYetValid),
                None => return Err(TokenRefusal::Malformed),
            },
        }
    }
    let audience = names_audience(claims.get("aud"), &rules.audiences)
        || names_audience(claims.get("azp"), &rules.audiences)
        || (source == Source::Introspection
            && names_audience(claims.get("client_id"), &rules.audiences));
    if !audience {
        return Err(TokenRefusal::Audience);
    }
    if let Some(scope) = &rules.required_scope {
        if !has_scope(claims.get("scope"), scope) {
            return Err(TokenRefusal::Scope);
        }
    }
    let subject = match claims.get("sub") {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_ID_LEN => s.clone(),
        _ => return Err(TokenRefusal::MissingClaim),
    };
    Ok(TokenIdentity {
        issuer: rules.issuer.clone(),
        subject,
        expires_at: exp,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn rules() -> Rules {
        Rules {
            issuer: "https://idp.example".into(),
            audiences: vec!["roundcube".into(), "sogo".into()],
            required_scope: None,
            skew_seconds: 60,
        }
    }

    fn good() -> Value {
        json!({
            "iss": "https://idp.example", "sub": "alice", "aud": "roundcube",
            "exp": NOW + 300, "iat": NOW - 10, "nbf": NOW - 10, "scope": "openid email",
        })
    }

    fn with(changes: Value) -> Map<String, Value> {
        let mut c = good().as_object().cloned().unwrap();
        for (k, v) in changes.as_object().unwrap() {
            if v.is_null() {
                c.remove(k);
            } else {
                c.insert(k.clone(), v.clone());
            }
        }
        c
    }

    fn verdict(changes: Value, source: Source) -> Result<TokenIdentity, TokenRefusal> {
        check(&with(changes), &rules(), source, NOW)
    }

    #[test]
    fn good_claims_give_the_identity() {
        let id = verdict(json!({}), Source::Jwt).unwrap();
        assert_eq!(
            id,
            TokenIdentity {
                issuer: "https://idp.example".into(),
                subject: "alice".into(),
                expires_at: NOW + 300,
            }
        );
    }

    #[test]
    fn the_issuer_must_match_exactly() {
        for iss in [
            json!("https://idp.example/"),
            json!("https://IDP.example"),
            json!("https://evil.example"),
            json!(["https://idp.example"]),
        ] {
            for source in [Source::Jwt, Source::Introspection] {
                assert_eq!(
                    verdict(json!({ "iss": iss }), source),
                    Err(TokenRefusal::Issuer)
                );
            }
        }
        // Missing: a JWT must name it, an introspection answer may leave it out.
        assert_eq!(
            verdict(json!({"iss": null}), Source::Jwt),
            Err(TokenRefusal::MissingClaim)
        );
        assert!(verdict(json!({"iss": null}), Source::Introspection).is_ok());
    }

    #[test]
    fn expiry_and_not_before_honour_the_skew() {
        assert_eq!(
            verdict(json!({"exp": null}), Source::Jwt),
            Err(TokenRefusal::MissingClaim)
        );
        assert_eq!(
            verdict(json!({"exp": "tomorrow"}), Source::Jwt),
            Err(TokenRefusal::MissingClaim)
        );
        assert_eq!(
            verdict(json!({"exp": NOW - 60}), Source::Jwt),
            Err(TokenRefusal::Expired)
        );
        // Expired 59 seconds ago: within the skew.
        assert!(verdict(json!({"exp": NOW - 59}), Source::Jwt).is_ok());
        assert!(verdict(json!({"exp": (NOW + 10) as f64 + 0.5}), Source::Jwt).is_ok());
        for claim in ["nbf", "iat"] {
            assert_eq!(
                verdict(json!({ claim: NOW + 61 }), Source::Jwt),
                Err(TokenRefusal::NotYetValid),
                "{claim}"
            );
            assert!(verdict(json!({ claim: NOW + 60 }), Source::Jwt).is_ok());
            assert_eq!(
                verdict(json!({ claim: "soon" }), Source::Jwt),
                Err(TokenRefusal::Malformed)
            );
        }
        let strict = Rules {
            skew_seconds: 0,
            ..rules()
        };
        assert_eq!(
            check(&with(json!({"exp": NOW})), &strict, Source::Jwt, NOW),
            Err(TokenRefusal::Expired)
        );
        assert_eq!(
            check(&with(json!({"nbf": NOW + 1})), &strict, Source::Jwt, NOW),
            Err(TokenRefusal::NotYetValid)
        );
    }

    #[test]
    fn aud_or_azp_must_name_an_allowed_client() {
        assert_eq!(
            verdict(json!({"aud": "other"}), Source::Jwt),
            Err(TokenRefusal::Audience)
        );
        assert_eq!(
            verdict(json!({"aud": null}), Source::Jwt),
            Err(TokenRefusal::Audience)
        );
        assert_eq!(
            verdict(json!({"aud": ["a", "b"]}), Source::Jwt),
            Err(TokenRefusal::Audience)
        );
        assert!(verdict(json!({"aud": ["account", "sogo"]}), Source::Jwt).is_ok());
        assert!(verdict(json!({"aud": "account", "azp": "roundcube"}), Source::Jwt).is_ok());
        // client_id counts in an introspection answer only.
        let by_client = json!({"aud": null, "client_id": "roundcube"});
        assert_eq!(
            verdict(by_client.clone(), Source::Jwt),
            Err(TokenRefusal::Audience)
        );
        assert!(verdict(by_client, Source::Introspection).is_ok());
    }

    #[test]
    fn the_required_scope_must_be_granted() {
        let rules = Rules {
            required_scope: Some("email".into()),
            ..rules()
        };
        let run = |scope: Value| check(&with(json!({ "scope": scope })), &rules, Source::Jwt, NOW);
        assert!(run(json!("openid email")).is_ok());
        assert!(run(json!(["openid", "email"])).is_ok());
        assert_eq!(run(json!("openid emails")), Err(TokenRefusal::Scope));
        assert_eq!(run(json!("openid")), Err(TokenRefusal::Scope));
        assert_eq!(run(Value::Null), Err(TokenRefusal::Scope));
    }

    #[test]
    fn id_tokens_are_not_access_tokens() {
        for marks in [
            json!({"typ": "ID"}),
            json!({"token_use": "id"}),
            json!({"at_hash": "x4Ewg2UwMVk3FzBmbQhkzQ"}),
            json!({"c_hash": "LDktKdoQak3Pk0cnXxCltA"}),
            json!({"s_hash": "LDktKdoQak3Pk0cnXxCltA"}),
        ] {
            assert_eq!(
                verdict(marks.clone(), Source::Jwt),
                Err(TokenRefusal::IdToken),
                "{marks}"
            );
        }
        // What access tokens say of themselves passes: Keycloak's and Cognito's.
        assert!(verdict(json!({"typ": "Bearer"}), Source::Jwt).is_ok());
        assert!(verdict(json!({"token_use": "access"}), Source::Jwt).is_ok());
        // An introspected token is what the provider says is active: its claims are the
        // provider's answer, not the token's.
        assert!(verdict(json!({"typ": "ID"}), Source::Introspection).is_ok());
    }

    #[test]
    fn the_subject_is_required() {
        for sub in [Value::Null, json!(""), json!(42), json!("x".repeat(256))] {
            assert_eq!(
                verdict(json!({ "sub": sub }), Source::Jwt),
                Err(TokenRefusal::MissingClaim)
            );
        }
    }
}
