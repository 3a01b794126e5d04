//! Taking a snapshot: the whole app tree (contents deduplicated in the object store), the git
//! commit, PM2's dump and process list, into a new incident; then retention.

use crate::code::Code;
use std::time::Instant;

use anyhow::{Context, Result};

use super::{Ctx, Tools};
use crate::git::Git;
use crate::output::{StepName, StepState};
use crate::store::manifest::{FileEntry, PM2_DUMP, TREE_INDEX, human_bytes};
use crate::store::{Kind, Meta, Part, ProcessEntry, tree};

/// A snapshot just taken.
#[derive(Debug, Clone)]
pub struct Taken {
    /// The incident id.
    pub id: String,
    /// The commit, else the tree fingerprint, for records.
    pub fingerprint: Option<Code>,
}

/// Snapshot the app into a new incident and apply retention (never pruning `protect`).
pub async fn take(
    ctx: &mut Ctx<'_>,
    tools: &Tools,
    kind: Kind,
    reason: &str,
    protect: &[&str],
) -> Result<Taken> {
    let t = Instant::now();
    let swept = ctx.store.sweep_temporaries()?;
    if !swept.is_empty() {
        tracing::warn!(
            "removed {} unfinished incident folder(s) left by a run that died",
            swept.len()
        );
    }
    let app_dir = ctx.settings.app.dir.clone();
    let staged = tree::sweep_left_staging(&app_dir)?;
    if staged > 0 {
        tracing::warn!(
            "removed {staged} staging folder(s) of a restore that was stopped before it finished in {}",
            app_dir.display()
        );
    }
    let cache = ctx.store.newest_tree_cache();
    tracing::debug!(entries = cache.len(), took = ?t.elapsed(), "stat cache loaded");
    let mut draft = ctx.store.begin()?;

    // The whole tree: every byte that runs, dist/ and node_modules/ included.
    let index_path = draft.prepare(TREE_INDEX)?;
    let (sha256, size, stats) = tree::capture(
        &app_dir,
        &ctx.settings.backup.exclude,
        &draft.store().objects(),
        &cache,
        &index_path,
    )
    .with_context(|| format!("snapshotting {}", app_dir.display()))?;
    tracing::debug!(?stats, took = ?t.elapsed(), "tree captured");
    if stats.stored > 0 {
        draft.stored_objects();
    }
    draft.add(Part::Tree {
        index: FileEntry {
            path: TREE_INDEX.into(),
            size,
            mode: 0o600,
            sha256: sha256.clone(),
        },
        entries: stats.entries,
        files: stats.files,
        bytes: stats.bytes,
        exclude: ctx.settings.backup.exclude_patterns.clone(),
    });

    let mut commit = None;
    if let Some(git) = Git::open(&app_dir).await {
        let head = git.head().await?;
        draft.add(Part::Git {
            commit: head.clone(),
            patch: None,
        });
        commit = Some(head);
    }
    let dump = tools.pm2.home().join("dump.pm2");
    let has_dump = dump.is_file();
    if has_dump {
        let file = draft.copy_in(PM2_DUMP, &dump)?;
        draft.add(Part::Pm2Dump { file });
    }
    let processes: Vec<ProcessEntry> = if tools.pm2.daemon_running() {
        tools
            .pm2
            .instances()
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
    tracing::debug!(took = ?t.elapsed(), "git, dump and process list taken");
    // The reason and the command line are the operator's words: masked like any output.
    let redactor = ctx.printer.redactor();
    let mut origin = ctx.origin.clone();
    origin.command = redactor.redact(&origin.command);
    let id = draft.commit(Meta {
        kind,
        reason: redactor.redact(reason),
        origin,
        app_name: ctx.settings.app.name.clone(),
        app_dir,
        processes,
    })?;
    tracing::debug!(took = ?t.elapsed(), "incident committed");
    // The snapshot is safe on disk; failing to prune old ones must not stop a deploy.
    let mut keep_ids: Vec<&str> = protect.to_vec();
    keep_ids.push(&id);
    let pruned = ctx
        .store
        .prune(ctx.settings.backup.keep, &keep_ids)
        .unwrap_or_else(|e| {
            tracing::warn!("retention (backup.keep): {e:#}");
            Vec::new()
        });
    let mut detail = format!(
        "incident {id}: tree of {} file(s), {} ({} new, {} stored){}{}, {running} process(es) online",
        stats.files,
        human_bytes(stats.bytes),
        stats.hashed,
        human_bytes(stats.stored_bytes),
        if has_dump { " + dump.pm2" } else { "" },
        commit
            .as_ref()
            .map(|c| format!(", commit {}", Code::commit(c.as_str()).short()))
            .unwrap_or_default(),
    );
    if !pruned.is_empty() {
        detail.push_str(&format!(", pruned {} old", pruned.len()));
    }
    ctx.printer
        .step(StepName::Backup, StepState::Ok, t.elapsed(), detail);
    ctx.printer.set_incident(&id);
    let fingerprint = Some(commit.map_or_else(|| Code::tree(&sha256), Code::commit));
    Ok(Taken { id, fingerprint })
}
