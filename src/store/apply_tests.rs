//! Unit tests of restoring a tree (split from apply.rs for size).
use super::super::compare::differences;
use super::super::tree::tests::{setup, snap};
use super::super::tree::{Cache, capture};
use super::*;
use std::os::unix::fs::symlink;

#[test]
fn restore_makes_the_tree_identical_and_leaves_excluded_and_git_alone() {
    let (root, app, objs) = setup();
    let ex = Excludes::new(&["logs/".into()]).unwrap();
    let entries = snap(root.path(), &app, &objs, &ex, "idx1");
    assert!(entries.iter().all(|e| !e.path.starts_with(".git")));
    assert!(entries.iter().all(|e| !e.path.starts_with("logs")));
    // A deploy: new build, a new dependency, a removed file, a replaced link, new logs.
    fs::write(app.join("dist/index.js"), "v2 broken").unwrap();
    fs::remove_file(app.join("dist/sub/x.js")).unwrap();
    fs::create_dir_all(app.join("node_modules/b")).unwrap();
    fs::write(app.join("node_modules/b/index.js"), "b").unwrap();
    fs::remove_file(app.join("env.env")).unwrap();
    fs::write(app.join("env.env"), "plain copy").unwrap();
    fs::set_permissions(app.join("run.sh"), fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(app.join("logs/app.log"), "newer log").unwrap();
    fs::write(app.join(".git/HEAD"), "moved").unwrap();
    let p = plan(&app, &ex, &entries).unwrap();
    assert!(!p.is_empty());
    apply(&app, &p, &objs).unwrap();
    assert!(
        fs::read_dir(&app)
            .unwrap()
            .flatten()
            .all(|e| !e.file_name().to_string_lossy().starts_with(STAGING_PREFIX)),
        "no staging folder left"
    );
    assert_eq!(fs::read_to_string(app.join("dist/index.js")).unwrap(), "v1");
    assert_eq!(fs::read_to_string(app.join("dist/sub/x.js")).unwrap(), "x1");
    assert!(!app.join("node_modules/b").exists());
    assert!(
        fs::symlink_metadata(app.join("env.env"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(
        fs::metadata(app.join("run.sh"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o755
    );
    assert_eq!(
        fs::read_to_string(app.join("logs/app.log")).unwrap(),
        "newer log"
    );
    assert_eq!(fs::read_to_string(app.join(".git/HEAD")).unwrap(), "moved");
    assert_eq!(
        differences(&app, &ex, &entries, &Written::new(), 5)
            .unwrap()
            .1,
        0
    );
    // A file changed after the restore is named.
    fs::write(app.join("dist/index.js"), "v3").unwrap();
    let (paths, n) = differences(&app, &ex, &entries, &Written::new(), 5).unwrap();
    assert_eq!((paths, n), (vec!["dist/index.js".to_string()], 1));
}

#[test]
fn identical_content_with_new_stat_is_left_untouched() {
    let (root, app, objs) = setup();
    let ex = Excludes::default();
    let entries = snap(root.path(), &app, &objs, &ex, "idx1");
    // A reinstall: same bytes, new inode and times.
    let f = app.join("node_modules/a/index.js");
    fs::remove_file(&f).unwrap();
    fs::write(&f, "a").unwrap();
    let p = plan(&app, &ex, &entries).unwrap();
    assert!(p.is_empty(), "{p:?}");
}

#[test]
fn a_symlinked_folder_is_never_written_through() {
    let (root, app, objs) = setup();
    let ex = Excludes::default();
    let entries = snap(root.path(), &app, &objs, &ex, "idx1");
    let outside = root.path().join("outside");
    fs::create_dir_all(&outside).unwrap();
    fs::remove_dir_all(app.join("dist")).unwrap();
    symlink(&outside, app.join("dist")).unwrap();
    let p = plan(&app, &ex, &entries).unwrap();
    apply(&app, &p, &objs).unwrap();
    assert!(
        fs::read_dir(&outside).unwrap().next().is_none(),
        "nothing written outside"
    );
    assert!(
        app.join("dist").is_dir()
            && !fs::symlink_metadata(app.join("dist"))
                .unwrap()
                .file_type()
                .is_symlink()
    );
    assert_eq!(fs::read_to_string(app.join("dist/index.js")).unwrap(), "v1");
}

#[test]
fn a_folder_swapped_for_a_symlink_after_the_plan_is_never_written_through() {
    let (root, app, objs) = setup();
    let ex = Excludes::default();
    let entries = snap(root.path(), &app, &objs, &ex, "idx1");
    fs::write(app.join("dist/index.js"), "v2").unwrap();
    let p = plan(&app, &ex, &entries).unwrap();
    let outside = root.path().join("cron.d");
    fs::create_dir_all(&outside).unwrap();
    fs::rename(app.join("dist"), root.path().join("old-dist")).unwrap();
    symlink(&outside, app.join("dist")).unwrap();
    assert!(apply(&app, &p, &objs).is_err());
    assert!(
        fs::read_dir(&outside).unwrap().next().is_none(),
        "nothing written outside"
    );
}

#[test]
fn the_staging_folder_is_used_through_its_descriptor_even_when_its_name_is_swapped() {
    let (root, app, objs) = setup();
    let ex = Excludes::default();
    let entries = snap(root.path(), &app, &objs, &ex, "idx1");
    fs::write(app.join("dist/index.js"), "v2").unwrap();
    let p = plan(&app, &ex, &entries).unwrap();
    let beneath = Root::open(&app).unwrap();
    let (name, fd) = make_staging(&app, &beneath).unwrap();
    assert!(is_guard_staging(&app, &name));
    let outside = root.path().join("cron.d");
    fs::create_dir_all(&outside).unwrap();
    fs::rename(app.join(&name), root.path().join("elsewhere")).unwrap();
    symlink(&outside, app.join(&name)).unwrap();
    let staged = stage(&app, &fd, &p, &objs).unwrap();
    assert!(!staged.is_empty());
    assert!(
        fs::read_dir(&outside).unwrap().next().is_none(),
        "nothing written outside"
    );
}

#[test]
fn an_apps_own_folder_named_like_guards_staging_is_kept_and_snapshotted() {
    let (root, app, objs) = setup();
    fs::create_dir_all(app.join(".guard-restore-notes")).unwrap();
    fs::write(app.join(".guard-restore-notes/todo.txt"), "mine").unwrap();
    let ex = Excludes::default();
    let entries = snap(root.path(), &app, &objs, &ex, "idx1");
    assert!(
        entries
            .iter()
            .any(|e| e.path == Path::new(".guard-restore-notes/todo.txt"))
    );
    fs::write(app.join("dist/index.js"), "v2").unwrap();
    let p = plan(&app, &ex, &entries).unwrap();
    apply(&app, &p, &objs).unwrap();
    assert_eq!(
        fs::read_to_string(app.join(".guard-restore-notes/todo.txt")).unwrap(),
        "mine"
    );
    // guard's own leftovers (marked) are swept and never snapshotted.
    let beneath = Root::open(&app).unwrap();
    let (left, _fd) = make_staging(&app, &beneath).unwrap();
    let entries = snap(root.path(), &app, &objs, &ex, "idx2");
    assert!(entries.iter().all(|e| !e.path.starts_with(&left)));
    let p = plan(&app, &ex, &entries).unwrap();
    apply(&app, &p, &objs).unwrap();
    assert!(
        !app.join(&left).exists(),
        "a killed restore's staging folder is swept"
    );
}

#[test]
fn a_corrupted_object_stops_the_restore_before_anything_changes() {
    let (root, app, objs) = setup();
    let ex = Excludes::default();
    let entries = snap(root.path(), &app, &objs, &ex, "idx1");
    fs::write(app.join("dist/index.js"), "v2").unwrap();
    fs::write(app.join("dist/sub/x.js"), "x2").unwrap();
    let hash = entries
        .iter()
        .find_map(|e| match (&e.node, e.path == Path::new("dist/sub/x.js")) {
            (Node::File { hash, .. }, true) => Some(hash.clone()),
            _ => None,
        })
        .unwrap();
    fs::write(objs.path(&hash), "zz").unwrap();
    let p = plan(&app, &ex, &entries).unwrap();
    let err = apply(&app, &p, &objs).unwrap_err();
    assert!(err.downcast_ref::<BadObject>().is_some(), "{err:#}");
    assert_eq!(fs::read_to_string(app.join("dist/index.js")).unwrap(), "v2");
    assert_eq!(fs::read_to_string(app.join("dist/sub/x.js")).unwrap(), "x2");
}

/// Give `path` and everything in it to `uid`/`gid`, never following a link.
fn chown_tree(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).unwrap();
    if fs::symlink_metadata(path).unwrap().is_dir() {
        for e in fs::read_dir(path).unwrap().flatten() {
            chown_tree(&e.path(), uid, gid);
        }
    }
}

fn staging_left(app: &Path) -> bool {
    fs::read_dir(app)
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with(STAGING_PREFIX))
}

#[test]
#[cfg_attr(
    not(feature = "real-pm2"),
    ignore = "needs root, to act as another user: the real tier (scripts/test.sh)"
)]
fn as_a_normal_user_a_read_only_folder_is_restored_and_another_users_refused_before_anything_changes()
 {
    use crate::testing::{NOBODY, as_user};
    let (root, app, _) = setup();
    fs::set_permissions(root.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let own = root.path().join("nobody");
    fs::create_dir_all(own.join("store")).unwrap();
    fs::create_dir_all(app.join("config")).unwrap();
    fs::write(app.join("config/app.json"), "v1").unwrap();
    fs::set_permissions(app.join("config"), fs::Permissions::from_mode(0o555)).unwrap();
    chown_tree(&app, NOBODY, NOBODY);
    chown_tree(&own, NOBODY, NOBODY);
    let objs = Objects::at(&own.join("store"));
    let ex = Excludes::default();
    {
        let _user = as_user(NOBODY, NOBODY);
        let entries = snap(&own, &app, &objs, &ex, "idx1");
        // The release changed a file in the read-only folder (its own deploy opened it).
        fs::set_permissions(app.join("config"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(app.join("config/app.json"), "v2").unwrap();
        fs::set_permissions(app.join("config"), fs::Permissions::from_mode(0o555)).unwrap();
        assert!(
            fs::write(app.join("config/probe"), "x").is_err(),
            "the folder must refuse this user's writes for the test to mean anything"
        );
        let p = plan(&app, &ex, &entries).unwrap();
        drop(apply(&app, &p, &objs).unwrap());
        assert_eq!(
            fs::read_to_string(app.join("config/app.json")).unwrap(),
            "v1"
        );
        let mode = fs::metadata(app.join("config"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o555, "the folder's mode is put back");
    }
    // A folder of another user (root), read-only to this one: refused before anything changes.
    fs::create_dir_all(app.join("locked")).unwrap();
    fs::write(app.join("locked/f"), "v1").unwrap();
    fs::set_permissions(app.join("locked"), fs::Permissions::from_mode(0o555)).unwrap();
    let entries = {
        let _user = as_user(NOBODY, NOBODY);
        snap(&own, &app, &objs, &ex, "idx2")
    };
    fs::set_permissions(app.join("locked"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(app.join("locked/f"), "v2").unwrap();
    fs::set_permissions(app.join("locked"), fs::Permissions::from_mode(0o555)).unwrap();
    fs::write(app.join("dist/index.js"), "v2").unwrap();
    chown_tree(&app.join("dist"), NOBODY, NOBODY);
    let _user = as_user(NOBODY, NOBODY);
    let p = plan(&app, &ex, &entries).unwrap();
    let err = apply(&app, &p, &objs).unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("locked"), "{text}");
    assert!(text.contains("owned by another"), "{text}");
    assert!(text.contains("nothing was changed"), "{text}");
    assert_eq!(
        fs::read_to_string(app.join("dist/index.js")).unwrap(),
        "v2",
        "nothing changed"
    );
    assert_eq!(fs::read_to_string(app.join("locked/f")).unwrap(), "v2");
    assert!(!staging_left(&app));
}

#[test]
#[cfg_attr(
    not(feature = "real-pm2"),
    ignore = "needs root, to mount a small file system: the real tier (scripts/test.sh)"
)]
fn a_full_disk_while_staging_says_no_space_how_much_and_where_and_changes_nothing() {
    let root = tempfile::tempdir().unwrap();
    let small = root.path().join("small");
    fs::create_dir_all(&small).unwrap();
    let _fs = crate::testing::tiny_fs(&small, 2 << 20);
    let app = small.join("app");
    fs::create_dir_all(app.join("data")).unwrap();
    for i in 0..4u8 {
        fs::write(app.join(format!("data/big{i}")), vec![i; 256 << 10]).unwrap();
    }
    let objs = Objects::at(&root.path().join("store"));
    let ex = Excludes::default();
    let entries = snap(root.path(), &app, &objs, &ex, "idx1");
    // The release made them small; something else then filled the disk.
    for i in 0..4u8 {
        fs::write(app.join(format!("data/big{i}")), "small").unwrap();
    }
    let mut filler = File::create(small.join("filler")).unwrap();
    let chunk = vec![7u8; 64 << 10];
    while std::io::Write::write_all(&mut filler, &chunk).is_ok() {}
    drop(filler);
    let p = plan(&app, &ex, &entries).unwrap();
    // Room for a few small files, not for the 1 MB the restore needs.
    let f = small.join("filler");
    let len = fs::metadata(&f).unwrap().len();
    File::options()
        .write(true)
        .open(&f)
        .unwrap()
        .set_len(len - (128 << 10))
        .unwrap();
    let err = apply(&app, &p, &objs).unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("no space left on device"), "{text}");
    assert!(
        text.contains("1.0 MB") || text.contains("1.0 MiB"),
        "{text}"
    );
    assert!(text.contains(&app.display().to_string()), "{text}");
    assert!(text.contains("the incident is fine"), "{text}");
    assert!(
        err.downcast_ref::<BadObject>().is_none(),
        "not reported as a broken incident"
    );
    for i in 0..4u8 {
        assert_eq!(
            fs::read_to_string(app.join(format!("data/big{i}"))).unwrap(),
            "small"
        );
    }
    assert!(!staging_left(&app));
}

/// A second user (nobody, on its own thread with its own credentials) owning the app folder
/// swaps folders for symlinks as fast as it can while root snapshots and restores: root never
/// reads a file outside app.dir into the store and never writes anything outside it. The
/// deterministic versions (one swap at each point) are the tests above; this one races.
#[test]
#[cfg_attr(
    not(feature = "real-pm2"),
    ignore = "needs root, to race as another user: the real tier (scripts/test.sh)"
)]
fn a_second_user_racing_snapshots_and_restores_never_gets_root_to_read_or_write_outside() {
    use crate::testing::{NOBODY, as_user};
    use std::sync::atomic::{AtomicBool, Ordering};
    let (root, app, objs) = setup();
    fs::set_permissions(root.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let secret = root.path().join("root-only");
    fs::create_dir_all(&secret).unwrap();
    fs::write(secret.join("x.js"), "root's secret").unwrap();
    fs::write(secret.join("index.js"), "root's secret").unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o700)).unwrap();
    let cron = root.path().join("cron.d");
    fs::create_dir_all(&cron).unwrap();
    fs::set_permissions(&cron, fs::Permissions::from_mode(0o700)).unwrap();
    fs::create_dir_all(app.join("uploads/zz")).unwrap();
    fs::write(app.join("uploads/zz/x.js"), "user's").unwrap();
    chown_tree(&app, NOBODY, NOBODY);
    let ex = Excludes::default();
    let entries = snap(root.path(), &app, &objs, &ex, "idx0");
    let stop = AtomicBool::new(false);
    let swaps = std::sync::atomic::AtomicU64::new(0);
    let mut refused = 0u32;
    std::thread::scope(|s| {
        s.spawn(|| {
            let _user = as_user(NOBODY, NOBODY);
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                // Swap a folder guard reads (uploads/zz) and one it writes (dist) for links,
                // and any staging folder of guard's it can rename, then put them back.
                let _ = fs::rename(app.join("uploads/zz"), app.join(format!("uploads/real{i}")));
                if std::os::unix::fs::symlink(&secret, app.join("uploads/zz")).is_ok() {
                    swaps.fetch_add(1, Ordering::Relaxed);
                }
                let _ = fs::rename(app.join("dist"), app.join(format!("dist-real{i}")));
                let _ = std::os::unix::fs::symlink(&cron, app.join("dist"));
                if let Ok(rd) = fs::read_dir(&app) {
                    for e in rd.flatten() {
                        let n = e.file_name();
                        if n.to_string_lossy().starts_with(STAGING_PREFIX)
                            && fs::rename(e.path(), app.join(format!("taken{i}"))).is_ok()
                        {
                            let _ = std::os::unix::fs::symlink(&cron, e.path());
                        }
                    }
                }
                std::thread::yield_now();
                let _ = fs::remove_file(app.join("uploads/zz"));
                let _ = fs::rename(app.join(format!("uploads/real{i}")), app.join("uploads/zz"));
                let _ = fs::remove_file(app.join("dist"));
                let _ = fs::rename(app.join(format!("dist-real{i}")), app.join("dist"));
            }
        });
        for round in 0..150 {
            // Root's side: a snapshot, then a restore of the first one; either may fail (the
            // tree keeps changing under it) but neither may reach outside.
            let captured = capture(
                &app,
                &ex,
                &objs,
                &Cache::new(),
                &root.path().join(format!("idx{round}")),
            );
            refused += u32::from(captured.is_err());
            if let Ok(p) = plan(&app, &ex, &entries) {
                let _ = apply(&app, &p, &objs);
            }
        }
        stop.store(true, Ordering::Relaxed);
    });
    // The race was on: the user swapped folders while root worked, and root saw it.
    assert!(
        swaps.load(Ordering::Relaxed) > 10,
        "the second user never got to swap"
    );
    assert!(refused > 0, "no snapshot ever met a swapped folder");
    let (hash, _) = hash_reader("root's secret".as_bytes()).unwrap();
    assert!(!objs.has(&hash), "root's file reached the store");
    assert_eq!(
        fs::read_dir(&cron).unwrap().count(),
        0,
        "root wrote outside app.dir"
    );
}
