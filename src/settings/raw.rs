//! guard.toml as written: the tables and keys serde reads (unknown keys refused), with their
//! defaults. `super::resolve` turns them into checked [`super::Settings`].

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::Strategy;
use super::alert::RawAlert;
use super::switch::RawSwitch;
use super::watch::RawWatch;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHooks {
    pub(super) before_restart: Option<String>,
    pub(super) after_success: Option<String>,
    pub(super) after_failure: Option<String>,
    pub(super) after_rollback: Option<String>,
    #[serde(default, with = "humantime_serde")]
    pub(super) timeout: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) app: RawApp,
    #[serde(default)]
    pub(super) backup: RawBackup,
    #[serde(default)]
    pub(super) clean: RawClean,
    #[serde(default)]
    pub(super) deploy: RawDeploy,
    pub(super) health: RawHealth,
    #[serde(default)]
    pub(super) pm2: RawPm2,
    #[serde(default)]
    pub(super) redact: RawRedact,
    #[serde(default)]
    pub(super) check: RawCheck,
    #[serde(default)]
    pub(super) watch: RawWatch,
    #[serde(default)]
    pub(super) alert: RawAlert,
    #[serde(default)]
    pub(super) hooks: RawHooks,
    #[serde(default)]
    pub(super) switch: RawSwitch,
}

/// Every (key, value, min, max) within its bounds, or an error naming the first that is not:
/// beyond bounds a person would use, an overflow or a wait of years is a typo.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCheck {
    #[serde(default = "default_max_restarts")]
    pub(super) max_restarts: u32,
    #[serde(default = "default_min_uptime", with = "humantime_serde")]
    pub(super) min_uptime: Duration,
    pub(super) sentry_flag: Option<String>,
}

impl Default for RawCheck {
    fn default() -> Self {
        RawCheck {
            max_restarts: default_max_restarts(),
            min_uptime: default_min_uptime(),
            sentry_flag: None,
        }
    }
}

pub(super) fn default_max_restarts() -> u32 {
    3
}
pub(super) fn default_min_uptime() -> Duration {
    Duration::from_secs(30)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApp {
    pub(super) name: String,
    pub(super) dir: PathBuf,
    pub(super) ecosystem: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackup {
    pub(super) dir: Option<PathBuf>,
    pub(super) files: Option<Vec<PathBuf>>,
    pub(super) keep: Option<usize>,
    #[serde(default)]
    pub(super) exclude: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawClean {
    #[serde(default = "default_clean_paths")]
    pub(super) paths: Vec<PathBuf>,
    #[serde(default = "default_clean_globs")]
    pub(super) globs: Vec<String>,
    #[serde(default = "default_true")]
    pub(super) after_deploy: bool,
}

impl Default for RawClean {
    fn default() -> Self {
        RawClean {
            paths: default_clean_paths(),
            globs: default_clean_globs(),
            after_deploy: true,
        }
    }
}

pub(super) fn default_true() -> bool {
    true
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRedact {
    #[serde(default)]
    pub(super) readable: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDeploy {
    pub(super) command: Option<String>,
    pub(super) strategy: Option<Strategy>,
    pub(super) port_env: Option<String>,
    pub(super) preflight_port: Option<u16>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealth {
    pub(super) url: String,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub(super) timeout: Duration,
    #[serde(default = "default_deadline", with = "humantime_serde")]
    pub(super) deadline: Duration,
    #[serde(default = "default_stable_for", with = "humantime_serde")]
    pub(super) stable_for: Duration,
    #[serde(default = "default_interval", with = "humantime_serde")]
    pub(super) interval: Duration,
    pub(super) expect_body: Option<String>,
    #[serde(default = "default_timeouts_in_a_row")]
    pub(super) timeouts_in_a_row: u32,
    #[serde(default = "default_true")]
    pub(super) load_errors: bool,
}

pub(super) fn default_timeouts_in_a_row() -> u32 {
    3
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPm2 {
    pub(super) bin: Option<PathBuf>,
    pub(super) home: Option<PathBuf>,
    pub(super) node: Option<PathBuf>,
    #[serde(default = "default_pm2_timeout", with = "humantime_serde")]
    pub(super) timeout: Duration,
}

impl Default for RawPm2 {
    fn default() -> Self {
        RawPm2 {
            bin: None,
            home: None,
            node: None,
            timeout: default_pm2_timeout(),
        }
    }
}

pub(super) fn default_pm2_timeout() -> Duration {
    Duration::from_secs(60)
}

pub(super) fn default_clean_paths() -> Vec<PathBuf> {
    vec!["dist".into()]
}
pub(super) fn default_clean_globs() -> Vec<String> {
    vec!["*.tar.gz".into()]
}
pub(super) fn default_timeout() -> Duration {
    Duration::from_secs(2)
}
pub(super) fn default_deadline() -> Duration {
    Duration::from_secs(60)
}
pub(super) fn default_stable_for() -> Duration {
    Duration::from_secs(10)
}
pub(super) fn default_interval() -> Duration {
    Duration::from_millis(250)
}
