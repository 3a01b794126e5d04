//! The rules of `guard check`, as pure functions over what was found: each gives a verdict
//! of ok, warn or fail with a one-line fix. What they look at is gathered by
//! `ops::inspect`; `guard deploy` refuses on a fail and prints the warnings.

use crate::settings::Strategy;
use std::time::Duration;

use serde::Serialize;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// As it should be.
    Ok,
    /// Worth fixing; a deploy goes ahead.
    Warn,
    /// A deploy would be unsafe or could not be trusted: `guard deploy` refuses (exit 2).
    Fail,
}

/// One check's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// Stable identifier, for scripts.
    pub id: &'static str,
    /// ok, warn or fail.
    pub level: Level,
    /// What was found.
    pub message: String,
    /// How to fix it, when it is not ok.
    pub fix: Option<String>,
}

impl Check {
    /// A passing check.
    pub fn ok(id: &'static str, message: impl Into<String>) -> Check {
        Check {
            id,
            level: Level::Ok,
            message: message.into(),
            fix: None,
        }
    }

    /// A warning with its fix.
    pub fn warn(id: &'static str, message: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            id,
            level: Level::Warn,
            message: message.into(),
            fix: Some(fix.into()),
        }
    }

    /// A failure with its fix.
    pub fn fail(id: &'static str, message: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            id,
            level: Level::Fail,
            message: message.into(),
            fix: Some(fix.into()),
        }
    }
}

/// PM2's fail-fast policy: at most `limit_restarts` restarts, a start counts only after
/// `limit_uptime`. `None` values are PM2's defaults (16 restarts, 1 s).
pub fn fail_fast(
    max_restarts: Option<f64>,
    min_uptime: Option<Duration>,
    limit_restarts: u32,
    limit_uptime: Duration,
) -> Check {
    let restarts = max_restarts.unwrap_or(crate::ecosystem::PM2_DEFAULT_MAX_RESTARTS);
    let uptime = min_uptime.unwrap_or(crate::ecosystem::PM2_DEFAULT_MIN_UPTIME);
    let shown = format!(
        "max_restarts={}{}, min_uptime={}{}",
        restarts,
        if max_restarts.is_none() {
            " (PM2's default)"
        } else {
            ""
        },
        humantime::format_duration(uptime),
        if min_uptime.is_none() {
            " (PM2's default)"
        } else {
            ""
        },
    );
    let mut wrong = Vec::new();
    if restarts > f64::from(limit_restarts) {
        wrong.push(format!("max_restarts: {limit_restarts}"));
    }
    if uptime < limit_uptime {
        wrong.push(format!(
            "min_uptime: '{}'",
            humantime::format_duration(limit_uptime)
        ));
    }
    if wrong.is_empty() {
        Check::ok("pm2-fail-fast", format!("PM2 fails fast: {shown}"))
    } else {
        Check::warn(
            "pm2-fail-fast",
            format!("PM2 keeps restarting a crashing app and hides the crash: {shown}"),
            format!("set {} in the ecosystem file", wrong.join(", ")),
        )
    }
}

/// Sentry configured but not enabled: the incident's error tracking that never reported. The
/// flag rule applies only to an app that uses an enable flag (`flag`: its key and value).
pub fn sentry(dsn_set: bool, flag: Option<(&str, Option<&str>)>) -> Check {
    match (dsn_set, flag) {
        (false, _) => Check::ok("sentry", "Sentry: not configured (no SENTRY_DSN)"),
        (true, None) => Check::ok("sentry", "Sentry: SENTRY_DSN is set"),
        (true, Some((key, value))) => {
            if value.is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
                Check::ok(
                    "sentry",
                    format!("Sentry: enabled (SENTRY_DSN and {key}=true)"),
                )
            } else {
                Check::warn(
                    "sentry",
                    format!(
                        "Sentry: SENTRY_DSN is set but {key} is not true: errors are not reported"
                    ),
                    format!("add {key}=true beside SENTRY_DSN in the env file"),
                )
            }
        }
    }
}

/// Whether a deploy of this app drops requests, and what avoids it: `reload` needs PM2's
/// cluster mode (one instance is enough), `switch` a proxy; `restart` and `preflight` leave a
/// fork-mode app down while it starts.
pub fn downtime(strategy: Strategy, exec_mode: Option<&str>) -> Check {
    let cluster = exec_mode.is_some_and(|m| m.starts_with("cluster"));
    match (strategy, cluster) {
        (Strategy::Switch, _) => Check::ok(
            "downtime",
            "strategy switch: a release takes traffic only once it is verified on the idle port",
        ),
        (Strategy::Reload, true) => Check::ok(
            "downtime",
            "strategy reload: PM2 replaces the cluster instances one at a time",
        ),
        (Strategy::Reload, false) => Check::warn(
            "downtime",
            "strategy reload on a fork-mode app: PM2's reload of a fork process is a plain restart, and requests fail while it starts",
            "set exec_mode: 'cluster' in the ecosystem file (instances: 1 is enough), or use strategy = \"switch\" behind nginx",
        ),
        (s, true) => Check::ok(
            "downtime",
            format!(
                "strategy {s}: the app is down while it starts; strategy = \"reload\" replaces its cluster instances one at a time"
            ),
        ),
        (s, false) => Check::ok(
            "downtime",
            format!(
                "strategy {s}: the app is down while it starts at each deploy; exec_mode: 'cluster' with instances: 1 and strategy = \"reload\" avoids it, or strategy = \"switch\" behind nginx"
            ),
        ),
    }
}

/// A file holding secrets must not be readable by other users.
pub fn private_file(id: &'static str, what: &str, mode: u32) -> Check {
    if mode & 0o004 != 0 {
        Check::fail(
            id,
            format!("{what} is readable by every user (mode {:o})", mode & 0o777),
            format!("chmod 600 {what}"),
        )
    } else {
        Check::ok(id, format!("{what} is not readable by other users"))
    }
}

/// Whether a health URL's host is this machine.
pub fn host_is_local(host: &str, hostname: &str) -> bool {
    let h = host.trim_matches(['[', ']']);
    if h.eq_ignore_ascii_case("localhost") || h.eq_ignore_ascii_case(hostname) {
        return true;
    }
    match h.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback() || ip.is_unspecified(),
        Err(_) => false,
    }
}

/// The overall result: the worst level found.
pub fn worst(checks: &[Check]) -> Level {
    checks.iter().map(|c| c.level).max().unwrap_or(Level::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S30: Duration = Duration::from_secs(30);

    #[test]
    fn downtime_names_what_avoids_it() {
        use Level::*;
        let level = |s, m| downtime(s, m).level;
        assert_eq!(level(Strategy::Reload, Some("fork_mode")), Warn);
        assert_eq!(level(Strategy::Reload, Some("cluster_mode")), Ok);
        assert_eq!(level(Strategy::Switch, None), Ok);
        let c = downtime(Strategy::Restart, Some("fork"));
        assert_eq!(c.level, Ok);
        assert!(c.message.contains("instances: 1"), "{}", c.message);
    }

    #[test]
    fn the_incidents_pm2_settings_before_and_after_its_fix() {
        let before = fail_fast(Some(15.0), Some(Duration::from_secs(5)), 3, S30);
        assert_eq!(before.level, Level::Warn);
        assert!(
            before.message.contains("max_restarts=15"),
            "{}",
            before.message
        );
        assert!(before.fix.unwrap().contains("max_restarts: 3"));
        assert_eq!(fail_fast(Some(3.0), Some(S30), 3, S30).level, Level::Ok);
        let defaults = fail_fast(None, None, 3, S30);
        assert!(
            defaults.message.contains("16 (PM2's default)"),
            "{}",
            defaults.message
        );
    }

    #[test]
    fn sentry_configured_but_not_enabled_is_the_incidents_gap() {
        let flag = |v| Some(("SENTRY_ENABLED", v));
        assert_eq!(sentry(true, flag(None)).level, Level::Warn);
        assert_eq!(sentry(true, flag(Some("false"))).level, Level::Warn);
        assert_eq!(sentry(true, flag(Some("true"))).level, Level::Ok);
        assert_eq!(sentry(false, flag(None)).level, Level::Ok);
        // An app without an enable flag reports whenever the DSN is set.
        assert_eq!(sentry(true, None).level, Level::Ok);
    }

    #[test]
    fn world_readable_secrets_fail() {
        assert_eq!(
            private_file("env-files", "env.env", 0o644).level,
            Level::Fail
        );
        assert_eq!(private_file("env-files", "env.env", 0o640).level, Level::Ok);
    }

    #[test]
    fn local_hosts() {
        for h in ["127.0.0.1", "localhost", "[::1]", "myhost", "0.0.0.0"] {
            assert!(host_is_local(h, "myhost"), "{h}");
        }
        for h in ["10.0.0.5", "api.example.com"] {
            assert!(!host_is_local(h, "myhost"), "{h}");
        }
    }

    #[test]
    fn the_worst_level_decides() {
        let c = [
            Check::ok("a", ""),
            Check::warn("b", "", ""),
            Check::ok("c", ""),
        ];
        assert_eq!(worst(&c), Level::Warn);
        assert_eq!(worst(&[]), Level::Ok);
    }
}
