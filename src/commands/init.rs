//! `guard init`: a guard.toml for an app, from its ecosystem file. Never overwrites a file.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use super::Done;
use crate::cli::InitArgs;
use crate::ecosystem::{self, Declared};
use crate::exit::{Happened, usage};
use crate::output::Printer;
use crate::redact::is_env_file;

/// `--json` data of `guard init`.
#[derive(Serialize)]
struct InitData {
    /// The file written.
    config: PathBuf,
    /// What guard guessed, one line each, for a person to check.
    guessed: Vec<String>,
}

/// `guard init`.
pub async fn run(printer: &mut Printer, config: Option<&Path>, args: &InitArgs) -> Result<Done> {
    let cwd = std::env::current_dir().context("reading the current folder")?;
    let dir =
        std::path::absolute(args.dir.as_deref().unwrap_or(&cwd)).context("resolving --dir")?;
    let out = match config {
        Some(c) => std::path::absolute(c).context("resolving --config")?,
        None => cwd.join("guard.toml"),
    };
    if std::fs::symlink_metadata(&out).is_ok() {
        return Err(usage(format!(
            "{} already exists: guard init never overwrites a config (move it away, or pass --config NEW)",
            out.display()
        )));
    }
    let eco = ecosystem::locate(None, &dir)?;
    let pm2_root = crate::pm2::find_program(Path::new("pm2"))
        .and_then(|p| std::fs::canonicalize(p).ok())
        .and_then(|p| p.parent()?.parent().map(Path::to_path_buf));
    let apps = ecosystem::load(&eco, pm2_root.as_deref())
        .await
        .map_err(|e| usage(format!("{e:#}")))?
        .ok_or_else(|| usage("guard init needs node on PATH to read the ecosystem file"))?;
    let app = pick(&apps, args.app.as_deref(), &eco)?;
    let (config, guessed) = guess(app, &eco, &out).await;
    write_new(&out, &config.toml(&eco))?;
    for g in &guessed {
        printer.line(format!("guessed  {g}"));
    }
    printer.set_data(&InitData {
        config: out.clone(),
        guessed,
    });
    Ok(Done::new(
        Happened::Done,
        format!(
            "wrote {}: check what it guessed, then run `guard --config {} check`",
            out.display(),
            out.display()
        ),
    ))
}

/// What to write for `app`, and each guess in a line for a person to check.
async fn guess(app: &Declared, eco: &Path, out: &Path) -> (Guessed, Vec<String>) {
    let name = app.name.clone().unwrap_or_default();
    let app_dir = app.cwd_path(eco);
    let mut guessed = vec![format!("app {name:?} from {}", eco.display())];
    guessed.push(format!(
        "app.dir {} (the ecosystem's cwd)",
        app_dir.display()
    ));

    let env_files = env_files_loaded(eco, &app_dir);
    let mut files: Vec<String> = env_files.clone();
    if app_dir.join("package.json").is_file() {
        files.push("package.json".into());
    }
    if env_files.is_empty() {
        guessed
            .push("no env file found: list yours in backup.files so its values are masked".into());
    } else {
        guessed.push(format!(
            "env files {} (their values are masked)",
            env_files.join(", ")
        ));
    }
    let port = app.port.clone().or_else(|| port_from(&app_dir, &env_files));
    let url = match &port {
        Some(p) => format!("http://127.0.0.1:{p}/health"),
        None => "http://127.0.0.1:3000/health".to_string(),
    };
    guessed.push(match &port {
        Some(p) => format!("health.url {url} (PORT={p}; check the path /health)"),
        None => format!("health.url {url} (no PORT found: CHECK the port and path)"),
    });
    let builds = app
        .script_path(eco)
        .is_some_and(|s| s.starts_with(app_dir.join("dist")));
    let is_git = app_dir.join(".git").exists() || crate::git::Git::open(&app_dir).await.is_some();
    let deploy = match (is_git, builds) {
        (true, true) => Some("git pull --ff-only && npm ci && npm run build"),
        (true, false) => Some("git pull --ff-only"),
        (false, _) => None,
    };
    if builds {
        guessed.push(
            "the script is in dist/: an app that builds on the server (clean.after_deploy = false)"
                .into(),
        );
    }
    guessed.push(match deploy {
        Some(c) => format!("deploy.command {c:?} (check it is how you deploy)"),
        None => {
            "not a git checkout: no deploy.command (pass the step as `guard deploy -- CMD`)".into()
        }
    });

    let dir_value = match out.parent().and_then(|p| app_dir.strip_prefix(p).ok()) {
        Some(rel) if rel.as_os_str().is_empty() => ".".to_string(),
        Some(rel) => rel.display().to_string(),
        None => app_dir.display().to_string(),
    };
    // The incident's app turned Sentry on with SENTRY_ENABLED: an app that names such a flag
    // gets the rule that a DSN without it on is a warning; others are not warned about it.
    let sentry_flag = app.sentry_enabled.is_some()
        || env_files.iter().any(|f| {
            std::fs::read_to_string(app_dir.join(f))
                .map(|t| {
                    crate::redact::parse_env(&t)
                        .iter()
                        .any(|(k, _)| k == "SENTRY_ENABLED")
                })
                .unwrap_or(false)
        });
    if sentry_flag {
        guessed.push("check.sentry_flag SENTRY_ENABLED (the app turns Sentry on with it)".into());
    }
    let config = Guessed {
        name,
        dir: dir_value,
        files,
        builds,
        deploy,
        url,
        sentry_flag,
    };
    (config, guessed)
}

fn pick<'a>(apps: &'a [Declared], wanted: Option<&str>, eco: &Path) -> Result<&'a Declared> {
    let names: Vec<&str> = apps.iter().filter_map(|a| a.name.as_deref()).collect();
    match wanted {
        Some(w) => apps
            .iter()
            .find(|a| a.name.as_deref() == Some(w))
            .ok_or_else(|| {
                usage(format!(
                    "{} declares no app {w:?} (it declares: {})",
                    eco.display(),
                    names.join(", ")
                ))
            }),
        None => match apps {
            [one] if one.name.is_some() => Ok(one),
            [] => Err(usage(format!("{} declares no app", eco.display()))),
            _ => Err(usage(format!(
                "{} declares several apps ({}): pass --app NAME",
                eco.display(),
                names.join(", ")
            ))),
        },
    }
}

/// Env files the ecosystem names in a string literal (`path.join(__dirname, 'env.env')`,
/// `dotenv.config({ path: '.env' })`) that exist in the app folder, and `.env` if present.
fn env_files_loaded(eco: &Path, app_dir: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(eco).unwrap_or_default();
    let mut out: Vec<String> = Vec::new();
    for quote in ['\'', '"', '`'] {
        for (i, part) in text.split(quote).enumerate() {
            if i % 2 == 1
                && part.len() < 200
                && is_env_file(Path::new(part))
                && app_dir.join(part.trim_start_matches("./")).is_file()
            {
                let p = part.trim_start_matches("./").to_string();
                if !out.contains(&p) {
                    out.push(p);
                }
            }
        }
    }
    if app_dir.join(".env").is_file() && !out.iter().any(|p| p == ".env") {
        out.push(".env".into());
    }
    out
}

fn port_from(app_dir: &Path, env_files: &[String]) -> Option<String> {
    env_files.iter().find_map(|f| {
        std::fs::read_to_string(app_dir.join(f))
            .ok()?
            .lines()
            .find_map(|l| {
                let (k, v) = l.trim().split_once('=')?;
                (k.trim() == "PORT").then(|| v.trim().trim_matches(['"', '\'']).to_string())
            })
    })
}

/// What `guard init` guessed, as the config it writes.
struct Guessed {
    name: String,
    /// app.dir as written (relative to the config's folder when it can be).
    dir: String,
    files: Vec<String>,
    /// The script is in dist/: built on the server.
    builds: bool,
    deploy: Option<&'static str>,
    url: String,
    /// The app names SENTRY_ENABLED.
    sentry_flag: bool,
}

impl Guessed {
    /// The guard.toml text, the lines to check marked CHECK.
    fn toml(&self, eco: &Path) -> String {
        let files = self
            .files
            .iter()
            .map(|f| format!("{f:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut text = format!(
            "# Written by `guard init` from {eco}. Check the lines marked CHECK, then run `guard check`.\n\n\
             [app]\nname = {name:?}\ndir = {dir:?}\n\n\
             [backup]\nfiles = [{files}]\nexclude = []\n\n",
            eco = eco.display(),
            name = self.name,
            dir = self.dir,
        );
        if self.builds {
            text.push_str("[clean]\npaths = [\"dist\"]\nafter_deploy = false\n\n");
        }
        match self.deploy {
            Some(c) => text.push_str(&format!("[deploy]\ncommand = {c:?}    # CHECK\n\n")),
            None => text.push_str(
                "[deploy]\n# command = \"rsync ...\"    # CHECK: how this app is deployed\n\n",
            ),
        }
        text.push_str(&format!(
            "[health]\nurl = {:?}    # CHECK\nstable_for = \"10s\"\n",
            self.url
        ));
        if self.sentry_flag {
            text.push_str("\n[check]\nsentry_flag = \"SENTRY_ENABLED\"\n");
        }
        text
    }
}

/// Create `out` (never overwriting one: `create_new`), 0600, and write `text` to disk.
fn write_new(out: &Path, text: &str) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .map_err(|e| usage(format!("cannot create {}: {e}", out.display())))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", out.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_files_are_read_off_the_ecosystem_text() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("env.env"), "PORT=4100\n").unwrap();
        let eco = dir.path().join("ecosystem.config.js");
        std::fs::write(
            &eco,
            "env: loadEnv(path.join(__dirname, 'env.env')), other: 'x.env'",
        )
        .unwrap();
        let files = env_files_loaded(&eco, dir.path());
        assert_eq!(files, ["env.env"], "x.env does not exist");
        assert_eq!(port_from(dir.path(), &files).as_deref(), Some("4100"));
    }

    #[test]
    fn several_apps_need_a_name() {
        let a = |n: &str| Declared {
            name: Some(n.into()),
            ..Declared::default()
        };
        let eco = Path::new("/srv/ecosystem.config.js");
        let apps = [a("api"), a("worker")];
        let err = pick(&apps, None, eco).unwrap_err().to_string();
        assert!(
            err.contains("--app NAME") && err.contains("api, worker"),
            "{err}"
        );
        assert_eq!(
            pick(&apps, Some("worker"), eco).unwrap().name.as_deref(),
            Some("worker")
        );
        assert!(pick(&apps, Some("nope"), eco).is_err());
    }
}
