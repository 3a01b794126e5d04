//! `guard list`: the incidents in backup.dir, newest first.

use anyhow::Result;
use serde::Serialize;

use super::Done;
use crate::exit::Happened;
use crate::ops::Ctx;
use crate::store::{Kind, Listed, RunRecord};

/// One incident in `--json`.
#[derive(Serialize)]
struct Row {
    id: String,
    time: Option<String>,
    kind: Option<Kind>,
    reason: Option<String>,
    commit: Option<String>,
    contents: Option<String>,
    outcome: Option<RunRecord>,
    broken: Option<String>,
    size_bytes: u64,
    /// The snapshot's short code, for the human listing only.
    #[serde(skip)]
    fingerprint: Option<String>,
}

impl Row {
    /// The row of one incident folder (a broken one says why).
    fn of(l: &Listed) -> Row {
        let size_bytes = l.size();
        match &l.manifest {
            Ok(m) => Row {
                id: l.id.clone(),
                time: Some(m.created_at.clone()),
                kind: Some(m.kind),
                reason: Some(m.reason.clone()),
                commit: m.commit().map(String::from),
                contents: Some(m.contents()),
                outcome: l.outcome.clone(),
                broken: None,
                size_bytes,
                fingerprint: m.fingerprint().map(|c| c.short().to_string()),
            },
            Err(e) => Row {
                id: l.id.clone(),
                time: None,
                kind: None,
                reason: None,
                commit: None,
                contents: None,
                outcome: None,
                broken: Some(e.clone()),
                size_bytes,
                fingerprint: None,
            },
        }
    }

    /// Its line in the human listing.
    fn line(&self) -> String {
        let Some(kind) = self.kind else {
            return format!(
                "{:<20} BROKEN: {}",
                self.id,
                self.broken.as_deref().unwrap_or("")
            );
        };
        let outcome = self
            .outcome
            .as_ref()
            .map_or_else(|| "-".into(), |o| o.verdict.clone());
        let codes = self
            .outcome
            .as_ref()
            .map(|o| {
                let mut text =
                    crate::code::change_text(o.before.as_ref(), o.after.as_ref(), o.tried.as_ref());
                if let Some(r) = &o.git_ref {
                    text.push_str(&format!("  ref {r}"));
                }
                text
            })
            .unwrap_or_default();
        format!(
            "{:<20} {:<24} {:<12} {:<13} {:<14} {:>9}  {}{codes}",
            self.id,
            self.time.as_deref().unwrap_or(""),
            kind,
            self.fingerprint.as_deref().unwrap_or("-"),
            outcome,
            crate::store::manifest::human_bytes(self.size_bytes),
            self.reason.as_deref().unwrap_or("")
        )
    }
}

/// `--json` data of `guard list`.
#[derive(Serialize)]
struct ListData<'a> {
    backup_dir: &'a std::path::Path,
    incidents: Vec<Row>,
}

/// `guard list`.
pub async fn run(ctx: &mut Ctx<'_>, args: &crate::cli::IncidentsArgs) -> Result<Done> {
    let incidents = ctx.store.list()?;
    if args.ids {
        // For shell completion: what `rollback` takes, nothing measured.
        ctx.printer.line("latest");
        for l in &incidents {
            ctx.printer.line(&l.id);
        }
        return Ok(Done::new(
            Happened::Done,
            format!("{} incident(s)", incidents.len()),
        ));
    }
    ctx.printer.line(format!(
        "{:<20} {:<24} {:<12} {:<13} {:<14} {:>9}  reason",
        "id", "time", "kind", "snapshot of", "outcome", "size"
    ));
    let mut rows = Vec::new();
    for l in &incidents {
        let row = Row::of(l);
        ctx.printer.row(row.line());
        rows.push(row);
    }
    let dir = ctx.store.dir().to_path_buf();
    ctx.printer.set_data(&ListData {
        backup_dir: &dir,
        incidents: rows,
    });
    // A listing ends with its rows, not with a "success" line.
    ctx.printer.line(format!(
        "{} incident(s) in {}",
        incidents.len(),
        dir.display()
    ));
    Ok(Done::new(Happened::Done, ""))
}
