//! Listening sockets: unix (owner, group, mode) or TCP (client allow-list), the accept
//! loop with a connection cap, and who the peer is.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::connections::{Activity, Connections};
use crate::activation::Activated;

/// Where a listener listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl Endpoint {
    /// `unix:/path`, `/path`, `tcp:127.0.0.1:3659`, `127.0.0.1:3659` or `[::1]:3659`.
    pub fn parse(s: &str) -> Result<Self, EndpointError> {
        let s = s.trim();
        if let Some(path) = s.strip_prefix("unix:") {
            return Ok(Endpoint::Unix(PathBuf::from(path)));
        }
        if s.starts_with('/') || s.starts_with("./") {
            return Ok(Endpoint::Unix(PathBuf::from(s)));
        }
        let addr = s.strip_prefix("tcp:").unwrap_or(s);
        addr.parse::<SocketAddr>()
            .map(Endpoint::Tcp)
            .map_err(|_| EndpointError(s.to_string()))
    }
}

/// A listen address that is neither a unix path nor a TCP address.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("{0:?} is neither unix:/path nor tcp:ADDRESS:PORT")]
pub struct EndpointError(String);

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
            Endpoint::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

/// One listener section of the config, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerConfig {
    pub name: &'static str,
    pub endpoints: Vec<Endpoint>,
    pub owner: Option<String>,
    pub group: Option<String>,
    pub mode: u32,
    /// TCP clients allowed to connect.
    pub allow: Vec<IpNet>,
    /// TCP clients whose `no-penalty` and client-address claims are believed. Unix peers
    /// are trusted: the socket's mode already decides who can connect.
    pub trusted: Vec<IpNet>,
    pub max_connections: usize,
    pub idle_timeout: Duration,
}

#[derive(Debug, Error)]
pub enum ListenError {
    #[error("{endpoint}: {message}")]
    Bind { endpoint: String, message: String },
}

fn bind_err(endpoint: &Endpoint, message: impl Into<String>) -> ListenError {
    ListenError::Bind {
        endpoint: endpoint.to_string(),
        message: message.into(),
    }
}

/// A socket's configured owner or group that cannot be used.
#[derive(Debug, Error)]
pub enum OwnerError {
    #[error("no such {kind} {name:?}")]
    NotFound { kind: &'static str, name: String },
    #[error("cannot look up {kind} {name:?}: {source}")]
    Lookup {
        kind: &'static str,
        name: String,
        source: nix::Error,
    },
}

/// Who connected, as far as the connection handlers need to know.
#[derive(Clone, Debug)]
pub struct Peer {
    pub description: String,
    pub ip: Option<IpAddr>,
    pub trusted: bool,
    /// Root or the daemon's own user, over a unix socket: may use the control socket.
    pub control_allowed: bool,
}

pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for T {}

pub enum Bound {
    /// The path is removed at stop unless systemd made the socket (`None`).
    Unix(UnixListener, PathBuf, Option<PathBuf>),
    Tcp(TcpListener),
}

impl Bound {
    pub fn describe(&self) -> String {
        match self {
            Bound::Unix(_, path, _) => format!("unix:{}", path.display()),
            Bound::Tcp(l) => l
                .local_addr()
                .map(|a| format!("tcp:{a}"))
                .unwrap_or_else(|_| "tcp:?".into()),
        }
    }
}

/// Binds every endpoint of a listener, or adopts the sockets systemd passed under the
/// listener's name; refuses clearly when a path is in use or a permission is wrong.
pub fn bind(config: &ListenerConfig, activated: &mut Activated) -> Result<Vec<Bound>, ListenError> {
    // `auth_socket` takes the socket named `auth`, and so on.
    let passed = activated.take(config.name.trim_end_matches("_socket"));
    if !passed.is_empty() {
        tracing::info!(
            listener = config.name,
            sockets = passed.len(),
            "using the sockets systemd passed; the configured endpoints are not bound"
        );
        return passed.into_iter().map(|fd| adopt(config, fd)).collect();
    }
    config
        .endpoints
        .iter()
        .map(|e| bind_one(config, e))
        .collect()
}

/// A listening socket from systemd becomes a unix or TCP listener, whichever it is.
fn adopt(config: &ListenerConfig, fd: OwnedFd) -> Result<Bound, ListenError> {
    let err = |message: String| ListenError::Bind {
        endpoint: format!("{} socket from systemd", config.name),
        message,
    };
    let socket = socket2::Socket::from(fd);
    if !socket.is_listener().map_err(|e| err(e.to_string()))? {
        return Err(err(
            "is not a listening stream socket (use ListenStream= and Accept=no)".into(),
        ));
    }
    let local = socket.local_addr().map_err(|e| err(e.to_string()))?;
    socket
        .set_nonblocking(true)
        .map_err(|e| err(e.to_string()))?;
    if local.is_unix() {
        let path = local
            .as_pathname()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from(format!("@{}", config.name)));
        let std: std::os::unix::net::UnixListener = socket.into();
        let listener = UnixListener::from_std(std).map_err(|e| err(e.to_string()))?;
        Ok(Bound::Unix(listener, path, None))
    } else {
        let std: std::net::TcpListener = socket.into();
        let listener = TcpListener::from_std(std).map_err(|e| err(e.to_string()))?;
        Ok(Bound::Tcp(listener))
    }
}

fn bind_one(config: &ListenerConfig, endpoint: &Endpoint) -> Result<Bound, ListenError> {
    match endpoint {
        Endpoint::Tcp(addr) => {
            let std =
                std::net::TcpListener::bind(addr).map_err(|e| bind_err(endpoint, e.to_string()))?;
            std.set_nonblocking(true)
                .map_err(|e| bind_err(endpoint, e.to_string()))?;
            let listener =
                TcpListener::from_std(std).map_err(|e| bind_err(endpoint, e.to_string()))?;
            Ok(Bound::Tcp(listener))
        }
        Endpoint::Unix(path) => bind_unix(config, endpoint, path),
    }
}

/// Binds, sets mode and ownership, and only then listens, so no client can connect
/// through a socket with the wrong permissions (and no process-wide umask change).
fn bind_unix(
    config: &ListenerConfig,
    endpoint: &Endpoint,
    path: &Path,
) -> Result<Bound, ListenError> {
    use socket2::{Domain, SockAddr, Socket, Type};
    remove_stale_socket(endpoint, path)?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.is_dir() {
            std::fs::create_dir_all(parent).map_err(|e| {
                bind_err(
                    endpoint,
                    format!("cannot create folder {}: {e}", parent.display()),
                )
            })?;
        }
    }
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None)
        .map_err(|e| bind_err(endpoint, e.to_string()))?;
    let addr = SockAddr::unix(path).map_err(|e| bind_err(endpoint, e.to_string()))?;
    socket
        .bind(&addr)
        .map_err(|e| bind_err(endpoint, e.to_string()))?;
    let cleanup = |message: String| {
        let _ = std::fs::remove_file(path);
        bind_err(endpoint, message)
    };
    let owner_err = |e: OwnerError| cleanup(e.to_string());
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(config.mode))
        .map_err(|e| cleanup(format!("cannot set mode {:o}: {e}", config.mode)))?;
    let uid = match &config.owner {
        Some(name) => Some(lookup_user(name).map_err(owner_err)?),
        None => None,
    };
    let gid = match &config.group {
        Some(name) => Some(lookup_group(name).map_err(owner_err)?),
        None => None,
    };
    if uid.is_some() || gid.is_some() {
        std::os::unix::fs::chown(path, uid.map(|u| u.as_raw()), gid.map(|g| g.as_raw())).map_err(|e| {
            cleanup(format!(
                "cannot give the socket to {}:{}: {e} (the daemon needs to run as root or be in that group)",
                config.owner.as_deref().unwrap_or("-"),
                config.group.as_deref().unwrap_or("-")
            ))
        })?;
    }
    socket.listen(1024).map_err(|e| cleanup(e.to_string()))?;
    socket
        .set_nonblocking(true)
        .map_err(|e| cleanup(e.to_string()))?;
    let std: std::os::unix::net::UnixListener = socket.into();
    let listener = UnixListener::from_std(std).map_err(|e| cleanup(e.to_string()))?;
    Ok(Bound::Unix(
        listener,
        path.to_path_buf(),
        Some(path.to_path_buf()),
    ))
}

/// A socket file left by a crashed daemon is removed; one that still answers belongs to
/// a running daemon and is an error.
fn remove_stale_socket(endpoint: &Endpoint, path: &Path) -> Result<(), ListenError> {
    use std::os::unix::fs::FileTypeExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(bind_err(
            endpoint,
            "path exists and is not a socket; refusing to replace it",
        ));
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(bind_err(
            endpoint,
            "socket is in use by a running process (another mailauthd?)",
        ));
    }
    std::fs::remove_file(path)
        .map_err(|e| bind_err(endpoint, format!("cannot remove stale socket: {e}")))
}

fn lookup_user(name: &str) -> Result<nix::unistd::Uid, OwnerError> {
    found("user", name, nix::unistd::User::from_name(name)).map(|u| u.uid)
}

fn lookup_group(name: &str) -> Result<nix::unistd::Gid, OwnerError> {
    found("group", name, nix::unistd::Group::from_name(name)).map(|g| g.gid)
}

fn found<T>(
    kind: &'static str,
    name: &str,
    entry: nix::Result<Option<T>>,
) -> Result<T, OwnerError> {
    match entry {
        Ok(Some(entry)) => Ok(entry),
        Ok(None) => Err(OwnerError::NotFound {
            kind,
            name: name.to_string(),
        }),
        Err(source) => Err(OwnerError::Lookup {
            kind,
            name: name.to_string(),
            source,
        }),
    }
}

/// Accepts until `shutdown`, with the listener's connections (shared by its endpoints)
/// capped by `connections`, handing each connection to `handle` on a tracked task.
/// Accept errors (no descriptors left, for one) are counted and backed off, so the loop
/// never spins; the other listeners keep their own room.
pub async fn serve<H, F>(
    bound: Bound,
    config: Arc<ListenerConfig>,
    connections: Arc<Connections>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    handle: H,
) where
    H: Fn(Box<dyn Stream>, Peer, Activity) -> F + Send + Sync + 'static,
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let name = config.name;
    let mut backoff = AcceptBackoff::default();
    loop {
        // Accept only when the connection can be served: with room, or an idle one to
        // close. Otherwise excess clients wait in the kernel's backlog.
        tokio::select! {
            _ = shutdown.cancelled() => break,
            () = connections.admissible() => {}
        }
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = accept(&bound, &config) => a,
        };
        let (stream, peer) = match accepted {
            Ok(Some(pair)) => pair,
            Ok(None) => continue,
            Err(e) => {
                crate::metrics::accept_failed(name);
                let pause = backoff.failed();
                tracing::warn!(listener = name, error = %e, pause = ?pause, "accept failed; pausing this listener");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    () = tokio::time::sleep(pause) => {}
                }
                continue;
            }
        };
        backoff.succeeded();
        let activity = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = connections.admit(&shutdown) => a,
        };
        let fut = handle(stream, peer, activity);
        tracker.spawn(fut);
    }
    if let Bound::Unix(_, _, Some(path)) = &bound {
        let _ = std::fs::remove_file(path);
    }
}

/// Pauses after failed accepts: 10 ms doubling to 1 s, back to the start after a success.
#[derive(Default)]
struct AcceptBackoff {
    failures: u32,
}

impl AcceptBackoff {
    const FIRST: Duration = Duration::from_millis(10);
    const MAX: Duration = Duration::from_secs(1);

    fn failed(&mut self) -> Duration {
        let pause = Self::FIRST
            .saturating_mul(1u32 << self.failures.min(10))
            .min(Self::MAX);
        self.failures = self.failures.saturating_add(1);
        pause
    }

    fn succeeded(&mut self) {
        self.failures = 0;
    }
}

async fn accept(
    bound: &Bound,
    config: &ListenerConfig,
) -> std::io::Result<Option<(Box<dyn Stream>, Peer)>> {
    match bound {
        Bound::Unix(listener, path, _) => {
            let (stream, _) = listener.accept().await?;
            let cred = stream.peer_cred().ok();
            let description = match &cred {
                Some(c) => format!(
                    "unix:{} pid={} uid={}",
                    path.display(),
                    c.pid().unwrap_or(0),
                    c.uid()
                ),
                None => format!("unix:{}", path.display()),
            };
            let own_uid = nix::unistd::Uid::effective().as_raw();
            let control_allowed = cred.is_some_and(|c| c.uid() == 0 || c.uid() == own_uid);
            let peer = Peer {
                description,
                ip: None,
                trusted: true,
                control_allowed,
            };
            Ok(Some((Box::new(stream), peer)))
        }
        Bound::Tcp(listener) => {
            let (stream, addr) = listener.accept().await?;
            let ip = crate::audit::canonical_ip(addr.ip());
            if !config.allow.iter().any(|n| n.contains(&ip)) {
                tracing::warn!(listener = config.name, peer = %addr, "connection from a client outside the allow list; closed");
                return Ok(None);
            }
            let _ = stream.set_nodelay(true);
            let trusted = config.trusted.iter().any(|n| n.contains(&ip));
            Ok(Some((
                Box::new(stream),
                Peer {
                    description: format!("tcp:{addr}"),
                    ip: Some(ip),
                    trusted,
                    control_allowed: false,
                },
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        assert_eq!(
            Endpoint::parse("unix:/run/x").unwrap(),
            Endpoint::Unix("/run/x".into())
        );
        assert_eq!(
            Endpoint::parse("/run/x").unwrap(),
            Endpoint::Unix("/run/x".into())
        );
        assert_eq!(
            Endpoint::parse("127.0.0.1:3659").unwrap(),
            Endpoint::Tcp("127.0.0.1:3659".parse().unwrap())
        );
        assert_eq!(
            Endpoint::parse("tcp:[::1]:3659").unwrap(),
            Endpoint::Tcp("[::1]:3659".parse().unwrap())
        );
        assert_eq!(
            Endpoint::parse("localhost").unwrap_err().to_string(),
            "\"localhost\" is neither unix:/path nor tcp:ADDRESS:PORT"
        );
    }

    #[test]
    fn failed_accepts_back_off_up_to_a_second_and_reset() {
        let mut b = AcceptBackoff::default();
        let pauses: Vec<Duration> = (0..10).map(|_| b.failed()).collect();
        assert_eq!(pauses[0], Duration::from_millis(10));
        assert_eq!(pauses[1], Duration::from_millis(20));
        assert!(pauses.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(pauses[9], Duration::from_secs(1));
        b.succeeded();
        assert_eq!(b.failed(), Duration::from_millis(10));
    }

    #[test]
    fn mapped_addresses_match_as_ipv4() {
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(
            crate::audit::canonical_ip(mapped),
            "192.0.2.1".parse::<IpAddr>().unwrap()
        );
    }
}
