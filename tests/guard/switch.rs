//! `strategy = "switch"`: a fork-mode app behind a real nginx, a client polling through nginx
//! every 50 ms with a new connection through good and bad deploys and rollbacks.

use std::time::{Duration, Instant};

use crate::nginx::Nginx;
use crate::support::*;

/// The version nginx's upstream answers with.
fn through(nginx: &Nginx) -> Option<String> {
    let (status, body) = http_get(nginx.port, "/health")?;
    if status != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(body.trim()).ok()?;
    v["version"].as_str().map(String::from)
}

fn names(app: &App) -> Vec<String> {
    let out = app.pm2(&["jlist"]);
    let list: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    let mut names: Vec<String> = list
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["name"].as_str().map(String::from))
        .collect();
    names.sort();
    names
}

fn assert_no_failure(poller: Poller, what: &str) {
    let (total, failed) = poller.stop();
    assert!(total > 5, "{what}: only {total} requests");
    assert!(
        failed.is_empty(),
        "{what}: {} of {total} requests through nginx failed: {failed:?}",
        failed.len()
    );
}

#[test]
fn good_and_bad_releases_and_rollbacks_switch_through_nginx_without_a_failed_request() {
    let app = App::with_strategy("switch", 1);
    let other = free_port();
    let nginx = Nginx::start(app.root.path(), app.name, app.port);
    app.write_config(&nginx.switch_config([app.port, other], "1s", "10m"));
    app.start_v1();
    assert_eq!(through(&nginx).as_deref(), Some("v1"));

    // A good release: started on the idle port, verified, switched to; v1 kept warm.
    app.release("v2", "good");
    let poller = Poller::start(nginx.port);
    let run = app.guard(&["deploy"]);
    assert_no_failure(poller, "good deploy");
    run.expect(0);
    assert!(
        run.stdout.contains("traffic to demo-backend-"),
        "{}",
        run.stdout
    );
    assert_eq!(through(&nginx).as_deref(), Some("v2"));
    let slot = format!("{}-{other}", app.name);
    assert_eq!(names(&app), vec![app.name.to_string(), slot.clone()]);
    let upstream = std::fs::read_to_string(&nginx.upstream).unwrap();
    assert!(
        upstream.contains(&format!("server 127.0.0.1:{other};")),
        "{upstream}"
    );
    // The live process is found by the app's name: health looks at it.
    let health = app.guard(&["health"]);
    health.expect(0);
    assert!(
        health.stdout.contains(&format!(
            "switch     traffic to {slot} on port {other}; previous release {} on port {} kept until",
            app.name, app.port
        )),
        "{}",
        health.stdout
    );
    let json = app.guard(&["--json", "health"]).json();
    assert_eq!(json["data"]["switch"]["live"]["port"], other, "{json}");
    assert_eq!(
        json["data"]["switch"]["previous"]["name"], app.name,
        "{json}"
    );

    // Instant rollback: back to v1, still warm, without a start.
    let poller = Poller::start(nginx.port);
    let t = Instant::now();
    let run = app.guard(&["rollback", "latest"]);
    assert_no_failure(poller, "rollback within keep_previous");
    run.expect(0);
    assert_eq!(through(&nginx).as_deref(), Some("v1"));
    assert!(!run.stdout.contains("ok    start"), "{}", run.stdout);
    assert!(run.stdout.contains("ok    switch"), "{}", run.stdout);
    assert!(t.elapsed() < Duration::from_secs(20));
    assert!(app.read("release.json").contains("v1"));
    assert_eq!(names(&app), vec![app.name.to_string()]);

    // A release that crashes at start never takes a request.
    app.release("v3", "crash-at-start");
    let poller = Poller::start(nginx.port);
    let run = app.guard(&["deploy"]);
    assert_no_failure(poller, "crashing deploy");
    run.expect(3);
    assert!(
        run.stdout.contains("before taking traffic"),
        "{}",
        run.stdout
    );
    assert_eq!(through(&nginx).as_deref(), Some("v1"));
    assert_eq!(names(&app), vec![app.name.to_string()]);

    // A release that crashes after it answered, and one whose /health answers 500: both are
    // found on the idle port, and neither ever takes a request.
    for (version, json) in [
        (
            "v3b",
            r#"{ "version": "v3b", "mode": "crash-later", "crash_after_ms": 600 }"#,
        ),
        ("v3c", r#"{ "version": "v3c", "mode": "health-500" }"#),
    ] {
        app.release_json(json, version);
        let poller = Poller::start(nginx.port);
        let run = app.guard(&["deploy"]);
        assert_no_failure(poller, version);
        run.expect(3);
        assert_eq!(through(&nginx).as_deref(), Some("v1"), "{version}");
        assert_eq!(names(&app), vec![app.name.to_string()], "{version}");
    }

    // nginx's config test failing already: `guard check` says so and the deploy is refused
    // before anything changes (exit 2).
    app.release("v4", "good");
    let good = std::fs::read_to_string(&app.config).unwrap();
    app.edit_config(" -t -q\"", " -t -q -c /nonexistent.conf\"");
    let incidents = app.incidents().len();
    let run = app.guard(&["deploy"]);
    run.expect(2);
    assert!(
        run.stderr.contains("proxy: the nginx config test fails"),
        "{}",
        run.stderr
    );
    assert_eq!(
        app.incidents().len(),
        incidents,
        "a refused deploy took a snapshot"
    );
    // A config test that fails only with the new upstream (as a bad include would): the
    // upstream file is put back, the running version serves, exit 3.
    std::fs::write(
        &app.config,
        good.replace(
            &format!("test_command = \"{}", nginx.command("")),
            &format!(
                "test_command = \"! grep -q ':{other};' {} && {}",
                nginx.upstream.display(),
                nginx.command("")
            ),
        ),
    )
    .unwrap();
    let before = std::fs::read_to_string(&nginx.upstream).unwrap();
    let poller = Poller::start(nginx.port);
    let run = app.guard(&["deploy"]);
    assert_no_failure(poller, "failing nginx -t");
    run.expect(3);
    assert!(
        run.stdout.contains("the proxy was not switched"),
        "{}",
        run.stdout
    );
    assert_eq!(std::fs::read_to_string(&nginx.upstream).unwrap(), before);
    assert_eq!(through(&nginx).as_deref(), Some("v1"));
    assert_eq!(names(&app), vec![app.name.to_string()]);

    // After keep_previous: a rollback starts the previous release beside the live one.
    std::fs::write(
        &app.config,
        good.replace("keep_previous = \"10m\"", "keep_previous = \"1s\""),
    )
    .unwrap();
    let run = app.guard(&["deploy"]);
    run.expect(0);
    assert_eq!(through(&nginx).as_deref(), Some("v4"));
    std::thread::sleep(Duration::from_millis(1200));
    let poller = Poller::start(nginx.port);
    let run = app.guard(&["rollback", "latest"]);
    assert_no_failure(poller, "rollback after keep_previous");
    run.expect(0);
    assert!(run.stdout.contains("ok    start"), "{}", run.stdout);
    assert_eq!(through(&nginx).as_deref(), Some("v1"));
    assert_eq!(names(&app).len(), 1, "{:?}", names(&app));
}

#[test]
fn a_guard_killed_between_start_and_switch_leaves_the_live_release_serving_alone() {
    let app = App::with_strategy("switch", 1);
    let other = free_port();
    let nginx = Nginx::start(app.root.path(), app.name, app.port);
    app.write_config(&nginx.switch_config([app.port, other], "0s", "10m"));
    // A long stable window, so guard is killed while the new release is verified.
    app.edit_config("stable_for = \"1s\"", "stable_for = \"20s\"");
    app.start_v1();
    app.release("v2", "good");
    let slot = format!("{}-{other}", app.name);
    let poller = Poller::start(nginx.port);
    let bg = app.spawn_guard(&["deploy"]);
    assert!(
        wait_until(Duration::from_secs(15), || names(&app).contains(&slot)),
        "the new release never started"
    );
    bg.signal(libc::SIGKILL);
    assert_eq!(bg.finish(Duration::from_secs(5)).code, 137);
    // The reaper deletes what was never switched to; the proxy never moved.
    assert!(
        wait_until(Duration::from_secs(8), || !names(&app).contains(&slot)),
        "{:?}",
        names(&app)
    );
    assert_eq!(through(&nginx).as_deref(), Some("v1"));
    assert!(
        !std::fs::read_to_string(&nginx.upstream)
            .unwrap()
            .contains("guard")
    );
    // The next run takes over the lock and deploys.
    app.edit_config("stable_for = \"20s\"", "stable_for = \"1s\"");
    let run = app.guard(&["deploy"]);
    assert_no_failure(poller, "kill -9 and the next deploy");
    run.expect(0);
    assert_eq!(through(&nginx).as_deref(), Some("v2"));
    // Another deploy while v1 (the app's own process of before the first switch) is kept warm
    // on the idle port: it makes room and goes on.
    app.release("v3", "good");
    let poller = Poller::start(nginx.port);
    let run = app.guard(&["deploy"]);
    assert_no_failure(poller, "a deploy onto the kept release's port");
    run.expect(0);
    assert_eq!(through(&nginx).as_deref(), Some("v3"));
    let mut expected = vec![format!("{}-{}", app.name, app.port), slot];
    expected.sort();
    assert_eq!(names(&app), expected);
}

#[test]
fn a_first_deploy_where_nothing_runs_keeps_nothing_and_serves() {
    let app = App::with_strategy("switch", 1);
    let other = free_port();
    let nginx = Nginx::start(app.root.path(), app.name, app.port);
    app.write_config(&nginx.switch_config([app.port, other], "5s", "10m"));
    let run = app.guard(&["deploy"]);
    run.expect(0);
    assert_eq!(through(&nginx).as_deref(), Some("v1"));
    // No previous release to keep or drain: no keep step, no drain, nothing claimed.
    assert!(!run.stdout.contains("ok    keep"), "{}", run.stdout);
    assert!(!run.stdout.contains("stays warm"), "{}", run.stdout);
    assert!(!run.stdout.contains("drained for"), "{}", run.stdout);
    assert_eq!(names(&app), vec![format!("{}-{other}", app.name)]);
}

#[test]
fn guard_watch_follows_the_live_process_across_a_switch() {
    let app = App::with_strategy("switch", 1);
    let other = free_port();
    let nginx = Nginx::start(app.root.path(), app.name, app.port);
    let rx = Receiver::start(0);
    app.write_config(&format!(
        "{}\n[watch]\ninterval = \"200ms\"\nrecover_after = \"1s\"\npm2_every = \"2s\"\n\n[[alert.webhook]]\nurl = \"{}\"\n",
        nginx.switch_config([app.port, other], "0s", "0s"),
        rx.url("/hook")
    ));
    app.start_v1();
    let mut watch = app.spawn_guard(&["watch"]);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(watch.running());
    // The deploy moves the app to its other process and stops the old one: guard's own run,
    // not an alert.
    app.release("v2", "good");
    app.guard(&["deploy"]).expect(0);
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        rx.delivered("/hook").is_empty(),
        "{:?}",
        rx.delivered("/hook")
    );
    // A crash of the live process is seen as one.
    let slot = format!("{}-{other}", app.name);
    let list: serde_json::Value = serde_json::from_slice(&app.pm2(&["jlist"]).stdout).unwrap();
    let pid = list
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == slot.as_str())
        .and_then(|p| p["pid"].as_i64())
        .expect("the live process") as i32;
    // SAFETY: kill(2) on the app's process, which this test started through guard.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    assert!(
        wait_until(Duration::from_secs(5), || !rx
            .events("/hook", "crash")
            .is_empty()),
        "no crash alert: {:?}",
        rx.delivered("/hook")
    );
    watch.signal(libc::SIGTERM);
    watch.finish(Duration::from_secs(15)).expect(0);
}

#[test]
fn a_kept_release_pm2_restarted_is_never_switched_back_to() {
    let app = App::with_strategy("switch", 1);
    let other = free_port();
    let nginx = Nginx::start(app.root.path(), app.name, app.port);
    app.write_config(&nginx.switch_config([app.port, other], "0s", "10m"));
    app.start_v1();
    app.release("v2", "good");
    app.guard(&["deploy"]).expect(0);
    assert_eq!(through(&nginx).as_deref(), Some("v2"));
    // The kept v1 process is restarted by PM2 (a crash, a memory limit): it loads the files on
    // disk now, v2's, and answers as v2 on the kept port.
    let out = app.pm2(&["restart", app.name]);
    assert!(out.status.success());
    assert!(wait_until(Duration::from_secs(10), || app
        .version()
        .as_deref()
        == Some("v2")));
    let poller = Poller::start(nginx.port);
    let run = app.guard(&["rollback", "latest"]);
    assert_no_failure(poller, "rollback to a restarted kept release");
    run.expect(0);
    assert!(
        run.stdout.contains("PM2 restarted it since it was kept"),
        "{}",
        run.stdout
    );
    // Not a switch to the restarted process: v1 started again from the restored files.
    assert_eq!(through(&nginx).as_deref(), Some("v1"));
    assert!(app.read("release.json").contains("v1"));
}
