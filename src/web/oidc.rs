//! Sign-in through the identity provider: `/login` sends the browser there, `/callback`
//! takes it back, checks `state`, lets the relying party validate everything else, and
//! hands the claims to provisioning.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use subtle::ConstantTimeEq;

use super::session::{SignedInUser, Via};
use super::{redirect, with_cookie, AppState};
use crate::audit::printable;
use crate::provision::{self, SignedIn};

/// Provider error texts are shown to the person: short, one line, spaces kept.
fn shown_text(text: &str, max: usize) -> String {
    text.chars().filter(|c| !c.is_control()).take(max).collect()
}

/// The provider not answering is a temporary outage; anything else it said is a refusal.
fn provider_status(e: &crate::oidc::OidcError) -> StatusCode {
    match e {
        crate::oidc::OidcError::Unreachable(_) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::FORBIDDEN,
    }
}

pub async fn login(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let Some(rp) = state.relying_party() else {
        return state.problem(
            StatusCode::NOT_FOUND,
            "Not available",
            "Signing in through an identity provider is not set up here.",
        );
    };
    let (id, _, cookie) = match state.session_or_new(&headers).await {
        Ok(s) => s,
        Err(r) => return *r,
    };
    match rp.begin().await {
        Ok(auth) => match state.sessions.set_pending(&id, &auth.pending).await {
            Ok(_) => with_cookie(redirect(auth.url.as_str()), cookie),
            Err(e) => with_cookie(state.session_trouble(&e), cookie),
        },
        Err(e) => {
            tracing::error!(target: "mailauthd::web", error = %e, "cannot start a sign-in at the identity provider");
            with_cookie(
                state.problem(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Sign-in unavailable",
                    &e.person_message(),
                ),
                cookie,
            )
        }
    }
}

pub async fn callback(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    query: Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let rip = state.client_ip(&headers, peer).to_string();
    let rip = rip.as_str();
    let fail = |status: StatusCode, reason: &str, detail: &str, title: &str, message: &str| {
        tracing::warn!(target: "mailauthd::audit", service = "web", user = "-", rip, mech = "oidc", outcome = "fail", reason, detail, "sign-in");
        state.problem(status, title, message)
    };
    // Both steps that need the store read the same to the person when it fails.
    let store_unavailable = |e: &dyn std::fmt::Display| {
        fail(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            &e.to_string(),
            "Try again later",
            "The mailbox service is unavailable right now. Try again in a minute.",
        )
    };
    let Some(rp) = state.relying_party() else {
        return fail(
            StatusCode::NOT_FOUND,
            "oidc_not_configured",
            "callback without [oidc]",
            "Not available",
            "Signing in through an identity provider is not set up here.",
        );
    };
    let Ok(Query(params)) = query else {
        return fail(
            StatusCode::BAD_REQUEST,
            "bad_callback",
            "unreadable query string",
            "Sign-in failed",
            "The sign-in answer could not be read. Please sign in again.",
        );
    };
    let param = |name: &str| super::field(&params, name);

    // Whatever happens next, this browser's pending sign-in is used up: a state and its
    // PKCE verifier are good for one attempt.
    let session = match state.session(&headers).await {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let pending = match &session {
        Some((id, _)) => match state.sessions.take_pending(id).await {
            Ok(p) => p,
            Err(e) => return state.session_trouble(&e),
        },
        None => None,
    };

    // Whether this answer belongs to the sign-in this browser started. Only then is
    // anything in it believed: anyone can send a browser to /callback with made-up text.
    let offered = param("state").unwrap_or("");
    let matched = pending.as_ref().is_some_and(|p| {
        let expected = p.state.expose();
        offered.len() == expected.len() && bool::from(offered.as_bytes().ct_eq(expected))
    });
    if matched {
        // RFC 9207: the answer must come from our provider, errors included.
        if let Err(e) = rp.check_response_issuer(param("iss")).await {
            return fail(
                provider_status(&e),
                "response_issuer",
                &e.to_string(),
                "Sign-in failed",
                &e.person_message(),
            );
        }
    }

    if let Some(error) = param("error") {
        let error = shown_text(error, 64);
        let description = param("error_description")
            .map(|d| shown_text(d, 200))
            .unwrap_or_default();
        if !matched {
            // Not an answer to a sign-in of this browser: show none of its text.
            return fail(
                StatusCode::BAD_REQUEST,
                "provider_error_unmatched",
                &format!("{error}: {description} (state does not match a pending sign-in)"),
                "Sign-in expired",
                "This sign-in has expired or was already used. Please start again.",
            );
        }
        let message = match error.as_str() {
            "access_denied" => "You declined the sign-in, or your organisation does not allow you to use this service.".to_string(),
            "login_required" | "interaction_required" | "consent_required" => {
                "Your organisation's sign-in needs you to sign in again.".to_string()
            }
            _ => format!(
                "Your organisation's sign-in service refused the sign-in ({error}{}).",
                if description.is_empty() {
                    String::new()
                } else {
                    format!(": {description}")
                }
            ),
        };
        return fail(
            StatusCode::FORBIDDEN,
            "provider_error",
            &format!("{error}: {description}"),
            "Sign-in refused",
            &message,
        );
    }

    let Some(pending) = pending else {
        return fail(
            StatusCode::BAD_REQUEST,
            "no_pending_sign_in",
            "callback without a pending sign-in in this browser (expired session, replayed or forged callback, or cookies blocked)",
            "Sign-in expired",
            "This sign-in has expired or was already used. Please start again.",
        );
    };
    if !matched {
        return fail(
            StatusCode::BAD_REQUEST,
            "state_mismatch",
            "state parameter missing or not the one this browser was sent with",
            "Sign-in expired",
            "This sign-in does not belong to this browser, or has expired. Please start again.",
        );
    }
    let Some(code) = param("code").filter(|c| !c.is_empty() && c.len() <= 4096) else {
        return fail(
            StatusCode::BAD_REQUEST,
            "no_code",
            "callback without a code",
            "Sign-in failed",
            "The sign-in answer was incomplete. Please sign in again.",
        );
    };

    let identity = match rp.finish(&pending, code).await {
        Ok(i) => i,
        Err(e) => {
            return fail(
                provider_status(&e),
                "oidc_error",
                &e.to_string(),
                "Sign-in failed",
                &e.person_message(),
            );
        }
    };

    let claims = &identity.claims;
    match provision::sign_in(&*state.store, &*state.clock, state.rules(), claims).await {
        Ok(outcome) => {
            let address = outcome.mailbox().address.clone();
            if let Err(e) = provision::record_sign_in(
                &*state.store,
                &*state.clock,
                &state.sealing_key,
                outcome.mailbox(),
                claims,
                identity.refresh_token.as_ref(),
            )
            .await
            {
                return store_unavailable(&e);
            }
            // The generation the session is held to, read after the binding was checked:
            // the mailbox must still be this identity's `oidc` mailbox as it is read.
            let generation = match state.store.session_view(&address).await {
                Ok(Some(v))
                    if v.auth_source == crate::store::AuthSource::Oidc
                        && v.oidc_issuer.as_deref() == Some(claims.issuer.as_str())
                        && v.oidc_subject.as_deref() == Some(claims.subject.as_str()) =>
                {
                    v.credential_generation
                }
                Ok(_) => {
                    return fail(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "mailbox_changed",
                        "the mailbox changed while signing in",
                        "Sign-in failed",
                        "Your mailbox changed while you were signing in. Please sign in again.",
                    )
                }
                Err(e) => return store_unavailable(&e),
            };
            if let SignedIn::UpdateDeferred { reason, .. } = &outcome {
                tracing::warn!(target: "mailauthd::web", user = %address, reason = %reason, "mailbox not updated at sign-in");
            }
            tracing::info!(target: "mailauthd::audit", service = "web", user = address.as_str(), rip, mech = "oidc", outcome = "ok", reason = outcome.label(), subject = claims.subject.as_str(), "sign-in");
            let old = session.as_ref().map(|(id, _)| id.as_str());
            let user = SignedInUser {
                address,
                via: Via::Provider {
                    id_token: identity.id_token,
                    issuer: claims.issuer.clone(),
                    subject: claims.subject.clone(),
                    sid: identity.session_id,
                },
                generation,
            };
            match state.sessions.sign_in(old, user).await {
                Ok(id) => with_cookie(
                    redirect("/"),
                    Some(super::session::set_cookie(
                        &id,
                        state.settings.secure_cookies,
                    )),
                ),
                Err(e) => state.session_trouble(&e),
            }
        }
        Err(refusal) => {
            let status = if refusal.is_temporary() {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::FORBIDDEN
            };
            tracing::warn!(target: "mailauthd::audit", service = "web", user = printable(&claims.address, 128).as_str(), rip, mech = "oidc", outcome = "fail", reason = refusal.code(), detail = refusal.to_string().as_str(), subject = claims.subject.as_str(), "sign-in");
            state.problem(status, "Sign-in refused", &refusal.person_message())
        }
    }
}
