//! The PM2 adapter: every pm2 CLI call goes through here, with PM2_HOME set and the exact
//! command line in any error.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Deserialize;
use tokio::process::Command;

use crate::exit::usage;
use crate::runner;
use crate::settings::Settings;

/// One PM2 process (one instance of an app), as `pm2 jlist` reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Instance {
    /// PM2 process name.
    pub name: String,
    /// PM2 id.
    pub pm_id: u32,
    /// OS pid, None when not running.
    pub pid: Option<u32>,
    /// online, errored, stopped, launching...
    pub status: String,
    /// PM2's restart counter.
    pub restarts: u64,
    /// Restarts that happened before min_uptime.
    pub unstable_restarts: u64,
    /// When the current process started (ms since the epoch); RFC 3339 `started_at` in JSON.
    #[serde(rename = "started_at", serialize_with = "crate::verdict::rfc3339_opt")]
    pub started_at_ms: Option<i64>,
    /// Where PM2 keeps this instance's pid file.
    #[serde(skip)]
    pub pid_path: Option<PathBuf>,
    /// stdout log file.
    #[serde(skip)]
    pub out_log: Option<PathBuf>,
    /// stderr log file.
    #[serde(skip)]
    pub err_log: Option<PathBuf>,
    /// The script PM2 runs.
    #[serde(skip)]
    pub exec_path: Option<PathBuf>,
    /// `cluster_mode` or `fork_mode`.
    #[serde(skip)]
    pub exec_mode: Option<String>,
    /// When PM2 created this process entry (`pm2 start`; ms since the epoch): its restart
    /// counter counts from then.
    #[serde(skip)]
    pub created_at_ms: Option<i64>,
    /// What this process runs with, as PM2 holds it (not as the files now say).
    #[serde(skip)]
    pub running: Running,
}

impl Instance {
    /// PM2 shows it serving (`online`).
    pub fn is_online(&self) -> bool {
        self.status == "online"
    }

    /// Not failed: online, or PM2 is starting it (`launching`). The one rule of "up" that
    /// verification and `guard watch` share.
    pub fn is_up(&self) -> bool {
        status_is_up(&self.status)
    }
}

/// Whether a PM2 status is "up": online, or being started (`launching`).
pub fn status_is_up(status: &str) -> bool {
    matches!(status, "online" | "launching")
}

/// At least one instance, and every one online: what "running" means for a health check or a
/// release kept warm.
pub fn all_online(list: &[Instance]) -> bool {
    !list.is_empty() && list.iter().all(Instance::is_online)
}

/// The settings a running process has in PM2: they change only at a (re)start, whatever the
/// ecosystem and env files say meanwhile. No env value is kept but on/off switches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Running {
    /// `max_restarts`.
    pub max_restarts: Option<u64>,
    /// `min_uptime`, in ms.
    pub min_uptime_ms: Option<u64>,
    /// Whether its env has a non-empty SENTRY_DSN.
    pub sentry_dsn: bool,
    /// Its env values that are switches (true/false, 1/0, yes/no, on/off), by key.
    pub switches: Vec<(String, String)>,
}

#[derive(Deserialize)]
struct RawProc {
    name: String,
    pm_id: u32,
    #[serde(default)]
    pid: Option<u32>,
    pm2_env: RawEnv,
}

// Only the fields guard needs: pm2_env also carries the app's whole environment, secrets
// included, and none of it may be kept.
#[derive(Deserialize)]
struct RawEnv {
    #[serde(default)]
    status: String,
    #[serde(default)]
    restart_time: u64,
    #[serde(default)]
    unstable_restarts: u64,
    #[serde(default)]
    pm_uptime: Option<i64>,
    #[serde(default)]
    pm_pid_path: Option<PathBuf>,
    #[serde(default)]
    pm_out_log_path: Option<PathBuf>,
    #[serde(default)]
    pm_err_log_path: Option<PathBuf>,
    #[serde(default)]
    pm_exec_path: Option<PathBuf>,
    #[serde(default)]
    exec_mode: Option<String>,
    #[serde(default)]
    created_at: Option<i64>,
    #[serde(default)]
    max_restarts: Option<serde_json::Value>,
    #[serde(default)]
    min_uptime: Option<serde_json::Value>,
    /// The process's environment: read for switches and whether a DSN is set, then dropped.
    #[serde(default)]
    env: Option<serde_json::Map<String, serde_json::Value>>,
}

fn running_of(env: &RawEnv) -> Running {
    let number = |v: &Option<serde_json::Value>| -> Option<u64> {
        match v {
            Some(serde_json::Value::Number(n)) => n.as_f64().map(|f| f as u64),
            Some(serde_json::Value::String(s)) => s.trim().parse::<f64>().ok().map(|f| f as u64),
            _ => None,
        }
    };
    let min_uptime_ms = match &env.min_uptime {
        Some(serde_json::Value::String(s)) => {
            crate::ecosystem::parse_min_uptime(s).map(|d| d.as_millis() as u64)
        }
        v => number(v),
    };
    let vars = env.env.as_ref();
    let text = |k: &str| {
        vars.and_then(|m| m.get(k)).and_then(|v| match v {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Bool(b) => Some(b.to_string()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
    };
    let switches = vars
        .map(|m| {
            m.keys()
                .filter_map(|k| {
                    let v = text(k)?;
                    let is_switch = matches!(
                        v.trim().to_ascii_lowercase().as_str(),
                        "true" | "false" | "1" | "0" | "yes" | "no" | "on" | "off"
                    );
                    is_switch.then(|| (k.clone(), v))
                })
                .collect()
        })
        .unwrap_or_default();
    Running {
        max_restarts: number(&env.max_restarts),
        min_uptime_ms,
        sentry_dsn: text("SENTRY_DSN").is_some_and(|v| !v.trim().is_empty()),
        switches,
    }
}

/// Parse `pm2 jlist` output; PM2 may print notices (e.g. "Spawning PM2 daemon") before the JSON.
pub fn parse_jlist(stdout: &str) -> Result<Vec<Instance>> {
    let json = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('['))
        .context("no JSON list in the output")?;
    let raw: Vec<RawProc> = serde_json::from_str(json).context("unexpected JSON from pm2 jlist")?;
    Ok(instances_of(raw))
}

/// Guard's view of PM2's process list (its env values dropped on the way in).
fn instances_of(raw: Vec<RawProc>) -> Vec<Instance> {
    raw.into_iter()
        .map(|p| Instance {
            running: running_of(&p.pm2_env),
            name: p.name,
            pm_id: p.pm_id,
            pid: p.pid.filter(|&pid| pid > 0),
            status: p.pm2_env.status,
            restarts: p.pm2_env.restart_time,
            unstable_restarts: p.pm2_env.unstable_restarts,
            started_at_ms: p.pm2_env.pm_uptime,
            pid_path: p.pm2_env.pm_pid_path,
            out_log: p.pm2_env.pm_out_log_path,
            err_log: p.pm2_env.pm_err_log_path,
            exec_path: p.pm2_env.pm_exec_path,
            exec_mode: p.pm2_env.exec_mode,
            created_at_ms: p.pm2_env.created_at,
        })
        .collect()
}

/// How long the daemon may take to answer over its socket before guard asks the CLI.
const RPC_LIMIT: Duration = Duration::from_secs(5);

/// A handle on one PM2 daemon (one PM2_HOME) and one app.
#[derive(Debug, Clone)]
pub struct Pm2 {
    bin: PathBuf,
    limit: Duration,
    home: PathBuf,
    app_dir: PathBuf,
    name: String,
}

impl Pm2 {
    /// The PM2 of these settings; fails with a usage error (nothing changed) if pm2 cannot be found.
    pub fn new(settings: &Settings) -> Result<Pm2> {
        let bin = find_program(&settings.pm2.bin).ok_or_else(|| {
            usage(format!(
                "pm2 not found: {} is not an executable{} (set pm2.bin in {})",
                settings.pm2.bin.display(),
                if settings.pm2.bin.components().count() > 1 {
                    ""
                } else {
                    " on PATH"
                },
                settings.config_path.display()
            ))
        })?;
        Ok(Pm2 {
            bin,
            limit: settings.pm2.timeout,
            home: settings.pm2.home.clone(),
            app_dir: settings.app.dir.clone(),
            name: settings.app.name.clone(),
        })
    }

    /// The same PM2 daemon, for another process name (the preflight trial).
    pub fn named(&self, name: &str) -> Pm2 {
        Pm2 {
            name: name.to_string(),
            ..self.clone()
        }
    }

    /// The pm2 executable.
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// The app's PM2 name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// PM2_HOME.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// Whether the PM2 daemon of this PM2_HOME is running (without starting it, as any pm2 call would).
    pub fn daemon_running(&self) -> bool {
        std::fs::read_to_string(self.home.join("pm2.pid"))
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
            .is_some_and(pid_alive)
    }

    async fn call(&self, args: &[&str]) -> Result<runner::Output> {
        let shown = runner::display(&self.bin.to_string_lossy(), args);
        let mut cmd = Command::new(&self.bin);
        cmd.args(args)
            .env("PM2_HOME", &self.home)
            .current_dir(&self.app_dir);
        tracing::debug!(command = %shown, "pm2");
        runner::run_ok(
            cmd,
            &format!("PM2_HOME={} {shown}", self.home.display()),
            self.limit,
        )
        .await
    }

    /// Every process PM2 knows: asked over the daemon's RPC socket when it is there (no Node
    /// started), else with `pm2 jlist` (which also starts a daemon that is not running).
    pub async fn jlist(&self) -> Result<Vec<Instance>> {
        match crate::pm2rpc::monitor_data::<Vec<RawProc>>(&self.home, RPC_LIMIT).await {
            Ok(raw) => return Ok(instances_of(raw)),
            Err(e) => {
                tracing::debug!(error = %format!("{e:#}"), "pm2 jlist instead of the RPC socket")
            }
        }
        let out = self.call(&["jlist"]).await?;
        parse_jlist(&out.stdout_text())
            .with_context(|| format!("reading `pm2 jlist` (PM2_HOME={})", self.home.display()))
    }

    /// The instances of this app, by pm_id.
    pub async fn instances(&self) -> Result<Vec<Instance>> {
        let mut list: Vec<Instance> = self
            .jlist()
            .await?
            .into_iter()
            .filter(|p| p.name == self.name)
            .collect();
        list.sort_by_key(|p| p.pm_id);
        Ok(list)
    }

    /// Remove the app from PM2 (stopping it).
    pub async fn delete(&self) -> Result<()> {
        self.call(&["delete", &self.name]).await.map(drop)
    }

    /// Start the app from its ecosystem file, so every ecosystem and env value takes effect.
    pub async fn start(&self, ecosystem: &Path) -> Result<()> {
        let eco = ecosystem.to_string_lossy();
        self.call(&["start", &eco, "--only", &self.name])
            .await
            .map(drop)
    }

    /// PM2's rolling reload from the ecosystem (cluster mode: one instance at a time, each
    /// replaced once its successor listens). Takes the ecosystem's env values (checked on pm2
    /// 7.0.4), not a changed `script`, `exec_mode` or instance count.
    pub async fn reload(&self, ecosystem: &Path) -> Result<()> {
        let eco = ecosystem.to_string_lossy();
        self.call(&["reload", &eco, "--only", &self.name])
            .await
            .map(drop)
    }

    /// Delete and start: the one restart that picks up changed ecosystem, env and script
    /// values. `known` is whether PM2 has the app now (nothing to delete on a first start).
    pub async fn restart(&self, ecosystem: &Path, known: bool) -> Result<()> {
        if known && let Err(e) = self.delete().await {
            // Gone already is what the delete is for: a run killed during its own `pm2 delete`
            // leaves that child to finish after the next run read the list. Anything else
            // (the app still listed) is the failure it says.
            if self.instances().await.map_or(true, |l| !l.is_empty()) {
                return Err(e);
            }
            tracing::debug!(error = %format!("{e:#}"), "the app was already gone from PM2");
        }
        self.start(ecosystem).await
    }

    /// Where PM2 is installed (the `pm2` package folder), found from its executable; its
    /// js-yaml loads YAML ecosystem files as PM2 does.
    pub fn install_root(&self) -> Option<PathBuf> {
        let real = std::fs::canonicalize(&self.bin).ok()?;
        // .../node_modules/pm2/bin/pm2 -> .../node_modules/pm2
        real.parent()?.parent().map(Path::to_path_buf)
    }

    /// `pm2 save`: make PM2's dump (what comes back after a reboot) match what runs.
    pub async fn save(&self) -> Result<()> {
        self.call(&["save", "--force"]).await.map(drop)
    }
}

/// The (name, script) pairs of PM2's saved process list (`dump.pm2`, written by `pm2 save`).
/// Only those two fields are read: the dump also holds every app's environment.
pub fn dump_entries(path: &Path) -> Result<Vec<(String, Option<PathBuf>)>> {
    #[derive(Deserialize)]
    struct Saved {
        name: String,
        #[serde(default)]
        pm_exec_path: Option<PathBuf>,
    }
    let f = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let saved: Vec<Saved> = serde_json::from_reader(std::io::BufReader::new(f))
        .with_context(|| format!("{} is not PM2's dump", path.display()))?;
    Ok(saved
        .into_iter()
        .map(|s| (s.name, s.pm_exec_path))
        .collect())
}

/// Whether a process with this pid exists.
pub fn pid_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill(2) with signal 0 only checks for existence and permission.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Resolve a program name on PATH, or check a path, as a shell would.
pub fn find_program(bin: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if bin.components().count() > 1 {
        return executable(bin).then(|| bin.to_path_buf());
    }
    // As a child would find it: with the folders guard puts first on children's PATH.
    let path = crate::runner::child_path().or_else(|| std::env::var_os("PATH"))?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(bin))
        .find(|p| executable(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jlist_with_a_notice_before_it_parses_and_drops_env() {
        let out = "[PM2] Spawning PM2 daemon\n[{\"pid\":42,\"name\":\"api\",\"pm_id\":0,\"monit\":{\"memory\":1},\"pm2_env\":{\"status\":\"online\",\"restart_time\":2,\"unstable_restarts\":1,\"pm_uptime\":5,\"SECRET\":\"s3cr3t\",\"pm_pid_path\":\"/p/api-0.pid\"}}]\n";
        let list = parse_jlist(out).unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].pid, Some(42));
        assert_eq!(list[0].restarts, 2);
        assert_eq!(list[0].status, "online");
        assert!(!format!("{list:?}").contains("s3cr3t"));
    }

    #[test]
    fn stopped_process_has_no_pid() {
        let out = "[{\"pid\":0,\"name\":\"api\",\"pm_id\":3,\"pm2_env\":{\"status\":\"errored\"}}]";
        assert_eq!(parse_jlist(out).unwrap()[0].pid, None);
        assert!(parse_jlist("garbage").is_err());
    }

    #[test]
    fn own_pid_is_alive() {
        assert!(pid_alive(std::process::id() as i32));
        assert!(!pid_alive(0));
    }
}
