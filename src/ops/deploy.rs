//! The deploy, as phases: check the inputs, then after the snapshot clean, run the deploy
//! step, check the release, try it (preflight, reload), put it in service, verify, and put
//! the previous version back when it fails. Each phase says whether the deploy goes on;
//! `commands/deploy.rs` only sequences them.

use std::time::{Duration, Instant};

use anyhow::Result;
use serde::Serialize;
use tokio::process::Command;

use super::{Ctx, Tools, restart, restore};
use crate::clean::Scope;
use crate::code::Code;
use crate::ecosystem::{self, Declared};
use crate::evidence::Offsets;
use crate::exit::{Done, Happened};
use crate::lock::Lock;
use crate::output::{StepName, StepState};
use crate::pm2::Instance;
use crate::runner;
use crate::settings::Strategy;
use crate::verdict::Verdict;
use crate::verify::rules::Start;

/// A deploy step that runs longer than this is stopped and counts as failed.
const DEPLOY_STEP_LIMIT: Duration = Duration::from_secs(3600);

/// Lines of the deploy step's output kept in `--json` and shown on failure with `-q`.
const STEP_TAIL: usize = 20;

/// `--json` data of `guard deploy`.
#[derive(Serialize, Default)]
pub struct DeployData {
    /// The ecosystem file used for the restart.
    pub ecosystem: Option<String>,
    /// The last lines the deploy step printed (masked); all of them are in the incident's
    /// logs/deploy-step.log.
    pub step_output: Vec<String>,
    /// The commit (or tree fingerprint) before the deploy.
    pub before: Option<Code>,
    /// The commit in place after the deploy step (what was deployed).
    pub deployed: Option<Code>,
    /// `restart`, `reload` or `preflight`.
    pub strategy: Option<Strategy>,
    /// The verdict of the new release's preflight trial on a spare port, if it had one.
    pub preflight: Option<Verdict>,
    /// The new release's verdict.
    pub verdict: Option<Verdict>,
    /// The verdict of the previous version after the rollback, if there was one.
    pub rollback: Option<Verdict>,
}

/// The deploy step: nothing, a shell command from guard.toml, or argv after `--`.
pub enum StepCmd {
    /// None configured.
    None,
    /// `deploy.command`, run by `sh -c`.
    Shell(String),
    /// `guard deploy -- CMD ARGS...`.
    Argv(Vec<String>),
}

/// What the operator asked of this deploy.
pub struct Request<'a> {
    /// The deploy step.
    pub step: StepCmd,
    /// `--ref`: what is deployed, for the step's GUARD_REF.
    pub git_ref: Option<&'a str>,
    /// `--no-rollback`.
    pub no_rollback: bool,
}

/// Whether the deploy goes on after a phase, or how it ended.
pub enum Flow<T> {
    /// On, with what the phase found.
    Go(T),
    /// Ended here.
    Stop(Done),
}

/// Unwrap a [`Flow`] inside a phase sequence: the end of the deploy returns at once.
macro_rules! go {
    ($flow:expr) => {
        match $flow {
            Flow::Go(v) => v,
            Flow::Stop(done) => return Ok(done),
        }
    };
}

/// Everything that can be wrong with the input, found before anything changes (a usage error,
/// exit 2): backup files, clean paths, the ecosystem, `guard check`'s failures, the trial port.
pub async fn check_inputs(ctx: &mut Ctx<'_>, tools: &Tools) -> Result<()> {
    super::check_files(ctx)?;
    // A clean path that resolves outside app.dir is refused here, before the backup.
    crate::clean::find(&ctx.settings, Scope::BeforeBuild)?;
    super::ecosystem_path(ctx)?;
    // `guard check`'s failures refuse the deploy before anything changes (among them the
    // incident's defaults on an app whose script lies in dist/); its warnings are shown.
    super::inspect::deploy_gate(ctx, tools).await?;
    match ctx.settings.strategy {
        Strategy::Restart => {}
        Strategy::Switch => super::switch::check_port(ctx, tools).await?,
        Strategy::Reload | Strategy::Preflight => super::trial::check_port(ctx)?,
    }
    Ok(())
}

/// Everything after the snapshot `id`: a short sequence of phases.
pub async fn after_backup(
    ctx: &mut Ctx<'_>,
    tools: &Tools,
    id: &str,
    request: Request<'_>,
    data: &mut DeployData,
    lock: &mut Lock,
) -> Result<Done> {
    let Request {
        step,
        git_ref,
        no_rollback,
    } = request;
    // A previous release kept warm past its time is stopped before anything else.
    super::switch::expire(ctx, tools).await?;
    go!(clean_first(ctx)?);
    go!(deploy_step_phase(ctx, tools, id, step, git_ref, data, lock).await?);
    let declared = go!(check_release(ctx, tools, id, data).await?);
    go!(before_restart(ctx, tools, id, lock).await?);
    if ctx.settings.strategy == Strategy::Switch {
        // The release is verified on the idle port before it takes traffic: no trial.
        return super::switch::deploy(ctx, tools, id, data).await;
    }
    let eco = super::ecosystem_path(ctx)?;
    let running = tools.pm2.instances().await?;
    go!(trial_phase(ctx, tools, id, &eco, running.is_empty(), data).await?);
    let (restarted, start) = put_in_service(ctx, tools, running, declared.as_ref(), &eco).await;
    let mut offsets = Offsets::new();
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
    roll_back(ctx, tools, id, &verdict, &offsets, no_rollback, data).await
}

/// Remove every artifact before the deploy step; a signal here stops with nothing deployed.
fn clean_first(ctx: &mut Ctx<'_>) -> Result<Flow<()>> {
    super::clean_step(ctx, StepName::Clean, Scope::BeforeBuild)?;
    if let Some(signal) = ctx.cancel.signal() {
        return Ok(Flow::Stop(Done::new(
            Happened::StoppedUnchanged { signal },
            format!("stopped by signal {signal} before the deploy step; nothing deployed"),
        )));
    }
    Ok(Flow::Go(()))
}

/// Run the deploy step and keep its output; nothing has been restarted yet, so a failure
/// only needs the files back.
async fn deploy_step_phase(
    ctx: &mut Ctx<'_>,
    tools: &Tools,
    id: &str,
    step: StepCmd,
    git_ref: Option<&str>,
    data: &mut DeployData,
    lock: &mut Lock,
) -> Result<Flow<()>> {
    let (result, output) = deploy_step(ctx, step, git_ref, lock).await;
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
        return undo_before_restart(ctx, tools, id, &why)
            .await
            .map(Flow::Stop);
    }
    // Outside git the deployed tree has no fingerprint until the next snapshot: none is named.
    data.deployed = super::current_commit(ctx).await;
    if ctx.settings.clean.after_deploy {
        super::clean_step(ctx, StepName::CleanAgain, Scope::Artifacts)?;
    }
    Ok(Flow::Go(()))
}

/// The release's ecosystem, found again (a release may rename it): it must load, declare the
/// app, and name only files that exist. Returns its declaration (None when node is missing).
async fn check_release(
    ctx: &mut Ctx<'_>,
    tools: &Tools,
    id: &str,
    data: &mut DeployData,
) -> Result<Flow<Option<Declared>>> {
    let t = Instant::now();
    let mut declared = None;
    let checked = match super::ecosystem_path(ctx) {
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
                    super::inspect::learn_ecosystem_env(ctx, Some(&d));
                    // A release that names files PM2 cannot find would be found out only
                    // after the running app was deleted: refused here, nothing restarted.
                    let missing = d.missing_files(&eco);
                    let ok = if missing.is_empty() {
                        super::script_outside_clean(ctx, &d, &eco).map(|()| true)
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
            StepName::Ecosystem,
            StepState::Ok,
            t.elapsed(),
            format!(
                "{} loads and declares the app",
                data.ecosystem.as_deref().unwrap_or_default()
            ),
        ),
        Ok(false) => {
            // Without node, pm2 cannot start anything either: stop before the restart.
            let why = "node cannot be found: set `node` under [pm2]".to_string();
            ctx.printer
                .step(StepName::Ecosystem, StepState::Failed, t.elapsed(), &why);
            return undo_before_restart(ctx, tools, id, &why)
                .await
                .map(Flow::Stop);
        }
        Err(e) => {
            ctx.printer
                .step(StepName::Ecosystem, StepState::Failed, t.elapsed(), &e);
            return undo_before_restart(ctx, tools, id, &e)
                .await
                .map(Flow::Stop);
        }
    }
    if let Some(sig) = ctx.cancel.signal() {
        let why = format!("stopped by signal {sig}");
        return undo_before_restart(ctx, tools, id, &why)
            .await
            .map(Flow::Stop);
    }
    Ok(Flow::Go(declared))
}

/// `[hooks] before_restart` (database migrations): after the deploy step and the release
/// check, before the trial and any restart. A failure puts the files back; the running app
/// was never touched. (A rollback does not undo what it did to a database.)
async fn before_restart(
    ctx: &mut Ctx<'_>,
    tools: &Tools,
    id: &str,
    lock: &mut Lock,
) -> Result<Flow<()>> {
    let facts = super::hooks::Facts {
        incident: Some(id.to_string()),
        ..Default::default()
    };
    match super::hooks::run(ctx, super::hooks::Hook::BeforeRestart, &facts, Some(lock)).await {
        Some(Err(why)) => undo_before_restart(ctx, tools, id, &why)
            .await
            .map(Flow::Stop),
        _ => Ok(Flow::Go(())),
    }
}

/// With `preflight` or `reload`, the release is tried on a spare port first: a release that
/// fails there never touches the running app.
async fn trial_phase(
    ctx: &mut Ctx<'_>,
    tools: &Tools,
    id: &str,
    eco: &std::path::Path,
    first_start: bool,
    data: &mut DeployData,
) -> Result<Flow<()>> {
    if ctx.settings.strategy == Strategy::Restart {
        return Ok(Flow::Go(()));
    }
    super::trial::delete_leftover(ctx, tools).await;
    if first_start {
        ctx.printer.step(
            StepName::Preflight,
            StepState::Warn,
            Duration::ZERO,
            "skipped: the app is not running, so there is nothing to keep serving (first start)",
        );
        return Ok(Flow::Go(()));
    }
    let trial = super::trial::run(ctx, tools, eco, id).await?;
    data.preflight = Some(trial.clone());
    if !trial.healthy {
        let why = format!(
            "the new release failed its preflight trial: {}; the running app was never touched",
            trial.message
        );
        return undo_before_restart(ctx, tools, id, &why)
            .await
            .map(Flow::Stop);
    }
    if let Some(sig) = ctx.cancel.signal() {
        let why = format!("stopped by signal {sig}");
        return undo_before_restart(ctx, tools, id, &why)
            .await
            .map(Flow::Stop);
    }
    Ok(Flow::Go(()))
}

/// The strategy's way to replace what runs: PM2's rolling reload where it puts every value in
/// place, else delete + start. Returns where the logs ended before it (or the verdict when
/// PM2 could not even start it) and how verification must treat the counters.
async fn put_in_service(
    ctx: &mut Ctx<'_>,
    tools: &Tools,
    running: Vec<Instance>,
    declared: Option<&Declared>,
    eco: &std::path::Path,
) -> (Result<Offsets, Verdict>, Start) {
    let reload = ctx.settings.strategy == Strategy::Reload
        && match restart::reload_blocker(&running, declared, eco) {
            None => true,
            Some(why) => {
                ctx.printer.step(
                    StepName::Reload,
                    StepState::Warn,
                    Duration::ZERO,
                    format!("not possible: {why}; pm2 delete + start instead"),
                );
                false
            }
        };
    if reload {
        // PM2's counters and pids after the reload are the baseline.
        (restart::reload(ctx, tools).await, Start::Existing)
    } else {
        // PM2's list from just before the trial is still what runs (a trial is another app).
        (
            restart::restart(ctx, tools, Some(running)).await,
            Start::Fresh,
        )
    }
}

/// The release failed its verification: keep the evidence, then put the previous version
/// back and verify it (unless `--no-rollback`: a human takes it from here).
async fn roll_back(
    ctx: &mut Ctx<'_>,
    tools: &Tools,
    id: &str,
    verdict: &Verdict,
    offsets: &Offsets,
    no_rollback: bool,
    data: &mut DeployData,
) -> Result<Done> {
    super::save_evidence(ctx, id, verdict, offsets).await;
    let interrupted = ctx.cancel.signal();
    if no_rollback && interrupted.is_none() {
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
        .map(|f| format!(" ({})", f.short()))
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
    git_ref: Option<&str>,
    lock: &mut Lock,
) -> (std::result::Result<(), String>, Vec<String>) {
    let t = Instant::now();
    let (mut cmd, shown) = match step_cmd {
        StepCmd::None => {
            ctx.printer.step(
                StepName::DeployStep,
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
    // What to deploy, for a step that checks out a tag: `git checkout "$GUARD_REF"`.
    cmd.env("GUARD_APP", &ctx.settings.app.name);
    match git_ref {
        Some(r) => cmd.env("GUARD_REF", r),
        None => cmd.env_remove("GUARD_REF"),
    };
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
                StepName::DeployStep,
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
                .step(StepName::DeployStep, StepState::Ok, t.elapsed(), &shown);
            Ok(())
        }
        Ok(out) => {
            let why = format!("`{shown}` failed ({})", out.describe_exit());
            ctx.printer
                .step(StepName::DeployStep, StepState::Failed, t.elapsed(), &why);
            Err(why)
        }
        Err(e) => {
            let why = format!("{e:#}");
            ctx.printer
                .step(StepName::DeployStep, StepState::Failed, t.elapsed(), &why);
            Err(why)
        }
    };
    (result, lines)
}

/// Before any restart: put the whole tree back (a half-built dist/ included), leave the
/// running process alone, and check it.
pub(super) async fn undo_before_restart(
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
