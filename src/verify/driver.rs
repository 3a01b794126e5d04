//! The async driver of the verification rules in `rules`: HTTP probes, PM2's pid files and
//! PM2's process list watched at once, with a verdict the moment it is known.
//!
//! Crashes are seen through the pid files PM2 keeps in `$PM2_HOME/pids/` (a read and a
//! `kill(pid, 0)` every 100 ms cost nothing), and confirmed with PM2's process list (over the
//! daemon's socket, see `pm2rpc`; a `pm2 jlist` Node start when that fails) every few
//! seconds and at the end.

use std::pin::Pin;
use std::time::Duration;

use anyhow::Result;
use tokio::time::Instant;

use super::load_errors::{LoadErrors, listens};
use super::rules::{Baseline, Next, Progress, Rules, Verification};
use crate::evidence::Offsets;
use crate::pm2::{Pm2, pid_alive};
use crate::probe::{Probe, ProbeOutcome, Prober};
use crate::signals::Cancel;
use crate::verdict::{Change, Verdict};

const PID_WATCH_EVERY: Duration = Duration::from_millis(100);
const JLIST_EVERY: Duration = Duration::from_secs(3);
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// The error logs are read this often, and only while nothing has answered yet.
const LOAD_ERRORS_EVERY: Duration = Duration::from_millis(250);

/// Watch the app until it is proven healthy or unhealthy; `progress` hears where it stands
/// every second (for the progress line of a long wait). `since`: where the PM2 logs ended
/// before the restart (None for an app guard did not restart), for the load errors written
/// since.
pub async fn verify(
    pm2: &Pm2,
    prober: &Prober,
    rules: Rules,
    interval: Duration,
    since: Option<&Offsets>,
    cancel: &Cancel,
    progress: &mut dyn FnMut(Progress),
) -> Result<Verdict> {
    let t0 = Instant::now();
    let t0_wall = jiff::Timestamp::now().as_millisecond();
    let instances = pm2.instances().await?;
    let mut load_errors = LoadErrors::new(&instances, since);
    // Whether the last probe found nothing listening: a load error counts only then.
    let mut refused = false;
    let mut machine = match Verification::begin(instances, rules, pm2.name(), t0_wall) {
        Ok(w) => w,
        Err(v) => return Ok(*v),
    };
    let mut probe_fut: Pin<Box<dyn Future<Output = Probe>>> =
        Box::pin(probe_after(prober.clone(), Duration::ZERO));
    let mut pid_tick = tokio::time::interval(PID_WATCH_EVERY);
    pid_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut jlist_tick = tokio::time::interval_at(t0 + JLIST_EVERY, JLIST_EVERY);
    jlist_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut load_tick = tokio::time::interval(LOAD_ERRORS_EVERY);
    load_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut progress_tick = tokio::time::interval_at(t0 + PROGRESS_EVERY, PROGRESS_EVERY);
    progress_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        let next = tokio::select! {
            probe = &mut probe_fut => {
                tracing::debug!(outcome = %probe.outcome, latency_ms = probe.latency.as_millis() as u64, "probe");
                let started = Instant::now() - probe.latency;
                refused = matches!(probe.outcome, ProbeOutcome::NotListening(_));
                let next = machine.on_probe(probe.outcome, t0.elapsed());
                if let Next::Suspect(reason) = next {
                    // A refused or reset connection is often a process dying: look at the
                    // pid files for up to 200 ms, so the verdict names the crash rather than
                    // its symptom.
                    let mut change = pid_change(machine.baselines());
                    if refused {
                        for _ in 0..10 {
                            if change.is_some() { break; }
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            change = pid_change(machine.baselines());
                        }
                    }
                    match change {
                        Some(c) => Next::Confirm(c),
                        None => return Ok(*machine.fail(reason, t0.elapsed())),
                    }
                } else if next == Next::ProbeAgain {
                    probe_fut = Box::pin(probe_after(prober.clone(), Duration::ZERO));
                    Next::Continue
                } else {
                    let wait = interval.saturating_sub(started.elapsed());
                    probe_fut = Box::pin(probe_after(prober.clone(), wait));
                    next
                }
            }
            _ = pid_tick.tick() => machine.on_pids(pid_change(machine.baselines())),
            _ = load_tick.tick() => {
                let seen = load_errors.poll().filter(|(instance, _)| {
                    let pid = machine.baselines().find(|b| b.pm_id == *instance).and_then(|b| b.pid);
                    refused && pid.and_then(listens) != Some(true)
                });
                machine.on_load_error(seen, t0.elapsed())
            }
            _ = progress_tick.tick() => {
                progress(machine.progress(t0.elapsed()));
                Next::Continue
            }
            _ = jlist_tick.tick() => machine.on_jlist(pm2.instances().await?, t0.elapsed()),
            _ = tokio::time::sleep_until(t0 + machine.due()) => machine.on_due(t0.elapsed()),
            _ = cancel.cancelled() => {
                let sig = cancel.signal().unwrap_or(libc::SIGINT);
                return Ok(*machine.interrupted(sig, t0.elapsed()));
            }
        };
        match next {
            Next::Continue | Next::ProbeAgain | Next::Suspect(_) => {}
            Next::Confirm(change) => {
                // A pid change is proof enough of a crash; PM2 is asked once more only for
                // the exact reason.
                let seen_at = t0.elapsed();
                let now = pm2.instances().await.ok();
                return Ok(*machine.crashed(change, seen_at, now));
            }
            Next::Finish => {
                let instances = pm2.instances().await?;
                let change = pid_change(machine.baselines());
                return Ok(*machine.finish(instances, change, t0.elapsed()));
            }
            Next::Verdict(v) => return Ok(*v),
        }
    }
}

/// A died or replaced process, from the pid files alone.
pub fn pid_change<'a>(watched: impl Iterator<Item = &'a Baseline>) -> Option<Change> {
    for w in watched {
        let (Some(pid), Some(path)) = (w.pid, &w.pid_path) else {
            continue;
        };
        let now = std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok());
        match now {
            Some(p) if p != pid => {
                return Some(Change::Replaced {
                    instance: w.pm_id,
                    from: pid,
                    to: p,
                });
            }
            // No pid file while the process lives: PM2 has not written it yet (just after a
            // start, a cluster's second instance often) or is stopping it; only once the
            // process is gone too has it stopped.
            None if !pid_alive(pid as i32) => {
                return Some(Change::PidGone {
                    instance: w.pm_id,
                    pid,
                });
            }
            _ => {}
        }
        if !pid_alive(pid as i32) {
            return Some(Change::Exited {
                instance: w.pm_id,
                pid,
            });
        }
    }
    None
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

    #[test]
    fn pid_files_reveal_a_replaced_or_dead_process() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("api-0.pid");
        let me = std::process::id();
        std::fs::write(&file, me.to_string()).unwrap();
        let w = [Baseline {
            pm_id: 0,
            pid: Some(me),
            pid_path: Some(file.clone()),
            restarts: 0,
        }];
        assert_eq!(pid_change(w.iter()), None);
        std::fs::write(&file, "4194000").unwrap();
        assert!(matches!(
            pid_change(w.iter()),
            Some(Change::Replaced { to: 4194000, .. })
        ));
        // No pid file yet while the process lives: PM2 has not written it (seen right after
        // starting a cluster of two); not a crash.
        std::fs::remove_file(&file).unwrap();
        assert_eq!(pid_change(w.iter()), None);
        // No pid file and the process gone: stopped.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let w = [Baseline {
            pm_id: 0,
            pid: Some(dead),
            pid_path: Some(file.clone()),
            restarts: 0,
        }];
        assert!(matches!(pid_change(w.iter()), Some(Change::PidGone { .. })));
    }
}
