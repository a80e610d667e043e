//! The server key file: created on first start, readable only by the daemon.

use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use thiserror::Error;

use crate::auth::app_password::AppPasswordKey;

const KEY_LEN: usize = 32;

#[derive(Debug, Error)]
pub enum KeyFileError {
    #[error("cannot read key file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot create key file {path}: {source}")]
    Create {
        path: String,
        source: std::io::Error,
    },
    #[error("key file {path} holds {len} bytes, expected {KEY_LEN}; restore it from backup (app passwords depend on it)")]
    WrongLength { path: String, len: usize },
    #[error(
        "key file {path} is readable by group or others (mode {mode:o}); run: chmod 600 {path}"
    )]
    TooOpen { path: String, mode: u32 },
    #[error("no randomness available: {0}")]
    Random(String),
}

/// Loads the key, creating it (mode 0600, exclusive create) when it does not exist yet.
/// Several daemons on one database must share this file.
pub fn load_or_create(path: &Path) -> Result<AppPasswordKey, KeyFileError> {
    let shown = path.display().to_string();
    match OpenOptions::new().read(true).open(path) {
        Ok(mut file) => {
            let mode = file
                .metadata()
                .map_err(|e| read_err(&shown, e))?
                .permissions()
                .mode()
                & 0o777;
            if mode & 0o077 != 0 {
                return Err(KeyFileError::TooOpen { path: shown, mode });
            }
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes)
                .map_err(|e| read_err(&shown, e))?;
            if bytes.len() != KEY_LEN {
                return Err(KeyFileError::WrongLength {
                    path: shown,
                    len: bytes.len(),
                });
            }
            Ok(AppPasswordKey::new(bytes))
        }
        Err(e) if e.kind() == ErrorKind::NotFound => create(path, &shown),
        Err(e) => Err(read_err(&shown, e)),
    }
}

fn create(path: &Path, shown: &str) -> Result<AppPasswordKey, KeyFileError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(|e| create_err(shown, e))?;
    }
    let mut bytes = vec![0u8; KEY_LEN];
    getrandom::fill(&mut bytes).map_err(|e| KeyFileError::Random(e.to_string()))?;
    // create_new: two processes starting at once must not both write a different key.
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(mut file) => {
            file.write_all(&bytes)
                .and_then(|_| file.sync_all())
                .map_err(|e| create_err(shown, e))?;
            tracing::info!(path = shown, "created app-password key file");
            Ok(AppPasswordKey::new(bytes))
        }
        Err(e) if e.kind() == ErrorKind::AlreadyExists => load_or_create(path),
        Err(e) => Err(create_err(shown, e)),
    }
}

fn read_err(path: &str, source: std::io::Error) -> KeyFileError {
    KeyFileError::Read {
        path: path.to_string(),
        source,
    }
}

fn create_err(path: &str, source: std::io::Error) -> KeyFileError {
    KeyFileError::Create {
        path: path.to_string(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::file_in_tempdir;

    #[test]
    fn created_once_with_mode_0600_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/key");
        let a = load_or_create(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let b = load_or_create(&path).unwrap();
        assert_eq!(a.lookup_hash(b"x"), b.lookup_hash(b"x"));
    }

    #[test]
    fn refuses_open_permissions_and_bad_length() {
        let (_dir, path) = file_in_tempdir("key", [1u8; 32]);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            load_or_create(&path),
            Err(KeyFileError::TooOpen { .. })
        ));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(&path, [1u8; 5]).unwrap();
        assert!(matches!(
            load_or_create(&path),
            Err(KeyFileError::WrongLength { len: 5, .. })
        ));
    }
}
