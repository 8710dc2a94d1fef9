//! `state_dir`: what one carwatch instance writes (outbox, snapshots, caches), and the
//! lock that keeps it one instance's.
//!
//! Two watchers on one `state_dir` would interleave their outbox records and compact
//! each other's file. The first takes an exclusive lock on `state_dir/lock` (held while
//! the process lives; the kernel releases it on any exit, `kill -9` included) and writes
//! its pid there; a second start is refused, naming that pid.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// Why `state_dir` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StateDirError {
    #[error("state_dir {}: {source}; check that it exists or can be created, and is writable", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("state_dir {} is in use by another carwatch (pid {holder}); stop it, or give this instance its own state_dir", path.display())]
    InUse { path: PathBuf, holder: String },
}

/// The held lock; dropping it releases `state_dir`.
#[derive(Debug)]
pub struct StateLock {
    _file: File,
}

/// Creates `dir` if needed and takes its lock.
pub fn lock(dir: &Path) -> Result<StateLock, StateDirError> {
    let io = |source| StateDirError::Io { path: dir.to_path_buf(), source };
    std::fs::create_dir_all(dir).map_err(io)?;
    let mut file =
        OpenOptions::new().create(true).read(true).write(true).truncate(false).open(dir.join("lock")).map_err(io)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = if holder.trim().is_empty() { "unknown".into() } else { holder.trim().to_string() };
            return Err(StateDirError::InUse { path: dir.to_path_buf(), holder });
        }
        Err(TryLockError::Error(e)) => return Err(io(e)),
    }
    file.set_len(0).and_then(|()| file.rewind()).and_then(|()| writeln!(file, "{}", std::process::id())).map_err(io)?;
    Ok(StateLock { _file: file })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_naming_the_holder_until_the_first_goes() {
        let d = tempfile::tempdir().unwrap();
        let first = lock(d.path()).unwrap();
        let e = lock(d.path()).unwrap_err();
        assert!(e.to_string().contains(&format!("pid {}", std::process::id())), "{e}");
        drop(first);
        assert!(lock(d.path()).is_ok());
    }
}
