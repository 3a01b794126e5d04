//! Whole-tree snapshots of the app folder: every file, folder and symlink (as a symlink) with
//! its mode, except `.git` and `backup.exclude`, recorded as an index of entries whose file
//! contents live in the object store: the entry and index format, the scan and the capture.
//! Putting a tree back is `apply.rs`; comparing trees is `compare.rs` (both re-exported here).
//!
//! Speed comes from a stat cache, as git's index does it: a file whose size, mtime, ctime and
//! inode equal those recorded in the previous snapshot is not read again. ctime cannot be set
//! by a program, so a rewrite always shows.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::objects::{Objects, hash_reader, open_nofollow, valid_hash};
pub use crate::excludes::Excludes;

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
    pub(crate) fn of(m: &fs::Metadata) -> StatKey {
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
    Ok(scan_noting_skipped(root, excludes)?.0)
}

/// [`scan`], and the paths it left out (excluded, staging, sockets, FIFOs, devices): a
/// restore must leave them where they are.
pub fn scan_noting_skipped(root: &Path, excludes: &Excludes) -> Result<(Vec<Found>, Vec<PathBuf>)> {
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    scan_into(root, Path::new(""), excludes, &mut out, &mut skipped)?;
    Ok((out, skipped))
}

fn scan_into(
    root: &Path,
    rel: &Path,
    excludes: &Excludes,
    out: &mut Vec<Found>,
    skipped: &mut Vec<PathBuf>,
) -> Result<()> {
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
        if !(ft.is_dir() || ft.is_file() || ft.is_symlink())
            || excludes.excluded(&child, ft.is_dir())
            || is_staging(root, &child)
        {
            skipped.push(child);
            continue;
        }
        let is_dir = ft.is_dir();
        out.push(Found {
            path: child.clone(),
            meta,
        });
        if is_dir {
            scan_into(root, &child, excludes, out, skipped)?;
        }
    }
    Ok(())
}

/// The folder a restore stages verified contents in, inside app.dir (same file system, so a
/// rename puts each file in place); never part of a snapshot.
pub(crate) const STAGING_PREFIX: &str = ".guard-restore-";

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
            Node::Link {
                target: beneath
                    .read_link(&f.path)
                    .with_context(|| format!("reading link {}", full.display()))?,
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
                    // Reused only if the stored copy still verifies: one flipped bit in an
                    // object must not be carried into every later snapshot. Guard holds the
                    // right bytes here, so a bad copy is replaced from them.
                    if objects.has_sized(&h, n) && objects.check(&h, n).is_ok() {
                        (h, n)
                    } else if objects.has_sized(&h, n) {
                        std::io::Seek::rewind(&mut file)
                            .with_context(|| format!("reading {}", full.display()))?;
                        let (h2, n2) = objects.store_replacing(&mut file, &full)?;
                        tracing::warn!(object = %h2, file = %full.display(), "a stored object did not verify: replaced from the app's file");
                        stats.stored += 1;
                        stats.stored_bytes += n2;
                        (h2, n2)
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

pub use super::apply::*;
pub use super::compare::*;

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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    pub(crate) fn setup() -> (tempfile::TempDir, PathBuf, Objects) {
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

    pub(crate) fn snap(
        root: &Path,
        app: &Path,
        objs: &Objects,
        ex: &Excludes,
        name: &str,
    ) -> Vec<Entry> {
        let idx = root.join(name);
        capture(app, ex, objs, &Cache::new(), &idx).unwrap();
        read_index(&idx).unwrap()
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
    fn a_rotten_object_is_replaced_when_a_snapshot_reads_the_same_bytes_again() {
        let (root, app, objs) = setup();
        let ex = Excludes::default();
        let idx1 = root.path().join("idx1");
        capture(&app, &ex, &objs, &Cache::new(), &idx1).unwrap();
        let (hash, _) = hash_reader("v1".as_bytes()).unwrap();
        // One flipped bit, same size: the cheap size check cannot see it.
        fs::write(objs.path(&hash), "w1").unwrap();
        assert!(objs.check(&hash, 2).is_err());
        // A reinstall writes the same bytes anew (new stat), so the next snapshot reads them.
        fs::remove_file(app.join("dist/index.js")).unwrap();
        fs::write(app.join("dist/index.js"), "v1").unwrap();
        let cache = cache_from(&read_index(&idx1).unwrap());
        let (_, _, s) = capture(&app, &ex, &objs, &cache, &root.path().join("idx2")).unwrap();
        assert_eq!(s.stored, 1, "the bad copy was stored again");
        objs.check(&hash, 2).unwrap();
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
