//! Reading every stored content of an incident back and checking it against its hash, and
//! repairing a bad one from the app folder when a file there still holds exactly those bytes
//! (restic's `check --read-data`, with a repair from the live tree).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Result;
use serde::Serialize;

use super::Ctx;
use crate::store::objects::hash_reader;
use crate::store::tree::Node;

/// One bad stored content.
#[derive(Debug, Clone, Serialize)]
pub struct BadContent {
    /// Its hash (its name in the store).
    pub hash: String,
    /// The paths of the snapshot that hold it.
    pub paths: Vec<PathBuf>,
    /// What is wrong with it.
    pub why: String,
    /// Stored again from the app folder.
    pub repaired: bool,
}

/// One incident, read.
#[derive(Debug, Clone, Serialize)]
pub struct Checked {
    /// The incident.
    pub id: String,
    /// Distinct contents read.
    pub contents: usize,
    /// Their bytes.
    pub bytes: u64,
    /// The manifest itself is broken (nothing else could be read).
    pub broken: Option<String>,
    /// Contents that do not match their hash, or are missing.
    pub bad: Vec<BadContent>,
}

impl Checked {
    /// Whether everything reads back as stored (or was repaired).
    pub fn ok(&self) -> bool {
        self.broken.is_none() && self.bad.iter().all(|b| b.repaired)
    }
}

/// Read every content incident `id` needs and check it.
pub fn check(ctx: &Ctx<'_>, id: &str) -> Checked {
    let mut out = Checked {
        id: id.to_string(),
        contents: 0,
        bytes: 0,
        broken: None,
        bad: Vec::new(),
    };
    let entries = match ctx.store.verify(id).and_then(|v| v.tree_entries()) {
        Ok(Some(e)) => e,
        Ok(None) => return out,
        Err(e) => {
            out.broken = Some(format!("{e:#}"));
            return out;
        }
    };
    let mut by_hash: BTreeMap<(String, u64), Vec<PathBuf>> = BTreeMap::new();
    for e in entries {
        if let Node::File { hash, size } = e.node {
            by_hash.entry((hash, size)).or_default().push(e.path);
        }
    }
    let objects = ctx.store.objects();
    for ((hash, size), paths) in by_hash {
        out.contents += 1;
        out.bytes += size;
        if let Err(e) = objects.check(&hash, size) {
            out.bad.push(BadContent {
                hash,
                paths,
                why: format!("{e:#}"),
                repaired: false,
            });
        }
    }
    out
}

/// Store each bad content again from the app folder, when a file at one of its paths still
/// holds exactly those bytes (read beneath app.dir, never through a symlink).
pub fn repair(ctx: &Ctx<'_>, checked: &mut Checked) -> Result<()> {
    let root = crate::beneath::Root::open(&ctx.settings.app.dir)?;
    let objects = ctx.store.objects();
    for bad in &mut checked.bad {
        for rel in &bad.paths {
            let Ok(mut f) = root.open_file(rel) else {
                continue;
            };
            if !f.metadata().is_ok_and(|m| m.is_file()) {
                continue;
            }
            let Ok((h, _)) = hash_reader(&mut f) else {
                continue;
            };
            if h != bad.hash {
                continue;
            }
            std::io::Seek::rewind(&mut f)?;
            let full = ctx.settings.app.dir.join(rel);
            let (stored, _) = objects.store_replacing(&mut f, &full)?;
            // What was stored hashed to the name while it was read: the object is good now.
            if stored == bad.hash {
                bad.repaired = true;
                break;
            }
        }
    }
    Ok(())
}
