//! What unit tests across the crate share.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use tempfile::TempDir;

/// A file `name` holding `contents` in a new temporary directory, which is removed when
/// the returned guard is dropped: keep it alive while the file is used.
pub(crate) fn file_in_tempdir(name: &str, contents: impl AsRef<[u8]>) -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, contents).unwrap();
    (dir, path)
}
