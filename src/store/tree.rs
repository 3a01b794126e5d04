//! Whole-tree snapshots of the app folder: every file, folder and symlink (as a symlink) with
//! its mode, except `.git` and `backup.exclude`, recorded as an index of entries whose file
//! contents live in the object store. Restore makes the folder identical to the index:
//! changed or missing files written atomically, extra paths removed (never through a symlink,
//! never an excluded path), unchanged files untouched.
//!
//! Speed comes from a stat cache, as git's index does it: a file whose size, mtime, ctime and
//! inode equal those recorded in the previous snapshot is not read again. ctime cannot be set
//! by a program, so a rewrite always shows.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::objects::{CopyError, Objects, hash_reader, open_nofollow, valid_hash};
use crate::beneath::Root;
pub use crate::excludes::Excludes;
use rustix::fs::{Mode, OFlags};
use std::os::fd::{AsFd, OwnedFd};

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// A folder.
    Dir,
    /// A regular file with its content hash and size.
    File {
        /// BLAKE3 of the content.
        hash: String,
        /// Bytes.
        size: u64,
    },
    /// A symlink and its target, never followed.
    Link {
        /// The target as written in the link.
        target: PathBuf,
    },
}

/// The stat fields that tell an unchanged file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatKey {
    /// Size.
    pub size: u64,
    /// mtime in ns.
    pub mtime: i64,
    /// ctime in ns.
    pub ctime: i64,
    /// inode.
    pub ino: u64,
}

impl StatKey {
    fn of(m: &fs::Metadata) -> StatKey {
        StatKey {
            size: m.len(),
            mtime: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
            ctime: m.ctime() * 1_000_000_000 + m.ctime_nsec(),
            ino: m.ino(),
        }
    }
}

/// One path of the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Relative to app.dir.
    pub path: PathBuf,
    /// What it is.
    pub node: Node,
    /// Permission bits (no setuid, setgid or sticky bits are ever restored).
    pub mode: u32,
    /// Stat at snapshot time (files only).
    pub stat: StatKey,
}

/// One line of the index file, as JSON.
#[derive(Serialize, Deserialize)]
struct Line {
    /// Path as UTF-8, or `px` with the bytes in hex when it is not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    p: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    px: Option<String>,
    /// d, f or l.
    t: char,
    m: u32,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    h: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    s: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    l: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    lx: Option<String>,
    #[serde(default)]
    mt: i64,
    #[serde(default)]
    ct: i64,
    #[serde(default)]
    i: u64,
}

fn os_to_fields(p: &OsStr) -> (Option<String>, Option<String>) {
    match p.to_str() {
        Some(s) => (Some(s.to_string()), None),
        None => (None, Some(hex::encode(p.as_bytes()))),
    }
}

fn fields_to_path(s: Option<String>, x: Option<String>) -> Option<PathBuf> {
    match (s, x) {
        (Some(s), None) => Some(PathBuf::from(s)),
        (None, Some(x)) => hex::decode(x)
            .ok()
            .map(|b| PathBuf::from(OsStr::from_bytes(&b))),
        _ => None,
    }
}

impl Entry {
    fn to_line(&self) -> Line {
        let (p, px) = os_to_fields(self.path.as_os_str());
        let mut line = Line {
            p,
            px,
            t: 'd',
            m: self.mode,
            h: None,
            s: None,
            l: None,
            lx: None,
            mt: self.stat.mtime,
            ct: self.stat.ctime,
            i: self.stat.ino,
        };
        match &self.node {
            Node::Dir => {}
            Node::File { hash, size } => {
                line.t = 'f';
                line.h = Some(hash.clone());
                line.s = Some(*size);
            }
            Node::Link { target } => {
                line.t = 'l';
                let (l, lx) = os_to_fields(target.as_os_str());
                line.l = l;
                line.lx = lx;
            }
        }
        line
    }

    fn from_line(line: Line) -> Result<Entry, String> {
        let path = fields_to_path(line.p, line.px).ok_or("an entry without a path")?;
        check_rel(&path)?;
        if line.m > 0o777 {
            return Err(format!(
                "{} has mode {:o}: guard never restores setuid, setgid or sticky bits",
                path.display(),
                line.m
            ));
        }
        let node = match line.t {
            'd' => Node::Dir,
            'f' => {
                let hash = line.h.ok_or("a file without a hash")?;
                if !valid_hash(&hash) {
                    return Err(format!("{} has a malformed hash", path.display()));
                }
                Node::File {
                    hash,
                    size: line.s.ok_or("a file without a size")?,
                }
            }
            'l' => Node::Link {
                target: fields_to_path(line.l, line.lx).ok_or("a link without a target")?,
            },
            other => return Err(format!("unknown entry type {other:?}")),
        };
        Ok(Entry {
            path,
            node,
            mode: line.m,
            stat: StatKey {
                size: line.s.unwrap_or(0),
                mtime: line.mt,
                ctime: line.ct,
                ino: line.i,
            },
        })
    }
}

/// A path inside the tree: relative, no `..`, nothing under a `.git` folder.
fn check_rel(p: &Path) -> Result<(), String> {
    let ok = p.components().count() > 0
        && p.components()
            .all(|c| matches!(c, Component::Normal(n) if n != ".git"));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{:?} is not a path inside the app folder that guard restores",
            p.display().to_string()
        ))
    }
}

/// A path found on disk by [`scan`].
#[derive(Debug)]
pub struct Found {
    /// Relative path.
    pub path: PathBuf,
    /// Its lstat.
    pub meta: fs::Metadata,
}

/// Every path under `root` that is not excluded, parents before children, sorted; symlinks
/// are not followed; sockets, FIFOs and devices are left out (and left alone).
pub fn scan(root: &Path, excludes: &Excludes) -> Result<Vec<Found>> {
    let mut out = Vec::new();
    scan_into(root, Path::new(""), excludes, &mut out)?;
    Ok(out)
}

fn scan_into(root: &Path, rel: &Path, excludes: &Excludes, out: &mut Vec<Found>) -> Result<()> {
    let dir = root.join(rel);
    let mut names: Vec<_> = fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("reading {}", dir.display()))?;
    names.sort();
    for name in names {
        let child = rel.join(&name);
        let full = root.join(&child);
        let meta = fs::symlink_metadata(&full)
            .with_context(|| format!("inspecting {}", full.display()))?;
        let ft = meta.file_type();
        if !(ft.is_dir() || ft.is_file() || ft.is_symlink()) {
            continue;
        }
        if excludes.excluded(&child, ft.is_dir()) || is_staging(root, &child) {
            continue;
        }
        let is_dir = ft.is_dir();
        out.push(Found {
            path: child.clone(),
            meta,
        });
        if is_dir {
            scan_into(root, &child, excludes, out)?;
        }
    }
    Ok(())
}

/// The folder a restore stages verified contents in, inside app.dir (same file system, so a
/// rename puts each file in place); never part of a snapshot.
const STAGING_PREFIX: &str = ".guard-restore-";

fn is_staging(root: &Path, rel: &Path) -> bool {
    rel.components().count() == 1 && is_guard_staging(root, rel.as_os_str())
}

/// What a capture did, for the step line and the bench.
#[derive(Debug, Default, Clone, Copy)]
pub struct CaptureStats {
    /// Entries in the index.
    pub entries: u64,
    /// Files in the tree.
    pub files: u64,
    /// Bytes of all files.
    pub bytes: u64,
    /// Files read and hashed (not known from the stat cache).
    pub hashed: u64,
    /// New objects stored.
    pub stored: u64,
    /// Bytes of the new objects.
    pub stored_bytes: u64,
}

/// The stat cache: what a previous snapshot knew about each file.
pub type Cache = HashMap<PathBuf, (StatKey, String)>;

/// Build a cache from a previous index.
pub fn cache_from(entries: &[Entry]) -> Cache {
    entries
        .iter()
        .filter_map(|e| match &e.node {
            Node::File { hash, .. } => Some((e.path.clone(), (e.stat, hash.clone()))),
            _ => None,
        })
        .collect()
}

/// Snapshot the tree at `root` into `objects`, writing the index to `index_path`. Returns the
/// sha256 of the index file and what was done.
pub fn capture(
    root: &Path,
    excludes: &Excludes,
    objects: &Objects,
    cache: &Cache,
    index_path: &Path,
) -> Result<(String, u64, CaptureStats)> {
    let found = scan(root, excludes)?;
    capture_found(root, found, objects, cache, index_path)
}

/// [`capture`] of what a scan found: whatever stands at those paths when each is read.
fn capture_found(
    root: &Path,
    found: Vec<Found>,
    objects: &Objects,
    cache: &Cache,
    index_path: &Path,
) -> Result<(String, u64, CaptureStats)> {
    // Every read goes through this descriptor, beneath it and never through a symlink: the
    // app's user may swap a folder for a link to root's files between the scan and the read.
    let beneath = crate::beneath::Root::open(root)?;
    // 0600 like every file guard writes in backup.dir: the index names every path and mode.
    let file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(index_path)
        .with_context(|| format!("creating {}", index_path.display()))?;
    // Compressed: an index line is mostly a path and a hash, and twenty incidents of a
    // 27,000-file tree would otherwise cost 100 MB of index alone.
    // Buffered before the compressor: serde_json writes a line in many tiny pieces, and the
    // compressor has a cost per call.
    let mut w = BufWriter::with_capacity(
        256 * 1024,
        flate2::write::GzEncoder::new(
            HashingWriter::new(BufWriter::new(file)),
            flate2::Compression::fast(),
        ),
    );
    let mut stats = CaptureStats::default();
    for f in found {
        let full = root.join(&f.path);
        let ft = f.meta.file_type();
        let mode = f.meta.permissions().mode() & 0o777;
        let node = if ft.is_dir() {
            Node::Dir
        } else if ft.is_symlink() {
            let (dir, name) = beneath
                .parent_of(&f.path)
                .with_context(|| format!("reading link {}", full.display()))?;
            let target = rustix::fs::readlinkat(&dir, name.as_os_str(), Vec::new())
                .with_context(|| format!("reading link {}", full.display()))?;
            Node::Link {
                target: PathBuf::from(
                    <std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(
                        target.into_bytes(),
                    ),
                ),
            }
        } else {
            let mut key = StatKey::of(&f.meta);
            let mut mode = mode;
            let known = cache
                .get(&f.path)
                .filter(|(k, h)| *k == key && objects.has_sized(h, k.size))
                .map(|(_, h)| h.clone());
            let (hash, size) = match known {
                Some(h) => (h, key.size),
                None => {
                    stats.hashed += 1;
                    let mut file = beneath.open_file(&f.path).with_context(|| {
                        format!(
                            "reading {}: it changed while guard read it (a symlink on its path is refused, never followed)",
                            full.display()
                        )
                    })?;
                    // What was opened is what is recorded: its own type, mode and stat, never
                    // those of whatever stood at that path during the scan.
                    let meta = file
                        .metadata()
                        .with_context(|| format!("reading {}", full.display()))?;
                    if !meta.is_file() {
                        bail!(
                            "{} changed while guard read it: it is no longer a regular file; refused",
                            full.display()
                        );
                    }
                    key = StatKey::of(&meta);
                    mode = meta.permissions().mode() & 0o777;
                    let (h, n) = hash_reader(&mut file)
                        .with_context(|| format!("reading {}", full.display()))?;
                    if objects.has_sized(&h, n) {
                        (h, n)
                    } else {
                        // What was copied is what is recorded, should the file change meanwhile.
                        std::io::Seek::rewind(&mut file)
                            .with_context(|| format!("reading {}", full.display()))?;
                        let (h, n) = objects.store_from(&mut file, &full)?;
                        stats.stored += 1;
                        stats.stored_bytes += n;
                        (h, n)
                    }
                }
            };
            stats.files += 1;
            stats.bytes += key.size;
            let entry = Entry {
                path: f.path,
                node: Node::File { hash, size },
                mode,
                stat: key,
            };
            write_line(&mut w, &entry, index_path)?;
            stats.entries += 1;
            continue;
        };
        let entry = Entry {
            path: f.path,
            node,
            mode,
            stat: StatKey::default(),
        };
        write_line(&mut w, &entry, index_path)?;
        stats.entries += 1;
    }
    let hashing = w
        .into_inner()
        .map_err(|e| e.into_error())
        .and_then(|gz| gz.finish())
        .with_context(|| format!("writing {}", index_path.display()))?;
    let (hash, size, inner) = hashing.finish();
    let file = inner
        .into_inner()
        .map_err(|e| e.into_error())
        .with_context(|| format!("writing {}", index_path.display()))?;
    file.sync_all()
        .with_context(|| format!("syncing {}", index_path.display()))?;
    Ok((hash, size, stats))
}

fn write_line(w: &mut impl Write, e: &Entry, path: &Path) -> Result<()> {
    serde_json::to_writer(&mut *w, &e.to_line())
        .with_context(|| format!("writing {}", path.display()))?;
    w.write_all(b"\n")
        .with_context(|| format!("writing {}", path.display()))
}

/// Computes the sha256 of what passes through, so the index is hashed as it is written.
struct HashingWriter<W> {
    inner: W,
    hasher: sha2::Sha256,
    size: u64,
}

impl<W: Write> HashingWriter<W> {
    fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: sha2::Digest::new(),
            size: 0,
        }
    }
    fn finish(self) -> (String, u64, W) {
        (
            hex::encode(sha2::Digest::finalize(self.hasher)),
            self.size,
            self.inner,
        )
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        sha2::Digest::update(&mut self.hasher, &buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Read an index file (already checked against its hash by the caller).
pub fn read_index(path: &Path) -> Result<Vec<Entry>> {
    let f = open_nofollow(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut dirs: HashSet<PathBuf> = HashSet::new();
    for (n, line) in BufReader::new(flate2::read::GzDecoder::new(f))
        .lines()
        .enumerate()
    {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        let parsed: Line = serde_json::from_str(&line)
            .with_context(|| format!("{} line {}: not an index entry", path.display(), n + 1))?;
        let entry = Entry::from_line(parsed)
            .map_err(|e| anyhow::anyhow!("{} line {}: {e}", path.display(), n + 1))?;
        if !seen.insert(entry.path.clone()) {
            bail!("{} line {}: a path listed twice", path.display(), n + 1);
        }
        // Parents come before children, each as a folder: an entry under a symlink or a file
        // (a hostile index) would stop a restore half-way, so it is refused before it starts.
        if let Some(parent) = entry.path.parent()
            && !parent.as_os_str().is_empty()
            && !dirs.contains(parent)
        {
            bail!(
                "{} line {}: {} lies under {}, which the snapshot does not hold as a folder before it",
                path.display(),
                n + 1,
                entry.path.display(),
                parent.display()
            );
        }
        if matches!(entry.node, Node::Dir) {
            dirs.insert(entry.path.clone());
        }
        out.push(entry);
    }
    Ok(out)
}

/// What a restore will do, worked out before anything changes.
#[derive(Debug, Default)]
pub struct Plan {
    /// Paths to remove first (a folder with all it holds; a link as a link).
    pub remove: Vec<PathBuf>,
    /// Entries to (re)create or rewrite, parents before children.
    pub write: Vec<Entry>,
    /// Paths whose permission bits only need setting.
    pub chmod: Vec<(PathBuf, u32)>,
    /// Files left as they are.
    pub unchanged: u64,
}

impl Plan {
    /// Whether the tree already matches.
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.write.is_empty() && self.chmod.is_empty()
    }

    /// The objects the writes need, with their sizes.
    pub fn needed_objects(&self) -> impl Iterator<Item = (&str, u64)> {
        self.write.iter().filter_map(|e| match &e.node {
            Node::File { hash, size } => Some((hash.as_str(), *size)),
            _ => None,
        })
    }
}

/// Compare the live tree with a snapshot. Live files whose stat differs from the snapshot's
/// are hashed, so content that came back identical (a reinstall) is left alone.
pub fn plan(root: &Path, excludes: &Excludes, snapshot: &[Entry]) -> Result<Plan> {
    let live = scan(root, excludes)?;
    let mut live_by: HashMap<&Path, &Found> = HashMap::with_capacity(live.len());
    for f in &live {
        live_by.insert(&f.path, f);
    }
    let wanted: HashMap<&Path, &Entry> = snapshot
        .iter()
        .filter(|e| !excluded_by_any_parent(&e.path, excludes))
        .map(|e| (e.path.as_path(), e))
        .collect();
    let mut plan = Plan::default();
    let mut removed_dirs: Vec<&Path> = Vec::new();
    for f in &live {
        if removed_dirs.iter().any(|d| f.path.starts_with(d)) {
            continue;
        }
        let ft = f.meta.file_type();
        let keep = match wanted.get(f.path.as_path()) {
            Some(e) => matches!(
                (&e.node, ft.is_dir(), ft.is_file(), ft.is_symlink()),
                (Node::Dir, true, _, _)
                    | (Node::File { .. }, _, true, _)
                    | (Node::Link { .. }, _, _, true)
            ),
            None => false,
        };
        if !keep {
            if ft.is_dir() {
                removed_dirs.push(&f.path);
            }
            plan.remove.push(f.path.clone());
        }
    }
    for e in snapshot {
        if !wanted.contains_key(e.path.as_path()) {
            continue;
        }
        let live = live_by
            .get(e.path.as_path())
            .filter(|f| !plan.remove.iter().any(|r| f.path.starts_with(r)));
        let Some(live) = live else {
            plan.write.push(e.clone());
            continue;
        };
        let live_mode = live.meta.permissions().mode() & 0o777;
        match &e.node {
            Node::Dir => {
                if live_mode != e.mode {
                    plan.chmod.push((e.path.clone(), e.mode));
                }
            }
            Node::Link { target } => {
                let now = fs::read_link(root.join(&e.path)).ok();
                if now.as_ref() != Some(target) {
                    plan.remove.push(e.path.clone());
                    plan.write.push(e.clone());
                }
            }
            Node::File { hash, size } => {
                let key = StatKey::of(&live.meta);
                // Same stat: untouched since the snapshot. Other size: changed. Else read it.
                let same = key == e.stat
                    || key.size == *size && {
                        let full = root.join(&e.path);
                        let (h, _) = hash_reader(
                            open_nofollow(&full)
                                .with_context(|| format!("reading {}", full.display()))?,
                        )
                        .with_context(|| format!("reading {}", full.display()))?;
                        &h == hash
                    };
                if same {
                    plan.unchanged += 1;
                    if live_mode != e.mode {
                        plan.chmod.push((e.path.clone(), e.mode));
                    }
                } else {
                    plan.write.push(e.clone());
                }
            }
        }
    }
    Ok(plan)
}

fn excluded_by_any_parent(path: &Path, excludes: &Excludes) -> bool {
    let mut acc = PathBuf::new();
    let n = path.components().count();
    for (i, c) in path.components().enumerate() {
        acc.push(c);
        if excludes.excluded(&acc, i + 1 < n) {
            return true;
        }
    }
    false
}

/// Stat keys of the files a restore wrote, as they are right after it: the proof after the
/// restart reads a file again only when its stat has moved since.
pub type Written = HashMap<PathBuf, StatKey>;

/// Why a restore did not start: a stored object is missing or corrupted. Nothing in app.dir
/// was changed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadObject(pub String);

/// Carry out a plan. Every file's content is first copied out of the object store into a
/// staging folder and checked against its hash; only when all are good does anything in the
/// tree change (removals, then folders, then renames into place).
///
/// Everything inside `root` goes through descriptors (see [`crate::beneath`]): the staging
/// folder is created with a random name (`mkdirat` fails if it exists), checked to be guard's
/// own, and used only through its descriptor; each write opens its parent beneath `root`
/// without following a symlink on any component, and renames between the two descriptors.
pub fn apply(root: &Path, plan: &Plan, objects: &Objects) -> Result<Written> {
    let beneath = Root::open(root)?;
    sweep_staging(root, &beneath);
    let (staging_name, staging) = make_staging(root, &beneath)?;
    let t = std::time::Instant::now();
    let staged = stage(root, &staging, plan, objects);
    tracing::debug!(took = ?t.elapsed(), "contents staged and checked");
    let result = staged.and_then(|staged| {
        let opened = open_for_writes(root, &beneath, plan)?;
        let done = put_in_place(root, &beneath, &staging, plan, &staged);
        opened.put_back();
        done
    });
    tracing::debug!(took = ?t.elapsed(), "contents in place");
    let _ = crate::beneath::remove_at(beneath.fd(), &staging_name);
    // Not synced here: the caller flushes while the app starts (see ops::restore), so the
    // write-back of a large restore does not delay the restart.
    result
}

/// The file guard writes into its staging folders: a folder of that name without it (or not
/// owned by guard's user) is the app's own and is never skipped or swept.
const STAGING_MARKER: &str = ".guard-staging";

/// Whether `name` in `root` is a staging folder guard made: the name, a real folder owned by
/// this user, holding guard's marker (owned by this user too).
fn is_guard_staging(root: &Path, name: &std::ffi::OsStr) -> bool {
    if !name.to_str().is_some_and(|n| n.starts_with(STAGING_PREFIX)) {
        return false;
    }
    let me = rustix::process::geteuid().as_raw();
    let dir = root.join(name);
    let owned = |p: &Path| fs::symlink_metadata(p).is_ok_and(|m| m.uid() == me);
    fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir())
        && owned(&dir)
        && fs::symlink_metadata(dir.join(STAGING_MARKER))
            .is_ok_and(|m| m.is_file() && m.uid() == me)
}

/// Remove what a killed restore left: guard's own staging folders only.
fn sweep_staging(root: &Path, beneath: &Root) {
    let Ok(rd) = fs::read_dir(root) else { return };
    for e in rd.flatten() {
        let name = e.file_name();
        if is_guard_staging(root, &name) {
            let _ = crate::beneath::remove_at(beneath.fd(), &name);
        }
    }
}

/// A new staging folder in `root`: a random name, created (never found), opened beneath
/// `root`, checked to be this user's real folder, marked as guard's.
fn make_staging(root: &Path, beneath: &Root) -> Result<(std::ffi::OsString, OwnedFd)> {
    let mut rnd = [0u8; 8];
    rustix::rand::getrandom(&mut rnd, rustix::rand::GetRandomFlags::empty())
        .context("reading random bytes for the staging folder's name")?;
    let name = std::ffi::OsString::from(format!(
        "{STAGING_PREFIX}{}-{}",
        std::process::id(),
        hex::encode(rnd)
    ));
    let shown = root.join(&name);
    rustix::fs::mkdirat(beneath.fd(), name.as_os_str(), Mode::from_raw_mode(0o700))
        .with_context(|| format!("creating {}", shown.display()))?;
    let fd = beneath
        .open_dir(Path::new(&name))
        .with_context(|| format!("opening {}", shown.display()))?;
    let st = rustix::fs::fstat(&fd).with_context(|| format!("inspecting {}", shown.display()))?;
    if st.st_uid != rustix::process::geteuid().as_raw() {
        bail!(
            "{} was replaced while guard created it: refusing to stage into it",
            shown.display()
        );
    }
    rustix::fs::openat(
        &fd,
        STAGING_MARKER,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .with_context(|| format!("marking {}", shown.display()))?;
    Ok((name, fd))
}

/// Copy the contents to write into the staging folder, checking each hash, on every core:
/// reading, hashing and writing a reinstalled node_modules is CPU work as much as I/O.
fn stage(
    root: &Path,
    staging: &OwnedFd,
    plan: &Plan,
    objects: &Objects,
) -> Result<HashMap<PathBuf, String>> {
    let files: Vec<(usize, &Entry)> = plan
        .write
        .iter()
        .enumerate()
        .filter(|(_, e)| matches!(e.node, Node::File { .. }))
        .collect();
    let needed: u64 = files
        .iter()
        .map(|(_, e)| match e.node {
            Node::File { size, .. } => size,
            _ => 0,
        })
        .sum();
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 8);
    let chunk = files.len().div_ceil(workers).max(1);
    let results: Vec<Result<Vec<(PathBuf, String)>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = files
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    let mut done = Vec::with_capacity(part.len());
                    for (n, e) in part {
                        if let Node::File { hash, size } = &e.node {
                            let name = n.to_string();
                            let shown = root.join(&e.path);
                            let mut out = File::from(
                                rustix::fs::openat(
                                    staging,
                                    name.as_str(),
                                    OFlags::WRONLY
                                        | OFlags::CREATE
                                        | OFlags::EXCL
                                        | OFlags::NOFOLLOW
                                        | OFlags::CLOEXEC,
                                    Mode::from_raw_mode(e.mode),
                                )
                                .map_err(|err| staging_error(err.into(), root, needed))?,
                            );
                            match objects.copy_into(hash, *size, &mut out, &shown, e.mode) {
                                Ok(()) => {}
                                Err(CopyError::Object(why)) => return Err(BadObject(why).into()),
                                Err(CopyError::Dest(err)) => {
                                    let io = err
                                        .downcast_ref::<std::io::Error>()
                                        .map(|io| io.raw_os_error());
                                    return Err(match io {
                                        Some(Some(code)) => staging_error(
                                            std::io::Error::from_raw_os_error(code),
                                            root,
                                            needed,
                                        ),
                                        _ => err,
                                    });
                                }
                            }
                            done.push((e.path.clone(), name));
                        }
                    }
                    Ok(done)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a restore worker panicked")))
            })
            .collect()
    });
    let mut staged = HashMap::with_capacity(files.len());
    for r in results {
        staged.extend(r?);
    }
    Ok(staged)
}

/// A write into the staging folder failed: a full disk says how much the restore needs and
/// where (the incident is fine); anything else names the folder.
fn staging_error(e: std::io::Error, root: &Path, needed: u64) -> anyhow::Error {
    if e.raw_os_error() == Some(libc::ENOSPC) || e.raw_os_error() == Some(libc::EDQUOT) {
        anyhow::anyhow!(
            "no space left on device while staging the restore in {}: it needs about {} free there (the incident is fine; free space and run it again); nothing was changed",
            root.display(),
            crate::store::manifest::human_bytes(needed)
        )
    } else {
        anyhow::Error::new(e).context(format!("staging the restore in {}", root.display()))
    }
}

/// Folders the plan writes into that this user could not write (a 0555 folder when guard
/// does not run as root): made writable for the time of the restore, put back after. A
/// folder this user does not own is refused before anything changes.
struct Opened {
    folders: Vec<(OwnedFd, u32)>,
}

impl Opened {
    /// Put the folders' modes back (the plan's own chmods come after).
    fn put_back(self) {
        for (fd, mode) in self.folders {
            let _ = crate::beneath::chmod_fd(fd.as_fd(), mode);
        }
    }
}

fn open_for_writes(root: &Path, beneath: &Root, plan: &Plan) -> Result<Opened> {
    let mut parents: std::collections::BTreeSet<&Path> = std::collections::BTreeSet::new();
    for rel in plan.remove.iter().chain(plan.write.iter().map(|e| &e.path)) {
        parents.insert(rel.parent().unwrap_or(Path::new("")));
    }
    let created: std::collections::HashSet<&Path> = plan
        .write
        .iter()
        .filter(|e| matches!(e.node, Node::Dir))
        .map(|e| e.path.as_path())
        .collect();
    let me = rustix::process::geteuid();
    let mut opened = Opened {
        folders: Vec::new(),
    };
    for parent in parents {
        if created.contains(parent) {
            continue;
        }
        let Ok(fd) = beneath.open_dir(parent) else {
            // Missing now: created by the plan, or refused at its write with the reason.
            continue;
        };
        if rustix::fs::accessat(
            &fd,
            ".",
            rustix::fs::Access::WRITE_OK | rustix::fs::Access::EXEC_OK,
            rustix::fs::AtFlags::empty(),
        )
        .is_ok()
        {
            continue;
        }
        let st = rustix::fs::fstat(&fd)?;
        let shown = root.join(parent);
        if st.st_uid != me.as_raw() {
            opened.put_back();
            bail!(
                "cannot write into {} (not writable by this user, and owned by another): run the restore as root or as its owner; nothing was changed",
                shown.display()
            );
        }
        let mode = st.st_mode & 0o7777;
        crate::beneath::chmod_fd(fd.as_fd(), mode | 0o700)
            .with_context(|| format!("making {} writable for the restore", shown.display()))?;
        opened.folders.push((fd, mode));
    }
    Ok(opened)
}

fn put_in_place(
    root: &Path,
    beneath: &Root,
    staging: &OwnedFd,
    plan: &Plan,
    staged: &HashMap<PathBuf, String>,
) -> Result<Written> {
    let parent = |rel: &Path| {
        beneath.parent_of(rel).with_context(|| {
            format!(
                "{}: a folder on its path is not a real folder (a symlink?): refusing to write through it",
                root.join(rel).display()
            )
        })
    };
    for rel in &plan.remove {
        let (dir, name) = parent(rel)?;
        crate::beneath::remove_at(dir.as_fd(), &name)
            .with_context(|| format!("removing {}", root.join(rel).display()))?;
    }
    let mut dir_modes = Vec::new();
    let mut written = Written::new();
    for e in &plan.write {
        let full = root.join(&e.path);
        let (dir, name) = parent(&e.path)?;
        match &e.node {
            Node::Dir => {
                rustix::fs::mkdirat(&dir, name.as_os_str(), Mode::from_raw_mode(0o700))
                    .with_context(|| format!("creating {}", full.display()))?;
                dir_modes.push((e.path.clone(), e.mode));
            }
            Node::File { .. } => {
                let tmp = &staged[&e.path];
                rustix::fs::renameat(staging, tmp.as_str(), &dir, name.as_os_str())
                    .with_context(|| format!("replacing {}", full.display()))?;
                if let Ok(fd) = rustix::fs::openat(
                    &dir,
                    name.as_os_str(),
                    OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                ) && let Ok(m) = File::from(fd).metadata()
                {
                    written.insert(e.path.clone(), StatKey::of(&m));
                }
            }
            Node::Link { target } => {
                let tmp = format!(".guard-restore-link-{}", std::process::id());
                let _ = rustix::fs::unlinkat(&dir, tmp.as_str(), rustix::fs::AtFlags::empty());
                rustix::fs::symlinkat(target.as_path(), &dir, tmp.as_str())
                    .with_context(|| format!("creating link {}", full.display()))?;
                rustix::fs::renameat(&dir, tmp.as_str(), &dir, name.as_os_str())
                    .with_context(|| format!("replacing {}", full.display()))?;
            }
        }
    }
    // Folder modes last, so a read-only folder does not block the writes inside it. Opened
    // O_PATH without following, so a symlink is seen as one and skipped, never chmod-ed
    // through; the mode is set through /proc/self/fd (the very inode opened).
    for (rel, mode) in plan.chmod.iter().chain(dir_modes.iter()) {
        let full = root.join(rel);
        let fd = beneath
            .open_at(rel, OFlags::PATH, Mode::empty())
            .with_context(|| {
                format!(
                    "setting the mode of {}: a symlink on its path?",
                    full.display()
                )
            })?;
        let file = File::from(fd);
        let m = file
            .metadata()
            .with_context(|| format!("inspecting {}", full.display()))?;
        if m.file_type().is_symlink() {
            continue;
        }
        let proc_path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&file));
        fs::set_permissions(&proc_path, fs::Permissions::from_mode(*mode))
            .with_context(|| format!("setting the mode of {}", full.display()))?;
        if m.is_file()
            && let Ok(m) = file.metadata()
        {
            written.insert(rel.clone(), StatKey::of(&m));
        }
    }
    Ok(written)
}

/// Flush everything written on the file system of `path` to disk, once (syncfs(2): cheaper
/// than an fsync per file when thousands were written).
pub fn sync_fs(path: &Path) {
    if let Ok(f) = fs::File::open(path) {
        // SAFETY: syncfs takes a valid open descriptor, which `f` holds for the call.
        unsafe {
            libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&f));
        }
    }
}

/// Create a folder for an index (0700).
pub fn make_dir(p: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(p)
        .with_context(|| format!("creating {}", p.display()))
}

/// The live tree as index entries, without storing anything: a file whose stat matches
/// `cache` keeps its known hash, any other is read (beneath `root`, never through a symlink)
/// and hashed. For comparing what runs with a snapshot.
pub fn live_entries(root: &Path, excludes: &Excludes, cache: &Cache) -> Result<Vec<Entry>> {
    let beneath = Root::open(root)?;
    let mut out = Vec::new();
    for f in scan(root, excludes)? {
        let full = root.join(&f.path);
        let ft = f.meta.file_type();
        let mode = f.meta.permissions().mode() & 0o777;
        let key = StatKey::of(&f.meta);
        let node = if ft.is_dir() {
            Node::Dir
        } else if ft.is_symlink() {
            Node::Link {
                target: fs::read_link(&full)
                    .with_context(|| format!("reading link {}", full.display()))?,
            }
        } else {
            let hash = match cache.get(&f.path).filter(|(k, _)| *k == key) {
                Some((_, h)) => h.clone(),
                None => {
                    let file = beneath
                        .open_file(&f.path)
                        .with_context(|| format!("reading {}", full.display()))?;
                    hash_reader(file)
                        .with_context(|| format!("reading {}", full.display()))?
                        .0
                }
            };
            Node::File {
                hash,
                size: key.size,
            }
        };
        out.push(Entry {
            path: f.path,
            node,
            mode,
            stat: key,
        });
    }
    Ok(out)
}

/// How two trees differ, file by file (folders are implied by their files).
#[derive(Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct TreeDiff {
    /// In the second, not the first: path and size.
    pub added: Vec<(PathBuf, u64)>,
    /// In the first, not the second.
    pub removed: Vec<(PathBuf, u64)>,
    /// In both, with other contents (or another kind): path, size before, size after.
    pub changed: Vec<(PathBuf, u64, u64)>,
}

/// The files and links that differ between two snapshots' entries (pure).
pub fn diff_entries(from: &[Entry], to: &[Entry]) -> TreeDiff {
    let size = |n: &Node| match n {
        Node::File { size, .. } => *size,
        _ => 0,
    };
    let leaf = |e: &&Entry| !matches!(e.node, Node::Dir);
    let a: HashMap<&Path, &Node> = from
        .iter()
        .filter(leaf)
        .map(|e| (e.path.as_path(), &e.node))
        .collect();
    let b: HashMap<&Path, &Node> = to
        .iter()
        .filter(leaf)
        .map(|e| (e.path.as_path(), &e.node))
        .collect();
    let mut d = TreeDiff::default();
    for (p, n) in &b {
        match a.get(p) {
            None => d.added.push((p.to_path_buf(), size(n))),
            Some(old) if old != n => d.changed.push((p.to_path_buf(), size(old), size(n))),
            _ => {}
        }
    }
    for (p, n) in &a {
        if !b.contains_key(p) {
            d.removed.push((p.to_path_buf(), size(n)));
        }
    }
    d.added.sort();
    d.removed.sort();
    d.changed.sort();
    d
}

/// Paths where the live tree differs from a snapshot (at most `limit` named), and how many.
pub fn differences(
    root: &Path,
    excludes: &Excludes,
    snapshot: &[Entry],
    written: &Written,
    limit: usize,
) -> Result<(Vec<String>, usize)> {
    // A file the restore wrote is compared with its stat right after the restore.
    let expected: Vec<Entry> = snapshot
        .iter()
        .map(|e| match written.get(&e.path) {
            Some(k) => Entry {
                stat: *k,
                ..e.clone()
            },
            None => e.clone(),
        })
        .collect();
    let p = plan(root, excludes, &expected)?;
    let mut paths: Vec<String> = p
        .remove
        .iter()
        .chain(p.write.iter().map(|e| &e.path))
        .chain(p.chmod.iter().map(|(p, _)| p))
        .map(|p| p.display().to_string())
        .collect();
    paths.sort();
    paths.dedup();
    let count = paths.len();
    paths.truncate(limit);
    Ok((paths, count))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn setup() -> (tempfile::TempDir, PathBuf, Objects) {
        let root = tempfile::tempdir().unwrap();
        let app = root.path().join("app");
        fs::create_dir_all(app.join("dist/sub")).unwrap();
        fs::create_dir_all(app.join("node_modules/a")).unwrap();
        fs::create_dir_all(app.join(".git")).unwrap();
        fs::write(app.join(".git/HEAD"), "ref").unwrap();
        fs::write(app.join("dist/index.js"), "v1").unwrap();
        fs::write(app.join("dist/sub/x.js"), "x1").unwrap();
        fs::write(app.join("node_modules/a/index.js"), "a").unwrap();
        fs::write(app.join("env.real"), "SECRET=1").unwrap();
        symlink("env.real", app.join("env.env")).unwrap();
        fs::write(app.join("run.sh"), "#!/bin/sh").unwrap();
        fs::set_permissions(app.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::create_dir_all(app.join("logs")).unwrap();
        fs::write(app.join("logs/app.log"), "keep me").unwrap();
        let objs = Objects::at(&root.path().join("store"));
        (root, app, objs)
    }

    fn snap(root: &Path, app: &Path, objs: &Objects, ex: &Excludes, name: &str) -> Vec<Entry> {
        let idx = root.join(name);
        capture(app, ex, objs, &Cache::new(), &idx).unwrap();
        read_index(&idx).unwrap()
    }

    #[test]
    fn restore_makes_the_tree_identical_and_leaves_excluded_and_git_alone() {
        let (root, app, objs) = setup();
        let ex = Excludes::new(&["logs/".into()]).unwrap();
        let entries = snap(root.path(), &app, &objs, &ex, "idx1");
        assert!(entries.iter().all(|e| !e.path.starts_with(".git")));
        assert!(entries.iter().all(|e| !e.path.starts_with("logs")));
        // A deploy: new build, a new dependency, a removed file, a replaced link, new logs.
        fs::write(app.join("dist/index.js"), "v2 broken").unwrap();
        fs::remove_file(app.join("dist/sub/x.js")).unwrap();
        fs::create_dir_all(app.join("node_modules/b")).unwrap();
        fs::write(app.join("node_modules/b/index.js"), "b").unwrap();
        fs::remove_file(app.join("env.env")).unwrap();
        fs::write(app.join("env.env"), "plain copy").unwrap();
        fs::set_permissions(app.join("run.sh"), fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(app.join("logs/app.log"), "newer log").unwrap();
        fs::write(app.join(".git/HEAD"), "moved").unwrap();
        let p = plan(&app, &ex, &entries).unwrap();
        assert!(!p.is_empty());
        apply(&app, &p, &objs).unwrap();
        assert!(
            fs::read_dir(&app)
                .unwrap()
                .flatten()
                .all(|e| !e.file_name().to_string_lossy().starts_with(STAGING_PREFIX)),
            "no staging folder left"
        );
        assert_eq!(fs::read_to_string(app.join("dist/index.js")).unwrap(), "v1");
        assert_eq!(fs::read_to_string(app.join("dist/sub/x.js")).unwrap(), "x1");
        assert!(!app.join("node_modules/b").exists());
        assert!(
            fs::symlink_metadata(app.join("env.env"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(
            fs::metadata(app.join("run.sh"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o755
        );
        assert_eq!(
            fs::read_to_string(app.join("logs/app.log")).unwrap(),
            "newer log"
        );
        assert_eq!(fs::read_to_string(app.join(".git/HEAD")).unwrap(), "moved");
        assert_eq!(
            differences(&app, &ex, &entries, &Written::new(), 5)
                .unwrap()
                .1,
            0
        );
        // A file changed after the restore is named.
        fs::write(app.join("dist/index.js"), "v3").unwrap();
        let (paths, n) = differences(&app, &ex, &entries, &Written::new(), 5).unwrap();
        assert_eq!((paths, n), (vec!["dist/index.js".to_string()], 1));
    }

    #[test]
    fn identical_content_with_new_stat_is_left_untouched() {
        let (root, app, objs) = setup();
        let ex = Excludes::default();
        let entries = snap(root.path(), &app, &objs, &ex, "idx1");
        // A reinstall: same bytes, new inode and times.
        let f = app.join("node_modules/a/index.js");
        fs::remove_file(&f).unwrap();
        fs::write(&f, "a").unwrap();
        let p = plan(&app, &ex, &entries).unwrap();
        assert!(p.is_empty(), "{p:?}");
    }

    #[test]
    fn the_stat_cache_skips_unchanged_files_and_dedups_content() {
        let (root, app, objs) = setup();
        let ex = Excludes::default();
        let idx1 = root.path().join("idx1");
        let (_, _, s1) = capture(&app, &ex, &objs, &Cache::new(), &idx1).unwrap();
        assert_eq!(s1.hashed, s1.files);
        let cache = cache_from(&read_index(&idx1).unwrap());
        let (_, _, s2) = capture(&app, &ex, &objs, &cache, &root.path().join("idx2")).unwrap();
        assert_eq!(s2.hashed, 0, "nothing changed, nothing read");
        assert_eq!(s2.stored, 0);
        fs::write(app.join("dist/index.js"), "v2").unwrap();
        let (_, _, s3) = capture(&app, &ex, &objs, &cache, &root.path().join("idx3")).unwrap();
        assert_eq!((s3.hashed, s3.stored), (1, 1));
    }

    #[test]
    fn a_symlinked_folder_is_never_written_through() {
        let (root, app, objs) = setup();
        let ex = Excludes::default();
        let entries = snap(root.path(), &app, &objs, &ex, "idx1");
        let outside = root.path().join("outside");
        fs::create_dir_all(&outside).unwrap();
        fs::remove_dir_all(app.join("dist")).unwrap();
        symlink(&outside, app.join("dist")).unwrap();
        let p = plan(&app, &ex, &entries).unwrap();
        apply(&app, &p, &objs).unwrap();
        assert!(
            fs::read_dir(&outside).unwrap().next().is_none(),
            "nothing written outside"
        );
        assert!(
            app.join("dist").is_dir()
                && !fs::symlink_metadata(app.join("dist"))
                    .unwrap()
                    .file_type()
                    .is_symlink()
        );
        assert_eq!(fs::read_to_string(app.join("dist/index.js")).unwrap(), "v1");
    }

    #[test]
    fn a_folder_swapped_for_a_symlink_between_scan_and_read_is_refused_never_followed() {
        let (root, app, objs) = setup();
        let secret = root.path().join("root-only");
        fs::create_dir_all(&secret).unwrap();
        fs::write(secret.join("x.js"), "root's secret").unwrap();
        let found = scan(&app, &Excludes::default()).unwrap();
        // The app's user swaps dist/sub (holding x.js) for a link to root's folder.
        fs::rename(app.join("dist/sub"), root.path().join("moved")).unwrap();
        symlink(&secret, app.join("dist/sub")).unwrap();
        let err =
            capture_found(&app, found, &objs, &Cache::new(), &root.path().join("idx")).unwrap_err();
        assert!(format!("{err:#}").contains("dist/sub/x.js"), "{err:#}");
        let (hash, _) = hash_reader("root's secret".as_bytes()).unwrap();
        assert!(!objs.has(&hash), "root's file never reached the store");
    }

    #[test]
    fn a_folder_swapped_for_a_symlink_after_the_plan_is_never_written_through() {
        let (root, app, objs) = setup();
        let ex = Excludes::default();
        let entries = snap(root.path(), &app, &objs, &ex, "idx1");
        fs::write(app.join("dist/index.js"), "v2").unwrap();
        let p = plan(&app, &ex, &entries).unwrap();
        let outside = root.path().join("cron.d");
        fs::create_dir_all(&outside).unwrap();
        fs::rename(app.join("dist"), root.path().join("old-dist")).unwrap();
        symlink(&outside, app.join("dist")).unwrap();
        assert!(apply(&app, &p, &objs).is_err());
        assert!(
            fs::read_dir(&outside).unwrap().next().is_none(),
            "nothing written outside"
        );
    }

    #[test]
    fn the_staging_folder_is_used_through_its_descriptor_even_when_its_name_is_swapped() {
        let (root, app, objs) = setup();
        let ex = Excludes::default();
        let entries = snap(root.path(), &app, &objs, &ex, "idx1");
        fs::write(app.join("dist/index.js"), "v2").unwrap();
        let p = plan(&app, &ex, &entries).unwrap();
        let beneath = Root::open(&app).unwrap();
        let (name, fd) = make_staging(&app, &beneath).unwrap();
        assert!(is_guard_staging(&app, &name));
        let outside = root.path().join("cron.d");
        fs::create_dir_all(&outside).unwrap();
        fs::rename(app.join(&name), root.path().join("elsewhere")).unwrap();
        symlink(&outside, app.join(&name)).unwrap();
        let staged = stage(&app, &fd, &p, &objs).unwrap();
        assert!(!staged.is_empty());
        assert!(
            fs::read_dir(&outside).unwrap().next().is_none(),
            "nothing written outside"
        );
    }

    #[test]
    fn an_apps_own_folder_named_like_guards_staging_is_kept_and_snapshotted() {
        let (root, app, objs) = setup();
        fs::create_dir_all(app.join(".guard-restore-notes")).unwrap();
        fs::write(app.join(".guard-restore-notes/todo.txt"), "mine").unwrap();
        let ex = Excludes::default();
        let entries = snap(root.path(), &app, &objs, &ex, "idx1");
        assert!(
            entries
                .iter()
                .any(|e| e.path == Path::new(".guard-restore-notes/todo.txt"))
        );
        fs::write(app.join("dist/index.js"), "v2").unwrap();
        let p = plan(&app, &ex, &entries).unwrap();
        apply(&app, &p, &objs).unwrap();
        assert_eq!(
            fs::read_to_string(app.join(".guard-restore-notes/todo.txt")).unwrap(),
            "mine"
        );
        // guard's own leftovers (marked) are swept and never snapshotted.
        let beneath = Root::open(&app).unwrap();
        let (left, _fd) = make_staging(&app, &beneath).unwrap();
        let entries = snap(root.path(), &app, &objs, &ex, "idx2");
        assert!(entries.iter().all(|e| !e.path.starts_with(&left)));
        let p = plan(&app, &ex, &entries).unwrap();
        apply(&app, &p, &objs).unwrap();
        assert!(
            !app.join(&left).exists(),
            "a killed restore's staging folder is swept"
        );
    }

    #[test]
    fn two_trees_differ_by_added_removed_and_changed_files() {
        let (root, app, objs) = setup();
        let ex = Excludes::default();
        let a = snap(root.path(), &app, &objs, &ex, "idx1");
        fs::write(app.join("dist/index.js"), "v2 longer").unwrap();
        fs::remove_file(app.join("run.sh")).unwrap();
        fs::write(app.join("new.txt"), "n").unwrap();
        let live = live_entries(&app, &ex, &cache_from(&a)).unwrap();
        let d = diff_entries(&a, &live);
        assert_eq!(d.added, [(PathBuf::from("new.txt"), 1)]);
        assert_eq!(d.removed, [(PathBuf::from("run.sh"), 9)]);
        assert_eq!(d.changed, [(PathBuf::from("dist/index.js"), 2, 9)]);
        assert_eq!(diff_entries(&a, &a), TreeDiff::default());
    }

    #[test]
    fn a_corrupted_object_stops_the_restore_before_anything_changes() {
        let (root, app, objs) = setup();
        let ex = Excludes::default();
        let entries = snap(root.path(), &app, &objs, &ex, "idx1");
        fs::write(app.join("dist/index.js"), "v2").unwrap();
        fs::write(app.join("dist/sub/x.js"), "x2").unwrap();
        let hash = entries
            .iter()
            .find_map(|e| match (&e.node, e.path == Path::new("dist/sub/x.js")) {
                (Node::File { hash, .. }, true) => Some(hash.clone()),
                _ => None,
            })
            .unwrap();
        fs::write(objs.path(&hash), "zz").unwrap();
        let p = plan(&app, &ex, &entries).unwrap();
        let err = apply(&app, &p, &objs).unwrap_err();
        assert!(err.downcast_ref::<BadObject>().is_some(), "{err:#}");
        assert_eq!(fs::read_to_string(app.join("dist/index.js")).unwrap(), "v2");
        assert_eq!(fs::read_to_string(app.join("dist/sub/x.js")).unwrap(), "x2");
    }

    #[test]
    fn hostile_index_lines_are_refused() {
        for line in [
            r#"{"p":"../x","t":"d","m":493}"#,
            r#"{"p":"/etc/x","t":"d","m":493}"#,
            r#"{"p":".git/hooks/post-merge","t":"f","m":493,"h":"00","s":1}"#,
            r#"{"p":"a","t":"f","m":3583,"h":"0000000000000000000000000000000000000000000000000000000000000000","s":1}"#,
            r#"{"p":"a","t":"q","m":420}"#,
        ] {
            let parsed: Line = serde_json::from_str(line).unwrap();
            assert!(Entry::from_line(parsed).is_err(), "{line}");
        }
    }

    #[test]
    fn an_index_with_a_child_under_a_link_or_a_file_is_refused_before_a_restore() {
        let dir = tempfile::tempdir().unwrap();
        let h = "0000000000000000000000000000000000000000000000000000000000000000";
        for (name, lines) in [
            (
                "under-link",
                vec![
                    r#"{"p":"dist","t":"l","m":511,"l":"/etc"}"#.to_string(),
                    format!(r#"{{"p":"dist/cron","t":"f","m":420,"h":"{h}","s":1}}"#),
                ],
            ),
            (
                "under-file",
                vec![
                    format!(r#"{{"p":"a","t":"f","m":420,"h":"{h}","s":1}}"#),
                    format!(r#"{{"p":"a/b","t":"f","m":420,"h":"{h}","s":1}}"#),
                ],
            ),
        ] {
            let p = dir.path().join(name);
            let mut gz = flate2::write::GzEncoder::new(
                fs::File::create(&p).unwrap(),
                flate2::Compression::fast(),
            );
            gz.write_all((lines.join("\n") + "\n").as_bytes()).unwrap();
            gz.finish().unwrap();
            let err = read_index(&p).unwrap_err();
            assert!(
                format!("{err:#}").contains("does not hold as a folder"),
                "{err:#}"
            );
        }
    }

    #[test]
    fn exclude_patterns_follow_gitignore_shapes() {
        let ex = Excludes::new(&[
            "logs/".into(),
            "*.log".into(),
            "/uploads".into(),
            "cache/tmp".into(),
        ])
        .unwrap();
        assert!(ex.excluded(Path::new("logs"), true));
        assert!(!ex.excluded(Path::new("logs"), false));
        assert!(ex.excluded(Path::new("a/b/x.log"), false));
        assert!(ex.excluded(Path::new("uploads"), true));
        assert!(!ex.excluded(Path::new("a/uploads"), true));
        assert!(ex.excluded(Path::new("cache/tmp"), true));
        assert!(ex.excluded(Path::new("x/.git"), true));
        assert!(Excludes::new(&["../x".into()]).is_err());
        assert!(Excludes::new(&["/".into()]).is_err());
    }
}
