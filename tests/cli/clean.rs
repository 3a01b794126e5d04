//! `guard clean`: --check, --dry-run, removal, symlinks and paths outside the app dir.

use crate::support::App;

fn litter(app: &App) {
    std::fs::create_dir_all(app.dir.join("dist/sub")).unwrap();
    std::fs::write(app.dir.join("dist/sub/index.js"), "export default 1;").unwrap();
    std::fs::write(app.dir.join("release-1.tar.gz"), "x").unwrap();
    std::fs::write(app.dir.join("notes.txt"), "keep me").unwrap();
}

#[test]
fn check_lists_artifacts_exits_1_and_removes_nothing() {
    let app = App::offline();
    app.guard(&["clean", "--check"]).expect(0);
    litter(&app);
    let run = app.guard(&["clean", "--check"]);
    run.expect(1);
    assert!(
        run.stdout.contains("dist/") && run.stdout.contains("release-1.tar.gz"),
        "{}",
        run.stdout
    );
    assert!(
        app.dir.join("dist/sub/index.js").exists() && app.dir.join("release-1.tar.gz").exists()
    );
    let dry = app.guard(&["clean", "--dry-run"]);
    dry.expect(0);
    assert!(dry.stdout.contains("would remove"), "{}", dry.stdout);
    assert!(app.dir.join("dist").exists());
}

#[test]
fn clean_removes_artifacts_and_nothing_else() {
    let app = App::offline();
    litter(&app);
    app.guard(&["clean"]).expect(0);
    assert!(!app.dir.join("dist").exists());
    assert!(!app.dir.join("release-1.tar.gz").exists());
    assert_eq!(app.read("notes.txt"), "keep me");
    assert!(app.dir.join("server.js").exists());
}

#[test]
fn a_symlinked_dist_is_removed_as_a_link_and_its_target_survives() {
    let app = App::offline();
    let outside = app.root.path().join("precious");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("data"), "do not delete").unwrap();
    std::os::unix::fs::symlink(&outside, app.dir.join("dist")).unwrap();
    std::os::unix::fs::symlink(outside.join("data"), app.dir.join("evil.tar.gz")).unwrap();
    app.guard(&["clean"]).expect(0);
    assert!(std::fs::symlink_metadata(app.dir.join("dist")).is_err());
    assert!(std::fs::symlink_metadata(app.dir.join("evil.tar.gz")).is_err());
    assert_eq!(
        std::fs::read_to_string(outside.join("data")).unwrap(),
        "do not delete"
    );
}

#[test]
fn a_path_that_resolves_outside_the_app_dir_is_refused() {
    let app = App::offline();
    let outside = app.root.path().join("elsewhere");
    std::fs::create_dir_all(outside.join("dist")).unwrap();
    std::os::unix::fs::symlink(&outside, app.dir.join("build")).unwrap();
    let cfg = std::fs::read_to_string(&app.config).unwrap();
    std::fs::write(
        &app.config,
        format!("{cfg}\n[clean]\npaths = [\"build/dist\"]\n"),
    )
    .unwrap();
    let run = app.guard(&["clean"]);
    run.expect(2);
    assert!(run.stderr.contains("outside app.dir"), "{}", run.stderr);
    assert!(outside.join("dist").exists());
}
