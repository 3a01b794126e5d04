//! Exit codes: the contract that deploy scripts and on-call people rely on, and the one pure
//! function that decides which code a run ends with.

use std::fmt;

/// How guard ends. The numbers are documented in the README and `--help`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitStatus {
    /// Everything asked for was done and verified.
    Success,
    /// A step failed, the app is unhealthy, or `clean --check` found artifacts.
    Failure,
    /// Bad flags, config or incident: nothing was changed.
    Usage,
    /// The deploy failed and was rolled back; the previous version is verified healthy.
    RolledBack,
    /// The service is not verified healthy: a human must act.
    NeedsHuman,
    /// Another guard run holds the lock for this app.
    LockHeld,
    /// Stopped by a signal (130 for SIGINT, 143 for SIGTERM).
    Interrupted(i32),
}

impl ExitStatus {
    /// The process exit code.
    pub fn code(self) -> i32 {
        match self {
            ExitStatus::Success => 0,
            ExitStatus::Failure => 1,
            ExitStatus::Usage => 2,
            ExitStatus::RolledBack => 3,
            ExitStatus::NeedsHuman => 4,
            ExitStatus::LockHeld => 5,
            ExitStatus::Interrupted(signal) => 128 + signal,
        }
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let word = match self {
            ExitStatus::Success => "success",
            ExitStatus::Failure => "failed",
            ExitStatus::Usage => "usage error",
            ExitStatus::RolledBack => "rolled back",
            ExitStatus::NeedsHuman => "needs a human",
            ExitStatus::LockHeld => "lock held",
            ExitStatus::Interrupted(_) => "interrupted",
        };
        f.write_str(word)
    }
}

/// How a command ended: what happened (which decides the exit code) and one line for the
/// operator.
pub struct Done {
    /// What happened.
    pub happened: Happened,
    /// One line for the operator.
    pub summary: String,
}

impl Done {
    /// Shorthand.
    pub fn new(happened: Happened, summary: impl Into<String>) -> Done {
        Done {
            happened,
            summary: summary.into(),
        }
    }
}

/// What happened in a run, as far as the exit code cares. Commands report one of these and
/// [`decide`] turns it into the code; no command picks a number itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Happened {
    /// What was asked for is done and, where it changed something, verified healthy.
    Done,
    /// A read-only check found a problem (unhealthy app, artifacts present); nothing changed.
    CheckFailed,
    /// A change failed and what ran before was put back. `healthy` is whether the previous
    /// version was then proven healthy; `signal` is set when a signal caused the failure.
    PutBack {
        /// The previous version answers healthy again, by the verification rules.
        healthy: bool,
        /// The SIGINT/SIGTERM that stopped the run, if one did.
        signal: Option<i32>,
    },
    /// Something was changed and is not verified healthy: a failure left as is
    /// (`--no-rollback`), an error part-way, or a rollback that did not verify.
    LeftUnverified,
    /// Stopped by a signal before anything was changed.
    StoppedUnchanged {
        /// The signal.
        signal: i32,
    },
}

/// The exit status of a run from what happened: the whole exit-code contract in one place.
pub fn decide(happened: Happened) -> ExitStatus {
    match happened {
        Happened::Done => ExitStatus::Success,
        Happened::CheckFailed => ExitStatus::Failure,
        Happened::PutBack {
            healthy: true,
            signal: Some(sig),
        } => ExitStatus::Interrupted(sig),
        Happened::PutBack {
            healthy: true,
            signal: None,
        } => ExitStatus::RolledBack,
        Happened::PutBack { healthy: false, .. } | Happened::LeftUnverified => {
            ExitStatus::NeedsHuman
        }
        Happened::StoppedUnchanged { signal } => ExitStatus::Interrupted(signal),
    }
}

/// An error whose exit code is not 1: bad input (2) or a held lock (5).
#[derive(Debug, thiserror::Error)]
pub enum TypedError {
    /// Bad flags, config, incident id or incident contents; nothing was changed.
    #[error("{0}")]
    Usage(String),
    /// Another run holds the app's lock.
    #[error("{0}")]
    LockHeld(String),
}

/// Shorthand for a usage error (exit 2) as an `anyhow::Error`.
pub fn usage(msg: impl Into<String>) -> anyhow::Error {
    TypedError::Usage(msg.into()).into()
}

/// The exit status an error maps to: the first typed error in its chain wins.
pub fn status_of(err: &anyhow::Error) -> ExitStatus {
    for cause in err.chain() {
        match cause.downcast_ref::<TypedError>() {
            Some(TypedError::Usage(_)) => return ExitStatus::Usage,
            Some(TypedError::LockHeld(_)) => return ExitStatus::LockHeld,
            None => {}
        }
    }
    ExitStatus::Failure
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    /// One row per line of the README's exit-code table.
    #[test]
    fn every_row_of_the_exit_code_table() {
        let sigint = libc::SIGINT;
        let sigterm = libc::SIGTERM;
        let rows: [(Happened, i32); 9] = [
            // 0: success, verified
            (Happened::Done, 0),
            // 1: failed (unhealthy, artifacts found, a step failed) without a change
            (Happened::CheckFailed, 1),
            // 3: deploy failed and the previous version is verified healthy
            (
                Happened::PutBack {
                    healthy: true,
                    signal: None,
                },
                3,
            ),
            // 4: put back but not healthy
            (
                Happened::PutBack {
                    healthy: false,
                    signal: None,
                },
                4,
            ),
            // 4: even when a signal caused it
            (
                Happened::PutBack {
                    healthy: false,
                    signal: Some(sigterm),
                },
                4,
            ),
            // 4: left as is (--no-rollback), an error part-way, an unverified rollback
            (Happened::LeftUnverified, 4),
            // 130 / 143: stopped by a signal after putting things back healthy
            (
                Happened::PutBack {
                    healthy: true,
                    signal: Some(sigint),
                },
                130,
            ),
            (
                Happened::PutBack {
                    healthy: true,
                    signal: Some(sigterm),
                },
                143,
            ),
            // 130: stopped before anything changed
            (Happened::StoppedUnchanged { signal: sigint }, 130),
        ];
        for (happened, code) in rows {
            assert_eq!(decide(happened).code(), code, "{happened:?}");
        }
    }

    /// Rows 2 and 5 come from typed errors, whatever context is added on the way up.
    #[test]
    fn usage_and_lock_rows_come_from_typed_errors() {
        let err = Err::<(), _>(usage("bad id"))
            .context("rolling back")
            .unwrap_err();
        assert_eq!(status_of(&err).code(), 2);
        let err: anyhow::Error = TypedError::LockHeld("held".into()).into();
        assert_eq!(status_of(&err.context("deploying")).code(), 5);
        let err = anyhow::anyhow!("disk full").context("writing");
        assert_eq!(status_of(&err).code(), 1);
    }

    #[test]
    fn never_success_after_a_put_back() {
        for healthy in [true, false] {
            for signal in [None, Some(libc::SIGINT), Some(libc::SIGTERM)] {
                assert_ne!(
                    decide(Happened::PutBack { healthy, signal }),
                    ExitStatus::Success
                );
            }
        }
    }
}
