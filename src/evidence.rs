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

/// The last lines of every out and error log of these instances (each file once: instances
/// may share a log file).
pub fn collect(instances: &[Instance], redactor: &Redactor) -> Vec<LogTail> {
    let mut seen = std::collections::HashSet::new();
    let mut tails = Vec::new();
    for inst in instances {
        for (kind, path) in [("error", &inst.err_log), ("out", &inst.out_log)] {
            let Some(path) = path else { continue };
            if !seen.insert(path.clone()) {
                continue;
            }
            if let Some(text) = tail(path, TAIL_LINES) {
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

/// The last `n` lines of a file, reading at most the last 256 KiB.
pub fn tail(path: &Path, n: usize) -> Option<String> {
    let mut f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    let start = len.saturating_sub(TAIL_BYTES);
    f.seek(SeekFrom::Start(start)).ok()?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().collect();
    // The first line may be cut when reading from the middle.
    let skip_first = usize::from(start > 0);
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
        let t = tail(&p, 100).unwrap();
        assert_eq!(t.lines().count(), 100);
        assert!(t.starts_with("line 201") && t.ends_with("line 300"));
    }
}
