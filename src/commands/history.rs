//! `guard list` (the incidents) and `guard history` (the audit log).

use anyhow::Result;
use serde_json::json;

use super::{Ctx, Done};
use crate::audit;
use crate::cli::HistoryArgs;
use crate::exit::ExitStatus;

/// `guard list`: incidents, newest first.
pub async fn list(ctx: &mut Ctx<'_>) -> Result<Done> {
    let incidents = ctx.store.list()?;
    let mut rows = Vec::new();
    ctx.printer.line(format!(
        "{:<20} {:<24} {:<12} {:<13} {:<14} {:>9}  reason",
        "id", "time", "kind", "commit", "outcome", "size"
    ));
    for l in &incidents {
        let size = l.size();
        let outcome = l
            .outcome
            .as_ref()
            .map(|o| o.verdict.clone())
            .unwrap_or_else(|| "-".into());
        match &l.manifest {
            Ok(m) => {
                let kind = m.kind.to_string();
                let commit = m
                    .git
                    .as_ref()
                    .map(|g| g.commit[..g.commit.len().min(12)].to_string())
                    .unwrap_or_else(|| "-".into());
                ctx.printer.line(format!(
                    "{:<20} {:<24} {:<12} {:<13} {:<14} {:>9}  {}",
                    l.id, m.created_at, kind, commit, outcome, size, m.reason
                ));
                rows.push(json!({ "id": l.id, "time": m.created_at, "kind": m.kind, "reason": m.reason,
                    "commit": m.git.as_ref().map(|g| &g.commit), "outcome": l.outcome, "size_bytes": size }));
            }
            Err(e) => {
                ctx.printer.line(format!("{:<20} BROKEN: {e}", l.id));
                rows.push(json!({ "id": l.id, "broken": e, "size_bytes": size }));
            }
        }
    }
    ctx.printer
        .set_data(json!({ "backup_dir": ctx.store.dir(), "incidents": rows }));
    Ok(Done::new(
        ExitStatus::Success,
        format!(
            "{} incident(s) in {}",
            incidents.len(),
            ctx.store.dir().display()
        ),
    ))
}

/// `guard history`: the audit log, oldest first.
pub async fn history(ctx: &mut Ctx<'_>, args: &HistoryArgs) -> Result<Done> {
    let entries = audit::read(ctx.store.dir(), args.limit)?;
    for e in &entries {
        ctx.printer.line(format!(
            "{}  {}@{}  exit {}  {}  {}{}",
            e.time,
            e.user,
            e.host,
            e.exit_code,
            e.command,
            e.reason.clone().unwrap_or_else(|| e.verdict.clone()),
            e.incident
                .as_ref()
                .map(|i| format!("  [incident {i}]"))
                .unwrap_or_default()
        ));
    }
    ctx.printer.set_data(json!({ "entries": entries }));
    Ok(Done::new(
        ExitStatus::Success,
        format!(
            "{} entr(ies) from {}",
            entries.len(),
            audit::path(ctx.store.dir()).display()
        ),
    ))
}
