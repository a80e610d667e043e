//! One auth-socket connection: Dovecot's auth-client protocol, server side.
//!
//! Requests on a connection are independent: each finished SASL exchange is decided on
//! its own task and answered when ready, so replies may leave out of order and a slow
//! hash never holds up an app-password login behind it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;

use super::connections::Activity;
use super::listener::{Peer, Stream};
use crate::auth::{AuthRequest, Authenticator, Outcome};
use crate::names::Protocol;
use crate::proto::dovecot_auth::{self as proto, AuthLine, ClientLine, FailCode, Handshake};
use crate::proto::line::{next_line, Frame};
use crate::proto::sasl::{Exchange, Mechanism, Step};
use crate::secret::Secret;

/// What a client is told when a login is refused; the reason stays in our log.
const FAIL_REASON: &str = "Authentication failed";
/// Requests one connection may have open at once; Postfix uses one, Dovecot a handful.
const MAX_PENDING: usize = 128;

pub struct AuthService {
    auth: Arc<Authenticator>,
    spid: u32,
    next_cuid: AtomicU32,
    idle_timeout: Duration,
}

impl AuthService {
    pub fn new(auth: Arc<Authenticator>, idle_timeout: Duration) -> Self {
        AuthService {
            auth,
            spid: std::process::id(),
            next_cuid: AtomicU32::new(1),
            idle_timeout,
        }
    }
}

enum Pending {
    Exchanging {
        exchange: Exchange,
        request: RequestInfo,
    },
    Deciding(AbortHandle),
}

#[derive(Clone)]
struct RequestInfo {
    service: String,
    rip: Option<std::net::IpAddr>,
    secured: bool,
    mechanism: Mechanism,
    /// `no-penalty`, believed only from a trusted peer.
    no_penalty: bool,
}

enum Reply {
    Line(u32, Vec<u8>),
    /// Temporary failure for a Postfix caller: Postfix turns every FAIL into 535, but a
    /// closed connection into 454 4.7.0, which clients retry.
    Close(u32),
}

/// Why a connection ended; logged once.
enum End {
    ClientClosed,
    Idle,
    Shutdown,
    /// The listener was full and this connection had been idle longest.
    Evicted,
    Protocol(String),
    TempFailClose,
    Io(std::io::Error),
}

pub async fn serve_connection(
    stream: Box<dyn Stream>,
    peer: Peer,
    service: Arc<AuthService>,
    activity: Activity,
) {
    let cuid = service.next_cuid.fetch_add(1, Ordering::Relaxed);
    let end = run(stream, &peer, &service, cuid, &activity).await;
    match end {
        End::ClientClosed | End::Shutdown | End::TempFailClose => {
            tracing::debug!(peer = %peer.description, cuid, "auth connection closed")
        }
        End::Idle => {
            tracing::debug!(peer = %peer.description, cuid, "auth connection idle; closed")
        }
        End::Evicted => {
            tracing::debug!(peer = %peer.description, cuid, "auth listener full: closed this connection, idle longest, for a new one")
        }
        End::Protocol(why) => {
            tracing::warn!(peer = %peer.description, cuid, error = %why, "auth client broke the protocol; connection closed")
        }
        End::Io(e) => {
            tracing::debug!(peer = %peer.description, cuid, error = %e, "auth connection error")
        }
    }
}

async fn run(
    stream: Box<dyn Stream>,
    peer: &Peer,
    service: &AuthService,
    cuid: u32,
    activity: &Activity,
) -> End {
    let stop: &CancellationToken = activity.stop();
    let (mut reader, mut writer) = tokio::io::split(stream);
    let mut cookie = [0u8; 16];
    let _ = getrandom::fill(&mut cookie);
    let hello = Handshake {
        minor: proto::MINOR_DOVECOT_2_3,
        mechanisms: &Mechanism::ALL,
        spid: service.spid,
        cuid,
        cookie,
    };
    if let Err(e) = writer.write_all(&hello.encode()).await {
        return End::Io(e);
    }
    let (tx, mut rx) = mpsc::channel::<Reply>(MAX_PENDING);
    let mut conn = Conn {
        peer,
        service,
        client_minor: None,
        pending: HashMap::new(),
        tx,
    };
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let mut chunk = vec![0u8; 4096];
    let idle = tokio::time::sleep(service.idle_timeout);
    tokio::pin!(idle);
    loop {
        // Open means being decided: an exchange waiting for the client's next step is
        // the client's to finish and holds nothing here, so it neither keeps the
        // connection from idling out nor from being closed to make room.
        let deciding = conn.deciding();
        activity.set_busy(deciding);
        tokio::select! {
            // Replies and requests first: a line that arrives as the idle timer fires is
            // served, not dropped.
            biased;
            reply = rx.recv() => {
                let Some(reply) = reply else { continue };
                match reply {
                    Reply::Line(id, line) => {
                        if conn.pending.remove(&id).is_some() {
                            if let Err(e) = writer.write_all(&line).await {
                                return End::Io(e);
                            }
                        }
                    }
                    Reply::Close(id) => {
                        if conn.pending.remove(&id).is_some() {
                            return End::TempFailClose;
                        }
                    }
                }
            }
            read = reader.read(&mut chunk) => {
                let n = match read {
                    Ok(0) => return End::ClientClosed,
                    Ok(n) => n,
                    Err(e) => return End::Io(e),
                };
                buf.extend_from_slice(&chunk[..n]);
                idle.as_mut().reset(tokio::time::Instant::now() + service.idle_timeout);
                loop {
                    let (line, consumed) = match next_line(&buf, proto::MAX_LINE_LENGTH) {
                        Frame::Line { line, consumed } => (line.to_vec(), consumed),
                        Frame::NeedMore => break,
                        Frame::TooLong => return End::Protocol(format!("line longer than {} bytes", proto::MAX_LINE_LENGTH)),
                    };
                    wipe_prefix(&mut buf, consumed);
                    match conn.handle_line(&line) {
                        Ok(out) if !out.is_empty() => {
                            if let Err(e) = writer.write_all(&out).await {
                                return End::Io(e);
                            }
                        }
                        Ok(_) => {}
                        Err(why) => return End::Protocol(why),
                    }
                }
            }
            _ = &mut idle, if !deciding => return End::Idle,
            _ = stop.cancelled(), if !deciding => {
                return if activity.evicted() { End::Evicted } else { End::Shutdown };
            }
        }
    }
}

/// Removes consumed bytes and zeroes them first: they may hold credentials.
fn wipe_prefix(buf: &mut Vec<u8>, n: usize) {
    use zeroize::Zeroize;
    buf[..n].zeroize();
    buf.drain(..n);
}

struct Conn<'a> {
    peer: &'a Peer,
    service: &'a AuthService,
    client_minor: Option<u32>,
    pending: HashMap<u32, Pending>,
    tx: mpsc::Sender<Reply>,
}

impl Conn<'_> {
    /// Whether a request is being decided (its reply not sent yet).
    fn deciding(&self) -> bool {
        self.pending
            .values()
            .any(|p| matches!(p, Pending::Deciding(_)))
    }

    /// Returns bytes to send now; an error closes the connection.
    fn handle_line(&mut self, line: &[u8]) -> Result<Vec<u8>, String> {
        let parsed = match proto::parse_client_line(line) {
            Ok(parsed) => parsed,
            Err(e) => {
                return match e.recoverable_request_id() {
                    Some(id) if self.client_minor.is_some() => {
                        self.pending.remove(&id);
                        tracing::info!(peer = %self.peer.description, id, error = %e, "auth request refused");
                        Ok(proto::encode_fail_code(
                            id,
                            None,
                            Some(FailCode::InvalidBase64),
                            Some(FAIL_REASON),
                        ))
                    }
                    _ => Err(e.to_string()),
                };
            }
        };
        match parsed {
            ClientLine::Version { major, minor } => {
                if major != proto::PROTOCOL_MAJOR {
                    return Err(format!(
                        "client speaks protocol version {major}, we speak {}",
                        proto::PROTOCOL_MAJOR
                    ));
                }
                self.client_minor = Some(minor);
                Ok(Vec::new())
            }
            ClientLine::Cpid(_) => Ok(Vec::new()),
            _ if self.client_minor.is_none() => Err("request before VERSION".into()),
            ClientLine::Auth(auth) => self.start(auth),
            ClientLine::Cont { id, data } => self.cont(id, data),
            ClientLine::Cancel { id } => {
                if let Some(Pending::Deciding(handle)) = self.pending.remove(&id) {
                    handle.abort();
                }
                Ok(Vec::new())
            }
        }
    }

    fn start(&mut self, mut auth: AuthLine) -> Result<Vec<u8>, String> {
        let id = auth.id;
        if self.pending.contains_key(&id) {
            return Err(format!("request id {id} reused while still open"));
        }
        if self.pending.len() >= MAX_PENDING {
            return Err(format!("more than {MAX_PENDING} open requests"));
        }
        let Some(mechanism) = auth.mechanism_kind() else {
            tracing::info!(peer = %self.peer.description, id, mech = %auth.mechanism, "unsupported mechanism");
            return Ok(proto::encode_fail(
                id,
                None,
                Some("Unsupported authentication mechanism"),
                false,
            ));
        };
        let Some(service) = auth.service.clone().filter(|s| !s.is_empty()) else {
            tracing::warn!(peer = %self.peer.description, id, "AUTH without service= or protocol=; refused");
            return Ok(proto::encode_fail(id, None, Some(FAIL_REASON), false));
        };
        let request = RequestInfo {
            service,
            rip: auth.rip,
            secured: auth.secured,
            mechanism,
            no_penalty: auth.no_penalty && self.peer.trusted,
        };
        let initial = auth.take_initial_response(self.client_minor.unwrap_or(0));
        let (exchange, step) = Exchange::start(mechanism, initial);
        self.step(id, exchange, request, step)
    }

    fn cont(&mut self, id: u32, data: Vec<u8>) -> Result<Vec<u8>, String> {
        match self.pending.remove(&id) {
            Some(Pending::Exchanging {
                mut exchange,
                request,
            }) => {
                let step = exchange.step(data);
                self.step(id, exchange, request, step)
            }
            Some(deciding @ Pending::Deciding(_)) => {
                self.pending.insert(id, deciding);
                Err(format!("CONT for request {id} while it is being decided"))
            }
            None => Err(format!("CONT for unknown request {id}")),
        }
    }

    fn step(
        &mut self,
        id: u32,
        exchange: Exchange,
        request: RequestInfo,
        step: Step,
    ) -> Result<Vec<u8>, String> {
        match step {
            Step::Challenge(challenge) => {
                self.pending
                    .insert(id, Pending::Exchanging { exchange, request });
                Ok(proto::encode_cont(id, &challenge))
            }
            Step::Fail(e) => {
                tracing::info!(peer = %self.peer.description, id, service = %request.service, error = %e, "SASL exchange failed");
                Ok(proto::encode_fail(id, None, Some(FAIL_REASON), false))
            }
            Step::Done { authcid, password } => {
                let secret = Secret::new(password.into_vec());
                let auth = self.service.auth.clone();
                let tx = self.tx.clone();
                let smtp = auth.protocol_of(&request.service) == Some(Protocol::Smtp);
                let task = tokio::spawn(async move {
                    let outcome = auth
                        .authenticate(&AuthRequest {
                            login: &authcid,
                            secret: &secret,
                            service: &request.service,
                            remote_ip: request.rip,
                            secured: request.secured,
                            mechanism: Some(request.mechanism.name()),
                            no_penalty: request.no_penalty,
                        })
                        .await;
                    let reply = match outcome {
                        Outcome::Ok(success) => {
                            Reply::Line(id, proto::encode_ok(id, &success.mailbox, &[]))
                        }
                        Outcome::Fail(_) => Reply::Line(
                            id,
                            proto::encode_fail(id, Some(&authcid), Some(FAIL_REASON), false),
                        ),
                        Outcome::TempFail(_) if smtp => Reply::Close(id),
                        Outcome::TempFail(_) => Reply::Line(
                            id,
                            proto::encode_fail_code(
                                id,
                                Some(&authcid),
                                Some(FailCode::TempFail),
                                Some("Temporary authentication failure, try again later"),
                            ),
                        ),
                    };
                    let _ = tx.send(reply).await;
                });
                self.pending
                    .insert(id, Pending::Deciding(task.abort_handle()));
                Ok(Vec::new())
            }
        }
    }
}
