//! `guard deploy`: check the inputs, take the lock and a snapshot, then the deploy's phases
//! (`ops::deploy`: clean, deploy step, release check, trial, restart or reload, verify, roll
//! back), and record how it ended.

use std::time::Duration;

use anyhow::Result;

use super::Done;
use crate::cli::DeployArgs;
use crate::exit::Happened;
use crate::ops::deploy::{self, DeployData, StepCmd};
use crate::ops::{self, Ctx, snapshot};
use crate::output::{StepName, StepState};
use crate::store::Kind;

/// `guard deploy`.
pub async fn run(ctx: &mut Ctx<'_>, args: &DeployArgs) -> Result<Done> {
    let tools = ctx.tools()?;
    ctx.printer.set_ref(args.git_ref.clone());
    deploy::check_inputs(ctx, &tools).await?;
    let step = step_command(ctx, args);
    let mut lock = ops::lock(ctx).await?;
    let taken = snapshot::take(ctx, &tools, Kind::PreDeploy, "deploy", &[]).await?;
    let id = taken.id.clone();
    ops::changing(&mut lock, Some(&id));
    // For the destinations that asked for it: "deploying v42 to web-1".
    let what = args
        .git_ref
        .as_deref()
        .map(|r| format!("{r} "))
        .unwrap_or_default();
    let started = format!(
        "deploying {what}to {} on {} (backup: incident {id})",
        ctx.settings.app.name,
        crate::origin::host()
    );
    ops::alert_event(
        ctx,
        "deploy_started",
        crate::alert::Severity::Info,
        &started,
    )
    .await;
    let mut data = DeployData {
        before: taken.fingerprint.clone(),
        // Known from the start: a deploy whose step fails still says how it would have gone.
        strategy: Some(ctx.settings.strategy),
        ..DeployData::default()
    };
    let phases = deploy::after_backup(
        ctx,
        &tools,
        &id,
        deploy::Request {
            step,
            git_ref: args.git_ref.as_deref(),
            no_rollback: args.no_rollback,
        },
        &mut data,
        &mut lock,
    );
    let done = match phases.await {
        Ok(done) => done,
        // An error after the backup: the state may be half-changed and is not verified, which
        // is exit 4 whatever the error was; say where the backup is.
        Err(e) => {
            ctx.printer.step(
                StepName::Deploy,
                StepState::Failed,
                Duration::ZERO,
                format!("{e:#}"),
            );
            Done::new(
                Happened::LeftUnverified,
                format!(
                    "deploy stopped by an error after the backup ({e:#}); the service is NOT verified healthy: check `guard health`, restore with `guard rollback --incident {id}`"
                ),
            )
        }
    };
    // What runs now: the deployed code, unless it was put back.
    let after = match done.happened {
        Happened::Done | Happened::LeftUnverified => data.deployed.clone(),
        _ => data.before.clone(),
    };
    ctx.printer
        .set_codes(data.before.clone(), after, data.deployed.clone());
    ctx.printer.set_data(&data);
    let status = crate::exit::decide(done.happened);
    ops::record(ctx, &id, "deploy", status, &done.summary);
    Ok(done)
}

fn step_command(ctx: &Ctx<'_>, args: &DeployArgs) -> StepCmd {
    if !args.command.is_empty() {
        StepCmd::Argv(args.command.clone())
    } else if let Some(c) = &ctx.settings.deploy_command {
        StepCmd::Shell(c.clone())
    } else {
        StepCmd::None
    }
}
