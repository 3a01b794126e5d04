//! The crash PM2 hides: an app that fails to load without exiting. PM2 (7.0.4) loads an ESM
//! entry through `import()`; when the import throws, the error is printed but the process
//! stays `online`, is never restarted, and never listens: only its error log says what
//! happened. Under plain `node` the same error is a crash.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;

use crate::evidence::{Offsets, is_error_head};
use crate::pm2::Instance;

/// New error-log output read per look, at most: the error is at its start.
const READ_CAP: u64 = 64 * 1024;

/// Follows the error logs of the instances being verified from where they ended before the
/// restart, looking for an error with a stack trace: what Node prints of an error that stopped
/// a module from loading (`Error [ERR_MODULE_NOT_FOUND]: ...`, `SyntaxError: ...`, a
/// top-level `throw`), followed by its `at ...` frames. A plain log line that mentions an
/// error has no frames and is not one.
#[derive(Debug, Default)]
pub struct LoadErrors {
    logs: HashMap<PathBuf, (u32, u64)>,
    found: Option<(u32, String)>,
    /// An error line that ended what was read: it counts once a stack frame follows.
    pending: Option<(u32, String)>,
}

impl LoadErrors {
    /// Follow these instances' error logs from `since` (a log not in it is new: from its
    /// start); with `since` None, from their current end (an app guard did not restart).
    pub fn new(instances: &[Instance], since: Option<&Offsets>) -> LoadErrors {
        let mut logs = HashMap::new();
        for i in instances {
            let Some(path) = &i.err_log else { continue };
            if path.as_os_str() == "/dev/null" {
                continue;
            }
            let from = match since {
                Some(s) => s.get(path).copied().unwrap_or(0),
                None => std::fs::metadata(path).map(|m| m.len()).unwrap_or(0),
            };
            logs.entry(path.clone()).or_insert((i.pm_id, from));
        }
        LoadErrors {
            logs,
            ..LoadErrors::default()
        }
    }

    /// The instance and error line of a load error written so far, if any.
    pub fn poll(&mut self) -> Option<(u32, String)> {
        if self.found.is_some() {
            return self.found.clone();
        }
        for (path, (instance, offset)) in &mut self.logs {
            let Ok(mut f) = std::fs::File::open(path) else {
                continue;
            };
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            if len < *offset {
                *offset = 0; // rotated
            }
            if len == *offset || f.seek(SeekFrom::Start(*offset)).is_err() {
                continue;
            }
            let mut buf = Vec::new();
            if f.take(READ_CAP).read_to_end(&mut buf).is_err() {
                continue;
            }
            // Only whole lines: a line PM2 is still writing is read next time.
            let Some(end) = buf.iter().rposition(|b| *b == b'\n') else {
                continue;
            };
            *offset += end as u64 + 1;
            let text = String::from_utf8_lossy(&buf[..end]);
            for line in text.lines() {
                if line.trim().is_empty() {
                    continue;
                }
                if let Some(candidate) = self.pending.take()
                    && line.trim_start().starts_with("at ")
                {
                    self.found = Some(candidate);
                    return self.found.clone();
                }
                if is_error_head(line) {
                    let shown: String = line.trim().chars().take(300).collect();
                    self.pending = Some((*instance, shown));
                }
            }
        }
        None
    }
}

/// Whether process `pid` holds a listening TCP socket (None when /proc cannot tell). Cluster
/// workers share their master's socket and hold none: callers treat "no" as "unknown" there.
pub fn listens(pid: u32) -> Option<bool> {
    let mut inodes = std::collections::HashSet::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.flatten() {
        if let Ok(target) = std::fs::read_link(e.path())
            && let Some(inode) = target
                .to_str()
                .and_then(|t| t.strip_prefix("socket:["))
                .and_then(|t| t.strip_suffix(']'))
        {
            inodes.insert(inode.to_string());
        }
    }
    if inodes.is_empty() {
        return Some(false);
    }
    for table in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        let listening = text.lines().skip(1).any(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            // st is column 3 (0A = LISTEN), the inode column 9.
            cols.len() > 9 && cols[3] == "0A" && inodes.contains(cols[9])
        });
        if listening {
            return Some(true);
        }
    }
    Some(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn instance(log: &std::path::Path) -> Instance {
        Instance {
            pm_id: 3,
            err_log: Some(log.to_path_buf()),
            ..Instance::default()
        }
    }

    #[test]
    fn an_error_with_its_stack_is_found_and_output_from_before_the_restart_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("api-error.log");
        let old = "Error: from the previous release\n    at old.js:1:1\n";
        std::fs::write(&log, old).unwrap();
        let since: Offsets = [(log.clone(), old.len() as u64)].into();
        let mut watch = LoadErrors::new(&[instance(&log)], Some(&since));
        assert_eq!(
            watch.poll(),
            None,
            "what came before the restart is not this release's"
        );
        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        write!(
            f,
            "some warning\nError [ERR_MODULE_NOT_FOUND]: Cannot find module '/app/x.mjs'\n"
        )
        .unwrap();
        assert_eq!(watch.poll(), None, "no stack frame yet");
        writeln!(
            f,
            "    at finalizeResolution (node:internal/modules/esm/resolve:283:11)"
        )
        .unwrap();
        assert_eq!(
            watch.poll(),
            Some((
                3,
                "Error [ERR_MODULE_NOT_FOUND]: Cannot find module '/app/x.mjs'".into()
            ))
        );
    }

    #[test]
    fn log_lines_that_mention_an_error_without_a_stack_are_not_load_errors() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("api-error.log");
        std::fs::write(
            &log,
            "Error: redis not ready, retrying\nwarn: Error: x\n  TypeError: indented\n    at y\n",
        )
        .unwrap();
        let mut watch = LoadErrors::new(&[instance(&log)], Some(&Offsets::new()));
        assert_eq!(watch.poll(), None);
        for head in [
            "Error: boom",
            "TypeError: x is not a function",
            "SyntaxError: Unexpected token 'export'",
            "Error [ERR_REQUIRE_ESM]: require() of ES Module",
        ] {
            assert!(is_error_head(head), "{head}");
        }
        for line in ["info: Error: x", "Errors: 3", "Error [x: y", "http://x"] {
            assert!(!is_error_head(line), "{line}");
        }
    }

    #[test]
    fn a_listening_socket_is_seen_in_proc() {
        let me = std::process::id();
        let before = listens(me);
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert_eq!(listens(me), Some(true));
        drop(l);
        assert!(before.is_some());
    }
}
