//! One userdb-socket connection: the read-only part of Dovecot's auth-master protocol.
//!
//! Dovecot's LMTP (through the shipped Lua adapter) and chasquid ask whether a mailbox
//! exists and what its quota is; no password is involved. Whether it exists for delivery
//! is the decision core's rule ([`crate::auth::find_recipient`]); this door translates
//! lines to lookups and answers to lines, over [`super::line_conn`].

use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;

use super::connections::Activity;
use super::line_conn::{ConnectionError, Filled, Limits, LineConn};
use super::listener::{Peer, Stream};
use crate::auth::find_recipient;
use crate::proto::dovecot_auth::ProtoError;
use crate::proto::dovecot_master::{self as proto, LookupLine, MasterLine};
use crate::store::Store;

/// Bytes first reserved for a connection's line buffer, and the step it grows by.
const LINE_BUFFER: usize = 512;

/// Why a userdb connection was closed other than by the client, an idle timeout or a stop.
#[derive(Debug, Error)]
pub enum UserdbError {
    #[error(transparent)]
    Connection(#[from] ConnectionError),
    #[error("unsupported protocol version {0}")]
    Version(u32),
    #[error("request before VERSION")]
    BeforeVersion,
    #[error(transparent)]
    Malformed(ProtoError),
}

pub struct UserdbService {
    store: Arc<dyn Store>,
    idle_timeout: Duration,
}

impl UserdbService {
    pub fn new(store: Arc<dyn Store>, idle_timeout: Duration) -> Self {
        UserdbService {
            store,
            idle_timeout,
        }
    }

    /// The reply for one USER or PASS lookup.
    async fn lookup(&self, line: &LookupLine, pass: bool) -> Vec<u8> {
        match find_recipient(&*self.store, &line.user).await {
            Ok(Some(found)) => {
                let quota = format!("*:bytes={}", found.quota);
                let mut fields: Vec<(&str, &str)> = Vec::new();
                if found.quota > 0 {
                    fields.push(("quota_rule", &quota));
                }
                tracing::debug!(user = %found.address, service = ?line.client.service, "userdb lookup: found");
                if pass {
                    fields.push(("nopassword", ""));
                    proto::encode_pass(line.id, &found.address, &fields)
                } else {
                    proto::encode_user(line.id, &found.address, &fields)
                }
            }
            Ok(None) => {
                tracing::debug!(user = %line.user, "userdb lookup: not found");
                proto::encode_notfound(line.id)
            }
            Err(e) => {
                tracing::warn!(user = %line.user, error = %e, "userdb lookup failed");
                proto::encode_fail(line.id, Some("temporary failure"))
            }
        }
    }
}

pub async fn serve_connection(
    stream: Box<dyn Stream>,
    peer: Peer,
    service: Arc<UserdbService>,
    activity: Activity,
) {
    if let Err(why) = run(stream, &service, &activity).await {
        tracing::warn!(peer = %peer.description, error = %why, "userdb connection closed");
    }
}

async fn run(
    stream: Box<dyn Stream>,
    service: &UserdbService,
    activity: &Activity,
) -> Result<(), UserdbError> {
    let limits = Limits::new(proto::MAX_LINE_LENGTH, LINE_BUFFER, service.idle_timeout);
    let mut conn = LineConn::new(stream, limits);
    let hello = proto::encode_handshake(proto::PROTOCOL_MINOR, std::process::id());
    conn.write_all(&hello).await?;
    let mut versioned = false;
    loop {
        // Every line already read is answered before a stop is looked at.
        let Some(line) = conn.next_line()? else {
            // Between requests: idle, so the first to go when the listener is full.
            activity.idle();
            let filled = tokio::select! {
                _ = activity.stop().cancelled() => return Ok(()),
                filled = conn.fill(true) => filled?,
            };
            match filled {
                Filled::Data => activity.busy(),
                Filled::Closed | Filled::Idle => return Ok(()),
            }
            continue;
        };
        let reply = match proto::parse_master_line(&line) {
            Ok(MasterLine::Version { major, .. }) if major == proto::PROTOCOL_MAJOR => {
                versioned = true;
                continue;
            }
            Ok(MasterLine::Version { major, .. }) => return Err(UserdbError::Version(major)),
            Ok(_) if !versioned => return Err(UserdbError::BeforeVersion),
            Ok(MasterLine::User(l)) => service.lookup(&l, false).await,
            Ok(MasterLine::Pass(l)) => service.lookup(&l, true).await,
            Ok(MasterLine::List { id, .. }) => proto::encode_list_done(id, true),
            Err(e) => match e.recoverable_request_id() {
                Some(id) => proto::encode_notfound(id),
                None => return Err(UserdbError::Malformed(e)),
            },
        };
        conn.write_all(&reply).await?;
    }
}
