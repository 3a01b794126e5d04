//! What snapshots leave out and restores never touch: `backup.exclude`'s gitignore-style
//! patterns, `.git`, and guard's own files inside app.dir.

use std::path::{Path, PathBuf};

/// Paths left out of snapshots and never touched by a restore: gitignore-style patterns.
#[derive(Debug, Clone, Default)]
pub struct Excludes {
    rules: Vec<Rule>,
    /// guard's own files inside app.dir (its config, secret files), relative: never in a
    /// snapshot, never touched by a restore.
    own: Vec<PathBuf>,
}

#[derive(Debug, Clone)]
struct Rule {
    pattern: glob::Pattern,
    /// Matched against the whole relative path (a `/` inside the pattern), else the name.
    anchored: bool,
    /// Only folders (a trailing `/`).
    dir_only: bool,
}

const MATCH: glob::MatchOptions = glob::MatchOptions {
    case_sensitive: true,
    require_literal_separator: true,
    require_literal_leading_dot: false,
};

impl Excludes {
    /// Parse patterns like `logs/`, `/uploads`, `*.log`, `cache/tmp`; a bad one is an error
    /// naming it.
    pub fn new(patterns: &[String]) -> Result<Excludes, String> {
        let mut rules = Vec::new();
        for raw in patterns {
            let mut p = raw.as_str();
            let dir_only = p.ends_with('/');
            p = p.trim_end_matches('/');
            let anchored = p.contains('/');
            p = p.trim_start_matches('/');
            if p.is_empty() || p.split('/').any(|c| c == ".." || c == ".") {
                return Err(format!(
                    "backup.exclude entry {raw:?} must be a pattern inside app.dir"
                ));
            }
            let pattern =
                glob::Pattern::new(p).map_err(|e| format!("backup.exclude entry {raw:?}: {e}"))?;
            rules.push(Rule {
                pattern,
                anchored,
                dir_only,
            });
        }
        Ok(Excludes {
            rules,
            own: Vec::new(),
        })
    }

    /// Exclude one of guard's own files (relative to app.dir).
    pub fn add_own(&mut self, rel: &Path) {
        if !rel.as_os_str().is_empty() {
            self.own.push(rel.to_path_buf());
        }
    }

    /// Whether `rel` (a folder when `is_dir`) is excluded. `.git` always is.
    pub fn excluded(&self, rel: &Path, is_dir: bool) -> bool {
        let name = rel.file_name().unwrap_or_default();
        if name == ".git" || self.own.iter().any(|o| o == rel) {
            return true;
        }
        let Some(rel_s) = rel.to_str() else {
            return false;
        };
        let name_s = name.to_str().unwrap_or_default();
        self.rules.iter().any(|r| {
            (!r.dir_only || is_dir)
                && if r.anchored {
                    r.pattern.matches_with(rel_s, MATCH)
                } else {
                    r.pattern.matches_with(name_s, MATCH)
                }
        })
    }
}
