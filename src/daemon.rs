//! `mailauthd serve`: start the core and the front doors, tell systemd, reload on SIGHUP,
//! drain and flush on SIGTERM.

use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::signal::unix::{signal, SignalKind};

use crate::activation::{Activated, ActivationError};
use crate::config::{self, Config, TooFewDescriptors};
use crate::logging::LogControl;
use crate::runtime::{Core, StartError};
use crate::server::listener::ListenError;
use crate::server::FrontDoors;
use crate::systemd;
use crate::web::{WebError, WebServer};

const DRAIN_GRACE: Duration = Duration::from_secs(10);

/// Why the daemon did not start; each is logged where it happens.
#[derive(Debug, Error)]
pub enum ServeError {
    #[error(transparent)]
    Descriptors(#[from] TooFewDescriptors),
    #[error("cannot install signal handlers")]
    Signals,
    #[error(transparent)]
    Activation(#[from] ActivationError),
    #[error(transparent)]
    Start(#[from] StartError),
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error(transparent)]
    Http(#[from] WebError),
    #[error("systemd passed sockets named {0}, but their listeners are not configured")]
    UnclaimedSockets(String),
}

impl ServeError {
    /// Worth trying again as it is (the database did not answer), as opposed to a
    /// configuration or environment that must change first.
    pub fn is_temporary(&self) -> bool {
        matches!(self, ServeError::Start(e) if e.is_temporary())
    }
}

pub async fn serve(config: Config, log: LogControl) -> Result<(), ServeError> {
    let limit = raise_open_file_limit();
    if let Some(limit) = limit {
        if let Err(shortage) = config.check_descriptors(limit) {
            tracing::error!("cannot start: {shortage}");
            return Err(shortage.into());
        }
    }
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        return Err(ServeError::Signals);
    };
    let mut activated = Activated::from_environment().map_err(|e| {
        tracing::error!(error = %e, "cannot take the sockets systemd passed");
        e
    })?;
    let core = Core::start(&config).await.map_err(|e| {
        tracing::error!(error = %e, "cannot start");
        e
    })?;
    let doors = match FrontDoors::start(
        &config.doors(),
        core.auth.clone(),
        core.store.clone(),
        core.throttle.clone(),
        core.send_counters.clone(),
        &mut activated,
    ) {
        Ok(doors) => doors,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen");
            core.shutdown().await;
            return Err(e.into());
        }
    };
    let mut http = Vec::new();
    let web = start_web_if_configured(
        &config,
        core.store.clone(),
        core.auth.clone(),
        &mut activated,
    )
    .await;
    let metrics = match web {
        Ok(web) => {
            http.extend(web);
            crate::web::metrics::start_if_configured(
                &config.metrics,
                core.auth.clone(),
                core.store.clone(),
                &mut activated,
            )
            .await
        }
        Err(e) => Err(e),
    };
    match metrics {
        Ok(metrics) => http.extend(metrics),
        Err(e) => {
            tracing::error!(error = %e, "cannot start an HTTP listener");
            stop_all(doors, http, core).await;
            return Err(e.into());
        }
    }
    if !activated.is_empty() {
        let names = activated.unclaimed().join(", ");
        tracing::error!(sockets = %names, "systemd passed sockets for listeners that are not configured");
        stop_all(doors, http, core).await;
        return Err(ServeError::UnclaimedSockets(names));
    }
    let mut endpoints = doors.endpoints.clone();
    endpoints.extend(http.iter().map(|s| {
        let what = if s.state.is_some() { "web" } else { "metrics" };
        format!("{what} tcp:{}", s.local_addr)
    }));
    let listening = endpoints.join(", ");
    tracing::info!(store = %config.store.url, listeners = %listening, hash_workers = config.hash_workers, "mailauthd ready");
    systemd::ready(&format!("serving {listening}"));
    systemd::spawn_watchdog();
    let liveness = start_liveness(&config, &core);

    let mut current = config;
    let mut trim = tokio::time::interval(std::time::Duration::from_secs(5));
    trim.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = trim.tick() => {
                core.auth.pool().release_idle();
                crate::memory::give_back_freed();
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                systemd::reloading();
                let refused;
                (current, refused) = reload(current, &log, &Live { core: &core, http: &http });
                if refused {
                    systemd::ready(&format!("serving {listening}; last reload failed: config has errors (see log)"));
                } else {
                    systemd::ready(&format!("serving {listening}"));
                }
            }
        }
    }
    tracing::info!("stopping: draining connections");
    systemd::stopping("draining connections");
    if let Some((stop, task)) = liveness {
        stop.cancel();
        let _ = task.await;
    }
    stop_all(doors, http, core).await;
    tracing::info!("stopped");
    Ok(())
}

/// Every connection is a file: raise the soft limit to the hard one, so a daemon started
/// by hand (soft limit often 1024) can hold as many connections as under systemd.
/// Returns the limit now in force, if it can be read.
fn raise_open_file_limit() -> Option<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => Some(hard),
            Err(e) => {
                tracing::warn!(soft, hard, error = %e, "cannot raise the open-file limit");
                Some(soft)
            }
        },
        Ok((soft, _)) => Some(soft),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the open-file limit");
            None
        }
    }
}

/// Drains the front doors and HTTP listeners, then flushes last-use records.
/// The periodic identity check (`liveness::periodic`), when `[oidc]` is configured and
/// `liveness_check_hours` is not 0. Its settings are read at start: a reload that changes
/// them takes effect at the next restart.
fn start_liveness(
    config: &Config,
    core: &Core,
) -> Option<(
    tokio_util::sync::CancellationToken,
    tokio::task::JoinHandle<()>,
)> {
    let settings = config.oidc.clone()?;
    let interval = settings.liveness.interval?;
    let clock: Arc<dyn crate::clock::Clock> = Arc::new(crate::clock::SystemClock);
    let request_timeout = settings.timeout * 3;
    let liveness_settings = settings.liveness.clone();
    let rp = match crate::oidc::RelyingParty::new(settings, clock.clone()) {
        Ok(rp) => rp,
        Err(e) => {
            tracing::error!(error = %e, "identity check off: cannot set up the relying party");
            return None;
        }
    };
    let liveness = crate::liveness::Liveness {
        store: core.store.clone(),
        rp: Arc::new(rp),
        key: Arc::new(crate::oidc::sealed::SealingKey::derive(core.auth.key())),
        clock,
        settings: liveness_settings,
        request_timeout,
    };
    tracing::info!(every_seconds = interval.as_secs_f64(), "identity check on");
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(crate::liveness::periodic(liveness, interval, stop.clone()));
    Some((stop, task))
}

/// Starts the web page when `[web]` is configured.
async fn start_web_if_configured(
    config: &Config,
    store: Arc<dyn crate::store::Store>,
    auth: Arc<crate::auth::Authenticator>,
    activated: &mut Activated,
) -> Result<Option<WebServer>, WebError> {
    let Some(settings) = config.web.clone() else {
        if config.oidc.is_some() {
            tracing::warn!("[oidc] is configured but [web] is not: nobody can sign in");
        }
        return Ok(None);
    };
    let state = crate::web::state(
        settings,
        config.oidc.as_ref(),
        &config.metrics,
        config.clients.clone(),
        store,
        auth,
        Arc::new(crate::clock::SystemClock),
    )?;
    if let Some(oauth) = &config.oauth {
        state.set_introspection_clients(oauth.endpoint_clients.clone());
    }
    crate::web::start(state, activated).await.map(Some)
}

async fn stop_all(doors: FrontDoors, http: Vec<WebServer>, core: Core) {
    doors.drain(DRAIN_GRACE).await;
    for server in http {
        server.stop().await;
    }
    systemd::status("flushing last-use records");
    core.shutdown().await;
}

/// What a reload can change in the running daemon.
struct Live<'a> {
    core: &'a Core,
    http: &'a [WebServer],
}

/// Re-reads the config file. What can change live is applied; the rest is named so the
/// postmaster knows a restart is needed. A broken file changes nothing.
/// Returns the configuration now in force, and whether the file was refused.
fn reload(old: Config, log: &LogControl, live: &Live<'_>) -> (Config, bool) {
    let Some(path) = old.source.clone() else {
        return (old, false);
    };
    let new = match config::load(&path) {
        Ok(new) => new,
        Err(e) => {
            tracing::error!(
                "reload refused, keeping the running configuration: {}",
                e.to_string().trim_end()
            );
            return (old, true);
        }
    };
    if new.log_level != old.log_level {
        match log.set_filter(&format!("{},sqlx=warn", new.log_level)) {
            Ok(()) => tracing::info!(level = %new.log_level, "log level changed"),
            Err(e) => tracing::warn!(error = %e, "cannot change the log level"),
        }
    }
    let mut applied = Vec::new();
    if new.log_level != old.log_level {
        applied.push("log.level");
    }
    // By value, never by `Debug` text: `Debug` redacts secrets, so a client secret rotated
    // in `client_secret_file` would look unchanged.
    if old.oidc != new.oidc {
        let web = live.http.iter().filter_map(|s| s.state.as_ref());
        let mut failed = false;
        for state in web {
            if let Err(e) = state.reconfigure(new.oidc.as_ref()) {
                tracing::error!(error = %e, "reload: the new [oidc] settings cannot be used; keeping the old ones");
                failed = true;
            }
        }
        if !failed {
            applied.push("oidc");
        }
    }
    let mut needs_restart = restart_only_changes(&old, &new);
    if new.throttle != old.throttle {
        // Delays, thresholds, window, trusted networks and on/off apply to the next
        // login; which Redis (and key names) only at a restart.
        let throttle = &live.core.throttle;
        let before = throttle.config();
        needs_restart.extend(throttle.reconfigure(new.throttle.clone()));
        // The throttle keeps its Redis settings itself; whatever else differs now applied.
        if *throttle.config() != *before {
            applied.push("throttle");
            tracing::info!(throttle = %throttle.config().describe(), "throttle settings applied");
        }
    }
    if needs_restart.is_empty() {
        tracing::info!(config = %path.display(), applied = %applied.join(", "), "configuration reloaded");
    } else {
        tracing::warn!(
            config = %path.display(),
            applied = %applied.join(", "),
            keys = %needs_restart.join(", "),
            "configuration reloaded; these changes take effect after a restart"
        );
    }
    (new, false)
}

fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut keys = Vec::new();
    let mut check = |changed: bool, key: &'static str| {
        if changed {
            keys.push(key);
        }
    };
    check(old.store != new.store, "store");
    check(old.key_file != new.key_file, "credentials.key_file");
    check(
        old.argon2 != new.argon2 || old.rehash_on_login != new.rehash_on_login,
        "credentials",
    );
    check(
        old.hash_workers != new.hash_workers || old.hash_queue != new.hash_queue,
        "hash_pool",
    );
    check(old.services != new.services, "services");
    check(old.log_format != new.log_format, "log.format");
    check(
        old.verify_cache != new.verify_cache,
        "credentials.verify_cache_*",
    );
    check(old.metrics != new.metrics, "metrics");
    check(
        old.policy_socket != new.policy_socket || old.control_socket != new.control_socket,
        "policy_socket/control_socket",
    );
    check(old.policy != new.policy, "policy");
    check(old.redis != new.redis, "redis");
    check(old.web != new.web, "web");
    check(old.clients != new.clients, "clients");
    // The token validator (and the introspection endpoint's clients) are built at start.
    check(old.oauth != new.oauth, "oauth");
    // It also keeps the [oidc] issuer, client and endpoints it started with.
    check(
        new.oauth.is_some() && old.oidc != new.oidc,
        "oidc (for the [oauth] token validator)",
    );
    check(old.auth_socket != new.auth_socket, "auth_socket");
    check(old.userdb_socket != new.userdb_socket, "userdb_socket");
    // The periodic check and the decision core's `max_days_without_sign_in` read these at
    // start; the rest of `[oidc]` applies at once.
    check(
        old.oidc.as_ref().map(|o| &o.liveness) != new.oidc.as_ref().map(|o| &o.liveness),
        "oidc.liveness_*/max_days_without_sign_in",
    );
    keys
}
