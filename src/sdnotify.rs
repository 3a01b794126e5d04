//! systemd's notify protocol, the few lines of it `guard watch` needs: `READY=1` once it
//! watches, `WATCHDOG=1` while its loop turns (so a hung watcher is restarted by systemd,
//! with `WatchdogSec=`), `STOPPING=1` on the way out. Without `$NOTIFY_SOCKET` it does nothing.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

/// A connection to systemd's notify socket.
pub struct Notifier {
    socket: UnixDatagram,
    addr: std::os::unix::net::SocketAddr,
    watchdog: Option<Duration>,
    last_ping: Option<Instant>,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET` and `$WATCHDOG_USEC`, when systemd set them for this process.
    pub fn from_env() -> Option<Notifier> {
        let path = std::env::var_os("NOTIFY_SOCKET")?;
        let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
        let addr = if let Some(name) = bytes.strip_prefix(b"@") {
            // An abstract socket name.
            <std::os::unix::net::SocketAddr as std::os::linux::net::SocketAddrExt>::from_abstract_name(name)
                .ok()?
        } else {
            std::os::unix::net::SocketAddr::from_pathname(std::path::Path::new(&path)).ok()?
        };
        let socket = UnixDatagram::unbound().ok()?;
        // The watchdog is ours only if it was meant for this pid (WATCHDOG_PID unset or ours).
        let for_me = std::env::var("WATCHDOG_PID")
            .ok()
            .is_none_or(|p| p.trim() == std::process::id().to_string());
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|_| for_me)
            .map(|us| Duration::from_micros(us) / 2);
        Some(Notifier {
            socket,
            addr,
            watchdog,
            last_ping: None,
        })
    }

    /// Send one state line (`READY=1`...).
    pub fn send(&self, state: &str) {
        if let Err(e) = self.socket.send_to_addr(state.as_bytes(), &self.addr) {
            tracing::debug!("sd_notify {state}: {e}");
        }
    }

    /// Tell the watchdog the loop is alive, at half its interval at most.
    pub fn alive(&mut self) {
        let Some(every) = self.watchdog else {
            return;
        };
        if self.last_ping.is_none_or(|t| t.elapsed() >= every) {
            self.last_ping = Some(Instant::now());
            self.send("WATCHDOG=1");
        }
    }
}
