//! `guard watch --metrics ADDR`: what the watcher sees, as Prometheus text (format 0.0.4) on
//! `GET /metrics`. The numbers are kept by the watcher as it goes (no extra pm2 call or probe
//! per scrape); a scrape only renders them. Nothing secret is in them: the app's name, counts,
//! times.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Alerts handed to a destination and delivered, or given up on after the retries.
#[derive(Debug, Default)]
pub struct Deliveries {
    /// Delivered.
    pub sent: AtomicU64,
    /// Not delivered.
    pub failed: AtomicU64,
}

/// What the watcher has seen so far.
#[derive(Debug, Default, Clone)]
pub struct Metrics {
    /// Instances PM2 knows, at the last look.
    pub instances: u64,
    /// Of those, online.
    pub online: u64,
    /// PM2's restart counters, summed.
    pub restarts: u64,
    /// Events reported, by name (`crash`, `crash_loop`, `health_failing`...).
    pub events: BTreeMap<String, u64>,
    /// Whether the last health probe passed (None before the first).
    pub probe_passed: Option<bool>,
    /// How long the last probe took.
    pub probe_seconds: f64,
    /// Health probes sent.
    pub probes: u64,
    /// Of those, failed.
    pub probes_failed: u64,
    /// The app's last deploy: when (Unix seconds) and whether it succeeded.
    pub last_deploy: Option<(f64, bool)>,
    /// Automatic rollbacks run.
    pub rollbacks: u64,
}

/// The metrics, shared between the watcher and the server.
pub type Shared = Arc<Mutex<Metrics>>;

/// A label value as the text format wants it.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    /// The Prometheus text of these metrics for `app`.
    pub fn render(&self, app: &str, deliveries: &Deliveries) -> String {
        let app = format!("app=\"{}\"", label(app));
        let mut out = String::new();
        let mut one = |name: &str, kind: &str, help: &str, values: &[(String, String)]| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (labels, value) in values {
                let _ = writeln!(out, "{name}{{{labels}}} {value}");
            }
        };
        let v = |x: u64| vec![(app.clone(), x.to_string())];
        one(
            "guard_instances",
            "gauge",
            "Instances of the app PM2 knows, at the watcher's last look.",
            &v(self.instances),
        );
        one(
            "guard_instances_online",
            "gauge",
            "Instances of the app PM2 shows online.",
            &v(self.online),
        );
        one(
            "guard_pm2_restarts",
            "gauge",
            "PM2's restart counters of the app's instances, summed (reset by a deploy).",
            &v(self.restarts),
        );
        let crash = self.events.get("crash").copied().unwrap_or(0)
            + self.events.get("crash_loop").copied().unwrap_or(0);
        one(
            "guard_crash_episodes_total",
            "counter",
            "Crash episodes reported (each begins with one crash or crash_loop event).",
            &v(crash),
        );
        let events: Vec<(String, String)> = self
            .events
            .iter()
            .map(|(e, n)| (format!("{app},event=\"{}\"", label(e)), n.to_string()))
            .collect();
        one(
            "guard_events_total",
            "counter",
            "Events reported, by event.",
            &events,
        );
        if let Some(passed) = self.probe_passed {
            one(
                "guard_health_probe_success",
                "gauge",
                "1 when the last health probe passed.",
                &v(u64::from(passed)),
            );
            one(
                "guard_health_probe_duration_seconds",
                "gauge",
                "How long the last health probe took.",
                &[(app.clone(), format!("{:.6}", self.probe_seconds))],
            );
        }
        one(
            "guard_health_probes_total",
            "counter",
            "Health probes sent.",
            &v(self.probes),
        );
        one(
            "guard_health_probe_failures_total",
            "counter",
            "Health probes that failed.",
            &v(self.probes_failed),
        );
        if let Some((at, ok)) = self.last_deploy {
            one(
                "guard_last_deploy_timestamp_seconds",
                "gauge",
                "When the app's last guard deploy ended (Unix time).",
                &[(app.clone(), format!("{at:.3}"))],
            );
            one(
                "guard_last_deploy_success",
                "gauge",
                "1 when the app's last guard deploy succeeded (exit 0).",
                &v(u64::from(ok)),
            );
        }
        one(
            "guard_alerts_sent_total",
            "counter",
            "Alerts delivered to a destination.",
            &v(deliveries.sent.load(Ordering::Relaxed)),
        );
        one(
            "guard_alerts_failed_total",
            "counter",
            "Alerts a destination never took, after the retries.",
            &v(deliveries.failed.load(Ordering::Relaxed)),
        );
        one(
            "guard_rollbacks_total",
            "counter",
            "Automatic rollbacks run by guard watch.",
            &v(self.rollbacks),
        );
        out
    }
}

/// Serve `GET /metrics` on `addr` until the runtime ends. A bind failure is an error naming
/// the address.
pub async fn serve(
    addr: &str,
    app: String,
    metrics: Shared,
    deliveries: Arc<Deliveries>,
) -> Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("--metrics {addr}: cannot listen there"))?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                continue;
            };
            let (app, metrics, deliveries) = (app.clone(), metrics.clone(), deliveries.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut len = 0;
                // The request head only; a client that says nothing in 5 s is dropped.
                let read = async {
                    while len < buf.len() {
                        let n = conn.read(&mut buf[len..]).await.ok()?;
                        if n == 0 {
                            break;
                        }
                        len += n;
                        if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                            break;
                        }
                    }
                    Some(())
                };
                if tokio::time::timeout(Duration::from_secs(5), read)
                    .await
                    .ok()
                    .flatten()
                    .is_none()
                {
                    return;
                }
                let head = String::from_utf8_lossy(&buf[..len]);
                let mut words = head.split_whitespace();
                let (method, path) = (words.next(), words.next());
                let path = path.map(|p| p.split('?').next().unwrap_or(p));
                let (status, kind, body) = if method == Some("GET") && path == Some("/metrics") {
                    let text = metrics
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .render(&app, &deliveries);
                    ("200 OK", "text/plain; version=0.0.4; charset=utf-8", text)
                } else {
                    (
                        "404 Not Found",
                        "text/plain; charset=utf-8",
                        "guard watch serves GET /metrics only\n".to_string(),
                    )
                };
                let reply = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(reply.as_bytes()).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_has_help_type_and_escaped_labels() {
        let mut m = Metrics {
            instances: 2,
            online: 1,
            restarts: 3,
            probe_passed: Some(false),
            probe_seconds: 0.25,
            probes: 10,
            probes_failed: 1,
            last_deploy: Some((1_764_672_000.5, true)),
            ..Metrics::default()
        };
        m.events.insert("crash".into(), 2);
        m.events.insert("crash_loop".into(), 1);
        let d = Deliveries::default();
        d.sent.store(4, Ordering::Relaxed);
        let text = m.render("api \"x\"", &d);
        assert!(text.contains("# TYPE guard_instances_online gauge\n"));
        assert!(
            text.contains("guard_instances_online{app=\"api \\\"x\\\"\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("guard_crash_episodes_total{app=\"api \\\"x\\\"\"} 3\n"));
        assert!(text.contains("event=\"crash_loop\"} 1\n"));
        assert!(text.contains("guard_health_probe_success{app=\"api \\\"x\\\"\"} 0\n"));
        assert!(text.contains("guard_alerts_sent_total{app=\"api \\\"x\\\"\"} 4\n"));
        assert!(text.contains("guard_last_deploy_success{app=\"api \\\"x\\\"\"} 1\n"));
        // Every sample line follows its HELP and TYPE; counters end in _total.
        for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
            let mut w = line.split_whitespace().skip(2);
            let (name, kind) = (w.next().unwrap(), w.next().unwrap());
            assert_eq!(kind == "counter", name.ends_with("_total"), "{line}");
        }
    }

    #[test]
    fn before_the_first_probe_no_probe_result_is_made_up() {
        let text = Metrics::default().render("api", &Deliveries::default());
        assert!(!text.contains("guard_health_probe_success"));
        assert!(!text.contains("guard_last_deploy"));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn it_answers_get_metrics_and_nothing_else() {
        let shared: Shared = Arc::default();
        shared.lock().unwrap().online = 1;
        let addr = serve(
            "127.0.0.1:0",
            "api".into(),
            shared,
            Arc::new(Deliveries::default()),
        )
        .await
        .unwrap();
        let get = |path: &'static str| async move {
            let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
            c.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut s = String::new();
            c.read_to_string(&mut s).await.unwrap();
            s
        };
        let ok = get("/metrics").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK"), "{ok}");
        assert!(ok.contains("guard_instances_online{app=\"api\"} 1"));
        assert!(get("/").await.starts_with("HTTP/1.1 404"));
        assert!(
            serve("256.0.0.1:1", "api".into(), Arc::default(), Arc::default())
                .await
                .is_err()
        );
    }
}
