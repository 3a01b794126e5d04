//! Alerts: one JSON shape, rendered for each kind of destination (a generic webhook, Slack's
//! incoming webhooks, Telegram's Bot API), delivered with retries and backoff, never carrying
//! a secret; and the heartbeat ping of `guard watch`.
//!
//! Destination URLs and tokens are secrets themselves (a Slack webhook URL is its own
//! password): they are read from guard.toml, an env variable or a file, registered with the
//! redactor, and a destination is named in messages only as `slack #1`.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::redact::Redactor;
use crate::settings::{AlertConfig, Secret};

/// How bad an event is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// A problem cleared.
    Info,
    /// Something to look at; the service answers.
    Warning,
    /// The service is down or not verified healthy: act now.
    Critical,
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        })
    }
}

/// One alert, as POSTed to a generic webhook.
#[derive(Debug, Clone, Serialize)]
pub struct Alert {
    /// The shape version of this document.
    pub schema: u32,
    /// The PM2 app.
    pub app: String,
    /// This host.
    pub host: String,
    /// What happened, one word: `crash`, `crash_loop`, `recovered`...
    pub event: String,
    /// How bad.
    pub severity: Severity,
    /// One line for a person.
    pub message: String,
    /// When it was seen, RFC 3339 UTC.
    pub at: String,
    /// The incident to go back to, or the one a rollback used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub incident: Option<String>,
    /// How many (restarts of a crash loop, failed probes...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// For `recovered`: the event that cleared.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolves: Option<String>,
    /// What a deploy was asked to deploy (`--ref`).
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    pub git_ref: Option<String>,
}

impl Alert {
    /// An alert about `app` on this host, now.
    pub fn new(app: &str, event: &str, severity: Severity, message: impl Into<String>) -> Alert {
        Alert {
            schema: crate::output::SCHEMA,
            app: app.to_string(),
            host: crate::origin::host(),
            event: event.to_string(),
            severity,
            message: message.into(),
            at: crate::origin::now_rfc3339(),
            incident: None,
            count: None,
            resolves: None,
            git_ref: None,
        }
    }

    /// The one line a chat message or a log shows.
    pub fn text(&self) -> String {
        let mut t = format!(
            "[{}] {} on {}: {}",
            self.severity.to_string().to_uppercase(),
            self.app,
            self.host,
            self.message
        );
        if let Some(id) = &self.incident {
            t.push_str(&format!(" (incident {id})"));
        }
        t
    }
}

/// Where an alert goes.
#[derive(Debug, Clone)]
enum Kind {
    Webhook(reqwest::Url),
    Slack(reqwest::Url),
    Telegram {
        endpoint: reqwest::Url,
        chat_id: String,
    },
}

/// One destination, with the name messages use for it.
#[derive(Debug, Clone)]
struct Destination {
    name: String,
    kind: Kind,
    /// The success events it opted into.
    events: Vec<String>,
}

impl Destination {
    /// Whether this alert goes here: every problem does, a success event only if named.
    fn wants(&self, event: &str) -> bool {
        !crate::settings::SUCCESS_EVENTS.contains(&event) || self.events.iter().any(|e| e == event)
    }
}

/// The body sent to a destination.
fn body(kind: &Kind, alert: &Alert) -> serde_json::Value {
    match kind {
        Kind::Webhook(_) => serde_json::to_value(alert).unwrap_or_default(),
        Kind::Slack(_) => serde_json::json!({ "text": alert.text() }),
        Kind::Telegram { chat_id, .. } => serde_json::json!({
            "chat_id": chat_id,
            "text": alert.text(),
            "disable_web_page_preview": true,
        }),
    }
}

/// How often a failing destination is tried again.
#[derive(Debug, Clone)]
pub struct Retry {
    /// The waits before the second, third... attempt.
    pub waits: Vec<Duration>,
}

impl Retry {
    /// For `guard watch`: backoff from 0.5 s to 30 s, about a minute and a half in all.
    pub fn watch() -> Retry {
        Retry {
            waits: [500, 1000, 2000, 4000, 8000, 16000, 30000]
                .map(Duration::from_millis)
                .to_vec(),
        }
    }

    /// For the end of a deploy or rollback: at most a few seconds more.
    pub fn short() -> Retry {
        Retry {
            waits: [500, 1000, 2000].map(Duration::from_millis).to_vec(),
        }
    }
}

/// What one attempt came to.
#[derive(Debug, PartialEq)]
enum Attempt {
    Delivered,
    /// Worth trying again (no connection, 5xx, 429), after at least the wait the
    /// destination asked for, if it named one (`Retry-After`, Telegram's `retry_after`).
    Retry(String, Option<Duration>),
    /// Trying again will not help (a 4xx: a wrong token or URL).
    GiveUp(String),
}

/// The longest wait a destination may ask for before one retry: beyond it, the alert is
/// retried sooner (and is likely late anyway).
const MAX_ASKED: Duration = Duration::from_secs(300);

/// `Retry-After: 30` (seconds; an HTTP date is left to the backoff).
fn retry_after_header(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// Telegram's `{"ok": false, "parameters": {"retry_after": 30}}`.
fn retry_after_body(body: &[u8]) -> Option<Duration> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v["parameters"]["retry_after"]
        .as_u64()
        .map(Duration::from_secs)
}

/// The wait before a retry: the planned backoff spread by `jitter` (0..1 -> 80% to 120%, so a
/// fleet of watchers does not retry in step), and never shorter than what the destination
/// asked for (at most [`MAX_ASKED`]).
fn backoff(planned: Duration, asked: Option<Duration>, jitter: f64) -> Duration {
    let spread = planned.mul_f64(0.8 + 0.4 * jitter.clamp(0.0, 1.0));
    match asked {
        Some(a) => spread.max(a.min(MAX_ASKED)),
        None => spread,
    }
}

/// A number in 0..1 from the kernel's random bytes (0.5 if they cannot be read).
fn jitter() -> f64 {
    let mut b = [0u8; 2];
    match rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty()) {
        Ok(2) => f64::from(u16::from_le_bytes(b)) / f64::from(u16::MAX),
        _ => 0.5,
    }
}

/// Resolve a secret's value (env variable or file read now).
pub fn secret_value(secret: &Secret, key: &str) -> Result<String> {
    match secret {
        Secret::Inline(v) => Ok(v.trim().to_string()),
        Secret::Env(name) => match std::env::var(name) {
            Ok(v) if !v.trim().is_empty() => Ok(v.trim().to_string()),
            _ => bail!("{key}: environment variable {name} is not set"),
        },
        Secret::File(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("{key}: reading {}", path.display()))?;
            match text.lines().map(str::trim).find(|l| !l.is_empty()) {
                Some(v) => Ok(v.to_string()),
                None => bail!("{key}: {} is empty", path.display()),
            }
        }
    }
}

fn parse_url(value: &str, key: &str) -> Result<reqwest::Url> {
    // The URL is a secret: the parse error must not echo it.
    let url =
        reqwest::Url::parse(value).map_err(|e| anyhow::anyhow!("{key}: not a valid URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") {
        bail!("{key}: the URL must be http:// or https://");
    }
    Ok(url)
}

/// Every alert destination of one app, ready to send.
#[derive(Debug, Clone)]
pub struct Alerter {
    client: reqwest::Client,
    dests: Vec<Destination>,
    redactor: Redactor,
}

impl Alerter {
    /// Read every destination's URL or token (registering each as a secret with `redactor`,
    /// which is then used for every body sent).
    pub fn new(cfg: &AlertConfig, redactor: &mut Redactor) -> Result<Alerter> {
        let mut dests = Vec::new();
        for (i, s) in cfg.webhook.iter().enumerate() {
            let key = format!("alert.webhook #{}", i + 1);
            let v = secret_value(&s.url, &key)?;
            redactor.add_secret(&v);
            dests.push(Destination {
                kind: Kind::Webhook(parse_url(&v, &key)?),
                name: format!("webhook #{}", i + 1),
                events: s.events.clone(),
            });
        }
        for (i, s) in cfg.slack.iter().enumerate() {
            let key = format!("alert.slack #{}", i + 1);
            let v = secret_value(&s.url, &key)?;
            redactor.add_secret(&v);
            dests.push(Destination {
                kind: Kind::Slack(parse_url(&v, &key)?),
                name: format!("slack #{}", i + 1),
                events: s.events.clone(),
            });
        }
        for (i, t) in cfg.telegram.iter().enumerate() {
            let key = format!("alert.telegram #{}", i + 1);
            let token = secret_value(&t.token, &key)?;
            redactor.add_secret(&token);
            // Not Url::join: a token is `123:ABC`, which a join would read as a URL scheme.
            let endpoint = parse_url(
                &format!(
                    "{}/bot{token}/sendMessage",
                    t.api_url.as_str().trim_end_matches('/')
                ),
                &key,
            )?;
            dests.push(Destination {
                kind: Kind::Telegram {
                    endpoint,
                    chat_id: t.chat_id.clone(),
                },
                name: format!("telegram #{}", i + 1),
                events: t.events.clone(),
            });
        }
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .connect_timeout(Duration::from_secs(3))
            .user_agent(concat!("guard/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("building the HTTP client for alerts")?;
        Ok(Alerter {
            client,
            dests,
            redactor: redactor.clone(),
        })
    }

    /// No destination configured.
    pub fn is_empty(&self) -> bool {
        self.dests.is_empty()
    }

    /// The names of the destinations (`slack #1`...), for messages.
    pub fn names(&self) -> Vec<String> {
        self.dests.iter().map(|d| d.name.clone()).collect()
    }

    /// The destinations this event goes to.
    pub fn names_for(&self, event: &str) -> Vec<String> {
        self.dests
            .iter()
            .filter(|d| d.wants(event))
            .map(|d| d.name.clone())
            .collect()
    }

    async fn attempt(&self, dest: &Destination, alert: &Alert) -> Attempt {
        let url = match &dest.kind {
            Kind::Webhook(u) | Kind::Slack(u) => u,
            Kind::Telegram { endpoint, .. } => endpoint,
        };
        // Masked as a whole: no value of the app's env files leaves the machine.
        let text = self.redactor.redact(&body(&dest.kind, alert).to_string());
        let sent = self
            .client
            .post(url.clone())
            .header("content-type", "application/json")
            .body(text)
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => Attempt::Delivered,
            Ok(r) if r.status().is_server_error() || r.status().as_u16() == 429 => {
                let status = r.status().as_u16();
                let header = r
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(retry_after_header);
                // Telegram says it in the body: {"parameters": {"retry_after": 5}}.
                let body = match header {
                    Some(_) => None,
                    None => tokio::time::timeout(Duration::from_secs(2), r.bytes())
                        .await
                        .ok()
                        .and_then(Result::ok),
                };
                let asked = header.or_else(|| body.as_deref().and_then(retry_after_body));
                Attempt::Retry(format!("HTTP {status}"), asked)
            }
            Ok(r) => Attempt::GiveUp(format!("HTTP {}", r.status().as_u16())),
            // reqwest's messages name the URL, which holds the token.
            Err(e) => Attempt::Retry(self.redactor.redact(&e.without_url().to_string()), None),
        }
    }

    /// Deliver to destination `index`, trying again after each of `retry.waits`; the error
    /// says how it last failed.
    async fn deliver_to(&self, index: usize, alert: &Alert, retry: &Retry) -> Result<u32> {
        let dest = &self.dests[index];
        let mut tries = 0;
        let mut waits = retry.waits.iter();
        loop {
            tries += 1;
            match self.attempt(dest, alert).await {
                Attempt::Delivered => return Ok(tries),
                Attempt::GiveUp(why) => {
                    bail!("{}: {why}, not retried (check its URL or token)", dest.name)
                }
                Attempt::Retry(why, asked) => match waits.next() {
                    Some(w) => {
                        let w = backoff(*w, asked, jitter());
                        tracing::info!("alert to {} failed ({why}); retrying in {w:?}", dest.name);
                        tokio::time::sleep(w).await;
                    }
                    None => bail!("{}: {why}, after {tries} attempts", dest.name),
                },
            }
        }
    }

    /// Deliver one alert to every destination at once; one line per destination that failed.
    pub async fn deliver(&self, alert: &Alert, retry: &Retry) -> Vec<String> {
        let mut set = tokio::task::JoinSet::new();
        for i in 0..self.dests.len() {
            if !self.dests[i].wants(&alert.event) {
                continue;
            }
            let (me, alert, retry) = (self.clone(), alert.clone(), retry.clone());
            set.spawn(async move { me.deliver_to(i, &alert, &retry).await });
        }
        let mut failed = Vec::new();
        while let Some(r) = set.join_next().await {
            match r {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => failed.push(format!("{e:#}")),
                Err(e) => failed.push(format!("alert delivery task: {e}")),
            }
        }
        failed
    }

    /// A queue per destination, delivered in order in the background: a slow or failing
    /// destination neither delays the watcher nor reorders another's alerts.
    pub fn spawn_queues(
        &self,
        retry: Retry,
        tally: Option<std::sync::Arc<crate::metrics::Deliveries>>,
    ) -> Queues {
        let mut senders = Vec::new();
        let mut tasks = Vec::new();
        for i in 0..self.dests.len() {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Alert>();
            let me = self.clone();
            let retry = retry.clone();
            let tally = tally.clone();
            tasks.push(tokio::spawn(async move {
                use std::sync::atomic::Ordering::Relaxed;
                while let Some(alert) = rx.recv().await {
                    let delivered = me.deliver_to(i, &alert, &retry).await;
                    if let Some(t) = &tally {
                        match delivered {
                            Ok(_) => t.sent.fetch_add(1, Relaxed),
                            Err(_) => t.failed.fetch_add(1, Relaxed),
                        };
                    }
                    if let Err(e) = &delivered {
                        tracing::warn!("alert {} not delivered: {e:#}", alert.event);
                    }
                }
            }));
            senders.push(tx);
        }
        Queues { senders, tasks }
    }
}

/// The background delivery queues of `guard watch`.
pub struct Queues {
    senders: Vec<tokio::sync::mpsc::UnboundedSender<Alert>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Queues {
    /// Queue an alert for every destination.
    pub fn send(&self, alert: &Alert) {
        for s in &self.senders {
            let _ = s.send(alert.clone());
        }
    }

    /// Stop taking alerts and give those queued up to `limit` to go out.
    pub async fn drain(self, limit: Duration) {
        drop(self.senders);
        let all = async {
            for t in self.tasks {
                let _ = t.await;
            }
        };
        let _ = tokio::time::timeout(limit, all).await;
    }
}

/// The heartbeat: a GET to the URL; a failure is logged, and the next beat is the retry.
pub struct Heartbeat {
    client: reqwest::Client,
    url: reqwest::Url,
    redactor: Redactor,
    /// How often.
    pub every: Duration,
}

impl Heartbeat {
    /// The heartbeat of `[alert.heartbeat]`, its URL registered as a secret.
    pub fn new(cfg: &AlertConfig, redactor: &mut Redactor) -> Result<Option<Heartbeat>> {
        let Some(h) = &cfg.heartbeat else {
            return Ok(None);
        };
        let v = secret_value(&h.url, "alert.heartbeat")?;
        redactor.add_secret(&v);
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .context("building the HTTP client for the heartbeat")?;
        Ok(Some(Heartbeat {
            client,
            url: parse_url(&v, "alert.heartbeat")?,
            redactor: redactor.clone(),
            every: h.every,
        }))
    }

    /// One ping.
    pub async fn beat(&self) {
        match self.client.get(self.url.clone()).send().await {
            Ok(r) if r.status().is_success() => {}
            Ok(r) => tracing::warn!("heartbeat answered HTTP {}", r.status().as_u16()),
            Err(e) => tracing::warn!(
                "heartbeat failed: {}",
                self.redactor.redact(&e.without_url().to_string())
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retry_waits_what_the_destination_asked_and_spreads_the_rest() {
        let s = Duration::from_secs;
        assert_eq!(retry_after_header(" 7 "), Some(s(7)));
        assert_eq!(retry_after_header("Wed, 21 Oct 2026 07:28:00 GMT"), None);
        assert_eq!(
            retry_after_body(br#"{"ok":false,"error_code":429,"parameters":{"retry_after":12}}"#),
            Some(s(12))
        );
        assert_eq!(retry_after_body(b"not json"), None);
        // Jitter spreads the planned wait by +-20%.
        assert_eq!(backoff(s(10), None, 0.0), s(8));
        assert_eq!(backoff(s(10), None, 1.0), s(12));
        // A destination's own wait wins over a shorter backoff, up to a limit.
        assert_eq!(backoff(Duration::from_millis(500), Some(s(5)), 0.5), s(5));
        assert_eq!(backoff(s(30), Some(s(1)), 0.5), s(30));
        assert_eq!(backoff(s(1), Some(s(3600)), 0.5), MAX_ASKED);
        let j = jitter();
        assert!((0.0..=1.0).contains(&j));
    }

    fn alert() -> Alert {
        let mut a = Alert::new("api", "crash_loop", Severity::Critical, "4 restarts in 60s");
        a.host = "web-1".into();
        a.count = Some(4);
        a.incident = Some("20261128-101010".into());
        a
    }

    #[test]
    fn each_destination_gets_its_own_body() {
        let a = alert();
        let url = reqwest::Url::parse("http://127.0.0.1:1/x").unwrap();
        let hook = body(&Kind::Webhook(url.clone()), &a);
        for key in [
            "app", "host", "event", "severity", "message", "at", "incident",
        ] {
            assert!(hook.get(key).is_some(), "webhook body lacks {key}: {hook}");
        }
        assert_eq!(hook["severity"], "critical");
        assert_eq!(hook["count"], 4);
        let slack = body(&Kind::Slack(url.clone()), &a);
        assert_eq!(
            slack["text"],
            "[CRITICAL] api on web-1: 4 restarts in 60s (incident 20261128-101010)"
        );
        let tg = body(
            &Kind::Telegram {
                endpoint: url,
                chat_id: "-100".into(),
            },
            &a,
        );
        assert_eq!(tg["chat_id"], "-100");
        assert_eq!(tg["text"], slack["text"]);
    }

    #[test]
    fn secrets_come_from_env_or_file_and_name_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("token");
        std::fs::write(&f, "\n  abc:DEF \n").unwrap();
        assert_eq!(secret_value(&Secret::File(f), "k").unwrap(), "abc:DEF");
        let e = secret_value(
            &Secret::Env("GUARD_TEST_SURELY_UNSET_VAR".into()),
            "alert.slack #1",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("GUARD_TEST_SURELY_UNSET_VAR") && e.contains("alert.slack #1"));
    }

    #[test]
    fn a_bad_url_is_refused_without_echoing_it() {
        let e = parse_url("hooks.slack.com/services/T0/B0/SECRET", "alert.slack #1")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("SECRET"), "{e}");
        assert!(parse_url("ftp://x/y", "k").is_err());
    }
}
