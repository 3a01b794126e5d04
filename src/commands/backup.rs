//! `guard backup`, and taking a snapshot for deploy and rollback.

use std::time::Instant;

use anyhow::{Context, Result};

use super::{Ctx, Done};
use crate::cli::BackupArgs;
use crate::exit::{ExitStatus, usage};
use crate::git::Git;
use crate::incident::{Kind, Meta, ProcessEntry};
use crate::output::StepState;
use crate::pm2::Pm2;

/// `guard backup [--reason TEXT]`
pub async fn run(ctx: &mut Ctx<'_>, args: &BackupArgs) -> Result<Done> {
    let pm2 = Pm2::new(&ctx.settings)?;
    check_files(ctx)?;
    let _lock = ctx.lock()?;
    let reason = args.reason.clone().unwrap_or_else(|| "manual".into());
    let id = take(ctx, &pm2, Kind::Manual, &reason, true).await?;
    ctx.printer.last_line(&id);
    Ok(Done::new(ExitStatus::Success, ""))
}

/// Every backup.files entry must exist before anything is changed (a usage error otherwise).
pub fn check_files(ctx: &Ctx<'_>) -> Result<()> {
    for rel in &ctx.settings.backup.files {
        let p = ctx.settings.app.dir.join(rel);
        if !p.is_file() {
            return Err(usage(format!(
                "backup.files entry {} is not a file: {} does not exist or is not a regular file (config {})",
                rel.display(),
                p.display(),
                ctx.settings.config_path.display()
            )));
        }
    }
    Ok(())
}

/// Snapshot the app into a new incident and apply retention; returns the id. With `strict`
/// off (a snapshot taken in an emergency, before a rollback) missing files are skipped.
pub async fn take(
    ctx: &mut Ctx<'_>,
    pm2: &Pm2,
    kind: Kind,
    reason: &str,
    strict: bool,
) -> Result<String> {
    let t = Instant::now();
    let swept = ctx.store.sweep_temporaries()?;
    if !swept.is_empty() {
        tracing::warn!(
            "removed {} unfinished incident folder(s) left by a run that died",
            swept.len()
        );
    }
    let app_dir = ctx.settings.app.dir.clone();
    let mut draft = ctx.store.begin()?;
    let mut skipped = Vec::new();
    for rel in &ctx.settings.backup.files {
        if !strict && !app_dir.join(rel).is_file() {
            skipped.push(rel.display().to_string());
            continue;
        }
        draft
            .add_app_file(&app_dir, rel)
            .with_context(|| format!("backing up {}", rel.display()))?;
    }
    let dump = pm2.home().join("dump.pm2");
    if dump.is_file() {
        draft.add_pm2_dump(&dump)?;
    }
    let mut git_commit = None;
    if let Some(git) = Git::open(&app_dir).await {
        git_commit = Some(git.head().await?);
        let patch = git.diff().await?;
        if !patch.is_empty() {
            draft.add_git_patch(&patch)?;
        }
    }
    let processes = if pm2.daemon_running() {
        pm2.instances()
            .await?
            .into_iter()
            .map(|i| ProcessEntry {
                name: i.name,
                status: i.status,
                restarts: i.restarts,
                pid: i.pid,
            })
            .collect()
    } else {
        Vec::new()
    };
    let running = processes.iter().filter(|p| p.status == "online").count();
    let id = draft.commit(Meta {
        kind,
        reason: reason.to_string(),
        origin: ctx.origin.clone(),
        app_name: ctx.settings.app.name.clone(),
        app_dir,
        git_commit: git_commit.clone(),
        processes,
    })?;
    // The snapshot is safe on disk; failing to prune old ones must not stop a deploy.
    let pruned = ctx
        .store
        .prune(ctx.settings.backup.keep, &id)
        .unwrap_or_else(|e| {
            tracing::warn!("retention (backup.keep): {e:#}");
            Vec::new()
        });
    let mut detail = format!(
        "incident {id}: {} file(s){}{}, {running} process(es) online",
        ctx.settings.backup.files.len() - skipped.len(),
        if dump.is_file() { " + dump.pm2" } else { "" },
        git_commit
            .map(|c| format!(", commit {}", &c[..c.len().min(12)]))
            .unwrap_or_default(),
    );
    if !pruned.is_empty() {
        detail.push_str(&format!(", pruned {} old", pruned.len()));
    }
    let state = if skipped.is_empty() {
        StepState::Ok
    } else {
        StepState::Warn
    };
    if !skipped.is_empty() {
        detail.push_str(&format!(
            " (missing, not backed up: {})",
            skipped.join(", ")
        ));
    }
    ctx.printer.step("backup", state, t.elapsed(), detail);
    ctx.printer.set_incident(&id);
    Ok(id)
}
