//! `guard backup`, `guard rollback`, `guard list` and `guard history`.

use std::os::unix::fs::PermissionsExt;

use crate::support::{App, SECRET_DSN};

#[test]
fn backup_snapshots_the_whole_tree_dump_and_commit() {
    let app = App::new();
    app.start_v1();
    // An operator's hot fix, not committed, and files git ignores: the backup keeps them all.
    std::fs::write(
        app.dir.join("package.json"),
        app.read("package.json").replace("1.0.0", "1.0.1-hotfix"),
    )
    .unwrap();
    std::fs::create_dir_all(app.dir.join("node_modules/dep")).unwrap();
    std::fs::write(
        app.dir.join("node_modules/dep/index.js"),
        "module.exports = 1;\n",
    )
    .unwrap();
    let run = app.guard(&["backup", "--reason", "before maintenance"]);
    run.expect(0);
    let id = run.stdout.lines().last().unwrap().to_string();
    assert_eq!(
        app.incidents().last(),
        Some(&id),
        "the id is the last line of stdout"
    );
    let dir = app.incident_dir(&id);
    assert!(dir.join("pm2/dump.pm2").is_file());
    // Every file guard wrote in backup.dir is its own (0600): the index too, which names
    // every path and mode of the app.
    let mut open_to_others = Vec::new();
    let mut stack = vec![app.backups.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let meta = std::fs::symlink_metadata(e.path()).unwrap();
            if meta.is_dir() {
                stack.push(e.path());
            } else if meta.permissions().mode() & 0o077 != 0 {
                open_to_others.push(e.path());
            }
        }
    }
    assert!(open_to_others.is_empty(), "not 0600: {open_to_others:?}");
    let tree = app.tree_index(&id);
    for f in [
        "ecosystem.config.js",
        "env.env",
        "package.json",
        "server.js",
        "node_modules/dep/index.js",
    ] {
        assert_eq!(tree[f]["t"], "f", "{f} missing from the tree");
    }
    assert!(
        tree.keys().all(|k| k != ".git" && !k.starts_with(".git/")),
        ".git is never in a snapshot"
    );
    // The hot fix's bytes are in the object store, under their hash.
    let hotfix = app.object(tree["package.json"]["h"].as_str().unwrap());
    assert!(
        std::fs::read_to_string(&hotfix)
            .unwrap()
            .contains("1.0.1-hotfix")
    );
    let manifest = app.manifest(&id);
    assert_eq!(manifest["kind"], "manual");
    assert_eq!(manifest["reason"], "before maintenance");
    let kinds: Vec<&str> = manifest["parts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["tree", "git", "pm2_dump"]);
    assert_eq!(manifest["parts"][1]["commit"].as_str().unwrap(), app.head());
    let text = std::fs::read_to_string(dir.join("manifest.json")).unwrap();
    assert!(
        !text.contains(SECRET_DSN),
        "the manifest holds no env values"
    );
    // Secrets are stored for root only.
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&app.backups), 0o700);
    assert_eq!(mode(&dir), 0o700);
    let env_object = app.object(tree["env.env"]["h"].as_str().unwrap());
    assert_eq!(mode(&env_object), 0o600);
}

#[test]
fn a_half_written_incident_left_by_a_dead_run_is_swept_and_never_listed() {
    let app = App::new();
    app.guard(&["backup"]).expect(0);
    // What a backup killed mid-way leaves: a temporary folder, never an incident-* folder.
    let tmp = app.backups.join(".tmp-incident-dead01");
    std::fs::create_dir_all(tmp.join("tree")).unwrap();
    std::fs::write(tmp.join("tree/index.jsonl.gz"), "half").unwrap();
    let list = app.guard(&["--json", "list"]);
    assert_eq!(
        list.json()["data"]["incidents"].as_array().unwrap().len(),
        1
    );
    app.guard(&["backup"]).expect(0);
    assert!(!tmp.exists(), "swept by the next run that holds the lock");
    assert_eq!(app.incidents().len(), 2);
}

#[test]
fn rollback_brings_an_older_release_back_and_can_itself_be_undone() {
    let app = App::new();
    app.start_v1();
    let v1_head = app.head();
    app.release("v2", "good");
    app.guard(&["deploy"]).expect(0);
    let v2_head = app.head();
    assert_eq!(app.version().as_deref(), Some("v2"));
    // The incident taken before the v2 deploy holds the running v1.
    let before_v2 = app.incidents().last().unwrap().clone();

    let run = app.guard(&["rollback", "--incident", &format!("incident-{before_v2}")]);
    run.expect(0);
    assert_eq!(app.version().as_deref(), Some("v1"));
    assert_eq!(app.head(), v1_head);
    assert!(
        run.stdout.contains("code "),
        "says what code moved: {}",
        run.stdout
    );
    let dump = std::fs::read_to_string(app.pm2_home.join("dump.pm2")).unwrap();
    assert!(dump.contains("demo-backend"));

    // The rollback snapshotted the v2 state first: rolling back to that undoes the rollback.
    let undo = app.incidents().last().unwrap().clone();
    assert_ne!(undo, before_v2);
    let manifest = std::fs::read_to_string(app.incident_dir(&undo).join("manifest.json")).unwrap();
    assert!(manifest.contains("pre-rollback"));
    app.guard(&["rollback", "--incident", &undo]).expect(0);
    assert_eq!(app.version().as_deref(), Some("v2"));
    assert_eq!(app.head(), v2_head);
}

#[test]
fn rollback_restores_an_uncommitted_hot_fix() {
    let app = App::new();
    app.start_v1();
    let hot = app
        .read("server.js")
        .replace("status: 'ok'", "status: 'ok', hotfix: true");
    std::fs::write(app.dir.join("server.js"), &hot).unwrap();
    app.release("v2", "good");
    // git pull --ff-only refuses to overwrite? It does not touch server.js, so it succeeds.
    app.guard(&["deploy"]).expect(0);
    let before = app.incidents().last().unwrap().clone();
    app.guard(&["rollback", "--incident", &before]).expect(0);
    assert_eq!(app.read("server.js"), hot, "the hot fix is back");
    let (_, body) = crate::support::http_get(app.port, "/health").unwrap();
    assert!(body.contains("hotfix"), "{body}");
}

#[test]
fn latest_skips_pre_rollback_snapshots_and_says_which_it_picked() {
    let app = App::new();
    app.start_v1();
    app.release("v2", "good");
    app.guard(&["deploy"]).expect(0);
    let before_v2 = app.incidents().last().unwrap().clone();
    let run = app.guard(&["rollback", "--incident", "latest"]);
    run.expect(0);
    assert!(run.stdout.contains(&before_v2), "{}", run.stdout);
    assert_eq!(app.version().as_deref(), Some("v1"));
    // The newest incident is now the pre-rollback snapshot of v2; latest still means before_v2.
    let run = app.guard(&["rollback", "--incident", "latest"]);
    run.expect(0);
    assert!(
        run.stdout.contains(&format!("incident {before_v2}")),
        "{}",
        run.stdout
    );
    assert_eq!(app.version().as_deref(), Some("v1"));
    // That rollback went from v1 to v1: its record says so with one code, whole, on both
    // sides, and the listing shows no change (it once stored 40 characters against 12).
    let doc = app.guard(&["--json", "incidents"]).json();
    let newest = &doc["data"]["incidents"][0]["outcome"];
    assert_eq!(newest["command"], "rollback", "{newest}");
    assert_eq!(
        newest["before"].as_str().map(str::len),
        Some(40),
        "{newest}"
    );
    assert_eq!(newest["before"], newest["after"], "{newest}");
    let list = app.guard(&["incidents"]);
    let row = list.stdout.lines().nth(1).unwrap_or_default();
    assert!(!row.contains(" -> "), "no change to show: {row}");
}

#[test]
fn list_and_history_show_incidents_and_runs_without_secrets() {
    let app = App::new();
    app.deploy_v1();
    app.release("v2", "crash-at-start");
    app.guard(&["deploy"]).expect(3);
    let list = app.guard(&["--json", "list"]);
    list.expect(0);
    let doc = list.json();
    let rows = doc["data"]["incidents"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["kind"], "pre-deploy");
    assert_eq!(rows[0]["outcome"]["exit_code"], 3);
    let history = app.guard(&["history"]);
    history.expect(0);
    assert!(history.stdout.contains("exit 3"), "{}", history.stdout);
    // The rolled-back deploy names the release it tried, not `X -> X`.
    let line = history
        .stdout
        .lines()
        .find(|l| l.contains("exit 3"))
        .unwrap();
    assert!(
        line.contains("[tried ") && line.contains(", rolled back to "),
        "{line}"
    );
    // Sizes for people in the listing (bytes stay in --json).
    let text = app.guard(&["incidents"]);
    assert!(
        text.stdout.lines().nth(1).unwrap().contains(" KB"),
        "{}",
        text.stdout
    );
    // A listing is its rows, with -q too, and no "success" line.
    let quiet = app.guard(&["-q", "incidents"]);
    quiet.expect(0);
    assert_eq!(quiet.stdout.lines().count(), 2, "{}", quiet.stdout);
    assert!(
        quiet.stdout.lines().all(|l| !l.starts_with("success:")),
        "{}",
        quiet.stdout
    );
    let audit = std::fs::read_to_string(app.backups.join("audit.log")).unwrap();
    assert_eq!(audit.lines().count(), 2);
    assert!(!audit.contains(SECRET_DSN) && !audit.contains("hunter2"));
    let mode = std::fs::metadata(app.backups.join("audit.log"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn retention_keeps_the_newest_and_never_young_or_known_good_incidents() {
    let app = App::new();
    app.write_config("");
    let cfg = std::fs::read_to_string(&app.config)
        .unwrap()
        .replace("[backup]\n", "[backup]\nkeep = 2\n");
    std::fs::write(&app.config, cfg).unwrap();
    let mut ids = Vec::new();
    for _ in 0..4 {
        let run = app.guard(&["backup"]);
        run.expect(0);
        ids.push(run.stdout.lines().last().unwrap().to_string());
    }
    assert_eq!(
        app.incidents().len(),
        4,
        "incidents younger than an hour are never pruned"
    );
    // Age the first three by two hours (the manifest is not covered by the file hashes).
    for id in &ids[..3] {
        let p = app.incident_dir(id).join("manifest.json");
        let text = std::fs::read_to_string(&p).unwrap();
        let created = serde_json::from_str::<serde_json::Value>(&text).unwrap()["created_at"]
            .as_str()
            .unwrap()
            .to_string();
        let old: jiff::Timestamp =
            created.parse::<jiff::Timestamp>().unwrap() - jiff::SignedDuration::from_hours(2);
        std::fs::write(&p, text.replace(&created, &old.to_string())).unwrap();
    }
    let run = app.guard(&["backup"]);
    run.expect(0);
    let newest = run.stdout.lines().last().unwrap().to_string();
    let left = app.incidents();
    // keep = 2: the new one and ids[3] stay; ids[0..3] are old and beyond keep.
    assert_eq!(left, vec![ids[3].clone(), newest], "{}", run.stdout);
}

#[test]
fn an_incident_written_by_guard_0_1_format_1_still_restores() {
    use sha2::Digest;
    let app = App::new();
    app.start_v1();
    let v1 = app.head();
    // Exactly what guard 0.1 wrote: single files, a commit, no tree.
    let id = "20250101-000000";
    let dir = app.incident_dir(id);
    let mut files = Vec::new();
    for name in ["ecosystem.config.js", "env.env", "package.json"] {
        let bytes = std::fs::read(app.dir.join(name)).unwrap();
        let stored = dir.join("files").join(name);
        std::fs::create_dir_all(stored.parent().unwrap()).unwrap();
        std::fs::write(&stored, &bytes).unwrap();
        files.push(serde_json::json!({
            "path": format!("files/{name}"),
            "size": bytes.len(),
            "mode": 0o644,
            "sha256": hex::encode(sha2::Sha256::digest(&bytes)),
        }));
    }
    let manifest = serde_json::json!({
        "format": 1, "guard_version": "0.1.0", "id": id,
        "created_at": "2025-01-01T00:00:00.000Z", "kind": "pre-deploy", "reason": "deploy",
        "origin": { "pid": 1, "host": "h", "user": "u", "started_at": "x", "command": "guard deploy" },
        "app_name": "demo-backend", "app_dir": app.dir, "files": files, "pm2_dump": null,
        "git": { "commit": v1, "patch": null }, "processes": [],
    });
    std::fs::write(dir.join("manifest.json"), manifest.to_string()).unwrap();
    std::fs::set_permissions(&app.backups, std::fs::Permissions::from_mode(0o700)).unwrap();

    app.release("v2", "good");
    app.guard(&["deploy"]).expect(0);
    assert_eq!(app.version().as_deref(), Some("v2"));
    let run = app.guard(&["rollback", "--incident", id]);
    run.expect(0);
    assert!(run.stdout.contains("3 file(s) restored"), "{}", run.stdout);
    assert_eq!(app.version().as_deref(), Some("v1"));
    assert_eq!(app.head(), v1);
}

#[test]
fn a_rollback_to_an_older_incident_leaves_guards_own_config_alone() {
    let app = App::new();
    app.start_v1();
    // The config inside the app folder, as `guard init` writes it.
    let own = app.dir.join("guard.toml");
    let text = std::fs::read_to_string(&app.config)
        .unwrap()
        .replace("dir = \"app\"", "dir = \".\"")
        .replace(
            "dir = \"backups\"",
            &format!("dir = {:?}", app.backups.to_str().unwrap()),
        )
        .replace(
            "home = \"pm2\"",
            &format!("home = {:?}", app.pm2_home.to_str().unwrap()),
        );
    std::fs::write(&own, &text).unwrap();
    app.guard_with(&own, &["backup"]).expect(0);
    let id = app.incidents().last().unwrap().clone();
    assert!(
        !app.tree_index(&id).contains_key("guard.toml"),
        "guard's own config is never in a snapshot"
    );
    // The operator changes the config after that snapshot (a webhook added, say).
    let newer = format!("{text}\n# changed after the snapshot\n");
    std::fs::write(&own, &newer).unwrap();
    app.guard_with(&own, &["rollback", &id]).expect(0);
    assert_eq!(
        std::fs::read_to_string(&own).unwrap(),
        newer,
        "the rollback left guard.toml as it was"
    );
}

#[test]
fn diff_names_files_packages_env_keys_and_code_never_values() {
    let app = App::new();
    app.start_v1();
    let first = app.backup_id();
    // A new env key (its value is never shown), a lockfile, a new release.
    std::fs::write(
        app.dir.join("env.env"),
        app.read("env.env") + "NEW_TOKEN=s3cr3t-value-123\n",
    )
    .unwrap();
    std::fs::write(
        app.dir.join("package-lock.json"),
        r#"{"packages":{"":{"name":"demo"},"node_modules/express":{"version":"4.19.0"}}}"#,
    )
    .unwrap();
    app.release("v2", "good");
    app.guard(&["deploy"]).expect(0);
    let run = app.guard(&["--json", "diff", &first]);
    run.expect(0);
    assert!(!run.all().contains("s3cr3t-value-123"), "{}", run.all());
    let d = &run.json()["data"];
    let paths = |key: &str| -> Vec<String> {
        d["files"][key]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f[0].as_str().unwrap().to_string())
            .collect()
    };
    assert!(
        paths("changed").contains(&"release.json".to_string()),
        "{d}"
    );
    assert!(
        paths("added").contains(&"package-lock.json".to_string()),
        "{d}"
    );
    assert_eq!(
        d["env_keys"][0]["added"],
        serde_json::json!(["NEW_TOKEN"]),
        "{d}"
    );
    assert_eq!(d["packages"][0]["name"], "express", "{d}");
    assert_eq!(d["packages"][0]["to"], "4.19.0", "{d}");
    assert_ne!(d["code"][0], d["code"][1], "{d}");
    // Between two snapshots too.
    let second = app.backup_id();
    let text = app.guard(&["diff", &first, &second]);
    text.expect(0);
    assert!(
        text.stdout.contains("package   express - -> 4.19.0"),
        "{}",
        text.stdout
    );
}
