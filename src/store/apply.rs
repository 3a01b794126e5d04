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

use super::objects::{CopyError, Objects, hash_reader, open_nofollow};
use super::tree::{Entry, Excludes, Found, Node, STAGING_PREFIX, StatKey, scan};
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

/// Remove what a killed restore left: guard's own staging folders only.
pub(crate) fn sweep_staging(root: &Path, beneath: &Root) {
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

/// Copy the contents to write into the staging folder, checking each hash, on every core:
/// reading, hashing and writing a reinstalled node_modules is CPU work as much as I/O.
pub(crate) fn stage(
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

#[cfg(test)]
mod tests {
    use super::super::compare::differences;
    use super::super::tree::tests::{setup, snap};
    use super::*;
    use std::os::unix::fs::symlink;

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
}
