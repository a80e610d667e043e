//! `POST /backchannel-logout`: OpenID Connect Back-Channel Logout 1.0, the provider's
//! request to end the page sessions of a person who signed out there.
//!
//! The request comes from the provider's server, not a browser: no cookie, no CSRF token,
//! form field `logout_token`. The token is checked by `oidc::logout` (signature, `iss`,
//! `aud`, `iat`, `exp`, `events`, no `nonce`, `sub` or `sid`), and its `jti` is recorded
//! with the sessions it names ended in one store transaction: a replay to this daemon or
//! another sharing the database is refused, and a store that fails leaves nothing half
//! done for the provider's retry. Only page sessions end: mail logins and app passwords are
//! not touched. Answers as §2.8 says: 200 with `Cache-Control: no-store`, or 400 with a
//! JSON error; 503 when the keys or the store cannot be reached (the token was not at
//! fault, and the provider may retry).

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Form;

use super::account::FormResult;
use super::{field, AppState};
use crate::oidc::jwt::JwtError;
use crate::oidc::logout::{self, LogoutRefusal};
use crate::store::ProviderSessions;

fn json(status: StatusCode, error: &str, description: &str) -> Response {
    let body = serde_json::json!({"error": error, "error_description": description});
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

fn refused(refusal: &LogoutRefusal) -> Response {
    tracing::warn!(target: "mailauthd::audit", service = "web", mech = "backchannel_logout", outcome = "fail", reason = refusal.code(), detail = %refusal, "back-channel logout");
    crate::metrics::backchannel_logout("refused", refusal.code());
    json(
        StatusCode::BAD_REQUEST,
        "invalid_request",
        &refusal.to_string(),
    )
}

fn unavailable(reason: &'static str, detail: &str) -> Response {
    tracing::error!(target: "mailauthd::audit", service = "web", mech = "backchannel_logout", outcome = "tempfail", reason, detail, "back-channel logout");
    crate::metrics::backchannel_logout("unavailable", reason);
    json(
        StatusCode::SERVICE_UNAVAILABLE,
        "temporarily_unavailable",
        "the logout cannot be processed right now; try again",
    )
}

pub async fn backchannel_logout(State(state): State<AppState>, form: FormResult) -> Response {
    let Some(rp) = state.relying_party() else {
        return json(
            StatusCode::NOT_FOUND,
            "not_found",
            "no identity provider is configured here",
        );
    };
    let fields = match form {
        Ok(Form(fields)) => fields,
        // Past the page's body limit: refused unread, and said so (413).
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            let refusal = LogoutRefusal::Jwt(JwtError::Malformed("the request body is too large"));
            tracing::warn!(target: "mailauthd::audit", service = "web", mech = "backchannel_logout", outcome = "fail", reason = "too_large", detail = %refusal, "back-channel logout");
            crate::metrics::backchannel_logout("refused", "too_large");
            return json(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request",
                &refusal.to_string(),
            );
        }
        Err(_) => {
            return refused(&LogoutRefusal::Jwt(JwtError::Malformed(
                "not a form with a logout_token",
            )))
        }
    };
    let Some(token) = field(&fields, "logout_token") else {
        return refused(&LogoutRefusal::Jwt(JwtError::Malformed("no logout_token")));
    };
    let issuer = match rp.issuer().await {
        Ok(i) => i,
        Err(e) => return unavailable("provider_unreachable", &e.to_string()),
    };
    let now = state.clock.now();
    let client_id = rp.settings().client_id.clone();
    let token = match logout::validate(token, &*rp, &issuer, &client_id, now).await {
        Ok(t) => t,
        Err(LogoutRefusal::Jwt(JwtError::Keys(e))) => {
            return unavailable("keys_unavailable", &e.to_string());
        }
        Err(refusal) => return refused(&refusal),
    };
    // §2.7: a sid names one provider session; without one, every session of the account.
    let which = match (&token.sid, &token.subject) {
        (Some(sid), _) => ProviderSessions::Sid {
            issuer: &token.issuer,
            sid,
        },
        (None, Some(subject)) => ProviderSessions::Subject {
            issuer: &token.issuer,
            subject,
        },
        (None, None) => return refused(&LogoutRefusal::NoSubject),
    };
    match state
        .store
        .logout_once(&token.jti, token.remember_until, which)
        .await
    {
        Ok(Some(ended)) => {
            tracing::info!(target: "mailauthd::audit", service = "web", mech = "backchannel_logout", outcome = "ok", subject = token.subject.as_deref().unwrap_or("-"), sid = token.sid.as_deref().unwrap_or("-"), sessions_ended = ended, "back-channel logout");
            crate::metrics::backchannel_logout("ok", "ok");
            (StatusCode::OK, [(header::CACHE_CONTROL, "no-store")], "").into_response()
        }
        Ok(None) => refused(&LogoutRefusal::Replayed),
        Err(e) => unavailable("store_unavailable", &e.to_string()),
    }
}
