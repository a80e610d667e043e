//! The front doors: listeners and per-connection protocol drivers. Only this module and
//! `web` touch sockets; everything they decide comes from the decision core.

pub mod auth_conn;
pub mod control_conn;
pub mod listener;
pub mod policy_conn;
pub mod userdb_conn;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Authenticator;
use crate::config::Config;
use crate::store::Store;
use listener::{bind, serve, ListenError};

/// All listeners of a running daemon, bound before readiness is announced.
pub struct FrontDoors {
    tracker: TaskTracker,
    shutdown: CancellationToken,
    pub endpoints: Vec<String>,
}

impl FrontDoors {
    pub fn start(
        config: &Config,
        auth: Arc<Authenticator>,
        store: Arc<dyn Store>,
        throttle: Arc<crate::auth::throttle::Throttle>,
    ) -> Result<Self, ListenError> {
        let tracker = TaskTracker::new();
        let shutdown = CancellationToken::new();
        let mut endpoints = Vec::new();

        let auth_cfg = Arc::new(config.auth_socket.clone());
        let auth_service = Arc::new(auth_conn::AuthService::new(auth, auth_cfg.idle_timeout));
        for bound in bind(&auth_cfg)? {
            let service = auth_service.clone();
            tracker.spawn(serve(
                bound,
                auth_cfg.clone(),
                tracker.clone(),
                shutdown.clone(),
                move |s, p, stop| auth_conn::serve_connection(s, p, service.clone(), stop),
            ));
        }
        endpoints.extend(auth_cfg.endpoints.iter().map(|e| format!("auth {e}")));

        let userdb_cfg = Arc::new(config.userdb_socket.clone());
        let userdb_service = Arc::new(userdb_conn::UserdbService::new(
            store.clone(),
            userdb_cfg.idle_timeout,
        ));
        for bound in bind(&userdb_cfg)? {
            let service = userdb_service.clone();
            tracker.spawn(serve(
                bound,
                userdb_cfg.clone(),
                tracker.clone(),
                shutdown.clone(),
                move |s, p, stop| userdb_conn::serve_connection(s, p, service.clone(), stop),
            ));
        }
        endpoints.extend(userdb_cfg.endpoints.iter().map(|e| format!("userdb {e}")));

        let policy_cfg = Arc::new(config.policy_socket.clone());
        let policy_service = Arc::new(crate::policy::PolicyService::new(
            store.clone(),
            Arc::new(crate::clock::SystemClock),
            config.policy.clone(),
        ));
        for bound in bind(&policy_cfg)? {
            let service = policy_service.clone();
            tracker.spawn(serve(bound, policy_cfg.clone(), tracker.clone(), shutdown.clone(), move |s, p, stop| {
                let service = service.clone();
                async move {
                    use tracing::Instrument;
                    let span = tracing::info_span!("policy", peer = %p.description);
                    if let Err(e) = policy_conn::serve_connection(s, service, stop).instrument(span).await {
                        tracing::debug!(peer = %p.description, error = %e, "policy connection ended");
                    }
                }
            }));
        }
        endpoints.extend(policy_cfg.endpoints.iter().map(|e| format!("policy {e}")));

        let control_cfg = Arc::new(config.control_socket.clone());
        let control = Arc::new(control_conn::ControlService {
            throttle,
            clock: Arc::new(crate::clock::SystemClock),
        });
        for bound in bind(&control_cfg)? {
            let service = control.clone();
            tracker.spawn(serve(
                bound,
                control_cfg.clone(),
                tracker.clone(),
                shutdown.clone(),
                move |s, p, _stop| control_conn::serve_connection(s, p, service.clone()),
            ));
        }
        endpoints.extend(control_cfg.endpoints.iter().map(|e| format!("control {e}")));

        Ok(FrontDoors {
            tracker,
            shutdown,
            endpoints,
        })
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
