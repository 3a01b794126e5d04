//! The watcher's rules around guard's own runs and about rolling back, without the loop's
//! I/O: quiet while a deploy or rollback holds the app's lock, a new baseline once it ends,
//! and at most one automatic rollback per deploy, only while that deploy is young.

use std::time::Duration;

/// The deploy an automatic rollback would undo: its pre-deploy incident and when it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The incident taken before that deploy.
    pub incident: String,
    /// When the deploy ended.
    pub at: jiff::Timestamp,
}

/// What a tick does, given whether a guard run holds the lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockStep {
    /// A run just took it: from now on observe nothing (what it does is not a crash).
    Pause,
    /// A run still holds it.
    Quiet,
    /// The run just ended: take a new baseline, counting as new only the processes started
    /// after `since_ms` (ms since the epoch).
    Resume {
        /// A second before the run was first seen, so a process it started just then counts.
        since_ms: i64,
    },
    /// No run: watch as usual.
    Watch,
}

/// The watcher's state of those rules.
#[derive(Debug)]
pub struct Policy {
    paused: bool,
    paused_at_ms: i64,
    within: Option<Duration>,
    target: Option<Target>,
}

impl Policy {
    /// Rules with `rollback_within` (None: never roll back), starting `locked` or not.
    pub fn new(locked: bool, now_ms: i64, within: Option<Duration>) -> Policy {
        Policy {
            paused: locked,
            paused_at_ms: now_ms,
            within,
            target: None,
        }
    }

    /// Whether the watcher is quiet now.
    pub fn paused(&self) -> bool {
        self.paused
    }

    /// A tick saw the lock `locked` at `now_ms`.
    pub fn on_lock(&mut self, locked: bool, now_ms: i64) -> LockStep {
        match (locked, self.paused) {
            (true, false) => {
                self.paused = true;
                self.paused_at_ms = now_ms - 1000;
                LockStep::Pause
            }
            (true, true) => LockStep::Quiet,
            (false, true) => {
                self.paused = false;
                LockStep::Resume {
                    since_ms: self.paused_at_ms,
                }
            }
            (false, false) => LockStep::Watch,
        }
    }

    /// The deploy to undo from now on (read again after every guard run).
    pub fn set_target(&mut self, target: Option<Target>) {
        self.target = target;
    }

    /// The incident a rollback would restore, for alerts.
    pub fn target_incident(&self) -> Option<&str> {
        self.target.as_ref().map(|t| t.incident.as_str())
    }

    /// Whether to roll back now, when the monitor `wants` it: only with `rollback_within` set,
    /// a deploy to undo, and that deploy no older than it. The deploy is used up either way:
    /// one attempt per deploy, whatever it comes to.
    pub fn rollback_now(
        &mut self,
        wants: bool,
        now: jiff::Timestamp,
    ) -> Option<(Target, Duration)> {
        let within = self.within?;
        if !wants {
            return None;
        }
        let t = self.target.take()?;
        let age = Duration::try_from(now.duration_since(t.at)).unwrap_or_default();
        (age <= within).then_some((t, age))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> jiff::Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn a_run_holding_the_lock_quiets_the_watcher_and_its_end_resumes_it_once() {
        let mut p = Policy::new(false, 0, None);
        assert_eq!(p.on_lock(false, 10_000), LockStep::Watch);
        assert_eq!(p.on_lock(true, 20_000), LockStep::Pause);
        assert!(p.paused());
        assert_eq!(p.on_lock(true, 30_000), LockStep::Quiet);
        // Processes the run started count from a second before it was first seen.
        assert_eq!(
            p.on_lock(false, 40_000),
            LockStep::Resume { since_ms: 19_000 }
        );
        assert_eq!(p.on_lock(false, 41_000), LockStep::Watch);
        // Started while a run held the lock: resumes from the start.
        let mut p = Policy::new(true, 5_000, None);
        assert_eq!(
            p.on_lock(false, 9_000),
            LockStep::Resume { since_ms: 5_000 }
        );
    }

    #[test]
    fn one_rollback_per_young_deploy_and_none_without_rollback_within() {
        let deploy = Target {
            incident: "20261202-100000".into(),
            at: at("2026-12-02T10:00:00Z"),
        };
        let mut p = Policy::new(false, 0, Some(Duration::from_secs(600)));
        assert_eq!(
            p.rollback_now(true, at("2026-12-02T10:01:00Z")),
            None,
            "no deploy"
        );
        p.set_target(Some(deploy.clone()));
        assert_eq!(p.target_incident(), Some("20261202-100000"));
        assert_eq!(
            p.rollback_now(false, at("2026-12-02T10:01:00Z")),
            None,
            "not wanted"
        );
        assert_eq!(
            p.rollback_now(true, at("2026-12-02T10:01:00Z")),
            Some((deploy.clone(), Duration::from_secs(60)))
        );
        assert_eq!(
            p.rollback_now(true, at("2026-12-02T10:02:00Z")),
            None,
            "used up"
        );
        // Too old: no rollback, and the deploy is used up all the same.
        p.set_target(Some(deploy.clone()));
        assert_eq!(p.rollback_now(true, at("2026-12-02T10:11:00Z")), None);
        assert_eq!(p.target_incident(), None);
        // Without rollback_within: never, and the deploy stays named for alerts.
        let mut p = Policy::new(false, 0, None);
        p.set_target(Some(deploy));
        assert_eq!(p.rollback_now(true, at("2026-12-02T10:01:00Z")), None);
        assert_eq!(p.target_incident(), Some("20261202-100000"));
    }
}
