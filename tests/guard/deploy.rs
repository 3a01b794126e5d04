//! `guard deploy` end to end: good, bad and the incident's own failure.

use crate::support::{App, SECRET_DSN};

#[test]
fn first_deploy_starts_the_app_and_a_good_release_replaces_it() {
    let app = App::new();
    let first = app.guard(&["deploy"]);
    first.expect(0);
    assert!(first.stdout.contains("first start"), "{}", first.stdout);
    assert_eq!(app.version().as_deref(), Some("v1"));

    app.release("v2", "good");
    let run = app.guard(&["--json", "deploy"]);
    run.expect(0);
    assert_eq!(app.version().as_deref(), Some("v2"));
    let doc = run.json();
    assert!(
        doc["reason"]
            .as_str()
            .unwrap()
            .contains("deployed and verified healthy"),
        "{doc}"
    );
    // Check first, back up before anything changes; clean before and after the deploy step.
    let steps: Vec<&str> = doc["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps[..9],
        [
            "check",
            "backup",
            "clean",
            "deploy step",
            "clean again",
            "ecosystem",
            "restart",
            "verify",
            "pm2 save"
        ],
        "{}",
        run.stdout
    );
    // pm2 save ran: the dump lists the app, so a reboot brings it back.
    let dump = std::fs::read_to_string(app.pm2_home.join("dump.pm2")).unwrap();
    assert!(dump.contains("demo-backend"));
    // Two deploys, two pre-deploy incidents, each with a verified manifest.
    assert_eq!(app.incidents().len(), 2);
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(app.incident_dir(&app.incidents()[1]).join("manifest.json"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["kind"], "pre-deploy");
    assert_eq!(manifest["format"], 2);
    assert_eq!(manifest["parts"][0]["kind"], "tree");
    assert!(manifest["parts"][0]["files"].as_u64().unwrap() >= 5);
    assert_eq!(manifest["processes"][0]["status"], "online");
    assert!(manifest["parts"][1]["commit"].as_str().unwrap().len() == 40);
    assert!(
        manifest["parts"][2]["file"]["sha256"]
            .as_str()
            .unwrap()
            .len()
            == 64
    );
}

#[test]
fn release_that_crashes_at_start_is_rolled_back_with_exit_3() {
    let app = App::new();
    app.start_v1();
    let v1_head = app.head();
    app.release("v2", "crash-at-start");
    let run = app.guard(&["deploy"]);
    run.expect(3);
    assert_eq!(
        app.version().as_deref(),
        Some("v1"),
        "the previous version serves again"
    );
    assert_eq!(app.head(), v1_head, "the code is back on v1");
    assert!(run.stdout.contains("crashed at start"), "{}", run.stdout);
    assert!(run.stdout.contains("rolled back"), "{}", run.stdout);
    // The crash log is evidence in the incident, with the secret masked everywhere.
    let id = app.incidents().pop().unwrap();
    let log = std::fs::read_to_string(app.incident_dir(&id).join("logs/demo-backend-0-error.log"))
        .unwrap();
    assert!(log.contains("SENTRY_DSN=***"), "{log}");
    assert!(!run.all().contains(SECRET_DSN));
    assert!(!log.contains(SECRET_DSN));
    let outcome = std::fs::read_to_string(app.incident_dir(&id).join("outcome.json")).unwrap();
    assert!(outcome.contains("rolled back"), "{outcome}");
}

#[test]
fn health_500_is_rolled_back_with_exit_3() {
    let app = App::new();
    app.start_v1();
    app.release("v2", "health-500");
    let run = app.guard(&["--json", "deploy"]);
    run.expect(3);
    let doc = run.json();
    assert_eq!(doc["exit_code"], 3);
    assert_eq!(doc["verdict"], "rolled back");
    assert!(
        doc["reason"].as_str().unwrap().contains("health 500"),
        "{doc}"
    );
    assert!(doc["incident"].is_string());
    assert_eq!(app.version().as_deref(), Some("v1"));
}

#[test]
fn broken_ecosystem_is_caught_before_the_restart_and_restored() {
    let app = App::new();
    app.start_v1();
    let good = app.read("ecosystem.config.js");
    let pid_before = app.processes()[0].0;
    app.push(
        &[(
            "ecosystem.config.js",
            "module.exports = { apps: [ { name: 'demo-backend', \n",
        )],
        "broken ecosystem",
    );
    let run = app.guard(&["deploy"]);
    run.expect(3);
    assert_eq!(
        app.read("ecosystem.config.js"),
        good,
        "the ecosystem file is restored"
    );
    assert_eq!(
        app.processes()[0].0,
        pid_before,
        "the running process was never touched"
    );
    assert_eq!(app.version().as_deref(), Some("v1"));
    assert!(run.stdout.contains("does not load"), "{}", run.stdout);
}

#[test]
fn ecosystem_that_loads_but_starts_nothing_is_rolled_back() {
    let app = App::new();
    app.start_v1();
    let good = app.read("ecosystem.config.js");
    // Loads fine, but points PM2 at a script that does not exist: only the restart can tell.
    app.push(
        &[(
            "ecosystem.config.js",
            &good.replace("script: 'server.js'", "script: 'missing.js'"),
        )],
        "bad script",
    );
    app.guard(&["deploy"]).expect(3);
    assert_eq!(app.read("ecosystem.config.js"), good);
    assert_eq!(app.version().as_deref(), Some("v1"));
}

#[test]
fn the_incident_itself_a_stale_dist_is_cleaned_and_the_deploy_succeeds() {
    let app = App::new();
    app.start_v1();
    app.release("v2", "good");
    // The deploy step of the report: pull, then `npm run build` leaves an ESM dist/ that
    // crashes the CommonJS app when it loads.
    let build = "git pull --ff-only && mkdir -p dist && echo 'export default 1;' > dist/index.js";
    let run = app.guard(&["deploy", "--", "sh", "-c", build]);
    run.expect(0);
    assert!(run.stdout.contains("removed dist/"), "{}", run.stdout);
    assert!(!app.dir.join("dist").exists());
    assert_eq!(app.version().as_deref(), Some("v2"));
}

#[test]
fn failed_deploy_step_restores_files_and_leaves_the_running_app_alone() {
    let app = App::new();
    app.start_v1();
    let pid_before = app.processes()[0].0;
    let head = app.head();
    let env_before = app.read("env.env");
    // A half-done step: it changes the env file, moves HEAD, prints a secret, then fails.
    let step = format!(
        "echo 'PORT=1' > env.env; git -c user.email=x@guard.invalid -c user.name=x commit -q --allow-empty -m half; echo 'uploading to {SECRET_DSN}'; exit 7"
    );
    let run = app.guard(&["deploy", "--", "sh", "-c", &step]);
    run.expect(3);
    assert!(run.stdout.contains("exit 7"), "{}", run.stdout);
    assert!(
        run.stdout.contains("uploading to ***"),
        "the step's output is shown, masked: {}",
        run.stdout
    );
    assert!(!run.all().contains(SECRET_DSN));
    assert_eq!(app.read("env.env"), env_before, "the env file is back");
    let reflog = std::process::Command::new("git")
        .arg("-C")
        .arg(&app.dir)
        .args(["reflog", "--format=%gs"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&reflog.stdout).contains("commit: half"),
        "the step did move HEAD"
    );
    assert_eq!(app.head(), head, "and HEAD is back");
    assert_eq!(app.processes()[0].0, pid_before);
    assert_eq!(app.version().as_deref(), Some("v1"));
}

#[test]
fn no_rollback_leaves_the_failure_for_a_human_with_exit_4() {
    let app = App::new();
    app.start_v1();
    app.release("v2", "health-500");
    let run = app.guard(&["deploy", "--no-rollback"]);
    run.expect(4);
    assert!(
        run.stdout.contains("guard rollback --incident"),
        "{}",
        run.stdout
    );
    assert_eq!(app.version(), None, "v2 still answers 500");
}

#[test]
fn an_error_after_the_backup_is_exit_4_and_names_the_incident() {
    let app = App::new();
    app.start_v1();
    // A deploy step that wrecks the work tree and fails: the restore cannot put the code back.
    let run = app.guard(&["deploy", "--", "sh", "-c", "rm -rf .git; exit 1"]);
    run.expect(4);
    let id = app.incidents().pop().unwrap();
    assert!(
        run.stdout
            .contains(&format!("guard rollback --incident {id}")),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("not a git work tree"), "{}", run.stdout);
    let outcome = std::fs::read_to_string(app.incident_dir(&id).join("outcome.json")).unwrap();
    assert!(outcome.contains("\"exit_code\": 4"), "{outcome}");
}

#[test]
fn a_release_whose_script_does_not_exist_is_refused_before_the_running_app_is_touched() {
    let app = App::new();
    app.start_v1();
    let pid = app.processes()[0].0;
    let eco = std::fs::read_to_string(app.work.join("ecosystem.config.js"))
        .unwrap()
        .replace("script: 'server.js'", "script: 'dist/main.js'");
    app.push(
        &[("ecosystem.config.js", &eco)],
        "v2 names a script the build never wrote",
    );
    let poller = crate::support::Poller::start(app.port);
    let run = app.guard(&["--json", "deploy"]);
    let (total, failed) = poller.stop();
    run.expect(3);
    assert!(
        failed.is_empty(),
        "{} of {total} requests failed: {failed:?}",
        failed.len()
    );
    let doc = run.json();
    let step = doc["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "ecosystem")
        .unwrap();
    assert_eq!(step["state"], "failed", "{step}");
    assert!(
        step["detail"].as_str().unwrap().contains("dist/main.js"),
        "{step}"
    );
    assert!(
        doc["data"]["verdict"].is_null(),
        "nothing was restarted: {doc}"
    );
    assert_eq!(app.processes()[0].0, pid, "the same process still serves");
    assert!(
        app.read("ecosystem.config.js").contains("server.js"),
        "files put back"
    );
}

#[test]
fn a_deploy_after_pm2_lost_its_list_never_saves_a_list_without_the_other_apps() {
    let app = App::new();
    app.start_v1();
    // A second app in the same PM2, saved with it.
    let other = app.root.path().join("worker.js");
    std::fs::write(&other, "setInterval(() => {}, 1000);\n").unwrap();
    assert!(
        app.pm2(&["start", other.to_str().unwrap(), "--name", "worker"])
            .status
            .success()
    );
    assert!(app.pm2(&["save", "--force"]).status.success());
    // The daemon dies and comes back without `pm2 resurrect`: only what guard starts runs.
    assert!(app.pm2(&["kill"]).status.success());
    app.release("v2", "good");
    let run = app.guard(&["--json", "deploy"]);
    run.expect(0);
    let dump = std::fs::read_to_string(app.pm2_home.join("dump.pm2")).unwrap();
    assert!(
        dump.contains("\"worker\""),
        "a reboot still brings the worker back"
    );
    let doc = run.json();
    let save = doc["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "pm2 save")
        .unwrap();
    assert_eq!(save["state"], "warn", "{save}");
    let detail = save["detail"].as_str().unwrap();
    assert!(
        detail.contains("worker") && detail.contains("pm2 resurrect"),
        "{detail}"
    );
}

#[test]
fn a_deploy_step_that_leaves_a_background_child_holding_its_output_does_not_hold_guard() {
    let app = App::new();
    app.start_v1();
    let run = app.guard(&[
        "--json",
        "deploy",
        "--",
        "sh",
        "-c",
        "echo pulled; sleep 25 &",
    ]);
    run.expect(0);
    assert!(
        run.took < std::time::Duration::from_secs(20),
        "guard waited for the background child: {:?}",
        run.took
    );
    let doc = run.json();
    let step = doc["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "deploy step")
        .unwrap();
    assert_eq!(step["state"], "warn", "{step}");
    assert!(
        step["detail"].as_str().unwrap().contains("(sleep)"),
        "{step}"
    );
}

#[test]
fn a_failing_migration_hook_leaves_the_running_app_untouched_and_hooks_see_the_run() {
    let app = App::new();
    app.start_v1();
    let pid = app.processes()[0].0;
    let seen = app.root.path().join("hook-env");
    // The migration prints the env file (a careless script): its secrets stay masked.
    app.write_config(&format!(
        "\n[hooks]\nbefore_restart = \"cat env.env; echo migration failed >&2; exit 1\"\nafter_failure = \"env | grep ^GUARD_ | sort > {}\"\n",
        seen.display()
    ));
    app.release("v2", "good");
    let run = app.guard(&["--json", "deploy", "--ref", "v2"]);
    run.expect(3);
    assert!(!run.all().contains(SECRET_DSN), "{}", run.all());
    let doc = run.json();
    let hook = doc["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "hook")
        .unwrap();
    assert_eq!(hook["state"], "failed", "{hook}");
    assert!(
        doc["data"]["verdict"].is_null(),
        "nothing was restarted: {doc}"
    );
    assert_eq!(app.processes()[0].0, pid, "the same process still serves");
    assert_eq!(app.version().as_deref(), Some("v1"));
    let env = std::fs::read_to_string(&seen).unwrap();
    for want in [
        "GUARD_HOOK=after_failure",
        "GUARD_EXIT_CODE=3",
        "GUARD_REF=v2",
        "GUARD_STRATEGY=restart",
    ] {
        assert!(env.contains(want), "{want} missing:\n{env}");
    }
    let incident = doc["incident"].as_str().unwrap();
    let saved = std::fs::read_to_string(
        app.incident_dir(incident)
            .join("logs/hook-before_restart.log"),
    )
    .unwrap();
    assert!(
        saved.contains("migration failed") && !saved.contains(SECRET_DSN),
        "{saved}"
    );
}
