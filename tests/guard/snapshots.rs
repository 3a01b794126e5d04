//! Whole-tree snapshots: a rollback brings back every byte that ran, compiled code and
//! dependencies included, on an app that builds on the server and on one that is not a git
//! checkout at all.

use std::time::Duration;

use crate::support::{App, git, wait_until};

/// The build app's /health: (release, dependency version).
fn serving(app: &App) -> Option<(String, String)> {
    let b = app.health_body()?;
    Some((
        b["version"].as_str()?.to_string(),
        b["dep"].as_str()?.to_string(),
    ))
}

fn release(app: &App, version: &str, mode: &str) {
    app.release(version, mode);
}

fn v1() -> Option<(String, String)> {
    Some(("v1".into(), "1.0.0".into()))
}

#[test]
fn a_build_app_deploys_and_a_crash_at_import_rolls_back_to_the_previous_compiled_code() {
    let app = App::build();
    app.start_v1();
    assert_eq!(serving(&app), v1());
    let v1_dist = app.read("dist/server.js");

    release(&app, "v2", "good");
    app.guard(&["deploy"]).expect(0);
    assert_eq!(serving(&app), Some(("v2".into(), "1.0.0".into())));

    release(&app, "v3", "crash-at-import");
    let run = app.guard(&["--json", "deploy"]);
    run.expect(3);
    let doc = run.json();
    assert_eq!(doc["data"]["verdict"]["reason"]["kind"], "crashed_at_start");
    assert_eq!(doc["data"]["rollback"]["healthy"], true);
    // v2's compiled code answers again, not only "something".
    assert_eq!(serving(&app), Some(("v2".into(), "1.0.0".into())));
    assert!(app.read("dist/server.js").contains("\"v2\""));
    assert_ne!(app.read("dist/server.js"), v1_dist);
}

#[test]
fn a_failed_build_leaves_the_previous_dist_on_disk() {
    let app = App::build();
    app.start_v1();
    let pid = app.processes()[0].0;
    let dist_before = app.read("dist/server.js");
    release(&app, "v2", "build-fails");
    let run = app.guard(&["deploy"]);
    run.expect(3);
    assert!(run.stdout.contains("error TS2322"), "{}", run.stdout);
    // The half-written build is gone: a plain `pm2 restart` now serves v1, not a build that
    // never passed.
    assert_eq!(app.read("dist/server.js"), dist_before);
    assert_eq!(
        app.processes()[0].0,
        pid,
        "the running app was never touched"
    );
    let out = app.pm2(&["restart", app.name]);
    assert!(out.status.success());
    assert!(wait_until(Duration::from_secs(10), || serving(&app) == v1()));
}

#[test]
fn a_new_dependency_and_a_crash_leave_node_modules_as_before() {
    let app = App::build();
    app.start_v1();
    let pkg = app.read("package.json").replace(
        "\"left-pad\": \"vendor\"",
        "\"left-pad\": \"vendor\",\n    \"right-pad\": \"vendor\"",
    );
    app.push(
        &[
            ("package.json", &pkg),
            (
                "release.json",
                r#"{ "version": "v2", "mode": "crash-at-import" }"#,
            ),
        ],
        "v2 adds right-pad and crashes",
    );
    app.guard(&["deploy"]).expect(3);
    assert!(
        !app.dir.join("node_modules/right-pad").exists(),
        "the new dependency is gone again"
    );
    assert!(app.dir.join("node_modules/left-pad/index.js").is_file());
    assert_eq!(serving(&app), v1());
}

#[test]
fn rollback_latest_after_a_good_deploy_brings_back_the_previous_build_and_dependencies() {
    let app = App::build();
    app.start_v1();
    let head_v1 = app.head();
    // v2 changes its dependency's code too (a vendored upgrade).
    app.push(
        &[
            (
                "vendor/left-pad/index.js",
                "module.exports = { version: '1.1.0', pad: (s, n) => String(s).padStart(n) };\n",
            ),
            ("release.json", r#"{ "version": "v2", "mode": "good" }"#),
        ],
        "v2 with left-pad 1.1.0",
    );
    app.guard(&["deploy"]).expect(0);
    assert_eq!(serving(&app), Some(("v2".into(), "1.1.0".into())));

    let run = app.guard(&["--json", "rollback", "--incident", "latest"]);
    run.expect(0);
    assert_eq!(serving(&app), v1(), "v1's build and v1's dependency");
    assert_eq!(app.head(), head_v1, "HEAD moved back too");
    // HEAD and the index moved, the files match: git sees no change.
    let status = std::process::Command::new("git")
        .arg("-C")
        .arg(&app.dir)
        .args(["status", "--porcelain"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&status.stdout), "");
    let doc = run.json();
    // A commit is recorded whole in JSON, before and after alike (a short form on one side
    // once made every rollback look like a change).
    assert_eq!(doc["data"]["restored_code"].as_str().unwrap(), head_v1);
    assert!(doc["reason"].as_str().unwrap().contains(&head_v1[..12]));
}

#[test]
fn an_app_that_is_not_a_git_checkout_deploys_by_copy_and_rolls_back() {
    let app = App::new();
    // The server's folder is a plain copy (rsync, a CI artifact): no .git at all.
    std::fs::remove_dir_all(app.dir.join(".git")).unwrap();
    let release_dir = app.root.path().join("release");
    std::fs::create_dir_all(&release_dir).unwrap();
    std::fs::write(
        release_dir.join("release.json"),
        r#"{ "version": "v2", "mode": "crash-at-start" }"#,
    )
    .unwrap();
    app.edit_config(
        "command = \"git pull --ff-only\"",
        &format!("command = \"cp -R {}/. .\"", release_dir.display()),
    );
    app.start_v1();
    let run = app.guard(&["--json", "deploy"]);
    run.expect(3);
    assert_eq!(app.version().as_deref(), Some("v1"));
    let before = run.json()["data"]["before"].as_str().unwrap().to_string();
    assert!(before.starts_with("tree "), "a tree fingerprint: {before}");

    std::fs::write(
        release_dir.join("release.json"),
        r#"{ "version": "v3", "mode": "good" }"#,
    )
    .unwrap();
    app.guard(&["deploy"]).expect(0);
    assert_eq!(app.version().as_deref(), Some("v3"));
    app.guard(&["rollback", "--incident", "latest"]).expect(0);
    assert_eq!(app.version().as_deref(), Some("v1"));
}

#[test]
fn a_symlinked_env_file_stays_a_symlink_and_git_colours_change_nothing() {
    let app = App::new();
    // env.env is a link to a file kept outside the checkout, as many servers do it.
    let shared = app.root.path().join("shared.env");
    std::fs::rename(app.dir.join("env.env"), &shared).unwrap();
    std::os::unix::fs::symlink(&shared, app.dir.join("env.env")).unwrap();
    // An operator's git config that broke patch-based restores.
    git(&app.dir, &["config", "color.ui", "always"]);
    git(&app.dir, &["config", "diff.noprefix", "true"]);
    // An uncommitted hot fix that must come back too.
    std::fs::write(app.dir.join("hotfix.txt"), "patched on the server\n").unwrap();
    app.start_v1();
    app.release("v2", "crash-at-start");
    app.guard(&["deploy"]).expect(3);
    let meta = std::fs::symlink_metadata(app.dir.join("env.env")).unwrap();
    assert!(meta.file_type().is_symlink(), "env.env is still a link");
    assert_eq!(std::fs::read_link(app.dir.join("env.env")).unwrap(), shared);
    assert_eq!(app.read("hotfix.txt"), "patched on the server\n");
    assert_eq!(app.version().as_deref(), Some("v1"));
}

#[test]
fn an_unchanged_tree_is_not_read_again_and_contents_are_stored_once() {
    let app = App::build();
    app.start_v1();
    let first = app.guard(&["--json", "backup"]);
    first.expect(0);
    // Reinstall every dependency: new files, same bytes.
    app.node(&["install.cjs"]);
    let second = app.guard(&["--json", "backup"]);
    second.expect(0);
    let detail = |run: &crate::support::Run| {
        run.json()["steps"][0]["detail"]
            .as_str()
            .unwrap()
            .to_string()
    };
    // Only the reinstalled file is read again, and nothing new is stored.
    assert!(
        detail(&second).contains("(2 new, 0 B stored)"),
        "{}",
        detail(&second)
    );
    let third = app.guard(&["--json", "backup"]);
    assert!(
        detail(&third).contains("(0 new, 0 B stored)"),
        "{}",
        detail(&third)
    );
    let ids = app.incidents();
    let a = app.tree_index(&ids[0]);
    let b = app.tree_index(&ids[2]);
    assert_eq!(
        a["node_modules/left-pad/index.js"]["h"],
        b["node_modules/left-pad/index.js"]["h"]
    );
}

/// Every file under `dir` with its bytes, by relative path: what "the same node_modules" means.
fn files_under(dir: &std::path::Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    fn walk(
        root: &std::path::Path,
        dir: &std::path::Path,
        out: &mut std::collections::BTreeMap<String, Vec<u8>>,
    ) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            let t = std::fs::symlink_metadata(&p).unwrap().file_type();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            if t.is_dir() {
                walk(root, &p, out);
            } else if t.is_symlink() {
                out.insert(
                    rel,
                    std::fs::read_link(&p)
                        .unwrap()
                        .into_os_string()
                        .into_encoded_bytes(),
                );
            } else {
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn staging_left(app: &App) -> Vec<String> {
    std::fs::read_dir(&app.dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".guard-restore-"))
        .collect()
}

#[test]
fn a_reinstalled_node_modules_that_crashes_is_swapped_back_whole_and_v1_answers() {
    let app = App::build();
    app.start_v1();
    let before = files_under(&app.dir.join("node_modules"));
    // A reinstall of everything: 300 new files, and left-pad replaced by a version that throws
    // when the app requires it.
    let step = "mkdir -p node_modules/bulk && for i in $(seq 1 300); do echo \"v2 $i\" > node_modules/bulk/f$i.js; done \
                && echo 'throw new Error(\"left-pad 2 cannot load\")' > node_modules/left-pad/index.js";
    let run = app.guard(&["--json", "deploy", "--", "sh", "-c", step]);
    run.expect(3);
    let doc = run.json();
    let restore = doc["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "restore")
        .unwrap_or_else(|| panic!("no restore step: {doc}"));
    assert!(
        restore["detail"]
            .as_str()
            .unwrap()
            .contains("node_modules/ swapped in whole"),
        "{restore}"
    );
    // Which version answers, and what is on disk: v1 with left-pad 1.0.0, the very files.
    assert_eq!(serving(&app), v1());
    assert_eq!(files_under(&app.dir.join("node_modules")), before);
    // What the restore replaced was deleted once the app was judged.
    assert_eq!(staging_left(&app), Vec::<String>::new());
}

#[test]
fn what_a_killed_restore_left_in_the_app_folder_is_swept_by_the_next_backup_never_stored() {
    let app = App::build();
    app.start_v1();
    // The state a restore killed after its swap leaves: guard's marked staging folder holding
    // the old node_modules it had not deleted yet.
    let left = app.dir.join(".guard-restore-4242-00ff00ff00ff00ff");
    std::fs::create_dir_all(left.join("whole-0/old-pkg")).unwrap();
    std::fs::write(left.join(".guard-staging"), "").unwrap();
    std::fs::write(left.join("whole-0/old-pkg/index.js"), "old").unwrap();
    let run = app.guard(&["backup"]);
    run.expect(0);
    assert!(run.stderr.contains("staging folder"), "{}", run.stderr);
    assert_eq!(staging_left(&app), Vec::<String>::new());
    let id = app.backup_id();
    assert!(
        app.tree_index(&id)
            .keys()
            .all(|p| !p.starts_with(".guard-restore-")),
        "never snapshotted"
    );
    assert_eq!(serving(&app), v1());
}
