//! `guard health [--wait]`: the incident report's status block as a command.

use std::time::Duration;

use anyhow::Result;
use serde::Serialize;

use super::Done;
use crate::clean::{self, Artifact};
use crate::cli::HealthArgs;
use crate::code::Code;
use crate::exit::Happened;
use crate::ops::status::{self, Assessment, Diagnosis, Observed};
use crate::ops::{Ctx, Tools, restart};
use crate::output::fmt_duration;
use crate::pm2::Instance;
use crate::probe::ProbeOutcome;
use crate::store::Listed;
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
    status: status::Word,
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
    /// Sentry on for what runs: a DSN, and its enable flag true where the app has one.
    sentry_enabled: bool,
    /// Settings the files change at the next deploy (they differ from what PM2 runs with).
    pending: &'a [String],
    /// The code in the app folder (commit or tree fingerprint).
    code: Option<&'a Code>,
    /// The newest incident whose snapshot holds that code.
    code_incident: Option<&'a str>,
    /// What is wrong, when something is: PM2 down or lost the app, or a failing release.
    diagnosis: Option<&'a Diagnosis>,
    /// The fail-fast settings PM2 uses for the app (its defaults when unset).
    pm2_config: Pm2Config,
    /// A restorable incident exists.
    backups_ready: bool,
    /// The one `rollback latest` would pick.
    newest_restorable: Option<&'a str>,
    /// Under `strategy = "switch"`: the live process and the previous release kept warm.
    #[serde(skip_serializing_if = "Option::is_none")]
    switch: Option<SwitchData>,
}

/// `switch` in `--json`: which process serves and which is kept.
#[derive(Serialize)]
struct SwitchData {
    /// The process the proxy sends traffic to.
    live: crate::switch::Slot,
    /// The previous release, still running for an instant rollback.
    previous: Option<KeptData>,
}

/// A release kept warm, in `--json`.
#[derive(Serialize)]
struct KeptData {
    /// Where it runs.
    #[serde(flatten)]
    slot: crate::switch::Slot,
    /// The incident a rollback to it names.
    incident: Option<String>,
    /// Until when it is kept.
    #[serde(serialize_with = "crate::verdict::rfc3339")]
    until: i64,
}

/// The switch state, when the strategy is `switch` and it can be read.
fn switch_data(ctx: &Ctx<'_>) -> Option<SwitchData> {
    ctx.settings.switch.as_ref()?;
    let st = crate::ops::switch::state(&ctx.settings, ctx.store.dir()).ok()?;
    Some(SwitchData {
        live: st.live,
        previous: st.previous.map(|k| KeptData {
            slot: k.slot,
            incident: k.incident,
            until: k.until_ms,
        }),
    })
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
    let seen = status::gather(ctx, &tools).await?;
    let judged = status::assess(&seen, ctx.settings.watch.loop_restarts);
    render(ctx, &tools, &seen, &judged);
    ctx.printer.set_data(&data(ctx, &tools, &seen, &judged));
    let happened = if judged.healthy {
        Happened::Done
    } else {
        Happened::CheckFailed
    };
    Ok(Done::new(happened, summary(ctx, &tools, &seen, &judged)))
}

fn uptime_ms(i: &Instance, now_ms: i64) -> Option<u64> {
    i.started_at_ms
        .filter(|_| i.is_online())
        .map(|s| u64::try_from(now_ms - s).unwrap_or(0))
}

fn age(listed: &Listed, now_ms: i64) -> Option<String> {
    let m = listed.manifest.as_ref().ok()?;
    let t = m.created_at.parse::<jiff::Timestamp>().ok()?;
    Some(fmt_duration(Duration::from_millis(
        u64::try_from(now_ms - t.as_millisecond()).unwrap_or(0),
    )))
}

fn newest_restorable(seen: &Observed) -> Option<&Listed> {
    seen.incidents.iter().find(|l| {
        l.manifest
            .as_ref()
            .is_ok_and(|m| m.kind.restorable_as_latest())
    })
}

/// The incident whose snapshot holds the code in the folder now, newest first.
fn matching_incident(seen: &Observed) -> Option<&str> {
    let code = seen.code.as_ref()?;
    seen.incidents.iter().find_map(|l| {
        let m = l.manifest.as_ref().ok()?;
        m.fingerprint()
            .filter(|f| f.same(code))
            .map(|_| l.id.as_str())
    })
}

/// The detail lines, then the incident report's status block.
fn render(ctx: &Ctx<'_>, tools: &Tools, seen: &Observed, judged: &Assessment) {
    let p = &ctx.printer;
    // Under `switch` the live process is one of two, named by its port.
    let live = if tools.pm2.name() == ctx.settings.app.name {
        String::new()
    } else {
        format!(", live process {}", tools.pm2.name())
    };
    p.line(format!(
        "app        {}{live} (PM2_HOME {})",
        ctx.settings.app.name,
        tools.pm2.home().display()
    ));
    if let Some(sw) = switch_data(ctx) {
        p.line(switch_line(&sw));
    }
    if !seen.daemon {
        p.line("pm2        daemon NOT running");
    } else if seen.instances.is_empty() {
        p.line("pm2        app NOT known to PM2");
    }
    render_instances(ctx, seen);
    p.line(format!(
        "health     {} in {}ms ({})",
        seen.probe.outcome,
        seen.probe.latency.as_millis(),
        tools.prober.url()
    ));
    render_files_and_restarts(ctx, seen, judged);
    status_block(ctx, seen, judged);
}

/// `switch     traffic to api-3001 on port 3001; previous release api on port 3000 kept...`
fn switch_line(sw: &SwitchData) -> String {
    let kept = match &sw.previous {
        Some(k) => format!(
            "; previous release {} on port {} kept until {} (`guard rollback` to incident {} switches back)",
            k.slot.name,
            k.slot.port,
            jiff::Timestamp::from_millisecond(k.until)
                .map(|t| t.strftime("%H:%M:%S UTC").to_string())
                .unwrap_or_default(),
            k.incident.as_deref().unwrap_or("?")
        ),
        None => String::new(),
    };
    format!(
        "switch     traffic to {} on port {}{kept}",
        sw.live.name, sw.live.port
    )
}

/// One line per instance: status, pid, uptime, restarts, memory, CPU.
fn render_instances(ctx: &Ctx<'_>, seen: &Observed) {
    let p = &ctx.printer;
    for i in &seen.instances {
        let u = i
            .pid
            .and_then(|pid| seen.usage.get(&pid).copied())
            .unwrap_or_default();
        let uptime = uptime_ms(i, seen.now_ms)
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
            u.cpu_percent.max(0.0)
        ));
    }
}

/// The lines after the probe: artifacts, backups, the code, restarts, pending changes.
fn render_files_and_restarts(ctx: &Ctx<'_>, seen: &Observed, judged: &Assessment) {
    let p = &ctx.printer;
    p.line(if seen.artifacts.is_empty() {
        "artifacts  clean".to_string()
    } else {
        format!("artifacts  PRESENT: {}", clean::summary(&seen.artifacts))
    });
    p.line(match seen.incidents.first() {
        Some(l) => format!(
            "backups    {} incident(s), newest {} ({} ago)",
            seen.incidents.len(),
            l.id,
            age(l, seen.now_ms).unwrap_or_else(|| "?".into())
        ),
        None => "backups    none".to_string(),
    });
    if let Some(code) = &seen.code {
        p.line(format!(
            "code       {}{}",
            code.short(),
            matching_incident(seen)
                .map(|id| format!(" (as in incident {id})"))
                .unwrap_or_default()
        ));
    }
    let window = ctx.settings.watch.loop_window;
    let total: u64 = seen.instances.iter().map(|i| i.restarts).sum();
    p.line(format!(
        "restarts   {} crash restart(s) in the last {} (PM2's counter: {total}){}",
        seen.recent_crashes
            .map_or_else(|| "?".to_string(), |n| n.to_string()),
        fmt_duration(window),
        if judged.crash_looping {
            "  CRASH LOOP"
        } else {
            ""
        }
    ));
    if !judged.pending.is_empty() {
        p.line(format!(
            "pending    the files say {}: takes effect at the next deploy",
            judged.pending.join(", ")
        ));
    }
}

/// The incident report's own status block.
fn status_block(ctx: &Ctx<'_>, seen: &Observed, judged: &Assessment) {
    let p = &ctx.printer;
    p.line("");
    p.line(format!(
        "Status: {}   Uptime: {}   Restarts: {}   Memory: ~{}mb   CPU: {:.0}%",
        seen.instances
            .first()
            .map(|i| i.status.as_str())
            .unwrap_or("not running"),
        if judged.stable {
            "stable"
        } else {
            "NOT stable"
        },
        judged.restarts,
        judged.memory_bytes / 1_048_576,
        judged.cpu_percent
    ));
    p.line(format!(
        "Health: {}   Sentry: {}   PM2 config: max_restarts={}, min_uptime={}",
        seen.probe.outcome,
        if judged.sentry_enabled {
            "enabled"
        } else if judged.sentry_configured {
            "NOT enabled"
        } else {
            "not configured"
        },
        judged.max_restarts,
        humantime::format_duration(judged.min_uptime)
    ));
    let paths: Vec<String> = ctx
        .settings
        .clean
        .paths
        .iter()
        .filter(|_| ctx.settings.clean.after_deploy)
        .map(|p| format!("no {}/", p.display()))
        .collect();
    let restorable = newest_restorable(seen);
    p.line(format!(
        "Artifacts: {}   Backups: {}",
        match (seen.artifacts.is_empty(), paths.is_empty()) {
            (true, true) => "clean".to_string(),
            (true, false) => format!("clean ({})", paths.join(", ")),
            (false, _) => format!("PRESENT ({})", clean::summary(&seen.artifacts)),
        },
        match restorable.map(|l| (l, age(l, seen.now_ms))) {
            Some((l, Some(age))) => format!("ready (newest {}, {age} ago)", l.id),
            Some((l, None)) => format!("ready (newest {})", l.id),
            None => "NONE".to_string(),
        }
    ));
    p.line(format!(
        "Overall: {}",
        match judged.status {
            status::Word::Healthy => "HEALTHY",
            status::Word::Degraded => "DEGRADED",
            status::Word::Down => "DOWN",
        }
    ));
}

/// The `--json` data.
fn data<'a>(
    ctx: &Ctx<'_>,
    tools: &Tools,
    seen: &'a Observed,
    judged: &'a Assessment,
) -> HealthData<'a> {
    let restorable = newest_restorable(seen);
    HealthData {
        pm2_daemon_running: seen.daemon,
        instances: seen
            .instances
            .iter()
            .map(|i| {
                let u = i
                    .pid
                    .and_then(|pid| seen.usage.get(&pid).copied())
                    .unwrap_or_default();
                InstanceData {
                    instance: i,
                    uptime_ms: uptime_ms(i, seen.now_ms),
                    memory_bytes: u.memory_bytes,
                    cpu_percent: u.cpu_percent.max(0.0),
                }
            })
            .collect(),
        health: HealthProbe {
            url: tools.prober.url().to_string(),
            outcome: &seen.probe.outcome,
            status: seen.probe.outcome.status(),
            passed: seen.probe.outcome.passed(),
            latency_ms: crate::verdict::ms(seen.probe.latency),
        },
        artifacts: &seen.artifacts,
        incidents: seen.incidents.len(),
        newest_incident: seen.incidents.first().map(|l| &l.id),
        healthy: judged.healthy,
        status: judged.status,
        stable: judged.stable,
        restarts: judged.restarts,
        restarts_recent: seen.recent_crashes,
        restarts_window_ms: crate::verdict::ms(ctx.settings.watch.loop_window),
        crash_looping: judged.crash_looping,
        sentry_enabled: judged.sentry_enabled,
        pm2_config: Pm2Config {
            max_restarts: judged.max_restarts,
            min_uptime_ms: crate::verdict::ms(judged.min_uptime),
        },
        pending: &judged.pending,
        code: seen.code.as_ref(),
        code_incident: matching_incident(seen),
        diagnosis: judged.diagnosis.as_ref(),
        backups_ready: restorable.is_some(),
        newest_restorable: restorable.map(|l| l.id.as_str()),
        switch: switch_data(ctx),
    }
}

/// The one line: healthy or not, and why, with what to do when PM2 itself is the problem.
fn summary(ctx: &Ctx<'_>, tools: &Tools, seen: &Observed, judged: &Assessment) -> String {
    let probe = &seen.probe.outcome;
    let states = || {
        seen.instances
            .iter()
            .map(|i| i.status.as_str())
            .collect::<Vec<_>>()
            .join(",")
    };
    let what = if judged.crash_looping {
        format!(
            "crash loop: {} restarts in the last {} (PM2 status {}); {probe}",
            seen.recent_crashes.unwrap_or_default(),
            fmt_duration(ctx.settings.watch.loop_window),
            states()
        )
    } else if judged.healthy {
        format!("{} instance(s) online, {probe}", seen.instances.len())
    } else if !seen.daemon {
        format!(
            "PM2 daemon not running (PM2_HOME {}); {probe}",
            tools.pm2.home().display()
        )
    } else if seen.instances.is_empty() {
        format!("app {} is not known to PM2; {probe}", tools.pm2.name())
    } else {
        format!("PM2 status {}; {probe}", states())
    };
    match &judged.diagnosis {
        None => format!("healthy: {what}"),
        Some(d) => format!("NOT healthy: {what}; {}", d.advice()),
    }
}
