//! The per-app lock held by every command that changes something.
//!
//! Two flocks: one on the app folder itself (so two configs of one app, with different
//! backup.dir or run by different users, still exclude each other), and one on
//! `<backup.dir>/guard-<app>.lock`, which also records who holds it, how far the run got and
//! the process group of the deploy step it is running.
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

/// What the lock file says about the run holding it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Record {
    /// Who.
    #[serde(flatten)]
    pub origin: Origin,
    /// The subcommand (`deploy`, `rollback`, `backup`, `clean`): what a run that died was
    /// doing decides what `rollback latest` does next.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subcommand: Option<String>,
    /// `changing` once the run has begun to change the app (after its snapshot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// The snapshot the run took before changing anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incident: Option<String>,
    /// The process group of the deploy step while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub child_pgid: Option<i32>,
    /// When the deploy step's group leader started (clock ticks since boot, from
    /// `/proc/<pid>/stat`): a take-over kills the group only if its leader is still that
    /// process, never a recycled pid's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub child_started: Option<u64>,
}

/// A held lock; released (and its record cleared) on drop.
#[derive(Debug)]
pub struct Lock {
    file: File,
    _app_dir: File,
    path: PathBuf,
    record: Record,
    /// The record of a run that died holding the lock, if this run took it over.
    pub taken_over: Option<Record>,
    /// The process group of the dead run's deploy step, if it was still running and had to be
    /// stopped before this run could go on.
    pub stopped_orphan: Option<i32>,
}

/// The lock file of `app` in `backup_dir`.
pub fn path(backup_dir: &Path, app: &str) -> PathBuf {
    backup_dir.join(format!("guard-{app}.lock"))
}

/// Whether a live guard run on this host holds the lock, read without taking it (the watcher
/// must never make a deploy fail with exit 5). A record left by a dead run does not count.
pub fn held_by_live_run(backup_dir: &Path, app: &str) -> bool {
    let Ok(mut file) = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path(backup_dir, app))
    else {
        return false;
    };
    read_holder(&mut file).is_some_and(|r| {
        r.origin.host == crate::origin::host()
            && i32::try_from(r.origin.pid).is_ok_and(crate::pm2::pid_alive)
    })
}

impl Lock {
    /// Take the lock at once or fail with exit 5 naming the holder. `me` is recorded in the
    /// file (its command line already masked by the caller).
    pub fn acquire(
        backup_dir: &Path,
        app: &str,
        app_dir: &Path,
        me: &Origin,
        subcommand: &str,
    ) -> Result<Lock> {
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
                let who = match holder.map(|r| r.origin) {
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
        // Then the app folder: a run of the same app through another backup.dir (whose
        // lock file this run cannot see) holds it.
        let dir_file = File::open(app_dir)
            .with_context(|| format!("opening app.dir {} to lock it", app_dir.display()))?;
        match dir_file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(TypedError::LockHeld(format!(
                    "another guard run is changing {} (through another guard.toml or backup.dir, or as another user): wait for it, `guard health` shows the app",
                    app_dir.display()
                ))
                .into());
            }
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", app_dir.display()));
            }
        }
        let taken_over = read_holder(&mut file);
        let mut stopped_orphan = None;
        if let Some(dead) = &taken_over {
            tracing::warn!(
                "taking over the lock of a guard run that ended without releasing it: pid {} on {}, started {}",
                dead.origin.pid,
                dead.origin.host,
                dead.origin.started_at
            );
            // Its deploy step may still be running (its own process group survives kill -9
            // of guard): no run goes on while it can still write into the app.
            if let Some(pgid) = dead.child_pgid
                && group_alive(pgid)
                && same_leader(pgid, dead.child_started)
            {
                // SAFETY: kill(2) on a process group; no memory is involved.
                unsafe { libc::kill(-pgid, libc::SIGKILL) };
                for _ in 0..100 {
                    if !group_alive(pgid) {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                stopped_orphan = Some(pgid);
            }
        }
        let mut lock = Lock {
            file,
            _app_dir: dir_file,
            path,
            record: Record {
                origin: me.clone(),
                subcommand: Some(subcommand.to_string()),
                phase: None,
                incident: None,
                child_pgid: None,
                child_started: None,
            },
            taken_over,
            stopped_orphan,
        };
        lock.write()?;
        Ok(lock)
    }

    /// Record that the run has begun to change the app (after snapshot `incident`, if any).
    pub fn changing(&mut self, incident: Option<&str>) -> Result<()> {
        self.record.phase = Some("changing".into());
        self.record.incident = incident.map(String::from);
        self.write()
    }

    /// Record the process group of the deploy step (None once it ended).
    pub fn child(&mut self, pgid: Option<i32>) -> Result<()> {
        self.record.child_pgid = pgid;
        self.record.child_started = pgid.and_then(start_time);
        self.write()
    }

    fn write(&mut self) -> Result<()> {
        let record = serde_json::to_vec(&self.record)?;
        self.file.set_len(0)?;
        self.file.rewind()?;
        self.file
            .write_all(&record)
            .with_context(|| format!("writing lock file {}", self.path.display()))?;
        // Page cache survives a kill -9 of guard: no fsync needed for the next run to read it.
        Ok(())
    }
}

/// When process `pid` started, in clock ticks since boot (field 22 of `/proc/<pid>/stat`).
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from its end.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether group `pgid` is still the one recorded: its leader gone (the number stays taken
/// while any member lives, so the group is the same) or the same process by its start time.
/// A record without a start time (an older guard) is trusted as before.
fn same_leader(pgid: i32, started: Option<u64>) -> bool {
    match (started, start_time(pgid)) {
        (Some(then), Some(now)) => then == now,
        _ => true,
    }
}

/// Whether any process of this group is alive.
fn group_alive(pgid: i32) -> bool {
    // SAFETY: kill(2) with signal 0 on a process group only checks for existence.
    pgid > 0 && unsafe { libc::kill(-pgid, 0) } == 0
}

fn read_holder(file: &mut File) -> Option<Record> {
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
        let app_dir = tempfile::tempdir().unwrap();
        let other_dir = tempfile::tempdir().unwrap();
        let first = Lock::acquire(
            dir.path(),
            "api",
            app_dir.path(),
            &Origin::current(),
            "deploy",
        )
        .unwrap();
        assert!(first.taken_over.is_none());
        let err = Lock::acquire(
            dir.path(),
            "api",
            other_dir.path(),
            &Origin::current(),
            "deploy",
        )
        .unwrap_err();
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
        let third = tempfile::tempdir().unwrap();
        Lock::acquire(
            dir.path(),
            "other",
            third.path(),
            &Origin::current(),
            "deploy",
        )
        .unwrap();
        // The same app folder through another backup.dir is not.
        let elsewhere = tempfile::tempdir().unwrap();
        let err = Lock::acquire(
            elsewhere.path(),
            "api",
            app_dir.path(),
            &Origin::current(),
            "deploy",
        )
        .unwrap_err();
        assert_eq!(
            crate::exit::status_of(&err),
            crate::exit::ExitStatus::LockHeld
        );
        drop(first);
        // Another test thread's fork may hold a copy of the folder's descriptor until its exec
        // closes it (the flock goes with the last copy): retried for a moment, as only this
        // test process has such siblings.
        let mut again = None;
        for _ in 0..100 {
            match Lock::acquire(
                dir.path(),
                "api",
                app_dir.path(),
                &Origin::current(),
                "deploy",
            ) {
                Ok(l) => {
                    again = Some(l);
                    break;
                }
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
            }
        }
        let again = again.expect("the lock is free once the first holder dropped it");
        assert!(
            again.taken_over.is_none(),
            "a clean release leaves no record"
        );
    }

    #[test]
    fn a_symlinked_lock_file_is_refused_and_its_target_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        std::os::unix::fs::symlink(&victim, path(dir.path(), "api")).unwrap();
        let app_dir = tempfile::tempdir().unwrap();
        assert!(
            Lock::acquire(
                dir.path(),
                "api",
                app_dir.path(),
                &Origin::current(),
                "deploy"
            )
            .is_err()
        );
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    }

    #[test]
    fn a_take_over_stops_the_dead_runs_step_but_never_a_recycled_process_group() {
        use std::os::unix::process::CommandExt;
        let dir = tempfile::tempdir().unwrap();
        let app_dir = tempfile::tempdir().unwrap();
        let spawn = || {
            std::process::Command::new("sleep")
                .arg("30")
                .process_group(0)
                .spawn()
                .unwrap()
        };
        let record = |pgid: i32, started: Option<u64>| {
            let mut dead = Origin::current();
            dead.pid = 999_999;
            let r = Record {
                origin: dead,
                subcommand: Some("deploy".into()),
                phase: Some("changing".into()),
                incident: None,
                child_pgid: Some(pgid),
                child_started: started,
            };
            std::fs::write(path(dir.path(), "api"), serde_json::to_vec(&r).unwrap()).unwrap();
        };
        // Another process now has the recorded pgid (the number was recycled): left alone.
        let mut stranger = spawn();
        let pgid = stranger.id() as i32;
        let real = start_time(pgid).unwrap();
        record(pgid, Some(real + 1));
        let lock = Lock::acquire(
            dir.path(),
            "api",
            app_dir.path(),
            &Origin::current(),
            "deploy",
        )
        .unwrap();
        assert_eq!(lock.stopped_orphan, None);
        assert!(stranger.try_wait().unwrap().is_none(), "still running");
        drop(lock);
        // The same process the dead run started: stopped.
        record(pgid, Some(real));
        let lock = Lock::acquire(
            dir.path(),
            "api",
            app_dir.path(),
            &Origin::current(),
            "deploy",
        )
        .unwrap();
        assert_eq!(lock.stopped_orphan, Some(pgid));
        assert!(
            stranger.wait().unwrap().code().is_none(),
            "killed by a signal"
        );
    }

    #[test]
    fn a_record_left_by_a_dead_run_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let mut dead = Origin::current();
        dead.pid = 999_999;
        std::fs::write(path(dir.path(), "api"), serde_json::to_vec(&dead).unwrap()).unwrap();
        let app_dir = tempfile::tempdir().unwrap();
        let lock = Lock::acquire(
            dir.path(),
            "api",
            app_dir.path(),
            &Origin::current(),
            "deploy",
        )
        .unwrap();
        assert_eq!(lock.taken_over.as_ref().unwrap().origin.pid, 999_999);
        assert!(lock.taken_over.as_ref().unwrap().phase.is_none());
    }
}
