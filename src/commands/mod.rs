//! One module per subcommand. Each only sequences steps of the operations layer (`ops`);
//! none imports another.

pub mod backup;
pub mod check;
pub mod clean;
pub mod deploy;
pub mod diff;
pub mod health;
pub mod history;
pub mod init;
pub mod list;
pub mod rollback;
pub mod verify;
pub mod watch;

use crate::audit;
use crate::cli::{Cli, Command};
use crate::exit::{ExitStatus, decide, status_of};
use crate::ops::{self, Ctx};
use crate::origin::Origin;
use crate::output::Printer;
use crate::redact::Redactor;
use crate::settings::Settings;
use crate::signals::Cancel;
use crate::store::Store;

pub use crate::exit::Done;

fn changes_things(cmd: &Command) -> bool {
    match cmd {
        Command::Backup(_) | Command::Deploy(_) | Command::Rollback(_) => true,
        Command::Clean(a) => !a.dry_run && !a.check,
        Command::Health(_)
        | Command::Verify(_)
        | Command::Diff(_)
        | Command::Incidents(_)
        | Command::History(_)
        | Command::Check(_)
        | Command::Watch(_)
        | Command::Completions(_)
        | Command::Man(_)
        | Command::Init(_) => false,
    }
}

/// Run the parsed command; every error is reported here, once.
pub async fn run(cli: Cli, printer: &mut Printer, cancel: Cancel) -> ExitStatus {
    let origin = Origin::current();
    if let Some(status) = without_config(&cli, printer).await {
        return status;
    }
    with_config(cli, printer, cancel, origin).await
}

/// The commands that need no config (completions, man pages, `init`, `check --offline`):
/// their exit status, or None for every other command.
async fn without_config(cli: &Cli, printer: &mut Printer) -> Option<ExitStatus> {
    let result = match &cli.command {
        // Generated from the CLI definition: no config, no runtime work.
        Command::Completions(args) => {
            crate::cli::completions(args.shell, &mut std::io::stdout());
            return Some(ExitStatus::Success);
        }
        Command::Man(args) => {
            let written = match &args.dir {
                Some(dir) => crate::cli::man_pages(dir).map(|pages| {
                    for p in pages {
                        printer.line(p.display().to_string());
                    }
                }),
                None => crate::cli::man(&mut std::io::stdout()),
            };
            if let Err(e) = written {
                let e = anyhow::Error::new(e).context("writing the man page");
                printer.error(&e, ExitStatus::Failure);
                return Some(ExitStatus::Failure);
            }
            return Some(ExitStatus::Success);
        }
        // init writes the config the other commands read.
        Command::Init(args) => init::run(printer, cli.config.as_deref(), args).await,
        // `check --offline` reads the config as a repository's CI would, and stops there.
        Command::Check(args) if args.offline => {
            Settings::load_offline(cli.config.as_deref()).map(|s| check::offline(printer, &s))
        }
        _ => return None,
    };
    Some(match result {
        Ok(done) => {
            let status = decide(done.happened);
            printer.finish(status, &done.summary);
            status
        }
        Err(e) => {
            let status = status_of(&e);
            printer.error(&e, status);
            status
        }
    })
}

/// The commands that read guard.toml: load it, run the command, alert, record.
async fn with_config(
    cli: Cli,
    printer: &mut Printer,
    cancel: Cancel,
    origin: Origin,
) -> ExitStatus {
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            let status = status_of(&e);
            printer.error(&e, status);
            return status;
        }
    };
    printer.set_app(&settings.app.name);
    crate::runner::put_first_on_path(settings.pm2.child_path_dirs());
    let mut redactor = Redactor::from_env_files(
        &settings.app.dir,
        &settings.backup.files,
        &settings.readable_env,
    );
    // Credentials in health.url are secrets too, wherever the URL is shown.
    if let Some(pw) = settings.health.url.password() {
        redactor.add_secret(pw);
        redactor.add_secret(settings.health.url.username());
    }
    // The command line goes into manifests, the lock file and the audit log: masked once here.
    let mut origin = origin;
    origin.command = redactor.redact(&origin.command);
    printer.set_redactor(redactor);
    let audit_dir = settings.backup.dir.clone();
    let audited = changes_things(&cli.command);
    let store = Store::at(&settings.backup.dir, &settings.app.name).of_folder(&settings.app.dir);
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
        Command::Verify(a) => verify::run(&mut ctx, a).await,
        Command::Diff(a) => diff::run(&mut ctx, a).await,
        Command::Incidents(a) => list::run(&mut ctx, a).await,
        Command::History(a) => history::run(&mut ctx, a).await,
        Command::Check(a) => check::run(&mut ctx, a).await,
        Command::Watch(a) => watch::run(&mut ctx, a).await,
        Command::Init(_) | Command::Completions(_) | Command::Man(_) => {
            unreachable!("handled before the config is read")
        }
    };
    let (status, report) = match result {
        Ok(done) => {
            let status = decide(done.happened);
            // Somebody must know: a deploy rolled back or a service left unverified is sent
            // to the alert destinations before the verdict is printed.
            if matches!(cli.command, Command::Deploy(_) | Command::Rollback(_)) {
                ops::alert_outcome(&mut ctx, status, &done.summary).await;
                ops::hooks::after_run(&mut ctx, status, &done.summary).await;
            }
            (status, ctx.printer.finish(status, &done.summary))
        }
        Err(e) => {
            let status = status_of(&e);
            ctx.printer.error(&e, status);
            (status, ctx.printer.report())
        }
    };
    // Secrets learned during the run (a deploy step's) are masked in the record too.
    ctx.origin.command = ctx.printer.redactor().redact(&ctx.origin.command);
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
