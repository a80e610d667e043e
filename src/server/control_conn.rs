//! The control socket: how `mailauthd throttle list|clear` reaches the running daemon.
//!
//! One request line, one JSON reply line. Only root and the daemon's own user may talk to
//! it (socket mode 0600 by default, and the peer's uid is checked). The line comes through
//! [`super::line_conn`], so the request has a size cap and the reply a write timeout.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::connections::Activity;
use super::line_conn::{ConnectionError, Limits, LineConn, Next};
use super::listener::{Peer, Stream};
use crate::auth::throttle::{BlockInfo, Throttle};
use crate::clock::Clock;

/// Longest request line, LF included.
const MAX_REQUEST: usize = 4096;
/// Bytes first reserved for the request, and the step the buffer grows by.
const LINE_BUFFER: usize = 1024;

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum ControlRequest {
    ThrottleList,
    ThrottleClear { filter: Option<String> },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum ControlReply {
    Blocks {
        now_ms: i64,
        entries: Vec<BlockEntry>,
    },
    Cleared {
        removed: usize,
    },
    Error {
        message: String,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub struct BlockEntry {
    pub key: String,
    pub kind: String,
    pub failures: u32,
    pub blocked_until_ms: Option<i64>,
}

impl From<BlockInfo> for BlockEntry {
    fn from(b: BlockInfo) -> Self {
        BlockEntry {
            key: b.key.to_string(),
            kind: b.kind.name().to_string(),
            failures: b.failures,
            blocked_until_ms: b.blocked_until,
        }
    }
}

pub struct ControlService {
    pub throttle: Arc<Throttle>,
    pub clock: Arc<dyn Clock>,
    /// How long a client may take to send its request, and to read the reply.
    pub idle_timeout: Duration,
}

impl ControlService {
    async fn answer(&self, request: ControlRequest) -> ControlReply {
        match request {
            ControlRequest::ThrottleList => {
                let now_ms = self.clock.now_ms();
                let entries = self
                    .throttle
                    .list(now_ms)
                    .await
                    .into_iter()
                    .map(BlockEntry::from)
                    .collect();
                ControlReply::Blocks { now_ms, entries }
            }
            ControlRequest::ThrottleClear { filter } => {
                let shown = filter.as_deref().unwrap_or("*");
                match self.throttle.clear(filter.as_deref()).await {
                    Ok(removed) => {
                        tracing::info!(filter = shown, removed, "throttle entries cleared");
                        ControlReply::Cleared { removed }
                    }
                    Err(e) => {
                        tracing::warn!(filter = shown, error = %e, "throttle clear incomplete");
                        ControlReply::Error {
                            message: e.to_string(),
                        }
                    }
                }
            }
        }
    }
}

/// One request, one reply. A client that sends no full request line within the idle
/// timeout (or before the daemon stops, or before the listener needs its place) is closed
/// unanswered; the timeout counts from the connection's start, however the request trickles
/// in. A request that ends at the client's hang-up instead of an LF is answered too.
pub async fn serve_connection(
    stream: Box<dyn Stream>,
    peer: Peer,
    service: Arc<ControlService>,
    activity: Activity,
) {
    if !peer.control_allowed {
        tracing::warn!(peer = %peer.description, "control socket: peer is neither root nor the daemon's user; closed");
        return;
    }
    let idle = service.idle_timeout;
    let mut conn = LineConn::new(stream, Limits::new(MAX_REQUEST, LINE_BUFFER, idle));
    let read = tokio::select! {
        _ = activity.stop().cancelled() => return,
        read = tokio::time::timeout(idle, conn.read_line()) => read,
    };
    let line = match read {
        Ok(Ok(Next::Line(line))) => line,
        Ok(Err(ConnectionError::Truncated)) => conn.take_partial(),
        Err(_) | Ok(Ok(Next::Idle)) => {
            tracing::debug!(peer = %peer.description, "control connection sent no request in time; closed");
            return;
        }
        Ok(Ok(Next::Closed)) => return,
        Ok(Err(e @ ConnectionError::LineTooLong(_))) => {
            activity.busy();
            let reply = ControlReply::Error {
                message: format!("bad request: {e}"),
            };
            return send(&mut conn, &peer, &reply).await;
        }
        Ok(Err(e)) => {
            tracing::debug!(peer = %peer.description, error = %e, "control connection failed");
            return;
        }
    };
    activity.busy();
    let reply = match serde_json::from_slice::<ControlRequest>(line.trim_ascii()) {
        Ok(request) => service.answer(request).await,
        Err(e) => ControlReply::Error {
            message: format!("bad request: {e}"),
        },
    };
    send(&mut conn, &peer, &reply).await;
}

async fn send(conn: &mut LineConn<Box<dyn Stream>>, peer: &Peer, reply: &ControlReply) {
    let Ok(mut text) = serde_json::to_string(reply) else {
        return;
    };
    text.push('\n');
    if let Err(e) = conn.write_all(text.as_bytes()).await {
        tracing::debug!(peer = %peer.description, error = %e, "control reply not delivered");
    }
}
