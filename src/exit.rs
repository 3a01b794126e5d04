//! Exit codes: the contract that deploy scripts and on-call people rely on.

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

    #[test]
    fn codes_are_the_documented_contract() {
        assert_eq!(ExitStatus::Success.code(), 0);
        assert_eq!(ExitStatus::Failure.code(), 1);
        assert_eq!(ExitStatus::Usage.code(), 2);
        assert_eq!(ExitStatus::RolledBack.code(), 3);
        assert_eq!(ExitStatus::NeedsHuman.code(), 4);
        assert_eq!(ExitStatus::LockHeld.code(), 5);
        assert_eq!(ExitStatus::Interrupted(2).code(), 130);
        assert_eq!(ExitStatus::Interrupted(15).code(), 143);
    }

    #[test]
    fn typed_errors_survive_added_context() {
        let err = Err::<(), _>(usage("bad id"))
            .context("rolling back")
            .unwrap_err();
        assert_eq!(status_of(&err), ExitStatus::Usage);
        let err = anyhow::anyhow!("disk full").context("writing");
        assert_eq!(status_of(&err), ExitStatus::Failure);
        let err: anyhow::Error = TypedError::LockHeld("held".into()).into();
        assert_eq!(status_of(&err), ExitStatus::LockHeld);
    }
}
