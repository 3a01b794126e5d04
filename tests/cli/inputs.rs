//! Bad input that guard refuses before it would run node or pm2: every case exits 2 with a
//! message that says what and where, and changes nothing.

use crate::support::{App, refused};

#[test]
fn malformed_config_and_unknown_keys_are_usage_errors_naming_file_and_line() {
    let app = App::offline();
    let good = std::fs::read_to_string(&app.config).unwrap();
    std::fs::write(&app.config, good.replace("[deploy]", "[deploy\n")).unwrap();
    let line = good.lines().position(|l| l == "[deploy]").unwrap() + 1;
    refused(&app, &["deploy"], &format!("line {line}"));
    std::fs::write(
        &app.config,
        good.replace("[deploy]", "[deploy]\ncomand = \"x\""),
    )
    .unwrap();
    refused(&app, &["deploy"], "comand");
    let run = app.guard(&["deploy"]);
    assert!(
        run.stderr.contains(&app.config.display().to_string()),
        "{}",
        run.stderr
    );
    std::fs::write(
        &app.config,
        good.replace("timeout = \"1s\"", "timeout = \"soon\""),
    )
    .unwrap();
    refused(&app, &["health"], "timeout");
    std::fs::write(
        &app.config,
        good.replace("dir = \"app\"", "dir = \"nowhere\""),
    )
    .unwrap();
    refused(&app, &["deploy"], "app.dir");
    std::fs::remove_file(&app.config).unwrap();
    refused(&app, &["deploy"], "cannot read config");
}

#[test]
fn bad_flags_are_usage_errors() {
    let app = App::offline();
    refused(&app, &["deploy", "--frobnicate"], "--frobnicate");
    refused(&app, &["rollback"], "--incident");
    refused(
        &app,
        &["clean", "--check", "--dry-run"],
        "cannot be used with",
    );
    // A script that asked for JSON gets JSON even for a bad flag.
    let run = app.guard(&["--json", "deploy", "--frobnicate"]);
    run.expect(2);
    let doc = run.json();
    assert_eq!(doc["exit_code"], 2);
    assert_eq!(doc["schema"], 2);
    assert!(
        doc["reason"].as_str().unwrap().contains("--frobnicate"),
        "{doc}"
    );
    assert_eq!(doc["command"], "deploy");
    // clap's message keeps its lines (JSON escapes them), and a bad flag before any
    // subcommand names guard itself, never "".
    assert!(
        doc["reason"].as_str().unwrap().contains("\nUsage:"),
        "{doc}"
    );
    let run = app.guard(&["--json", "--frobnicate"]);
    run.expect(2);
    assert_eq!(run.json()["command"], "guard", "{}", run.stdout);
}

#[test]
fn pm2_not_installed_is_a_usage_error() {
    let app = App::offline();
    let cfg = std::fs::read_to_string(&app.config).unwrap();
    let bin = app.pm2.display().to_string();
    std::fs::write(&app.config, cfg.replace(&bin, "/nonexistent/bin/pm2")).unwrap();
    refused(&app, &["deploy"], "pm2 not found");
    std::fs::write(
        &app.config,
        cfg.replace(&format!("bin = \"{bin}\""), "bin = \"pm2-not-on-path\""),
    )
    .unwrap();
    refused(&app, &["backup"], "not an executable on PATH");
}

#[test]
fn bash_completes_rollback_with_latest_and_the_incident_ids() {
    let app = App::offline();
    // An incident folder as guard names them (its manifest is not read for the ids).
    std::fs::create_dir_all(app.backups.join("incident-20261202-101010")).unwrap();
    let script = app.root.path().join("guard.bash");
    let out = app.guard_cmd(&["completions", "bash"]).output().unwrap();
    std::fs::write(&script, &out.stdout).unwrap();
    let bin_dir = std::path::Path::new(env!("CARGO_BIN_EXE_guard"))
        .parent()
        .unwrap();
    let check = format!(
        "source {}\nCOMP_WORDS=(guard --config {} rollback '')\nCOMP_CWORD=4\n_guard_incidents guard '' rollback\necho \"${{COMPREPLY[*]}}\"",
        script.display(),
        app.config.display()
    );
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(&check)
        .env("PATH", format!("{}:/usr/bin:/bin", bin_dir.display()))
        .env("PM2_HOME", &app.pm2_home)
        .output()
        .unwrap();
    let offered = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        offered.trim(),
        "latest 20261202-101010",
        "{offered}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The completion script of `shell`, written next to the app, and the PATH that finds guard.
fn completion_script(app: &App, shell: &str, name: &str) -> (std::path::PathBuf, String) {
    let script = app.root.path().join(name);
    let out = app.guard_cmd(&["completions", shell]).output().unwrap();
    std::fs::write(&script, &out.stdout).unwrap();
    let bin_dir = std::path::Path::new(env!("CARGO_BIN_EXE_guard"))
        .parent()
        .unwrap();
    (script, format!("{}:/usr/bin:/bin", bin_dir.display()))
}

#[test]
#[cfg_attr(
    not(feature = "real-pm2"),
    ignore = "needs zsh and fish: the full suite (scripts/test.sh installs them)"
)]
fn zsh_and_fish_complete_rollback_with_latest_and_the_incident_ids() {
    let app = App::offline();
    std::fs::create_dir_all(app.backups.join("incident-20261202-101010")).unwrap();
    // fish answers `complete -C` for a command line as it would at a prompt: the real thing.
    let (fish_script, path) = completion_script(&app, "fish", "guard.fish");
    let out = std::process::Command::new("fish")
        .arg("--no-config")
        .arg("-c")
        .arg(format!(
            "source {}; complete -C 'guard --config {} rollback '",
            fish_script.display(),
            app.config.display()
        ))
        .env("PATH", &path)
        .env("PM2_HOME", &app.pm2_home)
        .output()
        .expect("fish is needed by this test (scripts/test.sh installs it as root)");
    let offered = String::from_utf8_lossy(&out.stdout);
    let words: Vec<&str> = offered
        .lines()
        .map(|l| l.split('\t').next().unwrap())
        .collect();
    assert!(
        words.contains(&"latest") && words.contains(&"20261202-101010"),
        "fish offered {offered:?}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // zsh: the completion function itself, run by real zsh with the words of that line;
    // only `compadd` (a builtin that works inside a completion widget alone) is replaced by
    // a function printing what it was given, and `compdef` by a no-op.
    let (zsh_script, path) = completion_script(&app, "zsh", "_guard");
    let check = format!(
        "compadd() {{ while [[ $1 != -- ]]; do shift; done; shift; print -l -- \"$@\"; }}\n\
         compdef() {{ : }}\n\
         source {}\n\
         words=(guard --config {} rollback '')\n\
         CURRENT=5\n\
         _guard_incidents",
        zsh_script.display(),
        app.config.display()
    );
    let out = std::process::Command::new("zsh")
        .arg("-f")
        .arg("-c")
        .arg(&check)
        .env("PATH", &path)
        .env("PM2_HOME", &app.pm2_home)
        .output()
        .expect("zsh is needed by this test (scripts/test.sh installs it as root)");
    let offered = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        offered.split_whitespace().collect::<Vec<_>>(),
        ["latest", "20261202-101010"],
        "zsh offered {offered:?}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_offline_validates_the_config_without_the_app_folder() {
    let app = App::offline();
    // A repository's CI: the config, but no app folder on this machine.
    std::fs::remove_dir_all(&app.dir).unwrap();
    let run = app.guard(&["check", "--offline"]);
    run.expect(0);
    assert!(
        run.stdout.contains("is valid: app demo-backend"),
        "{}",
        run.stdout
    );
    // Without --offline the same config is refused: its app.dir is missing.
    refused(&app, &["check"], "is not a folder");
    // A bad value is still a usage error naming it.
    let text = std::fs::read_to_string(&app.config).unwrap();
    std::fs::write(
        &app.config,
        text.replace("timeout = \"1s\"", "timeout = \"soon\""),
    )
    .unwrap();
    refused(&app, &["check", "--offline"], "timeout");
}
