//! `guard history`: the audit log of runs that changed something.

use anyhow::Result;
use serde::Serialize;

use super::Done;
use crate::audit::{self, Entry};
use crate::cli::HistoryArgs;
use crate::exit::Happened;
use crate::ops::Ctx;

/// `--json` data of `guard history`.
#[derive(Serialize)]
struct HistoryData<'a> {
    entries: &'a [Entry],
}

/// `guard history`: the newest entries, oldest first.
pub async fn run(ctx: &mut Ctx<'_>, args: &HistoryArgs) -> Result<Done> {
    let entries = audit::read(ctx.store.dir(), args.limit)?;
    for e in &entries {
        let mut codes =
            crate::code::change_text(e.before.as_ref(), e.after.as_ref(), e.tried.as_ref());
        if let Some(r) = &e.git_ref {
            codes.push_str(&format!("  ref {r}"));
        }
        ctx.printer.row(format!(
            "{}  {}@{}  exit {}  {}{codes}  {}{}",
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
    ctx.printer.set_data(&HistoryData { entries: &entries });
    ctx.printer.line(format!(
        "{} entr(ies) from {}",
        entries.len(),
        audit::path(ctx.store.dir()).display()
    ));
    Ok(Done::new(Happened::Done, ""))
}
