//! `mailauthd serve`: start the core, run until a stop signal, drain and flush.

use tokio::signal::unix::{signal, SignalKind};

use crate::cli::CliError;
use crate::runtime::Core;

pub async fn serve(config: crate::config::Config) -> Result<(), CliError> {
    let core = Core::start(&config).await.map_err(|e| {
        tracing::error!(error = %e, "cannot start");
        if e.is_temporary() {
            CliError::temporary(e.to_string())
        } else {
            CliError::refused(e.to_string())
        }
    })?;
    let web = match crate::web::start_if_configured(&config, core.store.clone(), core.auth.clone())
        .await
    {
        Ok(web) => web,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the web page");
            core.shutdown().await;
            return Err(CliError::refused(e.to_string()));
        }
    };
    tracing::info!(
        store = %config.store.url,
        hash_workers = config.hash_workers,
        "mailauthd ready; no front door is configured in this version, so it only keeps the store and key ready"
    );
    wait_for_stop().await;
    if let Some(web) = web {
        web.stop().await;
    }
    tracing::info!("stopping: flushing last-use records");
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
