//! `guard deploy`: back up, clean, run the deploy step, clean again, restart through PM2,
//! verify, and roll back on its own when the new version is not healthy.

use std::time::{Duration, Instant};

use anyhow::Result;
use tokio::process::Command;

use super::rollback::{record, restore_and_restart, restore_files, save_step, verify_step};
use super::{Ctx, Done};
use crate::cli::DeployArgs;
use crate::ecosystem;
use crate::evidence;
use crate::exec;
use crate::exit::{ExitStatus, usage};
use crate::health::Prober;
use crate::incident::Kind;
use crate::output::StepState;
use crate::pm2::Pm2;
use crate::verify::Verdict;

/// A deploy step that runs longer than this is stopped and counts as failed.
const DEPLOY_STEP_LIMIT: Duration = Duration::from_secs(3600);

/// `guard deploy`.
pub async fn run(ctx: &mut Ctx<'_>, args: &DeployArgs) -> Result<Done> {
    // Everything that can be wrong with the input is found before anything changes.
    let pm2 = Pm2::new(&ctx.settings)?;
    let prober = Prober::new(&ctx.settings.health)?;
    super::backup::check_files(ctx)?;
    // A clean path that resolves outside app.dir is refused here, before the backup.
    crate::clean::find(&ctx.settings)?;
    if !ctx.settings.app.ecosystem.is_file() {
        return Err(usage(format!(
            "app.ecosystem {} does not exist",
            ctx.settings.app.ecosystem.display()
        )));
    }
    let step_cmd = deploy_command(ctx, args);
    let _lock = ctx.lock()?;

    let id = super::backup::take(ctx, &pm2, Kind::PreDeploy, "deploy", true).await?;
    let done = deploy_after_backup(ctx, args, &pm2, &prober, &id, step_cmd).await;
    let done = match done {
        Ok(done) => done,
        // An error after the backup: the state may be half-changed and is not verified, which
        // is exit 4 whatever the error was; say where the backup is.
        Err(e) => {
            ctx.printer.step(
                "deploy",
                StepState::Failed,
                Duration::ZERO,
                format!("{e:#}"),
            );
            Done::new(
                ExitStatus::NeedsHuman,
                format!(
                    "deploy stopped by an error after the backup ({e:#}); the service is NOT verified healthy: check `guard health`, restore with `guard rollback --incident {id}`"
                ),
            )
        }
    };
    record(ctx, &id, "deploy", done.status, &done.summary);
    Ok(done)
}

enum StepCmd {
    None,
    Shell(String),
    Argv(Vec<String>),
}

fn deploy_command(ctx: &Ctx<'_>, args: &DeployArgs) -> StepCmd {
    if !args.command.is_empty() {
        StepCmd::Argv(args.command.clone())
    } else if let Some(c) = &ctx.settings.deploy_command {
        StepCmd::Shell(c.clone())
    } else {
        StepCmd::None
    }
}

async fn deploy_after_backup(
    ctx: &mut Ctx<'_>,
    args: &DeployArgs,
    pm2: &Pm2,
    prober: &Prober,
    id: &str,
    step_cmd: StepCmd,
) -> Result<Done> {
    super::clean::clean_step(ctx, "clean")?;
    if let Some(sig) = ctx.cancel.signal() {
        return Ok(Done::new(
            ExitStatus::Interrupted(sig),
            format!("stopped by signal {sig} before the deploy step; nothing deployed"),
        ));
    }

    // The deploy step. Nothing has been restarted yet, so a failure only needs the files back.
    if let Err(why) = deploy_step(ctx, step_cmd).await {
        return undo_before_restart(ctx, pm2, prober, id, &why).await;
    }
    super::clean::clean_step(ctx, "clean again")?;

    let t = Instant::now();
    match ecosystem::check(&ctx.settings.app.ecosystem, &ctx.settings.app.name).await {
        Ok(checked) => {
            let detail = if checked {
                "loads and declares the app"
            } else {
                "not checked: node not on PATH"
            };
            ctx.printer.step(
                "ecosystem",
                if checked {
                    StepState::Ok
                } else {
                    StepState::Warn
                },
                t.elapsed(),
                detail,
            );
        }
        Err(e) => {
            ctx.printer.step(
                "ecosystem",
                StepState::Failed,
                t.elapsed(),
                format!("{e:#}"),
            );
            return undo_before_restart(ctx, pm2, prober, id, &format!("{e:#}")).await;
        }
    }
    if let Some(sig) = ctx.cancel.signal() {
        return undo_before_restart(ctx, pm2, prober, id, &format!("stopped by signal {sig}"))
            .await;
    }

    let t = Instant::now();
    let verdict = match pm2.restart(&ctx.settings.app.ecosystem).await {
        Ok(known) => {
            let how = if !known {
                "first start from the ecosystem"
            } else {
                "pm2 delete + start"
            };
            ctx.printer.step(
                "restart",
                StepState::Ok,
                t.elapsed(),
                format!("{how} {}", ctx.settings.app.name),
            );
            let cancel = ctx.cancel.clone();
            verify_step(ctx, pm2, prober, &cancel).await?
        }
        Err(e) => {
            ctx.printer
                .step("restart", StepState::Failed, t.elapsed(), format!("{e:#}"));
            Verdict::not_started(format!("restart failed: {e:#}"), t.elapsed())
        }
    };
    ctx.printer
        .set_data(serde_json::json!({ "verdict": verdict }));
    if verdict.healthy {
        save_step(ctx, pm2).await;
        return Ok(Done::new(
            ExitStatus::Success,
            format!("deployed and verified healthy (backup: incident {id})"),
        ));
    }

    save_evidence(ctx, id, &verdict);
    let interrupted = ctx.cancel.signal();
    if args.no_rollback && interrupted.is_none() {
        return Ok(Done::new(
            ExitStatus::NeedsHuman,
            format!(
                "deploy failed ({}); not rolled back (--no-rollback): restore with `guard rollback --incident {id}`",
                verdict.reason
            ),
        ));
    }
    let target = ctx.store.verify(id)?;
    let back = restore_and_restart(ctx, pm2, prober, &target).await?;
    ctx.printer
        .set_data(serde_json::json!({ "verdict": verdict, "rollback": back }));
    let status = match (back.healthy, interrupted) {
        (true, Some(sig)) => ExitStatus::Interrupted(sig),
        (true, None) => ExitStatus::RolledBack,
        (false, _) => ExitStatus::NeedsHuman,
    };
    let summary = if back.healthy {
        format!(
            "deploy failed ({}); rolled back to incident {id}, previous version healthy",
            verdict.reason
        )
    } else {
        format!(
            "deploy failed ({}) and the rollback to incident {id} is NOT healthy ({}): a human must act",
            verdict.reason, back.reason
        )
    };
    Ok(Done::new(status, summary))
}

/// Run the deploy step in app.dir; Err carries why it failed.
async fn deploy_step(ctx: &mut Ctx<'_>, step_cmd: StepCmd) -> std::result::Result<(), String> {
    let t = Instant::now();
    let (mut cmd, shown) = match step_cmd {
        StepCmd::None => {
            ctx.printer.step(
                "deploy step",
                StepState::Ok,
                t.elapsed(),
                "none configured (deploy.command)",
            );
            return Ok(());
        }
        StepCmd::Shell(c) => {
            let mut cmd = Command::new("sh");
            cmd.arg("-c").arg(&c);
            (cmd, c)
        }
        StepCmd::Argv(argv) => {
            let mut cmd = Command::new(&argv[0]);
            cmd.args(&argv[1..]);
            let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
            (cmd, exec::display(refs[0], &refs[1..]))
        }
    };
    cmd.current_dir(&ctx.settings.app.dir);
    let cancel = ctx.cancel.clone();
    // Its output is shown as it comes (masked, indented), so a long `npm ci` is visibly alive.
    let printer = &*ctx.printer;
    let result = tokio::select! {
        r = exec::run_streaming(cmd, &shown, DEPLOY_STEP_LIMIT, |line| printer.detail(line)) => r,
        _ = cancel.cancelled() => Err(anyhow::anyhow!("stopped by signal {}", cancel.signal().unwrap_or(libc::SIGINT))),
    };
    match result {
        Ok(out) if out.success() => {
            ctx.printer
                .step("deploy step", StepState::Ok, t.elapsed(), &shown);
            Ok(())
        }
        Ok(out) => {
            let why = format!("`{shown}` failed ({})", out.describe_exit());
            ctx.printer
                .step("deploy step", StepState::Failed, t.elapsed(), &why);
            Err(why)
        }
        Err(e) => {
            let why = format!("{e:#}");
            ctx.printer
                .step("deploy step", StepState::Failed, t.elapsed(), &why);
            Err(why)
        }
    }
}

/// Before any restart: put files and code back, leave the running process alone, and check it.
async fn undo_before_restart(
    ctx: &mut Ctx<'_>,
    pm2: &Pm2,
    prober: &Prober,
    id: &str,
    why: &str,
) -> Result<Done> {
    let target = ctx.store.verify(id)?;
    restore_files(ctx, &target).await?;
    let t = Instant::now();
    let probe = prober.probe().await;
    let instances = pm2.instances().await.unwrap_or_default();
    let online = !instances.is_empty() && instances.iter().all(|i| i.status == "online");
    let healthy = online && probe.outcome.passed();
    let detail = format!(
        "running version untouched: {} instance(s) {}, {}",
        instances.len(),
        if online { "online" } else { "NOT online" },
        probe.outcome
    );
    ctx.printer.step(
        "check",
        if healthy {
            StepState::Ok
        } else {
            StepState::Failed
        },
        t.elapsed(),
        detail,
    );
    let status = match (healthy, ctx.cancel.signal()) {
        (true, Some(sig)) => ExitStatus::Interrupted(sig),
        (true, None) => ExitStatus::RolledBack,
        (false, _) => ExitStatus::NeedsHuman,
    };
    let summary = if healthy {
        format!(
            "deploy failed before the restart ({why}); files and code restored from incident {id}, running version healthy"
        )
    } else {
        format!(
            "deploy failed before the restart ({why}); files restored from incident {id}, but the running app is NOT healthy"
        )
    };
    Ok(Done::new(status, summary))
}

fn save_evidence(ctx: &mut Ctx<'_>, id: &str, verdict: &Verdict) {
    let tails = evidence::collect(&verdict.instances, ctx.printer.redactor());
    for tail in &tails {
        match ctx.store.save_evidence(id, &tail.name, &tail.text) {
            Ok(path) => tracing::info!("saved {}", path.display()),
            Err(e) => tracing::warn!("saving log evidence: {e:#}"),
        }
    }
    if let Some(err) = tails
        .iter()
        .find(|t| t.name.ends_with("-error.log") && !t.text.trim().is_empty())
    {
        ctx.printer.detail(format!(
            "from {} (tail saved in incident {id}, logs/):",
            err.name
        ));
        for line in evidence::excerpt(&err.text, 6) {
            ctx.printer.detail(format!("  {line}"));
        }
    }
}
