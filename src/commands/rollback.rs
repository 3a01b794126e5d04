//! `guard rollback --incident ID|latest`: check the incident, snapshot what is there now,
//! put the incident back in service the strategy's way, prove it (`ops::rollback`), and
//! record how it ended.

use anyhow::Result;

use super::Done;
use crate::cli::RollbackArgs;
use crate::ops::rollback::{self, RollbackData};
use crate::ops::{self, Ctx};
use crate::store;

/// `guard rollback`.
pub async fn run(ctx: &mut Ctx<'_>, args: &RollbackArgs) -> Result<Done> {
    if args.target() != "latest" {
        store::parse_id(args.target())?;
    }
    let tools = ctx.tools()?;
    let mut lock = ops::lock(ctx).await?;
    // A previous release kept warm past its time (`strategy = "switch"`) is stopped first.
    ops::switch::expire(ctx, &tools).await?;
    if let Some(done) = rollback::nothing_to_undo(ctx, &tools, args.target(), &lock).await {
        return Ok(done);
    }
    let target = rollback::pick(ctx, args.target()).await?;
    let id = target.manifest.id.clone();
    let mut data = RollbackData {
        restored: id.clone(),
        restored_code: target.manifest.fingerprint(),
        before_incident: None,
        before: None,
        verdict: None,
    };
    let before = rollback::snapshot_before(ctx, &tools, &id, args.no_snapshot, &mut data).await?;
    let before_id = before.as_ref().map(|b| b.id.clone());
    ops::changing(&mut lock, before_id.as_deref());
    let (happened, summary) =
        rollback::restore(ctx, &tools, &target, before_id.as_deref(), &mut data).await;
    ctx.printer
        .set_codes(data.before.clone(), data.restored_code.clone(), None);
    ctx.printer.set_data(&data);
    // Recorded in the pre-rollback incident; without one, only the audit log has it.
    ops::record(
        ctx,
        before_id.as_deref().unwrap_or(""),
        "rollback",
        crate::exit::decide(happened),
        &summary,
    );
    Ok(Done::new(happened, summary))
}
