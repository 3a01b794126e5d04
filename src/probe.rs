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
        let mut outcome = match tokio::time::timeout(self.timeout, self.attempt()).await {
            Ok(o) => o,
            Err(_) => ProbeOutcome::TimedOut(self.timeout),
        };
        // A TLS server closes a plain HTTP request without a word, which looks like an app not
        // up yet: it would be waited for until the deadline. Asked in its own protocol, it
        // answers at once.
        if self.url.scheme() == "http"
            && matches!(&outcome, ProbeOutcome::NotListening(c) if c != "connection refused")
            && self.speaks_tls().await
        {
            outcome = ProbeOutcome::Error(format!(
                "the app answers TLS on {}: use https:// in health.url",
                self.url.port_or_known_default().unwrap_or(80)
            ));
        }
        Probe {
            outcome,
            latency: start.elapsed(),
        }
    }

    /// Whether the server at the URL's host and port answers a TLS ClientHello with a TLS
    /// record (a handshake, or an alert refusing this minimal hello: either is TLS).
    async fn speaks_tls(&self) -> bool {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (Some(host), Some(port)) = (self.url.host_str(), self.url.port_or_known_default())
        else {
            return false;
        };
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let ask = async move {
            let mut s = tokio::net::TcpStream::connect((host.as_str(), port))
                .await
                .ok()?;
            s.write_all(&CLIENT_HELLO).await.ok()?;
            let mut first = [0u8; 1];
            s.read_exact(&mut first).await.ok()?;
            Some(first[0])
        };
        matches!(
            tokio::time::timeout(Duration::from_millis(500), ask).await,
            Ok(Some(0x15 | 0x16))
        )
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

/// A minimal TLS 1.2 ClientHello (one cipher suite, no extensions): enough for a TLS server to
/// answer with a handshake or an alert record.
const CLIENT_HELLO: [u8; 52] = {
    let mut b = [0u8; 52];
    let head = [
        0x16, 0x03, 0x01, 0x00, 0x2f, // record: handshake, TLS 1.0 framing, 47 bytes
        0x01, 0x00, 0x00, 0x2b, // ClientHello, 43 bytes
        0x03, 0x03, // TLS 1.2
    ];
    let mut i = 0;
    while i < head.len() {
        b[i] = head[i];
        i += 1;
    }
    // 32 bytes of "random" stay zero; then the session id, suites, compression, extensions.
    let tail = [0x00, 0x00, 0x02, 0xc0, 0x2f, 0x01, 0x00, 0x00, 0x00];
    let mut j = 0;
    while j < tail.len() {
        b[11 + 32 + j] = tail[j];
        j += 1;
    }
    b
};

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read as _, Write as _};

    fn prober(url: &str) -> Prober {
        Prober::new(&Health {
            url: reqwest::Url::parse(url).unwrap(),
            timeout: Duration::from_millis(700),
            deadline: Duration::from_secs(5),
            stable_for: Duration::ZERO,
            interval: Duration::from_millis(100),
            expect_body: None,
            timeouts_in_a_row: 3,
            load_errors: true,
        })
        .unwrap()
    }

    /// A real server on 127.0.0.1 that answers every connection with `reply` (after reading
    /// the request), then closes; `reply` None keeps the connection open without a word.
    fn serve(reply: Option<Vec<u8>>) -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for s in l.incoming().flatten().take(8) {
                let reply = reply.clone();
                std::thread::spawn(move || {
                    let mut s = s;
                    let mut buf = [0u8; 4096];
                    let _ = s.read(&mut buf);
                    match reply {
                        Some(r) => {
                            let _ = s.write_all(&r);
                        }
                        None => std::thread::sleep(Duration::from_secs(3)),
                    }
                });
            }
        });
        port
    }

    fn http(status: &str, headers: &str, body: &str) -> Option<Vec<u8>> {
        Some(
            format!(
                "HTTP/1.1 {status}\r\ncontent-length: {}\r\n{headers}connection: close\r\n\r\n{body}",
                body.len()
            )
            .into_bytes(),
        )
    }

    async fn outcome(port: u16) -> ProbeOutcome {
        prober(&format!("http://127.0.0.1:{port}/health"))
            .probe()
            .await
            .outcome
    }

    #[tokio::test]
    async fn each_kind_of_answer_is_classified_as_a_verdict_needs_it() {
        let refused = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        assert!(
            matches!(outcome(refused).await, ProbeOutcome::NotListening(c) if c == "connection refused")
        );
        assert_eq!(
            outcome(serve(http("200 OK", "", "ok"))).await,
            ProbeOutcome::Pass(200)
        );
        assert_eq!(
            outcome(serve(http("503 Unavailable", "", ""))).await,
            ProbeOutcome::NotReady
        );
        assert_eq!(
            outcome(serve(http("500 Oops", "", ""))).await,
            ProbeOutcome::Status(500)
        );
        assert!(matches!(
            outcome(serve(http("302 Found", "location: /login\r\n", ""))).await,
            ProbeOutcome::Redirect(302, to) if to == "/login"
        ));
        assert!(matches!(
            outcome(serve(None)).await,
            ProbeOutcome::TimedOut(_)
        ));
    }

    #[tokio::test]
    async fn a_huge_body_is_read_only_up_to_the_cap() {
        let big = "x".repeat(5 * 1024 * 1024);
        let port = serve(http("200 OK", "", &big));
        let p = prober(&format!("http://127.0.0.1:{port}/health"));
        assert_eq!(p.probe().await.outcome, ProbeOutcome::Pass(200));
    }

    #[tokio::test]
    async fn plain_http_to_a_tls_server_fails_at_once_naming_the_scheme() {
        // A TLS server as Node's: it closes a plain request without a word and answers a
        // ClientHello with a TLS record (here an alert).
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for s in l.incoming().flatten().take(8) {
                let mut s = s;
                let mut first = [0u8; 1];
                if s.read_exact(&mut first).is_ok() && first[0] == 0x16 {
                    let _ = s.write_all(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28]);
                }
            }
        });
        match outcome(port).await {
            ProbeOutcome::Error(e) => assert!(e.contains("use https://"), "{e}"),
            other => panic!("{other:?}"),
        }
        // An app that closes without a word and speaks no TLS stays "not listening".
        let closes = serve(Some(Vec::new()));
        assert!(matches!(
            outcome(closes).await,
            ProbeOutcome::NotListening(_)
        ));
    }
}
