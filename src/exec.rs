//! Running child processes: own process group (so an ssh hang-up or Ctrl-C reaches guard, not a
//! half-done `pm2 start`), a time limit, captured output, and the exact command line in errors.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::process::Command;

/// What a finished child said.
#[derive(Debug)]
pub struct Output {
    /// Exit code, or None when killed by a signal.
    pub code: Option<i32>,
    /// Captured stdout (lossy UTF-8).
    pub stdout: String,
    /// Captured stderr (lossy UTF-8).
    pub stderr: String,
}

impl Output {
    /// Exited with 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
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
        let text = if self.stderr.trim().is_empty() {
            &self.stdout
        } else {
            &self.stderr
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

/// Run `cmd` to completion within `limit`, capturing its output. `shown` names it in errors.
pub async fn run(mut cmd: Command, shown: &str, limit: Duration) -> Result<Output> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot run `{shown}`"))?;
    let mut killer = GroupKiller(child.id().and_then(|p| i32::try_from(p).ok()));
    let out = match tokio::time::timeout(limit, child.wait_with_output()).await {
        Ok(out) => out.with_context(|| format!("waiting for `{shown}`"))?,
        Err(_) => bail!(
            "`{shown}` did not finish within {}",
            humantime::format_duration(limit)
        ),
    };
    killer.0 = None;
    Ok(Output {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// Like [`run`], but every line the child prints (stdout or stderr) is handed to `on_line` as
/// it arrives, for a long deploy step the operator should see progress of.
pub async fn run_streaming(
    mut cmd: Command,
    shown: &str,
    limit: Duration,
    mut on_line: impl FnMut(&str),
) -> Result<Output> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot run `{shown}`"))?;
    let mut killer = GroupKiller(child.id().and_then(|p| i32::try_from(p).ok()));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(bool, String)>();
    if let Some(out) = child.stdout.take() {
        tokio::spawn(pump(out, false, tx.clone()));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(pump(err, true, tx.clone()));
    }
    drop(tx);
    let work = async {
        let (mut stdout, mut stderr) = (String::new(), String::new());
        // Ends when both pipes are closed.
        while let Some((is_err, line)) = rx.recv().await {
            on_line(&line);
            let buf = if is_err { &mut stderr } else { &mut stdout };
            buf.push_str(&line);
            buf.push('\n');
        }
        let status = child.wait().await;
        (status, stdout, stderr)
    };
    let (status, stdout, stderr) = match tokio::time::timeout(limit, work).await {
        Ok((status, out, err)) => (
            status.with_context(|| format!("waiting for `{shown}`"))?,
            out,
            err,
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
    })
}

/// Forward a pipe line by line (lossy UTF-8, so odd bytes cannot stop the reading and block
/// the child on a full pipe).
async fn pump(
    reader: impl tokio::io::AsyncRead + Unpin,
    is_err: bool,
    tx: tokio::sync::mpsc::UnboundedSender<(bool, String)>,
) {
    use tokio::io::AsyncBufReadExt;
    let mut reader = tokio::io::BufReader::new(reader);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let line = String::from_utf8_lossy(&buf);
                let _ = tx.send((is_err, line.trim_end_matches(['\n', '\r']).to_string()));
            }
        }
    }
}

/// Like [`run`], but a non-zero exit is an error carrying the command line and its last output lines.
pub async fn run_ok(cmd: Command, shown: &str, limit: Duration) -> Result<Output> {
    let out = run(cmd, shown, limit).await?;
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
        let err = run(cmd, "sh -c 'sleep 5'", Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(2));
        assert!(err.to_string().contains("sleep 5"), "{err}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn streaming_hands_over_every_line_and_captures_them() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo one; echo two >&2; printf 'three'"]);
        let mut seen = Vec::new();
        let out = run_streaming(cmd, "sh", Duration::from_secs(5), |l| {
            seen.push(l.to_string())
        })
        .await
        .unwrap();
        seen.sort();
        assert_eq!(seen, ["one", "three", "two"]);
        assert!(out.success());
        assert_eq!(out.stdout, "one\nthree\n");
        assert_eq!(out.stderr, "two\n");
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
