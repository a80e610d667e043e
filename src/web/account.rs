//! The signed-in side: the mailbox page, app passwords, password sign-in, sign-out.

use std::net::SocketAddr;

use axum::extract::rejection::FormRejection;
use axum::extract::{ConnectInfo, Form, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;

use super::pages::{self, Notice};
use super::session::{self, Session, SignedInUser, Via};
use super::{field, html_response, redirect, with_cookie, AppState};
use crate::auth::{AuthRequest, FailReason, Outcome, WEB_SERVICE};
use crate::clock::{parse_date, UnixTime};
use crate::names::{Address, Protocol, Protocols};
use crate::provision::{issue_app_password, AppPasswordRequest, DuplicateName, IssueError};
use crate::secret::Secret;
use crate::store::{SessionView, StoreError};

/// The protocols whose checkbox (named after the protocol) a form has ticked.
pub(super) fn checked_protocols(fields: &[(String, String)]) -> Protocols {
    Protocol::ALL
        .into_iter()
        .filter(|p| field(fields, p.name()).is_some_and(|v| v == "on"))
        .fold(Protocols::NONE, Protocols::with)
}

pub(super) const NOT_A_DATE: &str = "The expiry date is not a date (use YYYY-MM-DD).";

/// A form's optional `expires` date (the start of that day, UTC); `Err` when it is not
/// a date. Whether it lies in the future is for the issuer to say.
pub(super) fn expiry_date(fields: &[(String, String)]) -> Result<Option<UnixTime>, ()> {
    match field(fields, "expires")
        .map(str::trim)
        .filter(|v| !v.is_empty())
    {
        None => Ok(None),
        Some(text) => parse_date(text).map(Some).ok_or(()),
    }
}

/// A refusal's text as the page shows it: a sentence.
pub(super) fn sentence(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => format!("{}{}.", first.to_uppercase(), chars.as_str()),
        None => String::new(),
    }
}

pub(super) type FormResult = Result<Form<Vec<(String, String)>>, FormRejection>;

pub async fn index(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let session = match state.session(&headers).await {
        Ok(s) => s,
        Err(r) => return *r,
    };
    if let Some((id, s)) = session {
        if let Some(user) = &s.user {
            if let Err(r) = state.recheck(&id, user).await {
                return *r;
            }
            let notice = match state.sessions.take_notice(&id).await {
                Ok(n) => n,
                Err(e) => return state.session_trouble(&e),
            };
            return account_page(
                &state,
                &id,
                &s,
                user,
                notice.as_deref().map(|t| Notice {
                    good: true,
                    text: t,
                }),
            )
            .await;
        }
    }
    let signed_out = query
        .map(|Query(q)| q.iter().any(|(k, _)| k == "signed-out"))
        .unwrap_or(false);
    sign_in_page(
        &state,
        &headers,
        signed_out.then_some(Notice {
            good: true,
            text: "You are signed out.",
        }),
        "",
        StatusCode::OK,
    )
    .await
}

async fn sign_in_page(
    state: &AppState,
    headers: &HeaderMap,
    message: Option<Notice<'_>>,
    address: &str,
    status: StatusCode,
) -> Response {
    let (_, s, cookie) = match state.session_or_new(headers).await {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let provider = state
        .relying_party()
        .map(|rp| rp.settings().display_name.clone());
    with_cookie(
        html_response(
            status,
            pages::sign_in(
                &state.settings.title,
                provider.as_deref(),
                &s.csrf,
                message,
                address,
            ),
        ),
        cookie,
    )
}

/// The mailbox page of a session [`WebState::recheck`](super::WebState::recheck) has just
/// passed.
async fn account_page(
    state: &AppState,
    id: &str,
    s: &Session,
    user: &SignedInUser,
    message: Option<Notice<'_>>,
) -> Response {
    let mailbox = match state.store.get_mailbox(&user.address).await {
        Ok(Some(m)) => m,
        Ok(None) => {
            if let Err(e) = state.sessions.remove(id).await {
                return state.session_trouble(&e);
            }
            return state.problem(
                StatusCode::FORBIDDEN,
                "Signed out",
                "Your mailbox no longer exists here.",
            );
        }
        Err(e) => return store_trouble(state, &e),
    };
    let apps = match state.store.list_app_passwords(&mailbox.address).await {
        Ok(a) => a,
        Err(e) => return store_trouble(state, &e),
    };
    let page = html_response(
        StatusCode::OK,
        pages::account(&pages::Account {
            site: &state.settings.title,
            mailbox: &mailbox,
            apps: &apps,
            csrf: &s.csrf,
            now: state.clock.now(),
            message,
            devices: state.clients.is_some(),
        }),
    );
    state.with_sign_out_csp(page, user).await
}

pub(super) fn store_trouble(state: &AppState, e: &StoreError) -> Response {
    tracing::error!(target: "mailauthd::web", error = %e, "store error on the web page");
    state.problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "Try again later",
        "The mailbox service is unavailable right now. Try again in a minute.",
    )
}

fn bad_form(state: &AppState, why: &str) -> Response {
    tracing::warn!(target: "mailauthd::web", reason = why, "form refused");
    state.problem(
        StatusCode::FORBIDDEN,
        "Form expired",
        "This form has expired or did not come from this page. Go back, reload the page and try again.",
    )
}

/// A form that could not be read: too large (413), or not a form.
fn unreadable_form(state: &AppState, rejection: &FormRejection) -> Response {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        tracing::warn!(target: "mailauthd::web", limit = super::MAX_BODY_BYTES, "form refused: body too large");
        return state.problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Too large",
            "That form was far larger than any this page sends.",
        );
    }
    bad_form(state, "unreadable form")
}

/// A form posted by a signed-in person, its CSRF token checked and the session re-checked
/// against the mailbox.
pub(super) struct SignedInForm {
    pub id: String,
    pub session: Session,
    pub user: SignedInUser,
    pub view: SessionView,
    pub fields: Vec<(String, String)>,
}

/// The signed-in form, re-checked, or the page to show instead.
pub(super) async fn signed_in_form(
    state: &AppState,
    headers: &HeaderMap,
    form: FormResult,
) -> Result<SignedInForm, Box<Response>> {
    let (id, session, user, fields) = signed_in_fields(state, headers, form).await?;
    let view = state.recheck(&id, &user).await?;
    Ok(SignedInForm {
        id,
        session,
        user,
        view,
        fields,
    })
}

type Fields = Vec<(String, String)>;

/// A signed-in session's form with its CSRF token checked; no mailbox read.
async fn signed_in_fields(
    state: &AppState,
    headers: &HeaderMap,
    form: FormResult,
) -> Result<(String, Session, SignedInUser, Fields), Box<Response>> {
    let signed_out = || {
        Box::new(state.problem(
            StatusCode::FORBIDDEN,
            "Signed out",
            "You are not signed in (any more). Sign in and try again.",
        ))
    };
    let Some((id, session)) = state.session(headers).await? else {
        return Err(signed_out());
    };
    let fields = match form {
        Ok(Form(fields)) => fields,
        Err(rejection) => return Err(Box::new(unreadable_form(state, &rejection))),
    };
    if !session.csrf_matches(field(&fields, "csrf")) {
        return Err(Box::new(bad_form(state, "missing or wrong CSRF token")));
    }
    let Some(user) = session.user.clone() else {
        return Err(signed_out());
    };
    Ok((id, session, user, fields))
}

pub async fn password_sign_in(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    form: FormResult,
) -> Response {
    let session = match state.session(&headers).await {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let Some((id, s)) = session else {
        return sign_in_page(
            &state,
            &headers,
            Some(Notice {
                good: false,
                text: "The sign-in form had expired. Please try again.",
            }),
            "",
            StatusCode::FORBIDDEN,
        )
        .await;
    };
    let fields = match form {
        Ok(Form(fields)) => fields,
        Err(rejection) => return unreadable_form(&state, &rejection),
    };
    if !s.csrf_matches(field(&fields, "csrf")) {
        return bad_form(&state, "missing or wrong CSRF token");
    }
    let login = field(&fields, "address").unwrap_or("").trim().to_string();
    let secret = Secret::from(field(&fields, "password").unwrap_or("").to_string());
    let rip = state.client_ip(&headers, peer);
    let shown_login: String = login.chars().take(320).collect();
    let refuse = |text: &'static str, status| {
        sign_in_page(
            &state,
            &headers,
            Some(Notice { good: false, text }),
            &shown_login,
            status,
        )
    };
    // The generation the session will carry, read before the password is checked: a
    // password changed meanwhile ends the session at its first request, never the reverse.
    let generation = match Address::parse(&login) {
        Ok(address) => match state.store.session_view(address.as_str()).await {
            Ok(view) => view.map(|v| v.credential_generation),
            Err(e) => return store_trouble(&state, &e),
        },
        Err(_) => None,
    };
    // The decision core's web door: throttled, audited and counted like every login; app
    // passwords never open the page; an `oidc` mailbox signs in at its provider.
    let outcome = state
        .auth
        .authenticate(&AuthRequest {
            login: &login,
            secret: &secret,
            kind: crate::auth::SecretKind::Password,
            service: WEB_SERVICE,
            remote_ip: Some(rip),
            secured: state.settings.secure_cookies,
            mechanism: Some("form"),
            no_penalty: false,
            admitted: None,
        })
        .await;
    match outcome {
        Outcome::Ok(success) => {
            let Some(generation) = generation else {
                // Created between the two reads: nothing to hold the session to yet.
                return refuse(
                    "The mailbox service is unavailable right now. Try again in a minute.",
                    StatusCode::SERVICE_UNAVAILABLE,
                )
                .await;
            };
            let user = SignedInUser {
                address: success.mailbox,
                via: Via::Password,
                generation,
            };
            match state.sessions.sign_in(Some(&id), user).await {
                Ok(new_id) => with_cookie(
                    redirect("/"),
                    Some(session::set_cookie(&new_id, state.settings.secure_cookies)),
                ),
                Err(e) => state.session_trouble(&e),
            }
        }
        Outcome::Fail(FailReason::Throttled) => {
            // Held back like a delayed attempt; the web listener's cap bounds how many.
            tokio::time::sleep(state.auth.refusal_delay()).await;
            refuse(
                "Too many attempts. Wait a minute, then try again.",
                StatusCode::TOO_MANY_REQUESTS,
            )
            .await
        }
        // One message for every refusal, an `oidc` mailbox's included: the form must not
        // tell which addresses sign in through the provider (the button above is for them).
        Outcome::Fail(_) => {
            refuse(
                "The address or password is wrong, or this mailbox may not sign in.",
                StatusCode::FORBIDDEN,
            )
            .await
        }
        Outcome::TempFail(_) => {
            refuse(
                "The mailbox service is unavailable right now. Try again in a minute.",
                StatusCode::SERVICE_UNAVAILABLE,
            )
            .await
        }
    }
}

pub async fn create_app_password(
    State(state): State<AppState>,
    headers: HeaderMap,
    form: FormResult,
) -> Response {
    let SignedInForm {
        id,
        session: s,
        user,
        view,
        fields,
    } = match signed_in_form(&state, &headers, form).await {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let problem = |text: &str| {
        let state = state.clone();
        let (id, s, user) = (id.clone(), s.clone(), user.clone());
        let text = text.to_string();
        async move {
            account_page(
                &state,
                &id,
                &s,
                &user,
                Some(Notice {
                    good: false,
                    text: &text,
                }),
            )
            .await
        }
    };
    let protocols = checked_protocols(&fields);
    let now = state.clock.now();
    let Ok(expires_at) = expiry_date(&fields) else {
        return problem(NOT_A_DATE).await;
    };
    // The mailbox as the re-check just read it: active, its domain active, and these
    // protocols allowed.
    let issued = match issue_app_password(
        state.store.as_ref(),
        state.auth.key(),
        AppPasswordRequest {
            mailbox: &user.address,
            name: field(&fields, "name").unwrap_or(""),
            protocols,
            allowed: Some(view.protocols),
            networks: Vec::new(),
            expires_at,
            duplicate_name: DuplicateName::Refuse,
            now,
        },
    )
    .await
    {
        Ok(issued) => issued,
        Err(IssueError::Refused(why)) => return problem(&sentence(&why.to_string())).await,
        Err(IssueError::Store(e)) => return store_trouble(&state, &e),
        Err(e @ IssueError::NoRandomness(_)) => {
            tracing::error!(error = %e, "no randomness for an app password");
            return store_trouble(&state, &StoreError::Unavailable("randomness".into()));
        }
    };
    let (app_id, name) = (issued.id, issued.name.clone());
    tracing::info!(target: "mailauthd::web", user = %user.address, id = app_id, name = %name, protocols = %protocols, "app password created");
    let shown = issued.shown();
    let mailbox_host = state.settings.mail_host.clone();
    let page = html_response(
        StatusCode::OK,
        pages::created(&pages::Created {
            site: &state.settings.title,
            address: &user.address,
            name: &name,
            secret: &shown,
            protocols,
            expires: expires_at,
            mail_host: mailbox_host.as_deref(),
            csrf: &s.csrf,
        }),
    );
    state.with_sign_out_csp(page, &user).await
}

pub async fn revoke_app_password(
    State(state): State<AppState>,
    headers: HeaderMap,
    form: FormResult,
) -> Response {
    let SignedInForm {
        id, user, fields, ..
    } = match signed_in_form(&state, &headers, form).await {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let Some(app_id) = field(&fields, "id").and_then(|v| v.trim().parse::<i64>().ok()) else {
        return bad_form(&state, "revoke without a valid id");
    };
    // Scoped to the signed-in mailbox: an id of someone else's app password finds nothing.
    let notice = match state.store.delete_app_password(&user.address, app_id).await {
        Ok(()) => {
            tracing::info!(target: "mailauthd::web", user = %user.address, id = app_id, "app password revoked");
            "App password revoked. Programs using it can no longer log in.".to_string()
        }
        Err(StoreError::NotFound(_)) => "That app password was already gone.".to_string(),
        Err(e) => return store_trouble(&state, &e),
    };
    match state.sessions.set_notice(&id, &notice).await {
        Ok(_) => redirect("/"),
        Err(e) => state.session_trouble(&e),
    }
}

pub async fn sign_out(
    State(state): State<AppState>,
    headers: HeaderMap,
    form: FormResult,
) -> Response {
    // Signing out needs no mailbox: it works when the store does not.
    let (id, _, user, _) = match signed_in_fields(&state, &headers, form).await {
        Ok(x) => x,
        Err(r) => return *r,
    };
    if let Err(e) = state.sessions.remove(&id).await {
        return state.session_trouble(&e);
    }
    tracing::info!(target: "mailauthd::web", user = %user.address, "signed out");
    let clear = Some(session::clear_cookie(state.settings.secure_cookies));
    if let (Via::Provider { id_token, .. }, Some(rp), Some(root)) = (
        &user.via,
        state.relying_party(),
        &state.settings.public_root,
    ) {
        let mut after = root.clone();
        after.set_query(Some("signed-out"));
        let hint = Some(id_token).filter(|t| !t.is_empty());
        if let Some(url) = rp.logout_url(hint, &after).await {
            return with_cookie(redirect(url.as_str()), clear);
        }
    }
    with_cookie(redirect("/?signed-out"), clear)
}
