//! Restarting through PM2 and proving the result: delete + start, the verification as a
//! step, `pm2 save`, and the check of an app that guard did not restart.

use std::time::Instant;

use anyhow::Result;

use super::{Ctx, Tools};
use crate::evidence::{self, Offsets};
use crate::output::{StepName, StepState};
use crate::signals::Cancel;
use crate::verdict::{Reason, Verdict};
use crate::verify;
use crate::verify::rules::{Rules, Start};

/// `pm2 delete` + `pm2 start` from the ecosystem, as a step. Returns where the PM2 logs
/// ended before it (evidence is what comes after); Err is the verdict to report when PM2
/// could not even start it. `running`: the app's instances if the caller just asked PM2 (a
/// pm2 call saved), else they are asked for here.
pub async fn restart(
    ctx: &mut Ctx<'_>,
    tools: &Tools,
    running: Option<Vec<crate::pm2::Instance>>,
) -> Result<Offsets, Verdict> {
    let t = Instant::now();
    let failed =
        |e: anyhow::Error, ctx: &mut Ctx<'_>| could_not_start(ctx, StepName::Restart, t, &e);
    let ecosystem = match super::ecosystem_path(ctx) {
        Ok(e) => e,
        Err(e) => return Err(failed(e, ctx)),
    };
    let before = match running {
        Some(b) => b,
        None => match tools.pm2.instances().await {
            Ok(b) => b,
            Err(e) => return Err(failed(e, ctx)),
        },
    };
    let offsets = evidence::offsets(tools.pm2.home(), &before);
    match tools.pm2.restart(&ecosystem, !before.is_empty()).await {
        Ok(()) => {
            let how = if before.is_empty() {
                "first start from the ecosystem"
            } else {
                "pm2 delete + start"
            };
            ctx.printer.step(
                StepName::Restart,
                StepState::Ok,
                t.elapsed(),
                format!("{how} {}", ctx.settings.app.name),
            );
            Ok(offsets)
        }
        Err(e) => Err(failed(e, ctx)),
    }
}

/// PM2 could not even start (or reload) it: the step fails, and the verdict says why.
pub fn could_not_start(
    ctx: &mut Ctx<'_>,
    step: StepName,
    t: Instant,
    e: &anyhow::Error,
) -> Verdict {
    ctx.printer
        .step(step, StepState::Failed, t.elapsed(), format!("{e:#}"));
    Verdict::new(
        Reason::RestartFailed {
            error: format!("{e:#}"),
        },
        t.elapsed(),
    )
}

/// Why PM2's rolling reload cannot put this release in place, if it cannot: it keeps a
/// running app's `script`, `exec_mode` and instance count (checked on pm2 7.0.4), and in fork
/// mode it is a plain restart. None: reload.
pub fn reload_blocker(
    running: &[crate::pm2::Instance],
    declared: Option<&crate::ecosystem::Declared>,
    ecosystem: &std::path::Path,
) -> Option<String> {
    if running.is_empty() {
        return Some("the app is not running: first start".into());
    }
    if running
        .iter()
        .any(|i| i.exec_mode.as_deref() != Some("cluster_mode"))
    {
        return Some("the app runs in fork mode, where pm2 reload is a plain restart".into());
    }
    let Some(d) = declared else {
        return Some("the ecosystem could not be read (node missing)".into());
    };
    if let Some(mode) = d.exec_mode.as_deref()
        && !mode.starts_with("cluster")
    {
        return Some(format!("the ecosystem changes exec_mode to {mode}"));
    }
    if let Some(n) = d.instances.as_deref().and_then(|n| n.parse::<usize>().ok())
        && n > 0
        && n != running.len()
    {
        return Some(format!(
            "the ecosystem changes instances from {} to {n}",
            running.len()
        ));
    }
    let script = d.script_path(ecosystem);
    let running_script = running.iter().find_map(|i| i.exec_path.clone());
    if let (Some(new), Some(old)) = (&script, &running_script)
        && std::fs::canonicalize(new).unwrap_or(new.clone())
            != std::fs::canonicalize(old).unwrap_or(old.clone())
    {
        return Some(format!(
            "the ecosystem changes the script from {} to {}",
            old.display(),
            new.display()
        ));
    }
    None
}

/// PM2's rolling reload as a step (see [`reload_blocker`] for when it applies).
pub async fn reload(ctx: &mut Ctx<'_>, tools: &Tools) -> Result<Offsets, Verdict> {
    let t = Instant::now();
    let failed =
        |e: anyhow::Error, ctx: &mut Ctx<'_>| could_not_start(ctx, StepName::Reload, t, &e);
    let ecosystem = match super::ecosystem_path(ctx) {
        Ok(e) => e,
        Err(e) => return Err(failed(e, ctx)),
    };
    let before = tools.pm2.instances().await.unwrap_or_default();
    let offsets = evidence::offsets(tools.pm2.home(), &before);
    match tools.pm2.reload(&ecosystem).await {
        Ok(()) => {
            ctx.printer.step(
                StepName::Reload,
                StepState::Ok,
                t.elapsed(),
                format!(
                    "pm2 reload {} ({} instance(s), one at a time)",
                    ctx.settings.app.name,
                    before.len()
                ),
            );
            Ok(offsets)
        }
        Err(e) => Err(failed(e, ctx)),
    }
}

/// The verification rules of these settings.
pub fn rules(ctx: &Ctx<'_>, start: Start) -> Rules {
    Rules {
        deadline: ctx.settings.health.deadline,
        stable_for: ctx.settings.health.stable_for,
        start,
        timeouts_in_a_row: ctx.settings.health.timeouts_in_a_row,
        load_errors: ctx.settings.health.load_errors,
    }
}

/// Verify and print the verdict as a step; `since`: where the PM2 logs ended before the
/// restart, if guard restarted the app.
pub async fn verify_step(
    ctx: &mut Ctx<'_>,
    tools: &Tools,
    start: Start,
    since: Option<&Offsets>,
    cancel: &Cancel,
) -> Result<Verdict> {
    let printer = &*ctx.printer;
    let verdict = verify::verify(
        &tools.pm2,
        &tools.prober,
        rules(ctx, start),
        ctx.settings.health.interval,
        since,
        cancel,
        &mut |p| printer.progress(StepName::Verify, &p.to_string()),
    )
    .await?;
    print_verdict(ctx, &verdict);
    Ok(verdict)
}

/// The verdict as a step line.
pub fn print_verdict(ctx: &mut Ctx<'_>, verdict: &Verdict) {
    let state = if verdict.healthy {
        StepState::Ok
    } else {
        StepState::Failed
    };
    ctx.printer
        .step(StepName::Verify, state, verdict.elapsed(), &verdict.message);
}

/// The apps of the saved list that a `pm2 save` now would drop (PM2 does not run them:
/// its daemon was restarted without `pm2 resurrect`), sorted.
pub fn lost_by_save(saved: &[String], running: &[String]) -> Vec<String> {
    let mut lost: Vec<String> = saved
        .iter()
        .filter(|s| !running.contains(s))
        .cloned()
        .collect();
    lost.sort();
    lost.dedup();
    lost
}

/// `pm2 save`, as a step; a failure is a warning, the app runs either way. Never a save that
/// drops an app the saved list had: after a daemon restart without `pm2 resurrect`, PM2 runs
/// only what guard started, and a save would leave the other apps out of the next reboot.
pub async fn save_step(ctx: &mut Ctx<'_>, tools: &Tools) {
    let t = Instant::now();
    let saved: Vec<String> = crate::pm2::dump_entries(&tools.pm2.home().join("dump.pm2"))
        .map(|d| d.into_iter().map(|(name, _)| name).collect())
        .unwrap_or_default();
    // The app's own processes (its switch slots too) come and go with guard's own runs.
    let app = &ctx.settings.app.name;
    let own = |n: &String| match &ctx.settings.switch {
        Some(sw) => crate::switch::is_own(app, sw.ports, n),
        None => n == app,
    };
    let saved: Vec<String> = saved.into_iter().filter(|n| !own(n)).collect();
    // Only a saved list with other apps needs PM2's whole list (a pm2 call).
    if !saved.is_empty() {
        let running: Vec<String> = match tools.pm2.jlist().await {
            Ok(list) => list.into_iter().map(|i| i.name).collect(),
            Err(e) => {
                ctx.printer.step(
                    StepName::Pm2Save,
                    StepState::Warn,
                    t.elapsed(),
                    format!(
                        "skipped: PM2's list could not be read to check what a save keeps ({e:#})"
                    ),
                );
                return;
            }
        };
        let lost = lost_by_save(&saved, &running);
        if !lost.is_empty() {
            ctx.printer.step(
                StepName::Pm2Save,
                StepState::Warn,
                t.elapsed(),
                format!(
                    "skipped: saving now would drop {} from the list PM2 restores after a reboot (PM2 does not run them: was its daemon restarted without `pm2 resurrect`?); run `pm2 resurrect`, check `pm2 ls`, then `pm2 save`",
                    lost.join(", ")
                ),
            );
            return;
        }
    }
    match tools.pm2.save().await {
        Ok(()) => ctx.printer.step(
            StepName::Pm2Save,
            StepState::Ok,
            t.elapsed(),
            "process list saved for reboots",
        ),
        Err(e) => ctx.printer.step(
            StepName::Pm2Save,
            StepState::Warn,
            t.elapsed(),
            format!("{e:#}"),
        ),
    }
}

/// One look at an app guard did not restart: every instance online and one probe passing.
pub async fn check_running(ctx: &mut Ctx<'_>, tools: &Tools) -> bool {
    let t = Instant::now();
    let probe = tools.prober.probe().await;
    let instances = tools.pm2.instances().await.unwrap_or_default();
    let online = crate::pm2::all_online(&instances);
    let healthy = online && probe.outcome.passed();
    let detail = format!(
        "running version untouched: {} instance(s) {}, {}",
        instances.len(),
        if online { "online" } else { "NOT online" },
        probe.outcome
    );
    ctx.printer.step(
        StepName::Running,
        if healthy {
            StepState::Ok
        } else {
            StepState::Failed
        },
        t.elapsed(),
        detail,
    );
    healthy
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ecosystem::Declared;
    use crate::pm2::Instance;
    use std::path::Path;

    fn inst(id: u32, mode: &str) -> Instance {
        Instance {
            pm_id: id,
            status: "online".into(),
            exec_mode: Some(mode.into()),
            exec_path: Some("/srv/app/server.js".into()),
            ..Instance::default()
        }
    }

    #[test]
    fn a_save_that_would_drop_a_saved_app_is_named() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert!(lost_by_save(&s(&["api", "worker"]), &s(&["api", "worker", "cron"])).is_empty());
        assert_eq!(
            lost_by_save(&s(&["worker", "api", "worker"]), &s(&["api"])),
            s(&["worker"])
        );
        assert!(lost_by_save(&[], &s(&["api"])).is_empty());
    }

    #[test]
    fn reload_only_where_pm2_reload_puts_every_value_in_place() {
        let eco = Path::new("/srv/app/ecosystem.config.js");
        let d = Declared {
            script: Some("server.js".into()),
            exec_mode: Some("cluster".into()),
            instances: Some("2".into()),
            ..Declared::default()
        };
        let two = [inst(0, "cluster_mode"), inst(1, "cluster_mode")];
        assert_eq!(reload_blocker(&two, Some(&d), eco), None);
        assert!(
            reload_blocker(&[], Some(&d), eco)
                .unwrap()
                .contains("not running")
        );
        let fork = [inst(0, "fork_mode")];
        assert!(
            reload_blocker(&fork, Some(&d), eco)
                .unwrap()
                .contains("fork mode")
        );
        let three = Declared {
            instances: Some("3".into()),
            ..d.clone()
        };
        assert!(
            reload_blocker(&two, Some(&three), eco)
                .unwrap()
                .contains("2 to 3")
        );
        let moved = Declared {
            script: Some("dist/main.js".into()),
            ..d.clone()
        };
        assert!(
            reload_blocker(&two, Some(&moved), eco)
                .unwrap()
                .contains("script")
        );
        let max = Declared {
            instances: Some("max".into()),
            ..d
        };
        assert_eq!(reload_blocker(&two, Some(&max), eco), None);
    }
}
