//! Reading passwords from a person: stdin or a terminal prompt, never argv.

use std::io::{IsTerminal, Read};

use super::CliError;
use crate::secret::Secret;

const MAX_SECRET: usize = 4096;

/// One line from standard input, without its line ending.
pub fn from_stdin() -> Result<Secret, CliError> {
    let mut buf = Vec::new();
    std::io::stdin()
        .take(MAX_SECRET as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|e| CliError::refused(format!("cannot read standard input: {e}")))?;
    if buf.len() > MAX_SECRET {
        return Err(CliError::usage(format!(
            "password on stdin is longer than {MAX_SECRET} bytes"
        )));
    }
    if let Some(end) = buf.iter().position(|b| *b == b'\n') {
        buf.truncate(end);
    }
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    if buf.is_empty() {
        return Err(CliError::usage("empty password on standard input"));
    }
    Ok(Secret::new(buf))
}

/// Asks twice on the terminal so a typo does not lock the person out.
pub fn prompt_new() -> Result<Secret, CliError> {
    if !std::io::stdin().is_terminal() {
        return Err(CliError::usage(
            "no password given: pipe it with --password-stdin, or run in a terminal to be asked",
        ));
    }
    let first = rpassword::prompt_password("New password: ")
        .map_err(|e| CliError::refused(e.to_string()))?;
    let second = rpassword::prompt_password("Repeat password: ")
        .map_err(|e| CliError::refused(e.to_string()))?;
    if first != second {
        return Err(CliError::refused(
            "the passwords differ; nothing was changed",
        ));
    }
    if first.is_empty() {
        return Err(CliError::usage("empty password"));
    }
    Ok(Secret::from(first))
}

/// The secret for `auth test`: stdin when piped, a prompt on a terminal.
pub fn for_test() -> Result<Secret, CliError> {
    if std::io::stdin().is_terminal() {
        let s = rpassword::prompt_password("Password: ")
            .map_err(|e| CliError::refused(e.to_string()))?;
        return Ok(Secret::from(s));
    }
    from_stdin()
}
