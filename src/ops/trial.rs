//! The preflight trial of `[deploy] strategy = "preflight"` and `"reload"`: the new release
//! started as a second PM2 process (`<app>-guard-trial`, one instance in fork mode, never
//! restarted by PM2) on a spare port passed through the env variable the app reads (`deploy.port_env`),
//! verified there by the deploy's own rules, and removed, all before the running app is
//! touched. A release that fails its trial never serves a request.
//!
//! The trial never outlives guard: it is deleted when the verification ends, and a small
//! reaper started beside it (`sh`, in its own process group) deletes it if guard dies first,
//! `kill -9` included. A trial left by a run whose reaper died too is deleted by the next run.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};

use super::{Ctx, Tools};
use crate::evidence;
use crate::output::{StepName, StepState};
use crate::pm2::Pm2;
use crate::probe::Prober;
use crate::runner;
use crate::verdict::{Reason, Verdict};
use crate::verify;
use crate::verify::rules::Start;

/// Appended to the app's name for its trial process.
pub const SUFFIX: &str = "-guard-trial";

/// The loader PM2 starts a trial (or a `switch` slot) from: it loads the app's own ecosystem
/// file as PM2 does (no value of it is copied to disk) and changes only the name, the port
/// and, for a trial, the instance count, restarts and log files.
const LOADER: &str = r#"// Written by guard for a trial or a switch slot, and removed once PM2 has read it.
const fs = require('fs');
const path = require('path');
const [f, name, newName, portEnv, port, pm2Root, trial] = __GUARD_ARGS__;
let c;
if (/\.json$/.test(f)) {
  c = require('vm').runInThisContext('(' + fs.readFileSync(f, 'utf8') + ')', { filename: f, timeout: 1000 });
} else if (/\.ya?ml$/.test(f)) {
  c = require(require.resolve('js-yaml', { paths: [pm2Root || process.cwd()] })).load(fs.readFileSync(f, 'utf8'));
} else {
  c = require(f);
}
const apps = Array.isArray(c) ? c : (c && c.apps ? [].concat(c.apps) : []);
const a = Object.assign({}, apps.find((x) => x && x.name === name));
const dir = path.dirname(f);
a.name = newName;
a.cwd = a.cwd ? path.resolve(dir, a.cwd) : dir;
if (typeof a.script === 'string' && fs.existsSync(path.resolve(a.cwd, a.script))) {
  a.script = path.resolve(a.cwd, a.script);
}
a.env = Object.assign({}, a.env || {}, { [portEnv]: String(port) });
a.watch = false;
if (trial) {
  a.instances = 1;
  // Fork mode even for a cluster app: PM2 loses a cluster worker's output when it dies while
  // loading, and that output is the evidence of a failed trial.
  a.exec_mode = 'fork';
  // A crash is the verdict: PM2 must not restart the trial.
  a.autorestart = false;
  // Its own log files and pid file, never the app's.
  for (const k of ['out_file', 'error_file', 'log_file', 'output', 'error', 'log', 'pid_file', 'pid']) delete a[k];
} else {
  // A switch slot serves: the app's own settings, and its name as the namespace, so
  // `pm2 logs <app>` still finds whichever slot is live.
  a.namespace = name;
  for (const k of ['pid_file', 'pid']) delete a[k];
}
module.exports = { apps: [a] };
"#;

/// What a loader starts: the app of `ecosystem` as `new_name` on `port`.
pub struct Loader<'a> {
    /// The app's ecosystem file.
    pub ecosystem: &'a Path,
    /// The app's name in it.
    pub app: &'a str,
    /// The PM2 name of the process started.
    pub new_name: &'a str,
    /// Its port.
    pub port: u16,
    /// A trial (fork, one instance, never restarted, its own logs) or a slot that serves.
    pub trial: bool,
}

impl Loader<'_> {
    /// Write the loader into a new folder of backup.dir (removed when the guard is dropped).
    pub fn write(&self, ctx: &Ctx<'_>, tools: &Tools) -> Result<(tempfile::TempDir, PathBuf)> {
        let dir = tempfile::Builder::new()
            .prefix(&trial_dir_prefix(&ctx.settings.app.name))
            .tempdir_in(ctx.store.dir())
            .with_context(|| {
                format!(
                    "creating a folder for the loader in {}",
                    ctx.store.dir().display()
                )
            })?;
        let loader: PathBuf = dir.path().join(format!("{}.config.cjs", self.new_name));
        let args = serde_json::json!([
            self.ecosystem,
            self.app,
            self.new_name,
            ctx.settings.port_env,
            self.port,
            tools.pm2.install_root(),
            self.trial,
        ]);
        crate::atomic::write(
            &loader,
            LOADER
                .replace("__GUARD_ARGS__", &args.to_string())
                .as_bytes(),
            0o600,
        )
        .with_context(|| format!("writing {}", loader.display()))?;
        Ok((dir, loader))
    }
}

/// A free TCP port on 127.0.0.1 (the kernel's choice).
/// A configured `deploy.preflight_port` must be free before anything changes: a port in use
/// would fail a good release as "crashed at start". A usage error (exit 2) naming it.
pub fn check_port(ctx: &Ctx<'_>) -> Result<()> {
    let Some(port) = ctx.settings.trial_port else {
        return Ok(());
    };
    if let Err(e) = std::net::TcpListener::bind(("127.0.0.1", port)) {
        return Err(crate::exit::usage(format!(
            "deploy.preflight_port {port} is in use ({e}): the trial of the new release could not listen there; free it or unset preflight_port (a free port is then picked), config {}; nothing was changed",
            ctx.settings.config_path.display()
        )));
    }
    Ok(())
}

pub(super) fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

/// Deletes the trial if guard dies; killed once guard has deleted it itself.
pub(super) struct Reaper(Option<std::process::Child>);

impl Reaper {
    pub(super) fn start(pm2: &Pm2, trial: &str) -> Reaper {
        // Only while PM2's daemon lives: a `pm2 delete` after it is gone would start a new
        // daemon that nobody stops.
        let script = r#"while kill -0 "$1" 2>/dev/null; do sleep 0.5; done; p=$(cat "$PM2_HOME/pm2.pid" 2>/dev/null) && kill -0 "$p" 2>/dev/null && exec "$2" delete "$3""#;
        let mut cmd = std::process::Command::new("sh");
        cmd.args(["-c", script, "guard-trial-reaper"])
            .arg(std::process::id().to_string())
            .arg(pm2.bin())
            .arg(trial)
            .env("PM2_HOME", pm2.home());
        match runner::spawn_detached(cmd, "sh -c <delete the trial when guard ends>") {
            Ok(child) => Reaper(Some(child)),
            Err(e) => {
                tracing::warn!("{e:#}: a trial left by a killed guard is deleted by the next run");
                Reaper(None)
            }
        }
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Delete a trial left behind by a run that died with its reaper.
pub async fn delete_leftover(ctx: &mut Ctx<'_>, tools: &Tools) {
    let trial = tools
        .pm2
        .named(&format!("{}{SUFFIX}", ctx.settings.app.name));
    if tools.pm2.daemon_running()
        && let Ok(list) = trial.instances().await
        && !list.is_empty()
    {
        let t = Instant::now();
        let detail = match trial.delete().await {
            Ok(()) => format!("deleted {} left by an earlier run", trial.name()),
            Err(e) => format!(
                "could not delete {} left by an earlier run: {e:#}",
                trial.name()
            ),
        };
        ctx.printer
            .step(StepName::Preflight, StepState::Warn, t.elapsed(), detail);
    }
    // The loader folders of trials whose run was killed (-9) with them: this app's only
    // (backup.dir may be shared), and no trial of this app runs while its lock is held.
    let prefix = trial_dir_prefix(&ctx.settings.app.name);
    if let Ok(rd) = std::fs::read_dir(ctx.store.dir()) {
        for e in rd.flatten() {
            let name = e.file_name();
            let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
            if is_dir && name.to_str().is_some_and(|n| n.starts_with(&prefix)) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// The name every trial folder of `app` in backup.dir starts with.
fn trial_dir_prefix(app: &str) -> String {
    format!("trial-{app}-")
}

/// Run the trial of the release now in app.dir; the verdict says whether it may replace the
/// running app. Its log tails go into incident `id` when it fails.
pub async fn run(ctx: &mut Ctx<'_>, tools: &Tools, ecosystem: &Path, id: &str) -> Result<Verdict> {
    let t = Instant::now();
    let name = ctx.settings.app.name.clone();
    let trial_name = format!("{name}{SUFFIX}");
    let trial = tools.pm2.named(&trial_name);
    let port = match ctx.settings.trial_port {
        Some(p) => p,
        None => free_port()?,
    };
    let (_dir, loader) = Loader {
        ecosystem,
        app: &name,
        new_name: &trial_name,
        port,
        trial: true,
    }
    .write(ctx, tools)?;

    let mut health = ctx.settings.health.clone();
    let _ = health.url.set_port(Some(port));
    let prober = Prober::new(&health)?;
    let offsets = evidence::offsets(tools.pm2.home(), &[]);
    let reaper = Reaper::start(&tools.pm2, &trial_name);
    let verdict = match trial.start(&loader).await {
        Ok(()) => {
            let cancel = ctx.cancel.clone();
            let rules = super::restart::rules(ctx, Start::Fresh);
            let printer = &*ctx.printer;
            verify::verify(
                &trial,
                &prober,
                rules,
                ctx.settings.health.interval,
                Some(&offsets),
                &cancel,
                &mut |p| printer.progress(StepName::Preflight, &p.to_string()),
            )
            .await?
        }
        Err(e) => Verdict::new(
            Reason::RestartFailed {
                error: format!("{e:#}"),
            },
            t.elapsed(),
        ),
    };
    let state = if verdict.healthy {
        StepState::Ok
    } else {
        StepState::Failed
    };
    ctx.printer.step(
        StepName::Preflight,
        state,
        t.elapsed(),
        format!(
            "trial of the new release as {trial_name} on port {port} ({}={port}): {}",
            ctx.settings.port_env, verdict.message
        ),
    );
    if !verdict.healthy {
        super::save_evidence(ctx, id, &verdict, &offsets).await;
    }
    if let Err(e) = trial.delete().await {
        // The reaper is left running: it tries again once guard has ended.
        tracing::warn!("deleting the trial {trial_name}: {e:#}");
        if let Some(c) = reaper.0.as_ref() {
            tracing::warn!("the reaper (pid {}) deletes it when guard ends", c.id());
        }
        std::mem::forget(reaper);
    } else {
        drop(reaper);
    }
    Ok(verdict)
}
