//! `deploy.strategy = "switch"`, for an app behind a reverse proxy: a release starts as a
//! second PM2 process (`<app>-<port>`) on the idle one of two ports, is verified there by the
//! deploy's own rules, and only then does the proxy send traffic to it. The old process is
//! kept warm for `keep_previous` (a rollback in that time is a switch back, no start), or
//! stopped after `drain`. A release that fails never takes a request; a rollback starts the
//! restored release beside the failing one the same way.
//!
//! What serves is remembered in backup.dir (`crate::switch::State`) and checked against the
//! nginx upstream file guard wrote: after a `kill -9` between the proxy switch and that record,
//! the proxy is the truth.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;

use super::deploy::DeployData;
use super::{Ctx, Tools, restart, restore};
use crate::evidence;
use crate::exit::{Done, Happened, usage};
use crate::output::{StepName, StepState, fmt_duration};
use crate::pm2::Pm2;
use crate::probe::Prober;
use crate::proxy;
use crate::settings::{Proxy, Settings, SwitchConfig};
use crate::store::Verified;
use crate::switch::{Kept, Slot, State, slot_name};
use crate::verdict::{Reason, Verdict};
use crate::verify::rules::Start;

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

fn config(settings: &Settings) -> &SwitchConfig {
    settings
        .switch
        .as_ref()
        .expect("strategy = \"switch\" always has its [switch] settings")
}

/// What serves now: the state guard recorded, checked against the proxy; before the first
/// switch, the app's own process on the port of the upstream file or of health.url.
pub fn state(settings: &Settings, store_dir: &Path) -> Result<State> {
    let sw = config(settings);
    let app = &settings.app.name;
    let saved = State::load(store_dir, app, sw.ports).map_err(|e| {
        usage(format!(
            "{e:#}: guard cannot tell which process serves; check the proxy and `pm2 ls`, then remove that file; nothing was changed"
        ))
    })?;
    let proxy_port = match &sw.proxy {
        Proxy::Nginx { upstream, .. } => proxy::upstream_port(upstream),
        Proxy::Command(_) => None,
    };
    Ok(reconcile(
        saved,
        proxy_port,
        app,
        sw.ports,
        settings.health.url.port_or_known_default(),
    ))
}

/// The state from the record and the port the proxy sends traffic to (pure).
fn reconcile(
    saved: Option<State>,
    proxy_port: Option<u16>,
    app: &str,
    ports: [u16; 2],
    health_port: Option<u16>,
) -> State {
    let proxy_port = proxy_port.filter(|p| ports.contains(p));
    match (saved, proxy_port) {
        // guard died after switching the proxy and before recording it: the proxy is the
        // truth, and what served before is stopped by the next run.
        (Some(s), Some(p)) if p != s.live.port => State {
            live: Slot {
                name: slot_name(app, p),
                port: p,
            },
            previous: Some(Kept {
                slot: s.live,
                incident: None,
                until_ms: 0,
                since_ms: 0,
            }),
        },
        (Some(s), _) => s,
        (None, Some(p)) => State {
            live: Slot {
                name: slot_name(app, p),
                port: p,
            },
            previous: Some(Kept {
                slot: Slot {
                    name: app.to_string(),
                    port: if ports[0] == p { ports[1] } else { ports[0] },
                },
                incident: None,
                until_ms: 0,
                since_ms: 0,
            }),
        },
        (None, None) => State::first(
            app,
            health_port
                .filter(|p| ports.contains(p))
                .unwrap_or(ports[0]),
        ),
    }
}

/// PM2 and the prober aimed at the live process.
pub fn live_tools(settings: &Settings, store_dir: &Path) -> Result<Tools> {
    let st = state(settings, store_dir)?;
    let mut health = settings.health.clone();
    let _ = health.url.set_port(Some(st.live.port));
    Ok(Tools {
        pm2: Pm2::new(settings)?.named(&st.live.name),
        prober: Prober::new(&health)?,
    })
}

/// Before anything changes: the idle port must be free, or held by this app's own process
/// there (a kept previous release, or what a killed run left), which the deploy replaces.
pub async fn check_port(ctx: &Ctx<'_>, tools: &Tools) -> Result<()> {
    let st = state(&ctx.settings, ctx.store.dir())?;
    let idle = st.idle_port(config(&ctx.settings).ports);
    let host = proxy::host_of(&ctx.settings.health.url);
    let bind_host = host.trim_matches(['[', ']']).to_string();
    if let Err(e) = std::net::TcpListener::bind((bind_host.as_str(), idle)) {
        // The app's own process there: its slot, or the previous release kept warm (which may
        // be the app's own `<app>` process of before the first switch).
        let mut names = vec![slot_name(&ctx.settings.app.name, idle)];
        if let Some(k) = st.previous.as_ref().filter(|k| k.slot.port == idle) {
            names.push(k.slot.name.clone());
        }
        let mut ours = false;
        for name in &names {
            ours |= tools
                .pm2
                .named(name)
                .instances()
                .await
                .is_ok_and(|l| !l.is_empty());
        }
        if !ours {
            return Err(usage(format!(
                "port {idle} (switch.ports) is in use by something that is not {}: the new release could not listen there ({e}); free it, config {}; nothing was changed",
                slot_name(&ctx.settings.app.name, idle),
                ctx.settings.config_path.display()
            )));
        }
    }
    Ok(())
}

/// Stop the kept previous release once its time is up (called at the start of every deploy
/// and rollback, under the lock).
pub async fn expire(ctx: &mut Ctx<'_>, tools: &Tools) -> Result<()> {
    if ctx.settings.switch.is_none() {
        return Ok(());
    }
    let mut st = state(&ctx.settings, ctx.store.dir())?;
    let Some(kept) = st.expired(now_ms()).cloned() else {
        return Ok(());
    };
    stop(
        ctx,
        tools,
        &kept.slot,
        "the previous release, kept warm until its time was up",
    )
    .await;
    st.previous = None;
    st.save(ctx.store.dir(), &ctx.settings.app.name)?;
    Ok(())
}

/// `pm2 delete` of one of the app's processes, as a step; a failure is a warning.
async fn stop(ctx: &mut Ctx<'_>, tools: &Tools, slot: &Slot, what: &str) {
    let t = Instant::now();
    let pm2 = tools.pm2.named(&slot.name);
    match pm2.instances().await {
        Ok(list) if list.is_empty() => return,
        Err(_) | Ok(_) => {}
    }
    match pm2.delete().await {
        Ok(()) => ctx.printer.step(
            StepName::Stop,
            StepState::Ok,
            t.elapsed(),
            format!("stopped {} on port {}: {what}", slot.name, slot.port),
        ),
        Err(e) => ctx.printer.step(
            StepName::Stop,
            StepState::Warn,
            t.elapsed(),
            format!("could not stop {} on port {}: {e:#}", slot.name, slot.port),
        ),
    }
}

/// Make room on the idle port: what runs there is a kept previous release (this run replaces
/// it) or a process a killed run left.
async fn free_idle(ctx: &mut Ctx<'_>, tools: &Tools, st: &mut State, idle: u16) -> Result<()> {
    let slot = Slot {
        name: slot_name(&ctx.settings.app.name, idle),
        port: idle,
    };
    let kept = st.previous.as_ref().is_some_and(|k| k.slot.port == idle);
    let what = if kept {
        "the release kept before this one makes room"
    } else {
        "left by an earlier run that did not switch to it"
    };
    stop(ctx, tools, &slot, what).await;
    if let Some(k) = st.previous.take_if(|k| k.slot.port == idle)
        && k.slot.name != slot.name
    {
        stop(ctx, tools, &k.slot, what).await;
    }
    if kept {
        st.save(ctx.store.dir(), &ctx.settings.app.name)?;
    }
    Ok(())
}

/// Start the release now in app.dir on `port` as the app's process there and verify it by the
/// deploy's rules; an unhealthy one is deleted again (its logs saved into incident
/// `evidence_in` first). A healthy one comes back with the reaper that deletes it if guard
/// dies before the switch.
async fn start_and_verify(
    ctx: &mut Ctx<'_>,
    tools: &Tools,
    port: u16,
    evidence_in: Option<&str>,
) -> Result<(Verdict, Slot, Option<super::trial::Reaper>)> {
    let t = Instant::now();
    let app = ctx.settings.app.name.clone();
    let slot = Slot {
        name: slot_name(&app, port),
        port,
    };
    let pm2 = tools.pm2.named(&slot.name);
    let eco = super::ecosystem_path(ctx)?;
    let (_dir, loader) = super::trial::Loader {
        ecosystem: &eco,
        app: &app,
        new_name: &slot.name,
        port,
        trial: false,
    }
    .write(ctx, tools)?;
    let mut health = ctx.settings.health.clone();
    let _ = health.url.set_port(Some(port));
    let prober = Prober::new(&health)?;
    let offsets = evidence::offsets(tools.pm2.home(), &[]);
    let reaper = super::trial::Reaper::start(&tools.pm2, &slot.name);
    let verdict = match pm2.start(&loader).await {
        Ok(()) => {
            ctx.printer.step(
                StepName::Start,
                StepState::Ok,
                t.elapsed(),
                format!(
                    "{} on port {port} ({}={port}), beside the live release",
                    slot.name, ctx.settings.port_env
                ),
            );
            let cancel = ctx.cancel.clone();
            let rules = restart::rules(ctx, Start::Fresh);
            let printer = &*ctx.printer;
            crate::verify::verify(
                &pm2,
                &prober,
                rules,
                ctx.settings.health.interval,
                Some(&offsets),
                &cancel,
                &mut |p| printer.progress(StepName::Verify, &p.to_string()),
            )
            .await?
        }
        Err(e) => restart::could_not_start(ctx, StepName::Start, t, &e),
    };
    restart::print_verdict(ctx, &verdict);
    if verdict.healthy {
        return Ok((verdict, slot, Some(reaper)));
    }
    if let Some(id) = evidence_in {
        super::save_evidence(ctx, id, &verdict, &offsets).await;
    }
    stop(ctx, tools, &slot, "it failed before taking traffic").await;
    drop(reaper);
    Ok((verdict, slot, None))
}

/// Point the proxy at `new` and record it; the process it replaces is kept warm (as the
/// release of incident `keep_as`) or drained and stopped. Err: the proxy was not switched (the
/// live process still serves) and why.
async fn switch_to(
    ctx: &mut Ctx<'_>,
    tools: &Tools,
    st: &mut State,
    new: Slot,
    keep_as: Option<&str>,
) -> Result<std::result::Result<(), String>> {
    let sw = config(&ctx.settings).clone();
    let t = Instant::now();
    let host = proxy::host_of(&ctx.settings.health.url);
    match proxy::point(
        &sw.proxy,
        &ctx.settings.app.name,
        &host,
        new.port,
        &ctx.settings.app.dir,
    )
    .await
    {
        Ok(said) => ctx.printer.step(
            StepName::Switch,
            StepState::Ok,
            t.elapsed(),
            format!("traffic to {} on port {}: {said}", new.name, new.port),
        ),
        Err(e) => {
            let why = format!("the proxy was not switched: {e:#}");
            ctx.printer
                .step(StepName::Switch, StepState::Failed, t.elapsed(), &why);
            return Ok(Err(why));
        }
    }
    let old = std::mem::replace(&mut st.live, new);
    // Only a release that runs is kept (a first deploy on a server where nothing ran has none
    // to switch back to).
    let old_runs = crate::pm2::all_online(
        &tools
            .pm2
            .named(&old.name)
            .instances()
            .await
            .unwrap_or_default(),
    );
    let keep = keep_as.filter(|_| !sw.keep_previous.is_zero() && old_runs);
    st.previous = keep.map(|id| Kept {
        slot: old.clone(),
        incident: Some(id.to_string()),
        until_ms: now_ms() + i64::try_from(sw.keep_previous.as_millis()).unwrap_or(i64::MAX),
        since_ms: now_ms(),
    });
    st.save(ctx.store.dir(), &ctx.settings.app.name)?;
    if keep.is_some() {
        ctx.printer.step(
            StepName::Keep,
            StepState::Ok,
            Duration::ZERO,
            format!(
                "{} stays on port {} for {}: `guard rollback` in that time switches back to it without a start",
                old.name,
                old.port,
                fmt_duration(sw.keep_previous)
            ),
        );
    } else if old_runs {
        // The proxy's old connections finish on the old process meanwhile.
        tokio::time::sleep(sw.drain).await;
        stop(
            ctx,
            tools,
            &old,
            &format!("drained for {}", fmt_duration(sw.drain)),
        )
        .await;
    } else {
        // Not serving (errored, stopped): nothing to drain.
        stop(ctx, tools, &old, "it was not online").await;
    }
    Ok(Ok(()))
}

/// The deploy of `strategy = "switch"`, after the release is in app.dir and checked.
pub async fn deploy(
    ctx: &mut Ctx<'_>,
    tools: &Tools,
    id: &str,
    data: &mut DeployData,
) -> Result<Done> {
    let mut st = state(&ctx.settings, ctx.store.dir())?;
    let idle = st.idle_port(config(&ctx.settings).ports);
    free_idle(ctx, tools, &mut st, idle).await?;
    let (verdict, slot, reaper) = start_and_verify(ctx, tools, idle, Some(id)).await?;
    data.verdict = Some(verdict.clone());
    let interrupted = ctx.cancel.signal();
    if !verdict.healthy || interrupted.is_some() {
        if verdict.healthy {
            stop(ctx, tools, &slot, "stopped by a signal before the switch").await;
        }
        let why = match interrupted {
            Some(sig) => format!("stopped by signal {sig}"),
            None => format!(
                "the new release failed on port {idle} before taking traffic: {}",
                verdict.message
            ),
        };
        return super::deploy::undo_before_restart(ctx, tools, id, &why).await;
    }
    // From here the new process must survive guard: the proxy is about to send it traffic.
    drop(reaper);
    if let Err(why) = switch_to(ctx, tools, &mut st, slot.clone(), Some(id)).await? {
        stop(ctx, tools, &slot, "the proxy was not switched to it").await;
        return super::deploy::undo_before_restart(ctx, tools, id, &why).await;
    }
    restart::save_step(ctx, tools).await;
    let kept = st
        .previous
        .as_ref()
        .map(|k| {
            format!(
                "; the previous release stays warm on port {} until {} for an instant rollback",
                k.slot.port,
                jiff::Timestamp::from_millisecond(k.until_ms)
                    .map(|t| t.strftime("%H:%M:%S UTC").to_string())
                    .unwrap_or_default()
            )
        })
        .unwrap_or_default();
    Ok(Done::new(
        Happened::Done,
        format!(
            "deployed and verified healthy on port {idle}, traffic switched to it{kept} (backup: incident {id})"
        ),
    ))
}

/// A rollback under `switch`: to the release kept warm, a switch back with no start; else the
/// restored release started on the idle port, verified, and switched to. Either way the
/// failing release serves until the previous one is proven, then it is stopped.
pub async fn roll_back(ctx: &mut Ctx<'_>, tools: &Tools, target: &Verified) -> Result<Verdict> {
    let mut st = state(&ctx.settings, ctx.store.dir())?;
    let id = target.manifest.id.clone();
    if let Some(kept) = st.switch_back_to(&id, now_ms()).cloned()
        && let Some(verdict) = warm(ctx, tools, &kept).await
    {
        if let Err(why) = switch_to(ctx, tools, &mut st, kept.slot.clone(), None).await? {
            let mut v = verdict;
            v.overrule(Reason::RestartFailed { error: why });
            return Ok(v);
        }
        // The files go back after the previous release serves: off the critical path.
        restore::put_back(ctx, target).await?;
        restart::print_verdict(ctx, &verdict);
        restart::save_step(ctx, tools).await;
        return Ok(verdict);
    }
    let restored = restore::put_back(ctx, target).await?;
    crate::store::tree::sync_fs(&ctx.settings.app.dir);
    let idle = st.idle_port(config(&ctx.settings).ports);
    free_idle(ctx, tools, &mut st, idle).await?;
    let (verdict, slot, reaper) = start_and_verify(ctx, tools, idle, None).await?;
    let mut verdict = restore::prove(ctx, verdict, &restored)?;
    if !verdict.healthy {
        if reaper.is_some() {
            restart::print_verdict(ctx, &verdict);
            stop(ctx, tools, &slot, "not what was restored").await;
        }
        return Ok(verdict);
    }
    drop(reaper);
    if let Err(why) = switch_to(ctx, tools, &mut st, slot.clone(), None).await? {
        stop(ctx, tools, &slot, "the proxy was not switched to it").await;
        verdict.overrule(Reason::RestartFailed { error: why });
        return Ok(verdict);
    }
    restart::save_step(ctx, tools).await;
    Ok(verdict)
}

/// The kept release, if it still runs and answers: its verdict (it was verified when it was
/// deployed; this is one more look).
async fn warm(ctx: &mut Ctx<'_>, tools: &Tools, kept: &Kept) -> Option<Verdict> {
    let t = Instant::now();
    let slot = &kept.slot;
    let pm2 = tools.pm2.named(&slot.name);
    let mut health = ctx.settings.health.clone();
    let _ = health.url.set_port(Some(slot.port));
    let probe = Prober::new(&health).ok()?.probe().await;
    let instances = pm2.instances().await.unwrap_or_default();
    let online = crate::pm2::all_online(&instances);
    let started: Vec<Option<i64>> = instances.iter().map(|i| i.started_at_ms).collect();
    let why = if !online || !probe.outcome.passed() {
        Some(format!(
            "{} instance(s), {}",
            instances.len(),
            probe.outcome
        ))
    } else if !kept.still_the_previous(&started) {
        // PM2 restarted it after the switch: it loaded the files on disk then, the new release.
        Some("PM2 restarted it since it was kept, so it runs the new release's files".to_string())
    } else {
        None
    };
    if let Some(why) = why {
        ctx.printer.step(
            StepName::Switch,
            StepState::Warn,
            t.elapsed(),
            format!(
                "the release kept on port {} cannot be switched back to ({why}): it is started again instead",
                slot.port
            ),
        );
        return None;
    }
    let started = instances.iter().filter_map(|i| i.started_at_ms).min();
    let mut v = Verdict::new(
        Reason::Healthy {
            ready_after_ms: crate::verdict::ms(t.elapsed()),
            stable_ms: started.map_or(0, |s| u64::try_from(now_ms() - s).unwrap_or(0)),
            instances: instances.len(),
        },
        t.elapsed(),
    );
    v.instances = instances;
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PORTS: [u16; 2] = [3000, 3001];

    #[test]
    fn before_any_switch_the_app_serves_on_its_health_port() {
        let s = reconcile(None, None, "api", PORTS, Some(3001));
        assert_eq!(s.live.name, "api");
        assert_eq!(s.live.port, 3001);
        let s = reconcile(None, None, "api", PORTS, Some(80));
        assert_eq!(s.live.port, 3000);
    }

    #[test]
    fn the_proxy_is_the_truth_after_a_run_died_between_switch_and_record() {
        let saved = State::first("api", 3000);
        let s = reconcile(Some(saved.clone()), Some(3001), "api", PORTS, None);
        assert_eq!(s.live.name, "api-3001");
        let prev = s.previous.unwrap();
        assert_eq!(prev.slot, saved.live);
        assert_eq!(prev.until_ms, 0);
        // Agreeing: the record stands.
        assert_eq!(
            reconcile(Some(saved.clone()), Some(3000), "api", PORTS, None),
            saved
        );
        // A first switch that died before its record.
        let s = reconcile(None, Some(3001), "api", PORTS, Some(3000));
        assert_eq!(s.live.name, "api-3001");
        assert_eq!(s.previous.unwrap().slot.name, "api");
    }
}
