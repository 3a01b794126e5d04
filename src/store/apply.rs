//! Putting a snapshot's tree back: the plan (what to remove, write and chmod, worked out
//! before anything changes), its application through descriptors (contents staged and
//! checked first, then renamed into place), and comparisons of trees (the proof after a
//! restore, `guard diff`).

use std::collections::HashMap;
use std::fs::{self, File};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use rustix::fs::{Mode, OFlags};

use super::objects::{CopyError, Objects, hash_reader};
use super::swap::{self, Trash, Whole};
use super::tree::{Entry, Excludes, Found, Node, STAGING_PREFIX, StatKey, scan_noting_skipped};
use crate::beneath::Root;

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
    /// Top-level folders rebuilt whole and exchanged in one rename (their entries are in
    /// none of the lists above).
    pub whole: Vec<Whole>,
}

impl Plan {
    /// Whether the tree already matches.
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty()
            && self.write.is_empty()
            && self.chmod.is_empty()
            && self.whole.is_empty()
    }

    /// The objects the writes need, with their sizes.
    pub fn needed_objects(&self) -> impl Iterator<Item = (&str, u64)> {
        let whole = self.whole.iter().flat_map(|w| w.entries.iter());
        self.write
            .iter()
            .chain(whole)
            .filter_map(|e| match &e.node {
                Node::File { hash, size } => Some((hash.as_str(), *size)),
                _ => None,
            })
    }

    /// Entries written, those of whole rebuilt folders included.
    pub fn written_count(&self) -> usize {
        self.write.len() + self.whole.iter().map(|w| w.entries.len()).sum::<usize>()
    }
}

/// Compare the live tree with a snapshot. Live files whose stat differs from the snapshot's
/// are hashed, so content that came back identical (a reinstall) is left alone.
pub fn plan(root: &Path, excludes: &Excludes, snapshot: &[Entry]) -> Result<Plan> {
    let (live, skipped) = scan_noting_skipped(root, excludes)?;
    let beneath = Root::open(root)?;
    let mut unchanged_in: HashMap<PathBuf, u64> = HashMap::new();
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
                let now = beneath.read_link(&e.path).ok();
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
                            beneath
                                .open_file(&e.path)
                                .with_context(|| format!("reading {}", full.display()))?,
                        )
                        .with_context(|| format!("reading {}", full.display()))?;
                        &h == hash
                    };
                if same {
                    plan.unchanged += 1;
                    if let Some(top) = e.path.components().next()
                        && e.path.components().count() > 1
                    {
                        *unchanged_in
                            .entry(PathBuf::from(top.as_os_str()))
                            .or_default() += 1;
                    }
                    if live_mode != e.mode {
                        plan.chmod.push((e.path.clone(), e.mode));
                    }
                } else {
                    plan.write.push(e.clone());
                }
            }
        }
    }
    let in_snapshot: Vec<&Entry> = snapshot
        .iter()
        .filter(|e| wanted.contains_key(e.path.as_path()))
        .collect();
    let root_dev = fs::metadata(root)
        .with_context(|| format!("inspecting {}", root.display()))?
        .dev();
    super::swap::rebuild_mostly_changed(
        &mut plan,
        &live,
        &skipped,
        &in_snapshot,
        &unchanged_in,
        root_dev,
    );
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

/// What a restore did.
#[derive(Debug)]
pub struct Applied {
    /// The files it wrote, with their stat right after.
    pub written: Written,
    /// What it replaced, deleted when this is dropped: keep it until the app answers.
    pub trash: Trash,
}

/// Carry out a plan. Every file's content is first copied out of the object store into a
/// staging folder and checked against its hash; only when all are good does anything in the
/// tree change (removals, then folders, then renames into place, then whole folders
/// exchanged in one rename each, see [`swap`]). What was replaced is left in the staging
/// folder for the caller to drop once the app answers.
///
/// Everything inside `root` goes through descriptors (see [`crate::beneath`]): the staging
/// folder is created with a random name (`mkdirat` fails if it exists), checked to be guard's
/// own, and used only through its descriptor; each write opens its parent beneath `root`
/// without following a symlink on any component, and renames between the two descriptors.
pub fn apply(root: &Path, plan: &Plan, objects: &Objects) -> Result<Applied> {
    let beneath = Root::open(root)?;
    sweep_staging(root, &beneath);
    let (staging_name, staging) = make_staging(root, &beneath)?;
    // Dropped on any error below: a failed restore leaves no staging folder behind.
    let trash = Trash::new(beneath.try_clone()?, staging_name.clone());
    let shown = root.join(&staging_name);
    let t = std::time::Instant::now();
    let staged = swap::build_skeletons(&staging, &plan.whole, &shown)
        .and_then(|()| stage(root, &staging, plan, objects))
        .and_then(|staged| swap::set_modes(&staging, &plan.whole, &shown).map(|()| staged));
    tracing::debug!(took = ?t.elapsed(), "contents staged and checked");
    let written = staged.and_then(|staged| {
        let opened = open_for_writes(root, &beneath, plan)?;
        let done = put_in_place(root, &beneath, &staging, plan, &staged);
        opened.put_back();
        done
    })?;
    tracing::debug!(took = ?t.elapsed(), "contents in place");
    // Not synced here: the caller flushes while the app starts (see ops::restore), so the
    // write-back of a large restore does not delay the restart.
    Ok(Applied { written, trash })
}

/// The file guard writes into its staging folders: a folder of that name without it (or not
/// owned by guard's user) is the app's own and is never skipped or swept.
pub(crate) const STAGING_MARKER: &str = ".guard-staging";

/// Whether `name` in `root` is a staging folder guard made: the name, a real folder owned by
/// this user, holding guard's marker (owned by this user too).
pub(crate) fn is_guard_staging(root: &Path, name: &std::ffi::OsStr) -> bool {
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

/// Remove what a killed restore left (staged contents, or what it replaced and had not yet
/// deleted): guard's own staging folders only. Returns how many went.
pub(crate) fn sweep_staging(root: &Path, beneath: &Root) -> usize {
    let Ok(rd) = fs::read_dir(root) else { return 0 };
    let mut swept = 0;
    for e in rd.flatten() {
        let name = e.file_name();
        if is_guard_staging(root, &name) && crate::beneath::remove_at(beneath.fd(), &name).is_ok() {
            swept += 1;
        }
    }
    swept
}

/// [`sweep_staging`] for a caller without the folder open: every run that snapshots sweeps,
/// so a restore killed before it deleted an old `node_modules` does not keep its disk.
pub fn sweep_left_staging(root: &Path) -> Result<usize> {
    Ok(sweep_staging(root, &Root::open(root)?))
}

/// A new staging folder in `root`: a random name, created (never found), opened beneath
/// `root`, checked to be this user's real folder, marked as guard's.
pub(crate) fn make_staging(root: &Path, beneath: &Root) -> Result<(std::ffi::OsString, OwnedFd)> {
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

/// Where each file was staged (a path in the staging folder) and its stat there.
type Staged = HashMap<PathBuf, (PathBuf, StatKey)>;

/// One staging worker's part of [`Staged`].
type StagedPart = Vec<(PathBuf, (PathBuf, StatKey))>;

/// Copy the contents to write into the staging folder, checking each hash, on every core:
/// reading, hashing and writing a reinstalled node_modules is CPU work as much as I/O. Files
/// of the plan's own list get a number as their name; those of whole rebuilt folders go to
/// their place in the folder's staged copy.
pub(crate) fn stage(
    root: &Path,
    staging: &OwnedFd,
    plan: &Plan,
    objects: &Objects,
) -> Result<Staged> {
    let files: Vec<(PathBuf, &Entry)> = plan
        .write
        .iter()
        .enumerate()
        .filter(|(_, e)| matches!(e.node, Node::File { .. }))
        .map(|(n, e)| (PathBuf::from(n.to_string()), e))
        .chain(swap::staged_files(&plan.whole))
        .collect();
    let needed: u64 = files
        .iter()
        .map(|(_, e)| match e.node {
            Node::File { size, .. } => size,
            _ => 0,
        })
        .sum();
    // Twice the cores: creating 27,000 files blocks in the file system as much as it computes
    // (on 2 cores, 4 workers staged 500 MB in 2.1 s where 2 took 2.5 s).
    let workers = std::thread::available_parallelism()
        .map(|n| n.get() * 2)
        .unwrap_or(2)
        .clamp(2, 8);
    let chunk = files.len().div_ceil(workers).max(1);
    let results: Vec<Result<StagedPart>> = std::thread::scope(|scope| {
        let handles: Vec<_> = files
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    let mut done = Vec::with_capacity(part.len());
                    for (name, e) in part {
                        if let Node::File { hash, size } = &e.node {
                            let shown = root.join(&e.path);
                            let mut out = File::from(
                                crate::beneath::open_beneath(
                                    staging.as_fd(),
                                    name,
                                    OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL,
                                    Mode::from_raw_mode(e.mode),
                                )
                                .map_err(|err| staging_error(err, root, needed))?,
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
                            let stat = out
                                .metadata()
                                .map_err(|err| staging_error(err, root, needed))?;
                            done.push((e.path.clone(), (name.clone(), StatKey::of(&stat))));
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
    let wholes = plan.whole.iter().map(|w| &w.dir);
    for rel in plan
        .remove
        .iter()
        .chain(plan.write.iter().map(|e| &e.path))
        .chain(wholes)
    {
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
            // With the effective ids: those are the ones the writes will be checked with.
            rustix::fs::AtFlags::EACCESS,
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
    staged: &Staged,
) -> Result<Written> {
    let parent = |rel: &Path| {
        beneath.parent_of(rel).with_context(|| {
            format!(
                "{}: a folder on its path is not a real folder (a symlink?): refusing to write through it",
                root.join(rel).display()
            )
        })
    };
    for (i, rel) in plan.remove.iter().enumerate() {
        let (dir, name) = parent(rel)?;
        // A folder moves into the staging folder in one rename and is deleted with it once
        // the app answers; if it cannot move (another mount, no write on it), it goes now.
        let moved = crate::beneath::kind_at(dir.as_fd(), &name)
            .is_ok_and(|k| k == Some(rustix::fs::FileType::Directory))
            && rustix::fs::renameat(
                &dir,
                name.as_os_str(),
                staging,
                format!("removed-{i}").as_str(),
            )
            .is_ok();
        if !moved {
            crate::beneath::remove_at(dir.as_fd(), &name)
                .with_context(|| format!("removing {}", root.join(rel).display()))?;
        }
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
                let (tmp, _) = &staged[&e.path];
                rustix::fs::renameat(staging, tmp, &dir, name.as_os_str())
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
    swap::exchange(root, beneath, staging, &plan.whole)?;
    for w in &plan.whole {
        for e in &w.entries {
            if let Some((_, stat)) = staged.get(&e.path) {
                written.insert(e.path.clone(), *stat);
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

#[cfg(test)]
#[path = "apply_tests.rs"]
mod tests;
