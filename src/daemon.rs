//! `mailauthd serve`: start the core and the front doors, tell systemd, reload on SIGHUP,
//! drain and flush on SIGTERM.

use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};

use crate::auth::throttle::Throttle;
use crate::cli::CliError;
use crate::config::{self, Config};
use crate::logging::LogControl;
use crate::runtime::Core;
use crate::server::FrontDoors;
use crate::systemd;

const DRAIN_GRACE: Duration = Duration::from_secs(10);

pub async fn serve(config: Config, log: LogControl) -> Result<(), CliError> {
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        return Err(CliError::refused("cannot install signal handlers"));
    };
    let core = Core::start(&config).await.map_err(|e| {
        tracing::error!(error = %e, "cannot start");
        if e.is_temporary() {
            CliError::temporary(e.to_string())
        } else {
            CliError::refused(e.to_string())
        }
    })?;
    let doors = match FrontDoors::start(
        &config,
        core.auth.clone(),
        core.store.clone(),
        core.throttle.clone(),
    ) {
        Ok(doors) => doors,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen");
            core.shutdown().await;
            return Err(CliError::refused(e.to_string()));
        }
    };
    let web = match crate::web::start_if_configured(&config, core.store.clone(), core.auth.clone())
        .await
    {
        Ok(web) => web,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the web page");
            doors.drain(DRAIN_GRACE).await;
            core.shutdown().await;
            return Err(CliError::refused(e.to_string()));
        }
    };
    let listening = doors.endpoints.join(", ");
    tracing::info!(store = %config.store.url, listeners = %listening, hash_workers = config.hash_workers, "mailauthd ready");
    systemd::ready(&format!("serving {listening}"));
    systemd::spawn_watchdog();

    let mut current = config;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                systemd::reloading();
                current = reload(current, &log, &core.throttle);
                systemd::ready(&format!("serving {listening}"));
            }
        }
    }
    tracing::info!("stopping: draining connections");
    systemd::stopping("draining connections");
    doors.drain(DRAIN_GRACE).await;
    if let Some(web) = web {
        web.stop().await;
    }
    systemd::status("flushing last-use records");
    core.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

/// Re-reads the config file. What can change live is applied; the rest is named so the
/// postmaster knows a restart is needed. A broken file changes nothing.
fn reload(old: Config, log: &LogControl, throttle: &Throttle) -> Config {
    let Some(path) = old.source.clone() else {
        return old;
    };
    let new = match config::load(&path) {
        Ok(new) => new,
        Err(e) => {
            tracing::error!(
                "reload refused, keeping the running configuration: {}",
                e.to_string().trim_end()
            );
            systemd::status("reload failed: config has errors (see log)");
            return old;
        }
    };
    if new.log_level != old.log_level {
        match log.set_filter(&format!("{},sqlx=warn", new.log_level)) {
            Ok(()) => tracing::info!(level = %new.log_level, "log level changed"),
            Err(e) => tracing::warn!(error = %e, "cannot change the log level"),
        }
    }
    let mut needs_restart = restart_only_changes(&old, &new);
    if new.throttle != old.throttle {
        // Delays, thresholds, window, trusted networks and on/off apply to the next
        // login; which Redis (and key names) only at a restart.
        needs_restart.extend(throttle.reconfigure(new.throttle.clone()));
        tracing::info!(throttle = %throttle.config().describe(), "throttle settings applied");
    }
    if needs_restart.is_empty() {
        tracing::info!(config = %path.display(), "configuration reloaded");
    } else {
        tracing::warn!(
            config = %path.display(),
            keys = %needs_restart.join(", "),
            "configuration reloaded; these changes take effect after a restart"
        );
    }
    new
}

fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut keys = Vec::new();
    let mut check = |changed: bool, key: &'static str| {
        if changed {
            keys.push(key);
        }
    };
    check(
        old.store.url != new.store.url || old.store.max_connections != new.store.max_connections,
        "store",
    );
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
        format!("{:?}", old.oidc) != format!("{:?}", new.oidc),
        "oidc",
    );
    check(format!("{:?}", old.web) != format!("{:?}", new.web), "web");
    check(
        format!("{:?}", old.auth_socket) != format!("{:?}", new.auth_socket),
        "auth_socket",
    );
    check(
        format!("{:?}", old.userdb_socket) != format!("{:?}", new.userdb_socket),
        "userdb_socket",
    );
    keys
}
