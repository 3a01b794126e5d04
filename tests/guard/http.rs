//! The test HTTP servers and clients: a canned-answer server, a GET with a fresh connection,
//! the alert receiver (records what guard sends, can fail the first requests), and the
//! 50 ms poller that counts failed requests through a deploy.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// A stub HTTP server on 127.0.0.1 for odd health endpoints: each of up to 20 connections
/// gets its request read and is then handed to `respond`. Returns the port.
pub fn serve(respond: fn(&mut TcpStream)) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(20) {
            let Ok(mut s) = stream else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf);
                respond(&mut s);
            });
        }
    });
    port
}

/// A minimal HTTP/1.0 GET on 127.0.0.1, returning status and body.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    http_get_why(port, path).ok()
}

/// [`http_get`], saying why there was no answer (refused, reset, timed out, cut short).
pub fn http_get_why(port: u16, path: &str) -> Result<(u16, String), String> {
    let t = Instant::now();
    let why = |what: &str, e: std::io::Error| format!("{what}: {e} after {:?}", t.elapsed());
    let mut s = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(2))
        .map_err(|e| why("connect", e))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))
        .map_err(|e| why("socket", e))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").map_err(|e| why("write", e))?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).map_err(|e| why("read", e))?;
    let status = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status line in {buf:?} after {:?}", t.elapsed()))?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// Poll `f` every 50 ms until it is true or `limit` passes.
pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    while t.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub body: String,
    /// The status it was answered with.
    pub status: u16,
    pub at: Instant,
}

/// A real HTTP receiver on 127.0.0.1 standing in for the alert destinations (a webhook
/// endpoint, Slack, Telegram's Bot API, a heartbeat service), which cannot be reached from
/// here. It records every request, and answers 500 to the first `fail_first` POSTs.
pub struct Receiver {
    pub port: u16,
    log: std::sync::Arc<std::sync::Mutex<Vec<Received>>>,
}

impl Receiver {
    pub fn start(fail_first: usize) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let fails = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(fail_first));
        let l = log.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(s) = stream else { continue };
                let (l, fails) = (l.clone(), fails.clone());
                std::thread::spawn(move || serve_requests(s, &l, &fails));
            }
        });
        Receiver { port, log }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn requests(&self) -> Vec<Received> {
        self.log.lock().unwrap().clone()
    }

    /// The JSON bodies POSTed to `path` and answered 2xx, in order.
    pub fn delivered(&self, path: &str) -> Vec<serde_json::Value> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == "POST" && r.path == path && r.status < 300)
            .map(|r| serde_json::from_str(&r.body).unwrap())
            .collect()
    }

    /// The delivered webhook alerts whose `event` is `event`.
    pub fn events(&self, path: &str, event: &str) -> Vec<serde_json::Value> {
        self.delivered(path)
            .into_iter()
            .filter(|b| b["event"] == event)
            .collect()
    }
}

/// Serve HTTP/1.1 requests on one connection (keep-alive) until it closes.
fn serve_requests(
    s: TcpStream,
    log: &std::sync::Mutex<Vec<Received>>,
    fails: &std::sync::atomic::AtomicUsize,
) {
    use std::io::BufRead;
    let mut reader = std::io::BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let path = parts.next().unwrap_or("").to_string();
        let mut len = 0usize;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            if h == "\r\n" || h == "\n" {
                break;
            }
            if let Some((k, v)) = h.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                len = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let fail = method == "POST"
            && fails
                .fetch_update(
                    std::sync::atomic::Ordering::SeqCst,
                    std::sync::atomic::Ordering::SeqCst,
                    |n| n.checked_sub(1),
                )
                .is_ok();
        let status = if fail { 500 } else { 200 };
        log.lock().unwrap().push(Received {
            method,
            path,
            body: String::from_utf8_lossy(&body).into_owned(),
            status,
            at: Instant::now(),
        });
        let text = if fail { "error" } else { "ok" };
        if write!(
            w,
            "HTTP/1.1 {status} X\r\ncontent-length: {}\r\ncontent-type: text/plain\r\n\r\n{text}",
            text.len()
        )
        .is_err()
        {
            return;
        }
    }
}

/// A client polling /health every 50 ms, as a user's traffic would, counting every request
/// that did not get a 200.
pub struct Poller {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: std::thread::JoinHandle<(u32, Vec<String>)>,
}

impl Poller {
    pub fn start(port: u16) -> Poller {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            let (mut total, mut failed) = (0, Vec::new());
            while !s.load(std::sync::atomic::Ordering::SeqCst) {
                total += 1;
                match http_get_why(port, "/health") {
                    Ok((200, _)) => {}
                    Ok((code, body)) => failed.push(format!("HTTP {code} {}", body.trim())),
                    Err(why) => failed.push(format!("no answer ({why})")),
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            (total, failed)
        });
        Poller { stop, handle }
    }

    /// Stop and return (requests, the failed ones).
    pub fn stop(self) -> (u32, Vec<String>) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.handle.join().unwrap()
    }
}
