//! The verification rules: what PM2 hides is caught, a verdict comes as soon as it is known,
//! and a good release that is slow to boot is not failed.

use std::io::Write;
use std::time::Duration;

use crate::support::{App, SECRET_DSN, serve};

#[test]
fn a_crash_after_the_first_good_probe_is_caught_in_the_stable_window() {
    let app = App::new();
    app.edit_config("stable_for = \"1s\"", "stable_for = \"5s\"");
    app.start_v1();
    app.release_json(
        r#"{ "version": "v2", "mode": "crash-later", "crash_after_ms": 1500 }"#,
        "v2 crashes later",
    );
    let run = app.guard(&["--json", "deploy"]);
    run.expect(3);
    let doc = run.json();
    let reason = doc["data"]["verdict"]["message"].as_str().unwrap();
    assert!(reason.starts_with("restarted after"), "{reason}");
    assert_eq!(doc["data"]["verdict"]["reason"]["kind"], "restarted_after");
    assert!(
        doc["data"]["verdict"]["ready_after_ms"].is_number(),
        "it had answered before it crashed"
    );
    assert_eq!(app.version().as_deref(), Some("v1"));
}

#[test]
fn a_hanging_health_endpoint_fails_by_the_probe_timeout_not_the_deadline() {
    let app = App::new();
    app.start_v1();
    app.release("v2", "health-hang");
    let run = app.guard(&["--json", "deploy"]);
    run.expect(3);
    let verdict = &run.json()["data"]["verdict"];
    assert!(
        verdict["message"]
            .as_str()
            .unwrap()
            .contains("timed out after 1s"),
        "{verdict}"
    );
    // deadline is 20s: the verdict came from the third timed-out probe in a row
    // (health.timeouts_in_a_row), each retried at once.
    assert!(
        verdict["elapsed_ms"].as_u64().unwrap() < 10_000,
        "{verdict}"
    );
    assert_eq!(app.version().as_deref(), Some("v1"));
}

/// A release whose entry is ESM and throws at import: PM2 keeps it `online` and never
/// restarts it, so only its error log tells.
fn push_esm_release_that_throws_at_import(app: &App) {
    let eco = std::fs::read_to_string(app.work.join("ecosystem.config.js"))
        .unwrap()
        .replace("script: 'server.js'", "script: 'server.mjs'");
    app.push(
        &[
            ("ecosystem.config.js", &eco),
            (
                "server.mjs",
                "import './lib/not-there.mjs';\nconsole.log('never reached');\n",
            ),
        ],
        "v2 is ESM and throws at import",
    );
}

#[test]
fn an_esm_release_that_throws_at_import_is_failed_in_seconds_not_at_the_deadline() {
    let app = App::new();
    app.start_v1();
    push_esm_release_that_throws_at_import(&app);
    let run = app.guard(&["--json", "deploy"]);
    run.expect(3);
    let verdict = &run.json()["data"]["verdict"];
    assert_eq!(verdict["reason"]["kind"], "failed_to_load", "{verdict}");
    assert!(
        verdict["reason"]["error"]
            .as_str()
            .unwrap()
            .contains("ERR_MODULE_NOT_FOUND"),
        "names the app's own error: {verdict}"
    );
    // The deadline is 20 s; before, the verdict came only then.
    assert!(verdict["elapsed_ms"].as_u64().unwrap() < 8_000, "{verdict}");
    assert_eq!(app.version().as_deref(), Some("v1"));
}

#[test]
fn a_preflight_trial_refuses_an_esm_release_that_throws_at_import_in_seconds() {
    let app = App::with_strategy("preflight", 1);
    app.start_v1();
    push_esm_release_that_throws_at_import(&app);
    let run = app.guard(&["--json", "deploy"]);
    run.expect(3);
    let doc = run.json();
    let trial = &doc["data"]["preflight"];
    assert_eq!(trial["reason"]["kind"], "failed_to_load", "{trial}");
    assert!(trial["elapsed_ms"].as_u64().unwrap() < 8_000, "{trial}");
    assert!(
        doc["data"]["verdict"].is_null(),
        "the running app was never touched"
    );
    assert_eq!(app.version().as_deref(), Some("v1"));
}

#[test]
fn a_slow_booting_good_release_passes() {
    let app = App::new();
    app.start_v1();
    app.release_json(
        r#"{ "version": "v2", "mode": "good", "boot_delay_ms": 3000 }"#,
        "v2 boots slowly",
    );
    let run = app.guard(&["--json", "deploy"]);
    run.expect(0);
    let ready = run.json()["data"]["verdict"]["ready_after_ms"]
        .as_u64()
        .unwrap();
    assert!(ready >= 3000, "it cannot answer before it listens: {ready}");
    assert_eq!(app.version().as_deref(), Some("v2"));
}

#[test]
fn a_cluster_app_with_one_crashing_instance_fails() {
    let app = App::new();
    app.edit_config("stable_for = \"1s\"", "stable_for = \"4s\"");
    let eco = std::fs::read_to_string(app.work.join("ecosystem.config.js"))
        .unwrap()
        .replace("exec_mode: 'fork'", "exec_mode: 'cluster'")
        .replace("instances: 1", "instances: 2");
    app.push(&[("ecosystem.config.js", &eco)], "cluster of two");
    // The clone was made at v1: pull the cluster ecosystem in with the first deploy.
    let first = app.guard(&["deploy"]);
    first.expect(0);
    // Off a terminal, a 4 s window still shows where it stands rather than looking hung.
    assert!(
        first
            .stdout
            .contains("....  verify       healthy, stable window:"),
        "{}",
        first.stdout
    );
    assert_eq!(app.processes().len(), 2);
    app.release_json(
        r#"{ "version": "v2", "mode": "crash-one-instance", "crash_after_ms": 1000 }"#,
        "v2 instance 1 crashes",
    );
    let run = app.guard(&["deploy"]);
    run.expect(3);
    assert!(run.stdout.contains("instance"), "{}", run.stdout);
    let procs = app.processes();
    assert_eq!(procs.len(), 2);
    assert!(procs.iter().all(|p| p.1 == "online"), "{procs:?}");
    assert_eq!(app.version().as_deref(), Some("v1"));
}

#[test]
fn expect_body_fails_a_200_without_the_text() {
    let app = App::with_config("expect_body = '\"status\":\"ok\"'");
    app.start_v1();
    app.release("v2", "degraded");
    let run = app.guard(&["deploy"]);
    run.expect(3);
    assert!(
        run.stdout.contains("without the expected body text"),
        "{}",
        run.stdout
    );
}

#[test]
fn health_shows_the_status_block_and_wait_uses_the_verdict_rules() {
    let app = App::new();
    app.deploy_v1();
    let run = app.guard(&["health"]);
    run.expect(0);
    for word in [
        "instance 0",
        "online",
        "restarts 0",
        "memory",
        "HTTP 200",
        "artifacts  clean",
        "newest",
    ] {
        assert!(run.stdout.contains(word), "{word} missing:\n{}", run.stdout);
    }
    let doc = app.guard(&["--json", "health"]).json();
    assert_eq!(doc["data"]["healthy"], true);
    assert!(
        doc["data"]["instances"][0]["memory_bytes"]
            .as_u64()
            .unwrap()
            > 1_000_000
    );
    assert_eq!(doc["data"]["health"]["status"], 200);
    app.guard(&["health", "--wait"]).expect(0);

    std::fs::create_dir(app.dir.join("dist")).unwrap();
    let run = app.guard(&["health"]);
    assert!(
        run.stdout.contains("artifacts  PRESENT: dist/"),
        "{}",
        run.stdout
    );

    // Stopped by hand: exit 1, and --wait says why at once.
    app.pm2(&["stop", "demo-backend"]);
    let run = app.guard(&["health"]);
    run.expect(1);
    assert!(run.stdout.contains("stopped"), "{}", run.stdout);
    let run = app.guard(&["health", "--wait"]);
    run.expect(1);
    assert!(run.stdout.contains("PM2 status stopped"), "{}", run.stdout);
}

#[test]
fn health_without_a_daemon_or_an_app_says_so() {
    let app = App::new();
    let run = app.guard(&["health"]);
    run.expect(1);
    assert!(
        run.stdout.contains("PM2 daemon not running"),
        "{}",
        run.stdout
    );
    assert!(
        !app.pm2_home.join("pm2.pid").exists(),
        "health must not start a PM2 daemon"
    );
    app.pm2(&["ping"]);
    let run = app.guard(&["health"]);
    run.expect(1);
    assert!(run.stdout.contains("not known to PM2"), "{}", run.stdout);
}

#[test]
fn the_log_tail_is_captured_and_redacted() {
    let app = App::new();
    app.start_v1();
    app.release("v2", "crash-at-start");
    let run = app.guard(&["deploy"]);
    run.expect(3);
    assert!(
        run.stdout.contains("fatal: cannot start, SENTRY_DSN=***"),
        "{}",
        run.stdout
    );
    assert!(!run.all().contains(SECRET_DSN));
    let id = app.incidents().last().unwrap().clone();
    let logs = app.incident_dir(&id).join("logs");
    let err = std::fs::read_to_string(logs.join("demo-backend-0-error.log")).unwrap();
    assert!(err.lines().count() <= 100);
    assert!(err.contains("crashes at start") && !err.contains(SECRET_DSN));
    assert!(logs.join("demo-backend-0-out.log").exists());
}

/// A one-connection-at-a-time HTTP server on 127.0.0.1 that answers with `respond`.
fn probe_outcome(app: &App, url: &str) -> (crate::support::Run, String) {
    app.edit_config(
        &format!("url = \"http://127.0.0.1:{}/health\"", app.port),
        &format!("url = \"{url}\""),
    );
    let run = app.guard(&["--json", "health"]);
    let outcome = run.json()["data"]["health"]["outcome"]["text"]
        .as_str()
        .unwrap()
        .to_string();
    (run, outcome)
}

#[test]
fn odd_health_endpoints_get_a_clear_verdict_and_no_panic() {
    // Refused: nothing listens on a fresh port.
    let app = App::new();
    let (run, outcome) = probe_outcome(
        &app,
        &format!("http://127.0.0.1:{}/health", crate::support::free_port()),
    );
    run.expect(1);
    assert!(outcome.contains("connection refused"), "{outcome}");

    let app = App::new();
    let (run, outcome) = probe_outcome(&app, "http://nowhere.invalid/health");
    run.expect(1);
    assert!(outcome.contains("resolve"), "{outcome}");

    // A 50 MB body: read up to a cap, judged by its status.
    let port = serve(|s| {
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 52428800\r\n\r\n");
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..50 {
            if s.write_all(&chunk).is_err() {
                return;
            }
        }
    });
    let app = App::new();
    let (run, outcome) = probe_outcome(&app, &format!("http://127.0.0.1:{port}/health"));
    assert_eq!(outcome, "HTTP 200", "{}", run.stdout);

    // One byte a second: the probe times out (timeout is 1s).
    let port = serve(|s| {
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n");
        for _ in 0..10 {
            std::thread::sleep(Duration::from_millis(700));
            if s.write_all(b"x").is_err() {
                return;
            }
        }
    });
    let app = App::new();
    let (run, outcome) = probe_outcome(&app, &format!("http://127.0.0.1:{port}/health"));
    run.expect(1);
    assert!(outcome.contains("timed out"), "{outcome}");
    assert!(!run.stderr.contains("panicked"));
}

#[test]
fn a_release_that_dies_without_a_word_is_explained_by_pm2s_own_log() {
    let app = App::new();
    app.start_v1();
    app.release("v2", "exit-silently");
    let run = app.guard(&["deploy"]);
    run.expect(3);
    // Nothing in the app's logs: PM2's own lines about the app are the evidence, shown and kept.
    assert!(
        run.stdout.contains("PM2 wrote nothing to the app's logs"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("exited with code [1]"),
        "{}",
        run.stdout
    );
    let ids = app.incidents();
    assert_eq!(ids.len(), 1, "{ids:?}");
    let kept = std::fs::read_to_string(app.incident_dir(&ids[0]).join("logs/pm2-daemon.log"))
        .unwrap_or_default();
    assert!(kept.contains("demo-backend"), "{kept}");
    assert_eq!(app.version().as_deref(), Some("v1"));
}
