//! Restarting through PM2 and proving the result: delete + start, the verification as a
//! step, `pm2 save`, and the check of an app that guard did not restart.

use std::time::Instant;

use anyhow::Result;

use super::{Ctx, Tools};
use crate::evidence::{self, Offsets};
use crate::output::StepState;
use crate::signals::Cancel;
use crate::verdict::{Reason, Verdict};
use crate::verify;
use crate::watch::{Rules, Start};

/// `pm2 delete` + `pm2 start` from the ecosystem, as a step. Returns where the PM2 logs
/// ended before it (evidence is what comes after); Err is the verdict to report when PM2
/// could not even start it.
pub async fn restart(ctx: &mut Ctx<'_>, tools: &Tools) -> Result<Offsets, Verdict> {
    let t = Instant::now();
    let failed = |e: anyhow::Error, ctx: &mut Ctx<'_>| {
        ctx.printer
            .step("restart", StepState::Failed, t.elapsed(), format!("{e:#}"));
        Verdict::new(
            Reason::RestartFailed {
                error: format!("{e:#}"),
            },
            t.elapsed(),
        )
    };
    let ecosystem = match super::ecosystem_path(ctx) {
        Ok(e) => e,
        Err(e) => return Err(failed(e, ctx)),
    };
    let before = match tools.pm2.instances().await {
        Ok(b) => b,
        Err(e) => return Err(failed(e, ctx)),
    };
    let offsets = evidence::offsets(tools.pm2.home(), &before);
    match tools.pm2.restart(&ecosystem, !before.is_empty()).await {
        Ok(()) => {
            let how = if before.is_empty() {
                "first start from the ecosystem"
            } else {
                "pm2 delete + start"
            };
            ctx.printer.step(
                "restart",
                StepState::Ok,
                t.elapsed(),
                format!("{how} {}", ctx.settings.app.name),
            );
            Ok(offsets)
        }
        Err(e) => Err(failed(e, ctx)),
    }
}

/// The verification rules of these settings.
pub fn rules(ctx: &Ctx<'_>, start: Start) -> Rules {
    Rules {
        deadline: ctx.settings.health.deadline,
        stable_for: ctx.settings.health.stable_for,
        start,
    }
}

/// Verify and print the verdict as a step.
pub async fn verify_step(
    ctx: &mut Ctx<'_>,
    tools: &Tools,
    start: Start,
    cancel: &Cancel,
) -> Result<Verdict> {
    let verdict = verify::verify(
        &tools.pm2,
        &tools.prober,
        rules(ctx, start),
        ctx.settings.health.interval,
        cancel,
    )
    .await?;
    print_verdict(ctx, &verdict);
    Ok(verdict)
}

/// The verdict as a step line.
pub fn print_verdict(ctx: &mut Ctx<'_>, verdict: &Verdict) {
    let state = if verdict.healthy {
        StepState::Ok
    } else {
        StepState::Failed
    };
    ctx.printer
        .step("verify", state, verdict.elapsed(), &verdict.message);
}

/// `pm2 save`, as a step; a failure is a warning, the app runs either way.
pub async fn save_step(ctx: &mut Ctx<'_>, tools: &Tools) {
    let t = Instant::now();
    match tools.pm2.save().await {
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

/// One look at an app guard did not restart: every instance online and one probe passing.
pub async fn check_running(ctx: &mut Ctx<'_>, tools: &Tools) -> bool {
    let t = Instant::now();
    let probe = tools.prober.probe().await;
    let instances = tools.pm2.instances().await.unwrap_or_default();
    let online = !instances.is_empty() && instances.iter().all(|i| i.status == "online");
    let healthy = online && probe.outcome.passed();
    let detail = format!(
        "running version untouched: {} instance(s) {}, {}",
        instances.len(),
        if online { "online" } else { "NOT online" },
        probe.outcome
    );
    ctx.printer.step(
        "check",
        if healthy {
            StepState::Ok
        } else {
            StepState::Failed
        },
        t.elapsed(),
        detail,
    );
    healthy
}
