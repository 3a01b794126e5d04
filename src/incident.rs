//! The incident store: snapshot folders under `backup.dir`, written atomically, verified by
//! sha256 before any restore, listed, and pruned by retention.
//!
//! Layout of one incident:
//! ```text
//! incident-20251222-110221/
//!   manifest.json            what was taken, with size, mode and sha256 of every file
//!   files/<path>             the backed-up files, by their path relative to app.dir
//!   pm2/dump.pm2             PM2's saved process list
//!   git/uncommitted.patch    uncommitted changes to tracked files, if any
//!   outcome.json             how the deploy that took it ended (written later)
//!   logs/                    log tails saved as evidence of a failed verification
//! ```

use std::fs;
use std::io::{BufReader, Read};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::atomic;
use crate::exit::usage;
use crate::origin::Origin;

/// Folder name prefix of an incident.
pub const PREFIX: &str = "incident-";
const TEMP_PREFIX: &str = ".tmp-incident-";
const MANIFEST: &str = "manifest.json";
const OUTCOME: &str = "outcome.json";
/// Where app files live inside an incident.
pub const FILES_DIR: &str = "files";
/// Stored location of PM2's dump.
pub const PM2_DUMP: &str = "pm2/dump.pm2";
/// Stored location of the uncommitted-changes patch.
pub const GIT_PATCH: &str = "git/uncommitted.patch";
const MANIFEST_FORMAT: u32 = 1;
/// Incidents younger than this are never pruned, whatever `backup.keep` says.
const MIN_AGE_TO_PRUNE: jiff::SignedDuration = jiff::SignedDuration::from_hours(1);

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
        f.write_str(match self {
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

/// One stored file.
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
    /// For an app file: its path relative to app.dir.
    pub fn app_path(&self) -> Option<&str> {
        self.path.strip_prefix(FILES_DIR)?.strip_prefix('/')
    }
}

/// The code revision of the app dir.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitState {
    /// The commit checked out.
    pub commit: String,
    /// Uncommitted changes to tracked files, if there were any.
    pub patch: Option<FileEntry>,
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

/// manifest.json.
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
    /// Backed-up app files.
    pub files: Vec<FileEntry>,
    /// PM2's dump.pm2, when PM2 had one.
    pub pm2_dump: Option<FileEntry>,
    /// The code revision, when app.dir is a git work tree.
    pub git: Option<GitState>,
    /// The app's PM2 processes at the time.
    pub processes: Vec<ProcessEntry>,
}

impl Manifest {
    /// Every stored file the manifest vouches for.
    pub fn all_entries(&self) -> impl Iterator<Item = &FileEntry> {
        self.files
            .iter()
            .chain(self.pm2_dump.iter())
            .chain(self.git.iter().filter_map(|g| g.patch.as_ref()))
    }
}

/// outcome.json: what became of the deploy or rollback that used an incident.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// The command that used it.
    pub command: String,
    /// success, rolled back, needs a human...
    pub verdict: String,
    /// The reason in one line.
    pub reason: Option<String>,
    /// The exit code.
    pub exit_code: i32,
    /// When, RFC 3339 UTC.
    pub at: String,
}

/// An incident folder found in the store.
#[derive(Debug)]
pub struct Listed {
    /// The id.
    pub id: String,
    /// Its folder.
    pub dir: PathBuf,
    /// The manifest, or why it cannot be read.
    pub manifest: Result<Manifest, String>,
    /// The outcome, if recorded.
    pub outcome: Option<Outcome>,
}

impl Listed {
    /// Total size of the folder in bytes.
    pub fn size(&self) -> u64 {
        dir_size(&self.dir)
    }
}

/// A checked incident: every file present with the size and sha256 its manifest records.
#[derive(Debug)]
pub struct Verified {
    /// The folder.
    pub dir: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
}

impl Verified {
    /// Where a stored file lives.
    pub fn stored(&self, entry: &FileEntry) -> PathBuf {
        self.dir.join(&entry.path)
    }
}

/// The incident folder of one app.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// The store in `dir`, without touching the disk.
    pub fn at(dir: &Path) -> Store {
        Store {
            dir: dir.to_path_buf(),
        }
    }

    /// Its folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Create the folder (0700) if needed and make sure guard can write there.
    pub fn ensure(&self) -> Result<()> {
        if !self.dir.is_dir() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&self.dir)
                .map_err(|e| {
                    usage(format!(
                        "cannot create backup.dir {}: {e}",
                        self.dir.display()
                    ))
                })?;
        }
        fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700)).map_err(|e| {
            usage(format!(
                "cannot restrict backup.dir {} to 0700: {e}",
                self.dir.display()
            ))
        })?;
        let probe = tempfile::Builder::new()
            .prefix(".guard-write-test-")
            .tempfile_in(&self.dir);
        if let Err(e) = probe {
            return Err(usage(format!(
                "backup.dir {} is not writable: {e}",
                self.dir.display()
            )));
        }
        Ok(())
    }

    /// Remove temporary folders left by a run that died mid-backup. Call with the lock held.
    pub fn sweep_temporaries(&self) -> Result<Vec<String>> {
        let mut removed = Vec::new();
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Ok(removed);
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(TEMP_PREFIX) && entry.file_type().is_ok_and(|t| t.is_dir()) {
                fs::remove_dir_all(entry.path())
                    .with_context(|| format!("removing {}", entry.path().display()))?;
                removed.push(name);
            }
        }
        Ok(removed)
    }

    /// Start a new incident in a temporary folder inside the store.
    pub fn begin(&self) -> Result<Draft> {
        let tmp = tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .permissions(fs::Permissions::from_mode(0o700))
            .tempdir_in(&self.dir)
            .with_context(|| {
                format!(
                    "creating a temporary incident folder in {}",
                    self.dir.display()
                )
            })?;
        Ok(Draft {
            tmp,
            files: Vec::new(),
            pm2_dump: None,
            patch: None,
            store: self.clone(),
        })
    }

    /// Every incident folder, newest first.
    pub fn list(&self) -> Result<Vec<Listed>> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("reading backup.dir {}", self.dir.display()));
            }
        };
        let mut list = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(id) = name.strip_prefix(PREFIX) else {
                continue;
            };
            if parse_id(id).is_err() || !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let dir = entry.path();
            let manifest = read_manifest(&dir);
            let outcome = fs::read(dir.join(OUTCOME))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            list.push(Listed {
                id: id.to_string(),
                dir,
                manifest,
                outcome,
            });
        }
        list.sort_by_key(|l| std::cmp::Reverse(sort_key(&l.id)));
        Ok(list)
    }

    /// Resolve `ID|latest` to a verified incident; every problem is a usage error (exit 2).
    pub fn resolve(&self, arg: &str) -> Result<Verified> {
        if arg == "latest" {
            let list = self.list()?;
            let newest = list
                .iter()
                .find(|l| {
                    l.manifest
                        .as_ref()
                        .map(|m| m.kind.restorable_as_latest())
                        .unwrap_or(true)
                })
                .ok_or_else(|| {
                    usage(format!("no incident to restore in {}", self.dir.display()))
                })?;
            return self.verify(&newest.id);
        }
        let id = parse_id(arg)?;
        self.verify(&id)
    }

    /// Check an incident: manifest readable, every file present, regular, of the right size and sha256.
    pub fn verify(&self, id: &str) -> Result<Verified> {
        let dir = self.dir.join(format!("{PREFIX}{id}"));
        match fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(usage(format!(
                    "incident {id}: {} is not a folder",
                    dir.display()
                )));
            }
            Err(_) => {
                return Err(usage(format!(
                    "no incident {id} in {} (`guard list` shows the incidents)",
                    self.dir.display()
                )));
            }
        }
        let manifest =
            read_manifest(&dir).map_err(|e| usage(format!("incident {id} is broken: {e}")))?;
        if manifest.id != id {
            return Err(usage(format!(
                "incident {id} is broken: its manifest says it is incident {}",
                manifest.id
            )));
        }
        for entry in manifest.all_entries() {
            check_entry(&dir, entry)
                .map_err(|e| usage(format!("incident {id} is broken: {e}; nothing was changed")))?;
        }
        Ok(Verified { dir, manifest })
    }

    /// Record how the command that used incident `id` ended.
    pub fn set_outcome(&self, id: &str, outcome: &Outcome) -> Result<()> {
        let path = self.dir.join(format!("{PREFIX}{id}")).join(OUTCOME);
        atomic::write(&path, &serde_json::to_vec_pretty(outcome)?, 0o600)
    }

    /// Save evidence (a log tail) into incident `id`; returns where it went.
    pub fn save_evidence(&self, id: &str, name: &str, text: &str) -> Result<PathBuf> {
        let dir = self.dir.join(format!("{PREFIX}{id}")).join("logs");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(name);
        atomic::write(&path, text.as_bytes(), 0o600)?;
        Ok(path)
    }

    /// Remove the oldest incidents beyond `keep`, never one younger than an hour, never `protect`,
    /// never the newest one `latest` would pick. Returns the ids removed.
    pub fn prune(&self, keep: usize, protect: &str) -> Result<Vec<String>> {
        let list = self.list()?;
        let newest_good = list
            .iter()
            .find(|l| {
                l.manifest
                    .as_ref()
                    .is_ok_and(|m| m.kind.restorable_as_latest())
            })
            .map(|l| l.id.clone());
        let now = jiff::Timestamp::now();
        let mut removed = Vec::new();
        for listed in list.iter().skip(keep) {
            if listed.id == protect || Some(&listed.id) == newest_good.as_ref() {
                continue;
            }
            let young = match &listed.manifest {
                Ok(m) => m
                    .created_at
                    .parse::<jiff::Timestamp>()
                    .map(|t| now.duration_since(t) < MIN_AGE_TO_PRUNE)
                    .unwrap_or(true),
                // A folder without a readable manifest is kept: a human should look at it.
                Err(_) => true,
            };
            if young {
                continue;
            }
            fs::remove_dir_all(&listed.dir)
                .with_context(|| format!("removing old incident {}", listed.dir.display()))?;
            removed.push(listed.id.clone());
        }
        Ok(removed)
    }
}

/// A new incident being written; nothing is visible in the store until [`Draft::commit`].
#[derive(Debug)]
pub struct Draft {
    tmp: tempfile::TempDir,
    files: Vec<FileEntry>,
    pm2_dump: Option<FileEntry>,
    patch: Option<FileEntry>,
    store: Store,
}

/// What the caller knows about the snapshot besides its files.
#[derive(Debug)]
pub struct Meta {
    /// Why it is taken.
    pub kind: Kind,
    /// The reason given.
    pub reason: String,
    /// Who takes it.
    pub origin: Origin,
    /// PM2 app name.
    pub app_name: String,
    /// App dir.
    pub app_dir: PathBuf,
    /// The git commit, if any.
    pub git_commit: Option<String>,
    /// The app's PM2 processes.
    pub processes: Vec<ProcessEntry>,
}

impl Draft {
    fn put(&self, rel: &str, bytes: &[u8], mode: u32) -> Result<FileEntry> {
        let dest = self.tmp.path().join(rel);
        let parent = dest.parent().expect("stored paths have a parent");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
        // Not through atomic::write: the whole folder is renamed into place at the end.
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&dest)
            .with_context(|| format!("creating {}", dest.display()))?;
        std::io::Write::write_all(&mut f, bytes)
            .with_context(|| format!("writing {}", dest.display()))?;
        f.sync_all()
            .with_context(|| format!("syncing {}", dest.display()))?;
        Ok(FileEntry {
            path: rel.to_string(),
            size: bytes.len() as u64,
            mode: mode & 0o7777,
            sha256: hex::encode(Sha256::digest(bytes)),
        })
    }

    /// Copy an app file (path relative to app.dir).
    pub fn add_app_file(&mut self, app_dir: &Path, rel: &Path) -> Result<()> {
        let src = app_dir.join(rel);
        let meta = fs::metadata(&src).with_context(|| format!("reading {}", src.display()))?;
        if !meta.is_file() {
            bail!("{} is not a regular file", src.display());
        }
        let bytes = fs::read(&src).with_context(|| format!("reading {}", src.display()))?;
        let stored = format!("{FILES_DIR}/{}", rel.to_string_lossy());
        let entry = self.put(&stored, &bytes, meta.permissions().mode())?;
        self.files.push(entry);
        Ok(())
    }

    /// Copy PM2's dump.pm2.
    pub fn add_pm2_dump(&mut self, path: &Path) -> Result<()> {
        let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        self.pm2_dump = Some(self.put(PM2_DUMP, &bytes, 0o600)?);
        Ok(())
    }

    /// Store the uncommitted-changes patch.
    pub fn add_git_patch(&mut self, patch: &[u8]) -> Result<()> {
        self.patch = Some(self.put(GIT_PATCH, patch, 0o600)?);
        Ok(())
    }

    /// Write the manifest and move the folder into place under a fresh id. Returns the id.
    pub fn commit(self, meta: Meta) -> Result<String> {
        let now = jiff::Timestamp::now();
        let base = now.strftime("%Y%m%d-%H%M%S").to_string();
        let store_dir = self.store.dir.clone();
        let tmp_path = self.tmp.path().to_path_buf();
        for n in 1..1000u32 {
            let id = if n == 1 {
                base.clone()
            } else {
                format!("{base}-{n}")
            };
            let target = store_dir.join(format!("{PREFIX}{id}"));
            if target.exists() {
                continue;
            }
            let manifest = Manifest {
                format: MANIFEST_FORMAT,
                guard_version: env!("CARGO_PKG_VERSION").to_string(),
                id: id.clone(),
                created_at: crate::origin::now_rfc3339(),
                kind: meta.kind,
                reason: meta.reason.clone(),
                origin: meta.origin.clone(),
                app_name: meta.app_name.clone(),
                app_dir: meta.app_dir.clone(),
                files: self.files.clone(),
                pm2_dump: self.pm2_dump.clone(),
                git: meta.git_commit.clone().map(|commit| GitState {
                    commit,
                    patch: self.patch.clone(),
                }),
                processes: meta.processes.clone(),
            };
            atomic::write(
                &tmp_path.join(MANIFEST),
                &serde_json::to_vec_pretty(&manifest)?,
                0o600,
            )?;
            for sub in [FILES_DIR, "pm2", "git"] {
                let d = tmp_path.join(sub);
                if d.is_dir() {
                    atomic::sync_dir(&d)?;
                }
            }
            // rename(2) onto an existing non-empty folder fails, so a racing id cannot be overwritten.
            match fs::rename(&tmp_path, &target) {
                Ok(()) => {
                    let _ = self.tmp.keep();
                    atomic::sync_dir(&store_dir)?;
                    return Ok(id);
                }
                Err(_) if target.exists() => continue,
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("moving the new incident into {}", target.display())
                    });
                }
            }
        }
        bail!(
            "could not find a free incident id in {}",
            store_dir.display()
        )
    }
}

/// Accept `20251222-110221`, `incident-20251222-110221` and a `-N` suffix; anything else is a usage error.
pub fn parse_id(arg: &str) -> Result<String> {
    let id = arg.strip_prefix(PREFIX).unwrap_or(arg);
    if id.contains(['/', '\\', '\0']) || id.contains("..") {
        return Err(usage(format!(
            "incident id {:?} must be a plain id like 20251222-110221, not a path",
            crate::output::sanitize(arg)
        )));
    }
    let well_formed = {
        let b = id.as_bytes();
        let digits =
            |r: std::ops::Range<usize>| b.get(r).is_some_and(|s| s.iter().all(u8::is_ascii_digit));
        b.len() >= 15
            && digits(0..8)
            && b[8] == b'-'
            && digits(9..15)
            && (b.len() == 15
                || (b[15] == b'-' && b.len() > 16 && b.len() <= 20 && digits(16..b.len())))
    };
    if !well_formed {
        return Err(usage(format!(
            "incident id {:?} is not of the form YYYYMMDD-HHMMSS (e.g. 20251222-110221) or `latest`",
            crate::output::sanitize(arg)
        )));
    }
    Ok(id.to_string())
}

fn sort_key(id: &str) -> (String, u32) {
    match id.get(16..).and_then(|s| s.parse().ok()) {
        Some(n) => (id.get(..15).unwrap_or(id).to_string(), n),
        None => (id.get(..15).unwrap_or(id).to_string(), 1),
    }
}

fn read_manifest(dir: &Path) -> Result<Manifest, String> {
    let path = dir.join(MANIFEST);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!(
                "{} is missing: the incident is incomplete or not made by guard",
                path.display()
            ));
        }
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let manifest: Manifest = serde_json::from_slice(&bytes)
        .map_err(|e| format!("{} is not a valid manifest: {e}", path.display()))?;
    if manifest.format != MANIFEST_FORMAT {
        return Err(format!(
            "{} has format {}, this guard reads {MANIFEST_FORMAT}",
            path.display(),
            manifest.format
        ));
    }
    Ok(manifest)
}

/// Stored paths must stay inside the incident and under a known folder.
fn check_stored_path(p: &str) -> Result<(), String> {
    let path = Path::new(p);
    let inside = path.components().all(|c| matches!(c, Component::Normal(_)));
    let known = p == PM2_DUMP || p == GIT_PATCH || p.starts_with(&format!("{FILES_DIR}/"));
    if !inside || !known || path.components().count() < 2 {
        return Err(format!(
            "the manifest lists {p:?}, which is not a path guard stores"
        ));
    }
    Ok(())
}

fn check_entry(dir: &Path, entry: &FileEntry) -> Result<(), String> {
    check_stored_path(&entry.path)?;
    let path = dir.join(&entry.path);
    let meta = fs::symlink_metadata(&path).map_err(|_| format!("{} is missing", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    if meta.len() != entry.size {
        return Err(format!(
            "{} has {} bytes, the manifest says {}",
            path.display(),
            meta.len(),
            entry.size
        ));
    }
    let actual = sha256_file(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if actual != entry.sha256 {
        return Err(format!(
            "{} does not match its sha256 in the manifest (corrupted or changed)",
            path.display()
        ));
    }
    Ok(())
}

/// Lowercase hex sha256 of a file, read in chunks.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut reader = BufReader::new(fs::File::open(path)?);
    let mut hasher = Sha256::new();
    let mut buf = [0u8; 64 * 1024];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_accept_both_spellings_and_reject_paths() {
        assert_eq!(parse_id("20251222-110221").unwrap(), "20251222-110221");
        assert_eq!(
            parse_id("incident-20251222-110221").unwrap(),
            "20251222-110221"
        );
        assert_eq!(parse_id("20251222-110221-2").unwrap(), "20251222-110221-2");
        for bad in [
            "../20251222-110221",
            "a/b",
            "..",
            "",
            "2025",
            "20251222-11022x",
            "20251222-110221-",
            "latest2",
        ] {
            let err = parse_id(bad).unwrap_err();
            assert_eq!(
                crate::exit::status_of(&err),
                crate::exit::ExitStatus::Usage,
                "{bad}"
            );
        }
    }

    #[test]
    fn suffixed_ids_sort_numerically() {
        let mut ids = vec![
            "20251222-110221-10",
            "20251222-110221",
            "20251222-110221-2",
            "20251223-000000",
        ];
        ids.sort_by_key(|id| sort_key(id));
        assert_eq!(
            ids,
            [
                "20251222-110221",
                "20251222-110221-2",
                "20251222-110221-10",
                "20251223-000000"
            ]
        );
    }

    fn draft_incident(store: &Store, app: &Path, kind: Kind) -> String {
        let mut d = store.begin().unwrap();
        d.add_app_file(app, Path::new("env.env")).unwrap();
        d.commit(Meta {
            kind,
            reason: "test".into(),
            origin: Origin::current(),
            app_name: "api".into(),
            app_dir: app.to_path_buf(),
            git_commit: None,
            processes: vec![],
        })
        .unwrap()
    }

    #[test]
    fn a_committed_incident_verifies_and_tampering_is_caught() {
        let root = tempfile::tempdir().unwrap();
        let app = root.path().join("app");
        fs::create_dir(&app).unwrap();
        fs::write(app.join("env.env"), "A=1\n").unwrap();
        let store = Store::at(&root.path().join("backups"));
        store.ensure().unwrap();
        let id = draft_incident(&store, &app, Kind::Manual);
        let id2 = draft_incident(&store, &app, Kind::PreRollback);
        assert_ne!(id, id2, "same second gets a suffix");
        let v = store.verify(&id).unwrap();
        assert_eq!(v.manifest.files[0].app_path(), Some("env.env"));
        let stored = v.stored(&v.manifest.files[0]);
        assert_eq!(
            fs::metadata(&stored).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // latest skips the pre-rollback snapshot.
        assert_eq!(store.resolve("latest").unwrap().manifest.id, id);
        fs::write(&stored, "A=2\n").unwrap();
        let err = store.verify(&id).unwrap_err();
        assert_eq!(crate::exit::status_of(&err), crate::exit::ExitStatus::Usage);
        assert!(err.to_string().contains("sha256"), "{err}");
        fs::remove_file(&stored).unwrap();
        assert!(
            store
                .verify(&id)
                .unwrap_err()
                .to_string()
                .contains("missing")
        );
        assert!(
            store
                .list()
                .unwrap()
                .iter()
                .all(|l| !l.dir.to_string_lossy().contains(TEMP_PREFIX))
        );
    }

    proptest::proptest! {
        #[test]
        fn id_parsing_never_panics(s in "\\PC{0,30}") {
            let _ = parse_id(&s);
            let _ = sort_key(&s);
        }

        #[test]
        fn manifest_parsing_never_panics(s in "\\PC{0,300}") {
            let dir = tempfile::tempdir().unwrap();
            fs::write(dir.path().join(MANIFEST), &s).unwrap();
            let _ = read_manifest(dir.path());
            let _ = check_stored_path(&s);
        }
    }
}
