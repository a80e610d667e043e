//! `/metrics` for Prometheus, on a listener of its own (with `/healthz` and `/readyz`, for
//! daemons without the web page) or at a path of the web page's listener.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::{tcp_listener, AppState, MetricsSettings, WebError, WebServer};
use crate::activation::Activated;
use crate::auth::Authenticator;
use crate::clock::SystemClock;
use crate::metrics::{self, Levels};
use crate::store::Store;

#[derive(Clone)]
struct Probe {
    auth: Arc<Authenticator>,
    store: Arc<dyn Store>,
}

fn exposition(auth: &Authenticator) -> Response {
    let body = metrics::render(&Levels {
        hash_pool_depth: auth.pool().depth(),
        hash_pool_workers: auth.pool().workers(),
        verify_cache_entries: auth.verify_cache().len(),
    });
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, metrics::CONTENT_TYPE),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

pub(super) async fn web_listener_metrics(State(state): State<AppState>) -> Response {
    exposition(&state.auth)
}

async fn own_listener_metrics(State(probe): State<Probe>) -> Response {
    exposition(&probe.auth)
}

async fn readyz(State(probe): State<Probe>) -> Response {
    super::readiness(&*probe.store).await
}

/// Connections the metrics listener serves at once.
pub const METRICS_MAX_CONNECTIONS: usize = 64;

/// Starts the metrics listener when `[metrics] listen` is set (or systemd passed a socket
/// named `metrics`).
pub async fn start_if_configured(
    settings: &MetricsSettings,
    auth: Arc<Authenticator>,
    store: Arc<dyn Store>,
    activated: &mut Activated,
) -> Result<Option<WebServer>, WebError> {
    let passed = activated.has("metrics");
    let Some(addr) = settings
        .listen
        .or(passed.then_some(SocketAddr::from(([127, 0, 0, 1], 0))))
    else {
        return Ok(None);
    };
    let listener = tcp_listener("metrics", addr, activated).await?;
    let app = Router::new()
        .route(&settings.path, get(own_listener_metrics))
        .route("/healthz", get(super::healthz))
        .route("/readyz", get(readyz))
        .with_state(Probe { auth, store });
    // Scraped by a few collectors: a small cap of its own.
    let limits = super::listener::Limits {
        max_connections: METRICS_MAX_CONNECTIONS,
        header_timeout: std::time::Duration::from_secs(10),
    };
    let server = super::serve(
        listener,
        app,
        limits,
        "metrics",
        None,
        Arc::new(SystemClock),
    );
    tracing::info!(listen = %server.local_addr, path = %settings.path, "metrics listening");
    Ok(Some(server))
}
