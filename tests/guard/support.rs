//! The test harness: a real git origin and a clone as the app dir, the bundled demo app, a
//! private PM2 daemon (PM2_HOME in a temp dir, pm2 from tests/node, pinned), a free port, and
//! the built guard binary. The PM2 daemon is killed when the harness is dropped, even when a
//! test fails.

#![allow(dead_code)]

#[path = "http.rs"]
mod http;
pub use http::*;

use std::net::TcpListener;
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

/// Where the pinned pm2 is installed, whether or not it is (the tier without PM2 writes it
/// into guard.toml and never runs it).
pub fn pm2_path() -> PathBuf {
    repo_root().join("tests/node/node_modules/.bin/pm2")
}

/// A port free on 127.0.0.1 and never handed to another test of this run: tests run in
/// parallel, and the kernel may offer a port again once its probe socket is closed.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// Run git in `dir` (with an identity for commits); panics on failure.
pub fn git(dir: &Path, args: &[&str]) {
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

/// What a guard run did.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub took: Duration,
}

impl Run {
    pub fn of(out: Output, took: Duration) -> Run {
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

/// Bad input: `args` exits 2, stderr mentions `says`, and nothing changed.
#[track_caller]
pub fn refused(app: &App, args: &[&str], says: &str) {
    let before = app.state();
    let run = app.guard(args);
    run.expect(2);
    assert!(
        run.stderr.contains(says),
        "stderr should mention {says:?}:\n{}",
        run.stderr
    );
    assert_eq!(app.state(), before, "nothing may change");
}

/// Which bundled app a test runs (examples/fixture.sh sets it up).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fixture {
    /// examples/demo/app: run from source, deployed by `git pull`.
    Demo,
    /// examples/build/app: installs into node_modules/ and builds into dist/ on the server.
    Build,
}

/// One app under its own PM2 daemon.
pub struct App {
    pub root: tempfile::TempDir,
    pub dir: PathBuf,
    /// The developer's clone (upstream): commit and push releases there.
    pub work: PathBuf,
    pub backups: PathBuf,
    pub pm2_home: PathBuf,
    pub config: PathBuf,
    pub port: u16,
    pub pm2: PathBuf,
    /// The PM2 app name.
    pub name: &'static str,
    pub fixture: Fixture,
    base_config: String,
}

impl App {
    /// The demo app at release v1, pushed to a bare origin and cloned as the app dir; not started.
    pub fn new() -> App {
        App::with_config("")
    }

    /// The demo app for the tier without PM2 (`cargo test`): neither node nor pm2 is needed,
    /// so only commands that never run them (bad input, `clean`) may be used.
    pub fn offline() -> App {
        App::create_with_pm2(Fixture::Demo, "", &[], pm2_path())
    }

    /// Like `new`, with extra lines appended to guard.toml's [health] table.
    pub fn with_config(extra_health: &str) -> App {
        App::create(Fixture::Demo, extra_health)
    }

    /// The app that builds on the server, at release v1; not built, not started.
    pub fn build() -> App {
        App::create(Fixture::Build, "")
    }

    /// The demo app with `[deploy] strategy` set, in cluster mode with `instances` when more
    /// than one; not started.
    pub fn with_strategy(strategy: &str, instances: u32) -> App {
        App::create_with(
            Fixture::Demo,
            "",
            &[
                ("STRATEGY", strategy),
                ("INSTANCES", &instances.to_string()),
            ],
        )
    }

    /// The demo app as one instance in PM2's cluster mode (what `reload` needs for zero
    /// downtime without a proxy), with `[deploy] strategy` set; not started.
    pub fn one_cluster_instance(strategy: &str) -> App {
        App::create_with(
            Fixture::Demo,
            "",
            &[("STRATEGY", strategy), ("EXEC_MODE", "cluster")],
        )
    }

    fn create(fixture: Fixture, extra_health: &str) -> App {
        App::create_with(fixture, extra_health, &[])
    }

    fn create_with(fixture: Fixture, extra_health: &str, envs: &[(&str, &str)]) -> App {
        App::create_with_pm2(fixture, extra_health, envs, pm2_bin())
    }

    fn create_with_pm2(
        fixture: Fixture,
        extra_health: &str,
        envs: &[(&str, &str)],
        pm2: PathBuf,
    ) -> App {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let port = free_port();
        let kind = match fixture {
            Fixture::Demo => "demo",
            Fixture::Build => "build",
        };
        // The one fixture the demo and the bench use too, with the tests' short windows.
        let out = Command::new("bash")
            .arg(repo_root().join("examples/fixture.sh"))
            .args([
                kind,
                r.to_str().unwrap(),
                &port.to_string(),
                pm2.to_str().unwrap(),
            ])
            .env("STABLE_FOR", "1s")
            .env("DEADLINE", "20s")
            .env("TIMEOUT", "1s")
            .env("INTERVAL", "100ms")
            .envs(envs.iter().copied())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "examples/fixture.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dir = r.join("app");
        std::fs::write(
            dir.join("env.env"),
            format!("PORT={port}\nSENTRY_DSN={SECRET_DSN}\nSENTRY_ENABLED=true\nDB_PASSWORD=\"hunter2-the-sequel\"\n"),
        )
        .unwrap();
        let config = r.join("guard.toml");
        let mut base_config = std::fs::read_to_string(&config).unwrap();
        if !extra_health.is_empty() {
            base_config = base_config.replace("\n[pm2]\n", &format!("{extra_health}\n\n[pm2]\n"));
        }
        let app = App {
            backups: r.join("backups"),
            pm2_home: r.join("pm2"),
            config,
            work: r.join("upstream"),
            root,
            dir,
            port,
            pm2,
            name: match fixture {
                Fixture::Demo => "demo-backend",
                Fixture::Build => "build-backend",
            },
            fixture,
            base_config,
        };
        app.write_config("");
        app
    }

    /// (Re)write guard.toml; `extra` is appended at the end (new tables).
    pub fn write_config(&self, extra: &str) {
        std::fs::write(&self.config, format!("{}{extra}", self.base_config)).unwrap();
    }

    /// Replace text in guard.toml (e.g. one setting).
    pub fn edit_config(&self, from: &str, to: &str) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        assert!(text.contains(from), "guard.toml has no {from:?}");
        std::fs::write(&self.config, text.replace(from, to)).unwrap();
    }

    pub fn guard_cmd(&self, args: &[&str]) -> Command {
        self.guard_cmd_with(&self.config, args)
    }

    /// guard with another config file than the app's own.
    pub fn guard_cmd_with(&self, config: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_guard"));
        cmd.arg("--config").arg(config).args(args);
        cmd.env_remove("GUARD_CONFIG")
            .env("NO_COLOR", "1")
            .env("PM2_HOME", &self.pm2_home);
        cmd.current_dir(self.root.path());
        cmd
    }

    /// Run guard with another config to completion.
    pub fn guard_with(&self, config: &Path, args: &[&str]) -> Run {
        let t = Instant::now();
        let out = self
            .guard_cmd_with(config, args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        Run::of(out, t.elapsed())
    }

    /// Run guard to completion.
    pub fn guard(&self, args: &[&str]) -> Run {
        let t = Instant::now();
        let out = self.guard_cmd(args).stdin(Stdio::null()).output().unwrap();
        Run::of(out, t.elapsed())
    }

    /// Start guard in the background, in its own process group (as a shell job would be), with
    /// output to files so a killed guard's children cannot hold a pipe open.
    pub fn spawn_guard(&self, args: &[&str]) -> Bg {
        self.spawn(self.guard_cmd(args))
    }

    /// Start this guard command in the background (see `spawn_guard`).
    pub fn spawn(&self, mut cmd: Command) -> Bg {
        use std::os::unix::process::CommandExt;
        let out = tempfile::NamedTempFile::new().unwrap();
        let err = tempfile::NamedTempFile::new().unwrap();
        let child = cmd
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
        std::fs::read_to_string(self.backups.join(format!("guard-{}.lock", self.name)))
            .is_ok_and(|s| s.contains("\"pid\""))
    }

    /// Whether the app's lock file holds `text` (how far a run got, its deploy step).
    pub fn lock_says(&self, text: &str) -> bool {
        std::fs::read_to_string(self.backups.join(format!("guard-{}.lock", self.name)))
            .is_ok_and(|s| s.contains(text))
    }

    /// Run `guard backup` and return the new incident's id (the last line of stdout).
    pub fn backup_id(&self) -> String {
        let run = self.guard(&["backup"]);
        run.expect(0);
        run.stdout.lines().last().unwrap().to_string()
    }

    /// An incident's manifest.json.
    pub fn manifest(&self, id: &str) -> serde_json::Value {
        let p = self.incident_dir(id).join("manifest.json");
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    }

    /// An incident's tree index, by path.
    pub fn tree_index(&self, id: &str) -> std::collections::BTreeMap<String, serde_json::Value> {
        let p = self.incident_dir(id).join("tree/index.jsonl.gz");
        let mut text = String::new();
        std::io::Read::read_to_string(
            &mut flate2::read::GzDecoder::new(std::fs::File::open(p).unwrap()),
            &mut text,
        )
        .unwrap();
        text.lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (v["p"].as_str().unwrap().to_string(), v)
            })
            .collect()
    }

    /// Where the object store keeps a content hash.
    pub fn object(&self, hash: &str) -> PathBuf {
        self.backups
            .join("objects")
            .join(&hash[..2])
            .join(&hash[2..])
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

    /// Seed v1 the way an operator had it running before guard: `pm2 start` of the
    /// ecosystem and `pm2 save`, without a guard deploy (faster, for tests where the first
    /// deploy is not what is tested). Waits until v1 answers.
    pub fn start_v1(&self) {
        if self.fixture == Fixture::Build {
            self.node(&["install.cjs"]);
            self.node(&["build.cjs"]);
        }
        let eco = self.dir.join("ecosystem.config.js");
        let out = self.pm2(&["start", eco.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "pm2 start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            wait_until(Duration::from_secs(15), || self.version().as_deref()
                == Some("v1")),
            "v1 did not answer after pm2 start"
        );
        let out = self.pm2(&["save", "--force"]);
        assert!(
            out.status.success(),
            "pm2 save: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Run node in the app dir (the build fixture's install and build scripts).
    pub fn node(&self, args: &[&str]) {
        let out = Command::new("node")
            .args(args)
            .current_dir(&self.dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "node {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The /health body as JSON, if it answers 200.
    pub fn health_body(&self) -> Option<serde_json::Value> {
        let (status, body) = http_get(self.port, "/health")?;
        if status != 200 {
            return None;
        }
        serde_json::from_str(body.trim()).ok()
    }

    /// Deploy v1 through guard (the first deploy, app not yet in PM2) and check it serves.
    pub fn deploy_v1(&self) {
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

    /// Whether this app's PM2 daemon runs (asking PM2 would start one).
    pub fn daemon_running(&self) -> bool {
        self.pm2_home.join("pm2.pid").exists()
    }

    /// The app's PM2 processes as (pid, status, restarts); none while no daemon runs.
    pub fn processes(&self) -> Vec<(u64, String, u64)> {
        if !self.daemon_running() {
            return Vec::new();
        }
        let out = self.pm2(&["jlist"]);
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text
            .lines()
            .rev()
            .find(|l| l.starts_with('['))
            .unwrap_or("[]");
        let list: Vec<serde_json::Value> = serde_json::from_str(line).unwrap();
        list.iter()
            .filter(|p| p["name"] == self.name)
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
        if !self.daemon_running() {
            return;
        }
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
