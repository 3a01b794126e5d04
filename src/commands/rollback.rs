//! `guard rollback --incident ID|latest`, and the restore that deploy uses to undo itself.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::{Ctx, Done};
use crate::atomic;
use crate::cli::RollbackArgs;
use crate::exit::{ExitStatus, usage};
use crate::git::Git;
use crate::health::Prober;
use crate::incident::{self, Kind, Outcome, Verified};
use crate::output::StepState;
use crate::pm2::Pm2;
use crate::redact::{Redactor, is_env_file};
use crate::verify::{self, Start, Verdict};

/// `guard rollback`.
pub async fn run(ctx: &mut Ctx<'_>, args: &RollbackArgs) -> Result<Done> {
    if args.incident != "latest" {
        incident::parse_id(&args.incident)?;
    }
    let pm2 = Pm2::new(&ctx.settings)?;
    let prober = Prober::new(&ctx.settings.health)?;
    let _lock = ctx.lock()?;
    let t = Instant::now();
    let target = ctx.store.resolve(&args.incident)?;
    let id = target.manifest.id.clone();
    check_restorable(ctx, &target).await?;
    learn_secrets(ctx, &target);
    let picked = if args.incident == "latest" {
        " (newest restorable: `latest`)"
    } else {
        ""
    };
    ctx.printer.step(
        "check",
        StepState::Ok,
        t.elapsed(),
        format!(
            "incident {id}{picked}: {} taken {} ({}), {} file(s) verified by sha256",
            target.manifest.kind,
            target.manifest.created_at,
            target.manifest.reason,
            target.manifest.all_entries().count()
        ),
    );
    let before = super::backup::take(
        ctx,
        &pm2,
        Kind::PreRollback,
        &format!("before rollback to {id}"),
        false,
    )
    .await?;
    ctx.printer.set_incident(&id);
    let verdict = match restore_and_restart(ctx, &pm2, &prober, &target).await {
        Ok(v) => v,
        Err(e) => {
            ctx.printer.step(
                "rollback",
                StepState::Failed,
                Duration::ZERO,
                format!("{e:#}"),
            );
            let summary = format!(
                "rollback to incident {id} stopped by an error ({e:#}); the service is NOT verified healthy; the state before is in incident {before}"
            );
            record(ctx, &before, "rollback", ExitStatus::NeedsHuman, &summary);
            return Ok(Done::new(ExitStatus::NeedsHuman, summary));
        }
    };
    let (status, summary) = if verdict.healthy {
        (
            ExitStatus::Success,
            format!(
                "incident {id} restored and verified healthy; undo with `guard rollback --incident {before}`"
            ),
        )
    } else {
        (
            ExitStatus::NeedsHuman,
            format!(
                "incident {id} restored but NOT healthy ({}); the state before is in incident {before}",
                verdict.reason
            ),
        )
    };
    record(ctx, &before, "rollback", status, &summary);
    Ok(Done::new(status, summary))
}

/// The recorded commit must still exist, or the restore would stop half-way: refuse up front.
async fn check_restorable(ctx: &Ctx<'_>, target: &Verified) -> Result<()> {
    let Some(state) = &target.manifest.git else {
        return Ok(());
    };
    let dir = &ctx.settings.app.dir;
    let Some(git) = Git::open(dir).await else {
        return Err(usage(format!(
            "incident {} records commit {} but {} is not a git work tree; nothing was changed",
            target.manifest.id,
            state.commit,
            dir.display()
        )));
    };
    if !git.has_commit(&state.commit).await {
        return Err(usage(format!(
            "incident {} records commit {}, which is not in the repository at {} (fetch it first); nothing was changed",
            target.manifest.id,
            state.commit,
            dir.display()
        )));
    }
    Ok(())
}

/// Also mask the env values of the incident being restored: they may differ from today's.
pub fn learn_secrets(ctx: &mut Ctx<'_>, target: &Verified) {
    let mut r: Redactor = ctx.printer.redactor().clone();
    for f in &target.manifest.files {
        if f.app_path()
            .is_some_and(|p| is_env_file(std::path::Path::new(p)))
            && let Ok(text) = std::fs::read_to_string(target.stored(f))
        {
            r.add_env_text(&text);
        }
    }
    ctx.printer.set_redactor(r);
}

/// Record the outcome in an incident's outcome.json; a failure to do so is only logged.
pub fn record(ctx: &Ctx<'_>, id: &str, command: &str, status: ExitStatus, summary: &str) {
    let outcome = Outcome {
        command: command.into(),
        verdict: status.to_string(),
        reason: Some(ctx.printer.redactor().redact(summary)),
        exit_code: status.code(),
        at: crate::origin::now_rfc3339(),
    };
    if let Err(e) = ctx.store.set_outcome(id, &outcome) {
        tracing::warn!("recording the outcome in incident {id}: {e:#}");
    }
}

/// Put code and files back as the incident recorded them. Does not touch PM2.
pub async fn restore_files(ctx: &mut Ctx<'_>, target: &Verified) -> Result<()> {
    let t = Instant::now();
    let app_dir = ctx.settings.app.dir.clone();
    let mut said = Vec::new();
    if let Some(state) = &target.manifest.git {
        let git = Git::open(&app_dir).await.with_context(|| {
            format!(
                "incident records commit {} but {} is not a git work tree",
                state.commit,
                app_dir.display()
            )
        })?;
        let from = git.head().await?;
        git.reset_hard(&state.commit).await?;
        if let Some(patch) = &state.patch {
            git.apply(&target.stored(patch)).await?;
        }
        let short = |c: &str| c[..c.len().min(12)].to_string();
        if from == state.commit {
            said.push(format!("code stays on {}", short(&from)));
        } else {
            said.push(format!(
                "code {} -> {}",
                short(&from),
                git.subject(&state.commit)
                    .await
                    .unwrap_or_else(|_| short(&state.commit))
            ));
        }
        if state.patch.is_some() {
            said.push("uncommitted changes re-applied".into());
        }
    }
    for entry in &target.manifest.files {
        let Some(rel) = entry.app_path() else {
            continue;
        };
        let bytes = std::fs::read(target.stored(entry))
            .with_context(|| format!("reading {}", target.stored(entry).display()))?;
        let dest = app_dir.join(rel);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        atomic::write(&dest, &bytes, entry.mode)
            .with_context(|| format!("restoring {}", dest.display()))?;
    }
    said.push(format!("{} file(s) restored", target.manifest.files.len()));
    ctx.printer.step(
        "restore",
        StepState::Ok,
        t.elapsed(),
        format!("incident {}: {}", target.manifest.id, said.join(", ")),
    );
    Ok(())
}

/// Restore an incident, restart the app from its ecosystem (delete + start) and verify it.
/// On a healthy verdict PM2's dump is saved so a reboot brings back the same version.
pub async fn restore_and_restart(
    ctx: &mut Ctx<'_>,
    pm2: &Pm2,
    prober: &Prober,
    target: &Verified,
) -> Result<Verdict> {
    restore_files(ctx, target).await?;
    let t = Instant::now();
    if let Err(e) = pm2.restart(&ctx.settings.app.ecosystem).await {
        ctx.printer
            .step("restart", StepState::Failed, t.elapsed(), format!("{e:#}"));
        return Ok(Verdict::not_started(
            format!("restart failed: {e:#}"),
            t.elapsed(),
        ));
    }
    ctx.printer.step(
        "restart",
        StepState::Ok,
        t.elapsed(),
        format!("pm2 delete + start {}", ctx.settings.app.name),
    );
    let verdict = verify_step(ctx, pm2, prober, &crate::signals::Cancel::never()).await?;
    if verdict.healthy {
        save_step(ctx, pm2).await;
    }
    Ok(verdict)
}

/// Verify and print the verdict as a step.
pub async fn verify_step(
    ctx: &mut Ctx<'_>,
    pm2: &Pm2,
    prober: &Prober,
    cancel: &crate::signals::Cancel,
) -> Result<Verdict> {
    let verdict = verify::verify(pm2, prober, &ctx.settings.health, Start::Fresh, cancel).await?;
    let state = if verdict.healthy {
        StepState::Ok
    } else {
        StepState::Failed
    };
    ctx.printer
        .step("verify", state, verdict.elapsed, &verdict.reason);
    Ok(verdict)
}

/// `pm2 save`, as a step; a failure is a warning, the app runs either way.
pub async fn save_step(ctx: &mut Ctx<'_>, pm2: &Pm2) {
    let t = Instant::now();
    match pm2.save().await {
        Ok(()) => ctx.printer.step(
            "pm2 save",
            StepState::Ok,
            t.elapsed(),
            "process list saved for reboots",
        ),
        Err(e) => ctx
            .printer
            .step("pm2 save", StepState::Warn, t.elapsed(), format!("{e:#}")),
    }
}
