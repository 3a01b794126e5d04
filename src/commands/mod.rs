//! One module per subcommand, and what they share: the context and the final report.

pub mod backup;
pub mod clean;
pub mod deploy;
pub mod health;
pub mod history;
pub mod rollback;

use std::time::Instant;

use anyhow::Result;

use crate::audit;
use crate::cli::{Cli, Command};
use crate::exit::{ExitStatus, status_of};
use crate::incident::Store;
use crate::lock::Lock;
use crate::origin::Origin;
use crate::output::{Printer, StepState};
use crate::redact::Redactor;
use crate::settings::Settings;
use crate::signals::Cancel;

/// What a command shares: settings, printer, the stop signal, who runs it.
pub struct Ctx<'a> {
    /// Validated settings.
    pub settings: Settings,
    /// The one printer.
    pub printer: &'a mut Printer,
    /// Set when SIGINT/SIGTERM arrives.
    pub cancel: Cancel,
    /// This run.
    pub origin: Origin,
    /// The incident store.
    pub store: Store,
}

/// How a command ended.
pub struct Done {
    /// Exit status.
    pub status: ExitStatus,
    /// One line for the operator.
    pub summary: String,
}

impl Done {
    /// Shorthand.
    pub fn new(status: ExitStatus, summary: impl Into<String>) -> Done {
        Done {
            status,
            summary: summary.into(),
        }
    }
}

impl Ctx<'_> {
    /// Create backup.dir if needed and take the app's lock (exit 5 if held).
    pub fn lock(&mut self) -> Result<Lock> {
        self.store.ensure()?;
        let t = Instant::now();
        let lock = Lock::acquire(self.store.dir(), &self.settings.app.name)?;
        if let Some(dead) = &lock.taken_over {
            self.printer.step(
                "lock",
                StepState::Warn,
                t.elapsed(),
                format!(
                    "took over the lock of a run that died: pid {} on {}, started {}",
                    dead.pid, dead.host, dead.started_at
                ),
            );
        }
        Ok(lock)
    }
}

fn changes_things(cmd: &Command) -> bool {
    match cmd {
        Command::Backup(_) | Command::Deploy(_) | Command::Rollback(_) => true,
        Command::Clean(a) => !a.dry_run && !a.check,
        Command::Health(_) | Command::List | Command::History(_) => false,
    }
}

/// Run the parsed command; every error is reported here, once.
pub async fn run(cli: Cli, printer: &mut Printer, cancel: Cancel) -> ExitStatus {
    let origin = Origin::current();
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            let status = status_of(&e);
            printer.error(&e, status);
            return status;
        }
    };
    printer.set_app(&settings.app.name);
    printer.set_redactor(Redactor::from_env_files(
        &settings.app.dir,
        &settings.backup.files,
    ));
    let audit_dir = settings.backup.dir.clone();
    let audited = changes_things(&cli.command);
    let store = Store::at(&settings.backup.dir);
    let mut ctx = Ctx {
        settings,
        printer,
        cancel,
        origin,
        store,
    };
    let result = match &cli.command {
        Command::Backup(a) => backup::run(&mut ctx, a).await,
        Command::Clean(a) => clean::run(&mut ctx, a).await,
        Command::Deploy(a) => deploy::run(&mut ctx, a).await,
        Command::Health(a) => health::run(&mut ctx, a).await,
        Command::Rollback(a) => rollback::run(&mut ctx, a).await,
        Command::List => history::list(&mut ctx).await,
        Command::History(a) => history::history(&mut ctx, a).await,
    };
    let (status, report) = match result {
        Ok(done) => (done.status, ctx.printer.finish(done.status, &done.summary)),
        Err(e) => {
            let status = status_of(&e);
            ctx.printer.error(&e, status);
            (status, ctx.printer.report())
        }
    };
    // Runs refused up front (bad input, lock held) changed nothing and are not audited.
    if audited
        && !matches!(status, ExitStatus::Usage | ExitStatus::LockHeld)
        && audit_dir.is_dir()
        && let Err(e) = audit::append(&audit_dir, &ctx.origin, &report)
    {
        tracing::warn!("{e:#}");
    }
    status
}
