//! Evaluating ecosystem.config.js the way PM2 does (Node `require`s it), to catch a broken
//! file before the running app is stopped.

use std::path::Path;
use std::time::Duration;

use anyhow::{Result, bail};
use tokio::process::Command;

use crate::runner;

const EVAL: &str = "const c = require(process.argv[1]); \
const apps = Array.isArray(c) ? c : (c && c.apps ? [].concat(c.apps) : []); \
process.stdout.write(JSON.stringify(apps.map(a => a && a.name)));";

/// Check that the ecosystem file loads and declares `app`. Returns false (with a warning) when
/// node is not installed, since then only PM2 itself can tell.
pub async fn check(ecosystem: &Path, app: &str) -> Result<bool> {
    if crate::pm2::find_program(Path::new("node")).is_none() {
        tracing::warn!(
            "node is not on PATH: cannot check {} before the restart",
            ecosystem.display()
        );
        return Ok(false);
    }
    let eco = ecosystem.to_string_lossy();
    let shown = runner::display("node", &["-e", "<load ecosystem>", &eco]);
    let mut cmd = Command::new("node");
    cmd.args(["-e", EVAL, &eco]);
    if let Some(dir) = ecosystem.parent() {
        cmd.current_dir(dir);
    }
    let out = runner::run(cmd, &shown, Duration::from_secs(20), None).await?;
    if !out.success() {
        bail!("{} does not load: {}", ecosystem.display(), out.tail(3));
    }
    let names: Vec<Option<String>> =
        serde_json::from_str(out.stdout_text().trim()).unwrap_or_default();
    if !names.iter().flatten().any(|n| n == app) {
        bail!("{} declares no app named {app:?}", ecosystem.display());
    }
    Ok(true)
}
