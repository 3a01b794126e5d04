//! One HTTP probe of the health URL, classified the way a verdict needs it.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::settings::Health;

/// Bodies are read up to this size: enough for any health document, and a 50 MB answer cannot
/// make guard allocate 50 MB.
const BODY_CAP: usize = 64 * 1024;

/// What one probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// 2xx (and the expected body, if configured).
    Pass(u16),
    /// Nothing listens yet (connection refused or reset before an answer).
    NotListening(String),
    /// The app answered 503: up but not ready.
    NotReady,
    /// Answered with a failing status.
    Status(u16),
    /// 2xx without the expected text in its body.
    BodyMismatch(u16),
    /// A redirect: never followed (a `/health` that sends to `/login` is not healthy).
    Redirect(u16, String),
    /// No complete answer within health.timeout.
    TimedOut(Duration),
    /// Any other error (bad host name, TLS...).
    Error(String),
}

impl ProbeOutcome {
    /// Whether the probe passed.
    pub fn passed(&self) -> bool {
        matches!(self, ProbeOutcome::Pass(_))
    }

    /// The HTTP status, when there was an answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            ProbeOutcome::Pass(s) | ProbeOutcome::Status(s) | ProbeOutcome::BodyMismatch(s) => {
                Some(*s)
            }
            ProbeOutcome::NotReady => Some(503),
            _ => None,
        }
    }

    /// Whether this is the app's own answer that it is broken, as opposed to "not up yet".
    pub fn is_definite_failure(&self) -> bool {
        matches!(
            self,
            ProbeOutcome::Status(_)
                | ProbeOutcome::BodyMismatch(_)
                | ProbeOutcome::Redirect(..)
                | ProbeOutcome::TimedOut(_)
                | ProbeOutcome::Error(_)
        )
    }
}

impl std::fmt::Display for ProbeOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProbeOutcome::Pass(s) => write!(f, "HTTP {s}"),
            ProbeOutcome::NotListening(e) => write!(f, "not listening ({e})"),
            ProbeOutcome::NotReady => write!(f, "HTTP 503 (not ready)"),
            ProbeOutcome::Status(s) => write!(f, "health {s}"),
            ProbeOutcome::BodyMismatch(s) => write!(f, "HTTP {s} without the expected body text"),
            ProbeOutcome::Redirect(s, to) => {
                write!(f, "health {s}: a redirect to {to} (not followed)")
            }
            ProbeOutcome::TimedOut(t) => write!(
                f,
                "health timed out after {}",
                humantime::format_duration(*t)
            ),
            ProbeOutcome::Error(e) => write!(f, "health probe failed: {e}"),
        }
    }
}

impl ProbeOutcome {
    /// A short machine word for JSON: pass, not_listening, not_ready, status, body_mismatch,
    /// timed_out, error.
    pub fn kind(&self) -> &'static str {
        match self {
            ProbeOutcome::Pass(_) => "pass",
            ProbeOutcome::NotListening(_) => "not_listening",
            ProbeOutcome::NotReady => "not_ready",
            ProbeOutcome::Status(_) => "status",
            ProbeOutcome::BodyMismatch(_) => "body_mismatch",
            ProbeOutcome::Redirect(..) => "redirect",
            ProbeOutcome::TimedOut(_) => "timed_out",
            ProbeOutcome::Error(_) => "error",
        }
    }
}

impl serde::Serialize for ProbeOutcome {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("ProbeOutcome", 3)?;
        st.serialize_field("kind", self.kind())?;
        st.serialize_field("http_status", &self.status())?;
        st.serialize_field("text", &self.to_string())?;
        st.end()
    }
}

/// A probe result with its latency.
#[derive(Debug, Clone)]
pub struct Probe {
    /// What it found.
    pub outcome: ProbeOutcome,
    /// How long it took.
    pub latency: Duration,
}

/// Probes one URL; cheap to clone.
#[derive(Debug, Clone)]
pub struct Prober {
    client: reqwest::Client,
    url: reqwest::Url,
    timeout: Duration,
    expect_body: Option<String>,
}

impl Prober {
    /// A prober for these health settings.
    pub fn new(health: &Health) -> Result<Prober> {
        let client = reqwest::Client::builder()
            // A health URL on localhost must never go through an operator's HTTP_PROXY.
            .no_proxy()
            // A redirect is an answer about something else: it fails the probe.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(health.timeout)
            .user_agent(concat!("guard/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("building the HTTP client")?;
        Ok(Prober {
            client,
            url: health.url.clone(),
            timeout: health.timeout,
            expect_body: health.expect_body.clone(),
        })
    }

    /// The URL probed.
    pub fn url(&self) -> &reqwest::Url {
        &self.url
    }

    /// Probe once.
    pub async fn probe(&self) -> Probe {
        let start = Instant::now();
        let outcome = match tokio::time::timeout(self.timeout, self.attempt()).await {
            Ok(o) => o,
            Err(_) => ProbeOutcome::TimedOut(self.timeout),
        };
        Probe {
            outcome,
            latency: start.elapsed(),
        }
    }

    async fn attempt(&self) -> ProbeOutcome {
        let mut resp = match self.client.get(self.url.clone()).send().await {
            Ok(r) => r,
            Err(e) => return classify(&e, self.timeout),
        };
        let status = resp.status().as_u16();
        if (300..400).contains(&status) {
            let to = resp
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("nowhere")
                .chars()
                .take(200)
                .collect();
            return ProbeOutcome::Redirect(status, to);
        }
        // Read the body up to the cap even when no text is expected, so an answer that hangs
        // after its headers counts as a hang; past the cap the connection is dropped.
        let mut body = Vec::new();
        while body.len() < BODY_CAP {
            match resp.chunk().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                Ok(None) => break,
                Err(e) => return classify(&e, self.timeout),
            }
        }
        if !(200..300).contains(&status) {
            return if status == 503 {
                ProbeOutcome::NotReady
            } else {
                ProbeOutcome::Status(status)
            };
        }
        match &self.expect_body {
            Some(text) if !String::from_utf8_lossy(&body).contains(text.as_str()) => {
                ProbeOutcome::BodyMismatch(status)
            }
            _ => ProbeOutcome::Pass(status),
        }
    }
}

fn classify(e: &reqwest::Error, timeout: Duration) -> ProbeOutcome {
    if e.is_timeout() {
        return ProbeOutcome::TimedOut(timeout);
    }
    let chain = error_chain(e).to_lowercase();
    if chain.contains("dns error") || chain.contains("failed to lookup") {
        return ProbeOutcome::Error(format!("cannot resolve the health host: {chain}"));
    }
    // Something listens but speaks another protocol: TLS on a plain server or the reverse.
    // That will not change by waiting, so it fails at once.
    if [
        "tls",
        "certificate",
        "corrupt message",
        "invalid http version",
        "invalidcontenttype",
    ]
    .iter()
    .any(|m| chain.contains(m))
    {
        return ProbeOutcome::Error(format!(
            "TLS or scheme mismatch (is health.url http:// or https:// as the app serves?): {chain}"
        ));
    }
    if e.is_connect() || chain.contains("connection reset") || chain.contains("connection closed") {
        return ProbeOutcome::NotListening(short_cause(&chain));
    }
    ProbeOutcome::Error(chain)
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        parts.push(s.to_string());
        source = s.source();
    }
    parts.join(": ")
}

fn short_cause(chain: &str) -> String {
    if chain.contains("refused") {
        "connection refused".into()
    } else if chain.contains("reset") {
        "connection reset".into()
    } else if chain.contains("closed") {
        "connection closed".into()
    } else {
        chain.rsplit(": ").next().unwrap_or(chain).to_string()
    }
}
