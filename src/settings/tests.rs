//! Unit tests of reading and resolving guard.toml.

use super::watch::parse_bytes;
use super::*;

fn parse(text: &str) -> Result<Settings> {
    let dir = std::env::temp_dir();
    Settings::parse(text, &dir.join("guard.toml"))
}

const MINIMAL: &str =
    "[app]\nname = \"api\"\ndir = \".\"\n[health]\nurl = \"http://127.0.0.1:3000/health\"\n";

#[test]
fn minimal_config_gets_defaults() {
    let s = parse(MINIMAL).unwrap();
    assert_eq!(s.app.name, "api");
    assert_eq!(s.health.timeout, Duration::from_secs(2));
    assert_eq!(s.health.deadline, Duration::from_secs(60));
    assert_eq!(s.health.stable_for, Duration::from_secs(10));
    assert_eq!(s.health.interval, Duration::from_millis(250));
    assert_eq!(s.backup.keep, DEFAULT_KEEP);
    assert_eq!(s.clean.paths, [PathBuf::from("dist")]);
    assert!(s.app.ecosystem.is_none(), "found in app.dir when needed");
    assert!(s.clean.after_deploy);
    assert!(s.readable_env.iter().any(|k| k == "PORT"));
}

#[test]
fn watch_alert_and_strategy_settings_are_checked_and_name_what_is_wrong() {
    let s = parse(MINIMAL).unwrap();
    assert_eq!(s.strategy, Strategy::Restart);
    assert_eq!(s.port_env, "PORT");
    assert_eq!(s.watch.rollback_within, None);
    assert!(!s.alert.any());
    let two = format!(
        "{MINIMAL}[[alert.slack]]\nurl_env = \"A\"\n[[alert.slack]]\nurl_env = \"B\"\nurl_file = \"/x\"\n"
    );
    let msg = format!("{:#}", parse(&two).unwrap_err());
    assert!(
        msg.contains("alert.slack #2") && msg.contains("exactly one"),
        "{msg}"
    );
    for (bad, names) in [
        ("[watch]\ninterval = \"1ms\"\n", "watch.interval"),
        ("[watch]\nmax_memory = \"12 parsecs\"\n", "watch.max_memory"),
        ("[watch]\nfailures = 0\n", "watch.failures"),
        ("[deploy]\nport_env = \"PO RT\"\n", "deploy.port_env"),
        ("[deploy]\nstrategy = \"bluegreen\"\n", "strategy"),
    ] {
        let msg = format!("{:#}", parse(&format!("{MINIMAL}{bad}")).unwrap_err());
        assert!(msg.contains(names), "{bad}: {msg}");
    }
    assert_eq!(parse_bytes("512MB").unwrap(), 512 * 1_048_576);
    assert_eq!(parse_bytes("1.5G").unwrap(), 1_610_612_736);
}

#[test]
fn unknown_key_is_a_usage_error_naming_the_line() {
    let err = parse(&format!("{MINIMAL}colour = \"red\"\n")).unwrap_err();
    assert_eq!(crate::exit::status_of(&err), crate::exit::ExitStatus::Usage);
    let msg = format!("{err:#}");
    assert!(msg.contains("line 6"), "{msg}");
    assert!(msg.contains("colour"), "{msg}");
}

#[test]
fn paths_may_not_escape_the_app_dir() {
    for bad in ["\"../x\"", "\"/etc\"", "\"a/../../b\""] {
        let text = format!("{MINIMAL}[clean]\npaths = [{bad}]\n");
        assert!(parse(&text).is_err(), "{bad} was accepted");
    }
}

#[test]
fn durations_parse_in_human_form() {
    let s = parse(&MINIMAL.replace(
        "[health]\n",
        "[health]\ntimeout = \"1s 500ms\"\nstable_for = \"0s\"\n",
    ))
    .unwrap();
    assert_eq!(s.health.timeout, Duration::from_millis(1500));
    assert!(s.health.stable_for.is_zero());
    assert!(parse(&MINIMAL.replace("[health]\n", "[health]\ntimeout = \"soon\"\n")).is_err());
}

#[test]
fn the_shipped_example_config_is_valid() {
    let example = include_str!("../../guard.toml.example");
    let dir = tempfile::tempdir().unwrap();
    let text = example.replace(
        "/var/www/onai-integrator-login-main/backend",
        &dir.path().display().to_string(),
    );
    let s = parse(&text).unwrap();
    assert_eq!(s.app.name, "onai-backend");
    assert_eq!(s.backup.files.len(), 2);
    assert!(s.clean.after_deploy);
    assert_eq!(s.deploy_command.as_deref(), Some("git pull --ff-only"));
}

#[test]
fn values_that_are_typos_or_dangers_are_refused() {
    for (extra, says) in [
        (
            "[health]\nstable_for = \"18446744073709551615s\"\n",
            "health.stable_for",
        ),
        ("[health]\ntimeout = \"1ns\"\n", "health.timeout"),
        ("[clean]\npaths = [\".git\"]\n", "git's repository"),
        ("[clean]\nglobs = [\"*\"]\n", "matches any file name"),
        ("[pm2]\ntimeout = \"0s\"\n", "pm2.timeout"),
    ] {
        let text = if extra.starts_with("[health]") {
            MINIMAL.replace("[health]\n", extra)
        } else {
            format!("{MINIMAL}{extra}")
        };
        let err = parse(&text).unwrap_err();
        assert_eq!(
            crate::exit::status_of(&err),
            crate::exit::ExitStatus::Usage,
            "{extra}"
        );
        assert!(format!("{err:#}").contains(says), "{extra}: {err:#}");
    }
    let long = MINIMAL.replace("name = \"api\"", &format!("name = \"{}\"", "a".repeat(300)));
    assert!(parse(&long).is_err());
}

#[test]
fn backup_dir_inside_app_dir_through_a_symlink_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let app = root.path().join("app");
    std::fs::create_dir(&app).unwrap();
    std::os::unix::fs::symlink(&app, root.path().join("link")).unwrap();
    let text = "[app]\nname = \"api\"\ndir = \"link\"\n[backup]\ndir = \"app/backups\"\n[health]\nurl = \"http://127.0.0.1:3000/health\"\n";
    let err = Settings::parse(text, &root.path().join("guard.toml")).unwrap_err();
    assert!(format!("{err:#}").contains("inside app.dir"), "{err:#}");
}

#[test]
fn exclude_patterns_are_checked() {
    let s = parse(&format!(
        "{MINIMAL}[backup]\nexclude = [\"logs/\", \"*.log\"]\n"
    ))
    .unwrap();
    assert!(s.backup.exclude.excluded(Path::new("logs"), true));
    let err = parse(&format!("{MINIMAL}[backup]\nexclude = [\"../up\"]\n")).unwrap_err();
    assert_eq!(crate::exit::status_of(&err), crate::exit::ExitStatus::Usage);
    assert!(format!("{err:#}").contains("backup.exclude"), "{err:#}");
}

proptest::proptest! {
    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
        let _ = parse(&text);
    }

    #[test]
    fn arbitrary_values_never_panic(name in "\\PC{0,20}", url in "\\PC{0,40}", dur in "\\PC{0,10}") {
        let text = format!(
            "[app]\nname = {name:?}\ndir = \".\"\n[health]\nurl = {url:?}\ntimeout = {dur:?}\n"
        );
        let _ = parse(&text);
    }
}

#[test]
fn a_config_is_found_upward_only_when_no_one_else_may_write_it() {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir().unwrap();
    let app = root.path().join("app");
    let deep = app.join("src/routes");
    std::fs::create_dir_all(&deep).unwrap();
    // Nothing anywhere: ./guard.toml, whose read error names it.
    let none = super::discover(&deep).unwrap();
    assert_eq!(none, deep.join("guard.toml"));
    let cfg = app.join("guard.toml");
    std::fs::write(&cfg, "").unwrap();
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(super::discover(&deep).unwrap(), cfg);
    // One in the folder itself wins.
    assert_eq!(super::discover(&app).unwrap(), cfg);
    // Group- or world-writable above: refused, naming it.
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o666)).unwrap();
    let err = format!("{:#}", super::discover(&deep).unwrap_err());
    assert!(
        err.contains("guard.toml") && err.contains("--config"),
        "{err}"
    );
    // A symlink above is never followed, whatever it points at.
    std::fs::remove_file(&cfg).unwrap();
    let real = root.path().join("real.toml");
    std::fs::write(&real, "").unwrap();
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::symlink(&real, &cfg).unwrap();
    let err = format!("{:#}", super::discover(&deep).unwrap_err());
    assert!(err.contains("without following a link"), "{err}");
}
