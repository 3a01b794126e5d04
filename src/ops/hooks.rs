//! `[hooks]`: an operator's commands at fixed points of a deploy or rollback (migrations
//! before the restart, a Slack or Sentry release marker after it), each run like the deploy
//! step: `sh -c` in app.dir through the one runner, a time limit, output masked, shown as a
//! step and kept in the incident.

use std::time::Instant;

use tokio::process::Command;

use super::Ctx;
use crate::output::{StepName, StepState};
use crate::runner;

/// The fixed points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// After the deploy step and the release check, before the trial and any restart.
    BeforeRestart,
    /// After a deploy verified healthy.
    AfterSuccess,
    /// After a deploy that failed.
    AfterFailure,
    /// After a rollback.
    AfterRollback,
}

impl Hook {
    /// Its key under `[hooks]`.
    pub fn key(self) -> &'static str {
        match self {
            Hook::BeforeRestart => "before_restart",
            Hook::AfterSuccess => "after_success",
            Hook::AfterFailure => "after_failure",
            Hook::AfterRollback => "after_rollback",
        }
    }

    fn command(self, ctx: &Ctx<'_>) -> Option<String> {
        let h = &ctx.settings.hooks;
        match self {
            Hook::BeforeRestart => h.before_restart.clone(),
            Hook::AfterSuccess => h.after_success.clone(),
            Hook::AfterFailure => h.after_failure.clone(),
            Hook::AfterRollback => h.after_rollback.clone(),
        }
    }
}

/// What a hook is told, as `GUARD_*` variables.
#[derive(Debug, Default, Clone)]
pub struct Facts {
    /// The incident of the run.
    pub incident: Option<String>,
    /// The exit code, once known (after_* hooks).
    pub exit_code: Option<i32>,
    /// The run's one line, once known.
    pub reason: Option<String>,
}

/// Run `hook` if it is configured: Some(Err(why)) when it failed. With `lock`, the hook's
/// process group is recorded in the lock file while it runs, as the deploy step's is: if guard
/// is killed during a migration, the next run stops it before it goes on.
pub async fn run(
    ctx: &mut Ctx<'_>,
    hook: Hook,
    facts: &Facts,
    mut lock: Option<&mut crate::lock::Lock>,
) -> Option<Result<(), String>> {
    let command = hook.command(ctx)?;
    let t = Instant::now();
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(&command)
        .current_dir(&ctx.settings.app.dir);
    let (before, after, tried) = ctx.printer.codes();
    let code = |c: Option<crate::code::Code>| c.map(|c| c.as_str().to_string()).unwrap_or_default();
    cmd.env("GUARD_HOOK", hook.key())
        .env("GUARD_APP", &ctx.settings.app.name)
        .env("GUARD_APP_DIR", &ctx.settings.app.dir)
        .env("GUARD_HOST", crate::origin::host())
        .env("GUARD_COMMAND", ctx.printer.command())
        .env("GUARD_STRATEGY", ctx.settings.strategy.to_string())
        .env("GUARD_INCIDENT", facts.incident.clone().unwrap_or_default())
        .env("GUARD_CODE_BEFORE", code(before))
        .env("GUARD_CODE_AFTER", code(after.or(tried)))
        .env("GUARD_REF", ctx.printer.git_ref().unwrap_or_default())
        .env(
            "GUARD_EXIT_CODE",
            facts.exit_code.map(|c| c.to_string()).unwrap_or_default(),
        )
        .env(
            "GUARD_REASON",
            ctx.printer
                .redactor()
                .redact(facts.reason.as_deref().unwrap_or_default()),
        );
    let shown = format!("{}: {command}", hook.key());
    let printer = &*ctx.printer;
    let mut lines = Vec::new();
    let mut show = |line: &str| {
        printer.detail(line);
        lines.push(line.to_string());
    };
    let limit = ctx.settings.hooks.timeout;
    let mut record = |pgid: i32| {
        if let Some(l) = lock.as_deref_mut()
            && let Err(e) = l.child(Some(pgid))
        {
            tracing::warn!("recording the hook in the lock file: {e:#}");
        }
    };
    let result =
        runner::run_tracked(cmd, &command, limit, Some(&mut show), Some(&mut record)).await;
    if let Some(l) = lock
        && let Err(e) = l.child(None)
    {
        tracing::warn!("recording the hook in the lock file: {e:#}");
    }
    let outcome = match &result {
        Ok(out) if out.success() => Ok(()),
        Ok(out) => Err(format!(
            "hook {} failed ({})",
            hook.key(),
            out.describe_exit()
        )),
        Err(e) => Err(format!("hook {}: {e:#}", hook.key())),
    };
    if let Some(id) = &facts.incident
        && !lines.is_empty()
    {
        let r = ctx.printer.redactor();
        let masked: Vec<String> = lines
            .iter()
            .map(|l| crate::output::sanitize(&r.redact(l)))
            .collect();
        let name = format!("hook-{}.log", hook.key());
        if let Err(e) = ctx
            .store
            .save_evidence(id, &name, &(masked.join("\n") + "\n"))
        {
            tracing::warn!("saving the output of hook {}: {e:#}", hook.key());
        }
    }
    match &outcome {
        Ok(()) => ctx
            .printer
            .step(StepName::Hook, StepState::Ok, t.elapsed(), &shown),
        Err(why) => ctx
            .printer
            .step(StepName::Hook, StepState::Failed, t.elapsed(), why),
    }
    Some(outcome)
}

/// After a deploy or rollback ended with `status`: after_success, after_failure,
/// after_rollback, as they apply; a failing one is said, and changes no exit code.
pub async fn after_run(ctx: &mut Ctx<'_>, status: crate::exit::ExitStatus, summary: &str) {
    use crate::exit::ExitStatus;
    let facts = Facts {
        incident: ctx.printer.report().incident,
        exit_code: Some(status.code()),
        reason: Some(summary.to_string()),
    };
    let deploy = ctx.printer.command() == "deploy";
    let rolled_back =
        !deploy || matches!(status, ExitStatus::RolledBack) || ctx.printer.codes().2.is_some();
    let mut hooks = Vec::new();
    if deploy {
        hooks.push(if status == ExitStatus::Success {
            Hook::AfterSuccess
        } else {
            Hook::AfterFailure
        });
    }
    if rolled_back {
        hooks.push(Hook::AfterRollback);
    }
    for hook in hooks {
        let _ = run(ctx, hook, &facts, None).await;
    }
}
