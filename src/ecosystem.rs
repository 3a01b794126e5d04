//! The PM2 ecosystem file: found the way a release names it, and evaluated the way PM2 loads
//! it (`require` for .js/.cjs/.mjs, a JavaScript expression for .json, js-yaml for .yml), to
//! catch a broken file before the running app is stopped and to know where the app's script
//! lives.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Result, bail};
use serde::Deserialize;
use tokio::process::Command;

use crate::exit::usage;
use crate::runner;

/// The names PM2 accepts, in the order guard looks for them when `app.ecosystem` is unset.
pub const CANDIDATES: [&str; 6] = [
    "ecosystem.config.js",
    "ecosystem.config.cjs",
    "ecosystem.config.mjs",
    "ecosystem.config.json",
    "ecosystem.config.yml",
    "ecosystem.config.yaml",
];

/// Marks where the loader's answer starts, so whatever the file prints while it loads
/// (a `console.log` of its own config) does not matter.
const MARKER: &str = "@@guard-ecosystem@@";

/// The loader: PM2's own rules (lib/Common.js `parseConfig`), then only the fields guard
/// needs: never `env`, which holds secrets.
const EVAL: &str = r#"
const fs = require('fs');
const f = process.argv[2];
let c;
if (/\.json$/.test(f)) {
  c = require('vm').runInThisContext('(' + fs.readFileSync(f, 'utf8') + ')', { filename: f, timeout: 1000 });
} else if (/\.ya?ml$/.test(f)) {
  const yaml = require(require.resolve('js-yaml', { paths: [process.argv[3] || process.cwd()] }));
  c = yaml.load(fs.readFileSync(f, 'utf8'));
} else {
  c = require(f);
}
const apps = Array.isArray(c) ? c : (c && c.apps ? [].concat(c.apps) : []);
const str = (v) => (v === undefined || v === null ? null : String(v));
const out = apps.filter(Boolean).map(a => {
  const env = (a.env && typeof a.env === 'object') ? a.env : {};
  return {
    name: typeof a.name === 'string' ? a.name : null,
    script: typeof a.script === 'string' ? a.script : null,
    cwd: typeof a.cwd === 'string' ? a.cwd : null,
    max_restarts: a.max_restarts === undefined ? null : Number(a.max_restarts),
    min_uptime: str(a.min_uptime),
    exec_mode: str(a.exec_mode),
    instances: str(a.instances),
    port: str(env.PORT),
    sentry_dsn: typeof env.SENTRY_DSN === 'string' && env.SENTRY_DSN.length > 0,
    sentry_enabled: str(env.SENTRY_ENABLED),
    node_args: [].concat(a.node_args || a.interpreter_args || [])
      .flatMap(v => typeof v === 'string' ? v.split(/\s+/) : [])
      .filter(Boolean),
    env: Object.entries(env).map(([k, v]) => [k, str(v)]),
  };
});
process.stdout.write('\n@@guard-ecosystem@@' + JSON.stringify(out));
"#;

/// One app declared by the ecosystem file: the fields guard reads, never the env values
/// (only whether a Sentry DSN is set, and the settings PORT and SENTRY_ENABLED).
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
pub struct Declared {
    /// PM2 name.
    pub name: Option<String>,
    /// The script as written.
    pub script: Option<String>,
    /// The cwd as written.
    pub cwd: Option<String>,
    /// `max_restarts`, if set (PM2's default is 16).
    #[serde(default)]
    pub max_restarts: Option<f64>,
    /// `min_uptime` as written ("30s" or a number of ms), if set (PM2's default is 1000 ms).
    #[serde(default)]
    pub min_uptime: Option<String>,
    /// `exec_mode` as written (`cluster`, `cluster_mode`, `fork`...).
    #[serde(default)]
    pub exec_mode: Option<String>,
    /// `instances` as written (a number, `max`, `-1`).
    #[serde(default)]
    pub instances: Option<String>,
    /// `env.PORT`, if set.
    #[serde(default)]
    pub port: Option<String>,
    /// Whether `env.SENTRY_DSN` is set.
    #[serde(default)]
    pub sentry_dsn: bool,
    /// `env.SENTRY_ENABLED`, if set.
    #[serde(default)]
    pub sentry_enabled: Option<String>,
    /// `node_args` (or `interpreter_args`), one argument each.
    #[serde(default)]
    pub node_args: Vec<String>,
    /// The app's `env` block, so its values are masked like an env file's. Never printed.
    #[serde(default)]
    pub env: SecretEnv,
}

/// The `env` block of an ecosystem app: secrets; its `Debug` shows only how many.
#[derive(Clone, PartialEq, Default, Deserialize)]
#[serde(transparent)]
pub struct SecretEnv(pub Vec<(String, Option<String>)>);

impl std::fmt::Debug for SecretEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretEnv({} values, redacted)", self.0.len())
    }
}

/// PM2's defaults when an ecosystem does not set them.
pub const PM2_DEFAULT_MAX_RESTARTS: f64 = 16.0;
/// PM2's default `min_uptime` (1 s).
pub const PM2_DEFAULT_MIN_UPTIME: Duration = Duration::from_secs(1);

/// `min_uptime` as PM2 reads it: a number is milliseconds, a string like "30s", "1m" or
/// "5000" (ms).
pub fn parse_min_uptime(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(ms) = v.parse::<f64>() {
        return (ms >= 0.0).then(|| Duration::from_millis(ms as u64));
    }
    humantime::parse_duration(v).ok()
}

impl Declared {
    /// The script's absolute path (relative to `cwd`, itself relative to the file's folder).
    pub fn script_path(&self, ecosystem: &Path) -> Option<PathBuf> {
        let base = self.cwd_path(ecosystem);
        self.script.as_ref().map(|s| base.join(s))
    }

    /// What PM2 would need on disk to start this app and cannot find: the script, the cwd, a
    /// file that `node_args` preloads (`--require ./x`, `--import=./y.mjs`). A name without a
    /// `/` that is not a file is looked up on PATH, as PM2 does (`script: 'npm'`); a preload
    /// without `./`, `../` or `/` is a package and left to Node.
    pub fn missing_files(&self, ecosystem: &Path) -> Vec<String> {
        let mut missing = Vec::new();
        let cwd = self.cwd_path(ecosystem);
        if !cwd.is_dir() {
            missing.push(format!("cwd {}", cwd.display()));
            return missing;
        }
        if let (Some(script), Some(path)) = (&self.script, self.script_path(ecosystem)) {
            let on_path =
                !script.contains('/') && crate::pm2::find_program(Path::new(script)).is_some();
            if !path.exists() && !on_path {
                missing.push(format!("script {}", path.display()));
            }
        }
        let mut args = self.node_args.iter();
        while let Some(arg) = args.next() {
            let preloads = |f: &str| matches!(f, "--require" | "--import" | "-r");
            let (flag, value) = match arg.split_once('=') {
                Some((flag, v)) if preloads(flag) => (flag, Some(v.to_string())),
                None if preloads(arg) => (arg.as_str(), args.next().cloned()),
                _ => continue,
            };
            if let Some(v) = value
                && (v.starts_with("./") || v.starts_with("../") || v.starts_with('/'))
                && !cwd.join(&v).exists()
            {
                missing.push(format!("node_args {flag} {}", cwd.join(&v).display()));
            }
        }
        missing
    }

    /// The cwd's absolute path (the file's folder when unset).
    pub fn cwd_path(&self, ecosystem: &Path) -> PathBuf {
        let dir = ecosystem.parent().unwrap_or(Path::new("/")).to_path_buf();
        match &self.cwd {
            Some(c) => dir.join(c),
            None => dir,
        }
    }
}

/// The ecosystem file in force: `configured` when set, else the one of [`CANDIDATES`] that
/// exists in `app_dir`. None found, or two at once, is a usage error naming them.
pub fn locate(configured: Option<&Path>, app_dir: &Path) -> Result<PathBuf> {
    if let Some(p) = configured {
        if !p.is_file() {
            return Err(usage(format!(
                "app.ecosystem {} does not exist",
                p.display()
            )));
        }
        return Ok(p.to_path_buf());
    }
    let found: Vec<PathBuf> = CANDIDATES
        .iter()
        .map(|c| app_dir.join(c))
        .filter(|p| p.is_file())
        .collect();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(usage(format!(
            "no ecosystem file in {} (looked for {}); set app.ecosystem in guard.toml",
            app_dir.display(),
            CANDIDATES.join(", ")
        ))),
        [a, b, ..] => Err(usage(format!(
            "two ecosystem files in {}: {} and {}; remove one or set app.ecosystem in guard.toml",
            app_dir.display(),
            name(a),
            name(b)
        ))),
    }
}

fn name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Load the file as PM2 would and return the apps it declares; None (with a warning) when
/// node is not installed, since then only PM2 itself can tell. `pm2_root` is where PM2 is
/// installed (its js-yaml reads .yml files).
pub async fn load(ecosystem: &Path, pm2_root: Option<&Path>) -> Result<Option<Vec<Declared>>> {
    if crate::pm2::find_program(Path::new("node")).is_none() {
        tracing::warn!(
            "node is not on PATH: cannot check {} before the restart",
            ecosystem.display()
        );
        return Ok(None);
    }
    let eco = ecosystem.to_string_lossy();
    let root = pm2_root
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    // From a file, as PM2's CLI does: under `node -e`, require() of an ES module that throws
    // while it loads returns an empty namespace instead of the error.
    let mut loader = tempfile::Builder::new()
        .prefix("guard-ecosystem-")
        .suffix(".cjs")
        .tempfile()?;
    std::io::Write::write_all(&mut loader, EVAL.as_bytes())?;
    let loader_path = loader.path().to_string_lossy().into_owned();
    let shown = runner::display("node", &["<load ecosystem as pm2 does>", &eco]);
    let mut cmd = Command::new("node");
    cmd.args([loader_path.as_str(), &eco, &root]);
    if let Some(dir) = ecosystem.parent() {
        cmd.current_dir(dir);
    }
    let out = runner::run(cmd, &shown, Duration::from_secs(20), None).await?;
    if !out.success() {
        bail!(
            "{} does not load: {}",
            ecosystem.display(),
            explain(ecosystem, &String::from_utf8_lossy(&out.stderr))
        );
    }
    let text = out.stdout_text();
    let json = text.rsplit_once(MARKER).map(|(_, j)| j).unwrap_or_default();
    let apps: Vec<Declared> = serde_json::from_str(json.trim()).map_err(|e| {
        anyhow::anyhow!(
            "{} loaded but did not give an app list: {e}",
            ecosystem.display()
        )
    })?;
    Ok(Some(apps))
}

/// Check that the ecosystem file loads and declares `app`; returns the app's declaration
/// (None when node is missing).
pub async fn check(
    ecosystem: &Path,
    app: &str,
    pm2_root: Option<&Path>,
) -> Result<Option<Declared>> {
    let Some(apps) = load(ecosystem, pm2_root).await? else {
        return Ok(None);
    };
    match apps.into_iter().find(|a| a.name.as_deref() == Some(app)) {
        Some(a) => Ok(Some(a)),
        None => bail!("{} declares no app named {app:?}", ecosystem.display()),
    }
}

/// One readable line on why the file did not load, from node's stderr.
pub fn explain(ecosystem: &Path, stderr: &str) -> String {
    let esm = [
        "ERR_REQUIRE_ESM",
        "module is not defined in ES module scope",
        "require is not defined in ES module scope",
        "exports is not defined in ES module scope",
    ];
    if esm.iter().any(|m| stderr.contains(m)) {
        let file = name(ecosystem);
        let stem = file.trim_end_matches(".js").trim_end_matches(".mjs");
        return format!(
            "package.json has \"type\": \"module\", so {file} loads as an ES module and PM2 cannot require() it: rename it to {stem}.cjs"
        );
    }
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty())
        .collect();
    // node prints "file:line", the source line, a caret, then "SyntaxError: ...".
    let at = lines
        .iter()
        .find(|l| {
            l.contains(&name(ecosystem))
                && l.rsplit(':')
                    .next()
                    .is_some_and(|n| n.parse::<u32>().is_ok())
        })
        .map(|l| {
            let line = l.rsplit(':').next().unwrap_or_default();
            format!(" ({}, line {line})", name(ecosystem))
        })
        .unwrap_or_default();
    let error = lines
        .iter()
        .find(|l| {
            let t = l.trim_start();
            !t.starts_with("at ") && t.split(':').next().is_some_and(|w| w.ends_with("Error"))
        })
        .or(lines.last())
        .copied()
        .unwrap_or("node exited with an error");
    format!("{}{at}", mask_source_tokens(error.trim()))
}

/// Node quotes the source it could not parse in its message (`Unexpected identifier
/// 'hunter2'`, `hunter2 is not defined`): a file that failed to load has taught the redactor
/// nothing, so such tokens of four characters or more are masked here (`'{'` stays).
fn mask_source_tokens(error: &str) -> String {
    let mut out = String::with_capacity(error.len());
    let mut rest = error;
    while let Some(start) = rest.find(['\'', '"']) {
        let q = rest[start..].chars().next().unwrap_or('\'');
        out.push_str(&rest[..start]);
        match rest[start + 1..].find(q) {
            Some(len) => {
                let token = &rest[start + 1..start + 1 + len];
                out.push(q);
                out.push_str(if token.chars().count() >= 4 {
                    "***"
                } else {
                    token
                });
                out.push(q);
                rest = &rest[start + 2 + len..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    // "ReferenceError: hunter2 is not defined"
    if let Some((head, tail)) = out.split_once(": ")
        && let Some(name) = tail.strip_suffix(" is not defined")
        && name.chars().count() >= 4
        && !name.contains(' ')
    {
        return format!("{head}: *** is not defined");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_pm2_needs_to_start_the_app_are_named_when_missing() {
        let dir = tempfile::tempdir().unwrap();
        let eco = dir.path().join("ecosystem.config.js");
        std::fs::write(dir.path().join("server.js"), "").unwrap();
        std::fs::write(dir.path().join("instrument.cjs"), "").unwrap();
        let ok = Declared {
            script: Some("server.js".into()),
            node_args: vec![
                "--require".into(),
                "./instrument.cjs".into(),
                "--import=dotenv/config".into(),
            ],
            ..Declared::default()
        };
        assert!(ok.missing_files(&eco).is_empty());
        let npm = Declared {
            script: Some("sh".into()),
            ..Declared::default()
        };
        assert!(npm.missing_files(&eco).is_empty(), "a program on PATH");
        let bad = Declared {
            script: Some("dist/main.js".into()),
            node_args: vec![
                "--import=./dist/instrument.mjs".into(),
                "-r".into(),
                "./instrument.cjs".into(),
            ],
            ..Declared::default()
        };
        let missing = bad.missing_files(&eco);
        assert_eq!(missing.len(), 2, "{missing:?}");
        assert!(missing[0].starts_with("script ") && missing[0].ends_with("dist/main.js"));
        assert!(
            missing[1].starts_with("node_args --import ")
                && missing[1].ends_with("dist/instrument.mjs")
        );
        let gone = Declared {
            cwd: Some("nowhere".into()),
            ..ok
        };
        assert_eq!(gone.missing_files(&eco).len(), 1);
    }

    #[test]
    fn source_tokens_in_a_load_error_are_masked_short_punctuation_is_not() {
        let eco = Path::new("/srv/app/ecosystem.config.js");
        let text = "/srv/app/ecosystem.config.js:4\n  DB_PASSWORD: hunter2secret,\n\nSyntaxError: Unexpected identifier 'hunter2secret'\n    at x";
        let shown = explain(eco, text);
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("line 4"), "{shown}");
        let text = "/srv/app/ecosystem.config.js:4\nReferenceError: hunter2secret is not defined\n";
        assert_eq!(
            explain(eco, text),
            "ReferenceError: *** is not defined (ecosystem.config.js, line 4)"
        );
        assert_eq!(
            mask_source_tokens("SyntaxError: Unexpected token '{'"),
            "SyntaxError: Unexpected token '{'"
        );
    }

    #[test]
    fn one_candidate_is_found_two_are_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(locate(None, dir.path()).is_err());
        std::fs::write(dir.path().join("ecosystem.config.cjs"), "").unwrap();
        assert!(
            locate(None, dir.path())
                .unwrap()
                .ends_with("ecosystem.config.cjs")
        );
        std::fs::write(dir.path().join("ecosystem.config.js"), "").unwrap();
        let err = locate(None, dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("ecosystem.config.js and ecosystem.config.cjs"),
            "{err}"
        );
    }

    #[test]
    fn esm_and_syntax_errors_are_explained_on_one_line() {
        let eco = Path::new("/srv/app/ecosystem.config.js");
        let esm = "file:///srv/app/ecosystem.config.js:1\nmodule.exports = {\n^\n\nReferenceError: module is not defined in ES module scope\nThis file is being treated as an ES module";
        let e = explain(eco, esm);
        assert!(
            e.contains("\"type\": \"module\"") && e.contains("ecosystem.config.cjs"),
            "{e}"
        );
        let syntax = "/srv/app/ecosystem.config.js:3\n  apps: [ {\n        ^\n\nSyntaxError: Unexpected token '{'\n    at wrapSafe (node:internal/modules/cjs/loader:1378:20)";
        assert_eq!(
            explain(eco, syntax),
            "SyntaxError: Unexpected token '{' (ecosystem.config.js, line 3)"
        );
    }

    #[test]
    fn min_uptime_reads_as_pm2_does() {
        assert_eq!(parse_min_uptime("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_min_uptime("5000"), Some(Duration::from_secs(5)));
        assert_eq!(parse_min_uptime("1m"), Some(Duration::from_secs(60)));
        assert_eq!(parse_min_uptime("soon"), None);
    }

    #[test]
    fn script_paths_resolve_against_cwd() {
        let d = Declared {
            name: Some("api".into()),
            script: Some("dist/main.js".into()),
            ..Declared::default()
        };
        let eco = Path::new("/srv/app/ecosystem.config.js");
        assert_eq!(
            d.script_path(eco).unwrap(),
            Path::new("/srv/app/dist/main.js")
        );
    }
}
