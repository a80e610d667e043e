//! The `mailauthd` binary: parse the command line, set up logging and the runtime, dispatch.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use mailauthd::cli::{self, Cli};
use mailauthd::config::LogFormat;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli);
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
    runtime.block_on(cli::run(cli))
}

/// The daemon logs at the configured level and format; admin commands only warn (plus the
/// audit line of `auth test`), so their output stays readable. `MAILAUTHD_LOG` overrides
/// either, e.g. `MAILAUTHD_LOG=debug`.
fn init_logging(cli: &Cli) {
    let (default, format) = match cli.command {
        // A broken config is reported by the command itself; log with defaults until then.
        cli::Command::Serve => match cli::load_config(cli.config.as_deref()) {
            Ok(c) => (format!("{},sqlx=warn", c.log_level), c.log_format),
            Err(_) => ("info,sqlx=warn".to_string(), LogFormat::Text),
        },
        _ => (
            "warn,sqlx=error,mailauthd::audit=info".to_string(),
            LogFormat::Text,
        ),
    };
    let filter =
        EnvFilter::try_from_env("MAILAUTHD_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}
