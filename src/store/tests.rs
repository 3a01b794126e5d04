//! Unit tests of the incident store.

use super::retention::{Candidate, KeepReason, plan_prune};
use super::*;

#[test]
fn retention_plans_what_goes_and_why_the_rest_stays() {
    let now: jiff::Timestamp = "2026-12-02T12:00:00Z".parse().unwrap();
    let c = |id: &str, hours_ago: i64, restorable: bool| Candidate {
        id: id.into(),
        created_at: Some(now - jiff::SignedDuration::from_hours(hours_ago)),
        restorable,
        readable: true,
    };
    let list = vec![
        c("f-newest", 0, false),
        c("e", 1, false),
        c("d-young", 0, false),
        c("c-good", 5, true),
        c("b-target", 9, true),
        Candidate {
            readable: false,
            created_at: None,
            ..c("a-broken", 10, false)
        },
        c("z-old", 20, true),
    ];
    let plan = plan_prune(&list, 2, &["b-target"], now);
    assert_eq!(plan.remove, ["z-old"]);
    let why = |id: &str| plan.keep.iter().find(|(k, _)| k == id).map(|(_, w)| *w);
    assert_eq!(why("f-newest"), Some(KeepReason::Newest));
    assert_eq!(why("e"), Some(KeepReason::Newest));
    assert_eq!(why("d-young"), Some(KeepReason::Young));
    assert_eq!(why("c-good"), Some(KeepReason::NewestRestorable));
    assert_eq!(why("b-target"), Some(KeepReason::Protected));
    assert_eq!(why("a-broken"), Some(KeepReason::Unreadable));
}
use crate::origin::Origin;

#[test]
fn ids_accept_both_spellings_and_reject_paths() {
    assert_eq!(parse_id("20251222-110221").unwrap(), "20251222-110221");
    assert_eq!(
        parse_id("incident-20251222-110221").unwrap(),
        "20251222-110221"
    );
    assert_eq!(parse_id("20251222-110221-2").unwrap(), "20251222-110221-2");
    for bad in [
        "../20251222-110221",
        "a/b",
        "..",
        "",
        "2025",
        "20251222-11022x",
        "20251222-110221-",
        "latest2",
    ] {
        let err = parse_id(bad).unwrap_err();
        assert_eq!(
            crate::exit::status_of(&err),
            crate::exit::ExitStatus::Usage,
            "{bad}"
        );
    }
}

#[test]
fn suffixed_ids_sort_numerically() {
    let mut ids = vec![
        "20251222-110221-10",
        "20251222-110221",
        "20251222-110221-2",
        "20251223-000000",
    ];
    ids.sort_by_key(|id| sort_key(id));
    assert_eq!(
        ids,
        [
            "20251222-110221",
            "20251222-110221-2",
            "20251222-110221-10",
            "20251223-000000"
        ]
    );
}

fn draft_incident(store: &Store, app: &Path, kind: Kind) -> String {
    let mut d = store.begin().unwrap();
    let entry = d.copy_in(manifest::PM2_DUMP, &app.join("dump")).unwrap();
    d.add(Part::Pm2Dump { file: entry });
    d.commit(Meta {
        kind,
        reason: "test".into(),
        origin: Origin::current(),
        app_name: "api".into(),
        app_dir: app.to_path_buf(),
        processes: vec![],
    })
    .unwrap()
}

#[test]
fn a_committed_incident_verifies_and_tampering_is_caught() {
    let root = tempfile::tempdir().unwrap();
    let app = root.path().join("app");
    fs::create_dir(&app).unwrap();
    fs::write(app.join("dump"), "[]").unwrap();
    let store = Store::at(&root.path().join("backups"), "api");
    store.ensure().unwrap();
    let id = draft_incident(&store, &app, Kind::Manual);
    let id2 = draft_incident(&store, &app, Kind::PreRollback);
    assert_ne!(id, id2, "same second gets a suffix");
    let v = store.verify(&id).unwrap();
    let entry = v.manifest.stored_files().next().unwrap().clone();
    let stored = v.stored(&entry);
    assert_eq!(
        fs::metadata(&stored).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // latest skips the pre-rollback snapshot.
    assert_eq!(store.resolve("latest").unwrap().0.manifest.id, id);
    // Another app's store sees none of it.
    let elsewhere = Store::at(store.dir(), "api").of_folder(&root.path().join("green"));
    let err = elsewhere.verify(&id).unwrap_err().to_string();
    assert!(
        err.contains("was taken of") && err.contains("green"),
        "{err}"
    );
    assert!(
        Store::at(store.dir(), "api")
            .of_folder(&app)
            .verify(&id)
            .is_ok()
    );
    let other = Store::at(store.dir(), "worker");
    assert!(other.list().unwrap().is_empty());
    assert!(
        other
            .verify(&id)
            .unwrap_err()
            .to_string()
            .contains("belongs to app api")
    );
    fs::write(&stored, "{}").unwrap();
    let err = store.verify(&id).unwrap_err();
    assert_eq!(crate::exit::status_of(&err), crate::exit::ExitStatus::Usage);
    assert!(err.to_string().contains("sha256"), "{err}");
    fs::remove_file(&stored).unwrap();
    assert!(
        store
            .verify(&id)
            .unwrap_err()
            .to_string()
            .contains("missing")
    );
    assert!(
        store
            .list()
            .unwrap()
            .iter()
            .all(|l| !l.dir.to_string_lossy().contains(TEMP_PREFIX))
    );
}

#[test]
fn a_stored_file_behind_a_symlinked_folder_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let outside = root.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("dump.pm2"), "[]").unwrap();
    let inc = root.path().join("incident");
    fs::create_dir(&inc).unwrap();
    std::os::unix::fs::symlink(&outside, inc.join("pm2")).unwrap();
    let entry = FileEntry {
        path: manifest::PM2_DUMP.into(),
        size: 2,
        mode: 0o600,
        sha256: sha256_file(&outside.join("dump.pm2")).unwrap(),
    };
    let err = check_entry(&inc, &entry).unwrap_err();
    assert!(err.contains("not a real folder"), "{err}");
}

#[test]
fn a_fifo_manifest_is_refused_without_hanging() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("incident-20251222-110221");
    fs::create_dir(&dir).unwrap();
    let fifo = std::ffi::CString::new(dir.join(MANIFEST).to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    let err = read_manifest(&dir).unwrap_err();
    assert!(err.contains("cannot read"), "{err}");
}

proptest::proptest! {
    #[test]
    fn id_parsing_never_panics(s in "\\PC{0,30}") {
        let _ = parse_id(&s);
        let _ = sort_key(&s);
    }

    #[test]
    fn manifest_parsing_never_panics(s in "\\PC{0,300}") {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(MANIFEST), &s).unwrap();
        let _ = read_manifest(dir.path());
        let _ = manifest::check_stored_path(&s);
    }
}
