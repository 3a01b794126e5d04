//! The git adapter: every git call goes through here, run in the app dir, with the exact
//! command line in any error.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::process::Command;

use crate::exec;

const CALL_LIMIT: Duration = Duration::from_secs(120);

/// git in one work tree.
#[derive(Debug, Clone)]
pub struct Git {
    dir: PathBuf,
}

impl Git {
    /// git for the work tree that contains `dir`, or None when `dir` is not in one (or git is missing).
    pub async fn open(dir: &Path) -> Option<Git> {
        let git = Git {
            dir: dir.to_path_buf(),
        };
        match git.call(&["rev-parse", "--is-inside-work-tree"]).await {
            Ok(out) if out.trim() == "true" => Some(git),
            _ => None,
        }
    }

    async fn call_raw(&self, args: &[&str]) -> Result<exec::Output> {
        let shown = format!(
            "git -C {} {}",
            self.dir.display(),
            exec::display("", args).trim_start()
        );
        let mut cmd = Command::new("git");
        cmd.arg("-C")
            .arg(&self.dir)
            .args(args)
            .env("GIT_TERMINAL_PROMPT", "0");
        exec::run_ok(cmd, &shown, CALL_LIMIT).await
    }

    async fn call(&self, args: &[&str]) -> Result<String> {
        Ok(self.call_raw(args).await?.stdout)
    }

    /// The commit checked out.
    pub async fn head(&self) -> Result<String> {
        Ok(self.call(&["rev-parse", "HEAD"]).await?.trim().to_string())
    }

    /// The one-line subject of a commit, for output.
    pub async fn subject(&self, commit: &str) -> Result<String> {
        Ok(self
            .call(&["log", "-1", "--format=%h %s", commit])
            .await?
            .trim()
            .to_string())
    }

    /// Uncommitted changes to tracked files (staged and not), as a binary patch; empty when clean.
    pub async fn diff(&self) -> Result<Vec<u8>> {
        let mut cmd = Command::new("git");
        let args = ["diff", "--binary", "HEAD"];
        cmd.arg("-C").arg(&self.dir).args(args);
        let shown = format!("git -C {} diff --binary HEAD", self.dir.display());
        // Read as bytes: a binary patch is not UTF-8.
        cmd.stdin(std::process::Stdio::null());
        let out = tokio::time::timeout(CALL_LIMIT, cmd.output())
            .await
            .with_context(|| format!("`{shown}` timed out"))?
            .with_context(|| format!("cannot run `{shown}`"))?;
        if !out.status.success() {
            anyhow::bail!(
                "`{shown}` failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(out.stdout)
    }

    /// Whether `commit` exists in the repository.
    pub async fn has_commit(&self, commit: &str) -> bool {
        self.call(&["cat-file", "-e", &format!("{commit}^{{commit}}")])
            .await
            .is_ok()
    }

    /// Move the work tree to `commit`, dropping uncommitted changes to tracked files.
    pub async fn reset_hard(&self, commit: &str) -> Result<()> {
        self.call(&["reset", "--hard", "--quiet", commit])
            .await
            .map(drop)
    }

    /// Apply a patch taken by [`Git::diff`].
    pub async fn apply(&self, patch: &Path) -> Result<()> {
        let p = patch.to_string_lossy();
        self.call(&["apply", "--binary", "--whitespace=nowarn", &p])
            .await
            .map(drop)
    }
}
