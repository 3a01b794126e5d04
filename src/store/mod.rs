//! The incident store in `backup.dir`: incident folders written atomically and checked
//! before any restore, the object store their trees share, listing, and retention.
//!
//! ```text
//! backup.dir/
//!   objects/ab/cdef...                 file contents by BLAKE3, shared by all incidents
//!   objects.lock                       shared while a snapshot is written, exclusive for sweeping
//!   incident-20251222-110221/
//!     manifest.json                    the parts, with size, mode and sha256 of stored files
//!     tree/index.jsonl.gz              every path of app.dir: type, mode, hash, stat
//!     pm2/dump.pm2                     PM2's saved process list
//!     outcome.json                     how the deploy or rollback that took it ended
//!     logs/                            evidence of a failed verification
//! ```

pub mod apply;
pub mod compare;
pub mod manifest;
pub mod objects;
pub mod retention;
pub mod swap;
pub mod tree;

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{BufReader, Read};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::atomic;
use crate::exit::usage;
pub use manifest::{FileEntry, Kind, Manifest, Part, ProcessEntry};
use objects::Objects;

/// Folder name prefix of an incident.
pub const PREFIX: &str = "incident-";
const TEMP_PREFIX: &str = ".tmp-incident-";
const MANIFEST: &str = "manifest.json";
const OUTCOME: &str = "outcome.json";
const OBJECTS_LOCK: &str = "objects.lock";
/// Incidents younger than this are never pruned, whatever `backup.keep` says.
const MIN_AGE_TO_PRUNE: jiff::SignedDuration = jiff::SignedDuration::from_hours(1);

/// outcome.json: what became of the deploy or rollback that used an incident.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
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
    /// The commit (or tree fingerprint) in place before the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<crate::code::Code>,
    /// The commit (or tree fingerprint) in place after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<crate::code::Code>,
    /// What the deploy was asked to deploy (`guard deploy --ref`).
    #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
    pub git_ref: Option<String>,
    /// The release a deploy tried and put back (absent when what it tried is what runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tried: Option<crate::code::Code>,
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
    pub outcome: Option<RunRecord>,
}

impl Listed {
    /// Size of the folder itself in bytes (objects shared with others not counted).
    pub fn size(&self) -> u64 {
        dir_size(&self.dir)
    }
}

/// A checked incident: every stored file present with the size and sha256 its manifest records.
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

    /// The tree index, when the incident has a tree.
    pub fn tree_entries(&self) -> Result<Option<Vec<tree::Entry>>> {
        match self.manifest.tree() {
            Some(Part::Tree { index, .. }) => Ok(Some(tree::read_index(&self.stored(index))?)),
            _ => Ok(None),
        }
    }
}

/// The incidents of one app in a backup.dir (which other apps may share).
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
    app: String,
    /// The app's folder: an incident taken of another folder (two apps of one PM2 name
    /// sharing backup.dir) is never restored here.
    app_dir: Option<PathBuf>,
}

/// What `latest` passed over on its way to the incident it picked.
pub type Skipped = Vec<(String, String)>;

impl Store {
    /// The store of `app` in `dir`, without touching the disk.
    pub fn at(dir: &Path, app: &str) -> Store {
        Store {
            dir: dir.to_path_buf(),
            app: app.to_string(),
            app_dir: None,
        }
    }

    /// The same store, restoring only incidents taken of `app_dir`.
    pub fn of_folder(mut self, app_dir: &Path) -> Store {
        self.app_dir = Some(app_dir.to_path_buf());
        self
    }

    /// Its folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The shared object store.
    pub fn objects(&self) -> Objects {
        Objects::at(&self.dir)
    }

    /// Create the folder (0700) if needed and make sure guard can trust and write it: an
    /// existing folder must belong to this user and not be writable by others (a shared
    /// 1777 folder is refused, never chmod-ed: guard changes no folder it did not create).
    pub fn ensure(&self) -> Result<()> {
        match fs::metadata(&self.dir) {
            Ok(m) => {
                use std::os::unix::fs::MetadataExt;
                // SAFETY: geteuid has no preconditions and cannot fail.
                let me = unsafe { libc::geteuid() };
                if !m.is_dir() {
                    return Err(usage(format!(
                        "backup.dir {} is not a folder",
                        self.dir.display()
                    )));
                }
                if m.uid() != me {
                    return Err(usage(format!(
                        "backup.dir {} belongs to uid {}, not to this user (uid {me}): guard keeps incidents only where nobody else can plant one",
                        self.dir.display(),
                        m.uid()
                    )));
                }
                if m.mode() & 0o022 != 0 {
                    return Err(usage(format!(
                        "backup.dir {} is writable by other users (mode {:o}): use a folder of its own (guard creates it 0700) or `chmod go-w` it",
                        self.dir.display(),
                        m.mode() & 0o7777
                    )));
                }
            }
            Err(_) => {
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
        }
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

    fn objects_lock(&self) -> Result<File> {
        let p = self.dir.join(OBJECTS_LOCK);
        fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&p)
            .with_context(|| format!("opening {}", p.display()))
    }

    /// Remove what a run that died left behind (half-written incidents, object temporaries),
    /// unless another snapshot is being written right now (another app sharing backup.dir).
    pub fn sweep_temporaries(&self) -> Result<Vec<String>> {
        let mut removed = Vec::new();
        let lock = self.objects_lock()?;
        if lock.try_lock().is_err() {
            return Ok(removed);
        }
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
        let tmp = self.objects().dir().join("tmp");
        for t in fs::read_dir(&tmp).into_iter().flatten().flatten() {
            let _ = fs::remove_file(t.path());
        }
        Ok(removed)
    }

    /// Start a new incident in a temporary folder inside the store.
    pub fn begin(&self) -> Result<Draft> {
        let lock = self.objects_lock()?;
        lock.lock_shared()
            .with_context(|| format!("locking {}", self.dir.join(OBJECTS_LOCK).display()))?;
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
            new_objects: false,
            parts: Vec::new(),
            store: self.clone(),
            _objects_lock: lock,
        })
    }

    /// This app's incidents, newest first (and folders whose manifest cannot be read, which a
    /// person should look at): `latest`, `list` and retention never see another app's.
    pub fn list(&self) -> Result<Vec<Listed>> {
        Ok(self
            .list_all()?
            .into_iter()
            .filter(|l| !l.manifest.as_ref().is_ok_and(|m| m.app_name != self.app))
            .collect())
    }

    /// Every incident folder of every app, newest first.
    pub fn list_all(&self) -> Result<Vec<Listed>> {
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
            let outcome = read_small(&dir.join(OUTCOME))
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
    /// `latest` is the newest restorable incident that verifies: broken ones are passed over
    /// and returned, so the caller can say so.
    pub fn resolve(&self, arg: &str) -> Result<(Verified, Skipped)> {
        if arg != "latest" {
            let id = parse_id(arg)?;
            return Ok((self.verify(&id)?, Skipped::new()));
        }
        let mut skipped = Skipped::new();
        for l in self.list()? {
            match &l.manifest {
                Ok(m) if !m.kind.restorable_as_latest() => continue,
                Err(e) => {
                    skipped.push((l.id.clone(), e.clone()));
                    continue;
                }
                Ok(_) => {}
            }
            match self.verify(&l.id) {
                Ok(v) => return Ok((v, skipped)),
                Err(e) => skipped.push((l.id.clone(), format!("{e:#}"))),
            }
        }
        let why = skipped
            .iter()
            .map(|(id, e)| format!("{id}: {e}"))
            .collect::<Vec<_>>()
            .join("; ");
        Err(usage(format!(
            "no restorable incident of app {} in {}{}",
            self.app,
            self.dir.display(),
            if why.is_empty() {
                String::new()
            } else {
                format!(" (passed over: {why})")
            }
        )))
    }

    /// Check an incident: manifest readable, every stored file present, regular, of the
    /// right size and sha256, and a tree index that parses. Objects are checked by the
    /// restore, for the ones it needs, before it changes anything.
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
        if manifest.app_name != self.app {
            return Err(usage(format!(
                "incident {id} belongs to app {}, not {}: restoring it here would put another app's files in place; nothing was changed",
                manifest.app_name, self.app
            )));
        }
        let canonical = |p: &Path| fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        if let Some(here) = &self.app_dir
            && canonical(&manifest.app_dir) != canonical(here)
        {
            return Err(usage(format!(
                "incident {id} was taken of {}, not of {}: another app named {} shares {}; restoring it here would put that app's files in place; nothing was changed",
                manifest.app_dir.display(),
                here.display(),
                self.app,
                self.dir.display()
            )));
        }
        if manifest.id != id {
            return Err(usage(format!(
                "incident {id} is broken: its manifest says it is incident {}",
                manifest.id
            )));
        }
        for entry in manifest.stored_files() {
            check_entry(&dir, entry)
                .map_err(|e| usage(format!("incident {id} is broken: {e}; nothing was changed")))?;
        }
        let v = Verified { dir, manifest };
        v.tree_entries().map_err(|e| {
            usage(format!(
                "incident {id} is broken: {e:#}; nothing was changed"
            ))
        })?;
        Ok(v)
    }

    /// The stat cache for the next snapshot: the tree of the newest incident that has one.
    pub fn newest_tree_cache(&self) -> tree::Cache {
        let Ok(list) = self.list() else {
            return tree::Cache::new();
        };
        for l in list {
            let Ok(m) = &l.manifest else { continue };
            if let Some(Part::Tree { index, .. }) = m.tree() {
                let p = l.dir.join(&index.path);
                if check_entry(&l.dir, index).is_ok()
                    && let Ok(entries) = tree::read_index(&p)
                {
                    return tree::cache_from(&entries);
                }
            }
        }
        tree::Cache::new()
    }

    /// Record how the command that used incident `id` ended.
    pub fn set_outcome(&self, id: &str, outcome: &RunRecord) -> Result<()> {
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

    /// Delete objects no incident references. Skipped while another snapshot is being
    /// written, and when any incident's tree cannot be read (then nothing is deleted).
    pub fn collect_garbage(&self) -> Result<Option<(u64, u64)>> {
        let lock = self.objects_lock()?;
        if lock.try_lock().is_err() {
            return Ok(None);
        }
        let mut keep = HashSet::new();
        for l in self.list_all()? {
            let m = match &l.manifest {
                Ok(m) => m,
                Err(_) => return Ok(None),
            };
            if let Some(Part::Tree { index, .. }) = m.tree() {
                let Ok(entries) = tree::read_index(&l.dir.join(&index.path)) else {
                    return Ok(None);
                };
                for e in entries {
                    if let tree::Node::File { hash, .. } = e.node {
                        keep.insert(hash);
                    }
                }
            }
        }
        Ok(Some(self.objects().collect_garbage(&keep)?))
    }
}

/// A new incident being written; nothing is visible in the store until [`Draft::commit`].
#[derive(Debug)]
pub struct Draft {
    tmp: tempfile::TempDir,
    new_objects: bool,
    parts: Vec<Part>,
    store: Store,
    /// Held shared until the commit, so no sweep or garbage collection runs meanwhile.
    _objects_lock: File,
}

/// What the caller knows about the snapshot besides its parts.
#[derive(Debug)]
pub struct Meta {
    /// Why it is taken.
    pub kind: Kind,
    /// The reason given.
    pub reason: String,
    /// Who takes it.
    pub origin: crate::origin::Origin,
    /// PM2 app name.
    pub app_name: String,
    /// App dir.
    pub app_dir: PathBuf,
    /// The app's PM2 processes.
    pub processes: Vec<ProcessEntry>,
}

impl Draft {
    /// The store this draft goes into.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Where a stored file of this draft goes (its folders created).
    pub fn prepare(&self, rel: &str) -> Result<PathBuf> {
        let dest = self.tmp.path().join(rel);
        let parent = dest.parent().expect("stored paths have a parent");
        tree::make_dir(parent)?;
        Ok(dest)
    }

    /// Describe a file written at `rel` in this draft.
    pub fn describe(&self, rel: &str, mode: u32) -> Result<FileEntry> {
        let p = self.tmp.path().join(rel);
        let size = fs::metadata(&p)
            .with_context(|| format!("reading {}", p.display()))?
            .len();
        Ok(FileEntry {
            path: rel.to_string(),
            size,
            mode: mode & 0o7777,
            sha256: sha256_file(&p).with_context(|| format!("reading {}", p.display()))?,
        })
    }

    /// Copy a file from outside into the draft (streamed); returns its entry.
    pub fn copy_in(&self, rel: &str, src: &Path) -> Result<FileEntry> {
        let dest = self.prepare(rel)?;
        let mut input =
            objects::open_nofollow(src).with_context(|| format!("reading {}", src.display()))?;
        let mut out = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&dest)
            .with_context(|| format!("creating {}", dest.display()))?;
        std::io::copy(&mut input, &mut out)
            .with_context(|| format!("copying {}", src.display()))?;
        out.sync_all()
            .with_context(|| format!("syncing {}", dest.display()))?;
        self.describe(rel, 0o600)
    }

    /// Say that new objects were stored for this draft (they are flushed before the commit).
    pub fn stored_objects(&mut self) {
        self.new_objects = true;
    }

    /// Add a part.
    pub fn add(&mut self, part: Part) {
        self.parts.push(part);
    }

    /// Write the manifest and move the folder into place under a fresh id. Returns the id.
    pub fn commit(self, meta: Meta) -> Result<String> {
        let now = jiff::Timestamp::now();
        let base = now.strftime("%Y%m%d-%H%M%S").to_string();
        let store_dir = self.store.dir.clone();
        let tmp_path = self.tmp.path().to_path_buf();
        // New objects reach the disk before the manifest that vouches for them. The index and
        // the dump were fsynced as they were written; without new objects there is nothing
        // else of this snapshot to flush (and syncfs would flush the app's own writes too).
        if self.new_objects {
            tree::sync_fs(&store_dir);
        }
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
                format: manifest::FORMAT,
                guard_version: env!("CARGO_PKG_VERSION").to_string(),
                id: id.clone(),
                created_at: crate::origin::now_rfc3339(),
                kind: meta.kind,
                reason: meta.reason.clone(),
                origin: meta.origin.clone(),
                app_name: meta.app_name.clone(),
                app_dir: meta.app_dir.clone(),
                parts: self.parts.clone(),
                processes: meta.processes.clone(),
            };
            atomic::write(
                &tmp_path.join(MANIFEST),
                &serde_json::to_vec_pretty(&manifest)?,
                0o600,
            )?;
            for sub in ["tree", "pm2"] {
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

/// Read a small file guard wrote, refusing links and anything that is not a regular file
/// (a FIFO would hang the read).
/// A small regular file of backup.dir, never through a symlink, at most 16 MiB read.
pub fn read_small(path: &Path) -> std::io::Result<Vec<u8>> {
    let f = objects::open_nofollow(path)?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut buf = Vec::new();
    f.take(16 * 1024 * 1024).read_to_end(&mut buf)?;
    Ok(buf)
}

fn read_manifest(dir: &Path) -> Result<Manifest, String> {
    let path = dir.join(MANIFEST);
    let bytes = match read_small(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!(
                "{} is missing: the incident is incomplete or not made by guard",
                path.display()
            ));
        }
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    Manifest::parse(&bytes).map_err(|e| format!("{} {e}", path.display()))
}

fn check_entry(dir: &Path, entry: &FileEntry) -> Result<(), String> {
    manifest::check_stored_path(&entry.path)?;
    // Every folder on the way must be a real folder of the incident: a planted `files/`
    // symlink would make guard read (and restore) files from anywhere.
    let mut p = dir.to_path_buf();
    let parent = Path::new(&entry.path).parent().unwrap_or(Path::new(""));
    for c in parent.components() {
        p.push(c);
        if !fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
            return Err(format!("{} is not a real folder (a symlink?)", p.display()));
        }
    }
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
    let mut reader = BufReader::new(objects::open_nofollow(path)?);
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
mod tests;
