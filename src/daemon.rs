//! `mailauthd serve`: start the core and the front doors, run until a stop signal, drain
//! and flush.

use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};

use crate::cli::CliError;
use crate::config::Config;
use crate::runtime::Core;
use crate::server::FrontDoors;

const DRAIN_GRACE: Duration = Duration::from_secs(10);

pub async fn serve(config: Config) -> Result<(), CliError> {
    let core = Core::start(&config).await.map_err(|e| {
        tracing::error!(error = %e, "cannot start");
        if e.is_temporary() {
            CliError::temporary(e.to_string())
        } else {
            CliError::refused(e.to_string())
        }
    })?;
    let doors = match FrontDoors::start(&config, core.auth.clone(), core.store.clone()) {
        Ok(doors) => doors,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen");
            core.shutdown().await;
            return Err(CliError::refused(e.to_string()));
        }
    };
    tracing::info!(
        store = %config.store.url,
        listeners = %doors.endpoints.join(", "),
        hash_workers = config.hash_workers,
        "mailauthd ready"
    );
    wait_for_stop().await;
    tracing::info!("stopping: draining connections");
    doors.drain(DRAIN_GRACE).await;
    core.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_stop() {
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stopping");
        return;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}
