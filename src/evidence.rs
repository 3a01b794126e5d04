//! Evidence of a failed verification: the tails of the app's PM2 logs, with secrets masked.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use crate::pm2::Instance;
use crate::redact::Redactor;

/// Lines kept from each log.
pub const TAIL_LINES: usize = 100;
/// At most this much of the end of a log is read.
const TAIL_BYTES: u64 = 256 * 1024;

/// One log's tail.
#[derive(Debug, Clone)]
pub struct LogTail {
    /// File name to save it under, e.g. `api-0-error.log`.
    pub name: String,
    /// The last lines, redacted.
    pub text: String,
}

/// Where each PM2 log file ended before a restart: evidence is only what came after.
pub type Offsets = std::collections::HashMap<std::path::PathBuf, u64>;

/// The sizes of every log file in `$PM2_HOME/logs` (and of these instances' own logs, which
/// may live elsewhere), taken right before a restart.
pub fn offsets(pm2_home: &Path, instances: &[Instance]) -> Offsets {
    let mut out = Offsets::new();
    let logs = std::fs::read_dir(pm2_home.join("logs"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path());
    let own = instances
        .iter()
        .flat_map(|i| [i.out_log.clone(), i.err_log.clone()])
        .flatten();
    for p in logs.chain(own) {
        if let Ok(m) = std::fs::metadata(&p) {
            out.insert(p, m.len());
        }
    }
    out
}

/// The last lines every out and error log of these instances got since `since` (each file
/// once: instances may share a log file).
pub fn collect(instances: &[Instance], redactor: &Redactor, since: &Offsets) -> Vec<LogTail> {
    let mut seen = std::collections::HashSet::new();
    let mut tails = Vec::new();
    for inst in instances {
        for (kind, path) in [("error", &inst.err_log), ("out", &inst.out_log)] {
            let Some(path) = path else { continue };
            if !seen.insert(path.clone()) {
                continue;
            }
            let from = since.get(path).copied().unwrap_or(0);
            if let Some(text) = tail_from(path, TAIL_LINES, from) {
                tails.push(LogTail {
                    name: format!("{}-{}-{kind}.log", inst.name, inst.pm_id),
                    text: redactor.redact(&text),
                });
            }
        }
    }
    tails
}

/// At most `n` lines that explain a failure: the line the app wrote just before its first error
/// (apps log their cause, "cannot connect to ...", then throw), the first error as Node prints
/// it (`Error: ...`, `Error [ERR_MODULE_NOT_FOUND]: ...`) with its first two stack frames, then
/// the last lines that say something; without such an error, the last lines. Other stack
/// frames are left to the saved file.
pub fn excerpt(text: &str, n: usize) -> Vec<&str> {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let frame = |l: &&str| l.trim_start().starts_with("at ");
    let Some(first_error) = lines.iter().position(|l| is_error_head(l)) else {
        let said: Vec<&str> = lines.iter().filter(|l| !frame(l)).copied().collect();
        return said[said.len().saturating_sub(n)..].to_vec();
    };
    let mut out = Vec::new();
    if let Some(cause) = first_error
        .checked_sub(1)
        .map(|i| lines[i])
        .filter(|l| !frame(l))
    {
        out.push(cause);
    }
    out.push(lines[first_error]);
    out.extend(
        lines[first_error + 1..]
            .iter()
            .take_while(|l| frame(l))
            .take(2)
            .copied(),
    );
    let after = first_error + 1;
    let rest: Vec<&str> = lines[after..]
        .iter()
        .filter(|l| !frame(l))
        .copied()
        .collect();
    let room = n.saturating_sub(out.len());
    out.extend(&rest[rest.len().saturating_sub(room)..]);
    out
}

/// `Error: ...`, `TypeError: ...`, `Error [ERR_X]: ...`, `FooException: ...` at the start of a
/// line, as Node prints an error.
pub fn is_error_head(line: &str) -> bool {
    if line.starts_with(char::is_whitespace) {
        return false;
    }
    let Some((head, _)) = line.split_once(':') else {
        return false;
    };
    let name = head.split(' ').next().unwrap_or(head);
    let code_ok = match head.split_once(' ') {
        None => true,
        Some((_, code)) => code.starts_with('[') && code.ends_with(']'),
    };
    code_ok
        && (name.ends_with("Error") || name.ends_with("Exception"))
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// PM2's own lines about `app` in its daemon log (`$PM2_HOME/pm2.log`), the last `n`: what
/// there is to show when the app's logs are empty (a cluster worker that died while loading).
pub fn daemon_lines(pm2_home: &Path, app: &str, n: usize) -> Vec<String> {
    let Some(text) = tail_from(&pm2_home.join("pm2.log"), 2000, 0) else {
        return Vec::new();
    };
    // As pm2 7 writes them: `App [api:0] exited with code [1]...`, `Stopping app:api id:0`.
    let bracket = format!("App [{app}:");
    let stopping = format!("app:{app} id:");
    let lines: Vec<String> = text
        .lines()
        .filter(|l| l.contains(&bracket) || l.contains(&stopping))
        .map(String::from)
        .collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}

/// The last `n` lines of what a file got after byte `from` (all of it when the file is now
/// shorter: it was rotated), reading at most the last 256 KiB.
pub fn tail_from(path: &Path, n: usize, from: u64) -> Option<String> {
    let mut f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    let from = if from > len { 0 } else { from };
    let start = len.saturating_sub(TAIL_BYTES).max(from);
    f.seek(SeekFrom::Start(start)).ok()?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().collect();
    // The first line may be cut when reading from the middle of one.
    let skip_first = usize::from(start > from);
    let from = lines
        .len()
        .saturating_sub(n)
        .max(skip_first.min(lines.len()));
    Some(lines[from..].join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_excerpt_shows_the_error_that_explains_a_failure_not_only_the_last_lines() {
        let text = "starting\nError: Cannot find module './dist/instrument.cjs'\n    at Module._resolveFilename (node:internal)\n    at Module._load (node:internal)\n    at more (x)\n    at more (y)\n{ code: 'MODULE_NOT_FOUND' }\nline a\nline b\nline c\nline d\nline e\nline f\n";
        let shown = excerpt(text, 7);
        // The app's last words before the error, then the error with two frames.
        assert_eq!(shown[0], "starting");
        assert_eq!(
            shown[1],
            "Error: Cannot find module './dist/instrument.cjs'"
        );
        assert!(shown[2].contains("_resolveFilename") && shown[3].contains("_load"));
        assert_eq!(shown.len(), 7);
        assert_eq!(shown[6], "line f");
        // An error on the first line has no cause line before it.
        assert_eq!(
            excerpt(
                "Error: x
  at a
last
",
                5
            ),
            ["Error: x", "  at a", "last"]
        );
        // Without an error, the last lines that say something.
        assert_eq!(excerpt("a\n  at x\nb\nc\n", 2), ["b", "c"]);
    }

    #[test]
    fn pm2s_own_lines_about_the_app_are_found_and_only_its() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("pm2.log"),
            "2026-12-02T11:28:20: PM2 log: App [api:0] starting in -fork mode-\n\
             2026-12-02T11:28:20: PM2 log: App [api-worker:1] online\n\
             2026-12-02T11:28:23: PM2 log: Stopping app:api id:0\n\
             2026-12-02T11:28:23: PM2 log: App [api:0] exited with code [1] via signal [SIGINT]\n\
             2026-12-02T11:28:23: PM2 log: Stopping app:api-worker id:1\n",
        )
        .unwrap();
        let said = daemon_lines(dir.path(), "api", 10);
        assert_eq!(said.len(), 3, "{said:?}");
        assert!(said[2].contains("exited with code [1]"));
        assert_eq!(daemon_lines(dir.path(), "api", 1).len(), 1);
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        let text: String = (1..=300).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&p, text).unwrap();
        let t = tail_from(&p, 100, 0).unwrap();
        assert_eq!(t.lines().count(), 100);
        assert!(t.starts_with("line 201") && t.ends_with("line 300"));
    }

    #[test]
    fn only_what_came_after_the_offset() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        std::fs::write(&p, "old 1\nold 2\n").unwrap();
        let at = std::fs::metadata(&p).unwrap().len();
        std::fs::write(&p, "old 1\nold 2\nnew 1\nnew 2\n").unwrap();
        assert_eq!(tail_from(&p, 100, at).unwrap(), "new 1\nnew 2");
        // Rotated (now shorter than the offset): all of it.
        std::fs::write(&p, "x\n").unwrap();
        assert_eq!(tail_from(&p, 100, at).unwrap(), "x");
    }
}
