//! Gathering what `guard check` looks at (the ecosystem as PM2 loads it, env files, git's
//! ignore rules, PM2's saved list, file modes, free disk) and judging it with the rules in
//! `checks`. Changes nothing.

use crate::output::StepName;
use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::{Ctx, Tools};
use crate::checks::{self, Check};
use crate::ecosystem::{self, Declared};
use crate::git::Git;
use crate::redact::is_env_file;
use crate::store::tree;

/// What the checks found, with the app's declaration for the status block.
#[derive(Debug, Default)]
pub struct Inspection {
    /// Every check, in a fixed order.
    pub checks: Vec<Check>,
    /// The app as the ecosystem declares it, when it loaded.
    pub declared: Option<Declared>,
}

/// Mask the values of the ecosystem's `env` block from now on, like an env file's.
pub fn learn_ecosystem_env(ctx: &mut Ctx<'_>, declared: Option<&Declared>) {
    if let Some(d) = declared {
        let mut r = ctx.printer.redactor().clone();
        r.add_pairs(&d.env.0);
        ctx.printer.set_redactor(r);
    }
}

/// `KEY=value` pairs of the env files among backup.files (the last one wins).
pub fn env_values(ctx: &Ctx<'_>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for f in ctx.settings.backup.files.iter().filter(|f| is_env_file(f)) {
        let Ok(text) = std::fs::read_to_string(ctx.settings.app.dir.join(f)) else {
            continue;
        };
        out.extend(crate::redact::parse_env(&text));
    }
    out
}

/// Whether Sentry has a DSN, and the app's enable flag with its value, when the app uses one:
/// `[check] sentry_flag`, else `SENTRY_ENABLED` if the env files or the ecosystem name it.
pub fn sentry_state(
    ctx: &Ctx<'_>,
    declared: Option<&Declared>,
) -> (bool, Option<(String, Option<String>)>) {
    let env = env_values(ctx);
    let get = |k: &str| {
        let from_ecosystem = declared.and_then(|d| {
            d.env
                .0
                .iter()
                .rev()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone().unwrap_or_default())
        });
        from_ecosystem.or_else(|| {
            env.iter()
                .rev()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        })
    };
    let dsn =
        get("SENTRY_DSN").is_some_and(|v| !v.is_empty()) || declared.is_some_and(|d| d.sentry_dsn);
    let flag = match &ctx.settings.check.sentry_flag {
        Some(f) => Some(f.clone()),
        None => get("SENTRY_ENABLED").map(|_| "SENTRY_ENABLED".to_string()),
    };
    (
        dsn,
        flag.map(|f| {
            let v = get(&f);
            (f, v)
        }),
    )
}

/// Run every check. `pm2_calls` allows the one read of PM2's list the saved-list check needs.
pub async fn run(ctx: &Ctx<'_>, tools: &Tools, pm2_calls: bool) -> Inspection {
    let mut found = Inspection::default();
    let settings = &ctx.settings;
    let app_dir = &settings.app.dir;

    // The ecosystem, as PM2 loads it, and what it says about the app.
    match ctx_ecosystem(ctx, tools).await {
        Ok((eco, Some(d))) => {
            found.checks.push(Check::ok(
                "ecosystem",
                format!("{} loads and declares {}", eco.display(), settings.app.name),
            ));
            match d.script_path(&eco) {
                Some(p) if p.exists() => {
                    found.checks.push(Check::ok(
                        "script",
                        format!("script {} exists", p.display()),
                    ));
                }
                Some(p)
                    if !settings.clean.after_deploy
                        && settings
                            .clean
                            .paths
                            .iter()
                            .any(|c| p.starts_with(app_dir.join(c))) =>
                {
                    found.checks.push(Check::ok(
                        "script",
                        format!("script {} is built by the deploy step", p.display()),
                    ));
                }
                Some(p) => found.checks.push(Check::fail(
                    "script",
                    format!("the ecosystem's script {} does not exist", p.display()),
                    "fix `script` in the ecosystem file, or build it first",
                )),
                None => found.checks.push(Check::fail(
                    "script",
                    "the ecosystem declares no script for the app",
                    "set `script` in the ecosystem file",
                )),
            }
            found.checks.push(match super::script_outside_clean(ctx, &d, &eco) {
                Ok(()) => Check::ok("clean-paths", "the clean rules never remove what PM2 runs"),
                Err(why) => Check::fail(
                    "clean-paths",
                    why,
                    "set `after_deploy = false` under [clean], or remove the path from clean.paths",
                ),
            });
            let min_uptime = d
                .min_uptime
                .as_deref()
                .and_then(ecosystem::parse_min_uptime);
            found.checks.push(checks::fail_fast(
                d.max_restarts,
                min_uptime,
                settings.check.max_restarts,
                settings.check.min_uptime,
            ));
            found
                .checks
                .push(checks::downtime(settings.strategy, d.exec_mode.as_deref()));
            found.declared = Some(d);
        }
        // pm2 is a node script: without node nothing can be started, and a deploy would
        // find out only after it deleted the running app.
        Ok((eco, None)) => found.checks.push(Check::fail(
            "node",
            format!(
                "node cannot be found (PATH, and the folders of pm2.bin and pm2.node): {} cannot be loaded and pm2 cannot run",
                eco.display()
            ),
            "set `node = \"/path/to/bin/node\"` under [pm2] (nvm: ~/.nvm/versions/node/<version>/bin/node), or pm2.bin to the pm2 beside it",
        )),
        Err(e) => found.checks.push(Check::fail(
            "ecosystem",
            format!("{e:#}"),
            "fix the ecosystem file so that `pm2 start` can load it",
        )),
    }

    let (dsn, flag) = sentry_state(ctx, found.declared.as_ref());
    found.checks.push(checks::sentry(
        dsn,
        flag.as_ref().map(|(k, v)| (k.as_str(), v.as_deref())),
    ));

    found.checks.push(gitignore(ctx).await);
    if pm2_calls {
        found.checks.push(pm2_saved(tools).await);
    }
    found.checks.push(pm2_startup());

    for f in settings.backup.files.iter().filter(|f| is_env_file(f)) {
        if let Ok(m) = std::fs::metadata(app_dir.join(f)) {
            found.checks.push(checks::private_file(
                "env-files",
                &f.display().to_string(),
                m.mode(),
            ));
        }
    }
    found.checks.push(backup_room(ctx));
    let host = settings
        .health
        .url
        .host_str()
        .unwrap_or_default()
        .to_string();
    found.checks.push(if checks::host_is_local(&host, &crate::origin::host()) {
        Check::ok("health-url", format!("health.url {host} is this machine"))
    } else {
        Check::warn(
            "health-url",
            format!("health.url points at {host}, not this machine: a verdict would be about another server"),
            "probe the app on 127.0.0.1 and its own port",
        )
    });
    found.checks.push(config_secrets(ctx));
    if let Some(sw) = &settings.switch {
        found
            .checks
            .push(crate::proxy::check(&sw.proxy, &settings.app.dir).await);
    }
    found
}

async fn ctx_ecosystem(
    ctx: &Ctx<'_>,
    tools: &Tools,
) -> anyhow::Result<(PathBuf, Option<Declared>)> {
    let eco = super::ecosystem_path(ctx)?;
    let d = ecosystem::check(
        &eco,
        &ctx.settings.app.name,
        tools.pm2.install_root().as_deref(),
    )
    .await?;
    Ok((eco, d))
}

async fn gitignore(ctx: &Ctx<'_>) -> Check {
    let dir = &ctx.settings.app.dir;
    let Some(git) = Git::open(dir).await else {
        return Check::ok("gitignore", "not a git work tree: nothing to ignore");
    };
    let wanted = ctx
        .settings
        .clean
        .paths
        .iter()
        .chain(ctx.settings.backup.files.iter().filter(|f| is_env_file(f)));
    let mut missing = Vec::new();
    for p in wanted {
        // `dist/` in .gitignore matches only a folder: ask for both spellings, since the path
        // may not exist right now.
        let as_dir = PathBuf::from(format!("{}/", p.display()));
        let mut ignored = false;
        for q in [p.as_path(), as_dir.as_path()] {
            match git.is_ignored(q).await {
                Ok(true) => ignored = true,
                Ok(false) => {}
                Err(e) => {
                    return Check::warn("gitignore", format!("{e:#}"), "check git in app.dir");
                }
            }
            if ignored {
                break;
            }
        }
        if !ignored {
            missing.push(p.display().to_string());
        }
    }
    if missing.is_empty() {
        Check::ok(
            "gitignore",
            ".gitignore covers clean.paths and the env files",
        )
    } else {
        Check::warn(
            "gitignore",
            format!("not in .gitignore: {}", missing.join(", ")),
            format!("add {} to .gitignore", missing.join(", ")),
        )
    }
}

async fn pm2_saved(tools: &Tools) -> Check {
    if !tools.pm2.daemon_running() {
        return Check::warn(
            "pm2-saved",
            "the PM2 daemon is not running",
            "start the app with `guard deploy` or `pm2 start`",
        );
    }
    let dump = tools.pm2.home().join("dump.pm2");
    let saved = match crate::pm2::dump_entries(&dump) {
        Ok(s) => s,
        Err(_) => {
            return Check::warn(
                "pm2-saved",
                format!(
                    "no readable PM2 dump at {}: nothing comes back after a reboot",
                    dump.display()
                ),
                "run `pm2 save`",
            );
        }
    };
    let running = match tools.pm2.jlist().await {
        Ok(r) => r,
        Err(e) => {
            return Check::fail(
                "pm2",
                format!("pm2 does not run: {e:#}"),
                "set pm2.bin to a pm2 that runs, and `node` under [pm2] if node is not on PATH (nvm)",
            );
        }
    };
    let a: BTreeSet<(String, Option<PathBuf>)> = saved.into_iter().collect();
    let b: BTreeSet<(String, Option<PathBuf>)> =
        running.into_iter().map(|i| (i.name, i.exec_path)).collect();
    if a == b {
        Check::ok("pm2-saved", "PM2's saved list matches what runs")
    } else {
        Check::warn(
            "pm2-saved",
            "PM2's saved list (dump.pm2) differs from what runs: a reboot brings back something else",
            "run `pm2 save`",
        )
    }
}

fn pm2_startup() -> Check {
    let dirs = [
        "/etc/systemd/system",
        "/usr/lib/systemd/system",
        "/lib/systemd/system",
        "/etc/init.d",
    ];
    let found = dirs.iter().any(|d| {
        std::fs::read_dir(d)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("pm2-"))
    });
    if found {
        Check::ok(
            "pm2-startup",
            "a PM2 startup unit brings PM2 back after a reboot",
        )
    } else {
        Check::warn(
            "pm2-startup",
            "no PM2 startup unit: after a reboot nothing starts PM2",
            "run `pm2 startup` and the command it prints",
        )
    }
}

fn free_bytes(mut p: &Path) -> Option<u64> {
    while !p.exists() {
        p = p.parent()?;
    }
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: statvfs fills the zeroed struct it is given for a NUL-terminated path.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

fn backup_room(ctx: &Ctx<'_>) -> Check {
    let settings = &ctx.settings;
    // What the next snapshot stores: the files whose stat differs from the newest snapshot.
    let cache = ctx.store.newest_tree_cache();
    let need: u64 = match tree::scan(&settings.app.dir, &settings.backup.exclude) {
        Ok(found) => found
            .iter()
            .filter(|f| f.meta.is_file())
            .filter(|f| {
                cache
                    .get(&f.path)
                    .is_none_or(|(k, _)| k.size != f.meta.len() || k.ino != f.meta.ino())
            })
            .map(|f| f.meta.len())
            .sum(),
        Err(e) => return Check::fail("backup-room", format!("{e:#}"), "check app.dir"),
    };
    let margin = 16 * 1024 * 1024;
    match free_bytes(&settings.backup.dir) {
        Some(free) if free >= need + margin => Check::ok(
            "backup-room",
            format!(
                "backup.dir has room: {} free, the next snapshot stores about {}",
                crate::store::manifest::human_bytes(free),
                crate::store::manifest::human_bytes(need)
            ),
        ),
        Some(free) => Check::fail(
            "backup-room",
            format!(
                "backup.dir has {} free, the next snapshot needs about {}",
                crate::store::manifest::human_bytes(free),
                crate::store::manifest::human_bytes(need + margin)
            ),
            "free disk where backup.dir is, or lower backup.keep",
        ),
        None => Check::warn(
            "backup-room",
            format!(
                "cannot tell the free space of {}",
                settings.backup.dir.display()
            ),
            "check the disk where backup.dir is",
        ),
    }
}

fn config_secrets(ctx: &Ctx<'_>) -> Check {
    let path = &ctx.settings.config_path;
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let has_secret = ctx.settings.health.url.password().is_some()
        || ctx.printer.redactor().redact(&text) != text;
    let mode = std::fs::metadata(path).map(|m| m.mode()).unwrap_or(0);
    if has_secret {
        let mut c = checks::private_file("config", &path.display().to_string(), mode);
        if c.level != checks::Level::Ok {
            c.message = format!(
                "{} holds a secret and {}",
                path.display(),
                c.message
                    .split_once(" is ")
                    .map(|(_, r)| format!("is {r}"))
                    .unwrap_or_default()
            );
        }
        c
    } else {
        Check::ok("config", format!("{} holds no secret", path.display()))
    }
}

/// The deploy's preflight step: every failing check refuses the deploy (exit 2, nothing
/// changed); warnings are shown and the deploy goes on.
pub async fn deploy_gate(ctx: &mut Ctx<'_>, tools: &Tools) -> anyhow::Result<()> {
    let t = std::time::Instant::now();
    let found = run(ctx, tools, false).await;
    learn_ecosystem_env(ctx, found.declared.as_ref());
    let fails: Vec<&Check> = found
        .checks
        .iter()
        .filter(|c| c.level == checks::Level::Fail)
        .collect();
    if !fails.is_empty() {
        let list: Vec<String> = fails
            .iter()
            .map(|c| {
                format!(
                    "{}: {} (fix: {})",
                    c.id,
                    c.message,
                    c.fix.as_deref().unwrap_or("-")
                )
            })
            .collect();
        return Err(crate::exit::usage(format!(
            "guard check fails, so nothing was deployed or changed:\n{}",
            list.join("\n")
        )));
    }
    let warns: Vec<String> = found
        .checks
        .iter()
        .filter(|c| c.level == checks::Level::Warn)
        .map(|c| format!("{} ({})", c.message, c.fix.as_deref().unwrap_or("-")))
        .collect();
    if warns.is_empty() {
        ctx.printer.step(
            StepName::Check,
            crate::output::StepState::Ok,
            t.elapsed(),
            format!("{} checks passed", found.checks.len()),
        );
    } else {
        ctx.printer.step(
            StepName::Check,
            crate::output::StepState::Warn,
            t.elapsed(),
            format!("{} warning(s), see `guard check`", warns.len()),
        );
        for w in &warns {
            ctx.printer.detail(w);
        }
    }
    Ok(())
}
