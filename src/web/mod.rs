//! The web page: sign in (through the identity provider, or with a `local` mailbox's
//! password), see the mailbox, make and revoke app passwords; plus `/healthz` and `/readyz`.
//!
//! Server-rendered HTML with no script. Every form carries the session's CSRF token; the
//! session cookie is HttpOnly, SameSite=Lax (the provider's redirect back is a cross-site
//! navigation, which Strict would strip) and Secure unless a test setup turns it off.

mod account;
mod html;
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

pub use settings::WebSettings;

use crate::activation::Activated;
use crate::auth::Authenticator;
use crate::clock::Clock;
use crate::oidc::RelyingParty;
use crate::provision::SignInRules;
use crate::store::Store;
use session::{Session, Sessions};

pub struct WebState {
    pub settings: WebSettings,
    /// The identity provider and the sign-in rules, replaced whole on a reload.
    provider: RwLock<ProviderSetup>,
    pub store: Arc<dyn Store>,
    pub auth: Arc<Authenticator>,
    pub clock: Arc<dyn Clock>,
    pub sessions: Sessions,
    /// `/metrics` on this listener too, at this path.
    pub metrics_path: Option<String>,
}

#[derive(Clone)]
struct ProviderSetup {
    rp: Option<Arc<RelyingParty>>,
    rules: SignInRules,
}

impl ProviderSetup {
    fn from_config(config: &crate::config::Config) -> Result<Self, WebError> {
        let rp = match &config.oidc {
            Some(o) => {
                if o.ignore_tls_errors {
                    tracing::warn!("{}", crate::oidc::probe::TLS_WARNING);
                }
                Some(Arc::new(RelyingParty::new(o.clone())?))
            }
            None => None,
        };
        Ok(ProviderSetup {
            rp,
            rules: SignInRules {
                provision: config.oidc.as_ref().is_none_or(|o| o.provision),
                require_verified_email: config
                    .oidc
                    .as_ref()
                    .is_none_or(|o| o.require_verified_email),
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
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(not_found)
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

pub fn state(
    config: &crate::config::Config,
    settings: WebSettings,
    store: Arc<dyn Store>,
    auth: Arc<Authenticator>,
    clock: Arc<dyn Clock>,
) -> Result<AppState, WebError> {
    Ok(Arc::new(WebState {
        sessions: Sessions::new(settings.session_lifetime),
        provider: RwLock::new(ProviderSetup::from_config(config)?),
        metrics_path: config
            .metrics
            .on_web_listener
            .then(|| config.metrics.path.clone()),
        settings,
        store,
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

    /// Applies a reloaded `[oidc]` section: sign-ins that start from now on use it. One
    /// already at the provider finishes with the new settings, or fails and is retried.
    pub fn reconfigure(&self, config: &crate::config::Config) -> Result<(), WebError> {
        let setup = ProviderSetup::from_config(config)?;
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
    let app = router(state.clone()).into_make_service_with_connect_info::<SocketAddr>();
    let server = serve(listener, app, "web page", Some(state));
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

fn serve(
    listener: tokio::net::TcpListener,
    app: axum::extract::connect_info::IntoMakeServiceWithConnectInfo<Router, SocketAddr>,
    what: &'static str,
    state: Option<AppState>,
) -> WebServer {
    let local_addr = listener
        .local_addr()
        .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
    let token = CancellationToken::new();
    let stop = token.clone();
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
        {
            tracing::error!(error = %e, "{what} listener failed");
        }
    });
    WebServer {
        local_addr,
        state,
        token,
        task,
    }
}

/// Starts the web page when `[web]` is configured; the daemon's one call.
pub async fn start_if_configured(
    config: &crate::config::Config,
    store: Arc<dyn Store>,
    auth: Arc<Authenticator>,
    activated: &mut Activated,
) -> Result<Option<WebServer>, WebError> {
    let Some(settings) = config.web.clone() else {
        if config.oidc.is_some() {
            tracing::warn!("[oidc] is configured but [web] is not: nobody can sign in");
        }
        return Ok(None);
    };
    let state = state(
        config,
        settings,
        store,
        auth,
        Arc::new(crate::clock::SystemClock),
    )?;
    start(state, activated).await.map(Some)
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
    set(
        h,
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; frame-ancestors 'none'; base-uri 'none'",
    );
    response
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

    pub(crate) fn session(&self, headers: &HeaderMap) -> Option<(String, Session)> {
        let id = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(session::id_from_cookie_header)?;
        let s = self.sessions.get(&id)?;
        Some((id, s))
    }

    /// The visitor's session, or a new anonymous one with the cookie to set.
    pub(crate) fn session_or_new(
        &self,
        headers: &HeaderMap,
    ) -> Result<(String, Session, Option<String>), Box<Response>> {
        if let Some((id, s)) = self.session(headers) {
            return Ok((id, s, None));
        }
        match self.sessions.create() {
            Ok((id, s)) => {
                let cookie = session::set_cookie(&id, self.settings.secure_cookies);
                Ok((id, s, Some(cookie)))
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot create a web session");
                Err(Box::new(self.problem(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Busy",
                    "The page is busy right now. Try again in a minute.",
                )))
            }
        }
    }

    /// The client's address: the peer, or behind a trusted reverse proxy the last
    /// X-Forwarded-For entry (the one the proxy itself added).
    pub(crate) fn client_ip(&self, headers: &HeaderMap, peer: SocketAddr) -> IpAddr {
        if self.settings.trust_x_forwarded_for {
            let forwarded = headers
                .get_all("x-forwarded-for")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .filter_map(|s| s.trim().parse::<IpAddr>().ok())
                .next_back();
            if let Some(ip) = forwarded {
                return ip;
            }
        }
        peer.ip()
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

async fn not_found(State(state): State<AppState>) -> Response {
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
