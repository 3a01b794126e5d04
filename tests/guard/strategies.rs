//! `[deploy] strategy`: `reload` on a 2-instance cluster app and `preflight` on a fork app,
//! under a real PM2 daemon, with a client polling /health every 50 ms through each deploy.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::support::*;

/// Versions and env notes the instances answer with, by NODE_APP_INSTANCE, over a few polls.
fn answers(app: &App) -> BTreeMap<String, (String, String)> {
    let mut seen = BTreeMap::new();
    for _ in 0..12 {
        if let Some(b) = app.health_body() {
            seen.insert(
                b["instance"].as_str().unwrap_or("?").to_string(),
                (
                    b["version"].as_str().unwrap_or("").to_string(),
                    b["note"].as_str().unwrap_or("").to_string(),
                ),
            );
        }
    }
    seen
}

fn pids(app: &App) -> Vec<u64> {
    app.processes().iter().map(|p| p.0).collect()
}

fn no_trial_left(app: &App) -> bool {
    let out = app.pm2(&["jlist"]);
    !String::from_utf8_lossy(&out.stdout).contains("guard-trial")
}

#[test]
fn reload_puts_a_good_release_and_its_env_in_place_without_a_failed_request() {
    let app = App::with_strategy("reload", 2);
    app.start_v1();
    assert_eq!(app.processes().len(), 2);
    let before = pids(&app);
    app.release("v2", "good");
    // An env value of the ecosystem changes with the release (env.env feeds its `env`).
    let env = app.read("env.env");
    std::fs::write(
        app.dir.join("env.env"),
        format!("{env}RELEASE_NOTE=hello\n"),
    )
    .unwrap();

    let poller = Poller::start(app.port);
    let run = app.guard(&["--json", "deploy"]);
    let (total, failed) = poller.stop();
    run.expect(0);
    assert!(
        failed.is_empty(),
        "{} of {total} requests failed: {failed:?}",
        failed.len()
    );
    let steps: Vec<String> = run.json()["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    assert!(
        steps.contains(&"preflight".into()) && steps.contains(&"reload".into()),
        "{steps:?}"
    );
    let seen = answers(&app);
    assert_eq!(seen.len(), 2, "{seen:?}");
    for (version, note) in seen.values() {
        assert_eq!(
            (version.as_str(), note.as_str()),
            ("v2", "hello"),
            "{seen:?}"
        );
    }
    let after = pids(&app);
    assert!(
        after.iter().all(|p| !before.contains(p)),
        "{before:?} -> {after:?}"
    );
    assert!(no_trial_left(&app));

    // A rollback honours the strategy: v1 rolls back in one instance at a time.
    let poller = Poller::start(app.port);
    let run = app.guard(&["--json", "rollback", "latest"]);
    let (total, failed) = poller.stop();
    run.expect(0);
    assert!(
        failed.is_empty(),
        "rollback: {} of {total} requests failed: {failed:?}",
        failed.len()
    );
    let steps = run.json()["steps"].to_string();
    assert!(
        steps.contains("\"reload\"") && !steps.contains("\"restart\""),
        "{steps}"
    );
    assert!(answers(&app).values().all(|(v, _)| v == "v1"));
}

#[test]
fn reload_keeps_a_crashing_release_off_every_instance_without_a_failed_request() {
    let app = App::with_strategy("reload", 2);
    app.start_v1();
    let before = pids(&app);
    app.release("v2", "crash-at-start");
    let poller = Poller::start(app.port);
    let run = app.guard(&["--json", "deploy"]);
    let (total, failed) = poller.stop();
    run.expect(3);
    assert!(
        failed.is_empty(),
        "{} of {total} requests failed: {failed:?}",
        failed.len()
    );
    let data = &run.json()["data"];
    assert_eq!(data["preflight"]["healthy"], false, "{data}");
    // The two instances never restarted: only the trial ever ran v2.
    assert_eq!(pids(&app), before);
    assert!(
        app.processes().iter().all(|p| p.2 == 0),
        "{:?}",
        app.processes()
    );
    assert!(answers(&app).values().all(|(v, _)| v == "v1"));
    assert!(no_trial_left(&app));
    // The trial's log tail is kept in the incident, as a failed restart's would be.
    let logs = app
        .incident_dir(run.json()["incident"].as_str().unwrap())
        .join("logs");
    let kept: String = std::fs::read_dir(&logs)
        .unwrap()
        .flatten()
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect();
    assert!(kept.contains("crashes at start"), "{kept}");
}

#[test]
fn preflight_leaves_the_running_process_alone_for_bad_releases_and_deploys_a_good_one() {
    let app = App::with_strategy("preflight", 1);
    app.start_v1();
    let pid = pids(&app);
    for (version, mode) in [("v2", "crash-at-start"), ("v3", "health-500")] {
        app.release(version, mode);
        let poller = Poller::start(app.port);
        let run = app.guard(&["deploy"]);
        let (total, failed) = poller.stop();
        run.expect(3);
        assert!(
            failed.is_empty(),
            "{mode}: {} of {total} requests failed: {failed:?}",
            failed.len()
        );
        assert_eq!(pids(&app), pid, "{mode}: the running process was touched");
        assert_eq!(app.version().as_deref(), Some("v1"));
        assert!(no_trial_left(&app));
    }
    app.release("v4", "good");
    app.guard(&["deploy"]).expect(0);
    assert_eq!(app.version().as_deref(), Some("v4"));
    assert_ne!(pids(&app), pid);
    assert!(no_trial_left(&app));
}

#[test]
fn the_trial_never_outlives_guard_even_after_kill_9() {
    let app = App::with_strategy("preflight", 1);
    app.start_v1();
    // A long stable window, so guard is killed while the trial runs.
    app.edit_config("stable_for = \"1s\"", "stable_for = \"20s\"");
    app.release("v2", "good");
    let bg = app.spawn_guard(&["deploy"]);
    assert!(
        wait_until(Duration::from_secs(15), || !no_trial_left(&app)),
        "the trial never started"
    );
    bg.signal(libc::SIGKILL);
    let run = bg.finish(Duration::from_secs(5));
    assert_eq!(run.code, 137);
    assert!(
        wait_until(Duration::from_secs(8), || no_trial_left(&app)),
        "the trial survived guard: {:?}",
        String::from_utf8_lossy(&app.pm2(&["jlist"]).stdout).contains("guard-trial")
    );
    // The running app was never touched.
    assert_eq!(app.version().as_deref(), Some("v1"));
}

#[test]
fn reload_of_a_single_cluster_instance_drops_no_request() {
    // PM2's cluster mode with one instance: zero downtime for a plain Node server, no proxy.
    let app = App::one_cluster_instance("reload");
    app.start_v1();
    app.release("v2", "good");
    let poller = Poller::start(app.port);
    let run = app.guard(&["--json", "deploy"]);
    let (total, failed) = poller.stop();
    run.expect(0);
    assert!(
        failed.is_empty(),
        "{} of {total} requests failed: {failed:?}",
        failed.len()
    );
    assert!(run.json()["steps"].to_string().contains("\"reload\""));
    assert_eq!(app.version().as_deref(), Some("v2"));
}
