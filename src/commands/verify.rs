//! `guard verify [ID|latest|--all] [--repair]`: read every stored content of the incidents
//! and check it against its hash; with `--repair`, store a bad one again from the app folder.

use std::time::Instant;

use anyhow::Result;
use serde::Serialize;

use super::Done;
use crate::cli::VerifyArgs;
use crate::exit::Happened;
use crate::ops::Ctx;
use crate::ops::integrity::{self, Checked};
use crate::output::{StepName, StepState};
use crate::store;

/// `--json` data of `guard verify`.
#[derive(Serialize)]
struct VerifyData<'a> {
    incidents: &'a [Checked],
}

/// `guard verify`.
pub async fn run(ctx: &mut Ctx<'_>, args: &VerifyArgs) -> Result<Done> {
    let ids: Vec<String> = if args.all {
        ctx.store.list()?.into_iter().map(|l| l.id).collect()
    } else {
        match args.id.as_deref().unwrap_or("latest") {
            "latest" => match ctx.store.list()?.into_iter().next() {
                Some(l) => vec![l.id],
                None => Vec::new(),
            },
            id => vec![store::parse_id(id)?],
        }
    };
    let mut results = Vec::new();
    for id in &ids {
        let t = Instant::now();
        let mut checked = integrity::check(ctx, id);
        if args.repair && !checked.bad.is_empty() {
            integrity::repair(ctx, &mut checked)?;
        }
        let (state, detail) = describe(&checked);
        ctx.printer
            .step(StepName::Incident, state, t.elapsed(), detail);
        results.push(checked);
    }
    ctx.printer.set_data(&VerifyData {
        incidents: &results,
    });
    let failing: Vec<&str> = results
        .iter()
        .filter(|c| !c.ok())
        .map(|c| c.id.as_str())
        .collect();
    Ok(if failing.is_empty() {
        Done::new(
            Happened::Done,
            format!("{} incident(s) read back as stored", results.len()),
        )
    } else {
        Done::new(
            Happened::CheckFailed,
            format!(
                "incident(s) {} do not read back as stored{}",
                failing.join(", "),
                if args.repair {
                    "; the app folder no longer holds what they need"
                } else {
                    ": `guard verify --repair` stores again what the app folder still holds"
                }
            ),
        )
    })
}

fn describe(c: &Checked) -> (StepState, String) {
    if let Some(why) = &c.broken {
        return (
            StepState::Failed,
            format!("incident {}: broken: {why}", c.id),
        );
    }
    let sizes = crate::store::manifest::human_bytes(c.bytes);
    if c.bad.is_empty() {
        return (
            StepState::Ok,
            format!(
                "incident {}: {} content(s), {sizes}, all as stored",
                c.id, c.contents
            ),
        );
    }
    let repaired = c.bad.iter().filter(|b| b.repaired).count();
    let named: Vec<String> = c
        .bad
        .iter()
        .take(3)
        .map(|b| {
            format!(
                "{} ({})",
                b.paths
                    .first()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                if b.repaired { "repaired" } else { "bad" }
            )
        })
        .collect();
    let state = if repaired == c.bad.len() {
        StepState::Warn
    } else {
        StepState::Failed
    };
    (
        state,
        format!(
            "incident {}: {} of {} content(s) did not match their hash, {repaired} repaired: {}",
            c.id,
            c.bad.len(),
            c.contents,
            named.join(", ")
        ),
    )
}
