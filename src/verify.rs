//! The verification loop: HTTP probes and PM2's process state watched at once, with a verdict
//! the moment it is known.
//!
//! Crashes are seen through the pid files PM2 keeps in `$PM2_HOME/pids/` (a read and a
//! `kill(pid, 0)` every 100 ms cost nothing), and confirmed with `pm2 jlist`, which costs a Node
//! start, only every few seconds and at the end.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use anyhow::Result;
use serde::Serialize;
use tokio::time::Instant;

use crate::health::{Outcome, Probe, Prober};
use crate::pm2::{Instance, Pm2, pid_alive};
use crate::settings::Health;
use crate::signals::Cancel;

const PID_WATCH_EVERY: Duration = Duration::from_millis(100);
const JLIST_EVERY: Duration = Duration::from_secs(3);

/// The answer of a verification.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    /// Healthy by every rule.
    pub healthy: bool,
    /// One line: "healthy", "crashed at start", "health 500", ...
    pub reason: String,
    /// Time from the start of verification to the verdict.
    #[serde(serialize_with = "ser_ms")]
    pub elapsed: Duration,
    /// Time to the first passing probe.
    #[serde(serialize_with = "ser_opt_ms")]
    pub ready_after: Option<Duration>,
    /// When the verdict was reached (ms since the epoch), for benchmarks and logs.
    pub decided_at_ms: i64,
    /// When the first probe passed (ms since the epoch).
    pub ready_at_ms: Option<i64>,
    /// Probes sent.
    pub probes: u32,
    /// The last probe's outcome.
    pub last_probe: Option<String>,
    /// The app's instances as last seen.
    pub instances: Vec<Instance>,
}

fn ser_ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn ser_opt_ms<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => ser_ms(d, s),
        None => s.serialize_none(),
    }
}

/// Whether the app was just (re)started by guard, so any restart at all is a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Just started by delete+start: PM2's restart counter must be 0.
    Fresh,
    /// Already running (`guard health --wait`): counters are taken as they are.
    Existing,
}

struct Watched {
    pm_id: u32,
    pid: Option<u32>,
    pid_path: Option<PathBuf>,
    restarts: u64,
}

/// What changed in PM2, in words.
fn instance_problem(inst: &Instance, base: Option<&Watched>, start: Start) -> Option<String> {
    if inst.status != "online" && inst.status != "launching" {
        return Some(format!(
            "PM2 status {} (instance {}, {} restarts)",
            inst.status, inst.pm_id, inst.restarts
        ));
    }
    match base {
        Some(b) if inst.restarts > b.restarts => Some(format!(
            "PM2 restarted instance {} ({} -> {} restarts)",
            inst.pm_id, b.restarts, inst.restarts
        )),
        Some(b) if b.pid.is_some() && inst.pid != b.pid => Some(format!(
            "instance {} has a new pid (was {:?}, now {:?})",
            inst.pm_id, b.pid, inst.pid
        )),
        None if start == Start::Fresh && inst.restarts > 0 => Some(format!(
            "PM2 restarted instance {} {} time(s)",
            inst.pm_id, inst.restarts
        )),
        _ => None,
    }
}

/// Watch the app until it is proven healthy or unhealthy.
pub async fn verify(
    pm2: &Pm2,
    prober: &Prober,
    health: &Health,
    start: Start,
    cancel: &Cancel,
) -> Result<Verdict> {
    let t0 = Instant::now();
    let mut probes = 0u32;
    let mut last: Option<Probe> = None;
    let mut instances = pm2.instances().await?;
    let fail = |ready_at: Option<Instant>,
                reason: String,
                probes: u32,
                last: &Option<Probe>,
                instances: Vec<Instance>| Verdict {
        healthy: false,
        reason,
        elapsed: t0.elapsed(),
        ready_after: ready_at.map(|r| r - t0),
        decided_at_ms: now_ms(),
        ready_at_ms: ready_at.map(wall_ms),
        probes,
        last_probe: last.as_ref().map(|p| p.outcome.to_string()),
        instances,
    };

    if instances.is_empty() {
        return Ok(fail(
            None,
            format!("app {} is not running in PM2", pm2.name()),
            0,
            &None,
            instances,
        ));
    }
    if let Some(problem) = instances
        .iter()
        .find_map(|i| instance_problem(i, None, start))
    {
        let prefix = if start == Start::Fresh {
            "crashed at start: "
        } else {
            ""
        };
        return Ok(fail(
            None,
            format!("{prefix}{problem}"),
            0,
            &None,
            instances,
        ));
    }
    let mut ready_at: Option<Instant> = None;
    let mut watched: BTreeMap<u32, Watched> = instances
        .iter()
        .map(|i| {
            (
                i.pm_id,
                Watched {
                    pm_id: i.pm_id,
                    pid: i.pid,
                    pid_path: i.pid_path.clone(),
                    restarts: i.restarts,
                },
            )
        })
        .collect();

    let deadline = t0 + health.deadline;
    let mut probe_fut: Pin<Box<dyn Future<Output = Probe>>> =
        Box::pin(probe_after(prober.clone(), Duration::ZERO));
    let mut pid_tick = tokio::time::interval(PID_WATCH_EVERY);
    pid_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut jlist_tick = tokio::time::interval_at(t0 + JLIST_EVERY, JLIST_EVERY);
    jlist_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        let until = match ready_at {
            None => deadline,
            Some(r) => r + health.stable_for,
        };
        tokio::select! {
            probe = &mut probe_fut => {
                probes += 1;
                tracing::debug!(outcome = %probe.outcome, latency_ms = probe.latency.as_millis() as u64, "probe");
                let outcome = probe.outcome.clone();
                let started = Instant::now() - probe.latency;
                last = Some(probe);
                if outcome.passed() {
                    if ready_at.is_none() {
                        ready_at = Some(Instant::now());
                        if health.stable_for.is_zero() {
                            return finish(pm2, &mut watched, t0, ready_at, probes, &last, start).await;
                        }
                    }
                } else {
                    let failed = match ready_at {
                        Some(r) => Some(format!(
                            "{outcome} during the stability window ({:.1}s after it first answered)",
                            r.elapsed().as_secs_f64()
                        )),
                        None if outcome.is_definite_failure() => Some(outcome.to_string()),
                        None => None,
                    };
                    if let Some(reason) = failed {
                        // A refused or reset connection is often a process dying: look at the
                        // pid files for up to 200 ms, so the verdict names the crash rather than
                        // its symptom.
                        let mut change = pid_change(&watched);
                        if matches!(outcome, Outcome::NotListening(_)) {
                            for _ in 0..10 {
                                if change.is_some() { break; }
                                tokio::time::sleep(Duration::from_millis(20)).await;
                                change = pid_change(&watched);
                            }
                        }
                        if let Some(change) = change {
                            let (reason, now) = confirm_crash(pm2, &watched, change, t0, ready_at, start).await;
                            return Ok(fail(ready_at, reason, probes, &last, now.unwrap_or(instances)));
                        }
                        return Ok(fail(ready_at, reason, probes, &last, instances));
                    }
                }
                let wait = health.interval.saturating_sub(started.elapsed());
                probe_fut = Box::pin(probe_after(prober.clone(), wait));
            }
            _ = pid_tick.tick() => {
                if let Some(change) = pid_change(&watched) {
                    let (reason, now) = confirm_crash(pm2, &watched, change, t0, ready_at, start).await;
                    return Ok(fail(ready_at, reason, probes, &last, now.unwrap_or(instances)));
                }
            }
            _ = jlist_tick.tick() => {
                instances = pm2.instances().await?;
                if let Some(problem) = check_all(&instances, &watched, start) {
                    let now = t0.elapsed();
                    return Ok(fail(ready_at, crash_reason(ready_at.map(|r| r - t0), now, &problem), probes, &last, instances));
                }
                // Pid files may only appear once PM2 has started the process: pick them up.
                for i in &instances {
                    if let Some(w) = watched.get_mut(&i.pm_id) {
                        if w.pid.is_none() { w.pid = i.pid; }
                        if w.pid_path.is_none() { w.pid_path.clone_from(&i.pid_path); }
                    }
                }
            }
            _ = tokio::time::sleep_until(until) => {
                if ready_at.is_some() {
                    return finish(pm2, &mut watched, t0, ready_at, probes, &last, start).await;
                }
                let last_word = last.as_ref().map(|p| format!(" (last probe: {})", p.outcome)).unwrap_or_default();
                return Ok(fail(
                    ready_at, format!("never became healthy within {}{last_word}", humantime::format_duration(health.deadline)),
                    probes, &last, instances));
            }
            _ = cancel.cancelled() => {
                let sig = cancel.signal().unwrap_or(libc::SIGINT);
                return Ok(fail(ready_at, format!("interrupted by signal {sig} during verification"), probes, &last, instances));
            }
        }
    }
}

/// A pid change is proof enough of a crash; PM2 is asked once more only for the exact reason.
async fn confirm_crash(
    pm2: &Pm2,
    watched: &BTreeMap<u32, Watched>,
    change: String,
    t0: Instant,
    ready_at: Option<Instant>,
    start: Start,
) -> (String, Option<Vec<Instance>>) {
    let seen_at = t0.elapsed();
    let now = pm2.instances().await.ok();
    let detail = now
        .iter()
        .flatten()
        .find_map(|i| instance_problem(i, watched.get(&i.pm_id), start))
        .unwrap_or(change);
    (
        crash_reason(ready_at.map(|r| r - t0), seen_at, &detail),
        now,
    )
}

fn crash_reason(ready_after: Option<Duration>, at: Duration, detail: &str) -> String {
    match ready_after {
        None => format!(
            "crashed at start ({:.1}s after the restart): {detail}",
            at.as_secs_f64()
        ),
        Some(r) => format!(
            "restarted after {:.1}s ({:.1}s after it first answered): {detail}",
            at.as_secs_f64(),
            (at.saturating_sub(r)).as_secs_f64()
        ),
    }
}

fn check_all(
    instances: &[Instance],
    watched: &BTreeMap<u32, Watched>,
    start: Start,
) -> Option<String> {
    if instances.len() < watched.len() {
        return Some(format!(
            "{} of {} instances left PM2",
            watched.len() - instances.len(),
            watched.len()
        ));
    }
    instances
        .iter()
        .find_map(|i| instance_problem(i, watched.get(&i.pm_id), start))
}

/// A died or replaced process, from the pid files alone.
fn pid_change(watched: &BTreeMap<u32, Watched>) -> Option<String> {
    for w in watched.values() {
        let (Some(pid), Some(path)) = (w.pid, &w.pid_path) else {
            continue;
        };
        let now = std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok());
        match now {
            Some(p) if p != pid => {
                return Some(format!(
                    "instance {} was replaced (pid {pid} -> {p})",
                    w.pm_id
                ));
            }
            None => return Some(format!("instance {} stopped (pid {pid} gone)", w.pm_id)),
            _ => {}
        }
        if !pid_alive(pid as i32) {
            return Some(format!("instance {} exited (pid {pid})", w.pm_id));
        }
    }
    None
}

async fn finish(
    pm2: &Pm2,
    watched: &mut BTreeMap<u32, Watched>,
    t0: Instant,
    ready_at: Option<Instant>,
    probes: u32,
    last: &Option<Probe>,
    start: Start,
) -> Result<Verdict> {
    let instances = pm2.instances().await?;
    let ready_after = ready_at.map(|r| r - t0);
    let problem = check_all(&instances, watched, start).or_else(|| pid_change(watched));
    let (healthy, reason) = match problem {
        Some(p) => (false, crash_reason(ready_after, t0.elapsed(), &p)),
        None => (
            true,
            format!(
                "healthy: answered after {:.1}s, stable for {:.1}s, {} instance(s) online, no restarts",
                ready_after.unwrap_or_default().as_secs_f64(),
                (t0.elapsed().saturating_sub(ready_after.unwrap_or_default())).as_secs_f64(),
                instances.len()
            ),
        ),
    };
    Ok(Verdict {
        healthy,
        reason,
        elapsed: t0.elapsed(),
        ready_after,
        decided_at_ms: now_ms(),
        ready_at_ms: ready_at.map(wall_ms),
        probes,
        last_probe: last.as_ref().map(|p| p.outcome.to_string()),
        instances,
    })
}

impl Verdict {
    /// The verdict when the app could not even be (re)started.
    pub fn not_started(reason: String, elapsed: Duration) -> Verdict {
        Verdict {
            healthy: false,
            reason,
            elapsed,
            ready_after: None,
            decided_at_ms: now_ms(),
            ready_at_ms: None,
            probes: 0,
            last_probe: None,
            instances: Vec::new(),
        }
    }
}

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// A monotonic instant in the past as wall-clock ms since the epoch.
fn wall_ms(at: Instant) -> i64 {
    now_ms() - i64::try_from(at.elapsed().as_millis()).unwrap_or(0)
}

async fn probe_after(prober: Prober, wait: Duration) -> Probe {
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
    prober.probe().await
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
        }
    }

    fn watched(pid: Option<u32>, restarts: u64, pid_path: Option<PathBuf>) -> Watched {
        Watched {
            pm_id: 0,
            pid,
            pid_path,
            restarts,
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
        let base = watched(Some(10), 2, None);
        assert!(
            instance_problem(&inst("online", Some(10), 2), Some(&base), Start::Existing).is_none()
        );
        let p =
            instance_problem(&inst("online", Some(10), 3), Some(&base), Start::Existing).unwrap();
        assert!(p.contains("2 -> 3"), "{p}");
        assert!(
            instance_problem(&inst("online", Some(11), 2), Some(&base), Start::Existing).is_some()
        );
    }

    #[test]
    fn pid_files_reveal_a_replaced_or_dead_process() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("api-0.pid");
        let me = std::process::id();
        std::fs::write(&file, me.to_string()).unwrap();
        let mut w = BTreeMap::new();
        w.insert(0, watched(Some(me), 0, Some(file.clone())));
        assert_eq!(pid_change(&w), None);
        std::fs::write(&file, "4194000").unwrap();
        assert!(pid_change(&w).unwrap().contains("replaced"));
        std::fs::remove_file(&file).unwrap();
        assert!(pid_change(&w).unwrap().contains("gone"));
    }

    #[test]
    fn reasons_say_when() {
        let r = crash_reason(None, Duration::from_millis(300), "x");
        assert!(r.starts_with("crashed at start (0.3s"), "{r}");
        let r = crash_reason(
            Some(Duration::from_millis(200)),
            Duration::from_millis(1700),
            "x",
        );
        assert!(
            r.starts_with("restarted after 1.7s (1.5s after it first answered)"),
            "{r}"
        );
    }
}
