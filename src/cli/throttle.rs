//! `mailauthd throttle list|clear`: asks the running daemon over its control socket.

use std::path::Path;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use super::output::Output;
use super::{admin, CliError};
use crate::clock::format_time;
use crate::server::control_conn::{ControlReply, ControlRequest};
use crate::server::listener::Endpoint;

pub async fn run(
    config_path: Option<&Path>,
    out: &Output,
    request: ControlRequest,
) -> Result<(), CliError> {
    let config = admin::load_config(config_path)?;
    let Some(Endpoint::Unix(path)) = config.control_socket.endpoints.first().cloned() else {
        return Err(CliError::refused("no control socket configured"));
    };
    let reply = ask(&path, &request).await.map_err(|e| {
        CliError::temporary(format!(
            "cannot reach the daemon at {}: {e} (is mailauthd running?)",
            path.display()
        ))
    })?;
    match reply {
        ControlReply::Blocks { now_ms, entries } => {
            out.rows(&entries, &["KIND", "KEY", "FAILURES", "STATE"], |e| {
                let state = match e.blocked_until_ms {
                    Some(t) if t > now_ms => format!("blocked until {}", format_time(t / 1000)),
                    _ => "counting".into(),
                };
                vec![e.kind.clone(), e.key.clone(), e.failures.to_string(), state]
            });
            Ok(())
        }
        ControlReply::Cleared { removed } => {
            out.done(&format!(
                "{removed} throttle entr{} cleared",
                if removed == 1 { "y" } else { "ies" }
            ));
            Ok(())
        }
        ControlReply::Error { message } => Err(CliError::refused(message)),
    }
}

async fn ask(path: &Path, request: &ControlRequest) -> std::io::Result<ControlReply> {
    let stream = tokio::time::timeout(std::time::Duration::from_secs(5), UnixStream::connect(path))
        .await??;
    let (reader, mut writer) = stream.into_split();
    let mut line = serde_json::to_string(request).map_err(std::io::Error::other)?;
    line.push('\n');
    writer.write_all(line.as_bytes()).await?;
    let mut reply = String::new();
    BufReader::new(reader).read_line(&mut reply).await?;
    if reply.is_empty() {
        return Err(std::io::Error::other(
            "the daemon closed the connection (not allowed?)",
        ));
    }
    serde_json::from_str(reply.trim()).map_err(std::io::Error::other)
}
