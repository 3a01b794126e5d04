//! `[alert]`: where alerts go (webhooks, Slack, Telegram, the heartbeat), each URL or token
//! from guard.toml, an env variable or a file, and which success events each takes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::absolute_from;

/// Where a secret value (a webhook URL, a bot token) comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Secret {
    /// Written in guard.toml.
    Inline(String),
    /// Read from this environment variable.
    Env(String),
    /// Read from this file (first line).
    File(PathBuf),
}

/// A Telegram destination.
#[derive(Debug, Clone)]
pub struct TelegramConfig {
    /// The bot token.
    pub token: Secret,
    /// The chat to post to.
    pub chat_id: String,
    /// The Bot API base URL.
    pub api_url: reqwest::Url,
    /// The success events it also wants.
    pub events: Vec<String>,
}

/// The heartbeat (dead man's switch) ping.
#[derive(Debug, Clone)]
pub struct HeartbeatConfig {
    /// The URL pinged.
    pub url: Secret,
    /// How often.
    pub every: Duration,
}

/// The success events a destination may opt into; problems go to every destination.
pub const SUCCESS_EVENTS: [&str; 3] = ["deploy_started", "deploy_succeeded", "rollback_succeeded"];

/// A webhook or Slack destination.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Its URL.
    pub url: Secret,
    /// The success events it also wants (`events = [...]`); problems always go.
    pub events: Vec<String>,
}

/// `[alert]`: every destination, any number of each.
#[derive(Debug, Clone, Default)]
pub struct AlertConfig {
    /// Generic JSON webhooks.
    pub webhook: Vec<Endpoint>,
    /// Slack incoming webhooks.
    pub slack: Vec<Endpoint>,
    /// Telegram bots.
    pub telegram: Vec<TelegramConfig>,
    /// The heartbeat ping of `guard watch`.
    pub heartbeat: Option<HeartbeatConfig>,
}

impl AlertConfig {
    /// Whether any alert destination is configured (the heartbeat is not one).
    pub fn any(&self) -> bool {
        !self.webhook.is_empty() || !self.slack.is_empty() || !self.telegram.is_empty()
    }

    /// The files secrets are read from (`*_file` settings).
    pub fn secret_files(&self) -> impl Iterator<Item = &Path> {
        self.webhook
            .iter()
            .chain(&self.slack)
            .map(|e| &e.url)
            .chain(self.telegram.iter().map(|t| &t.token))
            .chain(self.heartbeat.iter().map(|h| &h.url))
            .filter_map(|s| match s {
                Secret::File(p) => Some(p.as_path()),
                _ => None,
            })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUrl {
    url: Option<String>,
    url_env: Option<String>,
    url_file: Option<PathBuf>,
    #[serde(default, with = "humantime_serde")]
    every: Option<Duration>,
    #[serde(default)]
    events: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTelegram {
    token: Option<String>,
    token_env: Option<String>,
    token_file: Option<PathBuf>,
    chat_id: String,
    #[serde(default)]
    events: Vec<String>,
    api_url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAlert {
    #[serde(default)]
    webhook: Vec<RawUrl>,
    #[serde(default)]
    slack: Vec<RawUrl>,
    #[serde(default)]
    telegram: Vec<RawTelegram>,
    heartbeat: Option<RawUrl>,
}

/// Exactly one of a value, an env variable name or a file for a secret.
fn secret(
    key: &str,
    value: &Option<String>,
    env: &Option<String>,
    file: &Option<PathBuf>,
    base: &Path,
) -> std::result::Result<Secret, String> {
    match (value, env, file) {
        (Some(v), None, None) if !v.trim().is_empty() => Ok(Secret::Inline(v.clone())),
        (None, Some(e), None) if !e.trim().is_empty() => Ok(Secret::Env(e.clone())),
        (None, None, Some(f)) => Ok(Secret::File(absolute_from(base, f))),
        _ => Err(format!(
            "{key} needs exactly one of {k}, {k}_env (an environment variable) or {k}_file",
            k = if key.contains("telegram") {
                "token"
            } else {
                "url"
            }
        )),
    }
}

/// `events = [...]` of one destination: only the success events may be named (problems go
/// everywhere anyway).
fn success_events(key: &str, events: &[String]) -> std::result::Result<Vec<String>, String> {
    for e in events {
        if !SUCCESS_EVENTS.contains(&e.as_str()) {
            return Err(format!(
                "{key}: events entry {e:?} is not one of {} (problems go to every destination)",
                SUCCESS_EVENTS.join(", ")
            ));
        }
    }
    Ok(events.to_vec())
}

pub(super) fn resolve_alert(
    raw: &RawAlert,
    base: &Path,
) -> std::result::Result<AlertConfig, String> {
    let urls = |key: &str, list: &[RawUrl]| {
        list.iter()
            .enumerate()
            .map(|(i, u)| {
                // Named as in messages at run time: the first [[alert.slack]] is "#1".
                let key = format!("{key} #{}", i + 1);
                if u.every.is_some() {
                    return Err(format!("{key}: `every` belongs to [alert.heartbeat]"));
                }
                Ok(Endpoint {
                    url: secret(&key, &u.url, &u.url_env, &u.url_file, base)?,
                    events: success_events(&key, &u.events)?,
                })
            })
            .collect::<std::result::Result<Vec<_>, String>>()
    };
    let telegram = raw
        .telegram
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let key = format!("alert.telegram #{}", i + 1);
            let api = t.api_url.as_deref().unwrap_or("https://api.telegram.org");
            let api_url =
                reqwest::Url::parse(api).map_err(|e| format!("{key} api_url {api:?}: {e}"))?;
            if t.chat_id.trim().is_empty() {
                return Err(format!("{key}: chat_id must not be empty"));
            }
            Ok(TelegramConfig {
                events: success_events(&key, &t.events)?,
                token: secret(&key, &t.token, &t.token_env, &t.token_file, base)?,
                chat_id: t.chat_id.clone(),
                api_url,
            })
        })
        .collect::<std::result::Result<Vec<_>, String>>()?;
    let heartbeat = match &raw.heartbeat {
        Some(h) => {
            let every = h.every.unwrap_or(Duration::from_secs(60));
            if every < Duration::from_secs(1) || every > Duration::from_secs(24 * 3600) {
                return Err("alert.heartbeat every must be 1s to 24h".into());
            }
            Some(HeartbeatConfig {
                url: secret("alert.heartbeat", &h.url, &h.url_env, &h.url_file, base)?,
                every,
            })
        }
        None => None,
    };
    Ok(AlertConfig {
        webhook: urls("alert.webhook", &raw.webhook)?,
        slack: urls("alert.slack", &raw.slack)?,
        telegram,
        heartbeat,
    })
}
