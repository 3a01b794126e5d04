//! `[watch]`: the rules of `guard watch` (intervals, thresholds, memory, automatic rollback).

use std::time::Duration;

use serde::Deserialize;

use super::in_range;

/// `[watch]`: the rules of `guard watch`.
#[derive(Debug, Clone)]
pub struct WatchConfig {
    /// Between health probes while watching.
    pub interval: Duration,
    /// Failing probes in a row before the health alert.
    pub failures: u32,
    /// This many restarts within `loop_window` are a crash loop.
    pub loop_restarts: u32,
    /// The crash-loop window (also `guard health`'s "restarts in the last ...").
    pub loop_window: Duration,
    /// Quiet time after a crash before it is reported recovered.
    pub recover_after: Duration,
    /// Resident memory of one instance above which an alert is sent.
    pub max_memory: Option<u64>,
    /// After a successful deploy, roll back on a crash loop or sustained health failure
    /// within this time; off when unset.
    pub rollback_within: Option<Duration>,
    /// Between consistency reads of PM2's process list (over the daemon's socket; a `pm2 jlist` Node start when that fails).
    pub pm2_every: Duration,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWatch {
    #[serde(default, with = "humantime_serde")]
    interval: Option<Duration>,
    failures: Option<u32>,
    loop_restarts: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    loop_window: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    recover_after: Option<Duration>,
    max_memory: Option<String>,
    #[serde(default, with = "humantime_serde")]
    rollback_within: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pm2_every: Option<Duration>,
}

/// "512MB", "1.5GB", "300M", "1024" (bytes) as bytes.
pub fn parse_bytes(text: &str) -> std::result::Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a size like \"512MB\""))?;
    let mult: f64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1.0,
        "K" | "KB" | "KIB" => 1024.0,
        "M" | "MB" | "MIB" => 1024.0 * 1024.0,
        "G" | "GB" | "GIB" => 1024.0 * 1024.0 * 1024.0,
        other => {
            return Err(format!(
                "{text:?}: unknown unit {other:?} (use KB, MB or GB)"
            ));
        }
    };
    let bytes = n * mult;
    if !(1.0..=1e15).contains(&bytes) {
        return Err(format!("{text:?} is out of range"));
    }
    Ok(bytes as u64)
}

pub(super) fn resolve_watch(raw: &RawWatch) -> std::result::Result<WatchConfig, String> {
    const DAY: Duration = Duration::from_secs(24 * 3600);
    let w = WatchConfig {
        interval: raw.interval.unwrap_or(Duration::from_secs(5)),
        failures: raw.failures.unwrap_or(3),
        loop_restarts: raw.loop_restarts.unwrap_or(3),
        loop_window: raw.loop_window.unwrap_or(Duration::from_secs(300)),
        recover_after: raw.recover_after.unwrap_or(Duration::from_secs(30)),
        max_memory: match &raw.max_memory {
            Some(m) => Some(parse_bytes(m).map_err(|e| format!("watch.max_memory: {e}"))?),
            None => None,
        },
        rollback_within: raw.rollback_within,
        pm2_every: raw.pm2_every.unwrap_or(Duration::from_secs(60)),
    };
    in_range(&[
        (
            "watch.interval",
            w.interval,
            Duration::from_millis(100),
            Duration::from_secs(3600),
        ),
        (
            "watch.loop_window",
            w.loop_window,
            Duration::from_secs(1),
            DAY,
        ),
        ("watch.recover_after", w.recover_after, Duration::ZERO, DAY),
        (
            "watch.rollback_within",
            w.rollback_within.unwrap_or(Duration::from_secs(1)),
            Duration::from_secs(1),
            DAY,
        ),
        (
            "watch.pm2_every",
            w.pm2_every,
            Duration::from_secs(2),
            Duration::from_secs(3600),
        ),
    ])?;
    if !(1..=1000).contains(&w.failures) || !(1..=1000).contains(&w.loop_restarts) {
        return Err("watch.failures and watch.loop_restarts must be 1 to 1000".into());
    }
    Ok(w)
}
