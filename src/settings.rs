//! guard.toml, CLI flags and the environment, resolved into one validated `Settings`.
//!
//! Commands never read the TOML again: every path here is absolute and every duration
//! parsed, so a bad config fails before anything is touched.

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Deserialize;

use crate::exit::usage;

/// Everything a command needs to know about the app, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The config file these settings came from.
    pub config_path: PathBuf,
    /// The app under PM2.
    pub app: App,
    /// Where incidents go and what they hold.
    pub backup: Backup,
    /// What counts as a build artifact.
    pub clean: Clean,
    /// The default deploy step.
    pub deploy_command: Option<String>,
    /// How the new release replaces the running one.
    pub strategy: Strategy,
    /// The env variable the app reads its port from (for the preflight trial).
    pub port_env: String,
    /// The port of the preflight trial; a free one when unset.
    pub trial_port: Option<u16>,
    /// How health is probed and judged.
    pub health: Health,
    /// How PM2 is reached.
    pub pm2: Pm2Config,
    /// Env keys whose values are not secrets and stay readable in output (PORT, HOST...).
    pub readable_env: Vec<String>,
    /// Thresholds of `guard check`.
    pub check: CheckLimits,
    /// What `guard watch` reports, and when it rolls back.
    pub watch: WatchConfig,
    /// Where alerts go.
    pub alert: AlertConfig,
    /// Commands run at fixed points of a deploy or rollback.
    pub hooks: HooksConfig,
}

/// `[hooks]`: shell commands run in app.dir at fixed points (`sh -c`).
#[derive(Debug, Clone, Default)]
pub struct HooksConfig {
    /// After the deploy step and the release check, before the trial and any restart
    /// (database migrations): a failure puts the files back, the running app untouched.
    pub before_restart: Option<String>,
    /// After a deploy verified healthy.
    pub after_success: Option<String>,
    /// After a deploy that failed (rolled back or not).
    pub after_failure: Option<String>,
    /// After a rollback: `guard rollback`, or a deploy's own.
    pub after_rollback: Option<String>,
    /// Limit for one hook.
    pub timeout: Duration,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHooks {
    before_restart: Option<String>,
    after_success: Option<String>,
    after_failure: Option<String>,
    after_rollback: Option<String>,
    #[serde(default, with = "humantime_serde")]
    timeout: Option<Duration>,
}

/// `[deploy] strategy`: how a new release replaces the running one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// `pm2 delete` + `pm2 start`: every ecosystem value takes effect; down for the start time.
    Restart,
    /// A trial on a spare port first, then PM2's rolling reload of a cluster-mode app: no
    /// request fails, for a good release or a bad one.
    Reload,
    /// A trial on a spare port first, then delete + start: a bad release never touches the
    /// running app.
    Preflight,
}

impl std::fmt::Display for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Strategy::Restart => "restart",
            Strategy::Reload => "reload",
            Strategy::Preflight => "preflight",
        })
    }
}

/// `[watch]`: the rules of `guard watch`.
#[derive(Debug, Clone)]
pub struct WatchConfig {
    /// Between health probes while watching.
    pub interval: Duration,
    /// Failing probes in a row before the health alert.
    pub failures: u32,
    /// This many restarts within `loop_window` are a crash loop.
    pub loop_restarts: u32,
    /// The crash-loop window (also `guard health`'s "restarts in the last ...").
    pub loop_window: Duration,
    /// Quiet time after a crash before it is reported recovered.
    pub recover_after: Duration,
    /// Resident memory of one instance above which an alert is sent.
    pub max_memory: Option<u64>,
    /// After a successful deploy, roll back on a crash loop or sustained health failure
    /// within this time; off when unset.
    pub rollback_within: Option<Duration>,
    /// Between consistency reads of PM2's process list (a pm2 CLI call costs a Node start).
    pub pm2_every: Duration,
}

/// Where a secret value (a webhook URL, a bot token) comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Secret {
    /// Written in guard.toml.
    Inline(String),
    /// Read from this environment variable.
    Env(String),
    /// Read from this file (first line).
    File(PathBuf),
}

/// A Telegram destination.
#[derive(Debug, Clone)]
pub struct TelegramConfig {
    /// The bot token.
    pub token: Secret,
    /// The chat to post to.
    pub chat_id: String,
    /// The Bot API base URL.
    pub api_url: reqwest::Url,
    /// The success events it also wants.
    pub events: Vec<String>,
}

/// The heartbeat (dead man's switch) ping.
#[derive(Debug, Clone)]
pub struct HeartbeatConfig {
    /// The URL pinged.
    pub url: Secret,
    /// How often.
    pub every: Duration,
}

/// The success events a destination may opt into; problems go to every destination.
pub const SUCCESS_EVENTS: [&str; 3] = ["deploy_started", "deploy_succeeded", "rollback_succeeded"];

/// A webhook or Slack destination.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Its URL.
    pub url: Secret,
    /// The success events it also wants (`events = [...]`); problems always go.
    pub events: Vec<String>,
}

/// `[alert]`: every destination, any number of each.
#[derive(Debug, Clone, Default)]
pub struct AlertConfig {
    /// Generic JSON webhooks.
    pub webhook: Vec<Endpoint>,
    /// Slack incoming webhooks.
    pub slack: Vec<Endpoint>,
    /// Telegram bots.
    pub telegram: Vec<TelegramConfig>,
    /// The heartbeat ping of `guard watch`.
    pub heartbeat: Option<HeartbeatConfig>,
}

impl AlertConfig {
    /// Whether any alert destination is configured (the heartbeat is not one).
    pub fn any(&self) -> bool {
        !self.webhook.is_empty() || !self.slack.is_empty() || !self.telegram.is_empty()
    }

    /// The files secrets are read from (`*_file` settings).
    pub fn secret_files(&self) -> impl Iterator<Item = &Path> {
        self.webhook
            .iter()
            .chain(&self.slack)
            .map(|e| &e.url)
            .chain(self.telegram.iter().map(|t| &t.token))
            .chain(self.heartbeat.iter().map(|h| &h.url))
            .filter_map(|s| match s {
                Secret::File(p) => Some(p.as_path()),
                _ => None,
            })
    }
}

/// `[check]`: the PM2 fail-fast policy `guard check` expects.
#[derive(Debug, Clone)]
pub struct CheckLimits {
    /// The highest acceptable `max_restarts` (the incident's fix: 3).
    pub max_restarts: u32,
    /// The lowest acceptable `min_uptime` (the incident's fix: 30 s).
    pub min_uptime: Duration,
    /// The env key the app reads to turn Sentry on (the incident's `SENTRY_ENABLED`), when it
    /// has one: only then is a DSN without it a warning.
    pub sentry_flag: Option<String>,
}

/// `[app]`
#[derive(Debug, Clone)]
pub struct App {
    /// The PM2 process name.
    pub name: String,
    /// The app's folder (absolute).
    pub dir: PathBuf,
    /// The ecosystem file (absolute) when guard.toml names one; else it is found in app.dir
    /// each time it is needed (see `ecosystem::locate`), so a release may rename it.
    pub ecosystem: Option<PathBuf>,
}

/// `[backup]`
#[derive(Debug, Clone)]
pub struct Backup {
    /// The folder that holds incidents, the lock and the audit log (absolute).
    pub dir: PathBuf,
    /// Files that must exist before a deploy (relative to the app dir); the env files among
    /// them are where secret values are learned from. Snapshots hold the whole tree.
    pub files: Vec<PathBuf>,
    /// Paths left out of snapshots and never touched by a restore.
    pub exclude: crate::excludes::Excludes,
    /// The exclude patterns as written, recorded in manifests.
    pub exclude_patterns: Vec<String>,
    /// How many incidents retention keeps.
    pub keep: usize,
}

/// `[clean]`
#[derive(Debug, Clone)]
pub struct Clean {
    /// Files or folders relative to the app dir.
    pub paths: Vec<PathBuf>,
    /// File name globs matched in the app dir itself (not recursive).
    pub globs: Vec<glob::Pattern>,
    /// `true` (the incident's layout): `paths` are artifacts, removed before and after the
    /// deploy step. `false` (an app that builds on the server): `paths` are build outputs,
    /// removed only before the deploy step, and restored with the rest of a snapshot.
    pub after_deploy: bool,
}

/// `[health]`
#[derive(Debug, Clone)]
pub struct Health {
    /// The URL probed.
    pub url: reqwest::Url,
    /// Limit for one probe.
    pub timeout: Duration,
    /// Limit for the first passing probe.
    pub deadline: Duration,
    /// How long the app must then stay healthy.
    pub stable_for: Duration,
    /// Time between probes.
    pub interval: Duration,
    /// Text the body must contain, if set.
    pub expect_body: Option<String>,
    /// Timed-out probes in a row that fail a verification: one slow answer on a busy host
    /// is retried at once (as Kubernetes' `failureThreshold`), a hanging `/health` still fails.
    pub timeouts_in_a_row: u32,
    /// Whether a load error in the error log while nothing listens fails a verification (the
    /// ESM crash PM2 hides); off for an app that prints stack traces while it boots slowly.
    pub load_errors: bool,
}

/// `[pm2]`
#[derive(Debug, Clone)]
pub struct Pm2Config {
    /// The pm2 executable: a name looked up on PATH or a path.
    pub bin: PathBuf,
    /// PM2_HOME.
    pub home: PathBuf,
    /// Limit for one pm2 CLI call.
    pub timeout: Duration,
    /// The node executable, when it is not on PATH (nvm): its folder is put on every
    /// child's PATH, as is pm2's.
    pub node: Option<PathBuf>,
}

impl Pm2Config {
    /// Folders every child process gets first on its PATH: pm2's own (with nvm, node is
    /// installed beside it) and `[pm2] node`'s, so a plain `ssh host guard deploy` or a
    /// systemd unit without nvm's PATH still runs pm2, its `#!/usr/bin/env node` and node.
    pub fn child_path_dirs(&self) -> Vec<PathBuf> {
        let mut dirs = Vec::new();
        for p in self.node.iter().chain(std::iter::once(&self.bin)) {
            if p.components().count() > 1
                && let Some(dir) = p.parent()
                && !dirs.iter().any(|d| d == dir)
            {
                dirs.push(dir.to_path_buf());
            }
        }
        dirs
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    app: RawApp,
    #[serde(default)]
    backup: RawBackup,
    #[serde(default)]
    clean: RawClean,
    #[serde(default)]
    deploy: RawDeploy,
    health: RawHealth,
    #[serde(default)]
    pm2: RawPm2,
    #[serde(default)]
    redact: RawRedact,
    #[serde(default)]
    check: RawCheck,
    #[serde(default)]
    watch: RawWatch,
    #[serde(default)]
    alert: RawAlert,
    #[serde(default)]
    hooks: RawHooks,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWatch {
    #[serde(default, with = "humantime_serde")]
    interval: Option<Duration>,
    failures: Option<u32>,
    loop_restarts: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    loop_window: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    recover_after: Option<Duration>,
    max_memory: Option<String>,
    #[serde(default, with = "humantime_serde")]
    rollback_within: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pm2_every: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUrl {
    url: Option<String>,
    url_env: Option<String>,
    url_file: Option<PathBuf>,
    #[serde(default, with = "humantime_serde")]
    every: Option<Duration>,
    #[serde(default)]
    events: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTelegram {
    token: Option<String>,
    token_env: Option<String>,
    token_file: Option<PathBuf>,
    chat_id: String,
    #[serde(default)]
    events: Vec<String>,
    api_url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAlert {
    #[serde(default)]
    webhook: Vec<RawUrl>,
    #[serde(default)]
    slack: Vec<RawUrl>,
    #[serde(default)]
    telegram: Vec<RawTelegram>,
    heartbeat: Option<RawUrl>,
}

/// Exactly one of a value, an env variable name or a file for a secret.
fn secret(
    key: &str,
    value: &Option<String>,
    env: &Option<String>,
    file: &Option<PathBuf>,
    base: &Path,
) -> std::result::Result<Secret, String> {
    match (value, env, file) {
        (Some(v), None, None) if !v.trim().is_empty() => Ok(Secret::Inline(v.clone())),
        (None, Some(e), None) if !e.trim().is_empty() => Ok(Secret::Env(e.clone())),
        (None, None, Some(f)) => Ok(Secret::File(absolute_from(base, f))),
        _ => Err(format!(
            "{key} needs exactly one of {k}, {k}_env (an environment variable) or {k}_file",
            k = if key.contains("telegram") {
                "token"
            } else {
                "url"
            }
        )),
    }
}

/// Every (key, value, min, max) within its bounds, or an error naming the first that is not:
/// beyond bounds a person would use, an overflow or a wait of years is a typo.
fn in_range(checks: &[(&str, Duration, Duration, Duration)]) -> std::result::Result<(), String> {
    for &(key, value, min, max) in checks {
        if value < min || value > max {
            return Err(format!(
                "{key} = {:?} is out of range ({} to {})",
                humantime::format_duration(value).to_string(),
                humantime::format_duration(min),
                humantime::format_duration(max)
            ));
        }
    }
    Ok(())
}

/// "512MB", "1.5GB", "300M", "1024" (bytes) as bytes.
pub fn parse_bytes(text: &str) -> std::result::Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a size like \"512MB\""))?;
    let mult: f64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1.0,
        "K" | "KB" | "KIB" => 1024.0,
        "M" | "MB" | "MIB" => 1024.0 * 1024.0,
        "G" | "GB" | "GIB" => 1024.0 * 1024.0 * 1024.0,
        other => {
            return Err(format!(
                "{text:?}: unknown unit {other:?} (use KB, MB or GB)"
            ));
        }
    };
    let bytes = n * mult;
    if !(1.0..=1e15).contains(&bytes) {
        return Err(format!("{text:?} is out of range"));
    }
    Ok(bytes as u64)
}

fn resolve_watch(raw: &RawWatch) -> std::result::Result<WatchConfig, String> {
    const DAY: Duration = Duration::from_secs(24 * 3600);
    let w = WatchConfig {
        interval: raw.interval.unwrap_or(Duration::from_secs(5)),
        failures: raw.failures.unwrap_or(3),
        loop_restarts: raw.loop_restarts.unwrap_or(3),
        loop_window: raw.loop_window.unwrap_or(Duration::from_secs(300)),
        recover_after: raw.recover_after.unwrap_or(Duration::from_secs(30)),
        max_memory: match &raw.max_memory {
            Some(m) => Some(parse_bytes(m).map_err(|e| format!("watch.max_memory: {e}"))?),
            None => None,
        },
        rollback_within: raw.rollback_within,
        pm2_every: raw.pm2_every.unwrap_or(Duration::from_secs(60)),
    };
    in_range(&[
        (
            "watch.interval",
            w.interval,
            Duration::from_millis(100),
            Duration::from_secs(3600),
        ),
        (
            "watch.loop_window",
            w.loop_window,
            Duration::from_secs(1),
            DAY,
        ),
        ("watch.recover_after", w.recover_after, Duration::ZERO, DAY),
        (
            "watch.rollback_within",
            w.rollback_within.unwrap_or(Duration::from_secs(1)),
            Duration::from_secs(1),
            DAY,
        ),
        (
            "watch.pm2_every",
            w.pm2_every,
            Duration::from_secs(2),
            Duration::from_secs(3600),
        ),
    ])?;
    if !(1..=1000).contains(&w.failures) || !(1..=1000).contains(&w.loop_restarts) {
        return Err("watch.failures and watch.loop_restarts must be 1 to 1000".into());
    }
    Ok(w)
}

/// `events = [...]` of one destination: only the success events may be named (problems go
/// everywhere anyway).
fn success_events(key: &str, events: &[String]) -> std::result::Result<Vec<String>, String> {
    for e in events {
        if !SUCCESS_EVENTS.contains(&e.as_str()) {
            return Err(format!(
                "{key}: events entry {e:?} is not one of {} (problems go to every destination)",
                SUCCESS_EVENTS.join(", ")
            ));
        }
    }
    Ok(events.to_vec())
}

fn resolve_alert(raw: &RawAlert, base: &Path) -> std::result::Result<AlertConfig, String> {
    let urls = |key: &str, list: &[RawUrl]| {
        list.iter()
            .enumerate()
            .map(|(i, u)| {
                // Named as in messages at run time: the first [[alert.slack]] is "#1".
                let key = format!("{key} #{}", i + 1);
                if u.every.is_some() {
                    return Err(format!("{key}: `every` belongs to [alert.heartbeat]"));
                }
                Ok(Endpoint {
                    url: secret(&key, &u.url, &u.url_env, &u.url_file, base)?,
                    events: success_events(&key, &u.events)?,
                })
            })
            .collect::<std::result::Result<Vec<_>, String>>()
    };
    let telegram = raw
        .telegram
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let key = format!("alert.telegram #{}", i + 1);
            let api = t.api_url.as_deref().unwrap_or("https://api.telegram.org");
            let api_url =
                reqwest::Url::parse(api).map_err(|e| format!("{key} api_url {api:?}: {e}"))?;
            if t.chat_id.trim().is_empty() {
                return Err(format!("{key}: chat_id must not be empty"));
            }
            Ok(TelegramConfig {
                events: success_events(&key, &t.events)?,
                token: secret(&key, &t.token, &t.token_env, &t.token_file, base)?,
                chat_id: t.chat_id.clone(),
                api_url,
            })
        })
        .collect::<std::result::Result<Vec<_>, String>>()?;
    let heartbeat = match &raw.heartbeat {
        Some(h) => {
            let every = h.every.unwrap_or(Duration::from_secs(60));
            if every < Duration::from_secs(1) || every > Duration::from_secs(24 * 3600) {
                return Err("alert.heartbeat every must be 1s to 24h".into());
            }
            Some(HeartbeatConfig {
                url: secret("alert.heartbeat", &h.url, &h.url_env, &h.url_file, base)?,
                every,
            })
        }
        None => None,
    };
    Ok(AlertConfig {
        webhook: urls("alert.webhook", &raw.webhook)?,
        slack: urls("alert.slack", &raw.slack)?,
        telegram,
        heartbeat,
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCheck {
    #[serde(default = "default_max_restarts")]
    max_restarts: u32,
    #[serde(default = "default_min_uptime", with = "humantime_serde")]
    min_uptime: Duration,
    sentry_flag: Option<String>,
}

impl Default for RawCheck {
    fn default() -> Self {
        RawCheck {
            max_restarts: default_max_restarts(),
            min_uptime: default_min_uptime(),
            sentry_flag: None,
        }
    }
}

fn default_max_restarts() -> u32 {
    3
}
fn default_min_uptime() -> Duration {
    Duration::from_secs(30)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApp {
    name: String,
    dir: PathBuf,
    ecosystem: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackup {
    dir: Option<PathBuf>,
    files: Option<Vec<PathBuf>>,
    keep: Option<usize>,
    #[serde(default)]
    exclude: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClean {
    #[serde(default = "default_clean_paths")]
    paths: Vec<PathBuf>,
    #[serde(default = "default_clean_globs")]
    globs: Vec<String>,
    #[serde(default = "default_true")]
    after_deploy: bool,
}

impl Default for RawClean {
    fn default() -> Self {
        RawClean {
            paths: default_clean_paths(),
            globs: default_clean_globs(),
            after_deploy: true,
        }
    }
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRedact {
    #[serde(default)]
    readable: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDeploy {
    command: Option<String>,
    strategy: Option<Strategy>,
    port_env: Option<String>,
    preflight_port: Option<u16>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    url: String,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    timeout: Duration,
    #[serde(default = "default_deadline", with = "humantime_serde")]
    deadline: Duration,
    #[serde(default = "default_stable_for", with = "humantime_serde")]
    stable_for: Duration,
    #[serde(default = "default_interval", with = "humantime_serde")]
    interval: Duration,
    expect_body: Option<String>,
    #[serde(default = "default_timeouts_in_a_row")]
    timeouts_in_a_row: u32,
    #[serde(default = "default_true")]
    load_errors: bool,
}

fn default_timeouts_in_a_row() -> u32 {
    3
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPm2 {
    bin: Option<PathBuf>,
    home: Option<PathBuf>,
    node: Option<PathBuf>,
    #[serde(default = "default_pm2_timeout", with = "humantime_serde")]
    timeout: Duration,
}

impl Default for RawPm2 {
    fn default() -> Self {
        RawPm2 {
            bin: None,
            home: None,
            node: None,
            timeout: default_pm2_timeout(),
        }
    }
}

fn default_pm2_timeout() -> Duration {
    Duration::from_secs(60)
}

fn default_clean_paths() -> Vec<PathBuf> {
    vec!["dist".into()]
}
fn default_clean_globs() -> Vec<String> {
    vec!["*.tar.gz".into()]
}
fn default_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_deadline() -> Duration {
    Duration::from_secs(60)
}
fn default_stable_for() -> Duration {
    Duration::from_secs(10)
}
fn default_interval() -> Duration {
    Duration::from_millis(250)
}

/// Default number of incidents kept by retention.
pub const DEFAULT_KEEP: usize = 20;

impl Settings {
    /// Load and validate the config: `--config`, else `$GUARD_CONFIG` (clap fills both), else ./guard.toml.
    pub fn load(config: Option<&Path>) -> Result<Settings> {
        let path = match config {
            Some(p) => p.to_path_buf(),
            None => PathBuf::from("guard.toml"),
        };
        let path = std::path::absolute(&path)
            .with_context(|| format!("resolving config path {}", path.display()))?;
        // A FIFO or a device would hang the read: only a regular file is a config.
        match std::fs::metadata(&path) {
            Ok(m) if !m.is_file() => {
                return Err(usage(format!(
                    "config {} is not a regular file",
                    path.display()
                )));
            }
            _ => {}
        }
        let text = std::fs::read_to_string(&path).map_err(|e| {
            usage(format!(
                "cannot read config {}: {e} (pass --config FILE or set GUARD_CONFIG)",
                path.display()
            ))
        })?;
        Settings::parse(&text, &path)
    }

    /// Parse config text as if it were read from `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Settings> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            usage(format!(
                "invalid config {}: {}",
                path.display(),
                e.to_string().trim_end()
            ))
        })?;
        let base = path.parent().unwrap_or(Path::new("/"));
        resolve(raw, base, path)
            .map_err(|e| usage(format!("invalid config {}: {e}", path.display())))
    }
}

fn resolve(raw: RawConfig, base: &Path, path: &Path) -> std::result::Result<Settings, String> {
    let name = raw.app.name.trim().to_string();
    if name.is_empty() || name != raw.app.name {
        return Err(
            "app.name must be a non-empty PM2 process name without surrounding spaces".into(),
        );
    }
    if name.contains(['/', '\\', '\0']) || name == "." || name == ".." {
        return Err(format!(
            "app.name {name:?} must not contain a path separator"
        ));
    }
    if name.len() > 100 || name.chars().any(char::is_control) {
        return Err("app.name must be at most 100 characters, without control characters".into());
    }
    let dir = absolute_from(base, &raw.app.dir);
    if !dir.is_dir() {
        return Err(format!("app.dir {} is not a folder", dir.display()));
    }
    let ecosystem = match &raw.app.ecosystem {
        Some(e) => Some(dir.join(relative_path("app.ecosystem", e)?)),
        None => None,
    };

    let backup_dir = match raw.backup.dir {
        Some(d) => absolute_from(base, &d),
        None => home_dir()
            .ok_or("backup.dir is not set and $HOME is unknown")?
            .join("guard-backups")
            .join(&name),
    };
    if backup_dir.starts_with(&dir) || real_path(&backup_dir).starts_with(real_path(&dir)) {
        return Err(format!(
            "backup.dir {} is inside app.dir: a `git reset` or clean of the app must never reach the backups",
            backup_dir.display()
        ));
    }
    let files = match raw.backup.files {
        Some(files) => files,
        None => raw
            .app
            .ecosystem
            .iter()
            .cloned()
            .chain(std::iter::once(PathBuf::from("package.json")))
            .collect(),
    };
    let files = files
        .iter()
        .map(|f| relative_path("backup.files", f))
        .collect::<Result<Vec<_>, _>>()?;
    let mut exclude = crate::excludes::Excludes::new(&raw.backup.exclude)?;
    let keep = raw.backup.keep.unwrap_or(DEFAULT_KEEP);
    if keep == 0 {
        return Err("backup.keep must be at least 1".into());
    }

    let paths = raw
        .clean
        .paths
        .iter()
        .map(|p| relative_path("clean.paths", p))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(p) = paths.iter().find(|p| p.starts_with(".git")) {
        return Err(format!(
            "clean.paths entry {} would remove git's repository: refused",
            p.display()
        ));
    }
    let globs = raw
        .clean
        .globs
        .iter()
        .map(|g| {
            if g.contains('/') {
                return Err(format!(
                    "clean.globs entry {g:?} must be a file name pattern without '/'"
                ));
            }
            // A pattern of wildcards alone would remove every file of the app folder.
            if g.chars().all(|c| matches!(c, '*' | '?' | '.')) {
                return Err(format!(
                    "clean.globs entry {g:?} matches any file name: name what an artifact is, e.g. \"*.tar.gz\""
                ));
            }
            glob::Pattern::new(g).map_err(|e| format!("clean.globs entry {g:?}: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;

    let url = reqwest::Url::parse(&raw.health.url)
        .map_err(|e| format!("health.url {:?}: {e}", raw.health.url))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("health.url {url} must be http:// or https://"));
    }
    let h = &raw.health;
    for (key, value) in [
        ("health.timeout", h.timeout),
        ("health.deadline", h.deadline),
        ("health.interval", h.interval),
    ] {
        if value.is_zero() {
            return Err(format!("{key} must be greater than zero"));
        }
    }
    if !(1..=20).contains(&h.timeouts_in_a_row) {
        return Err(format!(
            "health.timeouts_in_a_row must be between 1 and 20, not {}",
            h.timeouts_in_a_row
        ));
    }
    if h.interval < Duration::from_millis(50) {
        return Err("health.interval must be at least 50ms".into());
    }
    // Bounds a person would use; beyond them an overflow or a wait of years is a typo.
    const DAY: Duration = Duration::from_secs(24 * 3600);
    in_range(&[
        (
            "health.timeout",
            h.timeout,
            Duration::from_millis(10),
            Duration::from_secs(3600),
        ),
        (
            "health.deadline",
            h.deadline,
            Duration::from_millis(10),
            DAY,
        ),
        ("health.stable_for", h.stable_for, Duration::ZERO, DAY),
        (
            "health.interval",
            h.interval,
            Duration::from_millis(50),
            Duration::from_secs(3600),
        ),
        (
            "pm2.timeout",
            raw.pm2.timeout,
            Duration::from_secs(1),
            Duration::from_secs(3600),
        ),
        (
            "check.min_uptime",
            raw.check.min_uptime,
            Duration::ZERO,
            DAY,
        ),
    ])?;

    let pm2_bin = match raw.pm2.bin {
        Some(b) if b.components().count() > 1 => absolute_from(base, &b),
        Some(b) => b,
        None => "pm2".into(),
    };
    let pm2_home = match raw.pm2.home {
        Some(h) => absolute_from(base, &h),
        None => match std::env::var_os("PM2_HOME") {
            Some(h) if !h.is_empty() => absolute_from(base, Path::new(&h)),
            _ => home_dir()
                .ok_or("pm2.home is not set and neither $PM2_HOME nor $HOME is")?
                .join(".pm2"),
        },
    };

    let port_env = raw.deploy.port_env.clone().unwrap_or_else(|| "PORT".into());
    if port_env.is_empty()
        || !port_env
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return Err(format!(
            "deploy.port_env {port_env:?} must be an env variable name like \"PORT\""
        ));
    }
    if raw.deploy.preflight_port == Some(0) {
        return Err("deploy.preflight_port must be 1 to 65535 (unset: a free port)".into());
    }
    if let Some(flag) = &raw.check.sentry_flag
        && (flag.is_empty() || !flag.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
    {
        return Err(format!(
            "check.sentry_flag {flag:?} must be an env variable name like \"SENTRY_ENABLED\""
        ));
    }
    let watch = resolve_watch(&raw.watch)?;
    let alert = resolve_alert(&raw.alert, base)?;
    // guard's own config, and the files it reads secrets from, are never captured or
    // restored: a rollback to an older snapshot must not bring back an older guard.toml (a
    // webhook gone, another strategy) without a word.
    for own in std::iter::once(path).chain(alert.secret_files()) {
        let own = absolute_from(base, own);
        let canonical = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        if let Ok(rel) = canonical(&own).strip_prefix(canonical(&dir)) {
            exclude.add_own(rel);
        }
    }

    Ok(Settings {
        watch,
        alert,
        hooks: {
            let h = &raw.hooks;
            let some = |c: &Option<String>| c.clone().filter(|c| !c.trim().is_empty());
            let timeout = h.timeout.unwrap_or(Duration::from_secs(600));
            in_range(&[(
                "hooks.timeout",
                timeout,
                Duration::from_secs(1),
                Duration::from_secs(24 * 3600),
            )])?;
            HooksConfig {
                before_restart: some(&h.before_restart),
                after_success: some(&h.after_success),
                after_failure: some(&h.after_failure),
                after_rollback: some(&h.after_rollback),
                timeout,
            }
        },
        config_path: path.to_path_buf(),
        app: App {
            name,
            dir,
            ecosystem,
        },
        backup: Backup {
            dir: backup_dir,
            files,
            exclude,
            exclude_patterns: raw.backup.exclude.clone(),
            keep,
        },
        clean: Clean {
            paths,
            globs,
            after_deploy: raw.clean.after_deploy,
        },
        check: CheckLimits {
            max_restarts: raw.check.max_restarts,
            min_uptime: raw.check.min_uptime,
            sentry_flag: raw.check.sentry_flag.clone(),
        },
        readable_env: crate::redact::READABLE
            .iter()
            .map(|k| k.to_string())
            .chain(raw.redact.readable.iter().cloned())
            .collect(),
        deploy_command: raw.deploy.command.filter(|c| !c.trim().is_empty()),
        strategy: raw.deploy.strategy.unwrap_or(Strategy::Restart),
        port_env,
        trial_port: raw.deploy.preflight_port,
        health: Health {
            url,
            timeout: h.timeout,
            deadline: h.deadline,
            stable_for: h.stable_for,
            interval: h.interval,
            expect_body: h.expect_body.clone(),
            timeouts_in_a_row: h.timeouts_in_a_row,
            load_errors: h.load_errors,
        },
        pm2: Pm2Config {
            bin: pm2_bin,
            home: pm2_home,
            timeout: raw.pm2.timeout,
            node: raw.pm2.node.as_ref().map(|n| absolute_from(base, n)),
        },
    })
}

/// The path with symlinks resolved as far as it exists (a backup.dir may not exist yet).
fn real_path(p: &Path) -> PathBuf {
    let mut existing = p.to_path_buf();
    let mut rest = Vec::new();
    while !existing.exists() {
        match (existing.file_name(), existing.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name.to_os_string());
                existing = parent.to_path_buf();
            }
            _ => return p.to_path_buf(),
        }
    }
    let mut out = std::fs::canonicalize(&existing).unwrap_or(existing);
    out.extend(rest.iter().rev());
    out
}

fn home_dir() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
}

fn absolute_from(base: &Path, p: &Path) -> PathBuf {
    let joined = base.join(p);
    // Lexical normalisation only: the folder may not exist yet (backup.dir).
    let mut out = PathBuf::new();
    for c in joined.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// Check that `p` stays inside the folder it is relative to: no root, no `..`.
pub fn relative_path(key: &str, p: &Path) -> std::result::Result<PathBuf, String> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            _ => {
                return Err(format!(
                    "{key} entry {} must be a relative path inside app.dir (no leading '/', no '..')",
                    p.display()
                ));
            }
        }
    }
    if out.as_os_str().is_empty() {
        return Err(format!(
            "{key} entry {:?} is empty",
            p.display().to_string()
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Settings> {
        let dir = std::env::temp_dir();
        Settings::parse(text, &dir.join("guard.toml"))
    }

    const MINIMAL: &str =
        "[app]\nname = \"api\"\ndir = \".\"\n[health]\nurl = \"http://127.0.0.1:3000/health\"\n";

    #[test]
    fn minimal_config_gets_defaults() {
        let s = parse(MINIMAL).unwrap();
        assert_eq!(s.app.name, "api");
        assert_eq!(s.health.timeout, Duration::from_secs(2));
        assert_eq!(s.health.deadline, Duration::from_secs(60));
        assert_eq!(s.health.stable_for, Duration::from_secs(10));
        assert_eq!(s.health.interval, Duration::from_millis(250));
        assert_eq!(s.backup.keep, DEFAULT_KEEP);
        assert_eq!(s.clean.paths, [PathBuf::from("dist")]);
        assert!(s.app.ecosystem.is_none(), "found in app.dir when needed");
        assert!(s.clean.after_deploy);
        assert!(s.readable_env.iter().any(|k| k == "PORT"));
    }

    #[test]
    fn watch_alert_and_strategy_settings_are_checked_and_name_what_is_wrong() {
        let s = parse(MINIMAL).unwrap();
        assert_eq!(s.strategy, Strategy::Restart);
        assert_eq!(s.port_env, "PORT");
        assert_eq!(s.watch.rollback_within, None);
        assert!(!s.alert.any());
        let two = format!(
            "{MINIMAL}[[alert.slack]]\nurl_env = \"A\"\n[[alert.slack]]\nurl_env = \"B\"\nurl_file = \"/x\"\n"
        );
        let msg = format!("{:#}", parse(&two).unwrap_err());
        assert!(
            msg.contains("alert.slack #2") && msg.contains("exactly one"),
            "{msg}"
        );
        for (bad, names) in [
            ("[watch]\ninterval = \"1ms\"\n", "watch.interval"),
            ("[watch]\nmax_memory = \"12 parsecs\"\n", "watch.max_memory"),
            ("[watch]\nfailures = 0\n", "watch.failures"),
            ("[deploy]\nport_env = \"PO RT\"\n", "deploy.port_env"),
            ("[deploy]\nstrategy = \"bluegreen\"\n", "strategy"),
        ] {
            let msg = format!("{:#}", parse(&format!("{MINIMAL}{bad}")).unwrap_err());
            assert!(msg.contains(names), "{bad}: {msg}");
        }
        assert_eq!(parse_bytes("512MB").unwrap(), 512 * 1_048_576);
        assert_eq!(parse_bytes("1.5G").unwrap(), 1_610_612_736);
    }

    #[test]
    fn unknown_key_is_a_usage_error_naming_the_line() {
        let err = parse(&format!("{MINIMAL}colour = \"red\"\n")).unwrap_err();
        assert_eq!(crate::exit::status_of(&err), crate::exit::ExitStatus::Usage);
        let msg = format!("{err:#}");
        assert!(msg.contains("line 6"), "{msg}");
        assert!(msg.contains("colour"), "{msg}");
    }

    #[test]
    fn paths_may_not_escape_the_app_dir() {
        for bad in ["\"../x\"", "\"/etc\"", "\"a/../../b\""] {
            let text = format!("{MINIMAL}[clean]\npaths = [{bad}]\n");
            assert!(parse(&text).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn durations_parse_in_human_form() {
        let s = parse(&MINIMAL.replace(
            "[health]\n",
            "[health]\ntimeout = \"1s 500ms\"\nstable_for = \"0s\"\n",
        ))
        .unwrap();
        assert_eq!(s.health.timeout, Duration::from_millis(1500));
        assert!(s.health.stable_for.is_zero());
        assert!(parse(&MINIMAL.replace("[health]\n", "[health]\ntimeout = \"soon\"\n")).is_err());
    }

    #[test]
    fn the_shipped_example_config_is_valid() {
        let example = include_str!("../guard.toml.example");
        let dir = tempfile::tempdir().unwrap();
        let text = example.replace(
            "/var/www/onai-integrator-login-main/backend",
            &dir.path().display().to_string(),
        );
        let s = parse(&text).unwrap();
        assert_eq!(s.app.name, "onai-backend");
        assert_eq!(s.backup.files.len(), 2);
        assert!(s.clean.after_deploy);
        assert_eq!(s.deploy_command.as_deref(), Some("git pull --ff-only"));
    }

    #[test]
    fn values_that_are_typos_or_dangers_are_refused() {
        for (extra, says) in [
            (
                "[health]\nstable_for = \"18446744073709551615s\"\n",
                "health.stable_for",
            ),
            ("[health]\ntimeout = \"1ns\"\n", "health.timeout"),
            ("[clean]\npaths = [\".git\"]\n", "git's repository"),
            ("[clean]\nglobs = [\"*\"]\n", "matches any file name"),
            ("[pm2]\ntimeout = \"0s\"\n", "pm2.timeout"),
        ] {
            let text = if extra.starts_with("[health]") {
                MINIMAL.replace("[health]\n", extra)
            } else {
                format!("{MINIMAL}{extra}")
            };
            let err = parse(&text).unwrap_err();
            assert_eq!(
                crate::exit::status_of(&err),
                crate::exit::ExitStatus::Usage,
                "{extra}"
            );
            assert!(format!("{err:#}").contains(says), "{extra}: {err:#}");
        }
        let long = MINIMAL.replace("name = \"api\"", &format!("name = \"{}\"", "a".repeat(300)));
        assert!(parse(&long).is_err());
    }

    #[test]
    fn backup_dir_inside_app_dir_through_a_symlink_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let app = root.path().join("app");
        std::fs::create_dir(&app).unwrap();
        std::os::unix::fs::symlink(&app, root.path().join("link")).unwrap();
        let text = "[app]\nname = \"api\"\ndir = \"link\"\n[backup]\ndir = \"app/backups\"\n[health]\nurl = \"http://127.0.0.1:3000/health\"\n";
        let err = Settings::parse(text, &root.path().join("guard.toml")).unwrap_err();
        assert!(format!("{err:#}").contains("inside app.dir"), "{err:#}");
    }

    #[test]
    fn exclude_patterns_are_checked() {
        let s = parse(&format!(
            "{MINIMAL}[backup]\nexclude = [\"logs/\", \"*.log\"]\n"
        ))
        .unwrap();
        assert!(s.backup.exclude.excluded(Path::new("logs"), true));
        let err = parse(&format!("{MINIMAL}[backup]\nexclude = [\"../up\"]\n")).unwrap_err();
        assert_eq!(crate::exit::status_of(&err), crate::exit::ExitStatus::Usage);
        assert!(format!("{err:#}").contains("backup.exclude"), "{err:#}");
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
            let _ = parse(&text);
        }

        #[test]
        fn arbitrary_values_never_panic(name in "\\PC{0,20}", url in "\\PC{0,40}", dur in "\\PC{0,10}") {
            let text = format!(
                "[app]\nname = {name:?}\ndir = \".\"\n[health]\nurl = {url:?}\ntimeout = {dur:?}\n"
            );
            let _ = parse(&text);
        }
    }
}
