//! `guard rollback --incident ID|latest`: check the incident, snapshot what is there now,
//! restore, restart, prove.

use crate::code::Code;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::Serialize;

use super::Done;
use crate::cli::RollbackArgs;
use crate::exit::Happened;
use crate::ops::{self, Ctx, restart, restore, snapshot};
use crate::output::{StepName, StepState};
use crate::store::{self, Kind};
use crate::verdict::Verdict;

/// `--json` data of `guard rollback`.
#[derive(Serialize)]
struct RollbackData {
    /// The incident restored.
    restored: String,
    /// The commit (or tree fingerprint) it restored.
    restored_code: Option<Code>,
    /// The pre-rollback snapshot, to undo this rollback.
    before_incident: Option<String>,
    /// The commit (or tree fingerprint) before the rollback.
    before: Option<Code>,
    /// The verdict after the restart.
    verdict: Option<Verdict>,
}

/// `guard rollback`.
pub async fn run(ctx: &mut Ctx<'_>, args: &RollbackArgs) -> Result<Done> {
    if args.target() != "latest" {
        store::parse_id(args.target())?;
    }
    let tools = ctx.tools()?;
    let mut lock = ops::lock(ctx).await?;
    // A previous release kept warm past its time (`strategy = "switch"`) is stopped first.
    ops::switch::expire(ctx, &tools).await?;
    // `latest` after a deploy that died before it changed anything: that run left nothing
    // to undo, and the newest snapshot is older than what runs now. Say so, restore nothing.
    // After a dead rollback (or backup, or clean) the operator still means to go back: the
    // rollback goes on (an older guard recorded no subcommand: read from its command line).
    let dead_deploy = |d: &crate::lock::Record| match &d.subcommand {
        Some(s) => s == "deploy",
        None => d.origin.command.split_whitespace().any(|w| w == "deploy"),
    };
    if args.target() == "latest"
        && let Some(dead) = &lock.taken_over
        && dead.phase.is_none()
        && dead_deploy(dead)
    {
        let tools_check = restart::check_running(ctx, &tools).await;
        let summary = format!(
            "the last run (pid {}, `{}`) died before it changed anything: nothing to restore; name an incident (`guard list`) to go further back",
            dead.origin.pid, dead.origin.command
        );
        let happened = if tools_check {
            Happened::Done
        } else {
            Happened::LeftUnverified
        };
        return Ok(Done::new(happened, summary));
    }
    let t = Instant::now();
    let (target, skipped) = restore::pick(ctx, args.target()).await?;
    let id = target.manifest.id.clone();
    for (bad, why) in &skipped {
        ctx.printer.step(
            StepName::Latest,
            StepState::Warn,
            Duration::ZERO,
            format!("passed over incident {bad}: {why}"),
        );
    }
    restore::learn_secrets(ctx, &target);
    let picked = if args.target() == "latest" {
        " (newest restorable: `latest`)"
    } else {
        ""
    };
    ctx.printer.step(
        StepName::Incident,
        StepState::Ok,
        t.elapsed(),
        format!(
            "incident {id}{picked}: {} taken {} ({}): {}, checked",
            target.manifest.kind,
            target.manifest.created_at,
            target.manifest.reason,
            target.manifest.contents()
        ),
    );
    let mut data = RollbackData {
        restored: id.clone(),
        restored_code: target.manifest.fingerprint(),
        before_incident: None,
        before: None,
        verdict: None,
    };
    // The rollback target is never pruned by the snapshot's retention.
    let before = if args.no_snapshot {
        ctx.printer.step(
            StepName::Backup,
            StepState::Warn,
            Duration::ZERO,
            "skipped (--no-snapshot): this rollback cannot be undone",
        );
        None
    } else {
        Some(
            snapshot::take(
                ctx,
                &tools,
                Kind::PreRollback,
                &format!("before rollback to {id}"),
                &[&id],
            )
            .await?,
        )
    };
    ops::changing(&mut lock, before.as_ref().map(|b| b.id.as_str()));
    data.before_incident = before.as_ref().map(|b| b.id.clone());
    data.before = before.as_ref().and_then(|b| b.fingerprint.clone());
    if data.before.is_none() {
        data.before = ops::current_commit(ctx).await;
    }
    let before_id = before
        .as_ref()
        .map(|b| b.id.clone())
        .unwrap_or_else(|| "(none: --no-snapshot)".into());
    ctx.printer.set_incident(&id);
    let (happened, summary) = match restore::restore_and_restart(ctx, &tools, &target).await {
        Ok(v) if v.healthy => {
            let s = match &before {
                Some(b) => format!(
                    "incident {id} restored ({}) and verified healthy; undo with `guard rollback --incident {}`",
                    data.restored_code.as_ref().map_or("no commit", Code::short),
                    b.id
                ),
                None => format!(
                    "incident {id} restored ({}) and verified healthy",
                    data.restored_code.as_ref().map_or("no commit", Code::short)
                ),
            };
            data.verdict = Some(v);
            (Happened::Done, s)
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
    };
    ctx.printer
        .set_codes(data.before.clone(), data.restored_code.clone(), None);
    ctx.printer.set_data(&data);
    // Recorded in the pre-rollback incident; without one, only the audit log has it.
    let record_in = before.as_ref().map(|b| b.id.clone());
    ops::record(
        ctx,
        record_in.as_deref().unwrap_or(""),
        "rollback",
        crate::exit::decide(happened),
        &summary,
    );
    Ok(Done::new(happened, summary))
}
