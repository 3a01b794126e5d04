//! Faults: concurrent runs, kill -9 at every stage, hang-ups and interrupts. Whatever happens
//! to guard, the previous version can be brought back and no lock is left behind.

use std::time::Duration;

use crate::support::App;

const LONG: Duration = Duration::from_secs(60);

#[test]
fn a_second_deploy_fails_at_once_with_exit_5_and_changes_nothing() {
    let app = App::new();
    app.start_v1();
    let count = app.incidents().len();
    let first = app.spawn_guard(&["deploy", "--", "sleep", "3"]);
    // Past its backup, in the deploy step.
    assert!(crate::support::wait_until(LONG, || app.lock_recorded()
        && app.incidents().len() > count));
    let before = app.state();
    let second = app.guard(&["deploy"]);
    second.expect(5);
    assert!(
        second.stderr.contains(&format!("pid {}", first.pid())),
        "names the holder: {}",
        second.stderr
    );
    assert!(
        second.took < Duration::from_secs(5),
        "fails at once, took {:?}",
        second.took
    );
    assert_eq!(app.state(), before, "the refused run changed nothing");
    app.guard(&["rollback", "--incident", "latest"]).expect(5);
    first.finish(LONG).expect(0);
    // Released on exit: the next run gets it without a take-over warning.
    let run = app.guard(&["backup"]);
    run.expect(0);
    assert!(!run.stdout.contains("took over"), "{}", run.stdout);
}

#[test]
fn kill_9_during_the_deploy_step_then_rollback_latest_restores_the_previous_version() {
    let app = App::new();
    app.start_v1();
    let v1 = app.head();
    app.release("v2", "good");
    let bg = app.spawn_guard(&["deploy", "--", "sh", "-c", "git pull --ff-only && sleep 30"]);
    assert!(
        crate::support::wait_until(LONG, || app.head() != v1),
        "the pull happened"
    );
    bg.signal(libc::SIGKILL);
    bg.finish(LONG);
    let run = app.guard(&["rollback", "--incident", "latest"]);
    run.expect(0);
    assert!(run.stdout.contains("took over the lock"), "{}", run.stdout);
    assert_eq!(app.head(), v1);
    assert_eq!(app.version().as_deref(), Some("v1"));
}

#[test]
fn kill_9_during_verification_then_rollback_latest_restores_the_previous_version() {
    let app = App::new();
    app.edit_config("stable_for = \"1s\"", "stable_for = \"20s\"");
    app.start_v1();
    app.release_json(
        r#"{ "version": "v2", "mode": "crash-later", "crash_after_ms": 4000 }"#,
        "v2",
    );
    let bg = app.spawn_guard(&["deploy"]);
    assert!(
        crate::support::wait_until(LONG, || app.version().as_deref() == Some("v2")),
        "v2 is being verified"
    );
    bg.signal(libc::SIGKILL);
    bg.finish(LONG);
    // The long window was only needed to catch guard verifying.
    app.edit_config("stable_for = \"20s\"", "stable_for = \"1s\"");
    app.guard(&["rollback", "--incident", "latest"]).expect(0);
    assert_eq!(app.version().as_deref(), Some("v1"));
    app.guard(&["health", "--wait"]).expect(0);
}

#[test]
fn kill_9_during_a_rollback_then_rollback_latest_still_works() {
    let app = App::new();
    app.start_v1();
    app.release("v2", "good");
    app.guard(&["deploy"]).expect(0);
    let before_v2 = app.incidents().last().unwrap().clone();
    let count = app.incidents().len();
    let bg = app.spawn_guard(&["rollback", "--incident", &before_v2]);
    // Kill it right after its pre-rollback snapshot, once it has begun to restore.
    assert!(crate::support::wait_until(LONG, || app.incidents().len()
        > count
        && app.lock_says("\"phase\":\"changing\"")));
    bg.signal(libc::SIGKILL);
    bg.finish(LONG);
    // `rollback latest`, the word form (`--incident latest` works the same).
    let run = app.guard(&["rollback", "latest"]);
    run.expect(0);
    assert!(
        run.stdout.contains(&before_v2),
        "latest is the pre-deploy incident, not the pre-rollback one: {}",
        run.stdout
    );
    assert_eq!(app.version().as_deref(), Some("v1"));
}

#[test]
fn sighup_to_the_process_group_never_stops_a_bad_deploy_half_way() {
    let app = App::new();
    app.start_v1();
    app.release("v2", "crash-at-start");
    let mut bg = app.spawn_guard(&["deploy", "--", "sh", "-c", "git pull --ff-only && sleep 1"]);
    // The operator's ssh drops, again and again, through every step from the lock on. (Before
    // guard's main runs, between fork and exec, a hang-up would kill any program.)
    assert!(crate::support::wait_until(LONG, || app.lock_recorded()));
    while bg.running() {
        bg.signal_group(libc::SIGHUP);
        std::thread::sleep(Duration::from_millis(200));
    }
    let run = bg.finish(LONG);
    run.expect(3);
    assert_eq!(app.version().as_deref(), Some("v1"));
    let audit = std::fs::read_to_string(app.backups.join("audit.log")).unwrap();
    assert!(
        audit.lines().last().unwrap().contains("\"exit_code\":3"),
        "the verdict is recorded"
    );
}

#[test]
fn sigint_before_the_restart_stops_cleanly_and_changes_nothing() {
    let app = App::new();
    app.start_v1();
    let pid = app.processes()[0].0;
    let env = app.read("env.env");
    let bg = app.spawn_guard(&[
        "deploy",
        "--",
        "sh",
        "-c",
        "echo PORT=1 > env.env; sleep 30",
    ]);
    assert!(
        crate::support::wait_until(LONG, || app.read("env.env") != env),
        "the deploy step runs"
    );
    bg.signal(libc::SIGINT);
    let run = bg.finish(Duration::from_secs(20));
    run.expect(130);
    assert_eq!(app.read("env.env"), env, "files are back");
    assert_eq!(app.processes()[0].0, pid, "the running app was not touched");
    app.guard(&["backup"]).expect(0);
}

#[test]
fn sigterm_after_the_restart_rolls_back_then_exits_143() {
    let app = App::new();
    let bg = deploy_v2_into_a_long_verification(&app);
    bg.signal(libc::SIGTERM);
    let run = bg.finish(LONG);
    run.expect(143);
    assert!(run.stdout.contains("restore"), "{}", run.stdout);
    assert_eq!(app.version().as_deref(), Some("v1"));
}

#[test]
fn a_second_sigint_exits_at_once_and_leaves_no_blocking_lock() {
    let app = App::new();
    let bg = deploy_v2_into_a_long_verification(&app);
    bg.signal(libc::SIGINT);
    std::thread::sleep(Duration::from_millis(50));
    bg.signal(libc::SIGINT);
    let run = bg.finish(Duration::from_secs(10));
    run.expect(130);
    app.edit_config("stable_for = \"8s\"", "stable_for = \"1s\"");
    app.guard(&["rollback", "--incident", "latest"]).expect(0);
    assert_eq!(app.version().as_deref(), Some("v1"));
}

/// Start deploying a good v2 with an 8 s stability window; return once v2 answers, so guard is
/// past the restart and verifying.
fn deploy_v2_into_a_long_verification(app: &App) -> crate::support::Bg {
    app.edit_config("stable_for = \"1s\"", "stable_for = \"8s\"");
    app.start_v1();
    app.release("v2", "good");
    let bg = app.spawn_guard(&["deploy"]);
    assert!(crate::support::wait_until(LONG, || app
        .version()
        .as_deref()
        == Some("v2")));
    bg
}

#[test]
fn kill_9_during_a_snapshot_then_rollback_latest_recovers() {
    let app = App::new();
    app.start_v1();
    let good = app.backup_id();
    // Thousands of new files, so the next snapshot has a while of reading and storing.
    for p in 0..400 {
        let dir = app.dir.join(format!("node_modules/pkg{p}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..10 {
            std::fs::write(
                dir.join(format!("f{f}.js")),
                format!("{p}-{f}-").repeat(300),
            )
            .unwrap();
        }
    }
    app.release("v2", "good");
    let bg = app.spawn_guard(&["deploy"]);
    let drafting = || {
        std::fs::read_dir(&app.backups)
            .map(|rd| {
                rd.flatten().any(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with(".tmp-incident-")
                })
            })
            .unwrap_or(false)
    };
    assert!(
        crate::support::wait_until(LONG, drafting),
        "no snapshot started"
    );
    bg.signal(libc::SIGKILL);
    bg.finish(LONG);
    assert_eq!(
        app.incidents(),
        std::slice::from_ref(&good),
        "a killed snapshot leaves no incident"
    );
    // The dead run changed nothing: `latest` restores nothing (the newest snapshot is older
    // than what runs) and says so.
    let run = app.guard(&["rollback", "--incident", "latest"]);
    run.expect(0);
    assert!(run.stdout.contains("nothing to restore"), "{}", run.stdout);
    assert_eq!(app.version().as_deref(), Some("v1"));
    assert_eq!(
        app.incidents(),
        std::slice::from_ref(&good),
        "nothing was taken or restored"
    );
    app.guard(&["backup"]).expect(0);
    assert!(
        !drafting(),
        "the half-written snapshot was swept by the next snapshot"
    );
}

#[test]
fn kill_9_during_the_deploy_step_stops_the_step_before_the_next_run_goes_on() {
    let app = App::new();
    app.start_v1();
    app.release("v2", "good");
    let bg = app.spawn_guard(&[
        "deploy",
        "--",
        "sh",
        "-c",
        // As a git command killed half-way leaves it: its index lock.
        "git pull --ff-only && touch .git/index.lock && touch ready && sleep 3 && echo late > late.txt",
    ]);
    let said = kill_9_when_ready_then_rollback_latest_stops_it(
        &app,
        bg,
        "ready",
        "late.txt",
        &["rollback", "--incident", "latest"],
    );
    // The killed step's git left its index lock; the next run removed it (app.dir's own .git).
    assert!(said.contains("index.lock"), "{said}");
    assert!(!app.dir.join(".git/index.lock").exists());

    // The same for a `before_restart` hook (a migration) killed with guard.
    app.write_config(
        "\n[hooks]\nbefore_restart = \"touch hook-ready && sleep 3 && echo late > hook-late.txt\"\n",
    );
    let bg = app.spawn_guard(&["deploy"]);
    kill_9_when_ready_then_rollback_latest_stops_it(
        &app,
        bg,
        "hook-ready",
        "hook-late.txt",
        &["rollback", "latest"],
    );
}

/// Once guard recorded its child's process group and the child wrote `ready`, kill -9 guard;
/// then `guard rollback latest` must stop that child (it never writes `late`) and bring v1 back.
fn kill_9_when_ready_then_rollback_latest_stops_it(
    app: &App,
    bg: crate::support::Bg,
    ready: &str,
    late: &str,
    rollback: &[&str],
) -> String {
    assert!(crate::support::wait_until(LONG, || app
        .lock_says("child_pgid")
        && app.dir.join(ready).exists()));
    bg.signal(libc::SIGKILL);
    bg.finish(LONG);
    let run = app.guard(rollback);
    run.expect(0);
    assert!(
        run.stdout
            .contains("stopped the dead run's deploy step or hook"),
        "{}",
        run.stdout
    );
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        !app.dir.join(late).exists(),
        "the orphaned child wrote after the rollback"
    );
    assert_eq!(app.version().as_deref(), Some("v1"));
    run.stdout.clone()
}

#[test]
fn two_configs_of_one_app_with_different_backup_dirs_exclude_each_other() {
    let app = App::new();
    app.start_v1();
    app.release("v2", "good");
    let other = app.root.path().join("other.toml");
    std::fs::write(
        &other,
        std::fs::read_to_string(&app.config)
            .unwrap()
            .replace("dir = \"backups\"", "dir = \"backups-of-another-operator\""),
    )
    .unwrap();
    let bg = app.spawn_guard(&["deploy", "--", "sh", "-c", "git pull --ff-only && sleep 2"]);
    assert!(crate::support::wait_until(LONG, || app.lock_says("child_pgid")));
    let second = app.guard_with(&other, &["deploy"]);
    second.expect(5);
    assert!(
        second.stderr.contains("another guard run is changing"),
        "{}",
        second.stderr
    );
    bg.finish(LONG).expect(0);
}

#[test]
fn rollback_latest_after_a_killed_rollback_finishes_its_job() {
    let app = App::new();
    app.start_v1();
    app.release("v2", "good");
    app.guard(&["deploy"]).expect(0);
    assert_eq!(app.version().as_deref(), Some("v2"));
    // What a `guard rollback latest` killed by -9 during its own snapshot leaves: a lock
    // record of a dead pid that had not begun to change the app.
    let dead = serde_json::json!({
        "pid": 999_999,
        "host": std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim(),
        "user": "root",
        "started_at": "2026-12-02T00:00:00.000Z",
        "command": "guard rollback latest",
        "subcommand": "rollback",
    });
    std::fs::write(
        app.backups.join("guard-demo-backend.lock"),
        dead.to_string(),
    )
    .unwrap();
    let run = app.guard(&["rollback", "latest"]);
    run.expect(0);
    assert!(run.stdout.contains("took over the lock"), "{}", run.stdout);
    assert!(!run.stdout.contains("nothing to restore"), "{}", run.stdout);
    assert_eq!(
        app.version().as_deref(),
        Some("v1"),
        "the operator's intent: go back"
    );
}
