//! `guard watch` and alerts: the built binary watching the demo app under a real PM2 daemon,
//! alerts POSTed over real HTTP to a receiver on 127.0.0.1 (standing in for the webhook,
//! Slack, Telegram and heartbeat services, which cannot be reached from here).

use std::time::{Duration, Instant};

use crate::support::*;

/// Watch settings with short windows, and every destination pointed at `rx`.
fn watch_config(rx: &Receiver, extra_watch: &str) -> String {
    format!(
        r#"
[watch]
interval = "200ms"
failures = 3
loop_restarts = 3
loop_window = "60s"
recover_after = "1s"
pm2_every = "2s"
{extra_watch}

[[alert.webhook]]
url = "{hook}"

[[alert.slack]]
url_env = "TEST_SLACK_URL"

[[alert.telegram]]
token_env = "TEST_TG_TOKEN"
chat_id = "-1001"
api_url = "{tg}"

[alert.heartbeat]
url = "{beat}"
every = "1s"
"#,
        hook = rx.url("/hook"),
        tg = rx.url("/tg/"),
        beat = rx.url("/beat"),
    )
}

const TG_TOKEN: &str = "123456:TEST-bot-token-Zz";

/// guard with the destinations' secrets in its environment, as systemd's EnvironmentFile
/// would give them.
fn guard_cmd(app: &App, rx: &Receiver, args: &[&str]) -> std::process::Command {
    let mut cmd = app.guard_cmd(args);
    cmd.env("TEST_SLACK_URL", rx.url("/slack/T0/B0/slacksecret"))
        .env("TEST_TG_TOKEN", TG_TOKEN)
        .stdin(std::process::Stdio::null());
    cmd
}

fn spawn_watch(app: &App, rx: &Receiver) -> Bg {
    app.spawn(guard_cmd(app, rx, &["watch"]))
}

fn guard_env(app: &App, rx: &Receiver, args: &[&str]) -> Run {
    let t = Instant::now();
    let out = guard_cmd(app, rx, args).output().unwrap();
    Run::of(out, t.elapsed())
}

fn stop(bg: Bg) -> Run {
    bg.signal(libc::SIGTERM);
    bg.finish(Duration::from_secs(15))
}

/// No secret of the app's env file, and no destination token, in anything sent.
fn assert_no_secret(rx: &Receiver) {
    for r in rx.requests() {
        for secret in [SECRET_DSN, "hunter2-the-sequel", TG_TOKEN, "slacksecret"] {
            assert!(
                !r.body.contains(secret),
                "{secret} sent to {}: {}",
                r.path,
                r.body
            );
        }
    }
}

#[test]
fn a_killed_process_is_one_crash_alert_everywhere_then_recovered_and_a_deploy_is_not_a_crash() {
    let app = App::new();
    app.start_v1();
    let rx = Receiver::start(0);
    app.write_config(&watch_config(&rx, ""));
    let metrics_port = free_port();
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let watch = app.spawn(guard_cmd(&app, &rx, &["watch", "--metrics", &metrics_addr]));
    let scrape = || {
        http_get(metrics_port, "/metrics")
            .filter(|(status, _)| *status == 200)
            .map(|(_, body)| body)
            .unwrap_or_default()
    };
    let sample = |text: &str, name: &str| -> Option<f64> {
        let prefix = format!("{name}{{app=\"{}\"}} ", app.name);
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.parse().ok())
    };
    assert!(
        wait_until(Duration::from_secs(10), || rx
            .requests()
            .iter()
            .filter(|r| r.path == "/beat")
            .count()
            >= 2),
        "no heartbeat: {:?}",
        rx.requests()
    );
    assert!(
        wait_until(Duration::from_secs(10), || {
            let t = scrape();
            sample(&t, "guard_instances_online") == Some(1.0)
                && sample(&t, "guard_health_probe_success") == Some(1.0)
        }),
        "{}",
        scrape()
    );

    // A guard deploy restarts the app: that is not a crash.
    app.release("v2", "good");
    app.guard(&["deploy"]).expect(0);
    std::thread::sleep(Duration::from_millis(800));
    assert!(
        rx.delivered("/hook").is_empty(),
        "{:?}",
        rx.delivered("/hook")
    );

    let pid = app.processes()[0].0 as i32;
    // SAFETY: kill(2) on the app's process, which this test started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    assert!(
        wait_until(Duration::from_secs(5), || !rx
            .events("/hook", "crash")
            .is_empty()),
        "no crash alert"
    );
    assert!(
        wait_until(Duration::from_secs(15), || !rx
            .events("/hook", "recovered")
            .is_empty()),
        "no recovered alert: {:?}",
        rx.delivered("/hook")
    );
    let crash = &rx.events("/hook", "crash")[0];
    for key in ["app", "host", "event", "severity", "message", "at"] {
        assert!(crash.get(key).is_some(), "{key} missing: {crash}");
    }
    assert_eq!(crash["app"], app.name);
    assert!(
        crash["at"]
            .as_str()
            .unwrap()
            .parse::<jiff::Timestamp>()
            .is_ok()
    );
    let recovered = &rx.events("/hook", "recovered")[0];
    assert_eq!(recovered["resolves"], "crash");
    assert_eq!(
        rx.events("/hook", "crash").len(),
        1,
        "{:?}",
        rx.delivered("/hook")
    );

    // The same two alerts went to Slack and Telegram, in their formats (each destination has
    // its own queue: they may arrive a moment after the webhook's).
    let tg_path = format!("/tg/bot{TG_TOKEN}/sendMessage");
    wait_until(Duration::from_secs(5), || {
        rx.delivered("/slack/T0/B0/slacksecret").len() >= 2 && rx.delivered(&tg_path).len() >= 2
    });
    let slack = rx.delivered("/slack/T0/B0/slacksecret");
    assert_eq!(slack.len(), 2, "{slack:?}");
    assert!(
        slack[0]["text"].as_str().unwrap().contains("crash"),
        "{slack:?}"
    );
    let tg = rx.delivered(&tg_path);
    assert_eq!(tg.len(), 2, "{tg:?}");
    assert_eq!(tg[0]["chat_id"], "-1001");
    assert_no_secret(&rx);

    // The metrics saw it too, and promtool takes them as valid Prometheus text.
    wait_until(Duration::from_secs(5), || {
        sample(&scrape(), "guard_alerts_sent_total").unwrap_or(0.0) >= 6.0
    });
    let text = scrape();
    assert_eq!(
        sample(&text, "guard_crash_episodes_total"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "guard_last_deploy_success"),
        Some(1.0),
        "{text}"
    );
    assert!(
        sample(&text, "guard_alerts_sent_total").unwrap_or(0.0) >= 6.0,
        "{text}"
    );
    assert!(!text.contains(SECRET_DSN));
    promtool_check(&text);

    let run = stop(watch);
    run.expect(0);
    assert!(run.stdout.contains("crash"), "{}", run.stdout);
    // The heartbeat stops with the watcher.
    let beats = || rx.requests().iter().filter(|r| r.path == "/beat").count();
    let after_stop = beats();
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(beats(), after_stop, "heartbeats after the watcher stopped");
}

#[test]
fn a_release_that_crash_loops_after_its_deploy_is_one_loop_alert_and_is_rolled_back() {
    let app = App::new();
    app.start_v1();
    let rx = Receiver::start(0);
    // PM2 gives up after 2 restarts of this release (max_restarts 3 counts the first start).
    app.write_config(
        &watch_config(&rx, r#"rollback_within = "5m""#)
            .replace("loop_restarts = 3", "loop_restarts = 2")
            .replace(r#"recover_after = "1s""#, r#"recover_after = "20s""#),
    );
    let watch = spawn_watch(&app, &rx);
    assert!(wait_until(Duration::from_secs(10), || !rx
        .requests()
        .is_empty()));

    // Passes the deploy's 1 s stable window (with room for a slow start on a loaded
    // machine), then crashes every 5 s under PM2's restarts.
    app.release_json(
        r#"{ "version": "v2", "mode": "crash-later", "crash_after_ms": 5000 }"#,
        "v2 crashes later",
    );
    let deploy = app.guard(&["--json", "deploy"]);
    deploy.expect(0);
    let incident = deploy.json()["incident"].as_str().unwrap().to_string();

    assert!(
        wait_until(Duration::from_secs(60), || !rx
            .events("/hook", "rolled_back")
            .is_empty()),
        "no automatic rollback: {:?}",
        rx.delivered("/hook")
    );
    let hook = rx.delivered("/hook");
    let count = |e: &str| hook.iter().filter(|b| b["event"] == e).count();
    assert_eq!(count("crash"), 1, "{hook:?}");
    assert_eq!(count("crash_loop"), 1, "{hook:?}");
    assert_eq!(count("auto_rollback"), 1, "sent as it starts: {hook:?}");
    let looped = &rx.events("/hook", "crash_loop")[0];
    assert!(looped["count"].as_u64().unwrap() >= 2, "{looped}");
    assert_eq!(looped["severity"], "critical");
    let rolled = &rx.events("/hook", "rolled_back")[0];
    assert_eq!(rolled["incident"], incident.as_str(), "{rolled}");
    assert_eq!(app.version().as_deref(), Some("v1"));
    assert_no_secret(&rx);

    // The rollback ran as `guard rollback` does: recorded, with the lock released.
    let history = app.guard(&["--json", "history"]);
    assert!(history.stdout.contains("rollback"), "{}", history.stdout);
    // What runs now is not crash-looping.
    app.guard(&["health"]).expect(0);
    stop(watch).expect(0);
}

#[test]
fn a_failing_health_check_alerts_after_n_failures_retries_a_failing_receiver_and_recovers() {
    let app = App::new();
    app.start_v1();
    // The receiver answers 500 to the first POST: the alert must still arrive, once.
    let rx = Receiver::start(1);
    app.write_config(&watch_config(&rx, ""));
    let watch = spawn_watch(&app, &rx);
    assert!(wait_until(Duration::from_secs(10), || !rx
        .requests()
        .is_empty()));

    std::fs::write(app.dir.join("health.fail"), "db down\n").unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || !rx
            .events("/hook", "health_failing")
            .is_empty()),
        "no health alert: {:?}",
        rx.requests()
    );
    let alert = &rx.events("/hook", "health_failing")[0];
    assert_eq!(alert["count"], 3, "{alert}");
    std::fs::remove_file(app.dir.join("health.fail")).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || !rx
            .events("/hook", "recovered")
            .is_empty()),
        "no recovered: {:?}",
        rx.delivered("/hook")
    );
    assert_eq!(rx.events("/hook", "health_failing").len(), 1);
    // The one 500 was retried: some destination got the same alert twice, answered once.
    let failed: Vec<_> = rx
        .requests()
        .into_iter()
        .filter(|r| r.status == 500)
        .collect();
    assert_eq!(failed.len(), 1);
    let retried = rx
        .requests()
        .into_iter()
        .filter(|r| r.path == failed[0].path && r.body == failed[0].body && r.status == 200)
        .count();
    assert_eq!(retried, 1, "the failed delivery was not retried once");

    // A deploy that fails and rolls back is alerted by the deploy itself.
    app.release("v2", "crash-at-start");
    let deploy = guard_env(&app, &rx, &["--json", "deploy"]);
    deploy.expect(3);
    let sent = rx.events("/hook", "deploy_rolled_back");
    assert_eq!(sent.len(), 1, "{:?}", rx.delivered("/hook"));
    assert_eq!(sent[0]["incident"], deploy.json()["incident"]);
    assert!(
        deploy.json()["steps"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "alert" && s["state"] == "ok"),
        "{}",
        deploy.stdout
    );
    assert_no_secret(&rx);
    stop(watch).expect(0);
}

#[test]
fn health_says_crash_loop_while_a_probe_still_answers() {
    let app = App::new();
    app.write_config("\n[watch]\nloop_restarts = 2\nloop_window = \"5m\"\n");
    app.release_json(
        r#"{ "version": "v1", "mode": "crash-later", "crash_after_ms": 1500 }"#,
        "crashes after 1.5 s",
    );
    git(&app.dir, &["pull", "-q", "--ff-only"]);
    let eco = app.dir.join("ecosystem.config.js");
    assert!(app.pm2(&["start", eco.to_str().unwrap()]).status.success());
    // Two crash restarts, and the third process answering between crashes.
    assert!(
        wait_until(Duration::from_secs(15), || {
            let p = app.processes();
            p.first().is_some_and(|p| p.2 >= 2 && p.1 == "online") && app.version().is_some()
        }),
        "{:?}",
        app.processes()
    );
    let run = app.guard(&["--json", "health"]);
    run.expect(1);
    let data = &run.json()["data"];
    assert_eq!(data["crash_looping"], true, "{data}");
    assert!(data["restarts_recent"].as_u64().unwrap() >= 2, "{data}");
    assert!(
        run.json()["reason"]
            .as_str()
            .unwrap()
            .contains("crash loop")
    );
}

#[test]
fn watch_refuses_an_alert_token_it_cannot_read_naming_it() {
    let app = App::new();
    app.write_config("\n[[alert.slack]]\nurl_env = \"GUARD_TEST_NO_SUCH_VAR\"\n");
    let run = app.guard(&["watch"]);
    run.expect(2);
    assert!(
        run.stderr.contains("GUARD_TEST_NO_SUCH_VAR"),
        "{}",
        run.stderr
    );
    let run = app.guard(&["--json", "watch"]);
    run.expect(2);
    assert_eq!(run.json()["exit_code"], 2);
}

#[test]
fn a_closed_stderr_never_costs_guard_its_signal_handling() {
    // A parent that stopped reading (an ssh session gone, a supervisor restarted): every log
    // line then fails to write, which must not kill the task that handles SIGTERM.
    let app = App::new();
    app.start_v1();
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut child = app
        .guard_cmd(&["-v", "watch"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(writer)
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(
        wait_until(Duration::from_secs(8), || child
            .try_wait()
            .unwrap()
            .is_some()),
        "guard watch ignored SIGTERM with a closed stderr"
    );
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

#[test]
fn memory_and_artifacts_are_one_alert_each_and_systemd_hears_ready_and_the_watchdog() {
    use std::os::unix::net::UnixDatagram;
    let app = App::new();
    app.start_v1();
    let rx = Receiver::start(0);
    // Any Node process is above 1 MB: one memory_high, not one per check.
    app.write_config(&watch_config(&rx, r#"max_memory = "1MB""#));
    let sock_dir = tempfile::tempdir().unwrap();
    let sock_path = sock_dir.path().join("notify");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut cmd = guard_cmd(&app, &rx, &["watch"]);
    cmd.env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "400000");
    let watch = app.spawn(cmd);
    let mut said = Vec::new();
    let mut buf = [0u8; 256];
    while said.len() < 3 {
        let n = sock
            .recv(&mut buf)
            .expect("no sd_notify message from guard watch");
        said.push(String::from_utf8_lossy(&buf[..n]).to_string());
    }
    assert!(said.iter().any(|m| m == "READY=1"), "{said:?}");
    assert!(
        said.iter().filter(|m| *m == "WATCHDOG=1").count() >= 1,
        "{said:?}"
    );

    assert!(
        wait_until(Duration::from_secs(10), || !rx
            .events("/hook", "memory_high")
            .is_empty()),
        "no memory alert: {:?}",
        rx.delivered("/hook")
    );
    // The incident's stale dist/ appears in the app folder.
    std::fs::create_dir(app.dir.join("dist")).unwrap();
    std::fs::write(app.dir.join("dist/index.js"), "// stale\n").unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || !rx
            .events("/hook", "artifacts")
            .is_empty()),
        "no artifacts alert: {:?}",
        rx.delivered("/hook")
    );
    assert!(
        rx.events("/hook", "artifacts")[0]["message"]
            .as_str()
            .unwrap()
            .contains("dist/")
    );
    std::fs::remove_dir_all(app.dir.join("dist")).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || rx
            .events("/hook", "recovered")
            .iter()
            .any(|e| e["resolves"] == "artifacts")),
        "{:?}",
        rx.delivered("/hook")
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(rx.events("/hook", "memory_high").len(), 1);
    assert_eq!(rx.events("/hook", "artifacts").len(), 1);
    let run = stop(watch);
    run.expect(0);
    // STOPPING=1 on the way out.
    let mut stopping = false;
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    while let Ok(n) = sock.recv(&mut buf) {
        stopping |= &buf[..n] == b"STOPPING=1";
    }
    assert!(stopping, "no STOPPING=1");
}

#[test]
fn success_events_go_only_where_asked_and_name_the_ref() {
    let app = App::new();
    app.start_v1();
    let rx = Receiver::start(0);
    app.write_config(&format!(
        r#"
[[alert.webhook]]
url = "{all}"
events = ["deploy_started", "deploy_succeeded", "rollback_succeeded"]

[[alert.webhook]]
url = "{problems}"
"#,
        all = rx.url("/all"),
        problems = rx.url("/problems"),
    ));
    app.release("v2", "good");
    app.guard(&["deploy", "--ref", "v2"]).expect(0);
    app.guard(&["rollback", "latest"]).expect(0);
    let all: Vec<String> = rx
        .delivered("/all")
        .iter()
        .map(|b| b["event"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        all,
        ["deploy_started", "deploy_succeeded", "rollback_succeeded"],
        "{:?}",
        rx.delivered("/all")
    );
    let started = &rx.events("/all", "deploy_started")[0];
    assert_eq!(started["ref"], "v2", "{started}");
    assert_eq!(started["severity"], "info");
    assert!(
        rx.delivered("/problems").is_empty(),
        "problems only by default: {:?}",
        rx.delivered("/problems")
    );
    // A name that is not a success event is refused with where it is.
    app.write_config(&format!(
        "\n[[alert.webhook]]\nurl = \"{}\"\nevents = [\"crash\"]\n",
        rx.url("/x")
    ));
    let bad = app.guard(&["deploy"]);
    bad.expect(2);
    assert!(bad.stderr.contains("alert.webhook #1"), "{}", bad.stderr);
}

/// `promtool check metrics` (Debian's prometheus package; `scripts/test.sh` installs it) on
/// the scraped text: the format and Prometheus' naming rules.
fn promtool_check(text: &str) {
    use std::io::Write;
    let promtool = ["/usr/bin/promtool", "/usr/local/bin/promtool"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or_else(|| {
            panic!("promtool is needed to check guard watch --metrics: run `apt-get install -y prometheus` (scripts/test.sh does it as root)")
        });
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
