//! Bad input: every case exits 2 with a message that says what and where, and changes nothing.

use crate::support::{App, refused};

#[test]
fn bad_incident_ids_are_usage_errors() {
    let app = App::new();
    app.start_v1();
    refused(
        &app,
        &["rollback", "--incident", "20200101-000000"],
        "no incident 20200101-000000",
    );
    refused(&app, &["rollback", "--incident", "../../etc"], "not a path");
    refused(
        &app,
        &["rollback", "--incident", "incident-../x"],
        "not a path",
    );
    refused(
        &app,
        &["rollback", "--incident", "yesterday"],
        "YYYYMMDD-HHMMSS",
    );
    assert_eq!(app.version().as_deref(), Some("v1"));
}

#[test]
fn a_missing_backup_file_stops_the_deploy_before_anything_changes() {
    let app = App::new();
    app.start_v1();
    std::fs::remove_file(app.dir.join("env.env")).unwrap();
    refused(&app, &["deploy"], "env.env");
    refused(&app, &["backup"], "env.env");
}

#[test]
fn an_unwritable_backup_dir_is_a_usage_error() {
    let app = App::new();
    // A file where the folder should be: even root cannot create a folder inside it.
    std::fs::write(app.root.path().join("blocker"), "").unwrap();
    let cfg = std::fs::read_to_string(&app.config).unwrap();
    std::fs::write(
        &app.config,
        cfg.replace("dir = \"backups\"", "dir = \"blocker/backups\""),
    )
    .unwrap();
    refused(&app, &["deploy"], "backup.dir");
}

#[test]
fn broken_incidents_are_refused_naming_the_file() {
    let app = App::new();
    app.start_v1();
    let id = app.backup_id();
    let dir = app.incident_dir(&id);

    let stored = dir.join("tree/index.jsonl.gz");
    let original = std::fs::read(&stored).unwrap();
    // Same size, one byte changed: only the hash can tell.
    let mut flipped = original.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x20;
    std::fs::write(&stored, flipped).unwrap();
    refused(
        &app,
        &["rollback", "--incident", &id],
        "tree/index.jsonl.gz does not match its sha256",
    );
    std::fs::write(&stored, [original.as_slice(), b"\n"].concat()).unwrap();
    refused(&app, &["rollback", "--incident", &id], "the manifest says");
    refused(
        &app,
        &["rollback", "--incident", "latest"],
        "the manifest says",
    );

    std::fs::remove_file(&stored).unwrap();
    refused(
        &app,
        &["rollback", "--incident", &id],
        "tree/index.jsonl.gz is missing",
    );

    std::fs::remove_file(dir.join("manifest.json")).unwrap();
    refused(
        &app,
        &["rollback", "--incident", &id],
        "manifest.json is missing",
    );

    std::fs::write(dir.join("manifest.json"), "{ not json").unwrap();
    refused(
        &app,
        &["rollback", "--incident", &id],
        "not a valid manifest",
    );
    assert_eq!(app.version().as_deref(), Some("v1"));
}

#[test]
fn a_corrupted_stored_object_is_refused_before_anything_changes() {
    let app = App::new();
    app.start_v1();
    let id = app.backup_id();
    app.release("v2", "good");
    app.guard(&["deploy"]).expect(0);
    // The restore needs v1's release.json back: its object is rotten (same size).
    let hash = app.tree_index(&id)["release.json"]["h"]
        .as_str()
        .unwrap()
        .to_string();
    let object = app.object(&hash);
    let bytes = std::fs::read(&object).unwrap();
    let mut rotten = bytes.clone();
    rotten[0] ^= 1;
    std::fs::write(&object, rotten).unwrap();
    refused(
        &app,
        &["rollback", "--incident", &id],
        "does not match its hash",
    );
    assert_eq!(app.version().as_deref(), Some("v2"));
    // A missing object likewise.
    std::fs::remove_file(&object).unwrap();
    refused(&app, &["rollback", "--incident", &id], "is missing");
}

#[test]
fn an_incident_whose_commit_is_gone_is_refused_before_anything_changes() {
    let app = App::new();
    app.start_v1();
    let id = app.backup_id();
    app.edit_manifest(&id, &app.head(), "0123456789abcdef0123456789abcdef01234567");
    refused(
        &app,
        &["rollback", "--incident", &id],
        "not in the repository",
    );
}

#[test]
fn a_manifest_that_points_outside_the_incident_is_refused() {
    let app = App::new();
    app.start_v1();
    let id = app.backup_id();
    app.edit_manifest(
        &id,
        "\"tree/index.jsonl.gz\"",
        "\"tree/../../../etc/passwd\"",
    );
    refused(
        &app,
        &["rollback", "--incident", &id],
        "not a path guard stores",
    );
}

#[test]
fn scripts_get_a_json_document_and_quiet_gets_one_line_even_on_refusal() {
    let app = App::new();
    let run = app.guard(&["--json", "rollback", "--incident", "20200101-000000"]);
    run.expect(2);
    let doc = run.json();
    assert_eq!(doc["exit_code"], 2);
    assert_eq!(doc["verdict"], "usage error");
    assert!(
        doc["reason"]
            .as_str()
            .unwrap()
            .contains("no incident 20200101-000000"),
        "{doc}"
    );
    assert!(run.stderr.contains("error: no incident"), "{}", run.stderr);

    let run = app.guard(&["-q", "deploy"]);
    run.expect(0);
    assert_eq!(run.stdout.lines().count(), 1, "{}", run.stdout);
    assert!(run.stdout.starts_with("success:"), "{}", run.stdout);
}
