//! The operations layer: the steps that commands share (lock, snapshot, restore, restart,
//! verify, save, record, clean), each printed as one step line. Commands only sequence these;
//! no command module imports another.

pub mod deploy;
pub mod diff;
pub mod hooks;
pub mod inspect;
pub mod integrity;
pub mod restart;
pub mod restore;
pub mod rollback;
pub mod snapshot;
pub mod status;
pub mod switch;
pub mod trial;

use crate::code::Code;
use std::time::Instant;

use anyhow::Result;

use crate::clean;
use crate::evidence;
use crate::exit::{ExitStatus, usage};
use crate::git::Git;
use crate::lock::Lock;
use crate::origin::Origin;
use crate::output::{Printer, StepName, StepState};
use crate::pm2::Pm2;
use crate::probe::Prober;
use crate::settings::Settings;
use crate::signals::Cancel;
use crate::store::{RunRecord, Store};
use crate::verdict::Verdict;

/// What every step needs: the settings, the one printer, the stop signal, who runs it, and
/// the incident store.
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

/// The two tools a deploy or rollback drives: PM2 and the health probe.
pub struct Tools {
    /// The pm2 adapter.
    pub pm2: Pm2,
    /// The health prober.
    pub prober: Prober,
}

impl Ctx<'_> {
    /// PM2 and the prober for these settings; a missing pm2 is a usage error (nothing changed).
    pub fn tools(&self) -> Result<Tools> {
        if self.settings.switch.is_some() {
            // Two processes take turns: the live one is what the proxy sends traffic to.
            return switch::live_tools(&self.settings, self.store.dir());
        }
        Ok(Tools {
            pm2: Pm2::new(&self.settings)?,
            prober: Prober::new(&self.settings.health)?,
        })
    }
}

/// Create backup.dir if needed and take the app's lock (exit 5 if held).
pub async fn lock(ctx: &mut Ctx<'_>) -> Result<Lock> {
    ctx.store.ensure()?;
    let t = Instant::now();
    let lock = Lock::acquire(
        ctx.store.dir(),
        &ctx.settings.app.name,
        &ctx.settings.app.dir,
        &ctx.origin,
        ctx.printer.command(),
    )?;
    if let Some(dead) = &lock.taken_over {
        let o = &dead.origin;
        let how_far = match (&dead.phase, &dead.incident) {
            (Some(_), Some(id)) => format!(
                "it had begun to change the app after incident {id}: the app may be half-changed, `guard rollback {id}` puts back what ran before it"
            ),
            (Some(_), None) => "it had begun to change the app".to_string(),
            (None, _) => "it had not changed the app yet".to_string(),
        };
        ctx.printer.step(
            StepName::Lock,
            StepState::Warn,
            t.elapsed(),
            format!(
                "took over the lock of a run that died: pid {} on {}, started {}; {how_far}",
                o.pid, o.host, o.started_at
            ),
        );
    }
    if let Some(pgid) = lock.stopped_orphan {
        ctx.printer.step(
            StepName::Lock,
            StepState::Warn,
            t.elapsed(),
            format!(
                "stopped the dead run's deploy step or hook, still running (process group {pgid})"
            ),
        );
        // A git command of that step, killed half-way, leaves git's index lock behind, and
        // every git command after it would fail. It was stopped here, under guard's lock.
        // Only app.dir's own `.git` folder, opened without following a link: a `.git` file
        // or symlink of the app user's could point root's unlink anywhere.
        if Git::open(&ctx.settings.app.dir).await.is_some()
            && let Ok(root) = crate::beneath::Root::open(&ctx.settings.app.dir)
            && let Ok(git_dir) = root.open_dir(std::path::Path::new(".git"))
            && crate::beneath::kind_at(
                std::os::fd::AsFd::as_fd(&git_dir),
                std::ffi::OsStr::new("index.lock"),
            )
            .is_ok_and(|k| k == Some(rustix::fs::FileType::RegularFile))
        {
            let stale = ctx.settings.app.dir.join(".git/index.lock");
            if rustix::fs::unlinkat(&git_dir, "index.lock", rustix::fs::AtFlags::empty()).is_ok() {
                ctx.printer.step(
                    StepName::Lock,
                    StepState::Warn,
                    t.elapsed(),
                    format!("removed {} left by the stopped step's git", stale.display()),
                );
            }
        }
    }
    Ok(lock)
}

/// Mark the run as changing the app from now on (a run that dies later is known to have
/// changed something); a failure to write the mark is only logged.
pub fn changing(lock: &mut Lock, incident: Option<&str>) {
    if let Err(e) = lock.changing(incident) {
        tracing::warn!("recording progress in the lock file: {e:#}");
    }
}

/// Every backup.files entry must exist before anything is changed (a usage error otherwise).
pub fn check_files(ctx: &Ctx<'_>) -> Result<()> {
    for rel in &ctx.settings.backup.files {
        let p = ctx.settings.app.dir.join(rel);
        if !p.is_file() {
            return Err(usage(format!(
                "backup.files entry {} is not a file: {} does not exist or is not a regular file (config {})",
                rel.display(),
                p.display(),
                ctx.settings.config_path.display()
            )));
        }
    }
    Ok(())
}

/// The clean step: remove what the rules of `scope` match and say so.
pub fn clean_step(
    ctx: &mut Ctx<'_>,
    name: crate::output::StepName,
    scope: clean::Scope,
) -> Result<()> {
    let t = Instant::now();
    let found = clean::find(&ctx.settings, scope)?;
    if found.is_empty() {
        ctx.printer
            .step(name, StepState::Ok, t.elapsed(), "no artifacts");
    } else {
        clean::remove(&ctx.settings.app.dir, &found)?;
        // An app that builds on the server (`after_deploy = false`) has its build output
        // removed before every build: that is the normal start of its deploy, not a warning.
        // An artifact anywhere else (the incident's stale dist/, an archive) is.
        let build_output = scope == clean::Scope::BeforeBuild
            && !ctx.settings.clean.after_deploy
            && found.iter().all(|a| {
                ctx.settings
                    .clean
                    .paths
                    .iter()
                    .any(|p| a.path.starts_with(p))
            });
        let (state, detail) = if build_output {
            (
                StepState::Ok,
                format!(
                    "removed {} (the build output, rebuilt by the deploy step)",
                    clean::summary(&found)
                ),
            )
        } else {
            (
                StepState::Warn,
                format!("removed {}", clean::summary(&found)),
            )
        };
        ctx.printer.step(name, state, t.elapsed(), detail);
    }
    Ok(())
}

/// The ecosystem file in force now: guard.toml's, else the one found in app.dir.
pub fn ecosystem_path(ctx: &Ctx<'_>) -> Result<std::path::PathBuf> {
    crate::ecosystem::locate(ctx.settings.app.ecosystem.as_deref(), &ctx.settings.app.dir)
}

/// What the app's ecosystem file declares for the app, loaded as PM2 loads it; None when it
/// cannot be found or loaded (the callers that must refuse then use `ecosystem::check`).
pub async fn declared(ctx: &Ctx<'_>, pm2: &Pm2) -> Option<crate::ecosystem::Declared> {
    let eco = ecosystem_path(ctx).ok()?;
    crate::ecosystem::check(&eco, &ctx.settings.app.name, pm2.install_root().as_deref())
        .await
        .ok()
        .flatten()
}

/// With `clean.after_deploy`, the app's script and cwd must not lie inside a `clean.paths`
/// entry: guard would delete them after every deploy step. Err says why and how to fix it.
pub fn script_outside_clean(
    ctx: &Ctx<'_>,
    declared: &crate::ecosystem::Declared,
    ecosystem: &std::path::Path,
) -> std::result::Result<(), String> {
    if !ctx.settings.clean.after_deploy {
        return Ok(());
    }
    let app_dir = &ctx.settings.app.dir;
    let cwd = declared.cwd_path(ecosystem);
    let script = declared.script_path(ecosystem);
    for rel in &ctx.settings.clean.paths {
        let cleaned = app_dir.join(rel);
        let hit = [
            Some(("script", script.clone())),
            Some(("cwd", Some(cwd.clone()))),
        ]
        .into_iter()
        .flatten()
        .find_map(|(what, p)| p.filter(|p| p.starts_with(&cleaned)).map(|p| (what, p)));
        if let Some((what, p)) = hit {
            return Err(format!(
                "the PM2 app's {what} {} lies inside clean.paths entry {:?}, which guard removes after the deploy step: if {}/ is your build output, set `after_deploy = false` under [clean] in {}",
                p.display(),
                rel.display().to_string(),
                rel.display(),
                ctx.settings.config_path.display()
            ));
        }
    }
    Ok(())
}

/// The commit checked out in app.dir, if it is a git work tree.
pub async fn current_commit(ctx: &Ctx<'_>) -> Option<Code> {
    let git = Git::open(&ctx.settings.app.dir).await?;
    git.head().await.ok().map(Code::commit)
}

/// Record the outcome in an incident's outcome.json; a failure to do so is only logged.
pub fn record(ctx: &Ctx<'_>, id: &str, command: &str, status: ExitStatus, summary: &str) {
    if id.is_empty() {
        return;
    }
    // The codes the command set on the report: one record of them, shown and stored alike.
    let (before, after, tried) = ctx.printer.codes();
    let outcome = RunRecord {
        command: command.into(),
        verdict: status.to_string(),
        reason: Some(ctx.printer.redactor().redact(summary)),
        exit_code: status.code(),
        at: crate::origin::now_rfc3339(),
        before,
        after,
        tried,
        git_ref: ctx.printer.git_ref(),
    };
    if let Err(e) = ctx.store.set_outcome(id, &outcome) {
        tracing::warn!("recording the outcome in incident {id}: {e:#}");
    }
}

/// Save the app's log tails (only what they got since the restart) into the incident and show
/// the last lines of the error log.
pub async fn save_evidence(
    ctx: &mut Ctx<'_>,
    id: &str,
    verdict: &Verdict,
    since: &evidence::Offsets,
) {
    // PM2's daemon writes the app's output to the log files a moment after the app printed
    // it: wait until they have grown past where they ended before the restart (the app said
    // something) and then stopped growing, so the last lines, often the cause, are in the
    // evidence. At most a second, and only after a failure.
    let logs: std::collections::BTreeSet<&std::path::PathBuf> = verdict
        .instances
        .iter()
        .flat_map(|i| [&i.out_log, &i.err_log])
        .flatten()
        .collect();
    let size = || -> u64 {
        logs.iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum()
    };
    let before: u64 = logs
        .iter()
        .map(|p| since.get(*p).copied().unwrap_or(0))
        .sum();
    let mut last = size();
    for _ in 0..10 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let now = size();
        if now == last && now > before {
            break;
        }
        last = now;
    }
    let tails = evidence::collect(&verdict.instances, ctx.printer.redactor(), since);
    for tail in &tails {
        match ctx.store.save_evidence(id, &tail.name, &tail.text) {
            Ok(path) => tracing::info!("saved {}", path.display()),
            Err(e) => tracing::warn!("saving log evidence: {e:#}"),
        }
    }
    if tails.iter().all(|t| t.text.trim().is_empty()) {
        // A worker that died while loading can leave nothing in the app's logs: what PM2
        // itself said about the app is the evidence then.
        // The process PM2 ran (under `switch`, `<app>-<port>`; a trial has its own name).
        let name = verdict
            .instances
            .first()
            .map_or(ctx.settings.app.name.clone(), |i| i.name.clone());
        let said = evidence::daemon_lines(&ctx.settings.pm2.home, &name, 6);
        let said: Vec<String> = said
            .iter()
            .map(|l| ctx.printer.redactor().redact(l))
            .collect();
        ctx.printer.detail(format!(
            "PM2 wrote nothing to the app's logs since the restart; PM2's own lines about {name}:"
        ));
        for line in &said {
            ctx.printer.detail(format!("  {line}"));
        }
        if !said.is_empty()
            && let Err(e) = ctx
                .store
                .save_evidence(id, "pm2-daemon.log", &(said.join("\n") + "\n"))
        {
            tracing::warn!("saving PM2's lines: {e:#}");
        }
    } else if let Some(err) = tails
        .iter()
        .find(|t| t.name.ends_with("-error.log") && !t.text.trim().is_empty())
    {
        ctx.printer.detail(format!(
            "from {} (tail saved in incident {id}, logs/):",
            err.name
        ));
        for line in evidence::excerpt(&err.text, 6) {
            ctx.printer.detail(format!("  {line}"));
        }
    }
}

/// Send a deploy's or rollback's outcome: exit 3 or 4 to every alert destination, exit 0
/// (`deploy_succeeded`, `rollback_succeeded`) to those that opted into it.
pub async fn alert_outcome(ctx: &mut Ctx<'_>, status: ExitStatus, summary: &str) {
    use crate::alert::Severity;
    let command = ctx.printer.command().to_string();
    let (event, severity) = match (command.as_str(), status) {
        ("deploy", ExitStatus::Success) => ("deploy_succeeded", Severity::Info),
        ("rollback", ExitStatus::Success) => ("rollback_succeeded", Severity::Info),
        ("deploy", ExitStatus::RolledBack) => ("deploy_rolled_back", Severity::Warning),
        ("deploy", ExitStatus::NeedsHuman) => ("deploy_not_healthy", Severity::Critical),
        ("rollback", ExitStatus::NeedsHuman | ExitStatus::RolledBack) => {
            ("rollback_not_healthy", Severity::Critical)
        }
        _ => return,
    };
    let message = format!("guard {command} exit {}: {summary}", status.code());
    alert_event(ctx, event, severity, &message).await;
}

/// Send one event to the destinations that take it, with a few quick retries (the operator
/// is waiting); one step line says where it went. Nothing is said when no destination takes
/// it. Skipped under `GUARD_NO_ALERT` (set by `guard watch` for the rollback it runs and
/// reports itself).
pub async fn alert_event(
    ctx: &mut Ctx<'_>,
    event: &str,
    severity: crate::alert::Severity,
    message: &str,
) {
    if !ctx.settings.alert.any() || std::env::var_os("GUARD_NO_ALERT").is_some() {
        return;
    }
    let t = Instant::now();
    let mut redactor = ctx.printer.redactor().clone();
    let alerter = match crate::alert::Alerter::new(&ctx.settings.alert, &mut redactor) {
        Ok(a) => a,
        Err(e) => {
            ctx.printer.step(
                StepName::Alert,
                StepState::Warn,
                t.elapsed(),
                format!("not sent: {e:#}"),
            );
            return;
        }
    };
    ctx.printer.set_redactor(redactor);
    let names = alerter.names_for(event);
    if names.is_empty() {
        return;
    }
    let message = ctx.printer.redactor().redact(message);
    let mut alert = crate::alert::Alert::new(&ctx.settings.app.name, event, severity, message);
    alert.incident = ctx.printer.report().incident;
    alert.git_ref = ctx.printer.git_ref();
    let failed = alerter.deliver(&alert, &crate::alert::Retry::short()).await;
    let names = names.join(", ");
    if failed.is_empty() {
        ctx.printer.step(
            StepName::Alert,
            StepState::Ok,
            t.elapsed(),
            format!("{event} sent to {names}"),
        );
    } else {
        ctx.printer.step(
            StepName::Alert,
            StepState::Warn,
            t.elapsed(),
            format!("{event} NOT delivered: {}", failed.join("; ")),
        );
    }
}
