//! guard: safe deploys for a PM2-run Node.js backend. Parse, run, exit with one code.

mod alert;
mod atomic;
mod audit;
mod beneath;
mod checks;
mod clean;
mod cli;
mod code;
mod commands;
mod ecosystem;
mod evidence;
mod excludes;
mod exit;
mod git;
mod lock;
mod metrics;
mod monitor;
mod ops;
mod origin;
mod output;
mod pm2;
mod pm2log;
mod pm2rpc;
mod probe;
mod proxy;
mod redact;
mod resources;
mod runner;
mod sdnotify;
mod settings;
mod signals;
mod store;
mod switch;
#[cfg(test)]
mod testing;
mod verdict;
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
    // Parse before starting any runtime: a bad flag exits 2 without touching anything, and
    // with --json a script still gets a JSON document saying so.
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let wants_json = std::env::args().any(|a| a == "--json");
            if wants_json && e.use_stderr() {
                // The same document as any other error, naming the subcommand if one was typed
                // (else `guard` itself), with clap's message line by line.
                let typed = std::env::args()
                    .skip(1)
                    .find(|a| {
                        <cli::Cli as clap::CommandFactory>::command()
                            .find_subcommand(a)
                            .is_some()
                    })
                    .unwrap_or_else(|| "guard".into());
                let mut printer = Printer::new(Mode::Json, &typed);
                printer.usage_error(output::keep_lines(&e.to_string()).trim_end());
                let _ = e.print();
                std::process::exit(ExitStatus::Usage.code());
            }
            e.exit();
        }
    };
    init_logging(cli.verbose, cli.quiet);
    let mode = if cli.json {
        Mode::Json
    } else if cli.quiet {
        Mode::Quiet
    } else {
        Mode::Human
    };
    let mut printer = Printer::new(mode, cli.command.name());
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
    if std::env::var_os("GUARD_BENCH_RUSAGE").is_some() {
        report_rusage();
    }
    std::process::exit(status.code());
}

/// For bench/: guard's own CPU time and peak RSS (RUSAGE_SELF), apart from the pm2 and git
/// processes it ran (RUSAGE_CHILDREN), as one JSON line on stderr.
fn report_rusage() {
    let get = |who| {
        // SAFETY: getrusage fills a zeroed struct it is given; no other memory is touched.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        unsafe { libc::getrusage(who, &mut ru) };
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        (secs(ru.ru_utime) + secs(ru.ru_stime), ru.ru_maxrss)
    };
    let (self_cpu, self_rss_kb) = get(libc::RUSAGE_SELF);
    let (child_cpu, _) = get(libc::RUSAGE_CHILDREN);
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        format!(
            "{{\"guard_rusage\":{{\"cpu_s\":{self_cpu:.3},\"max_rss_kb\":{self_rss_kb},\"children_cpu_s\":{child_cpu:.3}}}}}\n"
        )
        .as_bytes(),
    );
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
        // A closed stderr (the operator's ssh dropped, a parent that stopped reading) must
        // not turn a log line into a panic: by default a failed write is reported with
        // eprintln!, which panics, and the deploy, or the signal handler, would die with it.
        .log_internal_errors(false)
        .with_writer(std::io::stderr)
        // Colour only on a terminal: journald and `2>file` get plain lines.
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
                && std::env::var("TERM").map_or(true, |t| t != "dumb"),
        )
        .with_target(false)
        .without_time()
        .init();
}
