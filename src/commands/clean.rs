//! `guard clean [--dry-run] [--check]`: the check-clean.sh of the incident report, safely.

use std::time::Instant;

use anyhow::Result;

use super::{Ctx, Done};
use crate::clean;
use crate::cli::CleanArgs;
use crate::exit::ExitStatus;
use crate::output::StepState;

/// Run `guard clean`.
pub async fn run(ctx: &mut Ctx<'_>, args: &CleanArgs) -> Result<Done> {
    let t = Instant::now();
    let found = clean::find(&ctx.settings)?;
    ctx.printer
        .set_data(serde_json::json!({ "artifacts": found }));
    if found.is_empty() {
        ctx.printer
            .step("clean", StepState::Ok, t.elapsed(), "no artifacts");
        return Ok(Done::new(ExitStatus::Success, "clean"));
    }
    let list = clean::summary(&found);
    if args.check {
        ctx.printer.step(
            "clean",
            StepState::Failed,
            t.elapsed(),
            format!("artifacts found: {list}"),
        );
        return Ok(Done::new(
            ExitStatus::Failure,
            format!(
                "artifacts present in {}: {list}",
                ctx.settings.app.dir.display()
            ),
        ));
    }
    if args.dry_run {
        ctx.printer.step(
            "clean",
            StepState::Ok,
            t.elapsed(),
            format!("would remove: {list}"),
        );
        return Ok(Done::new(
            ExitStatus::Success,
            format!("dry run: would remove {list}"),
        ));
    }
    let _lock = ctx.lock()?;
    clean::remove(&ctx.settings.app.dir, &found)?;
    ctx.printer.step(
        "clean",
        StepState::Ok,
        t.elapsed(),
        format!("removed {list}"),
    );
    Ok(Done::new(ExitStatus::Success, format!("removed {list}")))
}

/// The clean step of deploy: remove what is there and say so. Returns the line shown.
pub fn clean_step(ctx: &mut Ctx<'_>, name: &str) -> Result<()> {
    let t = Instant::now();
    let found = clean::find(&ctx.settings)?;
    if found.is_empty() {
        ctx.printer
            .step(name, StepState::Ok, t.elapsed(), "no artifacts");
    } else {
        clean::remove(&ctx.settings.app.dir, &found)?;
        ctx.printer.step(
            name,
            StepState::Warn,
            t.elapsed(),
            format!("removed {}", clean::summary(&found)),
        );
    }
    Ok(())
}
