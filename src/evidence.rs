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

/// The last `n` lines that say something: stack frames (`    at ...`) are left to the saved file.
pub fn excerpt(text: &str, n: usize) -> Vec<&str> {
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with("at "))
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
