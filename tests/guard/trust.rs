//! Trust, round 2: what an attacker and a bad day got through, each as a regression test.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use crate::support::{App, SECRET_DSN, serve};

#[test]
fn the_rollback_target_is_never_pruned_by_its_own_pre_rollback_snapshot() {
    let app = App::new();
    app.start_v1();
    let old = app.backup_id();
    // Older than the hour retention always keeps.
    let path = app.incident_dir(&old).join("manifest.json");
    let mut m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    m["created_at"] = "2020-01-01T00:00:00.000Z".into();
    std::fs::write(&path, m.to_string()).unwrap();
    app.release("v2", "good");
    app.guard(&["deploy"]).expect(0);
    app.edit_config("dir = \"backups\"", "dir = \"backups\"\nkeep = 1");
    let run = app.guard(&["rollback", "--incident", &old]);
    run.expect(0);
    assert_eq!(app.version().as_deref(), Some("v1"));
    assert!(
        app.incidents().contains(&old),
        "the target survived retention"
    );
}

#[test]
fn incidents_of_another_app_in_the_same_backup_dir_are_never_used() {
    let app = App::new();
    app.start_v1();
    let id = app.backup_id();
    // What a worker sharing backup.dir would have written.
    app.edit_manifest(
        &id,
        "\"app_name\": \"demo-backend\"",
        "\"app_name\": \"worker\"",
    );
    let run = app.guard(&["rollback", "--incident", &id]);
    run.expect(2);
    assert!(
        run.stderr.contains("belongs to app worker"),
        "{}",
        run.stderr
    );
    let latest = app.guard(&["rollback", "--incident", "latest"]);
    latest.expect(2);
    let list = app.guard(&["--json", "list"]).json();
    assert_eq!(list["data"]["incidents"].as_array().unwrap().len(), 0);
}

#[test]
fn an_incident_of_another_folder_with_the_same_app_name_is_never_restored() {
    let app = App::new();
    app.start_v1();
    // Green: the same PM2 name in another folder, sharing blue's backup.dir.
    let green = app.root.path().join("green");
    std::fs::create_dir(&green).unwrap();
    for f in [
        "ecosystem.config.js",
        "env.env",
        "package.json",
        "server.js",
        "release.json",
    ] {
        std::fs::copy(app.dir.join(f), green.join(f)).unwrap();
    }
    std::fs::write(
        green.join("env.env"),
        "PORT=1\nSENTRY_DSN=green-secret-dsn\n",
    )
    .unwrap();
    let green_config = app.root.path().join("green.toml");
    std::fs::write(
        &green_config,
        std::fs::read_to_string(&app.config)
            .unwrap()
            .replace("dir = \"app\"", "dir = \"green\""),
    )
    .unwrap();
    app.guard_with(&green_config, &["backup"]).expect(0);
    let green_id = app.incidents().last().unwrap().clone();
    let before = app.read("env.env");
    let run = app.guard(&["rollback", &green_id]);
    run.expect(2);
    assert!(
        run.stderr.contains("was taken of") && run.stderr.contains("green"),
        "names both folders: {}",
        run.stderr
    );
    // `latest` passes over it: blue has no incident of its own yet.
    app.guard(&["rollback", "latest"]).expect(2);
    assert_eq!(
        app.read("env.env"),
        before,
        "nothing of green's was written"
    );
    assert_eq!(app.version().as_deref(), Some("v1"));
}

#[test]
fn latest_passes_over_a_broken_incident_and_says_so_and_no_snapshot_skips_the_backup() {
    let app = App::new();
    app.start_v1();
    let good = app.backup_id();
    let broken = app.backup_id();
    std::fs::write(app.incident_dir(&broken).join("tree/index.jsonl.gz"), "rot").unwrap();
    let before = app.incidents().len();
    let run = app.guard(&["rollback", "--incident", "latest", "--no-snapshot"]);
    run.expect(0);
    assert!(
        run.stdout
            .contains(&format!("passed over incident {broken}")),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains(&good), "{}", run.stdout);
    assert_eq!(
        app.incidents().len(),
        before,
        "--no-snapshot took no snapshot"
    );
    assert_eq!(app.version().as_deref(), Some("v1"));
}

#[test]
fn a_redirect_is_a_failed_probe_that_names_where_it_points() {
    let app = App::new();
    let port = serve(|s| {
        let _ = s.write_all(b"HTTP/1.1 302 Found\r\nLocation: /login\r\nContent-Length: 0\r\n\r\n");
    });
    app.edit_config(
        &format!("url = \"http://127.0.0.1:{}/health\"", app.port),
        &format!("url = \"http://127.0.0.1:{port}/health\""),
    );
    let run = app.guard(&["--json", "health"]);
    run.expect(1);
    let outcome = &run.json()["data"]["health"]["outcome"];
    assert_eq!(outcome["kind"], "redirect");
    assert!(
        outcome["text"].as_str().unwrap().contains("/login"),
        "{outcome}"
    );
}

#[test]
fn credentials_in_the_health_url_and_secrets_on_the_command_line_are_masked() {
    let app = App::new();
    app.start_v1();
    app.edit_config(
        &format!("url = \"http://127.0.0.1:{}/health\"", app.port),
        &format!(
            "url = \"http://admin:S3cretPass@127.0.0.1:{}/health\"",
            app.port
        ),
    );
    let health = app.guard(&["--json", "health"]);
    assert!(!health.all().contains("S3cretPass"), "{}", health.all());
    // guard check fails a world-readable config that holds a password; as asked, 0600.
    let check = app.guard(&["check"]);
    check.expect(1);
    assert!(check.stdout.contains("holds a secret"), "{}", check.stdout);
    assert!(!check.all().contains("S3cretPass"));
    std::fs::set_permissions(&app.config, std::fs::Permissions::from_mode(0o600)).unwrap();
    // A secret typed on the deploy step's command line (here the env file's DB password).
    app.release("v2", "good");
    let run = app.guard(&[
        "deploy",
        "--",
        "sh",
        "-c",
        "git pull --ff-only # hunter2-the-sequel",
    ]);
    run.expect(0);
    let audit = std::fs::read_to_string(app.backups.join("audit.log")).unwrap();
    assert!(!audit.contains("hunter2-the-sequel"), "{audit}");
    for id in app.incidents() {
        let m = std::fs::read_to_string(app.incident_dir(&id).join("manifest.json")).unwrap();
        assert!(!m.contains("hunter2-the-sequel") && !m.contains(SECRET_DSN));
    }
}

#[test]
fn a_run_that_ends_in_an_error_is_audited_with_its_real_exit_code() {
    let app = App::new();
    app.start_v1();
    // A PM2 that cannot be asked: its CLI fails every call and its daemon's socket is gone
    // (the process list is read over it when it is there), so the backup's process list
    // cannot be read.
    let sock = app.pm2_home.join("rpc.sock");
    let aside = app.pm2_home.join("rpc.sock.aside");
    std::fs::rename(&sock, &aside).unwrap();
    let fake = app.root.path().join("pm2-broken");
    std::fs::write(&fake, "#!/bin/sh\necho 'pm2 is broken' >&2\nexit 1\n").unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    app.edit_config(
        &format!("bin = \"{}\"", app.pm2.display()),
        &format!("bin = \"{}\"", fake.display()),
    );
    let run = app.guard(&["backup"]);
    // Back, so the daemon can be stopped at the end.
    std::fs::rename(&aside, &sock).unwrap();
    run.expect(1);
    let audit = std::fs::read_to_string(app.backups.join("audit.log")).unwrap();
    let last: serde_json::Value = serde_json::from_str(audit.lines().last().unwrap()).unwrap();
    assert_eq!(last["exit_code"], 1, "{last}");
    assert_eq!(last["verdict"], "failed");
    assert!(
        last["reason"].as_str().unwrap().contains("pm2 is broken"),
        "{last}"
    );
}

#[test]
fn a_fifo_as_config_and_a_shared_backup_dir_are_refused_at_once() {
    let app = App::new();
    let fifo = app.root.path().join("fifo.toml");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let run = app.guard_with(&fifo, &["health"]);
    run.expect(2);
    assert!(run.stderr.contains("not a regular file"), "{}", run.stderr);
    assert!(run.took < Duration::from_secs(5), "no hang");
    // A world-writable backup.dir (a shared temp folder) is refused and left as it is.
    std::fs::create_dir_all(&app.backups).unwrap();
    std::fs::set_permissions(&app.backups, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let run = app.guard(&["backup"]);
    run.expect(2);
    assert!(
        run.stderr.contains("writable by other users"),
        "{}",
        run.stderr
    );
    let mode = std::fs::metadata(&app.backups)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777;
    assert_eq!(mode, 0o1777, "never chmod-ed");
}

#[test]
fn values_of_the_ecosystems_env_block_are_masked_like_an_env_files() {
    let app = App::new();
    app.start_v1();
    // v2's ecosystem sets its own DSN in the env block, and v2 prints it as it crashes.
    let secret = "https://EcoOnlySecret99@sentry.invalid/2";
    let eco = std::fs::read_to_string(app.work.join("ecosystem.config.js"))
        .unwrap()
        .replace(
            "env: loadEnv(path.join(__dirname, 'env.env')),",
            &format!(
                "env: {{ ...loadEnv(path.join(__dirname, 'env.env')), SENTRY_DSN: '{secret}' }},"
            ),
        );
    app.push(
        &[
            ("ecosystem.config.js", &eco),
            (
                "release.json",
                r#"{ "version": "v2", "mode": "crash-at-start" }"#,
            ),
        ],
        "v2 with a DSN in the ecosystem",
    );
    let run = app.guard(&["--json", "deploy"]);
    run.expect(3);
    assert!(!run.all().contains(secret), "{}", run.all());
    let id = run.json()["incident"].as_str().unwrap().to_string();
    for e in std::fs::read_dir(app.incident_dir(&id).join("logs"))
        .unwrap()
        .flatten()
    {
        let text = std::fs::read_to_string(e.path()).unwrap();
        assert!(!text.contains(secret), "{}: {text}", e.path().display());
    }
    let logs = std::fs::read_dir(app.incident_dir(&id).join("logs"))
        .unwrap()
        .count();
    assert!(logs > 0, "evidence was saved");
}

#[test]
fn an_emergency_rollback_in_the_incidents_own_scenario_leaves_the_stale_dist_behind() {
    let app = App::new();
    app.start_v1();
    // The incident: a stale dist/ that crashes the app at its next start, in the snapshot too.
    std::fs::create_dir_all(app.dir.join("dist")).unwrap();
    std::fs::write(
        app.dir.join("dist/index.js"),
        "throw new Error('stale CommonJS build');\n",
    )
    .unwrap();
    let id = app.backup_id();
    let run = app.guard(&["rollback", "--incident", &id]);
    run.expect(0);
    assert!(
        !app.dir.join("dist").exists(),
        "the artifact is not restored"
    );
    assert_eq!(app.version().as_deref(), Some("v1"));
}

#[test]
fn https_to_a_plain_http_app_fails_at_once_instead_of_waiting_for_the_deadline() {
    let app = App::new();
    app.start_v1();
    app.edit_config(
        &format!("url = \"http://127.0.0.1:{}/health\"", app.port),
        &format!("url = \"https://127.0.0.1:{}/health\"", app.port),
    );
    let run = app.guard(&["--json", "health", "--wait"]);
    run.expect(1);
    assert!(
        run.took < Duration::from_secs(10),
        "deadline is 20s, took {:?}",
        run.took
    );
    let message = run.json()["data"]["verdict"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(message.contains("TLS or scheme mismatch"), "{message}");
}

#[test]
fn a_backup_dir_of_another_user_is_refused() {
    let app = App::new();
    std::fs::create_dir_all(&app.backups).unwrap();
    std::fs::set_permissions(&app.backups, std::fs::Permissions::from_mode(0o700)).unwrap();
    let c = std::ffi::CString::new(app.backups.to_str().unwrap()).unwrap();
    // SAFETY: chown with a valid NUL-terminated path; the tests run as root.
    assert_eq!(unsafe { libc::chown(c.as_ptr(), 65534, 65534) }, 0);
    let run = app.guard(&["backup"]);
    run.expect(2);
    assert!(
        run.stderr.contains("belongs to uid 65534"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_secret_the_deploy_step_writes_is_masked_in_what_follows() {
    let app = App::new();
    app.start_v1();
    app.release("v2", "crash-at-start");
    // The step rotates the DSN; v2 prints the new one as it crashes.
    let run = app.guard(&[
        "deploy",
        "--",
        "sh",
        "-c",
        "git pull --ff-only && sed -i 's|^SENTRY_DSN=.*|SENTRY_DSN=https://StepWritten77@sentry.invalid/3|' env.env",
    ]);
    run.expect(3);
    assert!(run.stdout.contains("SENTRY_DSN=***"), "{}", run.stdout);
    assert!(!run.all().contains("StepWritten77"), "{}", run.all());
}

#[test]
fn one_rotten_stored_content_is_passed_over_by_latest_found_by_verify_and_repaired() {
    let app = App::new();
    app.start_v1();
    let older = app.backup_id();
    // A file only the newer incident holds.
    std::fs::write(
        app.dir.join("notes.txt"),
        "written after the first backup\n",
    )
    .unwrap();
    app.release("v2", "good");
    app.guard(&["deploy"]).expect(0);
    let newer = app.incidents().last().unwrap().clone();
    let hash = app.tree_index(&newer)["notes.txt"]["h"]
        .as_str()
        .unwrap()
        .to_string();
    let object = app.object(&hash);
    let mut bytes = std::fs::read(&object).unwrap();
    bytes[3] ^= 1;
    std::fs::write(&object, bytes).unwrap();

    // `guard verify` reads it back and names it (exit 1), changing nothing.
    let run = app.guard(&["--json", "verify", "--all"]);
    run.expect(1);
    let doc = run.json();
    let bad: Vec<&serde_json::Value> = doc["data"]["incidents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| !i["bad"].as_array().unwrap().is_empty())
        .collect();
    assert_eq!(bad.len(), 1, "{doc}");
    assert_eq!(bad[0]["id"], newer.as_str());
    assert_eq!(bad[0]["bad"][0]["paths"][0], "notes.txt");

    // A restore that needs it (the file is gone from the app): `latest` passes over that
    // incident, says so, and restores the one before.
    std::fs::remove_file(app.dir.join("notes.txt")).unwrap();
    let back = app.guard(&["rollback", "latest"]);
    back.expect(0);
    assert!(
        back.stdout
            .contains(&format!("passed over incident {newer}")),
        "{}",
        back.stdout
    );
    assert!(back.stdout.contains(&older), "{}", back.stdout);
    assert_eq!(app.version().as_deref(), Some("v1"));

    // A repair needs the bytes in the app folder: once they are there again, it stores them.
    std::fs::write(
        app.dir.join("notes.txt"),
        "written after the first backup\n",
    )
    .unwrap();
    let repair = app.guard(&["--json", "verify", &newer, "--repair"]);
    repair.expect(0);
    assert_eq!(
        repair.json()["data"]["incidents"][0]["bad"][0]["repaired"],
        true
    );
    app.guard(&["verify", "--all"]).expect(0);
}

#[test]
fn a_busy_preflight_port_is_refused_before_anything_changes_and_left_trial_folders_are_swept() {
    let app = App::with_strategy("preflight", 1);
    app.start_v1();
    app.release("v2", "good");
    // Something else holds the configured trial port.
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    app.edit_config(
        "strategy = \"preflight\"",
        &format!("strategy = \"preflight\"\npreflight_port = {port}"),
    );
    let run = app.guard(&["deploy"]);
    run.expect(2);
    assert!(
        run.stderr
            .contains(&format!("preflight_port {port} is in use")),
        "{}",
        run.stderr
    );
    assert!(
        app.incidents().is_empty(),
        "a refused deploy took a snapshot"
    );
    assert_eq!(app.version().as_deref(), Some("v1"));
    // A trial folder a kill -9 left in backup.dir is swept by the next run.
    let left = app.backups.join("trial-demo-backend-abc123");
    std::fs::create_dir_all(&left).unwrap();
    std::fs::write(left.join("demo-backend-guard-trial.config.cjs"), "//").unwrap();
    drop(holder);
    app.guard(&["deploy"]).expect(0);
    assert_eq!(app.version().as_deref(), Some("v2"));
    assert!(!left.exists(), "the left trial folder is still there");
}
