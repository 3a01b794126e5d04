//! `guard deploy`: back up, clean, run the deploy step, clean again, check the ecosystem,
//! restart through PM2, verify, and roll back on its own when the new version is not healthy.

use crate::code::Code;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::Serialize;
use tokio::process::Command;

use super::Done;
use crate::clean::Scope;
use crate::cli::DeployArgs;
use crate::ecosystem;
use crate::exit::Happened;
use crate::lock::Lock;
use crate::ops::{self, Ctx, Tools, restart, restore, snapshot};
use crate::output::StepState;
use crate::runner;
use crate::settings::Strategy;
use crate::store::Kind;
use crate::verdict::Verdict;
use crate::verify::rules::Start;

/// A deploy step that runs longer than this is stopped and counts as failed.
const DEPLOY_STEP_LIMIT: Duration = Duration::from_secs(3600);

/// Lines of the deploy step's output kept in `--json` and shown on failure with `-q`.
const STEP_TAIL: usize = 20;

/// `--json` data of `guard deploy`.
#[derive(Serialize, Default)]
struct DeployData {
    /// The ecosystem file used for the restart.
    ecosystem: Option<String>,
    /// The last lines the deploy step printed (masked); all of them are in the incident's
    /// logs/deploy-step.log.
    step_output: Vec<String>,
    /// The commit (or tree fingerprint) before the deploy.
    before: Option<Code>,
    /// The commit in place after the deploy step (what was deployed).
    deployed: Option<Code>,
    /// `restart`, `reload` or `preflight`.
    strategy: Option<Strategy>,
    /// The verdict of the new release's preflight trial on a spare port, if it had one.
    preflight: Option<Verdict>,
    /// The new release's verdict.
    verdict: Option<Verdict>,
    /// The verdict of the previous version after the rollback, if there was one.
    rollback: Option<Verdict>,
}

/// `guard deploy`.
pub async fn run(ctx: &mut Ctx<'_>, args: &DeployArgs) -> Result<Done> {
    // Everything that can be wrong with the input is found before anything changes.
    let tools = ctx.tools()?;
    ops::check_files(ctx)?;
    // A clean path that resolves outside app.dir is refused here, before the backup.
    crate::clean::find(&ctx.settings, Scope::BeforeBuild)?;
    ops::ecosystem_path(ctx)?;
    // `guard check`'s failures refuse the deploy before anything changes (among them the
    // incident's defaults on an app whose script lies in dist/); its warnings are shown.
    ops::inspect::deploy_gate(ctx, &tools).await?;
    if ctx.settings.strategy != Strategy::Restart {
        ops::trial::check_port(ctx)?;
    }
    let step_cmd = deploy_command(ctx, args);
    let mut lock = ops::lock(ctx).await?;

    let taken = snapshot::take(ctx, &tools, Kind::PreDeploy, "deploy", &[]).await?;
    let id = taken.id.clone();
    ops::changing(&mut lock, Some(&id));
    let mut data = DeployData {
        before: taken.fingerprint.clone(),
        ..DeployData::default()
    };
    let done = match after_backup(ctx, args, &tools, &id, step_cmd, &mut data, &mut lock).await {
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
                Happened::LeftUnverified,
                format!(
                    "deploy stopped by an error after the backup ({e:#}); the service is NOT verified healthy: check `guard health`, restore with `guard rollback --incident {id}`"
                ),
            )
        }
    };
    // What runs now: the deployed code, unless it was put back.
    let after = match done.happened {
        Happened::Done | Happened::LeftUnverified => data.deployed.clone(),
        _ => data.before.clone(),
    };
    ctx.printer.set_codes(data.before.clone(), after.clone());
    ctx.printer.set_data(&data);
    ops::record(
        ctx,
        &id,
        "deploy",
        crate::exit::decide(done.happened),
        &done.summary,
        data.before.clone(),
        after,
    );
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

async fn after_backup(
    ctx: &mut Ctx<'_>,
    args: &DeployArgs,
    tools: &Tools,
    id: &str,
    step_cmd: StepCmd,
    data: &mut DeployData,
    lock: &mut Lock,
) -> Result<Done> {
    ops::clean_step(ctx, "clean", Scope::BeforeBuild)?;
    if let Some(signal) = ctx.cancel.signal() {
        return Ok(Done::new(
            Happened::StoppedUnchanged { signal },
            format!("stopped by signal {signal} before the deploy step; nothing deployed"),
        ));
    }

    // The deploy step. Nothing has been restarted yet, so a failure only needs the files back.
    let (result, output) = deploy_step(ctx, step_cmd, lock).await;
    // The step may have written new secrets into the env files: mask those too from now on.
    let mut redactor = ctx.printer.redactor().clone();
    redactor.learn_env_files(&ctx.settings.app.dir, &ctx.settings.backup.files);
    ctx.printer.set_redactor(redactor);
    keep_step_output(ctx, id, &output, data);
    if let Err(why) = result {
        ctx.printer.failed_output(
            &format!("the deploy step's last lines (all in incident {id}, logs/deploy-step.log):"),
            &data.step_output,
        );
        return undo_before_restart(ctx, tools, id, &why).await;
    }
    // Outside git the deployed tree has no fingerprint until the next snapshot: none is named.
    data.deployed = ops::current_commit(ctx).await;
    if ctx.settings.clean.after_deploy {
        ops::clean_step(ctx, "clean again", Scope::Artifacts)?;
    }

    // The release may have renamed its ecosystem file: it is found again now.
    let t = Instant::now();
    let mut declared = None;
    let checked = match ops::ecosystem_path(ctx) {
        Ok(eco) => {
            data.ecosystem = Some(eco.display().to_string());
            ecosystem::check(
                &eco,
                &ctx.settings.app.name,
                tools.pm2.install_root().as_deref(),
            )
            .await
            .map_err(|e| format!("{e:#}"))
            .and_then(|d| match d {
                Some(d) => {
                    // The release's ecosystem may bring new env values: mask them too.
                    ops::inspect::learn_ecosystem_env(ctx, Some(&d));
                    // A release that names files PM2 cannot find would be found out only
                    // after the running app was deleted: refused here, nothing restarted.
                    let missing = d.missing_files(&eco);
                    let ok = if missing.is_empty() {
                        ops::script_outside_clean(ctx, &d, &eco).map(|()| true)
                    } else {
                        Err(format!(
                            "the release's ecosystem names what does not exist: {}",
                            missing.join(", ")
                        ))
                    };
                    declared = Some(d);
                    ok
                }
                None => Ok(false),
            })
        }
        Err(e) => Err(format!("{e:#}")),
    };
    match checked {
        Ok(true) => ctx.printer.step(
            "ecosystem",
            StepState::Ok,
            t.elapsed(),
            format!(
                "{} loads and declares the app",
                data.ecosystem.as_deref().unwrap_or_default()
            ),
        ),
        Ok(false) => ctx.printer.step(
            "ecosystem",
            StepState::Warn,
            t.elapsed(),
            "not checked: node not on PATH",
        ),
        Err(e) => {
            ctx.printer
                .step("ecosystem", StepState::Failed, t.elapsed(), &e);
            return undo_before_restart(ctx, tools, id, &e).await;
        }
    }
    if let Some(sig) = ctx.cancel.signal() {
        return undo_before_restart(ctx, tools, id, &format!("stopped by signal {sig}")).await;
    }

    // With `preflight` or `reload`, the release is tried on a spare port first: a release
    // that fails there never touches the running app.
    let strategy = ctx.settings.strategy;
    data.strategy = Some(strategy);
    let eco = ops::ecosystem_path(ctx)?;
    let running = tools.pm2.instances().await?;
    if strategy != Strategy::Restart {
        ops::trial::delete_leftover(ctx, tools).await;
        if running.is_empty() {
            ctx.printer.step(
                "preflight",
                StepState::Warn,
                Duration::ZERO,
                "skipped: the app is not running, so there is nothing to keep serving (first start)",
            );
        } else {
            let trial = ops::trial::run(ctx, tools, &eco, id).await?;
            data.preflight = Some(trial.clone());
            if !trial.healthy {
                return undo_before_restart(
                    ctx,
                    tools,
                    id,
                    &format!(
                        "the new release failed its preflight trial: {}; the running app was never touched",
                        trial.message
                    ),
                )
                .await;
            }
            if let Some(sig) = ctx.cancel.signal() {
                return undo_before_restart(ctx, tools, id, &format!("stopped by signal {sig}"))
                    .await;
            }
        }
    }
    let reload = strategy == Strategy::Reload
        && match restart::reload_blocker(&running, declared.as_ref(), &eco) {
            None => true,
            Some(why) => {
                ctx.printer.step(
                    "reload",
                    StepState::Warn,
                    Duration::ZERO,
                    format!("not possible: {why}; pm2 delete + start instead"),
                );
                false
            }
        };
    let (restarted, start) = if reload {
        // PM2's counters and pids after the reload are the baseline.
        (restart::reload(ctx, tools).await, Start::Existing)
    } else {
        // PM2's list from just before the trial is still what runs (a trial is another app).
        (
            restart::restart(ctx, tools, Some(running)).await,
            Start::Fresh,
        )
    };
    let mut offsets = crate::evidence::Offsets::new();
    let verdict = match restarted {
        Ok(o) => {
            offsets = o;
            let cancel = ctx.cancel.clone();
            restart::verify_step(ctx, tools, start, Some(&offsets), &cancel).await?
        }
        Err(v) => v,
    };
    data.verdict = Some(verdict.clone());
    if verdict.healthy {
        restart::save_step(ctx, tools).await;
        return Ok(Done::new(
            Happened::Done,
            format!("deployed and verified healthy (backup: incident {id})"),
        ));
    }

    ops::save_evidence(ctx, id, &verdict, &offsets).await;
    let interrupted = ctx.cancel.signal();
    if args.no_rollback && interrupted.is_none() {
        return Ok(Done::new(
            Happened::LeftUnverified,
            format!(
                "deploy failed ({}); not rolled back (--no-rollback): restore with `guard rollback --incident {id}`",
                verdict.message
            ),
        ));
    }
    let target = ctx.store.verify(id)?;
    let back = restore::restore_and_restart(ctx, tools, &target).await?;
    let healthy = back.healthy;
    let code = target
        .manifest
        .fingerprint()
        .map(|f| format!(" ({f})"))
        .unwrap_or_default();
    let summary = if healthy {
        format!(
            "deploy failed ({}); rolled back to incident {id}{code}, previous version healthy",
            verdict.message
        )
    } else {
        format!(
            "deploy failed ({}) and the rollback to incident {id} is NOT healthy ({}): a human must act",
            verdict.message, back.message
        )
    };
    data.rollback = Some(back);
    Ok(Done::new(
        Happened::PutBack {
            healthy,
            signal: interrupted,
        },
        summary,
    ))
}

/// The deploy step's output, masked, into the incident (all of it) and the JSON (the end).
fn keep_step_output(ctx: &mut Ctx<'_>, id: &str, output: &[String], data: &mut DeployData) {
    if output.is_empty() {
        return;
    }
    let r = ctx.printer.redactor();
    let masked: Vec<String> = output
        .iter()
        .map(|l| crate::output::sanitize(&r.redact(l)))
        .collect();
    if let Err(e) = ctx
        .store
        .save_evidence(id, "deploy-step.log", &(masked.join("\n") + "\n"))
    {
        tracing::warn!("saving the deploy step's output: {e:#}");
    }
    data.step_output = masked[masked.len().saturating_sub(STEP_TAIL)..].to_vec();
}

/// Run the deploy step in app.dir; Err carries why it failed. Also returns every line it
/// printed (stdout and stderr, in the order they came).
async fn deploy_step(
    ctx: &mut Ctx<'_>,
    step_cmd: StepCmd,
    lock: &mut Lock,
) -> (std::result::Result<(), String>, Vec<String>) {
    let t = Instant::now();
    let (mut cmd, shown) = match step_cmd {
        StepCmd::None => {
            ctx.printer.step(
                "deploy step",
                StepState::Ok,
                t.elapsed(),
                "none configured (deploy.command)",
            );
            return (Ok(()), Vec::new());
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
            (cmd, runner::display(refs[0], &refs[1..]))
        }
    };
    cmd.current_dir(&ctx.settings.app.dir);
    let cancel = ctx.cancel.clone();
    // Its output is shown as it comes (masked, indented), so a long `npm ci` is visibly alive.
    let printer = &*ctx.printer;
    let mut lines = Vec::new();
    let mut show = |line: &str| {
        printer.detail(line);
        lines.push(line.to_string());
    };
    // The step's process group goes into the lock file: if guard is killed, the next run
    // stops the step before it goes on.
    let mut record = |pgid: i32| {
        if let Err(e) = lock.child(Some(pgid)) {
            tracing::warn!("recording the deploy step in the lock file: {e:#}");
        }
    };
    let result = tokio::select! {
        r = runner::run_tracked(cmd, &shown, DEPLOY_STEP_LIMIT, Some(&mut show), Some(&mut record)) => r,
        _ = cancel.cancelled() => Err(anyhow::anyhow!("stopped by signal {}", cancel.signal().unwrap_or(libc::SIGINT))),
    };
    if let Err(e) = lock.child(None) {
        tracing::warn!("recording the deploy step in the lock file: {e:#}");
    }
    // The step may have written new secrets into the env files (and its own command line may
    // name them): mask them from its step line on.
    let mut redactor = ctx.printer.redactor().clone();
    redactor.learn_env_files(&ctx.settings.app.dir, &ctx.settings.backup.files);
    ctx.printer.set_redactor(redactor);
    let result = match result {
        Ok(out) if out.success() && !out.lingering.is_empty() => {
            // It ended, but something it started in the background still runs (and writes
            // where nobody reads): said, never waited for.
            ctx.printer.step(
                "deploy step",
                StepState::Warn,
                t.elapsed(),
                format!(
                    "{shown}; it left running, holding its output: {}",
                    out.lingering.join(", ")
                ),
            );
            Ok(())
        }
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
    };
    (result, lines)
}

/// Before any restart: put the whole tree back (a half-built dist/ included), leave the
/// running process alone, and check it.
async fn undo_before_restart(
    ctx: &mut Ctx<'_>,
    tools: &Tools,
    id: &str,
    why: &str,
) -> Result<Done> {
    let target = ctx.store.verify(id)?;
    restore::put_back(ctx, &target).await?;
    crate::store::tree::sync_fs(&ctx.settings.app.dir);
    let healthy = restart::check_running(ctx, tools).await;
    let summary = if healthy {
        format!(
            "deploy failed before the restart ({why}); files and code restored from incident {id}, running version healthy"
        )
    } else {
        format!(
            "deploy failed before the restart ({why}); files restored from incident {id}, but the running app is NOT healthy"
        )
    };
    Ok(Done::new(
        Happened::PutBack {
            healthy,
            signal: ctx.cancel.signal(),
        },
        summary,
    ))
}
