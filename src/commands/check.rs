//! `guard check`: every check of the app and its setup, ok, warn or fail with its fix. Changes nothing.

use anyhow::Result;
use serde::Serialize;

use super::Done;
use crate::checks::{self, Check, Level};
use crate::cli::CheckArgs;
use crate::exit::Happened;
use crate::ops::{Ctx, inspect};

/// `--json` data of `guard check`.
#[derive(Serialize)]
struct CheckData<'a> {
    /// The worst level found.
    result: Level,
    checks: &'a [Check],
}

/// `guard check`.
pub async fn run(ctx: &mut Ctx<'_>, args: &CheckArgs) -> Result<Done> {
    let tools = ctx.tools()?;
    let found = inspect::run(ctx, &tools, true).await;
    inspect::learn_ecosystem_env(ctx, found.declared.as_ref());
    for c in &found.checks {
        let word = match c.level {
            Level::Ok => "ok  ",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        };
        ctx.printer
            .line(format!("{word}  {:<14} {}", c.id, c.message));
        if let Some(fix) = &c.fix {
            ctx.printer.line(format!("      {:<14} fix: {fix}", ""));
        }
    }
    let result = checks::worst(&found.checks);
    ctx.printer.set_data(&CheckData {
        result,
        checks: &found.checks,
    });
    let count = |l: Level| found.checks.iter().filter(|c| c.level == l).count();
    let summary = format!(
        "{} check(s): {} ok, {} warning(s), {} failure(s)",
        found.checks.len(),
        count(Level::Ok),
        count(Level::Warn),
        count(Level::Fail)
    );
    let happened = if result == Level::Fail || (args.strict && result == Level::Warn) {
        Happened::CheckFailed
    } else {
        Happened::Done
    };
    Ok(Done::new(happened, summary))
}

/// `--json` data of `guard check --offline`.
#[derive(Serialize)]
struct OfflineData<'a> {
    /// The config read.
    config: &'a std::path::Path,
    /// The app it is for.
    app: &'a str,
    /// Its deploy strategy.
    strategy: crate::settings::Strategy,
}

/// `guard check --offline`: the config parsed and validated (every key, value, range and
/// combination); nothing on this machine looked at.
pub fn offline(printer: &mut crate::output::Printer, settings: &crate::settings::Settings) -> Done {
    printer.line(format!(
        "ok    config         {} is valid: app {}, strategy {}",
        settings.config_path.display(),
        settings.app.name,
        settings.strategy
    ));
    printer.line(
        "      offline        app.dir, PM2, node and the ecosystem file were not looked at: `guard check` on the server does",
    );
    printer.set_data(&OfflineData {
        config: &settings.config_path,
        app: &settings.app.name,
        strategy: settings.strategy,
    });
    Done::new(
        Happened::Done,
        format!("{} is a valid guard config", settings.config_path.display()),
    )
}
