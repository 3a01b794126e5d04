//! Comparing trees: the live folder as entries (read, never stored), what differs between
//! two snapshots (`guard diff`), and where the folder no longer matches a snapshot (the proof
//! after a restore).

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::objects::hash_reader;
use super::tree::{Cache, Entry, Excludes, Node, StatKey, Written, plan, scan};
use crate::beneath::Root;

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
                target: beneath
                    .read_link(&f.path)
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
    use super::super::tree::cache_from;
    use super::super::tree::tests::{setup, snap};
    use super::*;
    use std::fs;

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
}
