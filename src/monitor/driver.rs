//! The long-running loop of `guard watch`: PM2's pid files read every 250 ms (a crash is
//! seen within that), the health probe every `watch.interval`, memory and artifacts with it,
//! PM2's list only every `watch.pm2_every` (every 2 s while a crash episode is open), and
//! nothing at all while a guard run holds the app's lock. Events go to the printer and to the
//! alert queues; an automatic rollback runs `guard rollback` as a child process.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use tokio::time::Instant;

use super::policy::{LockStep, Policy, Target};
use super::{Event, Limits, Monitor};
use crate::alert::{Alert, Heartbeat, Queues, Severity};
use crate::audit;
use crate::clean;
use crate::lock;
use crate::pm2::{Instance, Pm2};
use crate::probe::{Probe, Prober};
use crate::runner;
use crate::sdnotify::Notifier;
use crate::settings::Settings;
use crate::signals::Cancel;
use crate::verify::rules::Baseline;

const TICK: Duration = Duration::from_millis(250);
const PM2_EVERY_IN_EPISODE: Duration = Duration::from_secs(2);

/// What the loop needs.
pub struct Watcher<'a> {
    /// Settings (watch rules, app, backup.dir for the lock and audit log).
    pub settings: &'a Settings,
    /// PM2.
    pub pm2: Pm2,
    /// The health probe.
    pub prober: Prober,
    /// Under `switch`: PM2 and the prober aimed at whichever process is live now, asked again
    /// after every guard run.
    pub live: Option<&'a mut dyn FnMut() -> Option<(Pm2, Prober)>>,
    /// Alert delivery, when destinations are configured.
    pub queues: Option<Queues>,
    /// What `--metrics` serves, kept up to date as the watcher goes.
    pub metrics: Option<crate::metrics::Shared>,
    /// The heartbeat ping.
    pub heartbeat: Option<Heartbeat>,
    /// Stop signal.
    pub cancel: Cancel,
    /// Shows an event (stdout or JSON lines).
    pub show: &'a mut dyn FnMut(&Alert),
}

/// How a watch ended.
#[derive(Debug, Default, serde::Serialize)]
pub struct Summary {
    /// Events reported.
    pub events: u64,
    /// Automatic rollbacks run.
    pub rollbacks: u64,
    /// How long it watched.
    pub watched_ms: u64,
}

/// This app's last successful deploy, from the audit log (see [`rollback_target`]).
fn last_good_deploy(settings: &Settings) -> Option<Target> {
    let entries = audit::read(&settings.backup.dir, AUDIT_LOOKBACK).ok()?;
    rollback_target(&entries, &settings.app.name)
}

/// Audit entries looked through for the deploy to undo: far more than runs in any
/// `rollback_within`, even with other apps and hourly backups in the same backup.dir.
const AUDIT_LOOKBACK: usize = 5000;

/// The deploy an automatic rollback would undo: the newest deploy or rollback of `app`, if it
/// is a deploy that succeeded and took an incident. A backup, a clean or another app's run
/// after it does not disarm it; a rollback or another deploy of this app after it does (what
/// runs is no longer that release, or was already put back).
fn rollback_target(entries: &[audit::Entry], app: &str) -> Option<Target> {
    let last = entries.iter().rev().find(|e| {
        e.app.as_deref() == Some(app)
            && (e.is_deploy()
                || e.subcommand.as_deref() == Some("rollback")
                || (e.subcommand.is_none()
                    && e.command.split_whitespace().any(|w| w == "rollback")))
    })?;
    if !last.is_deploy() || last.exit_code != 0 {
        return None;
    }
    Some(Target {
        incident: last.incident.clone()?,
        at: last.time.parse().ok()?,
    })
}

/// PM2's list of the app, without ever starting a PM2 daemon that is not running (any pm2
/// call would): a dead daemon is an empty list.
async fn instances(pm2: &Pm2) -> Result<Vec<Instance>> {
    if !pm2.daemon_running() {
        return Ok(Vec::new());
    }
    pm2.instances().await
}

fn watched_of(list: &[Instance]) -> Vec<Baseline> {
    list.iter()
        .map(|i| Baseline {
            pm_id: i.pm_id,
            pid: i.pid,
            pid_path: i.pid_path.clone(),
            restarts: i.restarts,
        })
        .collect()
}

/// Resident memory of one process, from /proc (no process table scan).
fn rss_bytes(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf only reads a system constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).unwrap_or(4096))
}

async fn probe_after(prober: Prober, wait: Duration) -> Probe {
    tokio::time::sleep(wait).await;
    prober.probe().await
}

impl Watcher<'_> {
    fn alert_of(&self, ev: &Event, incident: Option<&str>) -> Alert {
        let mut a = Alert::new(
            &self.settings.app.name,
            ev.name(),
            ev.severity(),
            ev.message(),
        );
        a.count = ev.count();
        a.resolves = ev.resolves().map(str::to_string);
        // The incident an on-call person would go back to, while a deploy is recent.
        if ev.severity() != Severity::Info {
            a.incident = incident.map(str::to_string);
        }
        a
    }

    /// Update the metrics, if they are served.
    fn metrics(&self, f: impl FnOnce(&mut crate::metrics::Metrics)) {
        if let Some(m) = &self.metrics {
            f(&mut m.lock().unwrap_or_else(|e| e.into_inner()));
        }
    }

    /// What PM2 showed, into the metrics.
    fn seen(&self, list: &[Instance]) {
        self.metrics(|m| {
            m.instances = list.len() as u64;
            m.online = list.iter().filter(|i| i.is_online()).count() as u64;
            m.restarts = list.iter().map(|i| i.restarts).sum();
        });
    }

    /// The app's last deploy from the audit log, into the metrics.
    fn last_deploy(&self) {
        if self.metrics.is_none() {
            return;
        }
        let Ok(entries) = audit::read(&self.settings.backup.dir, AUDIT_LOOKBACK) else {
            return;
        };
        let last = entries
            .iter()
            .rev()
            .find(|e| e.app.as_deref() == Some(self.settings.app.name.as_str()) && e.is_deploy())
            .and_then(|e| {
                let t: jiff::Timestamp = e.time.parse().ok()?;
                Some((t.as_millisecond() as f64 / 1000.0, e.exit_code == 0))
            });
        self.metrics(|m| m.last_deploy = last);
    }

    fn report(&mut self, alert: &Alert, summary: &mut Summary) {
        summary.events += 1;
        self.metrics(|m| *m.events.entry(alert.event.clone()).or_default() += 1);
        (self.show)(alert);
        if let Some(q) = &self.queues {
            q.send(alert);
        }
    }

    /// Watch until SIGINT/SIGTERM.
    pub async fn run(mut self, mut notifier: Option<Notifier>) -> Result<Summary> {
        let t0 = Instant::now();
        let w = &self.settings.watch;
        let mut monitor = Monitor::new(Limits {
            failures: w.failures,
            loop_restarts: w.loop_restarts,
            loop_window: w.loop_window,
            recover_after: w.recover_after,
            max_memory: w.max_memory,
        });
        let (interval, pm2_every) = (w.interval, w.pm2_every);
        let backup_dir: PathBuf = self.settings.backup.dir.clone();
        let app = self.settings.app.name.clone();
        let mut summary = Summary::default();
        let now_ms = || jiff::Timestamp::now().as_millisecond();

        let mut policy = Policy::new(
            lock::held_by_live_run(&backup_dir, &app),
            now_ms(),
            w.rollback_within,
        );
        let mut watched: Vec<Baseline> = Vec::new();
        let mut next_jlist = Instant::now();
        if !policy.paused() {
            let list = instances(&self.pm2).await?;
            self.seen(&list);
            monitor.baseline(&list, t0.elapsed());
            watched = watched_of(&list);
            policy.set_target(last_good_deploy(self.settings));
            next_jlist = Instant::now() + pm2_every;
        }
        self.last_deploy();
        if let Some(n) = &notifier {
            n.send("READY=1");
        }
        let heartbeat = self.heartbeat.take().map(Arc::new);
        let mut beat = tokio::time::interval(
            heartbeat
                .as_ref()
                .map_or(Duration::from_secs(3600), |h| h.every),
        );
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut slow = tokio::time::interval(interval);
        slow.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut probe_fut: Pin<Box<dyn Future<Output = Probe>>> =
            Box::pin(probe_after(self.prober.clone(), Duration::ZERO));

        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => break,
                _ = beat.tick() => {
                    if let Some(h) = &heartbeat {
                        let h = h.clone();
                        tokio::spawn(async move { h.beat().await });
                    }
                }
                probe = &mut probe_fut => {
                    let started = Instant::now() - probe.latency;
                    if !policy.paused() {
                        tracing::debug!(outcome = %probe.outcome, "probe");
                        monitor.on_probe(&probe.outcome, t0.elapsed());
                        self.metrics(|m| {
                            m.probes += 1;
                            m.probes_failed += u64::from(!probe.outcome.passed());
                            m.probe_passed = Some(probe.outcome.passed());
                            m.probe_seconds = probe.latency.as_secs_f64();
                        });
                    }
                    probe_fut = Box::pin(probe_after(
                        self.prober.clone(),
                        interval.saturating_sub(started.elapsed()),
                    ));
                }
                _ = slow.tick() => {
                    if !policy.paused() {
                        let now = t0.elapsed();
                        for (id, pid) in monitor.pids().collect::<Vec<_>>() {
                            if let Some(b) = rss_bytes(pid) {
                                monitor.on_memory(id, b, now);
                            }
                        }
                        match clean::find(self.settings, clean::Scope::Artifacts) {
                            Ok(found) => monitor
                                .on_artifacts(found.iter().map(ToString::to_string).collect(), now),
                            Err(e) => tracing::warn!("looking for artifacts: {e:#}"),
                        }
                    }
                }
                _ = tick.tick() => {
                    if let Some(n) = notifier.as_mut() {
                        n.alive();
                    }
                    let step = policy.on_lock(lock::held_by_live_run(&backup_dir, &app), now_ms());
                    if step == LockStep::Pause {
                        tracing::info!("a guard run holds the lock of {app}: quiet until it ends");
                    }
                    if let LockStep::Pause | LockStep::Quiet = step {
                        continue;
                    }
                    if let LockStep::Resume { since_ms } = step {
                        // A deploy or rollback just ended: what runs now is the new normal.
                        if let Some((pm2, prober)) = self.live.as_mut().and_then(|f| f()) {
                            self.pm2 = pm2;
                            self.prober = prober;
                        }
                        let list = instances(&self.pm2).await?;
                        self.seen(&list);
                        monitor.baseline(&super::as_started(&list, since_ms), t0.elapsed());
                        monitor.on_instances(&list, t0.elapsed());
                        watched = watched_of(&list);
                        policy.set_target(last_good_deploy(self.settings));
                        self.last_deploy();
                        next_jlist = Instant::now() + pm2_every;
                    } else if let Some(change) = crate::verify::pid_change(watched.iter()) {
                        // Read again: a run that took the lock a moment ago explains the change.
                        if lock::held_by_live_run(&backup_dir, &app) {
                            continue;
                        }
                        monitor.on_pid_change(&change, t0.elapsed());
                        for w in watched.iter_mut().filter(|w| w.pm_id == change.instance()) {
                            w.pid = None;
                        }
                        // PM2's list on the next tick: the crash alert goes out now.
                        next_jlist = next_jlist.min(Instant::now() + TICK);
                    } else if Instant::now() >= next_jlist {
                        let list = instances(&self.pm2).await?;
                        self.seen(&list);
                        if lock::held_by_live_run(&backup_dir, &app) {
                            continue;
                        }
                        monitor.on_instances(&list, t0.elapsed());
                        watched = watched_of(&list);
                        let every = if monitor.crashing() { PM2_EVERY_IN_EPISODE } else { pm2_every };
                        next_jlist = Instant::now() + every;
                    }
                    monitor.on_tick(t0.elapsed());
                }
            }
            let incident = policy.target_incident().map(String::from);
            for ev in monitor.take_events() {
                let alert = self.alert_of(&ev, incident.as_deref());
                self.report(&alert, &mut summary);
            }
            if let Some((t, age)) =
                policy.rollback_now(monitor.wants_rollback(), jiff::Timestamp::now())
            {
                self.roll_back(&t, age, &mut summary).await;
                // Under `switch` the rollback moved the app to its other process.
                if let Some((pm2, prober)) = self.live.as_mut().and_then(|f| f()) {
                    self.pm2 = pm2;
                    self.prober = prober;
                }
                summary.rollbacks += 1;
                self.metrics(|m| m.rollbacks += 1);
                monitor.rolled_back();
                let list = instances(&self.pm2).await?;
                self.seen(&list);
                monitor.baseline(&list, t0.elapsed());
                watched = watched_of(&list);
                next_jlist = Instant::now() + pm2_every;
                for ev in monitor.take_events() {
                    let alert = self.alert_of(&ev, None);
                    self.report(&alert, &mut summary);
                }
            }
        }
        if let Some(n) = &notifier {
            n.send("STOPPING=1");
        }
        if let Some(q) = self.queues.take() {
            q.drain(Duration::from_secs(5)).await;
        }
        summary.watched_ms = crate::verdict::ms(t0.elapsed());
        Ok(summary)
    }

    /// Run `guard rollback <incident>` as an operator would (its own lock, verification,
    /// record and exit code), and report how it ended. It is not interrupted by a stop signal:
    /// a rollback stopped half-way is worse than a watcher that stops late.
    async fn roll_back(&mut self, t: &Target, age: Duration, summary: &mut Summary) {
        let app = self.settings.app.name.clone();
        let mut start = Alert::new(
            &app,
            "auto_rollback",
            Severity::Critical,
            format!(
                "rolling back to incident {} automatically: the deploy {} ago is failing",
                t.incident,
                humantime::format_duration(Duration::from_secs(age.as_secs()))
            ),
        );
        start.incident = Some(t.incident.clone());
        // Sent like every event: an on-call person learns of the rollback as it starts.
        self.report(&start, summary);
        let exe = own_binary();
        let config = self.settings.config_path.to_string_lossy().to_string();
        let args = ["--config", &config, "--json", "rollback", &t.incident];
        let shown = runner::display(&exe.to_string_lossy(), &args);
        let mut cmd = tokio::process::Command::new(&exe);
        // The rollback's own outcome alert would repeat the one sent here.
        cmd.args(args).env("GUARD_NO_ALERT", "1");
        let out = runner::run(cmd, &shown, Duration::from_secs(30 * 60), None).await;
        // The child's `--json` document, read as the type it is (only what is needed).
        #[derive(serde::Deserialize)]
        struct ChildReport {
            #[serde(default)]
            reason: Option<String>,
        }
        let (code, reason) = match &out {
            Ok(o) => {
                let report: Option<ChildReport> = serde_json::from_slice(&o.stdout).ok();
                let reason = report.and_then(|r| r.reason).unwrap_or_else(|| {
                    format!(
                        "no report from the rollback (exit {:?}): {}",
                        o.code,
                        o.tail(3)
                    )
                });
                (o.code, reason)
            }
            Err(e) => (None, format!("{e:#}")),
        };
        let mut done = if code == Some(0) {
            Alert::new(
                &app,
                "rolled_back",
                Severity::Warning,
                format!(
                    "rolled back automatically to incident {}; the previous version is verified healthy: {reason}",
                    t.incident
                ),
            )
        } else {
            Alert::new(
                &app,
                "rollback_failed",
                Severity::Critical,
                format!(
                    "automatic rollback to incident {} did NOT verify healthy (exit {}): a human must act: {reason}",
                    t.incident,
                    code.map_or_else(|| "none".to_string(), |c| c.to_string())
                ),
            )
        };
        done.incident = Some(t.incident.clone());
        self.report(&done, summary);
    }
}

/// This program, to run `guard rollback` as a child. After an upgrade replaced the binary
/// while the watcher runs, Linux names the old one `... (deleted)`: the new one at the same
/// path is run instead.
fn own_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("guard"));
    match exe.to_str().and_then(|s| s.strip_suffix(" (deleted)")) {
        Some(path) if Path::new(path).is_file() => PathBuf::from(path),
        _ => exe,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(app: &str, sub: &str, exit: i32, incident: Option<&str>, time: &str) -> audit::Entry {
        audit::Entry {
            schema: 2,
            time: time.into(),
            user: "root".into(),
            sudo_user: None,
            from: None,
            host: "h".into(),
            command: format!("guard {sub}"),
            subcommand: Some(sub.into()),
            app: Some(app.into()),
            incident: incident.map(String::from),
            before: None,
            after: None,
            tried: None,
            git_ref: None,
            verdict: "x".into(),
            reason: None,
            exit_code: exit,
            steps: Vec::new(),
        }
    }

    #[test]
    fn the_rollback_target_is_this_apps_last_good_deploy_whatever_ran_after_it() {
        let deploy = entry(
            "api",
            "deploy",
            0,
            Some("20261202-100000"),
            "2026-12-02T10:00:05Z",
        );
        let later = [
            entry(
                "api",
                "backup",
                0,
                Some("20261202-110000"),
                "2026-12-02T11:00:00Z",
            ),
            entry("api", "clean", 0, None, "2026-12-02T11:01:00Z"),
            entry(
                "worker",
                "deploy",
                0,
                Some("20261202-110200"),
                "2026-12-02T11:02:00Z",
            ),
            entry(
                "worker",
                "rollback",
                0,
                Some("20261202-110300"),
                "2026-12-02T11:03:00Z",
            ),
        ];
        let mut log = vec![deploy.clone()];
        log.extend(later.iter().cloned());
        let t = rollback_target(&log, "api").expect("still armed");
        assert_eq!(t.incident, "20261202-100000");
        // A rollback of this app, or a failed deploy, after it disarms it.
        let mut rolled = log.clone();
        rolled.push(entry(
            "api",
            "rollback",
            0,
            Some("20261202-120000"),
            "2026-12-02T12:00:00Z",
        ));
        assert!(rollback_target(&rolled, "api").is_none());
        let mut failed = log.clone();
        failed.push(entry(
            "api",
            "deploy",
            3,
            Some("20261202-120000"),
            "2026-12-02T12:00:00Z",
        ));
        assert!(rollback_target(&failed, "api").is_none());
        assert!(rollback_target(&log, "billing").is_none());
    }
}
