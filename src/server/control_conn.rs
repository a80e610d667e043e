//! The control socket: how `mailauthd throttle list|clear` reaches the running daemon.
//!
//! One request line, one JSON reply line. Only root and the daemon's own user may talk to
//! it (socket mode 0600 by default, and the peer's uid is checked).

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::connections::Activity;
use super::listener::{Peer, Stream};
use crate::auth::throttle::{BlockInfo, Throttle};
use crate::clock::Clock;

const MAX_REQUEST: u64 = 4096;

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

/// One request, one reply. A client that sends no full request line within `idle` (or
/// before the daemon stops, or before the listener needs its place) is closed unanswered.
pub async fn serve_connection(
    stream: Box<dyn Stream>,
    peer: Peer,
    service: Arc<ControlService>,
    idle: Duration,
    activity: Activity,
) {
    if !peer.control_allowed {
        tracing::warn!(peer = %peer.description, "control socket: peer is neither root nor the daemon's user; closed");
        return;
    }
    let (reader, mut writer) = tokio::io::split(stream);
    let mut line = String::new();
    let mut limited = BufReader::new(tokio::io::AsyncReadExt::take(reader, MAX_REQUEST));
    let read = tokio::select! {
        _ = activity.stop().cancelled() => return,
        read = tokio::time::timeout(idle, limited.read_line(&mut line)) => read,
    };
    let Ok(read) = read else {
        tracing::debug!(peer = %peer.description, "control connection sent no request in time; closed");
        return;
    };
    activity.busy();
    let reply = match read {
        Ok(_) => match serde_json::from_str::<ControlRequest>(line.trim()) {
            Ok(request) => service.answer(request).await,
            Err(e) => ControlReply::Error {
                message: format!("bad request: {e}"),
            },
        },
        Err(e) => ControlReply::Error {
            message: e.to_string(),
        },
    };
    if let Ok(mut text) = serde_json::to_string(&reply) {
        text.push('\n');
        let _ = writer.write_all(text.as_bytes()).await;
    }
}
