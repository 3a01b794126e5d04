//! `guard clean [--dry-run] [--check]`: the check-clean.sh of the incident report, safely.

use std::time::Instant;

use anyhow::Result;
use serde::Serialize;

use super::Done;
use crate::clean::{self, Artifact};
use crate::cli::CleanArgs;
use crate::exit::Happened;
use crate::ops::{self, Ctx};
use crate::output::{StepName, StepState};

/// `--json` data of `guard clean`.
#[derive(Serialize)]
struct CleanData<'a> {
    artifacts: &'a [Artifact],
}

/// Run `guard clean`.
pub async fn run(ctx: &mut Ctx<'_>, args: &CleanArgs) -> Result<Done> {
    let t = Instant::now();
    let found = clean::find(&ctx.settings, clean::Scope::Artifacts)?;
    ctx.printer.set_data(&CleanData { artifacts: &found });
    if found.is_empty() {
        ctx.printer
            .step(StepName::Clean, StepState::Ok, t.elapsed(), "no artifacts");
        return Ok(Done::new(Happened::Done, "clean"));
    }
    let list = clean::summary(&found);
    if args.check {
        ctx.printer.step(
            StepName::Clean,
            StepState::Failed,
            t.elapsed(),
            format!("artifacts found: {list}"),
        );
        return Ok(Done::new(
            Happened::CheckFailed,
            format!(
                "artifacts present in {}: {list}",
                ctx.settings.app.dir.display()
            ),
        ));
    }
    if args.dry_run {
        ctx.printer.step(
            StepName::Clean,
            StepState::Ok,
            t.elapsed(),
            format!("would remove: {list}"),
        );
        return Ok(Done::new(
            Happened::Done,
            format!("dry run: would remove {list}"),
        ));
    }
    let mut lock = ops::lock(ctx).await?;
    ops::changing(&mut lock, None);
    ops::clean_step(ctx, StepName::Clean, clean::Scope::Artifacts)?;
    Ok(Done::new(Happened::Done, format!("removed {list}")))
}
