//! The `[log]` section: the level (any `tracing` filter) and the format of the daemon's
//! log lines.

use serde::Deserialize;
use tracing_subscriber::EnvFilter;

use crate::logging::LogFormat;
use crate::settings_check::{one_of, problem, Problem};

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct LogSection {
    level: Option<String>,
    format: Option<String>,
}

const FORMATS: [(&str, LogFormat); 2] = [("text", LogFormat::Text), ("json", LogFormat::Json)];

/// The level (default `info`) and the format (default text).
pub fn check(section: LogSection, problems: &mut Vec<Problem>) -> (String, LogFormat) {
    let level = section.level.unwrap_or_else(|| "info".into());
    if EnvFilter::try_new(&level).is_err() {
        problem(
            problems,
            "log.level",
            format!("{level:?} is not a level or filter (try info, debug, warn)"),
        );
    }
    let format = one_of(problems, "log.format", section.format.as_deref(), &FORMATS)
        .unwrap_or(LogFormat::Text);
    (level, format)
}
