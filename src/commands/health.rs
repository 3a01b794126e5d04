//! `guard health [--wait]`: the incident report's status block as a command.

use std::time::Duration;

use anyhow::Result;
use serde::Serialize;

use super::Done;
use crate::clean::{self, Artifact};
use crate::cli::HealthArgs;
use crate::ecosystem;
use crate::exit::Happened;
use crate::ops::{self, Ctx, inspect, restart};
use crate::output::fmt_duration;
use crate::pm2::Instance;
use crate::probe::ProbeOutcome;
use crate::resources;
use crate::verdict::Verdict;
use crate::verify::rules::Start;

/// `--json` data of `guard health --wait`.
#[derive(Serialize)]
struct WaitData {
    verdict: Verdict,
}

/// One instance in `--json`.
#[derive(Serialize)]
struct InstanceData<'a> {
    #[serde(flatten)]
    instance: &'a Instance,
    /// Time since the current process started, when online.
    uptime_ms: Option<u64>,
    memory_bytes: u64,
    cpu_percent: f32,
}

/// The probe in `--json`.
#[derive(Serialize)]
struct HealthProbe<'a> {
    url: String,
    outcome: &'a ProbeOutcome,
    status: Option<u16>,
    passed: bool,
    latency_ms: u64,
}

/// `--json` data of `guard health`.
#[derive(Serialize)]
struct HealthData<'a> {
    pm2_daemon_running: bool,
    instances: Vec<InstanceData<'a>>,
    health: HealthProbe<'a>,
    artifacts: &'a [Artifact],
    incidents: usize,
    newest_incident: Option<&'a String>,
    healthy: bool,
    /// One word: healthy, degraded or down.
    status: &'static str,
    /// Every instance online for at least min_uptime.
    stable: bool,
    /// PM2's restart counters, summed over the instances.
    restarts: u64,
    /// Crash restarts in the last `watch.loop_window` (from PM2's log); null if unreadable.
    restarts_recent: Option<u64>,
    /// That window.
    restarts_window_ms: u64,
    /// At least `watch.loop_restarts` crash restarts in the window: unhealthy even if a
    /// probe answers.
    crash_looping: bool,
    /// SENTRY_DSN set and SENTRY_ENABLED=true.
    sentry_enabled: bool,
    /// The fail-fast settings PM2 uses for the app (its defaults when unset).
    pm2_config: Pm2Config,
    /// A restorable incident exists.
    backups_ready: bool,
    /// The one `rollback latest` would pick.
    newest_restorable: Option<&'a str>,
}

/// PM2's fail-fast settings in `--json`.
#[derive(Serialize)]
struct Pm2Config {
    max_restarts: f64,
    min_uptime_ms: u64,
}

/// `guard health`.
pub async fn run(ctx: &mut Ctx<'_>, args: &HealthArgs) -> Result<Done> {
    let tools = ctx.tools()?;
    let (pm2, prober) = (&tools.pm2, &tools.prober);
    if args.wait {
        let cancel = ctx.cancel.clone();
        let v = restart::verify_step(ctx, &tools, Start::Existing, None, &cancel).await?;
        let happened = if v.healthy {
            Happened::Done
        } else {
            Happened::CheckFailed
        };
        let summary = v.message.clone();
        ctx.printer.set_data(&WaitData { verdict: v });
        return Ok(Done::new(happened, summary));
    }

    let daemon = pm2.daemon_running();
    let instances = if daemon {
        pm2.instances().await?
    } else {
        Vec::new()
    };
    let pids: Vec<u32> = instances.iter().filter_map(|i| i.pid).collect();
    let (probe, usage) = tokio::join!(prober.probe(), resources::sample(&pids));
    let artifacts = clean::find(&ctx.settings, clean::Scope::Artifacts)?;
    let incidents = ctx.store.list().unwrap_or_default();
    let now_ms = jiff::Timestamp::now().as_millisecond();

    let p = &ctx.printer;
    p.line(format!(
        "app        {} (PM2_HOME {})",
        ctx.settings.app.name,
        pm2.home().display()
    ));
    if !daemon {
        p.line("pm2        daemon NOT running");
    } else if instances.is_empty() {
        p.line("pm2        app NOT known to PM2");
    }
    let mut inst_json = Vec::new();
    for i in &instances {
        let u = i
            .pid
            .and_then(|pid| usage.get(&pid).copied())
            .unwrap_or_default();
        let uptime_ms = i
            .started_at_ms
            .filter(|_| i.status == "online")
            .map(|s| u64::try_from(now_ms - s).unwrap_or(0));
        let uptime = uptime_ms
            .map(|u| fmt_duration(Duration::from_millis(u)))
            .unwrap_or_else(|| "-".into());
        p.line(format!(
            "instance {:<2} {:<8} pid {:<7} uptime {:<8} restarts {:<3} memory {:.1} MB  cpu {:.1}%",
            i.pm_id,
            i.status,
            i.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            uptime,
            i.restarts,
            u.memory_bytes as f64 / 1_048_576.0,
            u.cpu_percent
        ));
        inst_json.push(InstanceData {
            instance: i,
            uptime_ms,
            memory_bytes: u.memory_bytes,
            cpu_percent: u.cpu_percent,
        });
    }
    p.line(format!(
        "health     {} in {}ms ({})",
        probe.outcome,
        probe.latency.as_millis(),
        prober.url()
    ));
    p.line(if artifacts.is_empty() {
        "artifacts  clean".to_string()
    } else {
        format!("artifacts  PRESENT: {}", clean::summary(&artifacts))
    });
    let newest = incidents.first().map(|l| {
        let age = l
            .manifest
            .as_ref()
            .ok()
            .and_then(|m| m.created_at.parse::<jiff::Timestamp>().ok())
            .map(|t| {
                fmt_duration(Duration::from_millis(
                    u64::try_from(now_ms - t.as_millisecond()).unwrap_or(0),
                ))
            });
        (l.id.clone(), age)
    });
    p.line(match &newest {
        Some((id, age)) => format!(
            "backups    {} incident(s), newest {id} ({} ago)",
            incidents.len(),
            age.clone().unwrap_or_else(|| "?".into())
        ),
        None => "backups    none".to_string(),
    });

    let window = ctx.settings.watch.loop_window;
    let since = jiff::Timestamp::now()
        .checked_sub(jiff::SignedDuration::try_from(window).unwrap_or_default())
        .unwrap_or_default();
    let recent = crate::pm2log::crashes_since(pm2.home(), &ctx.settings.app.name, since);
    let crash_looping = recent.is_some_and(|n| n >= u64::from(ctx.settings.watch.loop_restarts));
    let total: u64 = instances.iter().map(|i| i.restarts).sum();
    p.line(format!(
        "restarts   {} crash restart(s) in the last {} (PM2's counter: {total}){}",
        recent.map_or_else(|| "?".to_string(), |n| n.to_string()),
        fmt_duration(window),
        if crash_looping { "  CRASH LOOP" } else { "" }
    ));

    let online = !instances.is_empty() && instances.iter().all(|i| i.status == "online");
    let healthy = online && probe.outcome.passed() && !crash_looping;

    // The incident report's status block.
    let eco = ops::ecosystem_path(ctx).ok();
    let declared = match &eco {
        Some(e) => ecosystem::check(e, &ctx.settings.app.name, pm2.install_root().as_deref())
            .await
            .ok()
            .flatten(),
        None => None,
    };
    inspect::learn_ecosystem_env(ctx, declared.as_ref());
    let (dsn, flag) = inspect::sentry_state(ctx, declared.as_ref());
    let sentry_on = dsn
        && flag.as_ref().is_none_or(|(_, v)| {
            v.as_deref()
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
        });
    let max_restarts = declared
        .as_ref()
        .and_then(|d| d.max_restarts)
        .unwrap_or(ecosystem::PM2_DEFAULT_MAX_RESTARTS);
    let min_uptime = declared
        .as_ref()
        .and_then(|d| d.min_uptime.as_deref())
        .and_then(ecosystem::parse_min_uptime)
        .unwrap_or(ecosystem::PM2_DEFAULT_MIN_UPTIME);
    let restorable = incidents.iter().find(|l| {
        l.manifest
            .as_ref()
            .is_ok_and(|m| m.kind.restorable_as_latest())
    });
    let restorable_age = restorable.and_then(|l| {
        let m = l.manifest.as_ref().ok()?;
        let t = m.created_at.parse::<jiff::Timestamp>().ok()?;
        Some(fmt_duration(Duration::from_millis(
            u64::try_from(now_ms - t.as_millisecond()).unwrap_or(0),
        )))
    });
    let stable = !instances.is_empty()
        && instances.iter().all(|i| {
            i.status == "online"
                && i.started_at_ms.is_some_and(|s| {
                    now_ms - s >= i64::try_from(min_uptime.as_millis()).unwrap_or(0)
                })
        });
    let restarts: u64 = instances.iter().map(|i| i.restarts).sum();
    let memory: u64 = usage.values().map(|u| u.memory_bytes).sum();
    let cpu: f32 = usage.values().map(|u| u.cpu_percent).sum();
    let word = if healthy {
        "healthy"
    } else if instances.iter().any(|i| i.status == "online") || probe.outcome.passed() {
        "degraded"
    } else {
        "down"
    };
    let p = &ctx.printer;
    p.line("");
    p.line(format!(
        "Status: {}   Uptime: {}   Restarts: {restarts}   Memory: ~{}mb   CPU: {:.0}%",
        instances
            .first()
            .map(|i| i.status.as_str())
            .unwrap_or("not running"),
        if stable { "stable" } else { "NOT stable" },
        memory / 1_048_576,
        cpu
    ));
    p.line(format!(
        "Health: {}   Sentry: {}   PM2 config: max_restarts={max_restarts}, min_uptime={}",
        probe.outcome,
        if sentry_on {
            "enabled"
        } else if dsn {
            "NOT enabled"
        } else {
            "not configured"
        },
        humantime::format_duration(min_uptime)
    ));
    let paths: Vec<String> = ctx
        .settings
        .clean
        .paths
        .iter()
        .filter(|_| ctx.settings.clean.after_deploy)
        .map(|p| format!("no {}/", p.display()))
        .collect();
    p.line(format!(
        "Artifacts: {}   Backups: {}",
        if artifacts.is_empty() {
            if paths.is_empty() {
                "clean".to_string()
            } else {
                format!("clean ({})", paths.join(", "))
            }
        } else {
            format!("PRESENT ({})", clean::summary(&artifacts))
        },
        match (restorable, &restorable_age) {
            (Some(l), Some(age)) => format!("ready (newest {}, {age} ago)", l.id),
            (Some(l), None) => format!("ready (newest {})", l.id),
            (None, _) => "NONE".to_string(),
        }
    ));
    p.line(format!("Overall: {}", word.to_uppercase()));

    ctx.printer.set_data(&HealthData {
        pm2_daemon_running: daemon,
        instances: inst_json,
        health: HealthProbe {
            url: prober.url().to_string(),
            outcome: &probe.outcome,
            status: probe.outcome.status(),
            passed: probe.outcome.passed(),
            latency_ms: crate::verdict::ms(probe.latency),
        },
        artifacts: &artifacts,
        incidents: incidents.len(),
        newest_incident: newest.as_ref().map(|(id, _)| id),
        healthy,
        status: word,
        stable,
        restarts,
        restarts_recent: recent,
        restarts_window_ms: crate::verdict::ms(window),
        crash_looping,
        sentry_enabled: sentry_on,
        pm2_config: Pm2Config {
            max_restarts,
            min_uptime_ms: crate::verdict::ms(min_uptime),
        },
        backups_ready: restorable.is_some(),
        newest_restorable: restorable.map(|l| l.id.as_str()),
    });
    let summary = if crash_looping {
        format!(
            "crash loop: {} restarts in the last {} (PM2 status {}); {}",
            recent.unwrap_or_default(),
            fmt_duration(window),
            instances
                .iter()
                .map(|i| i.status.as_str())
                .collect::<Vec<_>>()
                .join(","),
            probe.outcome
        )
    } else if healthy {
        format!("{} instance(s) online, {}", instances.len(), probe.outcome)
    } else if !daemon {
        format!(
            "PM2 daemon not running (PM2_HOME {}); {}",
            pm2.home().display(),
            probe.outcome
        )
    } else if instances.is_empty() {
        format!(
            "app {} is not known to PM2; {}",
            ctx.settings.app.name, probe.outcome
        )
    } else {
        let states: Vec<&str> = instances.iter().map(|i| i.status.as_str()).collect();
        format!("PM2 status {}; {}", states.join(","), probe.outcome)
    };
    let happened = if healthy {
        Happened::Done
    } else {
        Happened::CheckFailed
    };
    Ok(Done::new(
        happened,
        if healthy {
            format!("healthy: {summary}")
        } else {
            format!("NOT healthy: {summary}")
        },
    ))
}
