//! The web page: sign in (through the identity provider, or with a `local` mailbox's
//! password), see the mailbox, make and revoke app passwords; plus `/healthz` and `/readyz`.
//!
//! Server-rendered HTML; its one script is the copy button beside a new password, allowed
//! by its hash in the CSP, and the page works without it. Every form carries the session's
//! CSRF token; the session cookie is HttpOnly, SameSite=Lax (the provider's redirect back
//! is a cross-site navigation, which Strict would strip) and Secure with the `__Host-`
//! prefix unless a test setup turns Secure off.
//!
//! The password form is one more door of the decision core (service `web`): the same
//! throttle, audit line, metrics and rules as a mail login; app passwords never open the
//! page. A signed-in session is re-checked against its mailbox on every request
//! ([`WebState::recheck`]).
//!
//! With `[clients]` configured, the same listener answers mail clients' discovery
//! (autoconfig, Autodiscover: public, no secret, [`discovery`]) and lets a signed-in person
//! set up a device in one step ([`devices`]).
//!
//! The identity provider ends page sessions of a person who signed out there through
//! OpenID Connect Back-Channel Logout ([`backchannel`]).
//!
//! Dovecot 2.4 asks whether a webmail's access token opens a mailbox at
//! [`introspect::INTROSPECTION_PATH`] (RFC 7662), when `[oauth]` lists clients for it.

mod account;
mod backchannel;
pub mod client_ip;
mod device_pages;
mod devices;
mod discovery;
mod html;
pub mod introspect;
mod listener;
pub mod metrics;
mod oidc;
pub mod pages;
pub mod session;
pub mod settings;

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, PoisonError, RwLock};

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use thiserror::Error;
use tokio_util::sync::CancellationToken;

pub use settings::{MetricsSettings, WebSettings};

use crate::activation::Activated;
use crate::auth::Authenticator;
use crate::clock::Clock;
use crate::devices::ClientSettings;
use crate::oidc::tokens::IntrospectionClient;
use crate::oidc::{OidcSettings, RelyingParty};
use crate::provision::SignInRules;
use crate::store::{AuthSource, MailboxState, SessionView, Store};
use session::{Session, Sessions, SignedInUser, Via};

/// Request bodies beyond this are refused (413): the page's forms are a few hundred bytes.
pub const MAX_BODY_BYTES: usize = 16 * 1024;
/// Where the provider POSTs logout tokens: register `<public root>/backchannel-logout` as
/// the client's `backchannel_logout_uri`.
pub const BACKCHANNEL_LOGOUT_PATH: &str = "/backchannel-logout";
/// How often expired sessions and logout tokens are removed from the store.
const SESSION_SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

pub struct WebState {
    pub settings: WebSettings,
    /// The identity provider and the sign-in rules, replaced whole on a reload.
    provider: RwLock<ProviderSetup>,
    pub store: Arc<dyn Store>,
    pub auth: Arc<Authenticator>,
    /// Seals the refresh token a sign-in brings (`oidc::sealed`), derived from the key file.
    pub sealing_key: crate::oidc::sealed::SealingKey,
    pub clock: Arc<dyn Clock>,
    pub sessions: Sessions,
    /// `/metrics` on this listener too, at this path.
    pub metrics_path: Option<String>,
    /// The servers mail clients are told of; `None`: discovery and device setup are off.
    pub clients: Option<ClientSettings>,
    /// Signs Apple profiles, when `[clients]` names a certificate; loaded once at start.
    signer: Option<devices::Signer>,
    /// Device setups made and not yet shown, and their profile downloads.
    setups: devices::Setups,
    /// Who may call the introspection endpoint; none (the default): it answers 404.
    introspection_clients: RwLock<Arc<[IntrospectionClient]>>,
}

#[derive(Clone)]
struct ProviderSetup {
    rp: Option<Arc<RelyingParty>>,
    rules: SignInRules,
}

impl ProviderSetup {
    fn new(oidc: Option<&OidcSettings>, clock: &Arc<dyn Clock>) -> Result<Self, WebError> {
        let rp = match oidc {
            Some(o) => {
                if o.ignore_tls_errors {
                    tracing::warn!("{}", crate::oidc::probe::TLS_WARNING);
                }
                Some(Arc::new(RelyingParty::new(o.clone(), clock.clone())?))
            }
            None => None,
        };
        Ok(ProviderSetup {
            rp,
            rules: SignInRules {
                provision: oidc.is_none_or(|o| o.provision),
                require_verified_email: oidc.is_none_or(|o| o.require_verified_email),
            },
        })
    }
}

type AppState = Arc<WebState>;

#[derive(Debug, Error)]
pub enum WebError {
    #[error("cannot listen on {addr} for the web page: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("identity provider settings: {0}")]
    Oidc(#[from] crate::oidc::OidcError),
    #[error("{0}")]
    Activation(String),
    #[error("clients.profile_certificate / clients.profile_key: {0}")]
    ProfileSigner(String),
}

pub fn router(state: AppState) -> Router {
    let mut router = Router::new();
    if let Some(path) = &state.metrics_path {
        router = router.route(path, get(metrics::web_listener_metrics));
    }
    router
        .route("/", get(account::index))
        .route("/login", get(oidc::login))
        .route("/callback", get(oidc::callback))
        .route("/login/password", post(account::password_sign_in))
        .route("/app-passwords", post(account::create_app_password))
        .route("/app-passwords/revoke", post(account::revoke_app_password))
        .route("/logout", post(account::sign_out))
        .route(
            BACKCHANNEL_LOGOUT_PATH,
            post(backchannel::backchannel_logout),
        )
        .route(introspect::INTROSPECTION_PATH, post(introspect::introspect))
        .route("/devices", get(devices::form).post(devices::create))
        .route("/devices/done/{token}", get(devices::done))
        .route("/devices/profile/{token}", get(devices::profile))
        .route(discovery::AUTOCONFIG_WELL_KNOWN, get(discovery::autoconfig))
        .route(discovery::AUTOCONFIG_ISP, get(discovery::autoconfig))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        // Autodiscover's path in any case (Outlook capitalises it); everything else 404.
        .fallback(discovery::autodiscover_or_not_found)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(state)
}

/// A running web listener; [`WebServer::stop`] drains it.
pub struct WebServer {
    pub local_addr: SocketAddr,
    /// `None` for the metrics listener, which has no provider to reconfigure.
    pub state: Option<AppState>,
    token: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl WebServer {
    pub async fn stop(self) {
        self.token.cancel();
        // Requests in flight get a few seconds; a slow provider must not hold up shutdown.
        if tokio::time::timeout(std::time::Duration::from_secs(5), self.task)
            .await
            .is_err()
        {
            tracing::warn!("web listener did not drain in 5 s; stopping anyway");
        }
    }
}

/// The page's state: `settings` is `[web]`, `oidc` the provider people sign in with (if
/// any), `metrics` says whether `/metrics` is served here too, and `clients` is
/// `[clients]` (device setup and discovery; off when `None`). A profile certificate that
/// cannot be loaded is an error here, at start, rather than at the first device.
pub fn state(
    settings: WebSettings,
    oidc: Option<&OidcSettings>,
    metrics: &MetricsSettings,
    clients: Option<ClientSettings>,
    store: Arc<dyn Store>,
    auth: Arc<Authenticator>,
    clock: Arc<dyn Clock>,
) -> Result<AppState, WebError> {
    let signer = match clients.as_ref().and_then(|c| c.profile_signing.as_ref()) {
        Some((cert, key)) => Some(devices::Signer::load(cert, key)?),
        None => None,
    };
    Ok(Arc::new(WebState {
        sessions: Sessions::new(
            store.clone(),
            settings.session_lifetime,
            settings.max_anonymous_sessions,
            clock.clone(),
        ),
        provider: RwLock::new(ProviderSetup::new(oidc, &clock)?),
        metrics_path: metrics.on_web_listener.then(|| metrics.path.clone()),
        clients,
        signer,
        setups: devices::Setups::new(clock.clone()),
        introspection_clients: RwLock::new(Arc::from(Vec::new())),
        settings,
        store,
        sealing_key: crate::oidc::sealed::SealingKey::derive(auth.key()),
        auth,
        clock,
    }))
}

impl WebState {
    pub fn relying_party(&self) -> Option<Arc<RelyingParty>> {
        self.provider
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .rp
            .clone()
    }

    pub fn rules(&self) -> SignInRules {
        self.provider
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .rules
    }

    /// The clients `[[oauth.introspection_clients]]` lists, who may call
    /// [`introspect::INTROSPECTION_PATH`].
    pub fn introspection_clients(&self) -> Arc<[IntrospectionClient]> {
        self.introspection_clients
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Opens the introspection endpoint to these clients; none closes it (404).
    pub fn set_introspection_clients(&self, clients: Vec<IntrospectionClient>) {
        *self
            .introspection_clients
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::from(clients);
    }

    /// Applies a reloaded `[oidc]` section: sign-ins that start from now on use it. One
    /// already at the provider finishes with the new settings, or fails and is retried.
    pub fn reconfigure(&self, oidc: Option<&OidcSettings>) -> Result<(), WebError> {
        let setup = ProviderSetup::new(oidc, &self.clock)?;
        *self
            .provider
            .write()
            .unwrap_or_else(PoisonError::into_inner) = setup;
        Ok(())
    }
}

/// Binds the web listener (or adopts systemd's socket named `web`) and serves until
/// [`WebServer::stop`].
pub async fn start(state: AppState, activated: &mut Activated) -> Result<WebServer, WebError> {
    let listener = tcp_listener("web", state.settings.listen, activated).await?;
    let limits = listener::Limits {
        max_connections: state.settings.max_connections,
        header_timeout: state.settings.header_timeout,
    };
    let clock = state.clock.clone();
    let sweeper = state.clone();
    let server = serve(
        listener,
        router(state.clone()),
        limits,
        "web page",
        Some(state),
        clock,
    );
    let stop = server.token.clone();
    tokio::spawn(async move {
        session::sweep_periodically(&sweeper.sessions, SESSION_SWEEP_EVERY, stop).await;
    });
    tracing::info!(listen = %server.local_addr, "web page listening");
    Ok(server)
}

/// The listening socket of an HTTP listener: systemd's, when it passed one by this name.
pub(crate) async fn tcp_listener(
    name: &'static str,
    addr: SocketAddr,
    activated: &mut Activated,
) -> Result<tokio::net::TcpListener, WebError> {
    let mut passed = activated.take(name);
    if passed.len() > 1 {
        return Err(WebError::Activation(format!(
            "systemd passed {} sockets named {name}; the {name} listener takes one",
            passed.len()
        )));
    }
    if let Some(fd) = passed.pop() {
        let std = std::net::TcpListener::from(fd);
        let adopted = std
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpListener::from_std(std));
        return adopted.map_err(|e| {
            WebError::Activation(format!("the {name} socket from systemd is unusable: {e}"))
        });
    }
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| WebError::Bind { addr, source })
}

pub(crate) fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: listener::Limits,
    what: &'static str,
    state: Option<AppState>,
    clock: Arc<dyn Clock>,
) -> WebServer {
    let local_addr = listener
        .local_addr()
        .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
    let token = CancellationToken::new();
    let task = tokio::spawn(listener::run(
        listener,
        app,
        limits,
        what,
        clock,
        token.clone(),
    ));
    WebServer {
        local_addr,
        state,
        token,
        task,
    }
}

async fn security_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    let set = |h: &mut HeaderMap, name: header::HeaderName, value: &'static str| {
        h.entry(name).or_insert(HeaderValue::from_static(value));
    };
    // Pages hold CSRF tokens and, once, an app password: never cache them anywhere.
    set(h, header::CACHE_CONTROL, "no-store");
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(h, header::X_FRAME_OPTIONS, "DENY");
    // The callback URL carries the code; it must not leak to anything linked from a page.
    set(h, header::REFERRER_POLICY, "no-referrer");
    if !h.contains_key(header::CONTENT_SECURITY_POLICY) {
        if let Ok(v) = HeaderValue::from_str(&csp("'self'")) {
            h.insert(header::CONTENT_SECURITY_POLICY, v);
        }
    }
    response
}

/// The page's Content-Security-Policy: no script but the copy button's, by its hash; no
/// framing; forms post only to `form_action` (this site, plus the provider's sign-out on
/// pages that need it).
fn csp(form_action: &str) -> String {
    format!(
        "default-src 'none'; script-src {}; style-src 'unsafe-inline'; img-src 'self'; form-action {form_action}; frame-ancestors 'none'; base-uri 'none'",
        html::copy_script_hash()
    )
}

pub(crate) fn html_response(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

pub(crate) fn with_cookie(mut response: Response, cookie: Option<String>) -> Response {
    if let Some(c) = cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        response.headers_mut().append(header::SET_COOKIE, c);
    }
    response
}

pub(crate) fn redirect(location: &str) -> Response {
    match HeaderValue::from_str(location) {
        Ok(v) => (StatusCode::SEE_OTHER, [(header::LOCATION, v)]).into_response(),
        Err(_) => (
            StatusCode::SEE_OTHER,
            [(header::LOCATION, HeaderValue::from_static("/"))],
        )
            .into_response(),
    }
}

impl WebState {
    pub(crate) fn problem(&self, status: StatusCode, title: &str, message: &str) -> Response {
        html_response(
            status,
            pages::problem(&self.settings.title, title, message, true),
        )
    }

    /// The visitor's session, if the cookie names a live one. `Err` is the page to show when
    /// the store cannot say: the session is kept, not taken for signed out.
    pub(crate) async fn session(
        &self,
        headers: &HeaderMap,
    ) -> Result<Option<(String, Session)>, Box<Response>> {
        let secure = self.settings.secure_cookies;
        let Some(id) = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|h| session::id_from_cookie_header(h, secure))
        else {
            return Ok(None);
        };
        match self.sessions.get(&id).await {
            Ok(s) => Ok(s.map(|s| (id, s))),
            Err(e) => Err(Box::new(self.session_trouble(&e))),
        }
    }

    /// The page for a session the store could not read or write: 503, and a log line.
    pub(crate) fn session_trouble(&self, e: &session::SessionError) -> Response {
        tracing::error!(target: "mailauthd::web", error = %e, "web session store unavailable");
        self.problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "Try again later",
            "The sign-in service is unavailable right now. Try again in a minute.",
        )
    }

    /// Re-checks a signed-in session against its mailbox, as every request does: a mailbox
    /// deleted, disabled, made receive-only, in a disabled domain, switched to another auth
    /// source, unlinked from its provider account, or with a credential generation other
    /// than the session's (a new password) ends the session. `Err` is the page to show
    /// instead (the session removed), or the store's trouble (the session kept).
    pub(crate) async fn recheck(
        &self,
        id: &str,
        user: &SignedInUser,
    ) -> Result<SessionView, Box<Response>> {
        let view = match self.store.session_view(&user.address).await {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(target: "mailauthd::web", error = %e, "store error on the web page");
                return Err(Box::new(self.problem(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Try again later",
                    "The mailbox service is unavailable right now. Try again in a minute.",
                )));
            }
        };
        if let Some(ended) = session_ends(user, view.as_ref()) {
            if let Err(e) = self.sessions.remove(id).await {
                return Err(Box::new(self.session_trouble(&e)));
            }
            return Err(Box::new(self.ended(ended.code, user, ended.message)));
        }
        // `session_ends` ends every session without a mailbox.
        view.ok_or_else(|| Box::new(self.ended("mailbox_deleted", user, "")))
    }

    /// A page with the sign-out form of a person signed in through the provider: its CSP
    /// lets the form's answer go on to the provider's end-session endpoint (form-action
    /// applies to a form's redirects too), and nowhere else.
    pub(crate) async fn with_sign_out_csp(
        &self,
        mut response: Response,
        user: &SignedInUser,
    ) -> Response {
        if !matches!(user.via, Via::Provider { .. }) {
            return response;
        }
        let Some(origin) = self.relying_party() else {
            return response;
        };
        let Some(origin) = origin.end_session_origin().await else {
            return response;
        };
        if let Ok(v) = HeaderValue::from_str(&csp(&format!("'self' {origin}"))) {
            response
                .headers_mut()
                .insert(header::CONTENT_SECURITY_POLICY, v);
        }
        response
    }

    fn ended(&self, reason: &str, user: &SignedInUser, message: &str) -> Response {
        tracing::info!(target: "mailauthd::web", user = %user.address, reason, "session ended");
        with_cookie(
            self.problem(StatusCode::FORBIDDEN, "Signed out", message),
            Some(session::clear_cookie(self.settings.secure_cookies)),
        )
    }

    /// The visitor's session, or a new anonymous one with the cookie to set.
    pub(crate) async fn session_or_new(
        &self,
        headers: &HeaderMap,
    ) -> Result<(String, Session, Option<String>), Box<Response>> {
        if let Some((id, s)) = self.session(headers).await? {
            return Ok((id, s, None));
        }
        match self.sessions.create().await {
            Ok((id, s)) => {
                let cookie = session::set_cookie(&id, self.settings.secure_cookies);
                Ok((id, s, Some(cookie)))
            }
            Err(e) => Err(Box::new(self.session_trouble(&e))),
        }
    }

    /// The client's address: the peer, or behind one of `[web] trusted_proxies` the
    /// right-most `X-Forwarded-For` entry that is not a trusted proxy.
    pub(crate) fn client_ip(&self, headers: &HeaderMap, peer: SocketAddr) -> IpAddr {
        client_ip::client_ip(headers, peer.ip(), &self.settings.trusted_proxies)
    }
}

/// Why a session ends: a code for the log, a sentence for the person.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Ended {
    pub code: &'static str,
    pub message: &'static str,
}

const CHANGED: &str = "Your sign-in details changed (a new password, another way of signing in, or your organisation's account unlinked). Sign in again.";

/// The rule [`WebState::recheck`] applies; `None`: the session lives on.
pub(crate) fn session_ends(user: &SignedInUser, view: Option<&SessionView>) -> Option<Ended> {
    let end = |code, message| Some(Ended { code, message });
    let Some(view) = view else {
        return end("mailbox_deleted", "Your mailbox no longer exists here.");
    };
    match view.state {
        MailboxState::Disabled => return end("mailbox_disabled", "Your mailbox is disabled."),
        MailboxState::NoLogin => return end("mailbox_no_login", "Your mailbox is disabled."),
        MailboxState::Active => {}
    }
    if !view.domain_active {
        return end("domain_disabled", "Your mailbox is disabled.");
    }
    if view.credential_generation != user.generation {
        return end("credentials_changed", CHANGED);
    }
    match (&user.via, view.auth_source) {
        (Via::Password, AuthSource::Local) => None,
        (Via::Provider { .. }, AuthSource::Oidc) if view.oidc_subject.is_some() => None,
        (Via::Provider { .. }, AuthSource::Oidc) => end("identity_unlinked", CHANGED),
        _ => end("auth_source_changed", CHANGED),
    }
}
/// `/healthz` on every HTTP listener: the process runs.
pub(crate) async fn healthz() -> &'static str {
    "ok\n"
}

/// `/readyz` on every HTTP listener: the database answers.
pub(crate) async fn readiness(store: &dyn Store) -> Response {
    match store.ping().await {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check: store unavailable");
            (StatusCode::SERVICE_UNAVAILABLE, "store unavailable\n").into_response()
        }
    }
}

async fn readyz(State(state): State<AppState>) -> Response {
    readiness(&*state.store).await
}

pub(crate) fn not_found(state: &WebState) -> Response {
    state.problem(
        StatusCode::NOT_FOUND,
        "Not found",
        "There is no such page here.",
    )
}

/// Form fields as sent; repeated names keep their first value.
pub(crate) fn field<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}
