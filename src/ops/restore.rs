//! Putting a snapshot back: the app tree made identical to it (format 1: the single files and
//! `git reset --hard` + patch), HEAD and the index moved to the recorded commit, then, for a
//! restart, proof that what runs is what was restored.

use crate::code::Code;
use std::time::Instant;

use anyhow::{Context, Result};

use super::{Ctx, Tools, restart};
use crate::exit::usage;
use crate::git::Git;
use crate::output::{StepName, StepState};
use crate::redact::{Redactor, is_env_file};
use crate::store::{Part, Verified, tree};
use crate::verdict::{Reason, Verdict};
use crate::verify::rules::Start;

/// Refuse, before anything changes, an incident that cannot be restored here: a commit that
/// is not in the repository, or a stored object that is missing or corrupted among those the
/// restore would need.
pub async fn check(ctx: &Ctx<'_>, target: &Verified) -> Result<()> {
    let id = &target.manifest.id;
    let dir = &ctx.settings.app.dir;
    if let Some(commit) = target.manifest.commit() {
        let Some(git) = Git::open(dir).await else {
            return Err(usage(format!(
                "incident {id} records commit {commit} but {} is not a git work tree; nothing was changed",
                dir.display()
            )));
        };
        if !git.has_commit(commit).await {
            return Err(usage(format!(
                "incident {id} records commit {commit}, which is not in the repository at {} (fetch it first); nothing was changed",
                dir.display()
            )));
        }
    }
    if let Some(entries) = tree_without_artifacts(ctx, target)? {
        let plan = tree::plan(dir, &ctx.settings.backup.exclude, &entries)?;
        check_objects(ctx, target, &plan)?;
    }
    Ok(())
}

/// The incident to restore, checked (manifest, commit, every stored content it needs): the
/// one named, or for `latest` the newest restorable one, passing over any that fails a check
/// (a corrupt stored content included), each said with why.
pub async fn pick(ctx: &Ctx<'_>, arg: &str) -> Result<(Verified, crate::store::Skipped)> {
    if arg != "latest" {
        let (target, skipped) = ctx.store.resolve(arg)?;
        check(ctx, &target).await?;
        return Ok((target, skipped));
    }
    let mut skipped = crate::store::Skipped::new();
    for l in ctx.store.list()? {
        match &l.manifest {
            Ok(m) if !m.kind.restorable_as_latest() => continue,
            Err(e) => {
                skipped.push((l.id.clone(), e.clone()));
                continue;
            }
            Ok(_) => {}
        }
        let checked = match ctx.store.verify(&l.id) {
            Ok(v) => check(ctx, &v).await.map(|()| v),
            Err(e) => Err(e),
        };
        match checked {
            Ok(v) => return Ok((v, skipped)),
            Err(e) => skipped.push((l.id.clone(), format!("{e:#}"))),
        }
    }
    let why = skipped
        .iter()
        .map(|(id, e)| format!("{id}: {e}"))
        .collect::<Vec<_>>()
        .join("; ");
    Err(usage(format!(
        "no restorable incident of app {} in {}{}",
        ctx.settings.app.name,
        ctx.store.dir().display(),
        if why.is_empty() {
            String::new()
        } else {
            format!(" (passed over: {why})")
        }
    )))
}

fn check_objects(ctx: &Ctx<'_>, target: &Verified, plan: &tree::Plan) -> Result<()> {
    let objects = ctx.store.objects();
    for (hash, size) in plan.needed_objects() {
        objects.check(hash, size).map_err(|e| {
            usage(format!(
                "incident {} is broken: {e:#}; nothing was changed",
                target.manifest.id
            ))
        })?;
    }
    Ok(())
}

/// The snapshot's tree less what the clean rules call artifacts (a stale `dist/` is never
/// brought back into a restart).
fn tree_without_artifacts(ctx: &Ctx<'_>, target: &Verified) -> Result<Option<Vec<tree::Entry>>> {
    Ok(target.tree_entries()?.map(|mut entries| {
        entries.retain(|e| {
            !crate::clean::is_artifact(&ctx.settings, &e.path, matches!(e.node, tree::Node::Dir))
        });
        entries
    }))
}

/// Also mask the env values of the incident being restored: they may differ from today's.
pub fn learn_secrets(ctx: &mut Ctx<'_>, target: &Verified) {
    let mut r: Redactor = ctx.printer.redactor().clone();
    for f in target.manifest.stored_files() {
        if f.app_path()
            .is_some_and(|p| is_env_file(std::path::Path::new(p)))
            && let Ok(text) = std::fs::read_to_string(target.stored(f))
        {
            r.add_env_text(&text);
        }
    }
    ctx.printer.set_redactor(r);
}

/// What a restore put back.
#[derive(Debug)]
pub struct Restored {
    /// When the files were back (ms since the epoch): every instance must start after it.
    pub at_ms: i64,
    /// The tree, to check against after the restart.
    pub tree: Option<Vec<tree::Entry>>,
    /// The files it wrote, with their stat right after.
    pub written: tree::Written,
    /// What it replaced: deleted when this is dropped, so hold it until the app answers.
    pub trash: crate::store::swap::Trash,
}

/// Put code and files back as the incident recorded them. Does not touch PM2.
pub async fn put_back(ctx: &mut Ctx<'_>, target: &Verified) -> Result<Restored> {
    let t = Instant::now();
    let app_dir = ctx.settings.app.dir.clone();
    let mut said = Vec::new();
    let git = Git::open(&app_dir).await;
    let from = match &git {
        Some(g) => g.head().await.ok(),
        None => None,
    };
    let short = |c: &str| Code::commit(c).short().to_string();
    let tree_entries = tree_without_artifacts(ctx, target)?;
    let mut written = tree::Written::new();
    let mut trash = crate::store::swap::Trash::none();
    if let Some(entries) = &tree_entries {
        tracing::debug!(entries = entries.len(), took = ?t.elapsed(), "index read");
        let plan = tree::plan(&app_dir, &ctx.settings.backup.exclude, entries)?;
        tracing::debug!(write = plan.written_count(), remove = plan.remove.len(), whole = plan.whole.len(), took = ?t.elapsed(), "restore planned");
        // Contents are staged and checked against their hashes before anything changes.
        let applied = match tree::apply(&app_dir, &plan, &ctx.store.objects()) {
            Ok(a) => a,
            Err(e) if e.downcast_ref::<tree::BadObject>().is_some() => {
                return Err(usage(format!(
                    "incident {} is broken: {e:#}; nothing was changed",
                    target.manifest.id
                )));
            }
            Err(e) => {
                return Err(e).with_context(|| format!("restoring {}", app_dir.display()));
            }
        };
        (written, trash) = (applied.written, applied.trash);
        tracing::debug!(took = ?t.elapsed(), "tree restored");
        said.push(if plan.is_empty() {
            format!("tree unchanged ({} file(s))", plan.unchanged)
        } else {
            let whole: Vec<String> = plan
                .whole
                .iter()
                .map(|w| format!("{}/", w.dir.display()))
                .collect();
            format!(
                "tree: {} written{}, {} removed, {} unchanged",
                plan.written_count(),
                if whole.is_empty() {
                    String::new()
                } else {
                    format!(" ({} swapped in whole)", whole.join(", "))
                },
                plan.remove.len(),
                plan.unchanged
            )
        });
    }
    // Git first: a format-1 restore resets the work tree, then writes its files over it.
    let mut parts: Vec<&Part> = target.manifest.parts.iter().collect();
    parts.sort_by_key(|p| !matches!(p, Part::Git { .. }));
    for part in parts {
        match part {
            Part::Git { commit, patch } => {
                let git = git.as_ref().with_context(|| {
                    format!(
                        "incident records commit {commit} but {} is not a git work tree",
                        app_dir.display()
                    )
                })?;
                if tree_entries.is_some() {
                    // The files are already right: move HEAD and the index only.
                    git.reset_index(commit).await?;
                } else {
                    git.reset_hard(commit).await?;
                    if let Some(p) = patch {
                        git.apply(&target.stored(p)).await?;
                        said.push("uncommitted changes re-applied".into());
                    }
                }
                match &from {
                    Some(f) if f == commit => said.insert(0, format!("code stays on {}", short(f))),
                    _ => said.insert(
                        0,
                        format!(
                            "code {} -> {}",
                            from.as_deref().map(short).unwrap_or_else(|| "?".into()),
                            git.subject(commit).await.unwrap_or_else(|_| short(commit))
                        ),
                    ),
                }
            }
            Part::Files { files } => {
                // Through descriptors: the app's user may have swapped a folder on the way
                // for a symlink, and root must never write an env file through it.
                let beneath = crate::beneath::Root::open(&app_dir)?;
                for entry in files {
                    let Some(rel) = entry.app_path() else {
                        continue;
                    };
                    let bytes = std::fs::read(target.stored(entry))
                        .with_context(|| format!("reading {}", target.stored(entry).display()))?;
                    let dest = app_dir.join(rel);
                    crate::beneath::write_file(
                        &beneath,
                        &dest,
                        std::path::Path::new(rel),
                        &bytes,
                        entry.mode & 0o777,
                    )
                    .with_context(|| format!("restoring {}", dest.display()))?;
                }
                said.push(format!("{} file(s) restored", files.len()));
            }
            Part::Tree { .. } | Part::Pm2Dump { .. } => {}
        }
    }
    ctx.printer.step(
        StepName::Restore,
        StepState::Ok,
        t.elapsed(),
        format!("incident {}: {}", target.manifest.id, said.join(", ")),
    );
    Ok(Restored {
        at_ms: jiff::Timestamp::now().as_millisecond(),
        tree: tree_entries,
        written,
        trash,
    })
}

/// Restore an incident, restart the app from its ecosystem (delete + start) and verify it.
/// Healthy only when every instance started after the restore and app.dir still matches the
/// snapshot after the stability window. On a healthy verdict PM2's dump is saved so a reboot
/// brings back the same version.
pub async fn restore_and_restart(
    ctx: &mut Ctx<'_>,
    tools: &Tools,
    target: &Verified,
) -> Result<Verdict> {
    if ctx.settings.strategy == crate::settings::Strategy::Switch {
        // Behind the proxy: the failing release serves until the previous one is proven.
        return super::switch::roll_back(ctx, tools, target).await;
    }
    let restored = put_back(ctx, target).await?;
    // The restored files go to disk while the app starts and is verified, not before.
    let dir = ctx.settings.app.dir.clone();
    let flush = tokio::task::spawn_blocking(move || tree::sync_fs(&dir));
    // Under `reload` the restored release rolls in one instance at a time, as a deploy would.
    let start = if reload_fits(ctx, tools).await {
        Start::Existing
    } else {
        Start::Fresh
    };
    let replaced = match start {
        Start::Existing => restart::reload(ctx, tools).await,
        Start::Fresh => restart::restart(ctx, tools, None).await,
    };
    let offsets = match replaced {
        Ok(o) => o,
        Err(v) => {
            let _ = flush.await;
            return Ok(v);
        }
    };
    let never = crate::signals::Cancel::never();
    let rules = restart::rules(ctx, start);
    let printer = &*ctx.printer;
    let verdict = crate::verify::verify(
        &tools.pm2,
        &tools.prober,
        rules,
        ctx.settings.health.interval,
        Some(&offsets),
        &never,
        &mut |p| printer.progress(StepName::Verify, &p.to_string()),
    )
    .await?;
    let _ = flush.await;
    let verdict = prove(ctx, verdict, &restored)?;
    restart::print_verdict(ctx, &verdict);
    if verdict.healthy {
        restart::save_step(ctx, tools).await;
    }
    // What the restore replaced (a whole old node_modules) is deleted only now: the app was
    // started and judged without waiting for it.
    restored.trash.empty();
    Ok(verdict)
}

/// Whether a restore can be put in service by PM2's rolling reload: `strategy = "reload"`
/// and nothing the reload would leave unchanged (script, mode, instances) differs.
async fn reload_fits(ctx: &mut Ctx<'_>, tools: &Tools) -> bool {
    if ctx.settings.strategy != crate::settings::Strategy::Reload {
        return false;
    }
    let Ok(eco) = super::ecosystem_path(ctx) else {
        return false;
    };
    let running = tools.pm2.instances().await.unwrap_or_default();
    let declared = super::declared(ctx, &tools.pm2).await;
    match restart::reload_blocker(&running, declared.as_ref(), &eco) {
        None => true,
        Some(why) => {
            ctx.printer.step(
                StepName::Reload,
                StepState::Warn,
                std::time::Duration::ZERO,
                format!("not possible: {why}; pm2 delete + start instead"),
            );
            false
        }
    }
}

/// A healthy verdict after a restore stands only if what runs is what was restored.
pub(super) fn prove(ctx: &Ctx<'_>, mut verdict: Verdict, restored: &Restored) -> Result<Verdict> {
    if !verdict.healthy {
        return Ok(verdict);
    }
    if let Some(stale) = verdict
        .instances
        .iter()
        .find(|i| i.started_at_ms.is_none_or(|s| s < restored.at_ms - 1000))
    {
        let instance = stale.pm_id;
        verdict.overrule(Reason::NotRestartedAfterRestore { instance });
        return Ok(verdict);
    }
    if let Some(entries) = &restored.tree {
        let (paths, count) = tree::differences(
            &ctx.settings.app.dir,
            &ctx.settings.backup.exclude,
            entries,
            &restored.written,
            5,
        )?;
        if count > 0 {
            verdict.overrule(Reason::TreeDiffers { paths, count });
        }
    }
    Ok(verdict)
}
