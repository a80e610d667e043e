//! The front doors: listeners and per-connection protocol drivers. Only this module and
//! `web` touch sockets; everything they decide comes from the decision core.

pub mod auth_conn;
pub mod connections;
pub mod control_conn;
pub mod listener;
pub mod policy_conn;
pub mod settings;
pub mod userdb_conn;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::activation::Activated;
use crate::auth::Authenticator;
use crate::store::Store;
use connections::Connections;
use listener::{bind, serve, ListenError};
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
        throttle: Arc<crate::auth::throttle::Throttle>,
        activated: &mut Activated,
    ) -> Result<Self, ListenError> {
        let tracker = TaskTracker::new();
        let shutdown = CancellationToken::new();
        let mut endpoints = Vec::new();

        let auth_cfg = Arc::new(config.auth_socket.clone());
        let auth_service = Arc::new(auth_conn::AuthService::new(auth, auth_cfg.idle_timeout));
        let bound_auth = bind(&auth_cfg, activated)?;
        endpoints.extend(bound_auth.iter().map(|b| format!("auth {}", b.describe())));
        let auth_conns = Connections::new(auth_cfg.name, auth_cfg.max_connections);
        for bound in bound_auth {
            let service = auth_service.clone();
            tracker.spawn(serve(
                bound,
                auth_cfg.clone(),
                auth_conns.clone(),
                tracker.clone(),
                shutdown.clone(),
                move |s, p, activity| auth_conn::serve_connection(s, p, service.clone(), activity),
            ));
        }

        let userdb_cfg = Arc::new(config.userdb_socket.clone());
        let userdb_service = Arc::new(userdb_conn::UserdbService::new(
            store.clone(),
            userdb_cfg.idle_timeout,
        ));
        let bound_userdb = bind(&userdb_cfg, activated)?;
        endpoints.extend(
            bound_userdb
                .iter()
                .map(|b| format!("userdb {}", b.describe())),
        );
        let userdb_conns = Connections::new(userdb_cfg.name, userdb_cfg.max_connections);
        for bound in bound_userdb {
            let service = userdb_service.clone();
            tracker.spawn(serve(
                bound,
                userdb_cfg.clone(),
                userdb_conns.clone(),
                tracker.clone(),
                shutdown.clone(),
                move |s, p, activity| {
                    userdb_conn::serve_connection(s, p, service.clone(), activity)
                },
            ));
        }

        let policy_cfg = Arc::new(config.policy_socket.clone());
        let policy_service = Arc::new(crate::policy::PolicyService::new(
            store.clone(),
            Arc::new(crate::clock::SystemClock),
            config.policy.clone(),
        ));
        let bound_policy = bind(&policy_cfg, activated)?;
        endpoints.extend(
            bound_policy
                .iter()
                .map(|b| format!("policy {}", b.describe())),
        );
        let policy_conns = Connections::new(policy_cfg.name, policy_cfg.max_connections);
        for bound in bound_policy {
            let service = policy_service.clone();
            tracker.spawn(serve(bound, policy_cfg.clone(), policy_conns.clone(), tracker.clone(), shutdown.clone(), move |s, p, activity| {
                let service = service.clone();
                async move {
                    use tracing::Instrument;
                    let span = tracing::info_span!("policy", peer = %p.description);
                    if let Err(e) = policy_conn::serve_connection(s, service, activity).instrument(span).await {
                        tracing::debug!(peer = %p.description, error = %e, "policy connection ended");
                    }
                }
            }));
        }

        let control_cfg = Arc::new(config.control_socket.clone());
        let control = Arc::new(control_conn::ControlService {
            throttle,
            clock: Arc::new(crate::clock::SystemClock),
        });
        let bound_control = bind(&control_cfg, activated)?;
        endpoints.extend(
            bound_control
                .iter()
                .map(|b| format!("control {}", b.describe())),
        );
        let control_conns = Connections::new(control_cfg.name, control_cfg.max_connections);
        for bound in bound_control {
            let service = control.clone();
            let idle = control_cfg.idle_timeout;
            tracker.spawn(serve(
                bound,
                control_cfg.clone(),
                control_conns.clone(),
                tracker.clone(),
                shutdown.clone(),
                move |s, p, activity| {
                    control_conn::serve_connection(s, p, service.clone(), idle, activity)
                },
            ));
        }

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
