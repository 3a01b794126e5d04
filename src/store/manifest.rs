//! manifest.json: what an incident holds, as a list of parts. Each kind of part (the whole
//! app tree, the git commit, PM2's dump, and the single files of format 1) says what it
//! stored and how it is checked; capture and restore of each live in the operations layer.
//! Manifests of format 1 (guard 0.1: single files, a commit and a patch) are read and turned
//! into parts, so they still restore.

use crate::code::Code;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::origin::Origin;

/// The format this guard writes.
pub const FORMAT: u32 = 2;
/// Where app files lived inside a format-1 incident.
pub const FILES_DIR: &str = "files";
/// Stored location of PM2's dump.
pub const PM2_DUMP: &str = "pm2/dump.pm2";
/// Stored location of a format-1 uncommitted-changes patch.
pub const GIT_PATCH: &str = "git/uncommitted.patch";
/// Stored location of the tree index.
pub const TREE_INDEX: &str = "tree/index.jsonl.gz";

/// Why an incident was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// `guard backup`.
    Manual,
    /// Taken by `guard deploy` before it changed anything.
    PreDeploy,
    /// Taken by `guard rollback` before it restored another incident: may be a broken state.
    PreRollback,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // pad, not write_str: tables align it with `{:<12}`.
        f.pad(match self {
            Kind::Manual => "manual",
            Kind::PreDeploy => "pre-deploy",
            Kind::PreRollback => "pre-rollback",
        })
    }
}

impl Kind {
    /// Whether the snapshot records a state that ran before a change, so `latest` may pick it.
    pub fn restorable_as_latest(self) -> bool {
        !matches!(self, Kind::PreRollback)
    }
}

/// A file stored inside the incident folder, with its size, mode and sha256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Location inside the incident folder.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Unix permission bits of the original.
    pub mode: u32,
    /// Lowercase hex sha256 of the content.
    pub sha256: String,
}

impl FileEntry {
    /// For a format-1 app file: its path relative to app.dir.
    pub fn app_path(&self) -> Option<&str> {
        self.path.strip_prefix(FILES_DIR)?.strip_prefix('/')
    }
}

/// One part of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Part {
    /// The whole app folder: an index of every entry, contents in the shared object store.
    Tree {
        /// The index file (its sha256 is the tree's fingerprint).
        index: FileEntry,
        /// Entries in the index.
        entries: u64,
        /// Files in the tree.
        files: u64,
        /// Bytes of all files.
        bytes: u64,
        /// The `backup.exclude` patterns in force when it was taken.
        exclude: Vec<String>,
    },
    /// The git commit checked out (HEAD), when app.dir is in a work tree. A format-1 patch of
    /// uncommitted changes may come with it.
    Git {
        /// The commit.
        commit: String,
        /// Format 1 only: uncommitted changes to tracked files.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        patch: Option<FileEntry>,
    },
    /// PM2's saved process list.
    Pm2Dump {
        /// The stored copy.
        file: FileEntry,
    },
    /// Format 1 only: single app files copied into `files/`.
    Files {
        /// The files.
        files: Vec<FileEntry>,
    },
}

/// One PM2 process as it was when the incident was taken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessEntry {
    /// PM2 name.
    pub name: String,
    /// PM2 status.
    pub status: String,
    /// PM2 restart counter.
    pub restarts: u64,
    /// OS pid.
    pub pid: Option<u32>,
}

/// manifest.json (format 2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Manifest format version.
    pub format: u32,
    /// guard's version.
    pub guard_version: String,
    /// The incident id (folder name without `incident-`).
    pub id: String,
    /// When it was taken, RFC 3339 UTC.
    pub created_at: String,
    /// Why it was taken.
    pub kind: Kind,
    /// The reason given.
    pub reason: String,
    /// Who took it.
    pub origin: Origin,
    /// The PM2 app name.
    pub app_name: String,
    /// The app dir.
    pub app_dir: PathBuf,
    /// What was captured.
    pub parts: Vec<Part>,
    /// The app's PM2 processes at the time.
    pub processes: Vec<ProcessEntry>,
}

/// manifest.json of format 1, as guard 0.1 wrote it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestV1 {
    format: u32,
    guard_version: String,
    id: String,
    created_at: String,
    kind: Kind,
    reason: String,
    origin: Origin,
    app_name: String,
    app_dir: PathBuf,
    files: Vec<FileEntry>,
    pm2_dump: Option<FileEntry>,
    git: Option<GitV1>,
    processes: Vec<ProcessEntry>,
}

#[derive(Deserialize)]
struct GitV1 {
    commit: String,
    patch: Option<FileEntry>,
}

impl Manifest {
    /// Parse manifest.json of format 1 or 2.
    pub fn parse(bytes: &[u8]) -> Result<Manifest, String> {
        #[derive(Deserialize)]
        struct Probe {
            format: u32,
        }
        let probe: Probe =
            serde_json::from_slice(bytes).map_err(|e| format!("not a valid manifest: {e}"))?;
        match probe.format {
            1 => {
                let v1: ManifestV1 = serde_json::from_slice(bytes)
                    .map_err(|e| format!("not a valid manifest: {e}"))?;
                let mut parts = vec![Part::Files { files: v1.files }];
                if let Some(g) = v1.git {
                    parts.push(Part::Git {
                        commit: g.commit,
                        patch: g.patch,
                    });
                }
                if let Some(d) = v1.pm2_dump {
                    parts.push(Part::Pm2Dump { file: d });
                }
                Ok(Manifest {
                    format: v1.format,
                    guard_version: v1.guard_version,
                    id: v1.id,
                    created_at: v1.created_at,
                    kind: v1.kind,
                    reason: v1.reason,
                    origin: v1.origin,
                    app_name: v1.app_name,
                    app_dir: v1.app_dir,
                    parts,
                    processes: v1.processes,
                })
            }
            FORMAT => {
                serde_json::from_slice(bytes).map_err(|e| format!("not a valid manifest: {e}"))
            }
            other => Err(format!(
                "has format {other}, this guard reads 1 and {FORMAT}"
            )),
        }
    }

    /// Every file stored in the incident folder that the manifest vouches for.
    pub fn stored_files(&self) -> impl Iterator<Item = &FileEntry> {
        self.parts
            .iter()
            .flat_map(|p| -> Box<dyn Iterator<Item = &FileEntry>> {
                match p {
                    Part::Tree { index, .. } => Box::new(std::iter::once(index)),
                    Part::Git { patch, .. } => Box::new(patch.iter()),
                    Part::Pm2Dump { file } => Box::new(std::iter::once(file)),
                    Part::Files { files } => Box::new(files.iter()),
                }
            })
    }

    /// The recorded commit, if any.
    pub fn commit(&self) -> Option<&str> {
        self.parts.iter().find_map(|p| match p {
            Part::Git { commit, .. } => Some(commit.as_str()),
            _ => None,
        })
    }

    /// The tree part, if the incident has one.
    pub fn tree(&self) -> Option<&Part> {
        self.parts.iter().find(|p| matches!(p, Part::Tree { .. }))
    }

    /// What identifies the code of this snapshot for a person: the commit, else the tree's
    /// fingerprint, shortened.
    pub fn fingerprint(&self) -> Option<Code> {
        if let Some(c) = self.commit() {
            return Some(Code::commit(c));
        }
        match self.tree() {
            Some(Part::Tree { index, .. }) => Some(Code::tree(&index.sha256)),
            _ => None,
        }
    }

    /// One line on what it holds: "tree of 812 files (3.1 MB), commit 1a2b3c, dump.pm2".
    pub fn contents(&self) -> String {
        let mut said = Vec::new();
        for p in &self.parts {
            match p {
                Part::Tree { files, bytes, .. } => {
                    said.push(format!("tree of {files} file(s) ({})", human_bytes(*bytes)))
                }
                Part::Files { files } => said.push(format!("{} file(s)", files.len())),
                Part::Git { commit, .. } => {
                    said.push(format!("commit {}", Code::commit(commit.as_str()).short()));
                }
                Part::Pm2Dump { .. } => said.push("dump.pm2".into()),
            }
        }
        said.join(", ")
    }
}

/// `1.2 MB`, `512 B`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KB", "MB", "GB", "TB"];
    if n < 1000 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1000.0;
    for u in UNITS {
        if v < 1000.0 {
            return format!("{v:.1} {u}");
        }
        v /= 1000.0;
    }
    format!("{v:.1} PB")
}

/// Stored paths must stay inside the incident and under a known folder.
pub fn check_stored_path(p: &str) -> Result<(), String> {
    let path = Path::new(p);
    let inside = path.components().all(|c| matches!(c, Component::Normal(_)));
    let known = p == PM2_DUMP
        || p == GIT_PATCH
        || p == TREE_INDEX
        || (p.starts_with(&format!("{FILES_DIR}/"))
            && !path.components().any(|c| c.as_os_str() == ".git"));
    if !inside || !known || path.components().count() < 2 {
        return Err(format!(
            "the manifest lists {p:?}, which is not a path guard stores"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = r#"{"format":1,"guard_version":"0.1.0","id":"20261128-104148","created_at":"2026-11-28T10:41:48.000Z","kind":"pre-deploy","reason":"deploy","origin":{"pid":1,"host":"h","user":"u","started_at":"x","command":"guard deploy"},"app_name":"api","app_dir":"/srv/api","files":[{"path":"files/env.env","size":3,"mode":384,"sha256":"ab"}],"pm2_dump":{"path":"pm2/dump.pm2","size":1,"mode":384,"sha256":"cd"},"git":{"commit":"0123456789abcdef","patch":null},"processes":[]}"#;

    #[test]
    fn format_1_manifests_become_parts() {
        let m = Manifest::parse(V1.as_bytes()).unwrap();
        assert_eq!(m.format, 1);
        assert_eq!(m.parts.len(), 3);
        assert_eq!(m.commit(), Some("0123456789abcdef"));
        assert!(m.tree().is_none());
        assert_eq!(m.stored_files().count(), 2);
        assert_eq!(m.contents(), "1 file(s), commit 0123456789ab, dump.pm2");
    }

    #[test]
    fn unknown_formats_are_named() {
        let e = Manifest::parse(br#"{"format":9}"#).unwrap_err();
        assert!(e.contains("format 9"), "{e}");
    }

    #[test]
    fn stored_paths_stay_inside_known_folders() {
        for ok in [
            PM2_DUMP,
            TREE_INDEX,
            "files/env.env",
            "files/config/app.env",
        ] {
            assert!(check_stored_path(ok).is_ok(), "{ok}");
        }
        for bad in [
            "../x",
            "/etc/passwd",
            "files",
            "other/x",
            "files/../x",
            "files/.git/hooks/x",
        ] {
            assert!(check_stored_path(bad).is_err(), "{bad}");
        }
    }
}
