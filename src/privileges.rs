//! Running admin commands as the daemon's user.
//!
//! A postmaster types `mailauthd mailbox add …` as root. If that created the SQLite file
//! or the key file, they would belong to root and the daemon (its own user under systemd)
//! could no longer write them. So when run as root and the state directory belongs to
//! another user, the process becomes that user before touching anything.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::unistd::{setgid, setgroups, setuid, Gid, Uid};
use thiserror::Error;

/// A step of becoming the state directory's owner failed; the process must not go on as
/// root, half switched.
#[derive(Debug, Error)]
#[error("cannot switch to the owner of {} ({step}): {source}", directory.display())]
pub struct AdoptError {
    pub directory: PathBuf,
    /// `groups`, `group` or `user`.
    pub step: &'static str,
    pub source: nix::Error,
}

/// Switches to the state directory's owner when running as root; returns the uid taken.
/// Must run before any thread is started.
pub fn adopt_state_owner(state_directory: &Path) -> Result<Option<u32>, AdoptError> {
    if !Uid::effective().is_root() {
        return Ok(None);
    }
    let Ok(meta) = std::fs::metadata(state_directory) else {
        return Ok(None);
    };
    if meta.uid() == 0 {
        return Ok(None);
    }
    let (uid, gid) = (Uid::from_raw(meta.uid()), Gid::from_raw(meta.gid()));
    let fail = |step: &'static str, source: nix::Error| AdoptError {
        directory: state_directory.to_path_buf(),
        step,
        source,
    };
    setgroups(&[gid]).map_err(|e| fail("groups", e))?;
    setgid(gid).map_err(|e| fail("group", e))?;
    setuid(uid).map_err(|e| fail("user", e))?;
    Ok(Some(meta.uid()))
}
