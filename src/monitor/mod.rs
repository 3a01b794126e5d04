//! The rules of `guard watch`, without I/O or clock: observations go in (PM2's list, a pid
//! file change, a probe, memory, artifacts, the passing of time), events come out, at most
//! one per problem while it lasts and one `recovered` when it clears.
//!
//! A crash opens an *episode*: its first restart is one `crash` event, and the episode closes
//! with one `recovered` after `recover_after` without a new restart, every instance online.
//! Every restart is also counted over `loop_window`: reaching `loop_restarts` is one
//! `crash_loop` event with the count, and from then on the loop is the problem: no `crash` or
//! `recovered` per restart, one `recovered` once a whole window passed without a restart.
//! At most one `crash` is sent per window, so restarts spaced wider than `recover_after`
//! add up to the loop rather than to a `crash` and a `recovered` each. PM2
//! giving up (`errored`, `stopped`) is one `gave_up` per episode. That is how a crash loop is
//! one alert, not one per restart, however its restarts are spaced.

pub mod driver;
pub mod policy;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::alert::Severity;
use crate::pm2::Instance;
use crate::probe::ProbeOutcome;
use crate::verdict::{Change, ms};

/// The thresholds (from `[watch]`).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Failing probes in a row before `health_failing` (and passing ones before it clears).
    pub failures: u32,
    /// Restarts within `loop_window` that make a crash loop.
    pub loop_restarts: u32,
    /// The crash-loop window.
    pub loop_window: Duration,
    /// Quiet time before a crash episode is `recovered`.
    pub recover_after: Duration,
    /// Resident memory limit of one instance.
    pub max_memory: Option<u64>,
}

/// A problem that is open until it clears.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Problem {
    /// Restarts (a crash episode).
    Crash,
    /// A crash loop.
    CrashLoop,
    /// The health probe failing.
    Health,
    /// The health probe failing and passing by turns.
    HealthFlapping,
    /// An instance above max_memory.
    Memory,
    /// Build artifacts in the app folder.
    Artifacts,
}

/// What `guard watch` reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// An instance's process died or was replaced by PM2.
    Crash {
        /// PM2 id.
        instance: u32,
        /// What was seen.
        detail: String,
    },
    /// Restarts kept coming.
    CrashLoop {
        /// Restarts within the window.
        restarts: u64,
        /// The window.
        within_ms: u64,
    },
    /// PM2 stopped restarting (or the app is gone from PM2).
    GaveUp {
        /// PM2 id, when an instance is there.
        instance: Option<u32>,
        /// PM2's status (`errored`, `stopped`), or `not running`.
        status: String,
        /// PM2's restart counter of that instance.
        restarts: u64,
    },
    /// The health probe failed this many times in a row.
    HealthFailing {
        /// Failures in a row.
        failures: u32,
        /// The last probe.
        probe: String,
    },
    /// The health check kept failing and recovering: one alert per window instead of a
    /// `health_failing` and a `recovered` each time.
    HealthFlapping {
        /// Failing spells within the window.
        spells: u64,
        /// The window.
        within_ms: u64,
    },
    /// An instance uses more memory than allowed.
    MemoryHigh {
        /// PM2 id.
        instance: u32,
        /// Resident bytes.
        bytes: u64,
        /// The limit.
        limit: u64,
    },
    /// Build artifacts appeared in the app folder.
    Artifacts {
        /// Relative paths.
        paths: Vec<String>,
    },
    /// A problem cleared.
    Recovered {
        /// Which.
        problem: Problem,
        /// How long it lasted.
        after_ms: u64,
    },
}

impl Event {
    /// The event's word, as in the alert's `event` field.
    pub fn name(&self) -> &'static str {
        match self {
            Event::Crash { .. } => "crash",
            Event::CrashLoop { .. } => "crash_loop",
            Event::GaveUp { .. } => "gave_up",
            Event::HealthFailing { .. } => "health_failing",
            Event::HealthFlapping { .. } => "health_flapping",
            Event::MemoryHigh { .. } => "memory_high",
            Event::Artifacts { .. } => "artifacts",
            Event::Recovered { .. } => "recovered",
        }
    }

    /// How bad.
    pub fn severity(&self) -> Severity {
        match self {
            Event::Crash { .. } | Event::MemoryHigh { .. } | Event::Artifacts { .. } => {
                Severity::Warning
            }
            Event::CrashLoop { .. }
            | Event::GaveUp { .. }
            | Event::HealthFailing { .. }
            | Event::HealthFlapping { .. } => Severity::Critical,
            Event::Recovered { .. } => Severity::Info,
        }
    }

    /// A count worth a field of its own.
    pub fn count(&self) -> Option<u64> {
        match self {
            Event::CrashLoop { restarts, .. } | Event::GaveUp { restarts, .. } => Some(*restarts),
            Event::HealthFailing { failures, .. } => Some(u64::from(*failures)),
            Event::HealthFlapping { spells, .. } => Some(*spells),
            _ => None,
        }
    }

    /// For `recovered`: the problem's first event word.
    pub fn resolves(&self) -> Option<&'static str> {
        match self {
            Event::Recovered { problem, .. } => Some(match problem {
                Problem::Crash => "crash",
                Problem::CrashLoop => "crash_loop",
                Problem::Health => "health_failing",
                Problem::HealthFlapping => "health_flapping",
                Problem::Memory => "memory_high",
                Problem::Artifacts => "artifacts",
            }),
            _ => None,
        }
    }

    /// One line for a person.
    pub fn message(&self) -> String {
        let secs = |ms: u64| humantime::format_duration(Duration::from_secs(ms.div_ceil(1000)));
        match self {
            Event::Crash { detail, .. } => format!("crash: {detail}"),
            Event::CrashLoop {
                restarts,
                within_ms,
            } => format!(
                "crash loop: {restarts} restarts within {}",
                secs(*within_ms)
            ),
            Event::GaveUp {
                instance,
                status,
                restarts,
            } => match instance {
                Some(i) => format!(
                    "PM2 gave up: instance {i} is {status} after {restarts} restart(s); the app is down"
                ),
                None => format!("the app is {status} in PM2; it is down"),
            },
            Event::HealthFailing { failures, probe } => {
                format!("health check failed {failures} times in a row: {probe}")
            }
            Event::HealthFlapping { spells, within_ms } => format!(
                "health check flapping: {spells} failing spells within {}, passing in between",
                secs(*within_ms)
            ),
            Event::MemoryHigh {
                instance,
                bytes,
                limit,
            } => format!(
                "instance {instance} uses {} MB, above max_memory {} MB",
                bytes / 1_048_576,
                limit / 1_048_576
            ),
            Event::Artifacts { paths } => format!(
                "build artifacts appeared in the app folder: {} (`guard clean` removes them)",
                paths.join(", ")
            ),
            Event::Recovered { problem, after_ms } => {
                let what = match problem {
                    Problem::Crash => "restarts stopped, every instance online",
                    Problem::CrashLoop => "the crash loop stopped, every instance online",
                    Problem::Health => "health check passes again",
                    Problem::HealthFlapping => "health check steady again",
                    Problem::Memory => "memory back under max_memory",
                    Problem::Artifacts => "build artifacts gone",
                };
                format!("recovered: {what} (after {})", secs(*after_ms))
            }
        }
    }
}

/// What was last known of one instance.
#[derive(Debug, Clone)]
struct Known {
    pid: Option<u32>,
    restarts: u64,
    status: String,
}

#[derive(Debug)]
struct Episode {
    since: Duration,
    last_restart: Duration,
    gave_up: bool,
    /// Its `crash` was sent (so its `recovered` is too).
    reported: bool,
}

/// The state of one watch.
#[derive(Debug)]
pub struct Monitor {
    limits: Limits,
    known: BTreeMap<u32, Known>,
    episode: Option<Episode>,
    /// When each restart was seen, within the loop window.
    restarts: Vec<Duration>,
    /// A crash loop reported, since.
    looping: Option<Duration>,
    last_crash_alert: Option<Duration>,
    fail_run: u32,
    pass_run: u32,
    /// Open since, and whether it was reported (not while a crash explains it).
    health: Option<(Duration, bool)>,
    /// When each failing spell of the health check opened, within the loop window.
    health_spells: Vec<Duration>,
    /// Flapping reported, since: no `health_failing` or `recovered` per spell meanwhile.
    flapping: Option<Duration>,
    memory: BTreeMap<u32, Duration>,
    artifacts: Option<(Duration, Vec<String>)>,
    events: Vec<Event>,
}

/// What runs after a guard run (deploy or rollback) that began at `paused_at_ms`, as the
/// watcher's new baseline: an instance that run started afresh was verified with no restart,
/// so its counter counts from zero (any restart it has now is a crash after that verdict, and
/// news); an instance it left alone keeps its counter.
pub fn as_started(list: &[Instance], paused_at_ms: i64) -> Vec<Instance> {
    list.iter()
        .map(|i| {
            let mut b = i.clone();
            if i.created_at_ms.is_some_and(|c| c >= paused_at_ms) {
                b.restarts = 0;
            }
            b
        })
        .collect()
}

impl Monitor {
    /// A monitor with these limits; feed it [`Monitor::baseline`] first.
    pub fn new(limits: Limits) -> Monitor {
        Monitor {
            limits,
            known: BTreeMap::new(),
            episode: None,
            restarts: Vec::new(),
            looping: None,
            last_crash_alert: None,
            fail_run: 0,
            pass_run: 0,
            health: None,
            health_spells: Vec::new(),
            flapping: None,
            memory: BTreeMap::new(),
            artifacts: None,
            events: Vec::new(),
        }
    }

    fn remember(&mut self, instances: &[Instance]) {
        self.known = instances
            .iter()
            .map(|i| {
                (
                    i.pm_id,
                    Known {
                        pid: i.pid,
                        restarts: i.restarts,
                        status: i.status.clone(),
                    },
                )
            })
            .collect();
    }

    /// Take PM2's list as it is (at the start, and after a guard run released the lock):
    /// restarts done so far are not news; an app already down is.
    pub fn baseline(&mut self, instances: &[Instance], now: Duration) {
        self.remember(instances);
        self.check_down(instances, now);
    }

    fn episode(&mut self, now: Duration) -> &mut Episode {
        self.episode.get_or_insert(Episode {
            since: now,
            last_restart: now,
            gave_up: false,
            reported: false,
        })
    }

    /// Restarts seen within the loop window before `now`.
    fn recent(&self, now: Duration) -> u64 {
        let window = self.limits.loop_window;
        self.restarts
            .iter()
            .filter(|t| now.saturating_sub(**t) <= window)
            .count() as u64
    }

    /// A crash seen at `now` (`restarts` of them, from PM2's counter; 0 when only a pid file
    /// showed it so far): one `crash` unless an episode or a loop is already reported.
    fn crashed(&mut self, instance: u32, detail: String, restarts: u64, now: Duration) {
        // One `crash` per loop window at most: restarts spaced wider than recover_after
        // must not become a crash and a recovered each; they add up to a loop instead.
        let report = self.episode.is_none()
            && self.looping.is_none()
            && self
                .last_crash_alert
                .is_none_or(|t| now.saturating_sub(t) > self.limits.loop_window);
        let ep = self.episode(now);
        ep.last_restart = now;
        ep.reported |= report;
        self.restarts
            .extend(std::iter::repeat_n(now, restarts as usize));
        let window = self.limits.loop_window;
        self.restarts.retain(|t| now.saturating_sub(*t) <= window);
        let recent = self.recent(now);
        if self.looping.is_none() && recent >= u64::from(self.limits.loop_restarts) {
            // The loop says it all: no `crash` beside it for the restart that made it one.
            self.looping = Some(now);
            self.events.push(Event::CrashLoop {
                restarts: recent,
                within_ms: ms(window),
            });
        } else if report {
            self.last_crash_alert = Some(now);
            self.events.push(Event::Crash { instance, detail });
        }
    }

    fn check_down(&mut self, instances: &[Instance], now: Duration) {
        let down = if instances.is_empty() {
            Some((None, "not running".to_string(), 0))
        } else {
            instances
                .iter()
                .find(|i| !i.is_up())
                .map(|i| (Some(i.pm_id), i.status.clone(), i.restarts))
        };
        if let Some((instance, status, restarts)) = down {
            let ep = self.episode(now);
            if !ep.gave_up {
                ep.gave_up = true;
                self.events.push(Event::GaveUp {
                    instance,
                    status,
                    restarts,
                });
            }
        }
    }

    /// A pid file shows a process died or was replaced: the crash is reported at once (PM2's
    /// list, asked next, gives the count).
    pub fn on_pid_change(&mut self, change: &Change, now: Duration) {
        let instance = change.instance();
        self.crashed(instance, change.to_string(), 0, now);
        // The dead pid is not news twice.
        if let Some(k) = self.known.get_mut(&instance) {
            k.pid = None;
        }
    }

    /// PM2's list: restart counters, statuses and pids compared with what was known.
    pub fn on_instances(&mut self, instances: &[Instance], now: Duration) {
        for i in instances {
            let (new_restarts, detail) = match self.known.get(&i.pm_id) {
                Some(k) if i.restarts > k.restarts => (
                    i.restarts - k.restarts,
                    format!(
                        "PM2 restarted instance {} ({} -> {} restarts)",
                        i.pm_id, k.restarts, i.restarts
                    ),
                ),
                Some(k) if k.pid.is_some() && i.pid.is_some() && i.pid != k.pid => (
                    1,
                    format!(
                        "instance {} was replaced (pid {} -> {})",
                        i.pm_id,
                        k.pid.unwrap_or_default(),
                        i.pid.unwrap_or_default()
                    ),
                ),
                _ => (0, String::new()),
            };
            if new_restarts > 0 {
                self.crashed(i.pm_id, detail, new_restarts, now);
            }
        }
        self.remember(instances);
        self.check_down(instances, now);
    }

    /// A health probe came back.
    pub fn on_probe(&mut self, outcome: &ProbeOutcome, now: Duration) {
        if outcome.passed() {
            self.pass_run += 1;
            self.fail_run = 0;
            if let Some((since, reported)) = self.health
                && self.pass_run >= self.limits.failures
            {
                self.health = None;
                if reported && self.flapping.is_none() {
                    self.events.push(Event::Recovered {
                        problem: Problem::Health,
                        after_ms: ms(now.saturating_sub(since)),
                    });
                }
            }
            return;
        }
        self.pass_run = 0;
        self.fail_run += 1;
        if self.health.is_none() && self.fail_run >= self.limits.failures {
            let window = self.limits.loop_window;
            self.health_spells.push(now);
            self.health_spells
                .retain(|t| now.saturating_sub(*t) <= window);
            let spells = self.health_spells.len() as u64;
            if self.flapping.is_some() {
                // Already said: this spell is part of it.
                self.health = Some((now, true));
                return;
            }
            if spells >= u64::from(self.limits.loop_restarts) && spells > 1 {
                self.flapping = Some(now);
                self.health = Some((now, true));
                self.events.push(Event::HealthFlapping {
                    spells,
                    within_ms: ms(window),
                });
                return;
            }
            // While a crash episode is open it explains the failing probe: one alert, not two.
            let report = self.episode.is_none();
            self.health = Some((now, report));
            if report {
                self.events.push(Event::HealthFailing {
                    failures: self.fail_run,
                    probe: outcome.to_string(),
                });
            }
        }
    }

    /// Resident memory of an instance.
    pub fn on_memory(&mut self, instance: u32, bytes: u64, now: Duration) {
        let Some(limit) = self.limits.max_memory else {
            return;
        };
        match self.memory.get(&instance) {
            None if bytes > limit => {
                self.memory.insert(instance, now);
                self.events.push(Event::MemoryHigh {
                    instance,
                    bytes,
                    limit,
                });
            }
            // Cleared only well under the limit, so a value hovering at it is one alert.
            Some(since) if bytes < limit / 10 * 9 => {
                let since = *since;
                self.memory.remove(&instance);
                self.events.push(Event::Recovered {
                    problem: Problem::Memory,
                    after_ms: ms(now.saturating_sub(since)),
                });
            }
            _ => {}
        }
    }

    /// The artifacts present now.
    pub fn on_artifacts(&mut self, paths: Vec<String>, now: Duration) {
        match (&self.artifacts, paths.is_empty()) {
            (None, false) => {
                self.events.push(Event::Artifacts {
                    paths: paths.clone(),
                });
                self.artifacts = Some((now, paths));
            }
            (Some((since, _)), true) => {
                self.events.push(Event::Recovered {
                    problem: Problem::Artifacts,
                    after_ms: ms(now.saturating_sub(*since)),
                });
                self.artifacts = None;
            }
            _ => {}
        }
    }

    /// Time passes: a quiet crash episode closes; a failing probe that a crash explained and
    /// outlived it is reported now.
    pub fn on_tick(&mut self, now: Duration) {
        let all_up = !self.known.is_empty()
            && self
                .known
                .values()
                .all(|k| crate::pm2::status_is_up(&k.status) && k.pid.is_some());
        if let Some(ep) = &self.episode
            && all_up
            && now.saturating_sub(ep.last_restart) >= self.limits.recover_after
            && self.health.is_none()
        {
            let (since, reported) = (ep.since, ep.reported);
            self.episode = None;
            // Within a loop, the loop's own `recovered` says it.
            if self.looping.is_none() && reported {
                self.events.push(Event::Recovered {
                    problem: Problem::Crash,
                    after_ms: ms(now.saturating_sub(since)),
                });
                // What was said to be over must be said again when it comes back: a crash
                // after this `recovered` is a new episode, alerted (the loop still bounds
                // them: at most loop_restarts - 1 per window, then one crash_loop).
                self.last_crash_alert = None;
            }
        }
        if let Some(since) = self.looping
            && self.episode.is_none()
            && self.recent(now) == 0
        {
            self.looping = None;
            self.events.push(Event::Recovered {
                problem: Problem::CrashLoop,
                after_ms: ms(now.saturating_sub(since)),
            });
        }
        if let Some(since) = self.flapping
            && self.health.is_none()
            && self
                .health_spells
                .iter()
                .all(|t| now.saturating_sub(*t) > self.limits.loop_window)
        {
            self.flapping = None;
            self.health_spells.clear();
            self.events.push(Event::Recovered {
                problem: Problem::HealthFlapping,
                after_ms: ms(now.saturating_sub(since)),
            });
        }
        if self.episode.is_none()
            && let Some((_, reported @ false)) = &mut self.health
        {
            *reported = true;
            self.events.push(Event::HealthFailing {
                failures: self.fail_run,
                probe: "still failing after the crash".into(),
            });
        }
    }

    /// Whether the app is in a state worth a rollback: a crash loop, PM2 given up, or the
    /// health check failing `failures` times in a row.
    pub fn wants_rollback(&self) -> bool {
        self.looping.is_some()
            || self.episode.as_ref().is_some_and(|e| e.gave_up)
            || self.health.is_some()
            || self.flapping.is_some()
    }

    /// The state is being dealt with by a rollback: forget the open crash and health problems
    /// (the rollback's own event says how it ended; a new baseline follows).
    pub fn rolled_back(&mut self) {
        self.episode = None;
        self.looping = None;
        self.restarts.clear();
        self.health = None;
        self.health_spells.clear();
        self.flapping = None;
        self.fail_run = 0;
        self.pass_run = 0;
    }

    /// Whether a crash episode is open.
    pub fn crashing(&self) -> bool {
        self.episode.is_some() || self.looping.is_some()
    }

    /// The pids to watch: (instance, pid).
    pub fn pids(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.known
            .iter()
            .filter_map(|(id, k)| k.pid.map(|p| (*id, p)))
    }

    /// The events since the last call.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }
}

#[cfg(test)]
mod tests;
