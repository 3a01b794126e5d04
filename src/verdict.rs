//! The answer of a verification, as types: why a run is healthy or not, with its data, and
//! the one place that renders it to English. Tests and `--json` read the types; people read
//! the text.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use crate::pm2::Instance;
use crate::probe::ProbeOutcome;

/// Something PM2 shows that makes a run unhealthy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    /// An instance is not online (errored, stopped...).
    Status {
        /// PM2 id.
        instance: u32,
        /// PM2's status word.
        status: String,
        /// PM2's restart counter.
        restarts: u64,
    },
    /// PM2's restart counter went up against the baseline.
    Restarted {
        /// PM2 id.
        instance: u32,
        /// Counter at the baseline.
        from: u64,
        /// Counter now.
        to: u64,
    },
    /// PM2 reports another pid than at the baseline.
    NewPid {
        /// PM2 id.
        instance: u32,
        /// Pid at the baseline.
        from: Option<u32>,
        /// Pid now.
        to: Option<u32>,
    },
    /// Right after a fresh start, the restart counter is not 0.
    RestartedAtStart {
        /// PM2 id.
        instance: u32,
        /// How often PM2 restarted it.
        count: u64,
    },
    /// The pid file names another process.
    Replaced {
        /// PM2 id.
        instance: u32,
        /// Pid watched.
        from: u32,
        /// Pid in the file now.
        to: u32,
    },
    /// The pid file is gone.
    PidGone {
        /// PM2 id.
        instance: u32,
        /// Pid watched.
        pid: u32,
    },
    /// The watched process no longer exists.
    Exited {
        /// PM2 id.
        instance: u32,
        /// Pid watched.
        pid: u32,
    },
    /// Instances disappeared from PM2's list.
    InstancesLeft {
        /// How many left.
        left: usize,
        /// How many there were.
        of: usize,
    },
}

impl Change {
    /// The PM2 id the change is about (0 for instances leaving the list).
    pub fn instance(&self) -> u32 {
        match self {
            Change::Status { instance, .. }
            | Change::Restarted { instance, .. }
            | Change::NewPid { instance, .. }
            | Change::RestartedAtStart { instance, .. }
            | Change::Replaced { instance, .. }
            | Change::PidGone { instance, .. }
            | Change::Exited { instance, .. } => *instance,
            Change::InstancesLeft { .. } => 0,
        }
    }
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Status {
                instance,
                status,
                restarts,
            } => write!(
                f,
                "PM2 status {status} (instance {instance}, {restarts} restarts)"
            ),
            Change::Restarted { instance, from, to } => write!(
                f,
                "PM2 restarted instance {instance} ({from} -> {to} restarts)"
            ),
            Change::NewPid { instance, from, to } => write!(
                f,
                "instance {instance} has a new pid (was {}, now {})",
                pid_text(*from),
                pid_text(*to)
            ),
            Change::RestartedAtStart { instance, count } => {
                write!(f, "PM2 restarted instance {instance} {count} time(s)")
            }
            Change::Replaced { instance, from, to } => {
                write!(f, "instance {instance} was replaced (pid {from} -> {to})")
            }
            Change::PidGone { instance, pid } => {
                write!(f, "instance {instance} stopped (pid {pid} gone)")
            }
            Change::Exited { instance, pid } => write!(f, "instance {instance} exited (pid {pid})"),
            Change::InstancesLeft { left, of } => write!(f, "{left} of {of} instances left PM2"),
        }
    }
}

fn pid_text(pid: Option<u32>) -> String {
    pid.map_or_else(|| "none".into(), |p| p.to_string())
}

/// Why a verification ended as it did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reason {
    /// Healthy by every rule.
    Healthy {
        /// Time to the first passing probe.
        ready_after_ms: u64,
        /// How long it then stayed healthy.
        stable_ms: u64,
        /// Instances online.
        instances: usize,
    },
    /// The app is not in PM2's list at all.
    NotRunning {
        /// The PM2 name looked for.
        app: String,
    },
    /// It died before it ever answered. `after_ms` is None when it was already seen at the
    /// first look.
    CrashedAtStart {
        /// When it was seen, after the start of verification.
        after_ms: Option<u64>,
        /// What PM2 showed.
        change: Change,
    },
    /// It answered, then died or was restarted.
    RestartedAfter {
        /// When it was seen, after the start of verification.
        after_ms: u64,
        /// How long after its first good answer.
        since_ready_ms: u64,
        /// What PM2 showed.
        change: Change,
    },
    /// It failed to load but did not exit (PM2 swallowed the error: an ESM entry that throws
    /// at import), and nothing listens: it never will.
    FailedToLoad {
        /// When it was decided, after the start of verification.
        after_ms: u64,
        /// PM2 id.
        instance: u32,
        /// The error line from the app's error log.
        error: String,
    },
    /// A running app (`health --wait`) is already in a bad state at the first look.
    Unstable {
        /// What PM2 showed.
        change: Change,
    },
    /// The health probe failed in a way that is the app's own answer.
    ProbeFailed {
        /// The failing probe.
        probe: ProbeOutcome,
        /// Set when it happened inside the stability window: ms after the first good answer.
        in_window_after_ms: Option<u64>,
    },
    /// No passing probe before the deadline.
    NeverHealthy {
        /// The deadline.
        deadline_ms: u64,
        /// The last probe, if any was sent.
        last_probe: Option<ProbeOutcome>,
    },
    /// SIGINT/SIGTERM arrived during verification.
    Interrupted {
        /// The signal.
        signal: i32,
    },
    /// pm2 could not even (re)start the app.
    RestartFailed {
        /// The error, one line.
        error: String,
    },
    /// After a restore: an instance runs that was not started after the files were put back.
    NotRestartedAfterRestore {
        /// PM2 id.
        instance: u32,
    },
    /// After a restore: the app folder no longer matches the snapshot.
    TreeDiffers {
        /// Some of the paths that differ, relative to app.dir.
        paths: Vec<String>,
        /// How many differ in all.
        count: usize,
    },
}

/// A runner error without its leading command line (`` `PM2_HOME=... pm2 start ...` failed
/// (exit 1): ... `` -> `pm2 failed (exit 1): ...`): the restart step shows the command line
/// already, and the verdict repeats it in every summary after it.
fn without_command_line(error: &str) -> String {
    if let Some(rest) = error.strip_prefix('`')
        && let Some((command, after)) = rest.split_once("` ")
    {
        let program = command
            .split_whitespace()
            .find(|w| !w.contains('='))
            .and_then(|p| p.rsplit('/').next())
            .unwrap_or("the command");
        return format!("{program} {after}");
    }
    error.to_string()
}

fn secs(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Healthy {
                ready_after_ms,
                stable_ms,
                instances,
            } => write!(
                f,
                "healthy: answered after {:.1}s, stable for {:.1}s, {instances} instance(s) online, no restarts",
                secs(*ready_after_ms),
                secs(*stable_ms)
            ),
            Reason::NotRunning { app } => write!(f, "app {app} is not running in PM2"),
            Reason::CrashedAtStart {
                after_ms: None,
                change,
            } => write!(f, "crashed at start: {change}"),
            Reason::CrashedAtStart {
                after_ms: Some(at),
                change,
            } => write!(
                f,
                "crashed at start ({:.1}s after the start): {change}",
                secs(*at)
            ),
            Reason::RestartedAfter {
                after_ms,
                since_ready_ms,
                change,
            } => write!(
                f,
                "restarted after {:.1}s ({:.1}s after it first answered): {change}",
                secs(*after_ms),
                secs(*since_ready_ms)
            ),
            Reason::FailedToLoad {
                after_ms,
                instance,
                error,
            } => write!(
                f,
                "failed to load ({:.1}s after the start): instance {instance} logged `{error}` and listens on nothing; PM2 keeps it online without restarting it",
                secs(*after_ms)
            ),
            Reason::Unstable { change } => write!(f, "{change}"),
            Reason::ProbeFailed {
                probe,
                in_window_after_ms: None,
            } => write!(f, "{probe}"),
            Reason::ProbeFailed {
                probe,
                in_window_after_ms: Some(ms),
            } => write!(
                f,
                "{probe} during the stability window ({:.1}s after it first answered)",
                secs(*ms)
            ),
            Reason::NeverHealthy {
                deadline_ms,
                last_probe,
            } => {
                write!(
                    f,
                    "never became healthy within {}",
                    humantime::format_duration(Duration::from_millis(*deadline_ms))
                )?;
                if let Some(p) = last_probe {
                    write!(f, " (last probe: {p})")?;
                }
                Ok(())
            }
            Reason::Interrupted { signal } => {
                write!(f, "interrupted by signal {signal} during verification")
            }
            Reason::RestartFailed { error } => {
                write!(f, "restart failed: {}", without_command_line(error))
            }
            Reason::NotRestartedAfterRestore { instance } => write!(
                f,
                "instance {instance} was not started after the restore: the restored files are not proven to run"
            ),
            Reason::TreeDiffers { paths, count } => write!(
                f,
                "app.dir no longer matches the restored snapshot ({count} path(s) differ: {}{}); if the app writes there at run time, list those paths in backup.exclude",
                paths.join(", "),
                if *count > paths.len() { ", ..." } else { "" }
            ),
        }
    }
}

/// The answer of a verification.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    /// Healthy by every rule.
    pub healthy: bool,
    /// Why, as data.
    pub reason: Reason,
    /// Why, in one line (rendered from `reason`).
    pub message: String,
    /// Time from the start of verification to the verdict.
    pub elapsed_ms: u64,
    /// Time to the first passing probe.
    pub ready_after_ms: Option<u64>,
    /// When the verdict was reached (ms since the epoch); RFC 3339 `decided_at` in JSON.
    #[serde(rename = "decided_at", serialize_with = "rfc3339")]
    pub decided_at_ms: i64,
    /// When the first probe passed (ms since the epoch); RFC 3339 `ready_at` in JSON.
    #[serde(rename = "ready_at", serialize_with = "rfc3339_opt")]
    pub ready_at_ms: Option<i64>,
    /// Probes sent.
    pub probes: u32,
    /// The last probe's outcome.
    pub last_probe: Option<ProbeOutcome>,
    /// The app's instances as last seen.
    pub instances: Vec<Instance>,
}

/// A time in ms since the epoch as RFC 3339 UTC with milliseconds: every time in guard's
/// JSON has this one form (and every duration is a number of milliseconds, `*_ms`).
pub fn rfc3339<S: serde::Serializer>(ms: &i64, s: S) -> Result<S::Ok, S::Error> {
    match jiff::Timestamp::from_millisecond(*ms) {
        Ok(t) => s.serialize_str(&format!("{t:.3}")),
        Err(_) => s.serialize_none(),
    }
}

/// [`rfc3339`] of an optional time.
pub fn rfc3339_opt<S: serde::Serializer>(ms: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
    match ms {
        Some(m) => rfc3339(m, s),
        None => s.serialize_none(),
    }
}

/// Milliseconds of a duration, saturating.
pub fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Verdict {
    /// A verdict reached `elapsed` into verification.
    pub fn new(reason: Reason, elapsed: Duration) -> Verdict {
        let healthy = matches!(reason, Reason::Healthy { .. });
        Verdict {
            healthy,
            message: reason.to_string(),
            reason,
            elapsed_ms: ms(elapsed),
            ready_after_ms: None,
            decided_at_ms: jiff::Timestamp::now().as_millisecond(),
            ready_at_ms: None,
            probes: 0,
            last_probe: None,
            instances: Vec::new(),
        }
    }

    /// How long verification took.
    pub fn elapsed(&self) -> Duration {
        Duration::from_millis(self.elapsed_ms)
    }

    /// Replace a healthy verdict with an unhealthy one for a reason found after it (a stale
    /// instance, a changed tree), keeping the observations.
    pub fn overrule(&mut self, reason: Reason) {
        self.healthy = false;
        self.message = reason.to_string();
        self.reason = reason;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_restart_is_said_once_without_the_command_line() {
        let r = Reason::RestartFailed {
            error: "`PM2_HOME=/root/.pm2 /usr/bin/pm2 start /srv/app/ecosystem.config.js --only api` failed (exit 1): [PM2][ERROR] Script not found".into(),
        };
        assert_eq!(
            r.to_string(),
            "restart failed: pm2 failed (exit 1): [PM2][ERROR] Script not found"
        );
    }

    #[test]
    fn reasons_say_when() {
        let change = Change::RestartedAtStart {
            instance: 0,
            count: 1,
        };
        let r = Reason::CrashedAtStart {
            after_ms: Some(300),
            change: change.clone(),
        };
        assert!(r.to_string().starts_with("crashed at start (0.3s"), "{r}");
        let r = Reason::RestartedAfter {
            after_ms: 1700,
            since_ready_ms: 1500,
            change,
        };
        assert!(
            r.to_string()
                .starts_with("restarted after 1.7s (1.5s after it first answered)"),
            "{r}"
        );
    }

    #[test]
    fn json_carries_the_kind_and_the_text() {
        let v = Verdict::new(
            Reason::ProbeFailed {
                probe: ProbeOutcome::Status(500),
                in_window_after_ms: None,
            },
            Duration::from_millis(1234),
        );
        let j = serde_json::to_value(&v).unwrap();
        assert_eq!(j["healthy"], false);
        assert_eq!(j["reason"]["kind"], "probe_failed");
        assert_eq!(j["reason"]["probe"]["http_status"], 500);
        assert_eq!(j["message"], "health 500");
        assert_eq!(j["elapsed_ms"], 1234);
    }

    #[test]
    fn only_a_healthy_reason_is_healthy_and_overrule_sticks() {
        let mut v = Verdict::new(
            Reason::Healthy {
                ready_after_ms: 1,
                stable_ms: 2,
                instances: 1,
            },
            Duration::ZERO,
        );
        assert!(v.healthy);
        v.overrule(Reason::NotRestartedAfterRestore { instance: 0 });
        assert!(!v.healthy);
        assert!(v.message.contains("not started after the restore"));
    }
}
