//! One auth-socket connection: Dovecot's auth-client protocol, server side.
//!
//! Requests on a connection are independent: each finished SASL exchange is decided on
//! its own task and answered when ready, so replies may leave out of order and a slow
//! hash never holds up an app-password login behind it.
//!
//! The line framing, its 16 KiB cap, the wipe of every consumed byte (lines carry
//! passwords), the idle timer and the write timeout are [`super::line_conn`]'s. This file
//! adds what is the auth socket's own: the handshake, the requests open on a connection,
//! the order they are charged to the throttle in, and the caps over all connections.
//!
//! OAUTHBEARER and XOAUTH2 are offered only when the decision core accepts bearer tokens.
//! A token the core refuses is not answered with FAIL at once: RFC 7628 wants the error
//! challenge first (a JSON saying where to get a new token), so the request goes back to
//! waiting for the client, whose (dummy) answer then ends it in FAIL. A CANCEL or the
//! connection closing in between ends it like any other exchange.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;

use super::connections::Activity;
use super::line_conn::{ConnectionError, Filled, Limits, LineConn};
use super::listener::{Peer, Stream};
use crate::auth::{AuthRequest, Authenticator, FailReason, Outcome, SecretKind};
use crate::names::Protocol;
use crate::proto::dovecot_auth::{
    self as proto, AuthLine, ClientLine, FailCode, Handshake, ProtoError,
};
use crate::proto::sasl::{self, Exchange, Mechanism, SaslError, Step};
use crate::secret::Secret;

/// What a client is told when a login is refused; the reason stays in our log.
const FAIL_REASON: &str = "Authentication failed";
/// Requests one connection may have open at once; Postfix uses one, Dovecot a handful.
const MAX_PENDING: usize = 128;
/// Replies gathered into one write at most (128 pending replies of a few hundred bytes
/// fit); a full batch is written and the rest follow in the next.
const REPLY_BATCH_BYTES: usize = 64 * 1024;
/// Requests being decided at once over every connection: from the moment a request's
/// turn comes (the one before it on its connection was charged to the throttle) to its
/// answer. Each holds a few KiB while it waits (for a delay, a hash worker, the store); a
/// hash pool of a few workers and its queue never needs more, and app-password logins
/// finish in microseconds. Beyond it a request gets a quick temporary failure, as when
/// the hash pool is full. A request that the throttle refuses holds its place only for
/// the moment the throttle takes to say so, so a blocked source's flood cannot fill it.
const MAX_DECIDING: usize = 512;
/// Requests read but not answered yet over every connection, waiting for their turn or
/// being decided. Without a bound, a few hundred connections pipelining requests would
/// hold hundreds of MiB; beyond it a request gets a quick temporary failure at once.
const MAX_QUEUED: usize = 4096;
/// Throttled answers held back at once over every connection (see
/// `Authenticator::refusal_delay`). They hold no deciding place; beyond this many, a
/// blocked client is answered at once rather than held in memory.
const MAX_HELD_BACK: usize = 4096;
/// Bytes first reserved for a connection's line buffer, and the step it grows by: most
/// lines are far shorter, and thousands of idle connections each keep only this.
const LINE_BUFFER: usize = 1024;

pub struct AuthService {
    auth: Arc<Authenticator>,
    /// What the handshake offers: the token mechanisms only when tokens are accepted.
    mechanisms: &'static [Mechanism],
    /// RFC 7628's error message for a refused token, per mechanism (OAUTHBEARER,
    /// XOAUTH2); fixed at start like the verifier's settings.
    token_errors: Option<[Vec<u8>; 2]>,
    spid: u32,
    next_cuid: AtomicU32,
    idle_timeout: Duration,
    queued: Arc<Semaphore>,
    deciding: Arc<Semaphore>,
    held_back: Arc<Semaphore>,
}

impl AuthService {
    pub fn new(auth: Arc<Authenticator>, idle_timeout: Duration) -> Self {
        let token_errors = auth.token_challenge().map(|c| {
            [Mechanism::OAuthBearer, Mechanism::XOAuth2]
                .map(|m| sasl::token_error_challenge(m, &c.scope, &c.openid_configuration))
        });
        let mechanisms: &'static [Mechanism] = if auth.accepts_tokens() {
            &Mechanism::ALL
        } else {
            &Mechanism::PASSWORD
        };
        AuthService {
            auth,
            mechanisms,
            token_errors,
            spid: std::process::id(),
            next_cuid: AtomicU32::new(1),
            idle_timeout,
            queued: Arc::new(Semaphore::new(MAX_QUEUED)),
            deciding: Arc::new(Semaphore::new(MAX_DECIDING)),
            held_back: Arc::new(Semaphore::new(MAX_HELD_BACK)),
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
    /// The name a refused token came with, for the FAIL that ends its error exchange.
    login: Option<String>,
}

enum Reply {
    Line(u32, Vec<u8>),
    /// The token was refused: send the error challenge and wait for the client.
    TokenRefused(u32, RequestInfo),
    /// Temporary failure for a Postfix caller: Postfix turns every FAIL into 535, but a
    /// closed connection into 454 4.7.0, which clients retry.
    Close(u32),
}

/// How a client broke the protocol; the connection is closed.
#[derive(Debug, Error)]
enum ProtocolError {
    #[error(transparent)]
    Framing(ConnectionError),
    #[error(transparent)]
    Malformed(ProtoError),
    #[error("client speaks protocol version {0}, we speak {major}", major = proto::PROTOCOL_MAJOR)]
    Version(u32),
    #[error("request before VERSION")]
    BeforeVersion,
    #[error("request id {0} reused while still open")]
    IdReused(u32),
    #[error("more than {MAX_PENDING} open requests")]
    TooManyOpen,
    #[error("CONT for request {0} while it is being decided")]
    ContWhileDeciding(u32),
    #[error("CONT for unknown request {0}")]
    ContUnknown(u32),
}

/// Why a connection ended; logged once.
enum End {
    ClientClosed,
    Idle,
    Shutdown,
    /// The listener was full and this connection had been idle longest.
    Evicted,
    Protocol(ProtocolError),
    TempFailClose,
    Connection(ConnectionError),
}

impl From<ConnectionError> for End {
    fn from(e: ConnectionError) -> Self {
        match e {
            ConnectionError::LineTooLong(_) => End::Protocol(ProtocolError::Framing(e)),
            e => End::Connection(e),
        }
    }
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
        End::Connection(e) => {
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
    let limits = Limits::new(proto::MAX_LINE_LENGTH, LINE_BUFFER, service.idle_timeout);
    let mut lines = LineConn::new(stream, limits);
    let mut cookie = [0u8; 16];
    let _ = getrandom::fill(&mut cookie);
    let hello = Handshake {
        minor: proto::MINOR_DOVECOT_2_3,
        mechanisms: service.mechanisms,
        spid: service.spid,
        cuid,
        cookie,
    };
    if let Err(e) = lines.write_all(&hello.encode()).await {
        return e.into();
    }
    let (tx, mut rx) = mpsc::channel::<Reply>(MAX_PENDING);
    let mut conn = Conn {
        peer,
        service,
        client_minor: None,
        pending: HashMap::new(),
        tx,
        last_admitted: None,
        close_now: false,
    };
    loop {
        // Open means being decided: an exchange waiting for the client's next step is
        // the client's to finish and holds nothing here, so it neither keeps the
        // connection from idling out nor from being closed to make room.
        let deciding = conn.deciding();
        activity.set_busy(deciding);
        tokio::select! {
            // Replies first, then requests (`fill` reads bytes that arrive as its idle
            // timer fires rather than drop them), then a stop.
            biased;
            reply = rx.recv() => {
                let Some(reply) = reply else { continue };
                // Every reply already decided goes out in one write: a pipelining client
                // (Postfix, Dovecot) then costs one syscall and one timer for many.
                let mut out = Vec::new();
                let mut close = false;
                let mut next = Some(reply);
                while let Some(reply) = next.take() {
                    match reply {
                        Reply::Line(id, line) => {
                            if conn.pending.remove(&id).is_some() {
                                out.extend_from_slice(&line);
                            }
                        }
                        Reply::Close(id) => {
                            if conn.pending.remove(&id).is_some() {
                                close = true;
                                break;
                            }
                        }
                        Reply::TokenRefused(id, request) => {
                            if conn.pending.remove(&id).is_some() {
                                out.extend_from_slice(&conn.token_error(id, request));
                            }
                        }
                    }
                    if out.len() < REPLY_BATCH_BYTES {
                        next = rx.try_recv().ok();
                    }
                }
                if !out.is_empty() {
                    if let Err(e) = lines.write_all(&out).await {
                        return e.into();
                    }
                }
                if close {
                    return End::TempFailClose;
                }
            }
            // Once told to stop (shutdown, or closed to make room for a new client), no
            // new request is read: the ones being decided finish, then the connection
            // closes, however busy the client keeps its end. The idle timer runs only
            // while nothing is being decided.
            filled = lines.fill(!deciding), if !stop.is_cancelled() => {
                match filled {
                    Ok(Filled::Data) => {}
                    Ok(Filled::Closed) => return End::ClientClosed,
                    Ok(Filled::Idle) => return End::Idle,
                    Err(e) => return e.into(),
                }
                // What the lines of this read answer at once, written together after
                // them (or before the connection ends on one of them).
                let mut out = Vec::new();
                let mut end = None;
                loop {
                    let line = match lines.next_line() {
                        Ok(Some(line)) => line,
                        Ok(None) => break,
                        Err(e) => {
                            end = Some(e.into());
                            break;
                        }
                    };
                    match conn.handle_line(&line) {
                        Ok(answer) => out.extend_from_slice(&answer),
                        Err(why) => {
                            end = Some(End::Protocol(why));
                            break;
                        }
                    }
                    if conn.close_now {
                        end = Some(End::TempFailClose);
                        break;
                    }
                }
                if !out.is_empty() {
                    if let Err(e) = lines.write_all(&out).await {
                        return e.into();
                    }
                }
                if let Some(end) = end {
                    return end;
                }
            }
            _ = stop.cancelled(), if !deciding => {
                return if activity.evicted() { End::Evicted } else { End::Shutdown };
            }
        }
    }
}

/// "Try again later": a FAIL with the temporary-failure code, or for Postfix, which turns
/// every FAIL into 535, a closed connection (454).
fn temp_fail_reply(id: u32, login: &str, smtp: bool) -> Reply {
    if smtp {
        Reply::Close(id)
    } else {
        Reply::Line(id, temp_fail_line(id, login))
    }
}

fn temp_fail_line(id: u32, login: &str) -> Vec<u8> {
    proto::encode_fail_code(
        id,
        // A token may come without a name.
        (!login.is_empty()).then_some(login),
        Some(FailCode::TempFail),
        Some("Temporary authentication failure, try again later"),
    )
}

struct Conn<'a> {
    peer: &'a Peer,
    service: &'a AuthService,
    client_minor: Option<u32>,
    pending: HashMap<u32, Pending>,
    tx: mpsc::Sender<Reply>,
    /// Notified when the request before the next one has been charged to the throttle.
    last_admitted: Option<Arc<Notify>>,
    /// A temporary failure for Postfix was decided on the spot: close (454) at once.
    close_now: bool,
}

impl Drop for Conn<'_> {
    /// A closed connection's requests have nobody to answer: they end with it (and the
    /// throttle charges each as a cancelled attempt).
    fn drop(&mut self) {
        for pending in self.pending.values() {
            if let Pending::Deciding(handle) = pending {
                handle.abort();
            }
        }
    }
}

/// Notifies the next request of a connection that this one has been charged, also when
/// it never gets that far (cancelled, aborted): the next one must not wait forever.
struct Baton(Arc<Notify>);

impl Drop for Baton {
    fn drop(&mut self) {
        self.0.notify_one();
    }
}

impl Conn<'_> {
    /// Whether a request is being decided (its reply not sent yet).
    fn deciding(&self) -> bool {
        self.pending
            .values()
            .any(|p| matches!(p, Pending::Deciding(_)))
    }

    /// Returns bytes to send now; an error closes the connection.
    fn handle_line(&mut self, line: &[u8]) -> Result<Vec<u8>, ProtocolError> {
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
                    _ => Err(ProtocolError::Malformed(e)),
                };
            }
        };
        match parsed {
            ClientLine::Version { major, minor } => {
                if major != proto::PROTOCOL_MAJOR {
                    return Err(ProtocolError::Version(major));
                }
                self.client_minor = Some(minor);
                Ok(Vec::new())
            }
            ClientLine::Cpid(_) => Ok(Vec::new()),
            _ if self.client_minor.is_none() => Err(ProtocolError::BeforeVersion),
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

    fn start(&mut self, mut auth: AuthLine) -> Result<Vec<u8>, ProtocolError> {
        let id = auth.id;
        if self.pending.contains_key(&id) {
            return Err(ProtocolError::IdReused(id));
        }
        if self.pending.len() >= MAX_PENDING {
            return Err(ProtocolError::TooManyOpen);
        }
        let offered = auth
            .mechanism_kind()
            .filter(|m| self.service.mechanisms.contains(m));
        let Some(mechanism) = offered else {
            tracing::info!(peer = %self.peer.description, id, mech = %auth.mechanism, "unsupported mechanism");
            return Ok(proto::encode_fail(
                id,
                None,
                Some("Unsupported authentication mechanism"),
                false,
            ));
        };
        let Some(service) = auth.client.service.clone().filter(|s| !s.is_empty()) else {
            tracing::warn!(peer = %self.peer.description, id, "AUTH without service= or protocol=; refused");
            return Ok(proto::encode_fail(id, None, Some(FAIL_REASON), false));
        };
        // What a client says about the end user (`rip`, `secured`, `no-penalty`) is
        // believed only from a trusted peer; any other TCP client is itself the source,
        // for throttling, trusted networks and app-password network limits alike.
        let trusted = self.peer.trusted;
        let request = RequestInfo {
            service,
            rip: if trusted {
                auth.client.rip.or(self.peer.ip)
            } else {
                self.peer.ip
            },
            secured: auth.secured && trusted,
            mechanism,
            no_penalty: auth.no_penalty && trusted,
            login: None,
        };
        let initial = auth.take_initial_response(self.client_minor.unwrap_or(0));
        let (exchange, step) = Exchange::start(mechanism, initial);
        self.step(id, exchange, request, step)
    }

    fn cont(&mut self, id: u32, data: Vec<u8>) -> Result<Vec<u8>, ProtocolError> {
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
                Err(ProtocolError::ContWhileDeciding(id))
            }
            None => Err(ProtocolError::ContUnknown(id)),
        }
    }

    fn step(
        &mut self,
        id: u32,
        exchange: Exchange,
        request: RequestInfo,
        step: Step,
    ) -> Result<Vec<u8>, ProtocolError> {
        match step {
            Step::Challenge(challenge) => {
                self.pending
                    .insert(id, Pending::Exchanging { exchange, request });
                Ok(proto::encode_cont(id, &challenge))
            }
            Step::Fail(SaslError::TokenRefused) => {
                // The decision was logged when the token was refused; this only ends it.
                Ok(proto::encode_fail(
                    id,
                    request.login.as_deref(),
                    Some(FAIL_REASON),
                    false,
                ))
            }
            Step::Fail(e) => {
                tracing::info!(peer = %self.peer.description, id, service = %request.service, error = %e, "SASL exchange failed");
                // The same fields as a decision's audit line, so fail2ban counts a source
                // that sends garbage like one that guesses; no name could be read.
                let rip = request
                    .rip
                    .map_or_else(|| "-".to_string(), |ip| ip.to_string());
                tracing::warn!(target: "mailauthd::audit", service = request.service.as_str(), user = "", rip, mech = request.mechanism.name(), outcome = "fail", reason = e.code(), "auth");
                Ok(proto::encode_fail(id, None, Some(FAIL_REASON), false))
            }
            Step::Done { authcid, password } => {
                self.decide(id, request, authcid, password, SecretKind::Password)
            }
            // Without `a=`, the token alone says whose it is; the name given, if any,
            // must then match it.
            Step::Token { authzid, token } => self.decide(
                id,
                request,
                authzid.unwrap_or_default(),
                token,
                SecretKind::BearerToken,
            ),
        }
    }

    /// The error challenge for a refused token, and the request back to waiting for the
    /// client's answer.
    fn token_error(&mut self, id: u32, request: RequestInfo) -> Vec<u8> {
        let challenge = match (&self.service.token_errors, request.mechanism) {
            (Some([bearer, _]), Mechanism::OAuthBearer) => bearer.clone(),
            (Some([_, xoauth2]), Mechanism::XOAuth2) => xoauth2.clone(),
            // Only token requests are refused this way, and only when tokens are
            // accepted; anything else still gets an (empty) error challenge.
            _ => Vec::new(),
        };
        let (exchange, step) = Exchange::after_refused_token(request.mechanism, challenge);
        let Step::Challenge(challenge) = step else {
            return proto::encode_fail(id, request.login.as_deref(), Some(FAIL_REASON), false);
        };
        self.pending
            .insert(id, Pending::Exchanging { exchange, request });
        proto::encode_cont(id, &challenge)
    }

    /// Hands a finished exchange's credentials to the decision core on a task of its own.
    fn decide(
        &mut self,
        id: u32,
        request: RequestInfo,
        authcid: String,
        password: sasl::SaslPassword,
        kind: SecretKind,
    ) -> Result<Vec<u8>, ProtocolError> {
        let secret = Secret::new(password.into_vec());
        let auth = self.service.auth.clone();
        let tx = self.tx.clone();
        let smtp = auth.protocol_of(&request.service) == Some(Protocol::Smtp);
        // Requests are decided at once but charged to the throttle in the order
        // they arrived: pipelined guesses cannot overtake each other, so the
        // last of them is never among the first few checked.
        let Ok(queued) = self.service.queued.clone().try_acquire_owned() else {
            tracing::warn!(peer = %self.peer.description, id, "too many requests waiting; temporary failure");
            crate::metrics::auth_overloaded();
            if smtp {
                self.close_now = true;
                return Ok(Vec::new());
            }
            return Ok(temp_fail_line(id, &authcid));
        };
        let deciding = self.service.deciding.clone();
        let held_back = self.service.held_back.clone();
        let before = self.last_admitted.take();
        let baton = Baton(Arc::new(Notify::new()));
        self.last_admitted = Some(baton.0.clone());
        let peer = self.peer.description.clone();
        let task = tokio::spawn(async move {
            let _queued = queued;
            if let Some(before) = before {
                before.notified().await;
            }
            let Ok(permit) = deciding.try_acquire_owned() else {
                // Dropping the baton lets the next request on this connection
                // take its turn.
                drop(baton);
                tracing::warn!(peer = %peer, id, "too many requests being decided; temporary failure");
                crate::metrics::auth_overloaded();
                let _ = tx.send(temp_fail_reply(id, &authcid, smtp)).await;
                return;
            };
            let outcome = auth
                .authenticate(&AuthRequest {
                    login: &authcid,
                    secret: &secret,
                    kind,
                    service: &request.service,
                    remote_ip: request.rip,
                    secured: request.secured,
                    mechanism: Some(request.mechanism.name()),
                    no_penalty: request.no_penalty,
                    admitted: Some(&baton.0),
                })
                .await;
            drop(baton);
            drop(permit);
            if outcome == Outcome::Fail(FailReason::Throttled) {
                // Held back like a delayed attempt, outside the deciding cap, so
                // a blocked source cannot crowd everyone else out of it.
                if let Ok(_held) = held_back.try_acquire_owned() {
                    tokio::time::sleep(auth.refusal_delay()).await;
                }
            }
            let reply = match outcome {
                Outcome::Ok(success) => {
                    Reply::Line(id, proto::encode_ok(id, &success.mailbox, &[]))
                }
                Outcome::Fail(_) if kind == SecretKind::BearerToken => Reply::TokenRefused(
                    id,
                    RequestInfo {
                        login: Some(authcid).filter(|l| !l.is_empty()),
                        ..request
                    },
                ),
                Outcome::Fail(_) => Reply::Line(
                    id,
                    proto::encode_fail(id, Some(&authcid), Some(FAIL_REASON), false),
                ),
                Outcome::TempFail(_) => temp_fail_reply(id, &authcid, smtp),
            };
            let _ = tx.send(reply).await;
        });
        self.pending
            .insert(id, Pending::Deciding(task.abort_handle()));
        Ok(Vec::new())
    }
}
