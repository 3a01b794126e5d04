//! `guard diff ID [ID|current]`: what changed between two snapshots, or a snapshot and now.

use anyhow::Result;

use super::Done;
use crate::cli::DiffArgs;
use crate::exit::Happened;
use crate::ops::Ctx;
use crate::ops::diff::{self, Side};
use crate::store::manifest::human_bytes;

/// `guard diff`.
pub async fn run(ctx: &mut Ctx<'_>, args: &DiffArgs) -> Result<Done> {
    let from_id = resolve(ctx, &args.from)?;
    let from = Side::incident(ctx, &from_id)?;
    let to = match args.to.as_str() {
        "current" => Side::current(ctx, &from.entries).await?,
        other => Side::incident(ctx, &resolve(ctx, other)?)?,
    };
    let d = diff::compare(ctx, &from, &to);
    let p = &ctx.printer;
    let code =
        |c: &Option<crate::code::Code>| c.as_ref().map_or("-".into(), |c| c.short().to_string());
    p.line(format!("{} -> {}", d.from, d.to));
    p.line(format!(
        "code      {} -> {}",
        code(&d.code.0),
        code(&d.code.1)
    ));
    for (path, size) in &d.files.added {
        p.row(format!(
            "added     {} ({})",
            path.display(),
            human_bytes(*size)
        ));
    }
    for (path, size) in &d.files.removed {
        p.row(format!(
            "removed   {} ({})",
            path.display(),
            human_bytes(*size)
        ));
    }
    for (path, a, b) in &d.files.changed {
        p.row(format!(
            "changed   {} ({} -> {})",
            path.display(),
            human_bytes(*a),
            human_bytes(*b)
        ));
    }
    for c in &d.packages {
        p.row(format!(
            "package   {} {} -> {}",
            c.name,
            c.from.as_deref().unwrap_or("-"),
            c.to.as_deref().unwrap_or("-")
        ));
    }
    for e in &d.env_keys {
        p.row(format!(
            "env keys  {}: +[{}] -[{}]",
            e.file.display(),
            e.added.join(", "),
            e.removed.join(", ")
        ));
    }
    let summary = format!(
        "{} added, {} removed, {} changed file(s); {} package(s) changed",
        d.files.added.len(),
        d.files.removed.len(),
        d.files.changed.len(),
        d.packages.len()
    );
    ctx.printer.set_data(&d);
    Ok(Done::new(Happened::Done, summary))
}

/// An id, or `latest`: the newest incident of this app.
fn resolve(ctx: &Ctx<'_>, arg: &str) -> Result<String> {
    if arg == "latest" {
        return ctx
            .store
            .list()?
            .into_iter()
            .next()
            .map(|l| l.id)
            .ok_or_else(|| crate::exit::usage("no incident yet: `guard backup` takes one"));
    }
    crate::store::parse_id(arg)
}
