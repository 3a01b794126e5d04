//! guard: safe deploys for a PM2-run Node.js backend. Parse, run, exit with one code.

mod atomic;
mod audit;
mod clean;
mod cli;
mod commands;
mod ecosystem;
mod evidence;
mod exec;
mod exit;
mod git;
mod health;
mod incident;
mod lock;
mod origin;
mod output;
mod pm2;
mod redact;
mod resources;
mod settings;
mod signals;
mod verify;

use clap::Parser;

use crate::exit::ExitStatus;
use crate::output::{Mode, Printer};

fn main() {
    // An ssh session that drops sends SIGHUP: a deploy must reach its verdict anyway. Ignored
    // before anything else happens, and inherited by the children (deploy step, pm2), as nohup does.
    // SAFETY: setting a signal disposition to SIG_IGN at startup, before any thread exists.
    unsafe {
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
    // Parse before starting any runtime: a bad flag exits 2 without touching anything.
    let cli = cli::Cli::parse();
    init_logging(cli.verbose, cli.quiet);
    let mode = if cli.json {
        Mode::Json
    } else if cli.quiet {
        Mode::Quiet
    } else {
        Mode::Human
    };
    let name = format!("{:?}", cli.command)
        .split(['(', ' '])
        .next()
        .unwrap_or("")
        .to_lowercase();
    let mut printer = Printer::new(mode, &name);
    let status = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(async {
            match signals::install() {
                Ok(cancel) => commands::run(cli, &mut printer, cancel).await,
                Err(e) => {
                    printer.error(
                        &anyhow::Error::new(e).context("installing signal handlers"),
                        ExitStatus::Failure,
                    );
                    ExitStatus::Failure
                }
            }
        }),
        Err(e) => {
            printer.error(
                &anyhow::Error::new(e).context("starting the async runtime"),
                ExitStatus::Failure,
            );
            ExitStatus::Failure
        }
    };
    std::process::exit(status.code());
}

fn init_logging(verbose: u8, quiet: bool) {
    let level = match (quiet, verbose) {
        (true, _) => tracing::Level::ERROR,
        (false, 0) => tracing::Level::WARN,
        (false, 1) => tracing::Level::INFO,
        (false, _) => tracing::Level::DEBUG,
    };
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .init();
}
