//! `guard backup [--reason TEXT]`: a snapshot into a new incident.

use anyhow::Result;

use super::Done;
use crate::cli::BackupArgs;
use crate::exit::Happened;
use crate::ops::{self, Ctx, snapshot};
use crate::store::Kind;

/// `guard backup`.
pub async fn run(ctx: &mut Ctx<'_>, args: &BackupArgs) -> Result<Done> {
    let tools = ctx.tools()?;
    ops::check_files(ctx)?;
    let _lock = ops::lock(ctx).await?;
    let reason = args.reason.clone().unwrap_or_else(|| "manual".into());
    let taken = snapshot::take(ctx, &tools, Kind::Manual, &reason, &[]).await?;
    ctx.printer.last_line(&taken.id);
    Ok(Done::new(Happened::Done, ""))
}
