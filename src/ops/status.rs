//! What `guard health` looks at, and what it concludes: [`gather`] reads PM2, the probe,
//! memory, artifacts, incidents, PM2's log and the files; [`assess`] decides, without I/O.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Result;
use serde::Serialize;

use super::{Ctx, Tools, inspect};
use crate::clean::{self, Artifact};
use crate::code::Code;
use crate::ecosystem::{self, Declared};
use crate::pm2::Instance;
use crate::probe::Probe;
use crate::resources::{self, Usage};
use crate::store::Listed;

/// Everything `guard health` saw, in one look.
pub struct Observed {
    /// Whether PM2's daemon runs.
    pub daemon: bool,
    /// The app's instances in PM2.
    pub instances: Vec<Instance>,
    /// One probe of health.url.
    pub probe: Probe,
    /// Memory and CPU by pid.
    pub usage: HashMap<u32, Usage>,
    /// Artifacts in the app folder.
    pub artifacts: Vec<Artifact>,
    /// This app's incidents, newest first.
    pub incidents: Vec<Listed>,
    /// Crash restarts in `watch.loop_window` from PM2's log (None: unreadable).
    pub recent_crashes: Option<u64>,
    /// Whether PM2's saved list (dump.pm2) has the app.
    pub saved_in_dump: bool,
    /// The ecosystem's declaration now (the files), if it loads.
    pub declared: Option<Declared>,
    /// Sentry as the files say: DSN set, and the enable flag with its value.
    pub sentry_files: (bool, Option<(String, Option<String>)>),
    /// The code in the app folder.
    pub code: Option<Code>,
    /// Now, ms since the epoch.
    pub now_ms: i64,
}

/// Read everything the status block shows.
pub async fn gather(ctx: &mut Ctx<'_>, tools: &Tools) -> Result<Observed> {
    let pm2 = &tools.pm2;
    let daemon = pm2.daemon_running();
    let instances = if daemon {
        pm2.instances().await?
    } else {
        Vec::new()
    };
    let pids: Vec<u32> = instances.iter().filter_map(|i| i.pid).collect();
    let (probe, usage) = tokio::join!(tools.prober.probe(), resources::sample(&pids));
    let artifacts = clean::find(&ctx.settings, clean::Scope::Artifacts)?;
    let incidents = ctx.store.list().unwrap_or_default();
    let window = ctx.settings.watch.loop_window;
    let since = jiff::Timestamp::now()
        .checked_sub(jiff::SignedDuration::try_from(window).unwrap_or_default())
        .unwrap_or_default();
    // The process PM2 knows it as (under `switch`, the live one of two).
    let recent_crashes = crate::pm2log::crashes_since(pm2.home(), pm2.name(), since);
    let saved_in_dump = crate::pm2::dump_entries(&pm2.home().join("dump.pm2"))
        .is_ok_and(|d| d.iter().any(|(n, _)| n == pm2.name()));
    let declared = super::declared(ctx, pm2).await;
    inspect::learn_ecosystem_env(ctx, declared.as_ref());
    let sentry_files = inspect::sentry_state(ctx, declared.as_ref());
    let code = super::current_commit(ctx).await;
    Ok(Observed {
        daemon,
        instances,
        probe,
        usage,
        artifacts,
        incidents,
        recent_crashes,
        saved_in_dump,
        declared,
        sentry_files,
        code,
        now_ms: jiff::Timestamp::now().as_millisecond(),
    })
}

/// One word for the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Word {
    /// Every instance online, the probe passes, no crash loop.
    Healthy,
    /// Something runs or answers, not all is well.
    Degraded,
    /// Nothing runs and nothing answers.
    Down,
}

/// What is wrong, for the operator who must pick between `pm2 resurrect` and a rollback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Diagnosis {
    /// PM2's daemon is not running: nothing runs the app.
    Pm2Down,
    /// PM2 runs but does not know the app, which its saved list has: it restarted without
    /// `pm2 resurrect`.
    Pm2LostTheApp,
    /// PM2 does not know the app at all.
    NotInPm2,
    /// The release crash-loops or PM2 gave up on it.
    ReleaseFailing,
    /// Runs, but the probe fails.
    HealthFailing,
}

impl Diagnosis {
    /// What to do, in one line.
    pub fn advice(&self) -> &'static str {
        match self {
            Diagnosis::Pm2Down | Diagnosis::Pm2LostTheApp => {
                "PM2 is down or lost its list, the release may be fine: `pm2 resurrect`, then `guard health`"
            }
            Diagnosis::NotInPm2 => {
                "PM2 does not know the app: `guard deploy` (or `pm2 start` the ecosystem), then `guard health`"
            }
            Diagnosis::ReleaseFailing | Diagnosis::HealthFailing => {
                "the release is failing: `guard rollback latest` puts back the previous version"
            }
        }
    }
}

/// What `guard health` concludes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Assessment {
    /// Healthy by every rule.
    pub healthy: bool,
    /// One word.
    pub status: Word,
    /// Every instance online for at least min_uptime.
    pub stable: bool,
    /// At least `watch.loop_restarts` crash restarts in the window.
    pub crash_looping: bool,
    /// PM2's restart counters, summed.
    pub restarts: u64,
    /// Resident memory, summed.
    pub memory_bytes: u64,
    /// CPU percent, summed (never below 0).
    pub cpu_percent: f32,
    /// Sentry on for what runs (its env), or the files when PM2 does not say.
    pub sentry_enabled: bool,
    /// A DSN is set.
    pub sentry_configured: bool,
    /// The fail-fast settings in force.
    pub max_restarts: f64,
    /// `min_uptime` in force.
    pub min_uptime: Duration,
    /// Settings the files change at the next deploy: max_restarts, min_uptime (ms), Sentry.
    pub pending: Vec<String>,
    /// What is wrong, when something is.
    pub diagnosis: Option<Diagnosis>,
}

/// The rules, from what was seen: `loop_restarts` in the window is a crash loop.
pub fn assess(o: &Observed, loop_restarts: u32) -> Assessment {
    let instances = &o.instances;
    let crash_looping = o
        .recent_crashes
        .is_some_and(|n| n >= u64::from(loop_restarts));
    let online = crate::pm2::all_online(instances);
    let passed = o.probe.outcome.passed();
    let healthy = online && passed && !crash_looping;
    let status = if healthy {
        Word::Healthy
    } else if instances.iter().any(Instance::is_online) || passed {
        Word::Degraded
    } else {
        Word::Down
    };

    // What runs, from PM2; the files only where PM2 does not say.
    let running = instances.first().map(|i| &i.running);
    let files_max = o
        .declared
        .as_ref()
        .and_then(|d| d.max_restarts)
        .unwrap_or(ecosystem::PM2_DEFAULT_MAX_RESTARTS);
    let files_min = o
        .declared
        .as_ref()
        .and_then(|d| d.min_uptime.as_deref())
        .and_then(ecosystem::parse_min_uptime)
        .unwrap_or(ecosystem::PM2_DEFAULT_MIN_UPTIME);
    let max_restarts = running
        .and_then(|r| r.max_restarts)
        .map_or(files_max, |m| m as f64);
    let min_uptime = running
        .and_then(|r| r.min_uptime_ms)
        .map_or(files_min, Duration::from_millis);
    let (files_dsn, flag) = &o.sentry_files;
    let on = |v: Option<&str>| v.is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    let files_sentry = *files_dsn && flag.as_ref().is_none_or(|(_, v)| on(v.as_deref()));
    let running_sentry = running.map(|r| {
        r.sentry_dsn
            && flag.as_ref().is_none_or(|(k, _)| {
                on(r.switches
                    .iter()
                    .find(|(key, _)| key == k)
                    .map(|(_, v)| v.as_str()))
            })
    });
    let sentry_enabled = running_sentry.unwrap_or(files_sentry);
    let mut pending = Vec::new();
    if running.is_some_and(|r| r.max_restarts.is_some()) && (max_restarts - files_max).abs() > 0.5 {
        pending.push(format!("max_restarts={files_max}"));
    }
    if running.is_some_and(|r| r.min_uptime_ms.is_some()) && min_uptime != files_min {
        pending.push(format!(
            "min_uptime={}",
            humantime::format_duration(files_min)
        ));
    }
    if running_sentry.is_some_and(|r| r != files_sentry) {
        pending.push(format!(
            "Sentry {}",
            if files_sentry {
                "enabled"
            } else {
                "NOT enabled"
            }
        ));
    }

    let stable = !instances.is_empty()
        && instances.iter().all(|i| {
            i.is_online()
                && i.started_at_ms.is_some_and(|s| {
                    o.now_ms - s >= i64::try_from(min_uptime.as_millis()).unwrap_or(0)
                })
        });
    let diagnosis = if healthy {
        None
    } else if !o.daemon {
        Some(Diagnosis::Pm2Down)
    } else if instances.is_empty() && o.saved_in_dump {
        Some(Diagnosis::Pm2LostTheApp)
    } else if instances.is_empty() {
        Some(Diagnosis::NotInPm2)
    } else if crash_looping || !instances.iter().all(Instance::is_online) {
        Some(Diagnosis::ReleaseFailing)
    } else {
        Some(Diagnosis::HealthFailing)
    };
    Assessment {
        healthy,
        status,
        stable,
        crash_looping,
        restarts: instances.iter().map(|i| i.restarts).sum(),
        memory_bytes: o.usage.values().map(|u| u.memory_bytes).sum(),
        cpu_percent: o
            .usage
            .values()
            .map(|u| u.cpu_percent)
            .sum::<f32>()
            .max(0.0),
        sentry_enabled,
        sentry_configured: *files_dsn || running.is_some_and(|r| r.sentry_dsn),
        max_restarts,
        min_uptime,
        pending,
        diagnosis,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pm2::Running;
    use crate::probe::ProbeOutcome;

    fn observed(instances: Vec<Instance>, passed: bool) -> Observed {
        Observed {
            daemon: true,
            instances,
            probe: Probe {
                outcome: if passed {
                    ProbeOutcome::Pass(200)
                } else {
                    ProbeOutcome::NotListening("connection refused".into())
                },
                latency: Duration::from_millis(3),
            },
            usage: HashMap::new(),
            artifacts: Vec::new(),
            incidents: Vec::new(),
            recent_crashes: Some(0),
            saved_in_dump: true,
            declared: None,
            sentry_files: (false, None),
            code: None,
            now_ms: 100_000,
        }
    }

    fn online(started_ms: i64, running: Running) -> Instance {
        Instance {
            name: "api".into(),
            status: "online".into(),
            pid: Some(10),
            started_at_ms: Some(started_ms),
            running,
            ..Instance::default()
        }
    }

    #[test]
    fn healthy_degraded_down_stable_and_crash_loop() {
        let a = assess(&observed(vec![online(0, Running::default())], true), 3);
        assert_eq!((a.status, a.healthy, a.stable), (Word::Healthy, true, true));
        let young = online(99_500, Running::default());
        assert!(
            !assess(&observed(vec![young], true), 3).stable,
            "under min_uptime"
        );
        let mut o = observed(vec![online(0, Running::default())], true);
        o.recent_crashes = Some(3);
        let a = assess(&o, 3);
        assert_eq!((a.status, a.crash_looping), (Word::Degraded, true));
        assert_eq!(a.diagnosis, Some(Diagnosis::ReleaseFailing));
        let a = assess(&observed(vec![online(0, Running::default())], false), 3);
        assert_eq!(a.diagnosis, Some(Diagnosis::HealthFailing));
    }

    #[test]
    fn pm2_down_or_lost_is_told_apart_from_a_failing_release() {
        let mut o = observed(Vec::new(), false);
        assert_eq!(assess(&o, 3).status, Word::Down);
        assert_eq!(assess(&o, 3).diagnosis, Some(Diagnosis::Pm2LostTheApp));
        o.saved_in_dump = false;
        assert_eq!(assess(&o, 3).diagnosis, Some(Diagnosis::NotInPm2));
        o.daemon = false;
        assert_eq!(assess(&o, 3).diagnosis, Some(Diagnosis::Pm2Down));
        assert!(Diagnosis::Pm2Down.advice().contains("pm2 resurrect"));
        assert!(
            Diagnosis::ReleaseFailing
                .advice()
                .contains("guard rollback")
        );
    }

    #[test]
    fn what_runs_is_shown_and_file_edits_are_pending_until_the_next_deploy() {
        let running = Running {
            max_restarts: Some(3),
            min_uptime_ms: Some(30_000),
            sentry_dsn: true,
            switches: vec![("SENTRY_ENABLED".into(), "false".into())],
        };
        let mut o = observed(vec![online(0, running)], true);
        o.declared = Some(Declared {
            max_restarts: Some(10.0),
            min_uptime: Some("30s".into()),
            ..Declared::default()
        });
        o.sentry_files = (true, Some(("SENTRY_ENABLED".into(), Some("true".into()))));
        let a = assess(&o, 3);
        assert_eq!(a.max_restarts, 3.0, "what PM2 runs with");
        assert!(!a.sentry_enabled, "the running env has it off");
        assert_eq!(a.pending, ["max_restarts=10", "Sentry enabled"]);
    }
}
