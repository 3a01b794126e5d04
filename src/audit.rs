//! The audit log: one JSON line per run that changed something, appended to
//! `<backup.dir>/audit.log` (0600). Values come from the redacted report, never from env files.

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::origin::Origin;
use crate::output::{Report, Step};

/// One line of the audit log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    /// The shape's version, as in `--json` (absent in lines of older guards).
    #[serde(default)]
    pub schema: u32,
    /// When the run ended, RFC 3339 UTC.
    pub time: String,
    /// User.
    pub user: String,
    /// Who ran it behind `sudo` (`SUDO_USER`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sudo_user: Option<String>,
    /// The ssh client's address, when run over ssh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Host.
    pub host: String,
    /// Command line.
    pub command: String,
    /// The subcommand (`deploy`, `rollback`...); absent in entries of guard 0.1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subcommand: Option<String>,
    /// The app.
    pub app: Option<String>,
    /// Incident taken or used.
    pub incident: Option<String>,
    /// The code before the run (commit or tree fingerprint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<crate::code::Code>,
    /// The code the run put in place.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<crate::code::Code>,
    /// What the deploy was asked to deploy (`guard deploy --ref`).
    #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
    pub git_ref: Option<String>,
    /// The release a deploy tried and put back (absent when what it tried is what runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tried: Option<crate::code::Code>,
    /// Verdict word.
    pub verdict: String,
    /// Reason.
    pub reason: Option<String>,
    /// Exit code.
    pub exit_code: i32,
    /// Steps with their durations.
    pub steps: Vec<Step>,
}

/// The audit log file in a backup dir.
pub fn path(backup_dir: &Path) -> PathBuf {
    backup_dir.join("audit.log")
}

/// Append the outcome of this run.
pub fn append(backup_dir: &Path, origin: &Origin, report: &Report) -> Result<()> {
    let entry = Entry {
        schema: crate::output::SCHEMA,
        time: crate::origin::now_rfc3339(),
        user: origin.user.clone(),
        sudo_user: origin.sudo_user.clone(),
        from: origin.from.clone(),
        host: origin.host.clone(),
        command: origin.command.clone(),
        subcommand: Some(report.command.clone()),
        app: report.app.clone(),
        incident: report.incident.clone(),
        before: report.before.clone(),
        after: report.after.clone(),
        tried: report.tried.clone(),
        git_ref: report.git_ref.clone(),
        verdict: report.verdict.clone(),
        reason: report.reason.clone(),
        exit_code: report.exit_code,
        steps: report.steps.clone(),
    };
    let mut line = serde_json::to_vec(&entry)?;
    line.push(b'\n');
    let p = path(backup_dir);
    let mut f = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        // A planted symlink must not get its target appended to.
        .custom_flags(libc::O_NOFOLLOW)
        .open(&p)
        .with_context(|| format!("opening audit log {}", p.display()))?;
    // One write(2) of a whole line in O_APPEND mode: concurrent writers cannot interleave it.
    f.write_all(&line)
        .with_context(|| format!("appending to audit log {}", p.display()))?;
    f.sync_data()
        .with_context(|| format!("syncing audit log {}", p.display()))
}

/// The newest `limit` entries, newest last; unreadable lines are skipped.
pub fn read(backup_dir: &Path, limit: usize) -> Result<Vec<Entry>> {
    let p = path(backup_dir);
    let f = match std::fs::File::open(&p) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("opening audit log {}", p.display())),
    };
    let mut entries: Vec<Entry> = BufReader::new(f)
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_str(&l).ok())
        .collect();
    let skip = entries.len().saturating_sub(limit);
    entries.drain(..skip);
    Ok(entries)
}

impl Entry {
    /// Whether this entry is a deploy (entries of guard 0.1 are told by their command line).
    pub fn is_deploy(&self) -> bool {
        match &self.subcommand {
            Some(s) => s == "deploy",
            None => self.command.split_whitespace().any(|w| w == "deploy"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_symlinked_audit_log_is_never_appended_through() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        std::os::unix::fs::symlink(&victim, path(dir.path())).unwrap();
        let printer = crate::output::Printer::new(crate::output::Mode::Quiet, "backup");
        assert!(append(dir.path(), &Origin::current(), &printer.report()).is_err());
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    }
}
