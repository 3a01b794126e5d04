//! guard.toml, CLI flags and the environment, resolved into one validated `Settings`.
//!
//! Commands never read the TOML again: every path here is absolute and every duration
//! parsed, so a bad config fails before anything is touched.

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Deserialize;

use crate::exit::usage;

mod alert;
mod raw;
mod switch;
mod watch;

use alert::resolve_alert;
pub use alert::{AlertConfig, SUCCESS_EVENTS, Secret};
use raw::RawConfig;
use switch::resolve_switch;
pub use switch::{Proxy, SwitchConfig};
pub use watch::WatchConfig;
use watch::resolve_watch;

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
    /// The ports and the proxy of `strategy = "switch"` (set exactly then).
    pub switch: Option<SwitchConfig>,
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
    /// Behind a reverse proxy: the release starts beside the running one on the idle one of
    /// two ports, is verified there, and only then does the proxy send traffic to it.
    Switch,
}

impl std::fmt::Display for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Strategy::Restart => "restart",
            Strategy::Reload => "reload",
            Strategy::Preflight => "preflight",
            Strategy::Switch => "switch",
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

/// Default number of incidents kept by retention.
pub const DEFAULT_KEEP: usize = 20;

impl Settings {
    /// Load and validate the config: `--config`, else `$GUARD_CONFIG` (clap fills both), else ./guard.toml.
    pub fn load(config: Option<&Path>) -> Result<Settings> {
        Settings::load_as(config, Where::OnServer)
    }

    /// Load and validate the config as [`Settings::load`] does, but as `guard check --offline`
    /// reads it in a repository's CI: app.dir need not exist on this machine.
    pub fn load_offline(config: Option<&Path>) -> Result<Settings> {
        Settings::load_as(config, Where::Offline)
    }

    fn load_as(config: Option<&Path>, at: Where) -> Result<Settings> {
        let cwd = std::env::current_dir().context("reading the current folder")?;
        let path = match config {
            Some(p) => p.to_path_buf(),
            None => {
                let found = discover(&cwd)?;
                if found.parent() != Some(cwd.as_path()) {
                    // Found above: read through the descriptor whose owner and mode were
                    // checked, so a file swapped in after the look is never read.
                    let text = read_trusted(&found, &cwd)?;
                    return Settings::parse_as(&text, &found, at);
                }
                found
            }
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
        Settings::parse_as(&text, &path, at)
    }

    /// Parse config text as if it were read from `path`.
    #[cfg(test)]
    pub fn parse(text: &str, path: &Path) -> Result<Settings> {
        Settings::parse_as(text, path, Where::OnServer)
    }

    fn parse_as(text: &str, path: &Path, at: Where) -> Result<Settings> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            usage(format!(
                "invalid config {}: {}",
                path.display(),
                e.to_string().trim_end()
            ))
        })?;
        let base = path.parent().unwrap_or(Path::new("/"));
        resolve(raw, base, path, at)
            .map_err(|e| usage(format!("invalid config {}: {e}", path.display())))
    }
}

/// Without `--config`: `guard.toml` in `from` or the nearest folder above it (guard run from a
/// subfolder of the app). A file found above `from` is taken only if it belongs to this user
/// or root and no one else may write it: guard often runs as root, and a folder an app user
/// owns (`uploads/`) must not be able to hand it a config. None found: `./guard.toml`, whose
/// read error says how to name one.
fn discover(from: &Path) -> Result<PathBuf> {
    let here = from.join("guard.toml");
    if here.exists() {
        return Ok(here);
    }
    for dir in from.ancestors().skip(1) {
        let candidate = dir.join("guard.toml");
        if std::fs::symlink_metadata(&candidate).is_err() {
            continue;
        }
        trusted(&candidate, from)?;
        return Ok(candidate);
    }
    Ok(here)
}

/// Open a config found above the current folder, never through a symlink, and check on the
/// opened file that it is a regular file of this user or root that no one else may write.
fn trusted(path: &Path, from: &Path) -> Result<std::fs::File> {
    use std::os::unix::fs::MetadataExt;
    let refused = |why: String| {
        usage(format!(
            "found {} above {}, but {why}: pass --config FILE",
            path.display(),
            from.display()
        ))
    };
    let f = crate::store::objects::open_nofollow(path).map_err(|e| {
        refused(format!(
            "it cannot be opened without following a link ({e})"
        ))
    })?;
    let m = f
        .metadata()
        .map_err(|e| refused(format!("it cannot be inspected ({e})")))?;
    let me = rustix::process::geteuid().as_raw();
    if !m.is_file() || !(m.uid() == me || m.uid() == 0) || m.mode() & 0o022 != 0 {
        return Err(refused(format!(
            "it is not a regular file of this user or root that only its owner may write (owner uid {}, mode {:o})",
            m.uid(),
            m.mode() & 0o7777
        )));
    }
    Ok(f)
}

/// The text of a config found above the current folder, read from the checked descriptor.
fn read_trusted(path: &Path, from: &Path) -> Result<String> {
    use std::io::Read;
    let mut text = String::new();
    trusted(path, from)?
        .take(1024 * 1024)
        .read_to_string(&mut text)
        .map_err(|e| usage(format!("cannot read config {}: {e}", path.display())))?;
    Ok(text)
}

/// Where a config is read: on the server it configures (every path is checked), or offline
/// (`guard check --offline`: its folders may not exist here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Where {
    OnServer,
    Offline,
}

fn resolve(
    raw: RawConfig,
    base: &Path,
    path: &Path,
    at: Where,
) -> std::result::Result<Settings, String> {
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
    if at == Where::OnServer && !dir.is_dir() {
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
    let strategy = raw.deploy.strategy.unwrap_or(Strategy::Restart);
    let switch = match strategy {
        Strategy::Switch => Some(resolve_switch(&raw.switch, &name, base)?),
        _ if raw.switch.is_set() => {
            return Err(format!(
                "[switch] is set but deploy.strategy is \"{strategy}\": set strategy = \"switch\" to deploy through the proxy, or remove [switch]"
            ));
        }
        _ => None,
    };
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
        strategy,
        port_env,
        trial_port: raw.deploy.preflight_port,
        switch,
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
mod tests;
