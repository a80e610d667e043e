//! The front doors: listeners and per-connection protocol drivers. Only this module and
//! `web` touch sockets; everything they decide comes from the decision core.
//!
//! [`listener`] binds and accepts, [`connections`] caps a listener and picks whom to close
//! when it is full, and [`line_conn`] is the buffer, framing, timers and error every
//! driver shares. The drivers (`auth_conn`, `userdb_conn`, `policy_conn`,
//! `control_conn`) only translate between their protocol and a call.

pub mod auth_conn;
pub mod connections;
pub mod control_conn;
pub mod line_conn;
pub mod listener;
pub mod policy_conn;
pub mod settings;
pub mod userdb_conn;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::activation::Activated;
use crate::auth::throttle::Throttle;
use crate::auth::Authenticator;
use crate::clock::SystemClock;
use crate::policy::{PolicyService, SendCounters};
use crate::store::Store;
use connections::{Activity, Connections};
use listener::{bind, serve, ListenError, ListenerConfig, Peer, Stream};
use settings::DoorSettings;

/// All listeners of a running daemon, bound before readiness is announced.
pub struct FrontDoors {
    tracker: TaskTracker,
    shutdown: CancellationToken,
    pub endpoints: Vec<String>,
}

impl FrontDoors {
    pub fn start(
        config: &DoorSettings<'_>,
        auth: Arc<Authenticator>,
        store: Arc<dyn Store>,
        throttle: Arc<Throttle>,
        send_counters: Arc<dyn SendCounters>,
        activated: &mut Activated,
    ) -> Result<Self, ListenError> {
        let mut doors = FrontDoors {
            tracker: TaskTracker::new(),
            shutdown: CancellationToken::new(),
            endpoints: Vec::new(),
        };

        let auth_cfg = &config.auth_socket;
        let auth = Arc::new(auth_conn::AuthService::new(auth, auth_cfg.idle_timeout));
        doors.spawn_door("auth", auth_cfg, activated, move |s, p, a| {
            auth_conn::serve_connection(s, p, auth.clone(), a)
        })?;

        let userdb_cfg = &config.userdb_socket;
        let userdb = Arc::new(userdb_conn::UserdbService::new(
            store.clone(),
            userdb_cfg.idle_timeout,
        ));
        doors.spawn_door("userdb", userdb_cfg, activated, move |s, p, a| {
            userdb_conn::serve_connection(s, p, userdb.clone(), a)
        })?;

        let policy = Arc::new(PolicyService::with_counters(
            store,
            Arc::new(SystemClock),
            config.policy.clone(),
            send_counters,
        ));
        doors.spawn_door("policy", config.policy_socket, activated, move |s, p, a| {
            policy_conn::serve(s, p, policy.clone(), a)
        })?;

        let control_cfg = &config.control_socket;
        let control = Arc::new(control_conn::ControlService {
            throttle,
            clock: Arc::new(SystemClock),
            idle_timeout: control_cfg.idle_timeout,
        });
        doors.spawn_door("control", control_cfg, activated, move |s, p, a| {
            control_conn::serve_connection(s, p, control.clone(), a)
        })?;

        Ok(doors)
    }

    /// Binds one door's listener and starts an accept loop per bound socket, all sharing
    /// the listener's connection cap; `serve_connection` drives each accepted connection.
    fn spawn_door<H, F>(
        &mut self,
        door: &str,
        config: &ListenerConfig,
        activated: &mut Activated,
        serve_connection: H,
    ) -> Result<(), ListenError>
    where
        H: Fn(Box<dyn Stream>, Peer, Activity) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        let config = Arc::new(config.clone());
        let bound = bind(&config, activated)?;
        self.endpoints
            .extend(bound.iter().map(|b| format!("{door} {}", b.describe())));
        let connections = Connections::new(config.name, config.max_connections);
        for bound in bound {
            self.tracker.spawn(serve(
                bound,
                config.clone(),
                connections.clone(),
                self.tracker.clone(),
                self.shutdown.clone(),
                serve_connection.clone(),
            ));
        }
        Ok(())
    }

    /// Stops accepting, lets open requests finish within `grace`, then drops the rest.
    pub async fn drain(self, grace: Duration) {
        self.shutdown.cancel();
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("some connections were still busy after {grace:?}; closing them");
        }
    }
}
