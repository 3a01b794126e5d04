//! Build artifacts: finding and removing what `clean.paths` and `clean.globs` match in the app
//! dir, never following a symlink and never leaving the app dir.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::exit::usage;
use crate::settings::Settings;

/// What an artifact is on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ArtifactKind {
    /// A regular file.
    File,
    /// A folder (removed with its contents).
    Dir,
    /// A symlink (removed as a link; its target is never touched).
    Symlink,
}

/// One artifact found in the app dir.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Artifact {
    /// Path relative to app.dir.
    pub path: PathBuf,
    /// File, folder or link.
    pub kind: ArtifactKind,
}

impl std::fmt::Display for Artifact {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.kind {
            ArtifactKind::Dir => write!(f, "{}/", self.path.display()),
            ArtifactKind::Symlink => write!(f, "{} (symlink)", self.path.display()),
            ArtifactKind::File => write!(f, "{}", self.path.display()),
        }
    }
}

/// Which clean rules apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// What counts as an artifact now (`clean`, `clean --check`, `health`, the clean after
    /// the deploy step): `clean.paths` only when `clean.after_deploy`, and `clean.globs`.
    Artifacts,
    /// Before the deploy step: everything, so a build always starts from nothing stale.
    BeforeBuild,
}

/// Find what the rules of `scope` match now. A configured path whose parent resolves outside
/// app.dir (through a symlinked folder) is a usage error.
pub fn find(settings: &Settings, scope: Scope) -> Result<Vec<Artifact>> {
    let app = &settings.app.dir;
    let app_real =
        fs::canonicalize(app).with_context(|| format!("resolving app.dir {}", app.display()))?;
    let mut found = Vec::new();
    let paths: &[PathBuf] = if scope == Scope::BeforeBuild || settings.clean.after_deploy {
        &settings.clean.paths
    } else {
        &[]
    };
    for rel in paths {
        let full = app.join(rel);
        let Ok(meta) = fs::symlink_metadata(&full) else {
            continue;
        };
        // The last component is never followed; the folders above it must stay inside app.dir.
        if let Some(parent) = full.parent() {
            let parent_real = fs::canonicalize(parent)
                .with_context(|| format!("resolving {}", parent.display()))?;
            if !parent_real.starts_with(&app_real) {
                return Err(usage(format!(
                    "clean.paths entry {} resolves outside app.dir (through {}): refusing to touch it",
                    rel.display(),
                    parent_real.display()
                )));
            }
        }
        found.push(Artifact {
            path: rel.clone(),
            kind: kind_of(&meta),
        });
    }
    if !settings.clean.globs.is_empty() {
        let entries =
            fs::read_dir(app).with_context(|| format!("reading app.dir {}", app.display()))?;
        let mut globbed = Vec::new();
        for entry in entries {
            let entry = entry.with_context(|| format!("reading app.dir {}", app.display()))?;
            let name = entry.file_name();
            let Some(name_str) = name.to_str() else {
                continue;
            };
            if !settings.clean.globs.iter().any(|g| g.matches(name_str)) {
                continue;
            }
            let meta = entry
                .file_type()
                .with_context(|| format!("inspecting {}", entry.path().display()))?;
            // Globs name files; a folder called x.tar.gz is left for a human.
            if meta.is_dir() {
                continue;
            }
            let rel = PathBuf::from(&name);
            if found.iter().any(|a: &Artifact| a.path == rel) {
                continue;
            }
            let kind = if meta.is_symlink() {
                ArtifactKind::Symlink
            } else {
                ArtifactKind::File
            };
            globbed.push(Artifact { path: rel, kind });
        }
        globbed.sort_by(|a, b| a.path.cmp(&b.path));
        found.extend(globbed);
    }
    Ok(found)
}

fn kind_of(meta: &fs::Metadata) -> ArtifactKind {
    if meta.is_symlink() {
        ArtifactKind::Symlink
    } else if meta.is_dir() {
        ArtifactKind::Dir
    } else {
        ArtifactKind::File
    }
}

/// Remove found artifacts. A symlink is unlinked, never followed; std's `remove_dir_all`
/// does not follow symlinks inside the folder either.
pub fn remove(app_dir: &Path, artifacts: &[Artifact]) -> Result<()> {
    // Through descriptors: the folder holding an artifact is opened beneath app.dir without
    // following a symlink on any component, and the artifact removed from it, a folder
    // emptied through its own descriptor. A path swapped since `find` is refused, never
    // followed out of app.dir.
    let root = crate::beneath::Root::open(app_dir)?;
    for a in artifacts {
        let full = app_dir.join(&a.path);
        let (dir, name) = root.parent_of(&a.path).with_context(|| {
            format!(
                "removing {}: a folder on its path is not a real folder (a symlink?)",
                full.display()
            )
        })?;
        crate::beneath::remove_at(std::os::fd::AsFd::as_fd(&dir), &name)
            .with_context(|| format!("removing {}", full.display()))?;
    }
    Ok(())
}

/// "dist/, app.tar.gz" for one-line output.
pub fn summary(artifacts: &[Artifact]) -> String {
    artifacts
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether a path of the app tree (relative) is an artifact the clean rules remove: inside a
/// `clean.paths` entry (when those are artifacts, `clean.after_deploy`), or a top-level file
/// matching `clean.globs`. Restores leave these out, so a rollback never brings a stale build
/// back into a restart; build outputs (`after_deploy = false`) are restored like the rest.
pub fn is_artifact(settings: &Settings, rel: &Path, is_dir: bool) -> bool {
    if settings.clean.after_deploy && settings.clean.paths.iter().any(|p| rel.starts_with(p)) {
        return true;
    }
    let top_level = rel.components().count() == 1;
    top_level
        && !is_dir
        && rel
            .to_str()
            .is_some_and(|name| settings.clean.globs.iter().any(|g| g.matches(name)))
}
