//! PM2's own log (`$PM2_HOME/pm2.log`): when PM2 restarted an app because it exited, which
//! PM2's restart counter alone cannot tell (it never says *when*). Only the tail is read.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// How much of the log's end is read: thousands of lines, whatever the log's size.
const TAIL_BYTES: u64 = 1 << 20;

/// Restarts of `app` after an exit nobody asked for (a crash), at or after `since` and after
/// the app was last stopped on purpose, in PM2's log text. A `pm2 stop/delete/restart` (a
/// guard deploy's or rollback's included) logs "Stopping app:NAME id:N" before the exit: that
/// exit is not counted, and the crashes before it belonged to what ran before.
pub fn count_crashes(
    text: &str,
    app: &str,
    since: jiff::Timestamp,
    tz: &jiff::tz::TimeZone,
) -> u64 {
    let stopping_prefix = format!("Stopping app:{app} id:");
    let exit_prefix = format!("App [{app}:");
    let mut stopping: std::collections::BTreeSet<String> = Default::default();
    let mut count = 0;
    for line in text.lines() {
        // "2026-11-28T21:09:19: PM2 log: App [api:0] exited with code [1] via signal [SIGINT]"
        let Some((stamp, rest)) = line.split_once(": PM2 log: ") else {
            continue;
        };
        if let Some(id) = rest.strip_prefix(&stopping_prefix) {
            stopping.insert(id.trim().to_string());
            count = 0;
            continue;
        }
        let Some(after) = rest.strip_prefix(&exit_prefix) else {
            continue;
        };
        let Some((id, tail)) = after.split_once(']') else {
            continue;
        };
        if !tail.starts_with(" exited with code") {
            continue;
        }
        if stopping.remove(id) {
            continue;
        }
        let at = stamp
            .parse::<jiff::civil::DateTime>()
            .ok()
            .and_then(|dt| tz.to_timestamp(dt).ok());
        if at.is_some_and(|t| t >= since) {
            count += 1;
        }
    }
    count
}

/// Crash restarts of `app` since `since`, from the end of `$PM2_HOME/pm2.log`; `None` when
/// the log cannot be read (PM2 writes it in the daemon's local time zone, which is this one).
pub fn crashes_since(pm2_home: &Path, app: &str, since: jiff::Timestamp) -> Option<u64> {
    let path = pm2_home.join("pm2.log");
    let mut f = std::fs::File::open(&path).ok()?;
    let len = f.metadata().ok()?.len();
    let start = len.saturating_sub(TAIL_BYTES);
    f.seek(SeekFrom::Start(start)).ok()?;
    let mut buf = Vec::new();
    f.take(TAIL_BYTES).read_to_end(&mut buf).ok()?;
    let mut text = String::from_utf8_lossy(&buf).into_owned();
    if start > 0 {
        // The first line is cut.
        text = text
            .split_once('\n')
            .map(|(_, r)| r.to_string())
            .unwrap_or_default();
    }
    Some(count_crashes(
        &text,
        app,
        since,
        &jiff::tz::TimeZone::system(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "\
2026-11-28T21:00:00: PM2 log: App [api:0] starting in -fork mode-
2026-11-28T21:00:00: PM2 log: App [api:0] online
2026-11-28T21:01:00: PM2 log: App [api:0] exited with code [1] via signal [SIGINT]
2026-11-28T21:01:00: PM2 log: App [api:0] starting in -fork mode-
2026-11-28T21:02:00: PM2 log: Stopping app:api id:0
2026-11-28T21:02:00: PM2 log: App [api:0] exited with code [0] via signal [SIGINT]
2026-11-28T21:02:01: PM2 log: App [api:0] starting in -fork mode-
2026-11-28T21:03:00: PM2 log: App [api-worker:1] exited with code [1] via signal [SIGINT]
2026-11-28T21:04:00: PM2 log: App [api:0] exited with code [1] via signal [SIGINT]
2026-11-28T21:04:01: PM2 log: App [api:0] exited with code [1] via signal [SIGINT]
";

    #[test]
    fn only_exits_nobody_asked_for_of_this_app_since_its_last_stop_are_counted() {
        let tz = jiff::tz::TimeZone::UTC;
        let t = |s: &str| s.parse::<jiff::Timestamp>().unwrap();
        // The crash at 21:01 came before the stop at 21:02: what runs now crashed twice.
        assert_eq!(count_crashes(LOG, "api", t("2026-11-28T20:00:00Z"), &tz), 2);
        assert_eq!(count_crashes(LOG, "api", t("2026-11-28T21:03:00Z"), &tz), 2);
        assert_eq!(
            count_crashes(LOG, "api-worker", t("2026-11-28T20:00:00Z"), &tz),
            1
        );
        assert_eq!(count_crashes(LOG, "ap", t("2026-11-28T20:00:00Z"), &tz), 0);
    }
}
