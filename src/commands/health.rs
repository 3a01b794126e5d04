//! `guard health [--wait]`: the incident report's status block as a command.

use std::time::Duration;

use anyhow::Result;
use serde::Serialize;

use super::Done;
use crate::clean::{self, Artifact};
use crate::cli::HealthArgs;
use crate::exit::Happened;
use crate::ops::{Ctx, restart};
use crate::output::fmt_duration;
use crate::pm2::Instance;
use crate::probe::ProbeOutcome;
use crate::resources;
use crate::verdict::Verdict;
use crate::watch::Start;

/// `--json` data of `guard health --wait`.
#[derive(Serialize)]
struct WaitData {
    verdict: Verdict,
}

/// One instance in `--json`.
#[derive(Serialize)]
struct InstanceData<'a> {
    instance: &'a Instance,
    uptime: String,
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
}

/// `guard health`.
pub async fn run(ctx: &mut Ctx<'_>, args: &HealthArgs) -> Result<Done> {
    let tools = ctx.tools()?;
    let (pm2, prober) = (&tools.pm2, &tools.prober);
    if args.wait {
        let cancel = ctx.cancel.clone();
        let v = restart::verify_step(ctx, &tools, Start::Existing, &cancel).await?;
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
        let uptime = i
            .started_at_ms
            .filter(|_| i.status == "online")
            .map(|s| {
                fmt_duration(Duration::from_millis(
                    u64::try_from(now_ms - s).unwrap_or(0),
                ))
            })
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
            uptime,
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

    let online = !instances.is_empty() && instances.iter().all(|i| i.status == "online");
    let healthy = online && probe.outcome.passed();
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
    });
    let summary = if healthy {
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
