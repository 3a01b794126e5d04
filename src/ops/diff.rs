//! `guard diff`: what changed between two snapshots, or a snapshot and what is in the app
//! folder now: files (with sizes), packages from package-lock.json, env *keys* (never values),
//! and the code.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::Serialize;

use super::Ctx;
use crate::code::Code;
use crate::redact::{is_env_file, parse_env};
use crate::store::tree::{self, Entry, Node, TreeDiff};

/// One side of a diff: a snapshot's tree, or the app folder now.
pub struct Side {
    /// `incident 20261202-101500` or `current`.
    pub label: String,
    /// Its entries.
    pub entries: Vec<Entry>,
    /// Its code.
    pub code: Option<Code>,
    /// Whether the entries are the live folder (files are read from it).
    live: bool,
}

impl Side {
    /// A stored incident.
    pub fn incident(ctx: &Ctx<'_>, id: &str) -> Result<Side> {
        let v = ctx.store.verify(id)?;
        Ok(Side {
            label: format!("incident {id}"),
            entries: v.tree_entries()?.unwrap_or_default(),
            code: v.manifest.fingerprint(),
            live: false,
        })
    }

    /// The app folder now; files whose stat matches `known` are not read again.
    pub async fn current(ctx: &Ctx<'_>, known: &[Entry]) -> Result<Side> {
        let entries = tree::live_entries(
            &ctx.settings.app.dir,
            &ctx.settings.backup.exclude,
            &tree::cache_from(known),
        )?;
        Ok(Side {
            label: "current".into(),
            entries,
            code: super::current_commit(ctx).await,
            live: true,
        })
    }

    /// The bytes of `rel` on this side (a small file: package-lock.json, an env file).
    fn read(&self, ctx: &Ctx<'_>, rel: &Path) -> Option<Vec<u8>> {
        let entry = self.entries.iter().find(|e| e.path == rel)?;
        let Node::File { hash, size } = &entry.node else {
            return None;
        };
        if *size > 64 * 1024 * 1024 {
            return None;
        }
        let mut file = if self.live {
            // Beneath app.dir, never through a symlink: the app's user may have swapped one in.
            crate::beneath::Root::open(&ctx.settings.app.dir)
                .ok()?
                .open_file(rel)
                .ok()?
        } else {
            crate::store::objects::open_nofollow(&ctx.store.objects().path(hash)).ok()?
        };
        if !file.metadata().is_ok_and(|m| m.is_file()) {
            return None;
        }
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::Read::take(&mut file, *size), &mut bytes).ok()?;
        Some(bytes)
    }
}

/// A package whose version differs: name, version before, version after (None: absent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PackageChange {
    /// The package path in node_modules (`express`, `a/node_modules/b`).
    pub name: String,
    /// Before.
    pub from: Option<String>,
    /// After.
    pub to: Option<String>,
}

/// Env keys added or removed in one env file (values are never read into the diff).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EnvKeys {
    /// The env file.
    pub file: PathBuf,
    /// Keys only after.
    pub added: Vec<String>,
    /// Keys only before.
    pub removed: Vec<String>,
}

/// The whole difference.
#[derive(Debug, Serialize)]
pub struct Diff {
    /// The first side.
    pub from: String,
    /// The second side.
    pub to: String,
    /// Code before and after.
    pub code: (Option<Code>, Option<Code>),
    /// Files.
    pub files: TreeDiff,
    /// Packages from package-lock.json.
    pub packages: Vec<PackageChange>,
    /// Env keys.
    pub env_keys: Vec<EnvKeys>,
}

/// Compare two sides.
pub fn compare(ctx: &Ctx<'_>, from: &Side, to: &Side) -> Diff {
    let lock = Path::new("package-lock.json");
    let versions = |side: &Side| {
        side.read(ctx, lock)
            .map(|b| lock_versions(&b))
            .unwrap_or_default()
    };
    let env_keys = ctx
        .settings
        .backup
        .files
        .iter()
        .filter(|f| is_env_file(f))
        .filter_map(|f| {
            let keys = |side: &Side| -> Vec<String> {
                side.read(ctx, f)
                    .map(|b| {
                        parse_env(&String::from_utf8_lossy(&b))
                            .into_iter()
                            .map(|(k, _)| k)
                            .collect()
                    })
                    .unwrap_or_default()
            };
            let (a, b) = (keys(from), keys(to));
            let added: Vec<String> = b.iter().filter(|k| !a.contains(k)).cloned().collect();
            let removed: Vec<String> = a.iter().filter(|k| !b.contains(k)).cloned().collect();
            (!added.is_empty() || !removed.is_empty()).then(|| EnvKeys {
                file: f.clone(),
                added,
                removed,
            })
        })
        .collect();
    Diff {
        from: from.label.clone(),
        to: to.label.clone(),
        code: (from.code.clone(), to.code.clone()),
        files: tree::diff_entries(&from.entries, &to.entries),
        packages: package_changes(&versions(from), &versions(to)),
        env_keys,
    }
}

/// name -> version from a package-lock.json (lockfile v2/v3 `packages`).
fn lock_versions(bytes: &[u8]) -> BTreeMap<String, String> {
    let Ok(doc) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return BTreeMap::new();
    };
    doc["packages"]
        .as_object()
        .map(|pkgs| {
            pkgs.iter()
                .filter_map(|(k, v)| {
                    let name = k.strip_prefix("node_modules/")?;
                    Some((name.to_string(), v["version"].as_str()?.to_string()))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Packages added, removed or at another version (pure).
fn package_changes(
    a: &BTreeMap<String, String>,
    b: &BTreeMap<String, String>,
) -> Vec<PackageChange> {
    let names: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    names
        .into_iter()
        .filter(|n| a.get(*n) != b.get(*n))
        .map(|n| PackageChange {
            name: n.clone(),
            from: a.get(n).cloned(),
            to: b.get(n).cloned(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packages_added_removed_and_bumped_come_from_the_lockfile() {
        let a = lock_versions(
            br#"{"packages":{"":{"name":"app"},"node_modules/express":{"version":"4.18.2"},"node_modules/old":{"version":"1.0.0"}}}"#,
        );
        let b = lock_versions(
            br#"{"packages":{"":{"name":"app"},"node_modules/express":{"version":"4.19.0"},"node_modules/new":{"version":"2.0.0"}}}"#,
        );
        let changes = package_changes(&a, &b);
        assert_eq!(changes.len(), 3);
        assert_eq!(changes[0].name, "express");
        assert_eq!(changes[0].to.as_deref(), Some("4.19.0"));
        assert_eq!(
            (changes[1].name.as_str(), changes[1].from.as_deref()),
            ("new", None)
        );
        assert_eq!(
            (changes[2].name.as_str(), changes[2].to.as_deref()),
            ("old", None)
        );
    }
}
