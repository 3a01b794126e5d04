//! Retention as a pure plan (restic's `ApplyPolicy`): which incidents go, and why each other
//! one stays; `Store::prune` carries it out.

use std::fs;

use anyhow::{Context, Result};

use super::{MIN_AGE_TO_PRUNE, Store, TEMP_PREFIX};

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

impl Store {
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
}
