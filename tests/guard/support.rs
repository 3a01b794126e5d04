//! The test harness: a real git origin and a clone as the app dir, the bundled demo app, a
//! private PM2 daemon (PM2_HOME in a temp dir, pm2 from tests/node, pinned), a free port, and
//! the built guard binary. The PM2 daemon is killed when the harness is dropped, even when a
//! test fails.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The secret written into the app's env file; it must never appear in guard's output.
pub const SECRET_DSN: &str = "https://Sup3rSecretKey42@sentry.invalid/7";

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The pinned pm2, installed by scripts/test.sh. Missing pm2 or node is a failure, never a skip.
pub fn pm2_bin() -> PathBuf {
    let bin = repo_root().join("tests/node/node_modules/.bin/pm2");
    assert!(
        bin.exists(),
        "pm2 is not installed at {}: run scripts/test.sh (it runs `npm ci` in tests/node)",
        bin.display()
    );
    let node = Command::new("node").arg("--version").output();
    assert!(
        node.is_ok_and(|o| o.status.success()),
        "node is not on PATH: the integration tests need Node.js"
    );
    bin
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.email=test@guard.invalid",
            "-c",
            "user.name=guard-test",
        ])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), dest).unwrap();
        }
    }
}

/// What a guard run did.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub took: Duration,
}

impl Run {
    fn from(out: Output, took: Duration) -> Run {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            took,
        }
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.stdout))
    }

    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }

    #[track_caller]
    pub fn expect(&self, code: i32) -> &Run {
        assert_eq!(
            self.code, code,
            "expected exit {code}, got {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        );
        self
    }
}

/// One app under its own PM2 daemon.
pub struct App {
    pub root: tempfile::TempDir,
    pub dir: PathBuf,
    pub work: PathBuf,
    pub backups: PathBuf,
    pub pm2_home: PathBuf,
    pub config: PathBuf,
    pub port: u16,
    pub pm2: PathBuf,
    extra_config: String,
}

impl App {
    /// A demo app at release v1, pushed to a bare origin and cloned as the app dir; not started.
    pub fn new() -> App {
        App::with_config("")
    }

    /// Like `new`, with extra lines appended to guard.toml's [health] table.
    pub fn with_config(extra_health: &str) -> App {
        let pm2 = pm2_bin();
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let origin = r.join("origin.git");
        let work = r.join("work");
        let dir = r.join("app");
        git(
            r,
            &[
                "init",
                "-q",
                "--bare",
                "-b",
                "main",
                origin.to_str().unwrap(),
            ],
        );
        git(
            r,
            &[
                "clone",
                "-q",
                origin.to_str().unwrap(),
                work.to_str().unwrap(),
            ],
        );
        copy_dir(&repo_root().join("examples/demo/app"), &work);
        std::fs::remove_file(work.join("env.env.example")).unwrap();
        git(&work, &["checkout", "-q", "-b", "main"]);
        git(&work, &["add", "-A"]);
        git(&work, &["commit", "-q", "-m", "release v1"]);
        git(&work, &["push", "-q", "origin", "main"]);
        git(
            r,
            &[
                "clone",
                "-q",
                origin.to_str().unwrap(),
                dir.to_str().unwrap(),
            ],
        );
        let port = free_port();
        std::fs::write(
            dir.join("env.env"),
            format!("PORT={port}\nSENTRY_DSN={SECRET_DSN}\nSENTRY_ENABLED=true\nDB_PASSWORD=\"hunter2-the-sequel\"\n"),
        )
        .unwrap();
        let app = App {
            backups: r.join("backups"),
            pm2_home: r.join("pm2"),
            config: r.join("guard.toml"),
            root,
            dir,
            work,
            port,
            pm2,
            extra_config: extra_health.to_string(),
        };
        app.write_config("");
        app
    }

    /// (Re)write guard.toml; `extra` is appended at the end (new tables).
    pub fn write_config(&self, extra: &str) {
        let text = format!(
            r#"[app]
name = "demo-backend"
dir = "app"

[backup]
dir = "backups"
files = ["ecosystem.config.js", "env.env", "package.json"]

[deploy]
command = "git pull --ff-only"

[health]
url = "http://127.0.0.1:{port}/health"
timeout = "1s"
deadline = "20s"
stable_for = "1s"
interval = "100ms"
{extra_health}

[pm2]
bin = "{pm2}"
home = "pm2"
{extra}"#,
            port = self.port,
            pm2 = self.pm2.display(),
            extra_health = self.extra_config,
        );
        std::fs::write(&self.config, text).unwrap();
    }

    /// Replace text in guard.toml (e.g. one setting).
    pub fn edit_config(&self, from: &str, to: &str) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        assert!(text.contains(from), "guard.toml has no {from:?}");
        std::fs::write(&self.config, text.replace(from, to)).unwrap();
    }

    pub fn guard_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_guard"));
        cmd.arg("--config").arg(&self.config).args(args);
        cmd.env_remove("GUARD_CONFIG")
            .env("NO_COLOR", "1")
            .env("PM2_HOME", &self.pm2_home);
        cmd.current_dir(self.root.path());
        cmd
    }

    /// Run guard to completion.
    pub fn guard(&self, args: &[&str]) -> Run {
        let t = Instant::now();
        let out = self.guard_cmd(args).stdin(Stdio::null()).output().unwrap();
        Run::from(out, t.elapsed())
    }

    /// Start guard in the background, in its own process group (as a shell job would be), with
    /// output to files so a killed guard's children cannot hold a pipe open.
    pub fn spawn_guard(&self, args: &[&str]) -> Bg {
        use std::os::unix::process::CommandExt;
        let out = tempfile::NamedTempFile::new().unwrap();
        let err = tempfile::NamedTempFile::new().unwrap();
        let child = self
            .guard_cmd(args)
            .stdin(Stdio::null())
            .stdout(out.reopen().unwrap())
            .stderr(err.reopen().unwrap())
            .process_group(0)
            .spawn()
            .unwrap();
        Bg {
            child,
            out,
            err,
            started: Instant::now(),
        }
    }

    /// Whether the app's lock file holds a run's record (that run is past its start).
    pub fn lock_recorded(&self) -> bool {
        std::fs::read_to_string(self.backups.join("guard-demo-backend.lock"))
            .is_ok_and(|s| s.contains("\"pid\""))
    }

    /// Run `guard backup` and return the new incident's id (the last line of stdout).
    pub fn backup_id(&self) -> String {
        let run = self.guard(&["backup"]);
        run.expect(0);
        run.stdout.lines().last().unwrap().to_string()
    }

    /// Replace text in an incident's manifest.json.
    pub fn edit_manifest(&self, id: &str, from: &str, to: &str) {
        let p = self.incident_dir(id).join("manifest.json");
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.contains(from), "manifest has no {from:?}");
        std::fs::write(&p, text.replace(from, to)).unwrap();
    }

    /// Commit and push a change in the upstream clone, as a developer would.
    pub fn push(&self, files: &[(&str, &str)], message: &str) {
        for (path, content) in files {
            let p = self.work.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }
        git(&self.work, &["add", "-A"]);
        git(&self.work, &["commit", "-q", "-m", message]);
        git(&self.work, &["push", "-q", "origin", "main"]);
    }

    /// Push a release with this release.json content.
    pub fn release(&self, version: &str, mode: &str) {
        self.release_json(
            &format!(r#"{{ "version": "{version}", "mode": "{mode}" }}"#),
            version,
        );
    }

    pub fn release_json(&self, json: &str, message: &str) {
        self.push(&[("release.json", json)], message);
    }

    /// Deploy v1 (the first deploy, app not yet in PM2) and check it serves.
    pub fn start_v1(&self) {
        self.guard(&["deploy"]).expect(0);
        assert_eq!(self.version().as_deref(), Some("v1"));
    }

    /// The version /health reports, if it answers 200.
    pub fn version(&self) -> Option<String> {
        let (status, body) = http_get(self.port, "/health")?;
        if status != 200 {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(body.trim()).ok()?;
        v["version"].as_str().map(String::from)
    }

    pub fn pm2(&self, args: &[&str]) -> Output {
        Command::new(&self.pm2)
            .args(args)
            .env("PM2_HOME", &self.pm2_home)
            .output()
            .unwrap()
    }

    /// The app's PM2 processes as (pid, status, restarts).
    pub fn processes(&self) -> Vec<(u64, String, u64)> {
        let out = self.pm2(&["jlist"]);
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text
            .lines()
            .rev()
            .find(|l| l.starts_with('['))
            .unwrap_or("[]");
        let list: Vec<serde_json::Value> = serde_json::from_str(line).unwrap();
        list.iter()
            .filter(|p| p["name"] == "demo-backend")
            .map(|p| {
                (
                    p["pid"].as_u64().unwrap_or(0),
                    p["pm2_env"]["status"].as_str().unwrap_or("").to_string(),
                    p["pm2_env"]["restart_time"].as_u64().unwrap_or(0),
                )
            })
            .collect()
    }

    pub fn incidents(&self) -> Vec<String> {
        let mut ids: Vec<String> = std::fs::read_dir(&self.backups)
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| {
                        e.file_name()
                            .to_str()
                            .and_then(|n| n.strip_prefix("incident-"))
                            .map(String::from)
                    })
                    .collect()
            })
            .unwrap_or_default();
        ids.sort();
        ids
    }

    pub fn incident_dir(&self, id: &str) -> PathBuf {
        self.backups.join(format!("incident-{id}"))
    }

    pub fn head(&self) -> String {
        let out = Command::new("git")
            .arg("-C")
            .arg(&self.dir)
            .args(["rev-parse", "HEAD"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.dir.join(rel)).unwrap()
    }

    /// A snapshot of everything guard could change: app files, git HEAD, backups listing, PM2 pids.
    pub fn state(&self) -> String {
        let mut files: Vec<String> = Vec::new();
        collect(&self.dir, &self.dir, &mut files);
        collect(&self.backups, &self.backups, &mut files);
        files.sort();
        format!(
            "{}\n{:?}\n{}",
            self.head(),
            self.processes(),
            files.join("\n")
        )
    }
}

fn collect(base: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        let rel = p.strip_prefix(base).unwrap().display().to_string();
        if rel == ".git" || rel.ends_with(".lock") || rel == "audit.log" {
            continue;
        }
        if e.file_type().unwrap().is_dir() {
            collect(base, &p, out);
        } else {
            let content = std::fs::read(&p).unwrap_or_default();
            out.push(format!("{rel} {}", content.len()));
        }
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = Command::new(&self.pm2)
            .arg("kill")
            .env("PM2_HOME", &self.pm2_home)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A guard run in the background.
pub struct Bg {
    pub child: std::process::Child,
    out: tempfile::NamedTempFile,
    err: tempfile::NamedTempFile,
    started: Instant,
}

impl Bg {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Send a signal to guard alone.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// Send a signal to guard's whole process group, as a terminal hang-up does.
    pub fn signal_group(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's process group.
        unsafe { libc::kill(-self.pid(), sig) };
    }

    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Wait for the end (at most `limit`) and collect the output.
    pub fn finish(mut self, limit: Duration) -> Run {
        assert!(
            wait_until(limit, || self.child.try_wait().unwrap().is_some()),
            "guard did not finish within {limit:?}"
        );
        let status = self.child.wait().unwrap();
        let code = status.code().unwrap_or_else(|| {
            use std::os::unix::process::ExitStatusExt;
            128 + status.signal().unwrap_or(0)
        });
        Run {
            code,
            stdout: std::fs::read_to_string(self.out.path()).unwrap(),
            stderr: std::fs::read_to_string(self.err.path()).unwrap(),
            took: self.started.elapsed(),
        }
    }
}

/// A minimal HTTP/1.0 GET on 127.0.0.1, returning status and body.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// Poll `f` every 50 ms until it is true or `limit` passes.
pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    while t.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}
