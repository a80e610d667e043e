//! Log setup, and the handle that lets a reload change the level of a running daemon.

use std::io::IsTerminal;

use thiserror::Error;
use tracing_subscriber::filter::ParseError;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

/// How log lines are written: `[log] format`, or `--log-format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Why a new log filter was not taken; the old one stays in force.
#[derive(Debug, Error)]
pub enum LogError {
    #[error("{0}")]
    Filter(#[from] ParseError),
    #[error("{0}")]
    Reload(#[from] reload::Error),
}

/// Changes the log filter of the running process.
#[derive(Clone)]
pub struct LogControl {
    handle: Option<reload::Handle<EnvFilter, Registry>>,
}

impl LogControl {
    /// For code paths (tests, library use) that did not install our subscriber.
    pub fn none() -> Self {
        LogControl { handle: None }
    }

    pub fn set_filter(&self, filter: &str) -> Result<(), LogError> {
        let Some(handle) = &self.handle else {
            return Ok(());
        };
        let filter = EnvFilter::try_new(filter)?;
        Ok(handle.reload(filter)?)
    }
}

/// Installs the global subscriber: `filter` unless `MAILAUTHD_LOG` overrides it, text
/// (colours only on a terminal) or JSON, always on stderr so journald picks it up.
pub fn init(filter: &str, format: LogFormat) -> LogControl {
    let from_env = std::env::var("MAILAUTHD_LOG")
        .ok()
        .filter(|v| !v.is_empty());
    let initial = EnvFilter::try_new(from_env.as_deref().unwrap_or(filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (layer, handle) = reload::Layer::new(initial);
    let registry = tracing_subscriber::registry().with(layer);
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false);
    // Under systemd, journald stamps every line itself; a second time stamp is noise.
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let installed = match format {
        LogFormat::Json => registry.with(fmt.json()).try_init(),
        LogFormat::Text if journald => registry
            .with(fmt.with_ansi(false).without_time())
            .try_init(),
        LogFormat::Text => registry
            .with(fmt.with_ansi(std::io::stderr().is_terminal()))
            .try_init(),
    };
    match installed {
        // An explicit MAILAUTHD_LOG wins over reloads too.
        Ok(()) if from_env.is_none() => LogControl {
            handle: Some(handle),
        },
        _ => LogControl::none(),
    }
}
