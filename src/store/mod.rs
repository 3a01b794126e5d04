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

    /// Remove the oldest incidents beyond `keep`, never one younger than an hour, never
    /// `protect`, never the newest one `latest` would pick; then free the objects no incident
    /// uses any more. Returns the ids removed.
    pub fn prune(&self, keep: usize, protect: &[&str]) -> Result<Vec<String>> {
        let list = self.list()?;
        let candidates: Vec<Candidate> = list
            .iter()
            .map(|l| Candidate {
                id: l.id.clone(),
                created_at: l
                    .manifest
                    .as_ref()
                    .ok()
                    .and_then(|m| m.created_at.parse().ok()),
                restorable: l
                    .manifest
                    .as_ref()
                    .is_ok_and(|m| m.kind.restorable_as_latest()),
                readable: l.manifest.is_ok(),
            })
            .collect();
        let plan = plan_prune(&candidates, keep, protect, jiff::Timestamp::now());
        let mut removed = Vec::new();
        for listed in list.iter().filter(|l| plan.remove.contains(&l.id)) {
            // Renamed first, so a crash half-way leaves a temporary the next sweep removes,
            // never a half-deleted incident.
            let doomed = self.dir.join(format!("{TEMP_PREFIX}pruned-{}", listed.id));
            fs::rename(&listed.dir, &doomed)
                .with_context(|| format!("removing old incident {}", listed.dir.display()))?;
            fs::remove_dir_all(&doomed)
                .with_context(|| format!("removing old incident {}", doomed.display()))?;
            removed.push(listed.id.clone());
        }
        if !removed.is_empty() {
            self.collect_garbage()?;
        }
        Ok(removed)
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

/// One incident as retention sees it.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// Its id.
    pub id: String,
    /// When it was taken (None: unreadable).
    pub created_at: Option<jiff::Timestamp>,
    /// `latest` could pick it.
    pub restorable: bool,
    /// Its manifest reads.
    pub readable: bool,
}

/// Why retention keeps an incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepReason {
    /// Among the newest `backup.keep`.
    Newest,
    /// Named to be kept (the target of the rollback in progress).
    Protected,
    /// The newest one `rollback latest` would pick.
    NewestRestorable,
    /// Younger than an hour.
    Young,
    /// Its manifest does not read: a human should look at it.
    Unreadable,
}

/// What retention does, decided before anything is removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PrunePlan {
    /// Kept, with why.
    pub keep: Vec<(String, KeepReason)>,
    /// Removed.
    pub remove: Vec<String>,
}

/// Retention as a pure plan (restic's `ApplyPolicy`): `list` newest first; the newest `keep`
/// stay, and beyond them every incident is removed unless protected, the newest restorable,
/// younger than an hour at `now`, or unreadable.
pub fn plan_prune(
    list: &[Candidate],
    keep: usize,
    protect: &[&str],
    now: jiff::Timestamp,
) -> PrunePlan {
    let newest_restorable = list.iter().find(|c| c.restorable).map(|c| c.id.as_str());
    let mut plan = PrunePlan::default();
    for (i, c) in list.iter().enumerate() {
        let why = if i < keep {
            Some(KeepReason::Newest)
        } else if protect.contains(&c.id.as_str()) {
            Some(KeepReason::Protected)
        } else if Some(c.id.as_str()) == newest_restorable {
            Some(KeepReason::NewestRestorable)
        } else if !c.readable {
            Some(KeepReason::Unreadable)
        } else if c
            .created_at
            .is_none_or(|t| now.duration_since(t) < MIN_AGE_TO_PRUNE)
        {
            Some(KeepReason::Young)
        } else {
            None
        };
        match why {
            Some(w) => plan.keep.push((c.id.clone(), w)),
            None => plan.remove.push(c.id.clone()),
        }
    }
    plan
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
fn read_small(path: &Path) -> std::io::Result<Vec<u8>> {
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
mod tests {
    use super::*;

    #[test]
    fn retention_plans_what_goes_and_why_the_rest_stays() {
        let now: jiff::Timestamp = "2026-12-02T12:00:00Z".parse().unwrap();
        let c = |id: &str, hours_ago: i64, restorable: bool| Candidate {
            id: id.into(),
            created_at: Some(now - jiff::SignedDuration::from_hours(hours_ago)),
            restorable,
            readable: true,
        };
        let list = vec![
            c("f-newest", 0, false),
            c("e", 1, false),
            c("d-young", 0, false),
            c("c-good", 5, true),
            c("b-target", 9, true),
            Candidate {
                readable: false,
                created_at: None,
                ..c("a-broken", 10, false)
            },
            c("z-old", 20, true),
        ];
        let plan = plan_prune(&list, 2, &["b-target"], now);
        assert_eq!(plan.remove, ["z-old"]);
        let why = |id: &str| plan.keep.iter().find(|(k, _)| k == id).map(|(_, w)| *w);
        assert_eq!(why("f-newest"), Some(KeepReason::Newest));
        assert_eq!(why("e"), Some(KeepReason::Newest));
        assert_eq!(why("d-young"), Some(KeepReason::Young));
        assert_eq!(why("c-good"), Some(KeepReason::NewestRestorable));
        assert_eq!(why("b-target"), Some(KeepReason::Protected));
        assert_eq!(why("a-broken"), Some(KeepReason::Unreadable));
    }
    use crate::origin::Origin;

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
        let entry = d.copy_in(manifest::PM2_DUMP, &app.join("dump")).unwrap();
        d.add(Part::Pm2Dump { file: entry });
        d.commit(Meta {
            kind,
            reason: "test".into(),
            origin: Origin::current(),
            app_name: "api".into(),
            app_dir: app.to_path_buf(),
            processes: vec![],
        })
        .unwrap()
    }

    #[test]
    fn a_committed_incident_verifies_and_tampering_is_caught() {
        let root = tempfile::tempdir().unwrap();
        let app = root.path().join("app");
        fs::create_dir(&app).unwrap();
        fs::write(app.join("dump"), "[]").unwrap();
        let store = Store::at(&root.path().join("backups"), "api");
        store.ensure().unwrap();
        let id = draft_incident(&store, &app, Kind::Manual);
        let id2 = draft_incident(&store, &app, Kind::PreRollback);
        assert_ne!(id, id2, "same second gets a suffix");
        let v = store.verify(&id).unwrap();
        let entry = v.manifest.stored_files().next().unwrap().clone();
        let stored = v.stored(&entry);
        assert_eq!(
            fs::metadata(&stored).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // latest skips the pre-rollback snapshot.
        assert_eq!(store.resolve("latest").unwrap().0.manifest.id, id);
        // Another app's store sees none of it.
        let elsewhere = Store::at(store.dir(), "api").of_folder(&root.path().join("green"));
        let err = elsewhere.verify(&id).unwrap_err().to_string();
        assert!(
            err.contains("was taken of") && err.contains("green"),
            "{err}"
        );
        assert!(
            Store::at(store.dir(), "api")
                .of_folder(&app)
                .verify(&id)
                .is_ok()
        );
        let other = Store::at(store.dir(), "worker");
        assert!(other.list().unwrap().is_empty());
        assert!(
            other
                .verify(&id)
                .unwrap_err()
                .to_string()
                .contains("belongs to app api")
        );
        fs::write(&stored, "{}").unwrap();
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

    #[test]
    fn a_stored_file_behind_a_symlinked_folder_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let outside = root.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("dump.pm2"), "[]").unwrap();
        let inc = root.path().join("incident");
        fs::create_dir(&inc).unwrap();
        std::os::unix::fs::symlink(&outside, inc.join("pm2")).unwrap();
        let entry = FileEntry {
            path: manifest::PM2_DUMP.into(),
            size: 2,
            mode: 0o600,
            sha256: sha256_file(&outside.join("dump.pm2")).unwrap(),
        };
        let err = check_entry(&inc, &entry).unwrap_err();
        assert!(err.contains("not a real folder"), "{err}");
    }

    #[test]
    fn a_fifo_manifest_is_refused_without_hanging() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("incident-20251222-110221");
        fs::create_dir(&dir).unwrap();
        let fifo = std::ffi::CString::new(dir.join(MANIFEST).to_str().unwrap()).unwrap();
        // SAFETY: mkfifo with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        let err = read_manifest(&dir).unwrap_err();
        assert!(err.contains("cannot read"), "{err}");
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
            let _ = manifest::check_stored_path(&s);
        }
    }
}
