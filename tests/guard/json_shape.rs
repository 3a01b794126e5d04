//! The shape of `--json` documents, held by snapshots in tests/guard/shapes/: every key path
//! with its JSON type, so a field that goes, changes type or appears fails here until the
//! snapshot is updated on purpose (and `schema` raised when a field changes meaning or goes).
//! `GUARD_BLESS=1 cargo test --test guard json_shape` rewrites the snapshots.

use std::collections::BTreeSet;

use crate::support::*;

/// `path: type` lines of a JSON value; array elements share the path `[]`. A null is left
/// out (an optional value may be absent in one run and set in the next), and so is the inside
/// of a verdict's `change`, whose fields depend on its `kind` (a crash seen by PM2's counter
/// or by its status, depending on timing).
fn shape(v: &serde_json::Value, path: &str, out: &mut BTreeSet<String>) {
    use serde_json::Value::*;
    if v.is_null() {
        return;
    }
    if path.ends_with(".reason.change") {
        out.insert(format!("{path}: object"));
        return;
    }
    let kind = match v {
        Null => "null",
        Bool(_) => "bool",
        Number(_) => "number",
        String(_) => "string",
        Array(_) => "array",
        Object(_) => "object",
    };
    out.insert(format!("{path}: {kind}"));
    match v {
        Array(items) => {
            for i in items {
                shape(i, &format!("{path}[]"), out);
            }
        }
        Object(map) => {
            for (k, val) in map {
                shape(val, &format!("{path}.{k}"), out);
            }
        }
        _ => {}
    }
}

fn check(name: &str, doc: &serde_json::Value) {
    let mut lines = BTreeSet::new();
    shape(doc, "", &mut lines);
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let file = repo_root()
        .join("tests/guard/shapes")
        .join(format!("{name}.txt"));
    if std::env::var_os("GUARD_BLESS").is_some() {
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, &text).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&file)
        .unwrap_or_else(|_| panic!("{} missing: run with GUARD_BLESS=1", file.display()));
    let want: BTreeSet<&str> = want.lines().collect();
    let got: BTreeSet<&str> = text.lines().collect();
    let gone: Vec<_> = want.difference(&got).collect();
    let new: Vec<_> = got.difference(&want).collect();
    assert!(
        gone.is_empty() && new.is_empty(),
        "--json of {name} changed shape\n  gone: {gone:?}\n  new: {new:?}\n(if on purpose: GUARD_BLESS=1, and raise output::SCHEMA when a field goes or changes meaning)"
    );
}

#[test]
fn json_documents_keep_their_shape() {
    let app = App::new();
    app.start_v1();
    app.release("v2", "good");
    let ok = app.guard(&["--json", "deploy"]);
    ok.expect(0);
    check("deploy-ok", &ok.json());
    for key in [
        "host",
        "started_at",
        "finished_at",
        "duration_ms",
        "before",
        "after",
    ] {
        assert!(ok.json().get(key).is_some(), "deploy --json lacks {key}");
    }
    assert!(
        ok.json()["started_at"]
            .as_str()
            .unwrap()
            .parse::<jiff::Timestamp>()
            .is_ok()
    );

    app.release("v3", "crash-at-start");
    let bad = app.guard(&["--json", "deploy"]);
    bad.expect(3);
    check("deploy-rolled-back", &bad.json());

    let id = ok.json()["incident"].as_str().unwrap().to_string();
    let back = app.guard(&["--json", "rollback", &id]);
    back.expect(0);
    check("rollback", &back.json());

    let health = app.guard(&["--json", "health"]);
    health.expect(0);
    check("health", &health.json());

    let usage = app.guard(&["--json", "deploy", "--no-such-flag"]);
    usage.expect(2);
    check("usage-error", &usage.json());
}
