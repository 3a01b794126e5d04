//! `[switch]`: the two ports and the proxy of `strategy = "switch"`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{absolute_from, in_range};

/// `[switch]`: how a release behind a reverse proxy is switched to.
#[derive(Debug, Clone)]
pub struct SwitchConfig {
    /// The two ports releases take turns on.
    pub ports: [u16; 2],
    /// How the proxy is pointed at a port.
    pub proxy: Proxy,
    /// After the switch, how long the old process keeps running for the requests it still
    /// serves, when it is not kept (`keep_previous = "0s"`).
    pub drain: Duration,
    /// How long the previous release keeps running, warm, after a switch: a rollback in that
    /// time is a switch back without a start.
    pub keep_previous: Duration,
}

/// How guard points the proxy at a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Proxy {
    /// guard owns one nginx upstream file: written atomically, tested, then nginx reloaded.
    Nginx {
        /// The upstream file (`/etc/nginx/conf.d/<app>.upstream.conf`).
        upstream: PathBuf,
        /// The upstream's name in it (what `proxy_pass http://NAME;` names).
        name: String,
        /// The config test (`nginx -t`).
        test: String,
        /// The graceful reload (`nginx -s reload`).
        reload: String,
    },
    /// Any other proxy: a shell command, `{port}` replaced by the port to send traffic to.
    Command(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSwitch {
    ports: Option<Vec<u16>>,
    nginx_upstream: Option<PathBuf>,
    upstream_name: Option<String>,
    test_command: Option<String>,
    reload_command: Option<String>,
    command: Option<String>,
    #[serde(default, with = "humantime_serde")]
    drain: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    keep_previous: Option<Duration>,
}

impl RawSwitch {
    /// Whether guard.toml has a `[switch]` table with anything in it.
    pub(super) fn is_set(&self) -> bool {
        self.ports.is_some() || self.nginx_upstream.is_some() || self.command.is_some()
    }
}

/// The `[switch]` of `strategy = "switch"`, checked.
pub(super) fn resolve_switch(
    raw: &RawSwitch,
    app: &str,
    base: &Path,
) -> std::result::Result<SwitchConfig, String> {
    let ports = match raw.ports.as_deref() {
        Some(&[a, b]) if a != 0 && b != 0 && a != b => [a, b],
        Some(p) => {
            return Err(format!(
                "switch.ports = {p:?} must be two different ports, like [3000, 3001]"
            ));
        }
        None => {
            return Err(
                "deploy.strategy = \"switch\" needs switch.ports, two ports the releases take turns on, like [3000, 3001]"
                    .into(),
            );
        }
    };
    let nonempty = |c: &Option<String>| c.clone().filter(|c| !c.trim().is_empty());
    let proxy = match (&raw.nginx_upstream, nonempty(&raw.command)) {
        (Some(file), None) => {
            let name = raw
                .upstream_name
                .clone()
                .unwrap_or_else(|| upstream_name_of(app));
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
            {
                return Err(format!(
                    "switch.upstream_name {name:?} must be an nginx upstream name (letters, digits, _ - .)"
                ));
            }
            Proxy::Nginx {
                upstream: absolute_from(base, file),
                name,
                test: nonempty(&raw.test_command).unwrap_or_else(|| "nginx -t".into()),
                reload: nonempty(&raw.reload_command).unwrap_or_else(|| "nginx -s reload".into()),
            }
        }
        (None, Some(command)) => {
            if !command.contains("{port}") {
                return Err(format!(
                    "switch.command {command:?} must name {{port}}, the port to send traffic to"
                ));
            }
            if raw.upstream_name.is_some() || raw.test_command.is_some() {
                return Err(
                    "switch.upstream_name and switch.test_command go with nginx_upstream, not command"
                        .into(),
                );
            }
            Proxy::Command(command)
        }
        (Some(_), Some(_)) => {
            return Err(
                "switch.nginx_upstream and switch.command are two ways to switch the proxy: set one"
                    .into(),
            );
        }
        (None, None) => {
            return Err(
                "deploy.strategy = \"switch\" needs switch.nginx_upstream (the upstream file guard owns) or switch.command (with {port})"
                    .into(),
            );
        }
    };
    let drain = raw.drain.unwrap_or(Duration::from_secs(5));
    let keep_previous = raw.keep_previous.unwrap_or(Duration::from_secs(600));
    in_range(&[
        (
            "switch.drain",
            drain,
            Duration::ZERO,
            Duration::from_secs(3600),
        ),
        (
            "switch.keep_previous",
            keep_previous,
            Duration::ZERO,
            Duration::from_secs(7 * 24 * 3600),
        ),
    ])?;
    Ok(SwitchConfig {
        ports,
        proxy,
        drain,
        keep_previous,
    })
}

/// The default upstream name: the app's name with anything nginx would not take replaced.
fn upstream_name_of(app: &str) -> String {
    app.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}
