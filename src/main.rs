//! The `mailauthd` binary: parse the command line, read the config, set up logging and the
//! runtime, dispatch.

use std::process::ExitCode;

use clap::Parser;

use mailauthd::cli::{self, Cli};
use mailauthd::config::{self, Config};
use mailauthd::logging::{self, LogFormat};
use mailauthd::privileges;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Read once, before the process gives up root: the state directory's owner, the
    // daemon's log level and `serve` all come from this one reading. A broken file is
    // reported by the command itself.
    let config = config::load(&config::resolve_path(cli.config.as_deref()));
    let log = init_logging(&cli, config.as_ref().ok());
    // Before the runtime starts any thread: files we create must belong to the daemon.
    if let Ok(config) = &config {
        if let Err(e) = privileges::adopt_state_owner(&config.state_directory) {
            eprintln!("mailauthd: {e}");
            return ExitCode::from(1);
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mailauthd: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(cli::run(cli, config, log))
}

/// The daemon logs at the configured level and format; admin commands only warn (plus the
/// audit line of `auth test`), so their output stays readable. `MAILAUTHD_LOG` overrides
/// either, e.g. `MAILAUTHD_LOG=debug`.
fn init_logging(cli: &Cli, config: Option<&Config>) -> logging::LogControl {
    let flag = match cli.log_format.as_deref() {
        Some("json") => Some(LogFormat::Json),
        Some(_) => Some(LogFormat::Text),
        None => None,
    };
    match (&cli.command, config) {
        (cli::Command::Serve, Some(c)) => {
            logging::init(&daemon_filter(&c.log_level), flag.unwrap_or(c.log_format))
        }
        // Until `serve` reports the broken config, log with the defaults.
        (cli::Command::Serve, None) => {
            logging::init(&daemon_filter("info"), flag.unwrap_or(LogFormat::Text))
        }
        _ => logging::init(
            "warn,sqlx=error,mailauthd::audit=info",
            flag.unwrap_or(LogFormat::Text),
        ),
    }
}

fn daemon_filter(level: &str) -> String {
    format!("{level},sqlx=warn")
}
