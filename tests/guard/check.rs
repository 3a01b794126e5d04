//! `guard check`, `guard init` and the incident's status block.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

use crate::support::{App, Run};

fn chmod(p: &std::path::Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn level<'a>(doc: &'a serde_json::Value, id: &str) -> &'a str {
    doc["data"]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id)
        .unwrap_or_else(|| panic!("no check {id}: {doc}"))["level"]
        .as_str()
        .unwrap()
}

/// The incident's drift, on the demo app: PM2 not failing fast, Sentry configured but not
/// enabled, dist/ not ignored, a world-readable env file, a process list not saved.
fn break_like_the_incident(app: &App) {
    let eco = app
        .read("ecosystem.config.js")
        .replace("max_restarts: 3", "max_restarts: 15")
        .replace("min_uptime: '30s'", "min_uptime: '5s'");
    std::fs::write(app.dir.join("ecosystem.config.js"), eco).unwrap();
    let env = app.read("env.env").replace("SENTRY_ENABLED=true\n", "");
    std::fs::write(app.dir.join("env.env"), env).unwrap();
    chmod(&app.dir.join("env.env"), 0o644);
    let ignore = app.read(".gitignore").replace("dist/\n", "");
    std::fs::write(app.dir.join(".gitignore"), ignore).unwrap();
    // A process started by hand and never saved.
    let extra = app.root.path().join("extra.js");
    std::fs::write(&extra, "setInterval(() => {}, 1000);\n").unwrap();
    assert!(
        app.pm2(&["start", extra.to_str().unwrap(), "--name", "extra"])
            .status
            .success()
    );
}

#[test]
fn the_incidents_drift_fails_check_naming_each_problem_and_passes_after_its_fixes() {
    let app = App::new();
    app.start_v1();
    break_like_the_incident(&app);
    let run = app.guard(&["check"]);
    run.expect(1);
    for says in [
        "max_restarts=15",
        "min_uptime=5s",
        "SENTRY_ENABLED",
        "not in .gitignore: dist",
        "env.env is readable by every user",
        "differs from what runs",
        "fix: chmod 600 env.env",
    ] {
        assert!(run.stdout.contains(says), "{says} missing:\n{}", run.stdout);
    }
    let doc = app.guard(&["--json", "check"]).json();
    assert_eq!(doc["exit_code"], 1);
    assert_eq!(level(&doc, "env-files"), "fail");
    for id in ["pm2-fail-fast", "sentry", "gitignore", "pm2-saved"] {
        assert_eq!(level(&doc, id), "warn", "{id}");
    }

    // The incident's fixes.
    let eco = app
        .read("ecosystem.config.js")
        .replace("max_restarts: 15", "max_restarts: 3")
        .replace("min_uptime: '5s'", "min_uptime: '30s'");
    std::fs::write(app.dir.join("ecosystem.config.js"), eco).unwrap();
    std::fs::write(
        app.dir.join("env.env"),
        format!("{}SENTRY_ENABLED=true\n", app.read("env.env")),
    )
    .unwrap();
    chmod(&app.dir.join("env.env"), 0o600);
    std::fs::write(
        app.dir.join(".gitignore"),
        format!("{}dist/\n", app.read(".gitignore")),
    )
    .unwrap();
    assert!(app.pm2(&["save", "--force"]).status.success());
    let run = app.guard(&["--json", "check"]);
    run.expect(0);
    let doc = run.json();
    for id in [
        "pm2-fail-fast",
        "sentry",
        "gitignore",
        "pm2-saved",
        "env-files",
        "ecosystem",
        "script",
    ] {
        assert_eq!(level(&doc, id), "ok", "{id}: {doc}");
    }
}

#[test]
fn deploy_refuses_a_failing_check_with_exit_2_and_changes_nothing() {
    let app = App::new();
    app.start_v1();
    chmod(&app.dir.join("env.env"), 0o644);
    app.release("v2", "good");
    let before = app.state();
    let run = app.guard(&["deploy"]);
    run.expect(2);
    assert!(
        run.stderr.contains("env-files") && run.stderr.contains("chmod 600 env.env"),
        "{}",
        run.stderr
    );
    assert_eq!(app.state(), before, "nothing may change");
    assert_eq!(app.version().as_deref(), Some("v1"));
}

#[test]
fn health_prints_the_incidents_status_block() {
    let app = App::new();
    app.deploy_v1();
    let run = app.guard(&["health"]);
    run.expect(0);
    for line in [
        "Status: online   Uptime: ",
        "Restarts: 0   Memory: ~",
        "Health: HTTP 200   Sentry: enabled   PM2 config: max_restarts=3, min_uptime=30s",
        "Artifacts: clean (no dist/)   Backups: ready (newest ",
        "Overall: HEALTHY",
    ] {
        assert!(
            run.stdout.contains(line),
            "{line:?} missing:\n{}",
            run.stdout
        );
    }
    let doc = app.guard(&["--json", "health"]).json();
    let d = &doc["data"];
    assert_eq!(d["status"], "healthy");
    assert_eq!(d["sentry_enabled"], true);
    assert_eq!(d["pm2_config"]["max_restarts"], 3.0);
    assert_eq!(d["pm2_config"]["min_uptime_ms"], 30_000);
    assert_eq!(d["backups_ready"], true);
}

/// guard with pm2 on PATH and a HOME of its own (init writes no pm2.bin and no backup.dir).
fn guard_as_operator(app: &App, args: &[&str]) -> Run {
    let home = app.root.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let path = format!(
        "{}:{}",
        app.pm2.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let t = std::time::Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_guard"))
        .args(args)
        .env_remove("GUARD_CONFIG")
        .env("NO_COLOR", "1")
        .env("PM2_HOME", &app.pm2_home)
        .env("HOME", &home)
        .env("PATH", path)
        .current_dir(app.root.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        took: t.elapsed(),
    }
}

#[test]
fn init_writes_a_config_that_passes_check_and_deploys_and_never_overwrites() {
    let app = App::new();
    let config = app.root.path().join("init.toml");
    let c = config.to_str().unwrap();
    let run = guard_as_operator(&app, &["--config", c, "init", "--dir", "app"]);
    run.expect(0);
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("name = \"demo-backend\""), "{text}");
    assert!(text.contains("dir = \"app\""), "{text}");
    assert!(text.contains("\"env.env\""), "{text}");
    assert!(
        text.contains(&format!("http://127.0.0.1:{}/health", app.port)),
        "the port comes from env.env: {text}"
    );
    assert!(run.stdout.contains("guessed"), "{}", run.stdout);
    // A shorter window, as an operator may choose after reading it.
    std::fs::write(
        &config,
        text.replace("stable_for = \"10s\"", "stable_for = \"1s\""),
    )
    .unwrap();
    guard_as_operator(&app, &["--config", c, "check"]).expect(0);
    guard_as_operator(&app, &["--config", c, "deploy"]).expect(0);
    assert_eq!(app.version().as_deref(), Some("v1"));

    let again = guard_as_operator(&app, &["--config", c, "init", "--dir", "app"]);
    again.expect(2);
    assert!(
        again.stderr.contains("never overwrites"),
        "{}",
        again.stderr
    );
    assert!(
        std::fs::read_to_string(&config)
            .unwrap()
            .contains("stable_for = \"1s\"")
    );
}

#[test]
fn health_shows_what_runs_and_what_the_files_change_at_the_next_deploy() {
    let app = App::new();
    app.start_v1();
    let id = app.backup_id();
    // Edited, not deployed: PM2 still runs with max_restarts 3.
    let eco = app
        .read("ecosystem.config.js")
        .replace("max_restarts: 3", "max_restarts: 10");
    std::fs::write(app.dir.join("ecosystem.config.js"), eco).unwrap();
    let run = app.guard(&["--json", "health"]);
    run.expect(0);
    let d = &run.json()["data"];
    assert_eq!(d["pm2_config"]["max_restarts"], 3.0, "{d}");
    assert_eq!(d["pending"], serde_json::json!(["max_restarts=10"]), "{d}");
    assert_eq!(d["code"].as_str().map(str::len), Some(40), "{d}");
    assert_eq!(d["code_incident"], id.as_str(), "{d}");
    let text = app.guard(&["health"]);
    assert!(
        text.stdout.contains("takes effect at the next deploy")
            && text.stdout.contains("max_restarts=3,"),
        "{}",
        text.stdout
    );
    // PM2 lost the app (its daemon restarted without `pm2 resurrect`): said so, with what to do.
    assert!(app.pm2(&["kill"]).status.success());
    assert!(app.pm2(&["ping"]).status.success());
    let lost = app.guard(&["health"]);
    lost.expect(1);
    assert!(lost.stdout.contains("pm2 resurrect"), "{}", lost.stdout);
}

#[test]
fn strict_check_fails_on_a_warning_the_audit_says_who_and_from_where_and_logs_are_plain() {
    let app = App::new();
    app.start_v1();
    // Warnings (here: no PM2 startup unit on a test host) exit 0; --strict makes them exit 1.
    let plain = app.guard(&["--json", "check"]);
    plain.expect(0);
    let warned = plain.json()["data"]["result"] == "warn";
    app.guard(&["check", "--strict"])
        .expect(if warned { 1 } else { 0 });
    // Behind sudo, over ssh: the audit log records who and from where, with its schema.
    let out = app
        .guard_cmd(&["backup"])
        .env("SUDO_USER", "alice")
        .env("SSH_CONNECTION", "203.0.113.7 51234 10.0.0.1 22")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success());
    let audit = std::fs::read_to_string(app.backups.join("audit.log")).unwrap();
    let last: serde_json::Value = serde_json::from_str(audit.lines().last().unwrap()).unwrap();
    assert_eq!(last["sudo_user"], "alice", "{last}");
    assert_eq!(last["from"], "203.0.113.7", "{last}");
    assert_eq!(last["schema"], 2, "{last}");
    // Log lines on stderr off a terminal carry no colour codes (journald, 2>file).
    let verbose = app.guard(&["-vv", "health"]);
    assert!(!verbose.stderr.is_empty());
    assert!(!verbose.stderr.contains('\x1b'), "{:?}", verbose.stderr);
}

#[test]
fn node_missing_from_guards_path_fails_check_and_pm2_node_brings_it_back() {
    let app = App::new();
    app.start_v1();
    // A PATH as a plain `ssh host guard ...` gets it on an nvm server: no node on it.
    let bin = tempfile::tempdir().unwrap();
    for tool in ["sh", "git", "cat", "env"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .unwrap();
        let path = String::from_utf8_lossy(&found.stdout).trim().to_string();
        std::os::unix::fs::symlink(&path, bin.path().join(tool)).unwrap();
    }
    let node = Command::new("sh")
        .args(["-c", "command -v node"])
        .output()
        .unwrap();
    let node = String::from_utf8_lossy(&node.stdout).trim().to_string();
    let run_with_path = |args: &[&str]| {
        Run::of(
            app.guard_cmd(args)
                .env("PATH", bin.path())
                .stdin(Stdio::null())
                .output()
                .unwrap(),
            std::time::Duration::ZERO,
        )
    };
    let check = run_with_path(&["--json", "check"]);
    check.expect(1);
    let doc = check.json();
    let node_check = doc["data"]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "node" || c["id"] == "pm2")
        .cloned()
        .unwrap_or_default();
    assert_eq!(node_check["level"], "fail", "{doc}");
    // A deploy is refused before anything changes.
    run_with_path(&["deploy"]).expect(2);
    // `[pm2] node` puts node's folder on every child's PATH: pm2 runs, the deploy works.
    app.edit_config("[pm2]\n", &format!("[pm2]\nnode = {node:?}\n"));
    run_with_path(&["check"]).expect(0);
    app.release("v2", "good");
    run_with_path(&["deploy"]).expect(0);
    assert_eq!(app.version().as_deref(), Some("v2"));
}
