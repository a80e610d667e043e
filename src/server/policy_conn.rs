//! One Postfix policy connection: read requests, answer each in order, repeat until the
//! client leaves, the connection idles out, or the daemon stops.
//!
//! Postfix keeps a policy connection open and sends one request at a time, but nothing
//! here relies on that: requests that arrive back to back are answered in order with one
//! write. What the codec refuses, and requests no decision can be made for (store down),
//! end the connection without a reply, as `SMTPD_POLICY_README` asks: Postfix then
//! retries on a new connection and finally applies `smtpd_policy_service_default_action`.
//!
//! The driver does not know its peer; callers run it inside a span that names the peer,
//! so every line logged here carries it.

use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::connections::Activity;

use crate::policy::{DecisionError, PolicyService};
use crate::proto::postfix_policy::{decode, encode_action, Decoded, PolicyError};

/// Bytes asked of the socket per read. With the codec's size cap this bounds the buffer to
/// `max_request_bytes + READ_CHUNK`, whatever the client sends.
const READ_CHUNK: usize = 8192;

/// Why a connection ended other than by the client hanging up between requests, an idle
/// timeout or shutdown. The driver has already logged it.
#[derive(Debug, Error)]
pub enum ConnectionError {
    #[error("policy connection I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("closed the policy connection without a reply: {0}")]
    Invalid(PolicyError),
    #[error("closed the policy connection without a reply: {0}")]
    Decision(DecisionError),
    #[error("policy client closed the connection in the middle of a request")]
    Truncated,
    #[error("policy client sent no more of its request for {0:?}; closed the connection")]
    Stalled(Duration),
    #[error("policy client did not read its replies for {0:?}; closed the connection")]
    WriteTimeout(Duration),
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
    let mut stream = stream;
    let limits = service.settings().codec;
    let idle = service.settings().idle_timeout;
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let mut chunk = vec![0u8; READ_CHUNK];
    let mut replies: Vec<u8> = Vec::new();
    loop {
        let mut start = 0;
        loop {
            match decode(&buf[start..], &limits) {
                Decoded::Request { request, consumed } => {
                    start += consumed;
                    match service.decide(&request).await {
                        Ok(decision) => {
                            replies.extend_from_slice(&encode_action(&decision.action()))
                        }
                        Err(e) => {
                            // The audit line of `decide` already says why. Answers to
                            // earlier requests stand; this one gets none.
                            write_replies(&mut stream, &mut replies, idle).await?;
                            return Err(ConnectionError::Decision(e));
                        }
                    }
                }
                Decoded::NeedMore => break,
                Decoded::Invalid(e) => {
                    tracing::warn!(error = %e, "invalid policy request; closing the connection without a reply");
                    write_replies(&mut stream, &mut replies, idle).await?;
                    return Err(ConnectionError::Invalid(e));
                }
            }
        }
        buf.drain(..start);
        write_replies(&mut stream, &mut replies, idle).await?;
        let between_requests = buf.is_empty();
        activity.set_busy(!between_requests);
        if between_requests && shutdown.is_cancelled() {
            return Ok(());
        }
        let read = tokio::select! {
            biased;
            () = shutdown.cancelled(), if between_requests => return Ok(()),
            read = tokio::time::timeout(idle, stream.read(&mut chunk)) => read,
        };
        match read {
            Err(_) if between_requests => {
                tracing::debug!(idle = ?idle, "policy connection idle; closing it");
                return Ok(());
            }
            Err(_) => {
                tracing::warn!(idle = ?idle, "policy request incomplete for too long; closing the connection");
                return Err(ConnectionError::Stalled(idle));
            }
            Ok(Ok(0)) if between_requests => return Ok(()),
            Ok(Ok(0)) => {
                tracing::warn!("policy client closed the connection in the middle of a request");
                return Err(ConnectionError::Truncated);
            }
            Ok(Ok(n)) => {
                // A request is open from its first byte until its reply is written.
                activity.busy();
                buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "policy connection read failed");
                return Err(e.into());
            }
        }
    }
}

/// A client that stops reading must not hold the connection (and its buffers) forever.
async fn write_replies<S: AsyncWrite + Unpin>(
    stream: &mut S,
    replies: &mut Vec<u8>,
    limit: Duration,
) -> Result<(), ConnectionError> {
    if replies.is_empty() {
        return Ok(());
    }
    let write = async {
        stream.write_all(replies).await?;
        stream.flush().await
    };
    match tokio::time::timeout(limit, write).await {
        Ok(Ok(())) => {
            replies.clear();
            Ok(())
        }
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "policy connection write failed");
            Err(e.into())
        }
        Err(_) => {
            tracing::warn!(timeout = ?limit, "policy client is not reading replies; closing the connection");
            Err(ConnectionError::WriteTimeout(limit))
        }
    }
}
