//! `guard rollback`, as phases: after a dead deploy that changed nothing there is nothing to
//! undo; otherwise pick and check the incident, snapshot what runs now (so the rollback can
//! be undone), and put the incident back in service the strategy's way, proven healthy.
//! `commands/rollback.rs` only sequences them.

use std::time::{Duration, Instant};

use anyhow::Result;
use serde::Serialize;

use super::{Ctx, Tools, restart, restore, snapshot};
use crate::code::Code;
use crate::exit::{Done, Happened};
use crate::lock::Lock;
use crate::output::{StepName, StepState};
use crate::store::{Kind, Verified};
use crate::verdict::Verdict;

/// `--json` data of `guard rollback`.
#[derive(Serialize)]
pub struct RollbackData {
    /// The incident restored.
    pub restored: String,
    /// The commit (or tree fingerprint) it restored.
    pub restored_code: Option<Code>,
    /// The pre-rollback snapshot, to undo this rollback.
    pub before_incident: Option<String>,
    /// The commit (or tree fingerprint) before the rollback.
    pub before: Option<Code>,
    /// The verdict after the restart.
    pub verdict: Option<Verdict>,
}

/// `latest` after a deploy that died before it changed anything: that run left nothing to
/// undo, and the newest snapshot is older than what runs now. Said, nothing restored. After a
/// dead rollback (or backup, or clean) the operator still means to go back: None, go on.
pub async fn nothing_to_undo(
    ctx: &mut Ctx<'_>,
    tools: &Tools,
    target: &str,
    lock: &Lock,
) -> Option<Done> {
    // An older guard recorded no subcommand: read from its command line.
    let dead_deploy = |d: &crate::lock::Record| match &d.subcommand {
        Some(s) => s == "deploy",
        None => d.origin.command.split_whitespace().any(|w| w == "deploy"),
    };
    let dead = lock.taken_over.as_ref()?;
    if target != "latest" || dead.phase.is_some() || !dead_deploy(dead) {
        return None;
    }
    let summary = format!(
        "the last run (pid {}, `{}`) died before it changed anything: nothing to restore; name an incident (`guard list`) to go further back",
        dead.origin.pid, dead.origin.command
    );
    let happened = if restart::check_running(ctx, tools).await {
        Happened::Done
    } else {
        Happened::LeftUnverified
    };
    Some(Done::new(happened, summary))
}

/// The incident to restore, checked, with what `latest` passed over said as steps.
pub async fn pick(ctx: &mut Ctx<'_>, target: &str) -> Result<Verified> {
    let t = Instant::now();
    let (verified, skipped) = restore::pick(ctx, target).await?;
    for (bad, why) in &skipped {
        ctx.printer.step(
            StepName::Latest,
            StepState::Warn,
            Duration::ZERO,
            format!("passed over incident {bad}: {why}"),
        );
    }
    restore::learn_secrets(ctx, &verified);
    let picked = if target == "latest" {
        " (newest restorable: `latest`)"
    } else {
        ""
    };
    let m = &verified.manifest;
    ctx.printer.step(
        StepName::Incident,
        StepState::Ok,
        t.elapsed(),
        format!(
            "incident {}{picked}: {} taken {} ({}): {}, checked",
            m.id,
            m.kind,
            m.created_at,
            m.reason,
            m.contents()
        ),
    );
    Ok(verified)
}

/// The pre-rollback snapshot (never pruning the rollback's own target), unless
/// `--no-snapshot`; records in `data` what runs now.
pub async fn snapshot_before(
    ctx: &mut Ctx<'_>,
    tools: &Tools,
    id: &str,
    no_snapshot: bool,
    data: &mut RollbackData,
) -> Result<Option<snapshot::Taken>> {
    let before = if no_snapshot {
        ctx.printer.step(
            StepName::Backup,
            StepState::Warn,
            Duration::ZERO,
            "skipped (--no-snapshot): this rollback cannot be undone",
        );
        None
    } else {
        let reason = format!("before rollback to {id}");
        Some(snapshot::take(ctx, tools, Kind::PreRollback, &reason, &[id]).await?)
    };
    data.before_incident = before.as_ref().map(|b| b.id.clone());
    data.before = before.as_ref().and_then(|b| b.fingerprint.clone());
    if data.before.is_none() {
        data.before = super::current_commit(ctx).await;
    }
    Ok(before)
}

/// Put the incident back in service and say how it ended.
pub async fn restore(
    ctx: &mut Ctx<'_>,
    tools: &Tools,
    target: &Verified,
    before: Option<&str>,
    data: &mut RollbackData,
) -> (Happened, String) {
    let id = &target.manifest.id;
    let code = data.restored_code.as_ref().map_or("no commit", Code::short);
    let before_id = before.unwrap_or("(none: --no-snapshot)");
    ctx.printer.set_incident(id);
    match restore::restore_and_restart(ctx, tools, target).await {
        Ok(v) if v.healthy => {
            let undo = before
                .map(|b| format!("; undo with `guard rollback --incident {b}`"))
                .unwrap_or_default();
            data.verdict = Some(v);
            (
                Happened::Done,
                format!("incident {id} restored ({code}) and verified healthy{undo}"),
            )
        }
        Ok(v) => {
            let s = format!(
                "incident {id} restored but NOT healthy ({}); the state before is in incident {before_id}",
                v.message
            );
            data.verdict = Some(v);
            (Happened::LeftUnverified, s)
        }
        Err(e) => {
            ctx.printer.step(
                StepName::Rollback,
                StepState::Failed,
                Duration::ZERO,
                format!("{e:#}"),
            );
            (
                Happened::LeftUnverified,
                format!(
                    "rollback to incident {id} stopped by an error ({e:#}); the service is NOT verified healthy; the state before is in incident {before_id}"
                ),
            )
        }
    }
}
