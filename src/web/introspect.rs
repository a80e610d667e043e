//! `POST /oauth2/introspect`: token introspection (RFC 7662) for Dovecot 2.4's `oauth2`
//! passdb, so a mail login with a webmail's token is decided here like any other.
//!
//! Dovecot posts the token it was offered (form field `token`; `token_type_hint` is
//! ignored). The service is the `X-Dovecot-Auth-Protocol` header that Dovecot's
//! `send_auth_headers = yes` adds, else the query (`?service=imap`, or `?protocol=`) of its
//! `introspection_url` — one URL for every protocol in Dovecot 2.4, so the header is what
//! tells IMAP from POP3. The client's address comes from `X-Dovecot-Auth-Remote` the same
//! way and feeds the throttle. The answer is the decision core's, made with no login name,
//! under mechanism `introspection`:
//! - accepted: 200 `{"active":true,"username":<canonical mailbox>,…}`, so Dovecot takes
//!   the mailbox from us (`oauth2_username_attribute = username`);
//! - refused, for any reason: 200 `{"active":false}`, saying no more, as §2.2 asks;
//! - undecidable (provider or store unreachable): 503 `temporarily_unavailable`, so a
//!   login that might pass is never turned away as a wrong password.
//!
//! Only the clients listed in `[[oauth.introspection_clients]]` may ask, with HTTP Basic
//! (compared in constant time); with none listed the endpoint is not there (404). Callers
//! are checked before the body is looked at, so a stranger learns nothing but 401. Every
//! answer is `Cache-Control: no-store`. The throttle sees each token as an account of its
//! own (there is no name to count by) and counts refusals against the client's address
//! when Dovecot sends it.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Form;
use base64::Engine;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::account::FormResult;
use super::{field, AppState};
use crate::auth::{AuthRequest, Outcome, SecretKind};
use crate::oidc::tokens::IntrospectionClient;
use crate::secret::Secret;

/// Where the endpoint is served; Dovecot's `introspection_url` names it.
pub const INTROSPECTION_PATH: &str = "/oauth2/introspect";

/// What the audit line and the metrics call this door's exchanges.
const MECHANISM: &str = "introspection";

fn json(status: StatusCode, body: &serde_json::Value) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body.to_string(),
    )
        .into_response()
}

fn error(status: StatusCode, error: &str, description: &str) -> Response {
    json(
        status,
        &serde_json::json!({"error": error, "error_description": description}),
    )
}

fn unauthorized() -> Response {
    let mut response = error(
        StatusCode::UNAUTHORIZED,
        "invalid_client",
        "HTTP Basic authentication as a configured introspection client is required",
    );
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"mailauthd\""),
    );
    response
}

pub async fn introspect(
    State(state): State<AppState>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    headers: HeaderMap,
    form: FormResult,
) -> Response {
    let clients = state.introspection_clients();
    if clients.is_empty() {
        return super::not_found(&state);
    }
    let Some(client) = authenticated_client(&headers, &clients) else {
        tracing::warn!(target: "mailauthd::web", "introspection request without valid client credentials");
        return unauthorized();
    };
    let fields = match form {
        Ok(Form(fields)) => fields,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request",
                "the request body is too large",
            );
        }
        Err(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "the body must be a form (application/x-www-form-urlencoded)",
            );
        }
    };
    let query = match query {
        Ok(Query(q)) => q,
        Err(_) => Vec::new(),
    };
    // Dovecot 2.4 reads one `introspection_url` for every protocol, so the URL's service
    // is only a fallback: with `send_auth_headers = yes` it names the login's own protocol
    // and the client's address in headers, which a configured client may be believed on.
    let Some(service) = dovecot_header(&headers, PROTOCOL_HEADER)
        .or_else(|| field(&query, "service"))
        .or_else(|| field(&query, "protocol"))
        .filter(|s| !s.is_empty())
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "name the mail service in the URL: ?service=imap (or pop3, submission, sieve, …)",
        );
    };
    let Some(token) = field(&fields, "token").filter(|t| !t.is_empty()) else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the form field token is required",
        );
    };
    let secret = Secret::from(token.to_string());
    let (outcome, identity) = state
        .auth
        .authenticate_with_identity(&AuthRequest {
            login: "",
            secret: &secret,
            kind: SecretKind::BearerToken,
            service,
            remote_ip: dovecot_header(&headers, REMOTE_HEADER).and_then(|ip| ip.parse().ok()),
            // The caller proved itself a configured client; whether its connection is
            // encrypted is the listener's business, and no rule reads this for tokens.
            secured: true,
            mechanism: Some(MECHANISM),
            no_penalty: false,
            admitted: None,
        })
        .await;
    tracing::debug!(target: "mailauthd::web", client = %client, outcome = outcome.label(), "introspection");
    match outcome {
        Outcome::Ok(success) => {
            let mut body = serde_json::json!({"active": true, "username": success.mailbox});
            if let Some(identity) = identity {
                body["sub"] = identity.subject.into();
                body["iss"] = identity.issuer.into();
                body["exp"] = identity.expires_at.into();
            }
            json(StatusCode::OK, &body)
        }
        Outcome::Fail(_) => json(StatusCode::OK, &serde_json::json!({"active": false})),
        Outcome::TempFail(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "the token cannot be checked right now; try again",
        ),
    }
}

/// The header Dovecot's `send_auth_headers` names the login's protocol in.
const PROTOCOL_HEADER: &str = "x-dovecot-auth-protocol";
/// The header Dovecot's `send_auth_headers` names the mail client's address in.
const REMOTE_HEADER: &str = "x-dovecot-auth-remote";

fn dovecot_header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// The client the request's HTTP Basic credentials name, if they are right.
///
/// Every configured client is compared, each over digests of equal length, so the time
/// taken tells neither which client id exists nor how much of a secret was right.
fn authenticated_client<'a>(
    headers: &HeaderMap,
    clients: &'a [IntrospectionClient],
) -> Option<&'a str> {
    let (id, secret) = basic_credentials(headers)?;
    let (id, secret) = (Sha256::digest(id), Sha256::digest(secret));
    let mut found = None;
    for client in clients {
        let id_matches = Sha256::digest(client.client_id.as_bytes()).ct_eq(&id);
        let secret_matches = Sha256::digest(client.client_secret.expose()).ct_eq(&secret);
        if bool::from(id_matches & secret_matches) {
            found = Some(client.client_id.as_str());
        }
    }
    found
}

/// `Authorization: Basic …` split at the first colon into id and secret (RFC 7617), as
/// sent: Dovecot sends the user and password of its `introspection_url` without the form
/// encoding of RFC 6749 §2.3.1.
fn basic_credentials(headers: &HeaderMap) -> Option<(Vec<u8>, Vec<u8>)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    let (id, secret) = decoded.split_at(colon);
    Some((id.to_vec(), secret[1..].to_vec()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn with_basic(user_pass: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        let encoded = base64::engine::general_purpose::STANDARD.encode(user_pass);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {encoded}")).unwrap(),
        );
        h
    }

    fn clients() -> Vec<IntrospectionClient> {
        vec![
            IntrospectionClient {
                client_id: "dovecot".into(),
                client_secret: Secret::from("s3cret:with colon"),
            },
            IntrospectionClient {
                client_id: "other".into(),
                client_secret: Secret::from("x"),
            },
        ]
    }

    #[test]
    fn only_a_configured_client_with_its_own_secret_passes() {
        let c = clients();
        assert_eq!(
            authenticated_client(&with_basic("dovecot:s3cret:with colon"), &c),
            Some("dovecot")
        );
        assert_eq!(
            authenticated_client(&with_basic("other:x"), &c),
            Some("other")
        );
        for wrong in [
            "dovecot:s3cret",
            "dovecot:x",
            "other:s3cret:with colon",
            "Dovecot:s3cret:with colon",
            "dovecot",
            ":",
            "",
        ] {
            assert_eq!(
                authenticated_client(&with_basic(wrong), &c),
                None,
                "{wrong:?}"
            );
        }
        let mut bearer = HeaderMap::new();
        bearer.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(authenticated_client(&bearer, &c), None);
        assert_eq!(authenticated_client(&HeaderMap::new(), &c), None);
        let mut garbled = HeaderMap::new();
        garbled.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic !!!"));
        assert_eq!(authenticated_client(&garbled, &c), None);
    }

    #[test]
    fn the_scheme_name_is_case_insensitive() {
        let encoded = base64::engine::general_purpose::STANDARD.encode("other:x");
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("bAsIc {encoded}")).unwrap(),
        );
        assert_eq!(authenticated_client(&h, &clients()), Some("other"));
    }
}
