//! One userdb-socket connection: the read-only part of Dovecot's auth-master protocol.
//!
//! Dovecot's LMTP (through the shipped Lua adapter) and chasquid ask whether a mailbox
//! exists and what its quota is; no password is involved. Whether it exists for delivery
//! is the decision core's rule ([`crate::auth::find_recipient`]); this door translates
//! lines to lookups and answers to lines.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::connections::Activity;
use super::listener::{Peer, Stream};
use crate::auth::find_recipient;
use crate::proto::dovecot_master::{self as proto, LookupLine, MasterLine};
use crate::proto::line::{next_line, Frame};
use crate::store::Store;

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
                tracing::debug!(user = %found.address, service = ?line.service, "userdb lookup: found");
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
) -> Result<(), String> {
    let (mut reader, mut writer) = tokio::io::split(stream);
    let hello = proto::encode_handshake(proto::PROTOCOL_MINOR, std::process::id());
    writer.write_all(&hello).await.map_err(|e| e.to_string())?;
    let mut buf = Vec::with_capacity(512);
    let mut chunk = vec![0u8; 4096];
    let mut versioned = false;
    loop {
        // Between requests: idle, so the first to go when the listener is full.
        activity.idle();
        let n = tokio::select! {
            _ = activity.stop().cancelled() => return Ok(()),
            _ = tokio::time::sleep(service.idle_timeout) => return Ok(()),
            read = reader.read(&mut chunk) => read.map_err(|e| e.to_string())?,
        };
        if n == 0 {
            return Ok(());
        }
        activity.busy();
        buf.extend_from_slice(&chunk[..n]);
        loop {
            let (line, consumed) = match next_line(&buf, proto::MAX_LINE_LENGTH) {
                Frame::Line { line, consumed } => (line.to_vec(), consumed),
                Frame::NeedMore => break,
                Frame::TooLong => return Err("line too long".into()),
            };
            buf.drain(..consumed);
            let reply = match proto::parse_master_line(&line) {
                Ok(MasterLine::Version { major, .. }) if major == proto::PROTOCOL_MAJOR => {
                    versioned = true;
                    continue;
                }
                Ok(MasterLine::Version { major, .. }) => {
                    return Err(format!("unsupported protocol version {major}"))
                }
                Ok(_) if !versioned => return Err("request before VERSION".into()),
                Ok(MasterLine::User(l)) => service.lookup(&l, false).await,
                Ok(MasterLine::Pass(l)) => service.lookup(&l, true).await,
                Ok(MasterLine::List { id, .. }) => proto::encode_list_done(id, true),
                Err(e) => match e.recoverable_request_id() {
                    Some(id) => proto::encode_notfound(id),
                    None => return Err(e.to_string()),
                },
            };
            writer.write_all(&reply).await.map_err(|e| e.to_string())?;
        }
    }
}
