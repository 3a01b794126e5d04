//! The git adapter: every git call goes through here, run in the app dir, with the exact
//! command line in any error.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use tokio::process::Command;

use crate::runner;

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

    async fn call_raw(&self, args: &[&str]) -> Result<runner::Output> {
        let shown = format!(
            "git -C {} {}",
            self.dir.display(),
            runner::display("", args).trim_start()
        );
        let mut cmd = Command::new("git");
        cmd.arg("-C")
            .arg(&self.dir)
            .args(args)
            .env("GIT_TERMINAL_PROMPT", "0");
        runner::run_ok(cmd, &shown, CALL_LIMIT).await
    }

    async fn call(&self, args: &[&str]) -> Result<String> {
        Ok(self.call_raw(args).await?.stdout_text())
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

    /// Whether git ignores `rel` (a path relative to the work tree folder; it need not exist).
    pub async fn is_ignored(&self, rel: &Path) -> Result<bool> {
        let r = rel.to_string_lossy();
        let shown = format!("git -C {} check-ignore -q {r}", self.dir.display());
        let mut cmd = Command::new("git");
        cmd.arg("-C")
            .arg(&self.dir)
            .args(["check-ignore", "-q", "--no-index", "--", &r]);
        let out = runner::run(cmd, &shown, CALL_LIMIT, None).await?;
        match out.code {
            Some(0) => Ok(true),
            Some(1) => Ok(false),
            _ => anyhow::bail!("`{shown}` failed: {}", out.tail(3)),
        }
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

    /// Move HEAD and the index to `commit` without touching the work tree (`git reset
    /// --mixed`): after a tree restore the files are already right.
    pub async fn reset_index(&self, commit: &str) -> Result<()> {
        // A git that was just killed (a deploy step stopped at a take-over) may still be
        // going away with its index lock: give it a moment before giving up.
        let mut tries = 0;
        loop {
            match self.call(&["reset", "--mixed", "--quiet", commit]).await {
                Ok(_) => return Ok(()),
                Err(e) if tries < 5 && format!("{e:#}").contains("index.lock") => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Apply a format-1 patch of uncommitted changes.
    pub async fn apply(&self, patch: &Path) -> Result<()> {
        let p = patch.to_string_lossy();
        self.call(&["apply", "--binary", "--whitespace=nowarn", &p])
            .await
            .map(drop)
    }
}
