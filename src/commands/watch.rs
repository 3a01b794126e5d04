//! `guard watch`: watch the app after deploys end, report events, alert, and roll a failing
//! recent deploy back. Runs in the foreground until SIGTERM/SIGINT (for systemd).

use std::sync::Arc;

use anyhow::Result;

use super::Done;
use crate::alert::{Alerter, Heartbeat, Retry};
use crate::cli::WatchArgs;
use crate::exit::{Happened, usage};
use crate::metrics::{self, Deliveries, Shared};
use crate::monitor::driver::Watcher;
use crate::ops::{self, Ctx, Tools};
use crate::output::fmt_duration;
use crate::pm2::Pm2;
use crate::probe::Prober;
use crate::sdnotify::Notifier;

/// `guard watch`.
pub async fn run(ctx: &mut Ctx<'_>, args: &WatchArgs) -> Result<Done> {
    let tools = ctx.tools()?;
    let (alerter, heartbeat) = alerting(ctx, &tools).await?;
    let deliveries = Arc::new(Deliveries::default());
    let shared = serve_metrics(ctx, args, &deliveries).await?;
    announce(ctx, &tools, &alerter, heartbeat.as_ref());
    let queues = (!alerter.is_empty())
        .then(|| alerter.spawn_queues(Retry::watch(), Some(deliveries.clone())));
    let printer = &*ctx.printer;
    let mut show = |a: &crate::alert::Alert| printer.event(a);
    // Under `switch` each deploy or rollback may move the app to its other process.
    let store_dir = ctx.store.dir().to_path_buf();
    let settings = ctx.settings.clone();
    let mut live = move || {
        ops::switch::live_tools(&settings, &store_dir)
            .ok()
            .map(|t| (t.pm2, t.prober))
    };
    let watcher = Watcher {
        settings: &ctx.settings,
        pm2: tools.pm2,
        prober: tools.prober,
        live: ctx
            .settings
            .switch
            .is_some()
            .then_some(&mut live as &mut dyn FnMut() -> Option<(Pm2, Prober)>),
        queues,
        metrics: shared,
        heartbeat,
        cancel: ctx.cancel.clone(),
        show: &mut show,
    };
    let summary = watcher.run(Notifier::from_env()).await?;
    let text = format!(
        "stopped after {}: {} event(s), {} automatic rollback(s)",
        fmt_duration(std::time::Duration::from_millis(summary.watched_ms)),
        summary.events,
        summary.rollbacks
    );
    ctx.printer.set_data(&summary);
    Ok(Done::new(Happened::Done, text))
}

/// The alert destinations and the heartbeat, their secrets (and the ecosystem's env values)
/// masked from here on. A destination whose token cannot be read is a config error: a
/// watcher that cannot alert must not look like one that can.
async fn alerting(ctx: &mut Ctx<'_>, tools: &Tools) -> Result<(Alerter, Option<Heartbeat>)> {
    let declared = ops::declared(ctx, &tools.pm2).await;
    ops::inspect::learn_ecosystem_env(ctx, declared.as_ref());
    let mut redactor = ctx.printer.redactor().clone();
    let alerter =
        Alerter::new(&ctx.settings.alert, &mut redactor).map_err(|e| usage(format!("{e:#}")))?;
    let heartbeat =
        Heartbeat::new(&ctx.settings.alert, &mut redactor).map_err(|e| usage(format!("{e:#}")))?;
    ctx.printer.set_redactor(redactor);
    Ok((alerter, heartbeat))
}

/// `--metrics ADDR`: listening before watching starts (an address that cannot be listened on
/// is a usage error).
async fn serve_metrics(
    ctx: &mut Ctx<'_>,
    args: &WatchArgs,
    deliveries: &Arc<Deliveries>,
) -> Result<Option<Shared>> {
    let Some(addr) = &args.metrics else {
        return Ok(None);
    };
    let shared = Shared::default();
    let bound = metrics::serve(
        addr,
        ctx.settings.app.name.clone(),
        shared.clone(),
        deliveries.clone(),
    )
    .await
    .map_err(|e| usage(format!("{e:#}")))?;
    ctx.printer.line(format!(
        "metrics on http://{bound}/metrics (Prometheus text)"
    ));
    Ok(Some(shared))
}

/// The first line: what is watched, how, and where alerts go.
fn announce(ctx: &Ctx<'_>, tools: &Tools, alerter: &Alerter, heartbeat: Option<&Heartbeat>) {
    let w = &ctx.settings.watch;
    let dests = if alerter.is_empty() {
        "no alert destinations (events are printed only)".to_string()
    } else {
        format!("alerts to {}", alerter.names().join(", "))
    };
    ctx.printer.line(format!(
        "watching {} (PM2_HOME {}): probe every {}, crash loop at {} restarts within {}, {dests}{}{}",
        ctx.settings.app.name,
        tools.pm2.home().display(),
        fmt_duration(w.interval),
        w.loop_restarts,
        fmt_duration(w.loop_window),
        heartbeat
            .map(|h| format!(", heartbeat every {}", fmt_duration(h.every)))
            .unwrap_or_default(),
        w.rollback_within
            .map(|r| format!(", rolls back a deploy failing within {}", fmt_duration(r)))
            .unwrap_or_default(),
    ));
}
