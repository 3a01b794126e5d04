//! The Ansible rollout of `examples/ansible/rollout.yml`, for real: ansible-core 2.19 from the
//! virtualenv `scripts/test.sh` installs, three inventory hosts on this machine
//! (`ansible_connection=local`), each with its own app folder, PM2 daemon and port.

use std::path::PathBuf;
use std::process::Command;

use crate::support::*;

fn playbook_bin() -> PathBuf {
    let bin = repo_root().join("target/ansible-venv/bin/ansible-playbook");
    assert!(
        bin.exists(),
        "{} is missing: scripts/test.sh installs ansible-core (examples/ansible/requirements.txt) into target/ansible-venv",
        bin.display()
    );
    bin
}

/// Three hosts, each an app at v1 under its own PM2 daemon.
fn fleet() -> Vec<App> {
    let apps: Vec<App> = (0..3).map(|_| App::new()).collect();
    for a in &apps {
        a.start_v1();
    }
    apps
}

/// An inventory of the three apps as hosts web1..web3, plus `extra` lines in the group.
fn inventory(apps: &[App], extra: &str) -> tempfile::NamedTempFile {
    let python = repo_root().join("target/ansible-venv/bin/python");
    let mut text = String::from("[guard_fleet]\n");
    for (i, a) in apps.iter().enumerate() {
        text.push_str(&format!(
            "web{} ansible_connection=local guard_config={}\n",
            i + 1,
            a.config.display()
        ));
    }
    text.push_str(extra);
    text.push_str(&format!(
        "\n[guard_fleet:vars]\nguard_bin={}\nansible_python_interpreter={}\nguard_lock_delay=1\n",
        env!("CARGO_BIN_EXE_guard"),
        python.display()
    ));
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), text).unwrap();
    f
}

fn rollout(inv: &tempfile::NamedTempFile) -> (i32, String) {
    rollout_with(inv, &[])
}

/// The rollout with extra ansible-playbook arguments (`-e guard_ref=v4`).
fn rollout_with(inv: &tempfile::NamedTempFile, extra: &[&str]) -> (i32, String) {
    let out = Command::new(playbook_bin())
        .args(extra)
        .arg("-i")
        .arg(inv.path())
        .arg(repo_root().join("examples/ansible/rollout.yml"))
        .env("ANSIBLE_NOCOLOR", "1")
        .env("ANSIBLE_HOST_KEY_CHECKING", "False")
        .env("ANSIBLE_LOCAL_TEMP", std::env::temp_dir())
        .env_remove("GUARD_CONFIG")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

fn versions(apps: &[App]) -> Vec<Option<String>> {
    apps.iter().map(App::version).collect()
}

fn v(s: &str) -> Option<String> {
    Some(s.to_string())
}

#[test]
fn an_unreachable_host_stops_before_anything_changes_a_bad_release_stops_at_the_first_host_and_a_good_one_goes_everywhere()
 {
    let apps = fleet();

    // A fourth host nobody can reach: the preflight play stops the rollout.
    for a in &apps {
        a.release("v2", "good");
    }
    let inv = inventory(
        &apps,
        "web4 ansible_connection=ssh ansible_host=127.0.0.1 ansible_port=1 ansible_user=nobody guard_config=/nonexistent\n",
    );
    let (code, out) = rollout(&inv);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("nothing was deployed anywhere"), "{out}");
    assert_eq!(versions(&apps), [v("v1"), v("v1"), v("v1")], "{out}");
    assert!(apps.iter().all(|a| a.incidents().is_empty()), "{out}");

    // A release that crashes: web1 rolls itself back (exit 3), web2 and web3 are never touched.
    for a in &apps {
        a.release("v3", "crash-at-start");
    }
    let inv = inventory(&apps, "");
    let (code, out) = rollout(&inv);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("guard deploy on web1 exited 3"), "{out}");
    assert!(out.contains("no other host"), "{out}");
    assert_eq!(versions(&apps), [v("v1"), v("v1"), v("v1")], "{out}");
    assert_eq!(apps[0].incidents().len(), 1);
    assert!(
        apps[1].incidents().is_empty() && apps[2].incidents().is_empty(),
        "{out}"
    );

    // A good release goes everywhere, one host at a time, named by the rollout's
    // `guard_ref`: each deploy step gets it as GUARD_REF, each host records it.
    for a in &apps {
        a.release("v4", "good");
        a.edit_config(
            "command = \"git pull --ff-only\"",
            "command = \"git pull --ff-only && echo \\\"$GUARD_REF\\\" > .deployed-ref\"",
        );
    }
    // A dry run first: --check runs `guard check` on every host and deploys nothing.
    let (code, out) = rollout_with(&inv, &["--check", "-e", "guard_ref=v4"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("guard check instead of a deploy"), "{out}");
    assert_eq!(versions(&apps), [v("v1"), v("v1"), v("v1")], "{out}");
    assert_eq!(apps[1].incidents().len(), 0, "{out}");
    let (code, out) = rollout_with(&inv, &["-e", "guard_ref=v4"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(versions(&apps), [v("v4"), v("v4"), v("v4")], "{out}");
    for a in &apps {
        assert_eq!(a.read(".deployed-ref").trim(), "v4");
        let history = a.guard(&["history"]);
        assert!(history.stdout.contains("ref v4"), "{}", history.stdout);
        let list = a.guard(&["--json", "incidents"]).json();
        assert_eq!(
            list["data"]["incidents"][0]["outcome"]["ref"], "v4",
            "{list}"
        );
    }
}

#[test]
fn a_late_failure_rolls_the_hosts_already_updated_back_to_their_own_incidents() {
    let apps = fleet();
    apps[0].release("v2", "good");
    apps[1].release("v2", "good");
    // Only the last host's release is broken (its own config or data, say).
    apps[2].release("v2", "crash-at-start");
    let inv = inventory(&apps, "");
    let (code, out) = rollout(&inv);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("guard deploy on web3 exited 3"), "{out}");
    assert!(
        out.contains("web1 exit 0") && out.contains("web2 exit 0"),
        "{out}"
    );
    assert_eq!(versions(&apps), [v("v1"), v("v1"), v("v1")], "{out}");
    // web1 and web2 went back through `guard rollback`, recorded in their own audit logs.
    for a in &apps[..2] {
        let h = a.guard(&["--json", "history"]);
        let rollbacks = h.json()["data"]["entries"]
            .as_array()
            .map(|e| e.iter().filter(|e| e["subcommand"] == "rollback").count())
            .unwrap_or(0);
        assert_eq!(rollbacks, 1, "{}", h.stdout);
    }
}
