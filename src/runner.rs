//! The one way guard runs a child process (pm2, git, node, the deploy step): its own process
//! group (so an ssh hang-up or Ctrl-C reaches guard, not a half-done `pm2 start`), a time
//! limit after which the whole group is killed, output captured as bytes and optionally handed
//! over line by line as it arrives, and the exact command line in every error.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::process::Command;

/// What a finished child said.
#[derive(Debug)]
pub struct Output {
    /// Exit code, or None when killed by a signal.
    pub code: Option<i32>,
    /// Captured stdout, as bytes (a binary patch or a tarball is not UTF-8).
    pub stdout: Vec<u8>,
    /// Captured stderr.
    pub stderr: Vec<u8>,
    /// Processes of its group still running after it exited and held its output open (a
    /// background `&` in a deploy step): `pid 123 (sleep)`. Not waited for.
    pub lingering: Vec<String>,
}

impl Output {
    /// Exited with 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// stdout as text (lossy UTF-8).
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// `exit 1`, or `killed by a signal`.
    pub fn describe_exit(&self) -> String {
        match self.code {
            Some(c) => format!("exit {c}"),
            None => "killed by a signal".to_string(),
        }
    }

    /// The last `n` non-empty lines of stderr, or of stdout when stderr is empty.
    pub fn tail(&self, n: usize) -> String {
        let text = if String::from_utf8_lossy(&self.stderr).trim().is_empty() {
            String::from_utf8_lossy(&self.stdout)
        } else {
            String::from_utf8_lossy(&self.stderr)
        };
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

/// A command line as a person would type it, for messages.
pub fn display(program: &str, args: &[&str]) -> String {
    std::iter::once(program)
        .chain(args.iter().copied())
        .map(quote)
        .collect::<Vec<_>>()
        .join(" ")
}

fn quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:@,+%".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// Folders put first on every child's PATH (see `Pm2Config::child_path_dirs`); set once,
/// when the settings are known.
static PATH_FIRST: std::sync::OnceLock<Vec<std::path::PathBuf>> = std::sync::OnceLock::new();

/// Put these folders first on the PATH of every child started from now on.
pub fn put_first_on_path(dirs: Vec<std::path::PathBuf>) {
    let _ = PATH_FIRST.set(dirs);
}

/// The PATH children get: [`put_first_on_path`]'s folders, then guard's own PATH.
pub fn child_path() -> Option<std::ffi::OsString> {
    let first = PATH_FIRST.get().filter(|d| !d.is_empty())?;
    let own = std::env::var_os("PATH").unwrap_or_default();
    std::env::join_paths(first.iter().cloned().chain(std::env::split_paths(&own))).ok()
}

/// Kills the child's whole process group if the run is abandoned (timeout, signal, dropped future).
struct GroupKiller(Option<i32>);

impl Drop for GroupKiller {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            // SAFETY: kill(2) with a negative pid signals a process group; no memory is involved.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
    }
}

/// Run `cmd` to completion within `limit`, capturing its output; `shown` names it in errors.
/// With `on_line`, every line it prints (stdout or stderr) is handed over as it arrives, for a
/// long deploy step the operator should see progress of.
pub async fn run(
    cmd: Command,
    shown: &str,
    limit: Duration,
    on_line: Option<&mut dyn FnMut(&str)>,
) -> Result<Output> {
    run_tracked(cmd, shown, limit, on_line, None).await
}

/// Like [`run`]; `on_spawn` is told the child's process group as soon as it exists, so a
/// caller can record it (a deploy step outlives a guard killed by kill -9).
pub async fn run_tracked(
    mut cmd: Command,
    shown: &str,
    limit: Duration,
    mut on_line: Option<&mut dyn FnMut(&str)>,
    on_spawn: Option<&mut dyn FnMut(i32)>,
) -> Result<Output> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(path) = child_path() {
        cmd.env("PATH", path);
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot run `{shown}`"))?;
    let mut killer = GroupKiller(child.id().and_then(|p| i32::try_from(p).ok()));
    if let (Some(f), Some(pgid)) = (on_spawn, killer.0) {
        f(pgid);
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(bool, Vec<u8>)>();
    if let Some(out) = child.stdout.take() {
        tokio::spawn(pump(out, false, tx.clone()));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(pump(err, true, tx.clone()));
    }
    drop(tx);
    let pgid = killer.0;
    let work = async {
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        let mut lingering = Vec::new();
        let mut take = |(is_err, line): (bool, Vec<u8>)| {
            if let Some(f) = on_line.as_mut() {
                f(String::from_utf8_lossy(&line).trim_end_matches(['\n', '\r']));
            }
            if is_err {
                stderr.extend_from_slice(&line);
            } else {
                stdout.extend_from_slice(&line);
            }
        };
        // The process is waited for, not its pipes: a background child it left behind may
        // hold them open for an hour. After it exits, what is still in the pipes is read for
        // a short grace, and whoever still holds them is named.
        let status = loop {
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(m) => take(m),
                    None => break child.wait().await,
                },
                status = child.wait() => {
                    let until = tokio::time::Instant::now() + PIPE_GRACE;
                    loop {
                        match tokio::time::timeout_at(until, rx.recv()).await {
                            Ok(Some(m)) => take(m),
                            Ok(None) => break,
                            Err(_) => {
                                lingering = pgid.map(group_members).unwrap_or_default();
                                break;
                            }
                        }
                    }
                    break status;
                }
            }
        };
        (status, stdout, stderr, lingering)
    };
    let (status, stdout, stderr, lingering) = match tokio::time::timeout(limit, work).await {
        Ok((status, out, err, lingering)) => (
            status.with_context(|| format!("waiting for `{shown}`"))?,
            out,
            err,
            lingering,
        ),
        Err(_) => bail!(
            "`{shown}` did not finish within {}",
            humantime::format_duration(limit)
        ),
    };
    killer.0 = None;
    Ok(Output {
        code: status.code(),
        stdout,
        stderr,
        lingering,
    })
}

/// How long a child's pipes are read after it exited.
const PIPE_GRACE: Duration = Duration::from_secs(1);

/// The processes of group `pgid` (from /proc), as `pid 123 (sleep)`, at most five.
fn group_members(pgid: i32) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        // After the name: state, ppid, pgrp.
        let pgrp = stat[close + 1..]
            .split_whitespace()
            .nth(2)
            .and_then(|p| p.parse::<i32>().ok());
        if pgrp == Some(pgid) {
            out.push(format!("pid {pid} ({})", &stat[open + 1..close]));
            if out.len() == 5 {
                break;
            }
        }
    }
    out
}

/// Forward a pipe line by line as raw bytes, so odd bytes cannot stop the reading and block
/// the child on a full pipe.
async fn pump(
    reader: impl tokio::io::AsyncRead + Unpin,
    is_err: bool,
    tx: tokio::sync::mpsc::UnboundedSender<(bool, Vec<u8>)>,
) {
    use tokio::io::AsyncBufReadExt;
    let mut reader = tokio::io::BufReader::new(reader);
    loop {
        let mut buf = Vec::new();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let _ = tx.send((is_err, buf));
            }
        }
    }
}

/// Start a helper meant to outlive guard (the reaper of a preflight trial, which must run
/// even after a `kill -9` of guard): its own process group, no pipes, no time limit, not
/// killed when dropped. The only child guard does not wait for; `shown` names it in errors.
pub fn spawn_detached(mut cmd: std::process::Command, shown: &str) -> Result<std::process::Child> {
    use std::os::unix::process::CommandExt;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    if let Some(path) = child_path() {
        cmd.env("PATH", path);
    }
    cmd.spawn()
        .with_context(|| format!("cannot start `{shown}`"))
}

/// Like [`run`], but a non-zero exit is an error carrying the command line and its last output lines.
pub async fn run_ok(cmd: Command, shown: &str, limit: Duration) -> Result<Output> {
    let out = run(cmd, shown, limit, None).await?;
    if !out.success() {
        bail!(
            "`{shown}` failed ({}): {}",
            out.describe_exit(),
            out.tail(5)
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_is_copy_pasteable() {
        assert_eq!(
            display("pm2", &["start", "eco.js", "--only", "my app"]),
            "pm2 start eco.js --only 'my app'"
        );
        assert_eq!(display("sh", &["-c", "it's"]), "sh -c 'it'\\''s'");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn timeout_kills_and_names_the_command() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "sleep 5"]);
        let start = std::time::Instant::now();
        let err = run(cmd, "sh -c 'sleep 5'", Duration::from_millis(200), None)
            .await
            .unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(2));
        assert!(err.to_string().contains("sleep 5"), "{err}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn lines_are_handed_over_and_captured_as_bytes() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo one; echo two >&2; printf 'three\\377'"]);
        let mut seen = Vec::new();
        let mut on_line = |l: &str| seen.push(l.to_string());
        let out = run(cmd, "sh", Duration::from_secs(5), Some(&mut on_line))
            .await
            .unwrap();
        seen.sort();
        assert_eq!(seen, ["one", "three\u{fffd}", "two"]);
        assert!(out.success());
        assert_eq!(out.stdout, b"one\nthree\xff");
        assert_eq!(out.stderr, b"two\n");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_background_child_holding_the_output_does_not_hold_guard() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo started; sleep 25 & exit 0"]);
        let start = std::time::Instant::now();
        let out = run(cmd, "sh", Duration::from_secs(60), None).await.unwrap();
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
        assert!(out.success());
        assert_eq!(out.stdout, b"started\n");
        assert!(
            out.lingering.iter().any(|l| l.contains("(sleep)")),
            "{:?}",
            out.lingering
        );
        // A child that ends with its output closed leaves nothing behind.
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo done"]);
        assert!(
            run(cmd, "sh", Duration::from_secs(5), None)
                .await
                .unwrap()
                .lingering
                .is_empty()
        );
        // (The sleep is in the test's own group killer's reach no more: stop it.)
        for l in out.lingering {
            if let Some(pid) = l
                .strip_prefix("pid ")
                .and_then(|r| r.split(' ').next())
                .and_then(|p| p.parse::<i32>().ok())
                .filter(|p| *p > 1)
            {
                // SAFETY: kill(2) on a pid this test started; no memory is involved.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn failure_carries_the_output_tail() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo one >&2; echo two >&2; exit 3"]);
        let err = run_ok(cmd, "failing", Duration::from_secs(5))
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("exit 3") && msg.contains("two"), "{msg}");
    }
}
