//! The shape of `--json` documents, held by snapshots in tests/guard/shapes/: every key path
//! with its JSON type, so a field that goes, changes type or appears fails here until the
//! snapshot is updated on purpose (and `schema` raised when a field changes meaning or goes).
//! `GUARD_BLESS=1 cargo test --test guard json_shape` rewrites the snapshots.

use std::collections::BTreeSet;

use crate::support::*;

/// `path: type` lines of a JSON value; array elements share the path `[]`. The inside of a
/// verdict's `change` is left out: its fields depend on its `kind` (a crash seen by PM2's
/// counter or by its status, depending on timing).
fn shape(v: &serde_json::Value, path: &str, out: &mut BTreeSet<String>) {
    use serde_json::Value::*;
    let kind = match v {
        Null => "null",
        Bool(_) => "bool",
        Number(_) => "number",
        String(_) => "string",
        Array(_) => "array",
        Object(_) => "object",
    };
    out.insert(format!("{path}: {kind}"));
    if path.ends_with(".reason.change") {
        return;
    }
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

fn parse(lines: &BTreeSet<String>) -> std::collections::BTreeMap<String, String> {
    lines
        .iter()
        .filter_map(|l| l.rsplit_once(": "))
        .map(|(p, k)| (p.to_string(), k.to_string()))
        .collect()
}

/// Whether `path` may be missing on a side where an ancestor is null or an empty array (an
/// optional value unset in one run, a list empty in one run).
fn covered(path: &str, side: &std::collections::BTreeMap<String, String>) -> bool {
    let mut p = path.to_string();
    while let Some(cut) = p.rfind(['.', '[']) {
        p.truncate(cut);
        match side.get(&p).map(String::as_str) {
            Some("null") => return true,
            Some("array") if !side.contains_key(&format!("{p}[]")) => return true,
            Some(_) => return false,
            None => {}
        }
    }
    false
}

/// The differences between two shapes that are not explained by an optional value or an
/// empty list: (gone, new or changed).
fn differences(want: &BTreeSet<String>, got: &BTreeSet<String>) -> (Vec<String>, Vec<String>) {
    let (w, g) = (parse(want), parse(got));
    let mut gone = Vec::new();
    let mut new = Vec::new();
    for (path, kind) in &w {
        match g.get(path) {
            Some(k) if k == kind || k == "null" || kind == "null" => {}
            Some(k) => new.push(format!("{path}: {kind} -> {k}")),
            None if covered(path, &g) => {}
            None => gone.push(format!("{path}: {kind}")),
        }
    }
    for (path, kind) in &g {
        if !w.contains_key(path) && !covered(path, &w) {
            new.push(format!("{path}: {kind}"));
        }
    }
    (gone, new)
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
    let want: BTreeSet<String> = want.lines().map(str::to_string).collect();
    let (gone, new) = differences(&want, &lines);
    assert!(
        gone.is_empty() && new.is_empty(),
        "--json of {name} changed shape\n  gone: {gone:?}\n  new or changed: {new:?}\n(if on purpose: GUARD_BLESS=1, and raise output::SCHEMA when a field goes or changes meaning)"
    );
}

#[test]
fn shape_differences_allow_optional_values_and_empty_lists_only() {
    let set = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    let want = set(&[
        ": object",
        ".a: number",
        ".b: object",
        ".b.c: string",
        ".l: array",
        ".l[]: number",
    ]);
    // b unset and l empty in this run: nothing is missing.
    let got = set(&[": object", ".a: number", ".b: null", ".l: array"]);
    assert_eq!(differences(&want, &got), (vec![], vec![]));
    // a gone and a new field d: both reported.
    let got = set(&[": object", ".b: null", ".l: array", ".d: bool"]);
    let (gone, new) = differences(&want, &got);
    assert_eq!(gone, [".a: number"]);
    assert_eq!(new, [".d: bool"]);
    // a changed type.
    let got = set(&[": object", ".a: string", ".b: null", ".l: array"]);
    assert_eq!(differences(&want, &got).1, [".a: number -> string"]);
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
