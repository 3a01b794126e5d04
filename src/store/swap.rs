//! Whole folders put back in one rename. When a restore would rewrite most of a top-level
//! folder (a reinstalled `node_modules`), renaming 27,000 files over their old copies one by
//! one (each rename also frees the old file) costs more than copying the contents. Instead the
//! snapshot's copy of the folder is built complete in guard's staging folder and exchanged
//! with the live one in one `renameat2(RENAME_EXCHANGE)`; the old copy lands in the staging
//! folder and is deleted after the app answers (see [`Trash`]), not before it starts.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rustix::fs::{Mode, OFlags, RenameFlags};

use super::apply::Plan;
use super::tree::{Entry, Found, Node};
use crate::beneath::Root;

/// Below this many changed entries a folder is restored file by file: a rebuild copies every
/// file of the folder, which only pays when most of it changes anyway.
pub const MIN_CHANGED: u64 = 256;

/// How much of one top-level folder a restore would change.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Touched {
    /// Entries beneath it now.
    pub live: u64,
    /// Entries beneath it the plan writes, removes or chmods (a removed folder counts with
    /// everything in it).
    pub changed: u64,
    /// Something beneath it is left alone by restores (excluded, a socket, another mount).
    pub left_alone: bool,
}

/// Whether to rebuild a folder whole: at least [`MIN_CHANGED`] entries and at least half of
/// it change, and nothing inside it must stay where it is.
pub fn rebuild_whole(t: &Touched) -> bool {
    !t.left_alone && t.changed >= MIN_CHANGED && t.changed * 2 >= t.live
}

/// A top-level folder rebuilt whole from the snapshot.
#[derive(Debug, Clone)]
pub struct Whole {
    /// The folder (one component).
    pub dir: PathBuf,
    /// Its permission bits.
    pub mode: u32,
    /// The snapshot's entries beneath it, parents before children.
    pub entries: Vec<Entry>,
}

/// The top-level folder `path` lies strictly beneath, if any.
fn top_of(path: &Path) -> Option<PathBuf> {
    let mut c = path.components();
    let first = c.next()?;
    c.next()?;
    Some(PathBuf::from(first.as_os_str()))
}

/// Turn the parts of a file-by-file plan that fall in mostly-changed top-level folders into
/// whole-folder rebuilds. `unchanged_in` counts, per top-level folder, the files the plan
/// leaves as they are; `root_dev` is app.dir's device (a folder on another mount stays
/// file by file: a rename cannot cross it).
pub fn rebuild_mostly_changed(
    plan: &mut Plan,
    live: &[Found],
    skipped: &[PathBuf],
    snapshot: &[&Entry],
    unchanged_in: &HashMap<PathBuf, u64>,
    root_dev: u64,
) {
    let mut touched: HashMap<PathBuf, Touched> = HashMap::new();
    let removed: HashSet<&Path> = plan.remove.iter().map(PathBuf::as_path).collect();
    let mut live_dirs: HashSet<&Path> = HashSet::new();
    for f in live {
        if f.path.components().count() == 1 && f.meta.is_dir() {
            live_dirs.insert(&f.path);
            if f.meta.dev() != root_dev {
                touched.entry(f.path.clone()).or_default().left_alone = true;
            }
        }
        let Some(top) = top_of(&f.path) else { continue };
        let t = touched.entry(top).or_default();
        t.live += 1;
        if f.meta.dev() != root_dev {
            t.left_alone = true;
        }
        if f.path.ancestors().any(|a| removed.contains(a)) {
            t.changed += 1;
        }
    }
    for p in plan
        .write
        .iter()
        .map(|e| &e.path)
        .chain(plan.chmod.iter().map(|(p, _)| p))
    {
        if let Some(top) = top_of(p) {
            touched.entry(top).or_default().changed += 1;
        }
    }
    for p in skipped {
        if let Some(top) = top_of(p) {
            touched.entry(top).or_default().left_alone = true;
        }
    }
    let wanted_dirs: HashMap<&Path, u32> = snapshot
        .iter()
        .filter(|e| e.path.components().count() == 1 && matches!(e.node, Node::Dir))
        .map(|e| (e.path.as_path(), e.mode))
        .collect();
    let mut chosen: Vec<(PathBuf, u32)> = touched
        .iter()
        .filter(|(top, t)| {
            rebuild_whole(t)
                && live_dirs.contains(top.as_path())
                && !removed.contains(top.as_path())
        })
        .filter_map(|(top, _)| wanted_dirs.get(top.as_path()).map(|m| (top.clone(), *m)))
        .collect();
    chosen.sort();
    for (dir, mode) in chosen {
        let beneath = |p: &Path| p.starts_with(&dir);
        plan.remove.retain(|p| !beneath(p));
        plan.write.retain(|e| !beneath(&e.path));
        plan.chmod.retain(|(p, _)| !beneath(p));
        plan.unchanged -= unchanged_in.get(&dir).copied().unwrap_or(0);
        let entries = snapshot
            .iter()
            .filter(|e| e.path != dir && beneath(&e.path))
            .map(|e| (*e).clone())
            .collect();
        plan.whole.push(Whole { dir, mode, entries });
    }
}

/// The staging folder's name for the `k`th rebuilt folder.
pub fn staged_name(k: usize) -> PathBuf {
    PathBuf::from(format!("whole-{k}"))
}

/// Create the folders and links of each rebuilt folder in `staging` (files come after, in
/// parallel; folder modes last, see [`set_modes`]).
pub fn build_skeletons(staging: &OwnedFd, wholes: &[Whole], shown: &Path) -> Result<()> {
    for (k, w) in wholes.iter().enumerate() {
        let top = staged_name(k);
        rustix::fs::mkdirat(staging, &top, Mode::from_raw_mode(0o700))
            .with_context(|| format!("creating {}", shown.join(&top).display()))?;
        for e in &w.entries {
            let rel = top.join(e.path.strip_prefix(&w.dir).unwrap_or(&e.path));
            let at = || -> Result<(OwnedFd, OsString)> {
                let parent = rel.parent().unwrap_or(Path::new(""));
                let fd = crate::beneath::open_beneath(
                    staging.as_fd(),
                    parent,
                    OFlags::RDONLY | OFlags::DIRECTORY,
                    Mode::empty(),
                )
                .with_context(|| format!("opening {}", shown.join(parent).display()))?;
                Ok((fd, rel.file_name().unwrap_or_default().to_os_string()))
            };
            match &e.node {
                Node::Dir => {
                    let (fd, name) = at()?;
                    rustix::fs::mkdirat(&fd, name.as_os_str(), Mode::from_raw_mode(0o700))
                        .with_context(|| format!("creating {}", shown.join(&rel).display()))?;
                }
                Node::Link { target } => {
                    let (fd, name) = at()?;
                    rustix::fs::symlinkat(target.as_path(), &fd, name.as_os_str())
                        .with_context(|| format!("creating {}", shown.join(&rel).display()))?;
                }
                Node::File { .. } => {}
            }
        }
    }
    Ok(())
}

/// Where each file of the rebuilt folders is staged: (its path in the staging folder, entry).
pub fn staged_files(wholes: &[Whole]) -> impl Iterator<Item = (PathBuf, &Entry)> {
    wholes.iter().enumerate().flat_map(|(k, w)| {
        w.entries
            .iter()
            .filter(|e| matches!(e.node, Node::File { .. }))
            .map(move |e| {
                let rel = staged_name(k).join(e.path.strip_prefix(&w.dir).unwrap_or(&e.path));
                (rel, e)
            })
    })
}

/// Give the staged folders their modes, once everything inside them exists.
pub fn set_modes(staging: &OwnedFd, wholes: &[Whole], shown: &Path) -> Result<()> {
    for (k, w) in wholes.iter().enumerate() {
        let top = staged_name(k);
        let dirs = w
            .entries
            .iter()
            .filter(|e| matches!(e.node, Node::Dir))
            .map(|e| {
                (
                    top.join(e.path.strip_prefix(&w.dir).unwrap_or(&e.path)),
                    e.mode,
                )
            });
        for (rel, mode) in std::iter::once((top.clone(), w.mode)).chain(dirs) {
            let fd = crate::beneath::open_beneath(
                staging.as_fd(),
                &rel,
                OFlags::RDONLY | OFlags::DIRECTORY,
                Mode::empty(),
            )
            .and_then(|fd| crate::beneath::chmod_fd(fd.as_fd(), mode))
            .with_context(|| format!("setting the mode of {}", shown.join(&rel).display()));
            fd?;
        }
    }
    Ok(())
}

/// Put each staged folder in place: exchanged with the live one in one rename, so the app
/// folder never lacks it; the old copy is left in the staging folder for [`Trash`].
pub fn exchange(root: &Path, beneath: &Root, staging: &OwnedFd, wholes: &[Whole]) -> Result<()> {
    for (k, w) in wholes.iter().enumerate() {
        let staged = staged_name(k);
        let shown = root.join(&w.dir);
        let name = w.dir.as_os_str();
        let swapped =
            rustix::fs::renameat_with(staging, &staged, beneath.fd(), name, RenameFlags::EXCHANGE);
        match swapped {
            Ok(()) => {}
            // Gone meanwhile: a plain rename puts it there.
            Err(rustix::io::Errno::NOENT) => {
                rustix::fs::renameat(staging, &staged, beneath.fd(), name)
                    .with_context(|| format!("putting {} in place", shown.display()))?
            }
            // A file system without the exchange: move the old one aside first.
            Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) => {
                let old = format!("old-{k}");
                rustix::fs::renameat(beneath.fd(), name, staging, old.as_str())
                    .with_context(|| format!("moving {} aside", shown.display()))?;
                rustix::fs::renameat(staging, &staged, beneath.fd(), name)
                    .with_context(|| format!("putting {} in place", shown.display()))?;
            }
            Err(e) => {
                return Err(std::io::Error::from(e)).with_context(|| {
                    format!("exchanging {} with its restored copy", shown.display())
                });
            }
        }
    }
    Ok(())
}

/// What a restore replaced, kept in guard's staging folder until the app answers: deleting
/// 27,000 old files is not on the way to the restart. Removed when dropped; a run killed
/// before that leaves it to the next restore's sweep (the folder carries guard's marker).
#[derive(Debug)]
pub struct Trash {
    root: Option<(Root, OsString)>,
}

impl Trash {
    /// The staging folder `name` in `root`, to remove later.
    pub fn new(root: Root, name: OsString) -> Trash {
        Trash {
            root: Some((root, name)),
        }
    }

    /// Nothing to remove.
    pub fn none() -> Trash {
        Trash { root: None }
    }

    /// Remove it now.
    pub fn empty(mut self) {
        self.remove();
    }

    fn remove(&mut self) {
        if let Some((root, name)) = self.root.take() {
            let t = std::time::Instant::now();
            match crate::beneath::remove_at(root.fd(), &name) {
                Ok(()) => tracing::debug!(took = ?t.elapsed(), "replaced contents deleted"),
                // Not a failed restore: the next run that snapshots or restores sweeps it.
                Err(e) => tracing::warn!(
                    "could not delete guard's staging folder {:?} in the app folder: {e}; the next run removes it",
                    name
                ),
            }
        }
    }
}

impl Drop for Trash {
    fn drop(&mut self) {
        self.remove();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_is_rebuilt_whole_only_when_most_of_it_changes_and_nothing_in_it_stays() {
        let t = |live, changed, left_alone| Touched {
            live,
            changed,
            left_alone,
        };
        assert!(rebuild_whole(&t(27_000, 27_000, false)));
        assert!(rebuild_whole(&t(27_000, 13_500, false)));
        assert!(!rebuild_whole(&t(27_000, 13_499, false)), "less than half");
        assert!(!rebuild_whole(&t(300, 255, false)), "too few to pay");
        assert!(
            !rebuild_whole(&t(27_000, 27_000, true)),
            "an excluded cache inside"
        );
        // New files count too: a folder that grew from 10 to 1000 entries.
        assert!(rebuild_whole(&t(10, 990, false)));
    }

    use super::super::apply::{apply, plan};
    use super::super::compare::differences;
    use super::super::tree::Excludes;
    use super::super::tree::tests::{setup, snap};
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    fn packages(app: &Path, version: &str, count: usize) {
        for p in 0..count {
            let dir = app.join(format!("node_modules/p{p}"));
            fs::create_dir_all(&dir).unwrap();
            for f in 0..10 {
                fs::write(dir.join(format!("f{f}.js")), format!("{version}-{p}-{f}")).unwrap();
            }
        }
    }

    fn staging_folders(app: &Path) -> usize {
        fs::read_dir(app)
            .unwrap()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(super::super::tree::STAGING_PREFIX)
            })
            .count()
    }

    #[test]
    fn a_reinstalled_folder_is_swapped_in_whole_and_its_old_copy_goes_only_when_dropped() {
        let (root, app, objs) = setup();
        let ex = Excludes::default();
        packages(&app, "v1", 30);
        std::os::unix::fs::symlink("p0/f0.js", app.join("node_modules/main.js")).unwrap();
        fs::set_permissions(
            app.join("node_modules/p1"),
            fs::Permissions::from_mode(0o750),
        )
        .unwrap();
        let entries = snap(root.path(), &app, &objs, &ex, "idx1");
        // A deploy reinstalled other versions of everything, added a package, dropped one.
        packages(&app, "v2", 30);
        fs::create_dir_all(app.join("node_modules/p99")).unwrap();
        fs::write(app.join("node_modules/p99/new.js"), "new").unwrap();
        fs::remove_dir_all(app.join("node_modules/p29")).unwrap();
        fs::set_permissions(
            app.join("node_modules/p1"),
            fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        fs::write(app.join("dist/index.js"), "v2").unwrap();
        let p = plan(&app, &ex, &entries).unwrap();
        assert_eq!(p.whole.len(), 1, "{p:?}");
        assert_eq!(p.whole[0].dir, Path::new("node_modules"));
        assert!(p.write.iter().all(|e| !e.path.starts_with("node_modules")));
        assert!(p.remove.iter().all(|r| !r.starts_with("node_modules")));
        assert_eq!(
            p.write.iter().map(|e| e.path.clone()).collect::<Vec<_>>(),
            [PathBuf::from("dist/index.js")],
            "the rest stays file by file"
        );
        let old = fs::metadata(app.join("node_modules")).unwrap().ino();
        let applied = apply(&app, &p, &objs).unwrap();
        assert_ne!(fs::metadata(app.join("node_modules")).unwrap().ino(), old);
        assert_eq!(
            staging_folders(&app),
            1,
            "the old copy waits in guard's staging folder"
        );
        assert_eq!(
            differences(&app, &ex, &entries, &applied.written, 5)
                .unwrap()
                .1,
            0
        );
        assert_eq!(
            differences(&app, &ex, &entries, &super::super::apply::Written::new(), 5)
                .unwrap()
                .1,
            0,
            "identical when every file is read again too"
        );
        assert_eq!(
            fs::read_to_string(app.join("node_modules/p3/f2.js")).unwrap(),
            "v1-3-2"
        );
        assert!(!app.join("node_modules/p99").exists());
        assert!(app.join("node_modules/p29/f9.js").exists());
        assert!(
            fs::symlink_metadata(app.join("node_modules/main.js"))
                .unwrap()
                .is_symlink()
        );
        let mode = |p: &str| fs::metadata(app.join(p)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode("node_modules/p1"), 0o750);
        assert_eq!(fs::read_to_string(app.join("dist/index.js")).unwrap(), "v1");
        drop(applied);
        assert_eq!(staging_folders(&app), 0, "deleted once dropped");
    }

    #[test]
    fn a_folder_holding_an_excluded_cache_is_restored_file_by_file_and_the_cache_kept() {
        let (root, app, objs) = setup();
        let ex = Excludes::new(&["node_modules/.cache/".into()]).unwrap();
        packages(&app, "v1", 30);
        let entries = snap(root.path(), &app, &objs, &ex, "idx1");
        packages(&app, "v2", 30);
        fs::create_dir_all(app.join("node_modules/.cache")).unwrap();
        fs::write(app.join("node_modules/.cache/built"), "keep").unwrap();
        let p = plan(&app, &ex, &entries).unwrap();
        assert!(p.whole.is_empty(), "{:?}", p.whole);
        drop(apply(&app, &p, &objs).unwrap());
        assert_eq!(
            fs::read_to_string(app.join("node_modules/p3/f2.js")).unwrap(),
            "v1-3-2"
        );
        assert_eq!(
            fs::read_to_string(app.join("node_modules/.cache/built")).unwrap(),
            "keep"
        );
    }

    #[test]
    fn top_of_names_the_top_level_folder_strictly_above() {
        assert_eq!(
            top_of(Path::new("node_modules/a/b.js")),
            Some("node_modules".into())
        );
        assert_eq!(top_of(Path::new("node_modules")), None);
    }
}
