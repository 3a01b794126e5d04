//! The per-app lock held by every command that changes something.
//!
//! An flock(2) on `<backup.dir>/guard-<app>.lock`: the kernel drops it when the holder dies,
//! even by `kill -9`, so a dead run can never lock anyone out. The file records who holds it,
//! for the message a second run prints, and is emptied on release; finding a record in a file
//! nobody locks means the last holder died, which is logged as a take-over.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::exit::TypedError;
use crate::origin::Origin;

/// A held lock; released (and its record cleared) on drop.
#[derive(Debug)]
pub struct Lock {
    file: File,
    path: PathBuf,
    /// The record of a run that died holding the lock, if this run took it over.
    pub taken_over: Option<Origin>,
}

/// The lock file of `app` in `backup_dir`.
pub fn path(backup_dir: &Path, app: &str) -> PathBuf {
    backup_dir.join(format!("guard-{app}.lock"))
}

impl Lock {
    /// Take the lock at once or fail with exit 5 naming the holder. `me` is recorded in the
    /// file (its command line already masked by the caller).
    pub fn acquire(backup_dir: &Path, app: &str, me: &Origin) -> Result<Lock> {
        let path = path(backup_dir, app);
        // Never through a symlink: a planted link must not get its target truncated.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .with_context(|| format!("opening lock file {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let holder = read_holder(&mut file);
                let who = match holder {
                    Some(o) => format!(
                        "pid {} on {} (user {}), started {}: `{}`",
                        o.pid, o.host, o.user, o.started_at, o.command
                    ),
                    None => "a run that is just starting".to_string(),
                };
                return Err(TypedError::LockHeld(format!(
                    "another guard run holds the lock for app {app}: {who} (lock file {})",
                    path.display()
                ))
                .into());
            }
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", path.display()));
            }
        }
        let taken_over = read_holder(&mut file);
        if let Some(dead) = &taken_over {
            tracing::warn!(
                "taking over the lock of a guard run that ended without releasing it: pid {} on {}, started {}",
                dead.pid,
                dead.host,
                dead.started_at
            );
        }
        let record = serde_json::to_vec(me)?;
        file.set_len(0)?;
        file.rewind()?;
        file.write_all(&record)
            .with_context(|| format!("writing lock file {}", path.display()))?;
        file.sync_all()?;
        Ok(Lock {
            file,
            path,
            taken_over,
        })
    }
}

fn read_holder(file: &mut File) -> Option<Origin> {
    let mut text = String::new();
    // The holder writes its record right after locking; give it a moment.
    for _ in 0..5 {
        text.clear();
        file.rewind().ok()?;
        file.read_to_string(&mut text).ok()?;
        if !text.trim().is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    serde_json::from_str(&text).ok()
}

impl Drop for Lock {
    fn drop(&mut self) {
        // An empty file tells the next run that this one ended cleanly.
        if let Err(e) = self.file.set_len(0) {
            tracing::warn!("clearing lock file {}: {e}", self.path.display());
        }
        let _ = self.file.unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_acquire_fails_with_lock_held_and_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let first = Lock::acquire(dir.path(), "api", &Origin::current()).unwrap();
        assert!(first.taken_over.is_none());
        let err = Lock::acquire(dir.path(), "api", &Origin::current()).unwrap_err();
        assert_eq!(
            crate::exit::status_of(&err),
            crate::exit::ExitStatus::LockHeld
        );
        assert!(
            err.to_string()
                .contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        // Another app is independent.
        Lock::acquire(dir.path(), "other", &Origin::current()).unwrap();
        drop(first);
        let again = Lock::acquire(dir.path(), "api", &Origin::current()).unwrap();
        assert!(
            again.taken_over.is_none(),
            "a clean release leaves no record"
        );
    }

    #[test]
    fn a_record_left_by_a_dead_run_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let mut dead = Origin::current();
        dead.pid = 999_999;
        std::fs::write(path(dir.path(), "api"), serde_json::to_vec(&dead).unwrap()).unwrap();
        let lock = Lock::acquire(dir.path(), "api", &Origin::current()).unwrap();
        assert_eq!(lock.taken_over.as_ref().unwrap().pid, 999_999);
    }
}
