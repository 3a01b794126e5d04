//! The deploy verification rules as a state machine: it is fed observations (probe results, pid-file
//! changes, PM2's process list, the passing of time) and answers with what the driver should
//! do next or with a verdict. It does no I/O and reads no clock, so every rule is unit-tested
//! without PM2; `verify` drives it for one deploy, and a long-running watcher can drive the
//! same rules.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::pm2::Instance;
use crate::probe::ProbeOutcome;
use crate::verdict::{Change, Reason, Verdict, ms};

/// How long a load error must stand, with nothing listening, before it is a verdict.
pub const LOAD_ERROR_GRACE: Duration = Duration::from_millis(750);

/// Whether the app was just (re)started by guard, so any restart at all is a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Just started by delete+start: PM2's restart counter must be 0.
    Fresh,
    /// Already running (`guard health --wait`): counters are taken as they are.
    Existing,
}

/// The limits a verification works to.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    /// Limit for the first passing probe.
    pub deadline: Duration,
    /// How long it must then stay healthy.
    pub stable_for: Duration,
    /// Fresh start or existing app.
    pub start: Start,
    /// Timed-out probes in a row before a timeout counts as a failure.
    pub timeouts_in_a_row: u32,
    /// Whether a load error with nothing listening is a verdict.
    pub load_errors: bool,
}

/// One instance as first seen: the baseline every later observation is compared with.
#[derive(Debug, Clone)]
pub struct Baseline {
    /// PM2 id.
    pub pm_id: u32,
    /// OS pid, once known.
    pub pid: Option<u32>,
    /// PM2's pid file for it, once known.
    pub pid_path: Option<PathBuf>,
    /// Restart counter at the baseline.
    pub restarts: u64,
}

/// What the driver should do after an observation.
#[derive(Debug, PartialEq)]
pub enum Next {
    /// Keep watching.
    Continue,
    /// The probe timed out, fewer times in a row than the rules allow: probe again at once
    /// (one slow answer on a loaded host is not a verdict).
    ProbeAgain,
    /// The probe says the app is failing: look at the pid files (a dying process shows there
    /// first), then call [`Verification::crashed`] with a change found, or [`Verification::fail`] with this
    /// reason.
    Suspect(Reason),
    /// A pid file shows a crash: ask PM2 once for the exact state and call [`Verification::crashed`].
    Confirm(Change),
    /// The window has passed: take PM2's list and the pid files once more and call
    /// [`Verification::finish`].
    Finish,
    /// Decided.
    Verdict(Box<Verdict>),
}

/// The verification state of one run.
#[derive(Debug)]
pub struct Verification {
    rules: Rules,
    t0_wall_ms: i64,
    ready_at: Option<Duration>,
    watched: BTreeMap<u32, Baseline>,
    probes: u32,
    passed: u32,
    timeouts: u32,
    load_error_since: Option<Duration>,
    last: Option<ProbeOutcome>,
    instances: Vec<Instance>,
}

/// Where a verification stands, for the progress line of a long wait.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    /// In the stability window (else waiting for the first passing probe).
    pub stable: bool,
    /// Time left in the current phase.
    pub left: Duration,
    /// The phase's whole length (deadline or stable_for).
    pub window: Duration,
    /// Probes that passed so far.
    pub probes_passed: u32,
}

impl std::fmt::Display for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = |d: Duration| format!("{:.0}s", d.as_secs_f64().ceil());
        if self.stable {
            write!(
                f,
                "healthy, stable window: {} of {} left, {} probe(s) passed, no restart so far",
                secs(self.left),
                secs(self.window),
                self.probes_passed
            )
        } else {
            write!(
                f,
                "waiting for a first healthy answer: {} of {} left",
                secs(self.left),
                secs(self.window)
            )
        }
    }
}

/// What changed for one instance against its baseline, if anything.
pub fn instance_problem(inst: &Instance, base: Option<&Baseline>, start: Start) -> Option<Change> {
    if !inst.is_up() {
        return Some(Change::Status {
            instance: inst.pm_id,
            status: inst.status.clone(),
            restarts: inst.restarts,
        });
    }
    match base {
        Some(b) if inst.restarts > b.restarts => Some(Change::Restarted {
            instance: inst.pm_id,
            from: b.restarts,
            to: inst.restarts,
        }),
        Some(b) if b.pid.is_some() && inst.pid != b.pid => Some(Change::NewPid {
            instance: inst.pm_id,
            from: b.pid,
            to: inst.pid,
        }),
        None if start == Start::Fresh && inst.restarts > 0 => Some(Change::RestartedAtStart {
            instance: inst.pm_id,
            count: inst.restarts,
        }),
        _ => None,
    }
}

impl Verification {
    /// Start watching these instances, first seen at time zero (`t0_wall_ms` on the wall
    /// clock). An app that is not running, or already failing, is a verdict at once.
    pub fn begin(
        instances: Vec<Instance>,
        rules: Rules,
        app: &str,
        t0_wall_ms: i64,
    ) -> Result<Verification, Box<Verdict>> {
        let watch = Verification {
            rules,
            t0_wall_ms,
            ready_at: None,
            watched: instances
                .iter()
                .map(|i| {
                    (
                        i.pm_id,
                        Baseline {
                            pm_id: i.pm_id,
                            pid: i.pid,
                            pid_path: i.pid_path.clone(),
                            restarts: i.restarts,
                        },
                    )
                })
                .collect(),
            probes: 0,
            passed: 0,
            timeouts: 0,
            load_error_since: None,
            last: None,
            instances,
        };
        if watch.instances.is_empty() {
            return Err(watch.verdict(
                Reason::NotRunning {
                    app: app.to_string(),
                },
                Duration::ZERO,
            ));
        }
        if let Some(change) = watch
            .instances
            .iter()
            .find_map(|i| instance_problem(i, None, rules.start))
        {
            let reason = match rules.start {
                Start::Fresh => Reason::CrashedAtStart {
                    after_ms: None,
                    change,
                },
                Start::Existing => Reason::Unstable { change },
            };
            return Err(watch.verdict(reason, Duration::ZERO));
        }
        Ok(watch)
    }

    /// The baselines, for the driver's pid-file reads.
    pub fn baselines(&self) -> impl Iterator<Item = &Baseline> {
        self.watched.values()
    }

    /// When the next time-based decision is due: the deadline before the first pass, the end
    /// of the stability window after it.
    pub fn due(&self) -> Duration {
        match self.ready_at {
            None => self.rules.deadline,
            Some(r) => r + self.rules.stable_for,
        }
    }

    /// A probe came back at `now`.
    pub fn on_probe(&mut self, outcome: ProbeOutcome, now: Duration) -> Next {
        self.probes += 1;
        self.last = Some(outcome.clone());
        if matches!(outcome, ProbeOutcome::TimedOut(_)) {
            self.timeouts += 1;
            if self.timeouts < self.rules.timeouts_in_a_row {
                return Next::ProbeAgain;
            }
        } else {
            self.timeouts = 0;
        }
        if outcome.passed() {
            self.passed += 1;
            if self.ready_at.is_none() {
                self.ready_at = Some(now);
                if self.rules.stable_for.is_zero() {
                    return Next::Finish;
                }
            }
            return Next::Continue;
        }
        match self.ready_at {
            Some(r) => Next::Suspect(Reason::ProbeFailed {
                probe: outcome,
                in_window_after_ms: Some(ms(now.saturating_sub(r))),
            }),
            // Before the first pass, "refused" and 503 mean "not up yet".
            None if outcome.is_definite_failure() => Next::Suspect(Reason::ProbeFailed {
                probe: outcome,
                in_window_after_ms: None,
            }),
            None => Next::Continue,
        }
    }

    /// The error log was read: `seen` is a load error (instance, error line) while nothing
    /// listens, if any. Before the first passing probe such an error that lasts
    /// [`LOAD_ERROR_GRACE`] is a verdict: the grace lets a process that is exiting be named
    /// as the crash it is by the pid files.
    pub fn on_load_error(&mut self, seen: Option<(u32, String)>, now: Duration) -> Next {
        let Some((instance, error)) =
            seen.filter(|_| self.ready_at.is_none() && self.rules.load_errors)
        else {
            self.load_error_since = None;
            return Next::Continue;
        };
        let since = *self.load_error_since.get_or_insert(now);
        if now.saturating_sub(since) < LOAD_ERROR_GRACE {
            return Next::Continue;
        }
        let reason = Reason::FailedToLoad {
            after_ms: ms(now),
            instance,
            error,
        };
        Next::Verdict(self.verdict(reason, now))
    }

    /// The pid files were read: `change` is what they show, if anything.
    pub fn on_pids(&mut self, change: Option<Change>) -> Next {
        match change {
            Some(c) => Next::Confirm(c),
            None => Next::Continue,
        }
    }

    /// PM2's list arrived (the periodic check).
    pub fn on_jlist(&mut self, instances: Vec<Instance>, now: Duration) -> Next {
        if let Some(change) = self.check_all(&instances) {
            self.instances = instances;
            let reason = self.crash_reason(now, change);
            return Next::Verdict(self.verdict(reason, now));
        }
        // Pid files may only appear once PM2 has started the process: pick them up.
        for i in &instances {
            if let Some(w) = self.watched.get_mut(&i.pm_id) {
                if w.pid.is_none() {
                    w.pid = i.pid;
                }
                if w.pid_path.is_none() {
                    w.pid_path.clone_from(&i.pid_path);
                }
            }
        }
        self.instances = instances;
        Next::Continue
    }

    /// The time from [`Verification::due`] has come.
    pub fn on_due(&mut self, now: Duration) -> Next {
        if self.ready_at.is_some() {
            return Next::Finish;
        }
        let reason = Reason::NeverHealthy {
            deadline_ms: ms(self.rules.deadline),
            last_probe: self.last.clone(),
        };
        Next::Verdict(self.verdict(reason, now))
    }

    /// A crash seen in the pid files `seen_at`, with PM2's list asked once more for the exact
    /// state (`None` when that call failed: the pid change is proof enough).
    pub fn crashed(
        &mut self,
        change: Change,
        seen_at: Duration,
        confirmed: Option<Vec<Instance>>,
    ) -> Box<Verdict> {
        let detail = confirmed
            .iter()
            .flatten()
            .find_map(|i| instance_problem(i, self.watched.get(&i.pm_id), self.rules.start))
            .unwrap_or(change);
        if let Some(now) = confirmed {
            self.instances = now;
        }
        let reason = self.crash_reason(seen_at, detail);
        self.verdict(reason, seen_at)
    }

    /// Where the verification stands at `now`, for a progress line.
    pub fn progress(&self, now: Duration) -> Progress {
        let (stable, left) = match self.ready_at {
            None => (false, self.rules.deadline.saturating_sub(now)),
            Some(r) => (true, (r + self.rules.stable_for).saturating_sub(now)),
        };
        Progress {
            stable,
            left,
            window: if stable {
                self.rules.stable_for
            } else {
                self.rules.deadline
            },
            probes_passed: self.passed,
        }
    }

    /// A failure that is not a crash (the probe's own answer).
    pub fn fail(&self, reason: Reason, now: Duration) -> Box<Verdict> {
        self.verdict(reason, now)
    }

    /// Stopped by a signal.
    pub fn interrupted(&self, signal: i32, now: Duration) -> Box<Verdict> {
        self.verdict(Reason::Interrupted { signal }, now)
    }

    /// The final look at the end of the window: PM2's list and the pid files.
    pub fn finish(
        &mut self,
        instances: Vec<Instance>,
        pid_change: Option<Change>,
        now: Duration,
    ) -> Box<Verdict> {
        let problem = self.check_all(&instances).or(pid_change);
        self.instances = instances;
        let reason = match problem {
            Some(change) => self.crash_reason(now, change),
            None => {
                let ready = self.ready_at.unwrap_or_default();
                Reason::Healthy {
                    ready_after_ms: ms(ready),
                    stable_ms: ms(now.saturating_sub(ready)),
                    instances: self.instances.len(),
                }
            }
        };
        self.verdict(reason, now)
    }

    fn check_all(&self, instances: &[Instance]) -> Option<Change> {
        if instances.len() < self.watched.len() {
            return Some(Change::InstancesLeft {
                left: self.watched.len() - instances.len(),
                of: self.watched.len(),
            });
        }
        instances
            .iter()
            .find_map(|i| instance_problem(i, self.watched.get(&i.pm_id), self.rules.start))
    }

    fn crash_reason(&self, at: Duration, change: Change) -> Reason {
        match self.ready_at {
            None => Reason::CrashedAtStart {
                after_ms: Some(ms(at)),
                change,
            },
            Some(r) => Reason::RestartedAfter {
                after_ms: ms(at),
                since_ready_ms: ms(at.saturating_sub(r)),
                change,
            },
        }
    }

    fn verdict(&self, reason: Reason, now: Duration) -> Box<Verdict> {
        let mut v = Verdict::new(reason, now);
        v.ready_after_ms = self.ready_at.map(ms);
        v.decided_at_ms = self.t0_wall_ms + i64::try_from(ms(now)).unwrap_or(0);
        v.ready_at_ms = self
            .ready_at
            .map(|r| self.t0_wall_ms + i64::try_from(ms(r)).unwrap_or(0));
        v.probes = self.probes;
        v.last_probe = self.last.clone();
        v.instances = self.instances.clone();
        Box::new(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(status: &str, pid: Option<u32>, restarts: u64) -> Instance {
        Instance {
            name: "api".into(),
            pm_id: 0,
            pid,
            status: status.into(),
            restarts,
            unstable_restarts: 0,
            started_at_ms: None,
            pid_path: None,
            out_log: None,
            err_log: None,
            exec_path: None,
            exec_mode: None,
            created_at_ms: None,
            running: Default::default(),
        }
    }

    const FRESH: Rules = Rules {
        deadline: Duration::from_secs(20),
        stable_for: Duration::from_secs(5),
        start: Start::Fresh,
        timeouts_in_a_row: 3,
        load_errors: true,
    };

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn verdict(next: Next) -> Verdict {
        match next {
            Next::Verdict(v) => *v,
            other => panic!("expected a verdict, got {other:?}"),
        }
    }

    #[test]
    fn any_restart_after_a_fresh_start_is_a_problem() {
        assert!(instance_problem(&inst("online", Some(1), 0), None, Start::Fresh).is_none());
        assert!(instance_problem(&inst("online", Some(1), 1), None, Start::Fresh).is_some());
        assert!(instance_problem(&inst("online", Some(1), 7), None, Start::Existing).is_none());
        assert!(instance_problem(&inst("errored", None, 3), None, Start::Existing).is_some());
        assert!(instance_problem(&inst("stopped", None, 0), None, Start::Existing).is_some());
    }

    #[test]
    fn counter_or_pid_changes_against_the_baseline_are_problems() {
        let base = Baseline {
            pm_id: 0,
            pid: Some(10),
            pid_path: None,
            restarts: 2,
        };
        let same = inst("online", Some(10), 2);
        assert!(instance_problem(&same, Some(&base), Start::Existing).is_none());
        assert_eq!(
            instance_problem(&inst("online", Some(10), 3), Some(&base), Start::Existing),
            Some(Change::Restarted {
                instance: 0,
                from: 2,
                to: 3
            })
        );
        assert!(matches!(
            instance_problem(&inst("online", Some(11), 2), Some(&base), Start::Existing),
            Some(Change::NewPid { .. })
        ));
    }

    #[test]
    fn not_running_or_already_restarted_is_decided_at_once() {
        let v = *Verification::begin(vec![], FRESH, "api", 0).unwrap_err();
        assert!(matches!(v.reason, Reason::NotRunning { .. }));
        let v =
            *Verification::begin(vec![inst("online", Some(1), 1)], FRESH, "api", 0).unwrap_err();
        assert!(matches!(
            v.reason,
            Reason::CrashedAtStart { after_ms: None, .. }
        ));
    }

    #[test]
    fn healthy_needs_a_pass_then_the_whole_window() {
        let mut w =
            Verification::begin(vec![inst("online", Some(1), 0)], FRESH, "api", 1000).unwrap();
        assert_eq!(w.due(), s(20));
        assert_eq!(
            w.on_probe(
                ProbeOutcome::NotListening("connection refused".into()),
                s(1)
            ),
            Next::Continue,
            "refused before the first pass means not up yet"
        );
        assert_eq!(w.on_probe(ProbeOutcome::NotReady, s(1)), Next::Continue);
        assert_eq!(w.on_probe(ProbeOutcome::Pass(200), s(2)), Next::Continue);
        assert_eq!(w.due(), s(7), "ready at 2 s + stable_for 5 s");
        assert_eq!(w.on_due(s(7)), Next::Finish);
        let v = w.finish(vec![inst("online", Some(1), 0)], None, s(7));
        assert!(v.healthy);
        assert_eq!(
            v.reason,
            Reason::Healthy {
                ready_after_ms: 2000,
                stable_ms: 5000,
                instances: 1
            }
        );
        assert_eq!(v.ready_at_ms, Some(3000));
        assert_eq!(v.probes, 3);
    }

    #[test]
    fn a_failing_probe_before_ready_fails_only_when_it_is_the_apps_answer() {
        let mut w = Verification::begin(vec![inst("online", Some(1), 0)], FRESH, "api", 0).unwrap();
        match w.on_probe(ProbeOutcome::Status(500), s(1)) {
            Next::Suspect(r) => {
                let v = w.fail(r, s(1));
                assert_eq!(v.message, "health 500");
                assert!(!v.healthy);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn any_failure_inside_the_window_is_suspect() {
        let mut w = Verification::begin(vec![inst("online", Some(1), 0)], FRESH, "api", 0).unwrap();
        w.on_probe(ProbeOutcome::Pass(200), s(1));
        let next = w.on_probe(
            ProbeOutcome::NotListening("connection refused".into()),
            s(3),
        );
        assert!(matches!(
            next,
            Next::Suspect(Reason::ProbeFailed {
                in_window_after_ms: Some(2000),
                ..
            })
        ));
    }

    #[test]
    fn a_crash_names_when_it_happened_and_what_pm2_says() {
        let mut w = Verification::begin(vec![inst("online", Some(1), 0)], FRESH, "api", 0).unwrap();
        let gone = Change::PidGone {
            instance: 0,
            pid: 1,
        };
        assert_eq!(w.on_pids(Some(gone.clone())), Next::Confirm(gone.clone()));
        // PM2 confirms: restarted once.
        let v = w.crashed(gone.clone(), s(1), Some(vec![inst("online", Some(2), 1)]));
        assert_eq!(
            v.reason,
            Reason::CrashedAtStart {
                after_ms: Some(1000),
                change: Change::Restarted {
                    instance: 0,
                    from: 0,
                    to: 1
                }
            }
        );
        // After a pass it is "restarted after", and without PM2's answer the pid change stands.
        let mut w = Verification::begin(vec![inst("online", Some(1), 0)], FRESH, "api", 0).unwrap();
        w.on_probe(ProbeOutcome::Pass(200), s(1));
        let v = w.crashed(gone.clone(), s(3), None);
        assert_eq!(
            v.reason,
            Reason::RestartedAfter {
                after_ms: 3000,
                since_ready_ms: 2000,
                change: gone
            }
        );
    }

    #[test]
    fn the_periodic_list_catches_errored_and_vanished_instances() {
        let mut w = Verification::begin(vec![inst("online", Some(1), 0)], FRESH, "api", 0).unwrap();
        let v = verdict(w.on_jlist(vec![inst("errored", None, 3)], s(3)));
        assert!(matches!(
            v.reason,
            Reason::CrashedAtStart {
                change: Change::Status { .. },
                ..
            }
        ));
        let mut w = Verification::begin(vec![inst("online", Some(1), 0)], FRESH, "api", 0).unwrap();
        let v = verdict(w.on_jlist(vec![], s(3)));
        assert!(matches!(
            v.reason,
            Reason::CrashedAtStart {
                change: Change::InstancesLeft { left: 1, of: 1 },
                ..
            }
        ));
    }

    #[test]
    fn the_deadline_without_a_pass_names_the_last_probe() {
        let mut w = Verification::begin(vec![inst("online", Some(1), 0)], FRESH, "api", 0).unwrap();
        w.on_probe(ProbeOutcome::NotReady, s(19));
        let v = verdict(w.on_due(s(20)));
        assert!(
            v.message
                .starts_with("never became healthy within 20s (last probe: HTTP 503"),
            "{}",
            v.message
        );
    }

    #[test]
    fn a_timed_out_probe_is_retried_and_fails_only_that_many_times_in_a_row() {
        let slow = || ProbeOutcome::TimedOut(Duration::from_secs(1));
        let mut w = Verification::begin(vec![inst("online", Some(1), 0)], FRESH, "api", 0).unwrap();
        w.on_probe(ProbeOutcome::Pass(200), s(1));
        assert_eq!(w.on_probe(slow(), s(2)), Next::ProbeAgain);
        assert_eq!(w.on_probe(slow(), s(3)), Next::ProbeAgain);
        // An answer in between starts the count again.
        assert_eq!(w.on_probe(ProbeOutcome::Pass(200), s(3)), Next::Continue);
        assert_eq!(w.on_probe(slow(), s(4)), Next::ProbeAgain);
        assert_eq!(w.on_probe(slow(), s(5)), Next::ProbeAgain);
        assert!(matches!(
            w.on_probe(slow(), s(6)),
            Next::Suspect(Reason::ProbeFailed { .. })
        ));
        // A failing status is never retried, and one timeout fails when the rules say 1.
        let mut w = Verification::begin(vec![inst("online", Some(1), 0)], FRESH, "api", 0).unwrap();
        w.on_probe(ProbeOutcome::Pass(200), s(1));
        assert!(matches!(
            w.on_probe(ProbeOutcome::Status(500), s(2)),
            Next::Suspect(_)
        ));
        let once = Rules {
            timeouts_in_a_row: 1,
            ..FRESH
        };
        let mut w = Verification::begin(vec![inst("online", Some(1), 0)], once, "api", 0).unwrap();
        assert!(matches!(w.on_probe(slow(), s(1)), Next::Suspect(_)));
    }

    #[test]
    fn a_load_error_with_nothing_listening_fails_after_the_grace_but_not_once_it_answered() {
        let err = || Some((0, "Error: boom".to_string()));
        let mut w = Verification::begin(vec![inst("online", Some(1), 0)], FRESH, "api", 0).unwrap();
        assert_eq!(
            w.on_load_error(err(), Duration::from_millis(300)),
            Next::Continue
        );
        // It listens now (or the error is gone): the clock starts again.
        assert_eq!(
            w.on_load_error(None, Duration::from_millis(600)),
            Next::Continue
        );
        assert_eq!(
            w.on_load_error(err(), Duration::from_millis(900)),
            Next::Continue
        );
        let v = verdict(w.on_load_error(err(), Duration::from_millis(1700)));
        assert!(!v.healthy);
        assert!(matches!(
            v.reason,
            Reason::FailedToLoad {
                after_ms: 1700,
                instance: 0,
                ..
            }
        ));
        assert!(v.message.contains("Error: boom"), "{}", v.message);
        // An app that answered is judged by its answers, not by what it logged.
        let mut w = Verification::begin(vec![inst("online", Some(1), 0)], FRESH, "api", 0).unwrap();
        w.on_probe(ProbeOutcome::Pass(200), s(1));
        assert_eq!(w.on_load_error(err(), s(2)), Next::Continue);
        assert_eq!(w.on_load_error(err(), s(4)), Next::Continue);
    }

    #[test]
    fn zero_stable_for_finishes_at_the_first_pass() {
        let rules = Rules {
            stable_for: Duration::ZERO,
            ..FRESH
        };
        let mut w = Verification::begin(vec![inst("online", Some(1), 0)], rules, "api", 0).unwrap();
        assert_eq!(w.on_probe(ProbeOutcome::Pass(200), s(1)), Next::Finish);
        let v = w.finish(vec![inst("online", Some(1), 1)], None, s(1));
        assert!(!v.healthy, "a restart seen at the final look still fails");
    }
}
