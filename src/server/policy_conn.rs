//! One Postfix policy connection: read requests, answer each in order, repeat until the
//! client leaves, the connection idles out, or the daemon stops.
//!
//! Postfix keeps a policy connection open and sends one request at a time, but nothing
//! here relies on that: requests that arrive back to back are answered in order with one
//! write. What the codec refuses, and requests no decision can be made for (store down),
//! end the connection without a reply, as `SMTPD_POLICY_README` asks: Postfix then
//! retries on a new connection and finally applies `smtpd_policy_service_default_action`.
//!
//! The buffer, the idle timer (kept apart from a request that stalls), the wipe of
//! consumed bytes and the write timeout are [`super::line_conn`]'s; the framing is the
//! codec's, on the buffered bytes.
//!
//! [`serve_connection`] does not know its peer; [`serve`] runs it inside a span that names
//! the peer, so every line logged here carries it.

use std::sync::Arc;

use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::Instrument;

use super::connections::Activity;
use super::line_conn::{self, Filled, Limits, LineConn};
use super::listener::{Peer, Stream};

use crate::policy::{DecisionError, PolicyService};
use crate::proto::postfix_policy::{decode, encode_action, Decoded, PolicyError};

/// Bytes reserved for the buffer at the start, and the step it grows by. With the codec's
/// size cap this bounds the buffer to `max_request_bytes + READ_CHUNK`, whatever the
/// client sends.
const READ_CHUNK: usize = 8192;

/// Why a connection ended other than by the client hanging up between requests, an idle
/// timeout or shutdown. The driver has already logged it.
#[derive(Debug, Error)]
pub enum ConnectionError {
    /// Read or write trouble, a request cut short or stalled, replies left unread.
    #[error("policy connection: {0}")]
    Connection(#[from] line_conn::ConnectionError),
    #[error("closed the policy connection without a reply: {0}")]
    Invalid(PolicyError),
    #[error("closed the policy connection without a reply: {0}")]
    Decision(DecisionError),
}

/// [`serve_connection`] for a listener: inside a span that names the peer, with how the
/// connection ended logged.
pub async fn serve(
    stream: Box<dyn Stream>,
    peer: Peer,
    service: Arc<PolicyService>,
    activity: Activity,
) {
    let span = tracing::info_span!("policy", peer = %peer.description);
    if let Err(e) = serve_connection(stream, service, activity)
        .instrument(span)
        .await
    {
        tracing::debug!(peer = %peer.description, error = %e, "policy connection ended");
    }
}

/// Serves one connection until it ends; see the module notes.
///
/// Returns `Ok(())` when the client closes between requests, when it stays silent for the
/// configured idle timeout between requests, and when the activity's stop fires between
/// requests (shutdown, or the listener is full and this connection idle longest; a request
/// being read or decided is finished first).
pub async fn serve_connection<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    service: Arc<PolicyService>,
    activity: Activity,
) -> Result<(), ConnectionError> {
    let shutdown = activity.stop().clone();
    let limits = service.settings().codec;
    let idle = service.settings().idle_timeout;
    // Requests are framed by the codec, which has its own caps.
    let mut conn = LineConn::new(
        stream,
        Limits::new(limits.max_request_bytes, READ_CHUNK, idle),
    );
    let mut replies: Vec<u8> = Vec::new();
    loop {
        let mut start = 0;
        loop {
            match decode(&conn.buffered()[start..], &limits) {
                Decoded::Request { request, consumed } => {
                    start += consumed;
                    match service.decide(&request).await {
                        Ok(decision) => {
                            replies.extend_from_slice(&encode_action(&decision.action()))
                        }
                        Err(e) => {
                            // The audit line of `decide` already says why. Answers to
                            // earlier requests stand; this one gets none.
                            write_replies(&mut conn, &mut replies).await?;
                            return Err(ConnectionError::Decision(e));
                        }
                    }
                }
                Decoded::NeedMore => break,
                Decoded::Invalid(e) => {
                    tracing::warn!(error = %e, "invalid policy request; closing the connection without a reply");
                    write_replies(&mut conn, &mut replies).await?;
                    return Err(ConnectionError::Invalid(e));
                }
            }
        }
        conn.consume(start);
        write_replies(&mut conn, &mut replies).await?;
        let between_requests = !conn.has_partial();
        activity.set_busy(!between_requests);
        if between_requests && shutdown.is_cancelled() {
            return Ok(());
        }
        let filled = tokio::select! {
            biased;
            () = shutdown.cancelled(), if between_requests => return Ok(()),
            filled = conn.fill(true) => filled,
        };
        match filled {
            // A request is open from its first byte until its reply is written.
            Ok(Filled::Data) => activity.busy(),
            Ok(Filled::Closed) => return Ok(()),
            Ok(Filled::Idle) => {
                tracing::debug!(idle = ?idle, "policy connection idle; closing it");
                return Ok(());
            }
            Err(e) => {
                match &e {
                    line_conn::ConnectionError::Stalled(_) => {
                        tracing::warn!(idle = ?idle, "policy request incomplete for too long; closing the connection")
                    }
                    line_conn::ConnectionError::Truncated => {
                        tracing::warn!(
                            "policy client closed the connection in the middle of a request"
                        )
                    }
                    e => tracing::debug!(error = %e, "policy connection read failed"),
                }
                return Err(e.into());
            }
        }
    }
}

/// A client that stops reading must not hold the connection (and its buffers) forever.
async fn write_replies<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut LineConn<S>,
    replies: &mut Vec<u8>,
) -> Result<(), ConnectionError> {
    if replies.is_empty() {
        return Ok(());
    }
    match conn.write_all(replies).await {
        Ok(()) => {
            replies.clear();
            Ok(())
        }
        Err(e @ line_conn::ConnectionError::WriteTimeout(_)) => {
            tracing::warn!(error = %e, "policy client is not reading replies; closing the connection");
            Err(e.into())
        }
        Err(e) => {
            tracing::debug!(error = %e, "policy connection write failed");
            Err(e.into())
        }
    }
}
