//! Apps that build on the server (install into node_modules/, build into dist/), and the
//! ecosystem file as releases really change it.

use crate::support::{App, SECRET_DSN, git};

fn body(app: &App) -> serde_json::Value {
    app.health_body().expect("/health answers 200")
}

#[test]
fn redeploying_a_healthy_build_app_with_no_new_commit_is_exit_0_and_serving() {
    let app = App::build();
    app.start_v1();
    let run = app.guard(&["--json", "deploy"]);
    run.expect(0);
    assert_eq!(body(&app)["version"], "v1");
    // dist/ is the build output: removed before the build, never after it.
    let steps: Vec<String> = run.json()["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    assert!(!steps.contains(&"clean again".to_string()), "{steps:?}");
    // Removing the build output before the build is how this layout deploys: not a warning.
    let doc = run.json();
    let clean_step = doc["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "clean")
        .unwrap();
    assert_eq!(clean_step["state"], "ok", "{clean_step}");
    assert!(app.dir.join("dist/server.js").is_file());
    let clean = app.guard(&["clean", "--check"]);
    clean.expect(0);
    let health = app.guard(&["health"]);
    health.expect(0);
    assert!(
        health.stdout.contains("artifacts  clean"),
        "{}",
        health.stdout
    );
}

#[test]
fn the_incident_a_stale_file_in_dist_is_removed_before_the_build() {
    let app = App::build();
    app.start_v1();
    // What an old build left: a plugin in ES module syntax the CommonJS server cannot load.
    std::fs::write(
        app.dir.join("dist/plugins/legacy.js"),
        "export default { name: 'legacy' };\n",
    )
    .unwrap();
    app.release("v2", "good");
    app.guard(&["deploy"]).expect(0);
    assert!(!app.dir.join("dist/plugins/legacy.js").exists());
    let b = body(&app);
    assert_eq!(b["version"], "v2");
    assert_eq!(b["plugins"], serde_json::json!(["hello"]));
}

#[test]
fn a_script_inside_an_after_deploy_clean_path_is_refused_before_anything_changes() {
    let app = App::build();
    app.edit_config("after_deploy = false", "after_deploy = true");
    app.start_v1();
    app.release("v2", "good");
    let before = app.state();
    let run = app.guard(&["deploy"]);
    run.expect(2);
    assert!(
        run.stderr.contains("dist/server.js") && run.stderr.contains("after_deploy = false"),
        "{}",
        run.stderr
    );
    assert_eq!(app.state(), before, "nothing may change");
    assert_eq!(body(&app)["version"], "v1");
}

#[test]
fn a_release_that_renames_the_ecosystem_to_cjs_deploys_with_an_unchanged_guard_toml() {
    let app = App::build();
    app.start_v1();
    git(
        &app.work,
        &["mv", "ecosystem.config.js", "ecosystem.config.cjs"],
    );
    app.release("v2", "good");
    let run = app.guard(&["--json", "deploy"]);
    run.expect(0);
    assert!(
        run.json()["data"]["ecosystem"]
            .as_str()
            .unwrap()
            .ends_with("ecosystem.config.cjs")
    );
    assert_eq!(body(&app)["version"], "v2");
}

#[test]
fn an_ecosystem_that_logs_while_loading_deploys() {
    let app = App::build();
    app.start_v1();
    let eco = std::fs::read_to_string(app.work.join("ecosystem.config.js")).unwrap();
    app.push(
        &[
            (
                "ecosystem.config.js",
                &format!("console.log('[\"loading the ecosystem\"]');\n{eco}"),
            ),
            ("release.json", r#"{ "version": "v2", "mode": "good" }"#),
        ],
        "v2 with a chatty ecosystem",
    );
    app.guard(&["deploy"]).expect(0);
    assert_eq!(body(&app)["version"], "v2");
}

#[test]
fn an_esm_loaded_js_ecosystem_is_refused_with_the_cause_named() {
    let app = App::build();
    app.start_v1();
    let pid = app.processes()[0].0;
    let pkg = app.read("package.json").replace(
        "\"private\": true,",
        "\"private\": true,\n  \"type\": \"module\",",
    );
    app.push(
        &[
            ("package.json", &pkg),
            ("release.json", r#"{ "version": "v2", "mode": "good" }"#),
        ],
        "v2 moves to ESM",
    );
    let run = app.guard(&["deploy"]);
    run.expect(3);
    assert!(
        run.stdout.contains("\"type\": \"module\"")
            && run.stdout.contains("rename it to ecosystem.config.cjs"),
        "{}",
        run.stdout
    );
    assert_eq!(
        app.processes()[0].0,
        pid,
        "the running app was never touched"
    );
    assert_eq!(body(&app)["version"], "v1");
}

#[test]
fn the_output_of_a_failed_build_is_kept_in_json_on_stderr_with_q_and_in_the_incident() {
    let app = App::build();
    app.start_v1();
    app.release("v2", "build-fails");
    let run = app.guard(&["--json", "deploy"]);
    run.expect(3);
    let doc = run.json();
    let lines = doc["data"]["step_output"].as_array().unwrap();
    assert!(
        lines
            .iter()
            .any(|l| l.as_str().unwrap().contains("error TS2322")),
        "{doc}"
    );
    let id = doc["incident"].as_str().unwrap();
    let saved = std::fs::read_to_string(app.incident_dir(id).join("logs/deploy-step.log")).unwrap();
    assert!(saved.contains("error TS2322"));

    let quiet = app.guard(&["-q", "deploy"]);
    quiet.expect(3);
    assert!(quiet.stderr.contains("error TS2322"), "{}", quiet.stderr);
    assert!(!quiet.all().contains('\u{1b}'), "no escape sequences");
    assert_eq!(body(&app)["version"], "v1");
}

#[test]
fn the_evidence_of_a_500_holds_no_line_older_than_the_restart() {
    let app = App::build();
    app.start_v1();
    // An earlier bad release leaves its lines in the same PM2 error log.
    app.release("v2", "crash-at-import");
    app.guard(&["deploy"]).expect(3);
    app.release("v3", "health-500");
    let run = app.guard(&["--json", "deploy"]);
    run.expect(3);
    let id = run.json()["incident"].as_str().unwrap().to_string();
    let logs = app.incident_dir(&id).join("logs");
    let err = std::fs::read_dir(&logs)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().ends_with("-error.log"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .expect("an error log tail was saved");
    assert!(err.contains("release v3: /health failing"), "{err}");
    assert!(!err.contains("v2 throws at import"), "an old line: {err}");
}

#[test]
fn records_name_the_code_before_and_after_a_deploy() {
    let app = App::build();
    app.start_v1();
    let v1 = app.head();
    app.release("v2", "good");
    let run = app.guard(&["--json", "deploy"]);
    run.expect(0);
    let v2 = app.head();
    let doc = run.json();
    assert_eq!(doc["before"], v1.as_str());
    assert_eq!(doc["after"], v2.as_str());
    let list = app.guard(&["--json", "list"]).json();
    let outcome = &list["data"]["incidents"][0]["outcome"];
    assert_eq!(outcome["before"], v1.as_str());
    assert_eq!(outcome["after"], v2.as_str());
    let history = app.guard(&["history"]);
    assert!(
        history
            .stdout
            .contains(&format!("{} -> {}", &v1[..12], &v2[..12])),
        "{}",
        history.stdout
    );
}

#[test]
fn host_stays_readable_and_the_sentry_dsn_is_masked() {
    let app = App::new();
    let env = app.read("env.env");
    std::fs::write(app.dir.join("env.env"), format!("HOST=127.0.0.1\n{env}")).unwrap();
    app.start_v1();
    let health = app.guard(&["health"]);
    health.expect(0);
    assert!(
        health
            .stdout
            .contains(&format!("http://127.0.0.1:{}/health", app.port)),
        "{}",
        health.stdout
    );
    app.release("v2", "crash-at-start");
    let run = app.guard(&["deploy"]);
    run.expect(3);
    assert!(run.stdout.contains("SENTRY_DSN=***"), "{}", run.stdout);
    assert!(!run.all().contains(SECRET_DSN));
}

#[test]
fn json_and_yaml_ecosystems_deploy_as_pm2_loads_them() {
    let app = App::build();
    app.start_v1();
    let port = app.port;
    let json = format!(
        "{{ apps: [ {{ name: 'build-backend', script: 'dist/server.js', max_restarts: 3, min_uptime: '30s', env: {{ PORT: '{port}' }} }} ] }}\n"
    );
    git(&app.work, &["rm", "-q", "ecosystem.config.js"]);
    app.push(
        &[
            ("ecosystem.config.json", &json),
            ("release.json", r#"{ "version": "v2", "mode": "good" }"#),
        ],
        "v2 with a JSON ecosystem",
    );
    app.guard(&["deploy"]).expect(0);
    assert_eq!(body(&app)["version"], "v2");

    let yaml = format!(
        "apps:\n  - name: build-backend\n    script: dist/server.js\n    max_restarts: 3\n    env:\n      PORT: \"{port}\"\n"
    );
    git(&app.work, &["rm", "-q", "ecosystem.config.json"]);
    app.push(
        &[
            ("ecosystem.config.yml", &yaml),
            ("release.json", r#"{ "version": "v3", "mode": "good" }"#),
        ],
        "v3 with a YAML ecosystem",
    );
    let run = app.guard(&["--json", "deploy"]);
    run.expect(0);
    assert!(
        run.json()["data"]["ecosystem"]
            .as_str()
            .unwrap()
            .ends_with("ecosystem.config.yml")
    );
    assert_eq!(body(&app)["version"], "v3");
}
