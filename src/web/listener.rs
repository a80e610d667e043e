//! The accept loop of an HTTP listener (the web page, the metrics listener), with the limits
//! a public listener needs:
//!
//! - a **connection cap** of its own: a connection beyond it is closed as soon as it is
//!   accepted, so a flood of idle or slow clients holds at most that many descriptors and
//!   never reaches the descriptors the auth, userdb and policy sockets live on;
//! - a **header read timeout**: a client gets `header_timeout` to send a request's head,
//!   from the moment its connection is accepted and again between requests on a kept-alive
//!   connection (a header byte every two seconds does not keep a connection);
//! - a **request timeout** covering a slow body and a slow handler; the body itself is
//!   capped by the router ([`super::MAX_BODY_BYTES`]);
//! - an accept loop that **backs off** on errors (out of descriptors, say) instead of
//!   spinning on them, and logs them at most once a second.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;

use crate::clock::Clock;

/// Longest a request may take from its head to the end of the answer: a slow body, a slow
/// identity provider (several calls, each with `[oidc] timeout_ms`).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Request heads beyond this are refused (hyper's minimum is 8 KiB); cookies and a long
/// callback URL fit.
const MAX_HEAD_BYTES: usize = 32 * 1024;
const MAX_HEADERS: usize = 64;
/// How long requests in flight get when the listener stops.
const DRAIN: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub header_timeout: Duration,
}

/// Where connections come from: a TCP listener (a fake one in tests).
pub trait Accept: Send {
    fn accept(
        &self,
    ) -> impl std::future::Future<Output = std::io::Result<(TcpStream, SocketAddr)>> + Send;
}

impl Accept for TcpListener {
    async fn accept(&self) -> std::io::Result<(TcpStream, SocketAddr)> {
        TcpListener::accept(self).await
    }
}

/// The pause after the `n`th accept error in a row: 10 ms, doubling, at most 1 s.
fn backoff_after(previous: Duration) -> Duration {
    (previous * 2).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

/// Serves `router` on `listener` until `stop` is cancelled, then drains.
pub async fn run(
    listener: impl Accept,
    router: Router,
    limits: Limits,
    what: &'static str,
    clock: Arc<dyn Clock>,
    stop: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let tracker = TaskTracker::new();
    let mut backoff = Duration::ZERO;
    let mut refused = Throttled::new();
    let mut failed = Throttled::new();
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::ZERO;
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    // Closed at once: the descriptor is back before the next accept.
                    drop(stream);
                    if let Some(n) = refused.tick(clock.instant()) {
                        tracing::warn!(
                            listener = what,
                            max_connections = limits.max_connections,
                            refused = n,
                            "connection limit reached; closing new connections"
                        );
                    }
                    continue;
                };
                tracker.spawn(connection(
                    stream,
                    peer,
                    router.clone(),
                    limits.header_timeout,
                    stop.clone(),
                    permit,
                ));
            }
            Err(e) => {
                // EMFILE, ENFILE, ENOBUFS, ECONNABORTED, …: none is fixed by retrying at once.
                backoff = backoff_after(backoff);
                if let Some(n) = failed.tick(clock.instant()) {
                    tracing::warn!(listener = what, error = %e, failures = n, retry_in_ms = backoff.as_millis() as u64, "accept failed; backing off");
                }
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
            }
        }
    }
    drop(listener);
    tracker.close();
    tracker.wait().await;
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    header_timeout: Duration,
    stop: CancellationToken,
    _permit: OwnedSemaphorePermit,
) {
    let _ = stream.set_nodelay(true);
    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        let mut router = router.clone();
        async move {
            let response = match tokio::time::timeout(REQUEST_TIMEOUT, router.call(request)).await {
                Ok(Ok(response)) => response,
                Ok(Err(never)) => match never {},
                Err(_) => timed_out(),
            };
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(MAX_HEAD_BYTES)
        .max_headers(MAX_HEADERS);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(%peer, error = %e, "HTTP connection ended");
            }
        }
        () = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(DRAIN, conn).await;
        }
    }
}

fn timed_out() -> Response {
    (
        StatusCode::REQUEST_TIMEOUT,
        [(axum::http::header::CONNECTION, "close")],
        "request timed out\n",
    )
        .into_response()
}

/// Counts events and says when to log them: at most once a second.
struct Throttled {
    count: u64,
    last: Option<Instant>,
}

impl Throttled {
    fn new() -> Self {
        Throttled {
            count: 0,
            last: None,
        }
    }

    /// `Some(events since the last log line)` when it is time for one.
    fn tick(&mut self, now: Instant) -> Option<u64> {
        self.count += 1;
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.count))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Fails every accept, as a process out of descriptors does.
    struct OutOfDescriptors(Arc<AtomicUsize>);

    impl Accept for OutOfDescriptors {
        async fn accept(&self) -> std::io::Result<(TcpStream, SocketAddr)> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Err(std::io::Error::from_raw_os_error(24)) // EMFILE
        }
    }

    #[tokio::test]
    async fn accept_errors_back_off_instead_of_spinning() {
        let calls = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let limits = Limits {
            max_connections: 4,
            header_timeout: Duration::from_secs(10),
        };
        let task = tokio::spawn(run(
            OutOfDescriptors(calls.clone()),
            Router::new(),
            limits,
            "test",
            Arc::new(crate::clock::SystemClock),
            stop.clone(),
        ));
        // Pauses of 10, 20, 40, … 640 ms: about 8 tries in 1.5 s, where a loop that
        // retried at once would make millions.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let tries = calls.load(Ordering::SeqCst);
        assert!((4..=12).contains(&tries), "{tries} accepts in 1.5 s");
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(2), task)
            .await
            .expect("a stop ends the loop during a pause")
            .unwrap();
    }

    #[test]
    fn repeated_events_are_logged_at_most_once_a_second() {
        let clock = crate::clock::ManualClock::at(1_800_000_000);
        let mut t = Throttled::new();
        assert_eq!(t.tick(clock.instant()), Some(1));
        clock.advance_ms(500);
        assert_eq!(t.tick(clock.instant()), None);
        assert_eq!(t.tick(clock.instant()), None);
        clock.advance_ms(500);
        assert_eq!(
            t.tick(clock.instant()),
            Some(3),
            "the two held back and this one"
        );
    }

    #[test]
    fn the_backoff_doubles_up_to_a_second() {
        let mut b = Duration::ZERO;
        let steps: Vec<u128> = (0..10)
            .map(|_| {
                b = backoff_after(b);
                b.as_millis()
            })
            .collect();
        assert_eq!(steps, [10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000]);
    }
}
