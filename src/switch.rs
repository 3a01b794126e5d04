//! What `strategy = "switch"` remembers between runs: which PM2 process takes the proxy's
//! traffic (the live slot) and which previous release is kept warm for an instant rollback,
//! and the pure decisions on it (the idle port, what expired). Kept as one small JSON file
//! that only guard writes, in backup.dir; read back with the same suspicion as any file
//! there: a file that names a process that is not one of this app's slots is refused.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// A PM2 process of the app on one port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slot {
    /// Its PM2 name: `<app>-<port>`, or the app's own name before its first switch.
    pub name: String,
    /// The port it listens on.
    pub port: u16,
}

/// The previous release, kept running after a switch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kept {
    /// Where it runs.
    pub slot: Slot,
    /// The incident that holds its files (the deploy's backup): a rollback to it can be a
    /// switch back.
    pub incident: Option<String>,
    /// Until when it is kept (ms since the epoch).
    pub until_ms: i64,
    /// When it stopped taking traffic (ms since the epoch): a process PM2 started after that
    /// runs whatever files were on disk then (the new release), not the release it kept.
    #[serde(default)]
    pub since_ms: i64,
}

impl Kept {
    /// Whether the kept process is still the one that ran the previous release: every instance
    /// started before it was kept (PM2 restarted none since).
    pub fn still_the_previous(&self, started_ms: &[Option<i64>]) -> bool {
        !started_ms.is_empty()
            && started_ms
                .iter()
                .all(|s| s.is_some_and(|s| s <= self.since_ms))
    }
}

/// Which process serves, and which is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// The process the proxy sends traffic to.
    pub live: Slot,
    /// The previous release, still running until its time is up.
    pub previous: Option<Kept>,
}

/// The PM2 name of the app's process on `port`.
pub fn slot_name(app: &str, port: u16) -> String {
    format!("{app}-{port}")
}

/// Whether `name` is one of the app's own processes under this strategy (its slots, or the
/// app's name before the first switch): those guard itself starts and removes.
pub fn is_own(app: &str, ports: [u16; 2], name: &str) -> bool {
    name == app || ports.iter().any(|&p| name == slot_name(app, p))
}

/// Where the state of `app` lives in backup.dir.
pub fn path(store_dir: &Path, app: &str) -> PathBuf {
    store_dir.join(format!("switch-{app}.json"))
}

impl State {
    /// The state before any switch: the app's own process on the first port (where a fork
    /// app behind the proxy runs today).
    pub fn first(app: &str, port: u16) -> State {
        State {
            live: Slot {
                name: app.to_string(),
                port,
            },
            previous: None,
        }
    }

    /// The state guard wrote for `app`, None before the first switch; a file that does not
    /// hold this app's slots on these ports is an error naming it.
    pub fn load(store_dir: &Path, app: &str, ports: [u16; 2]) -> Result<Option<State>> {
        let p = path(store_dir, app);
        let bytes = match crate::store::read_small(&p) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", p.display())),
        };
        let state: State = serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not guard's switch state", p.display()))?;
        state
            .check(app, ports)
            .with_context(|| format!("{} does not hold this app's slots", p.display()))?;
        Ok(Some(state))
    }

    fn check(&self, app: &str, ports: [u16; 2]) -> Result<()> {
        let slot_ok = |s: &Slot| {
            ports.contains(&s.port) && (s.name == app || s.name == slot_name(app, s.port))
        };
        if !slot_ok(&self.live) {
            bail!("live {:?} on port {}", self.live.name, self.live.port);
        }
        if let Some(k) = &self.previous {
            if !slot_ok(&k.slot) || k.slot.port == self.live.port || k.slot.name == self.live.name {
                bail!("previous {:?} on port {}", k.slot.name, k.slot.port);
            }
            if let Some(id) = &k.incident {
                crate::store::parse_id(id)?;
            }
        }
        Ok(())
    }

    /// Write it (atomically, 0600).
    pub fn save(&self, store_dir: &Path, app: &str) -> Result<()> {
        let p = path(store_dir, app);
        let text = serde_json::to_vec_pretty(self)?;
        crate::atomic::write(&p, &text, 0o600).with_context(|| format!("writing {}", p.display()))
    }

    /// The port a new release starts on: the one the live process does not use.
    pub fn idle_port(&self, ports: [u16; 2]) -> u16 {
        if ports[0] == self.live.port {
            ports[1]
        } else {
            ports[0]
        }
    }

    /// The kept previous release whose time is up at `now_ms`, if any.
    pub fn expired(&self, now_ms: i64) -> Option<&Kept> {
        self.previous.as_ref().filter(|k| k.until_ms <= now_ms)
    }

    /// The kept previous release a rollback to `incident` can switch back to at `now_ms`.
    pub fn switch_back_to(&self, incident: &str, now_ms: i64) -> Option<&Kept> {
        self.previous
            .as_ref()
            .filter(|k| k.until_ms > now_ms && k.incident.as_deref() == Some(incident))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PORTS: [u16; 2] = [3000, 3001];

    fn kept(port: u16, until_ms: i64) -> Kept {
        Kept {
            slot: Slot {
                name: slot_name("api", port),
                port,
            },
            incident: Some("20261202-101010".into()),
            until_ms,
            since_ms: 500,
        }
    }

    #[test]
    fn a_kept_process_pm2_restarted_since_is_not_the_previous_release() {
        let k = kept(3000, 1_000);
        assert!(k.still_the_previous(&[Some(100), Some(500)]));
        assert!(!k.still_the_previous(&[Some(100), Some(501)]));
        assert!(!k.still_the_previous(&[None]));
        assert!(!k.still_the_previous(&[]));
    }

    #[test]
    fn the_idle_port_is_the_other_one() {
        let s = State::first("api", 3000);
        assert_eq!(s.idle_port(PORTS), 3001);
        let s = State {
            live: Slot {
                name: slot_name("api", 3001),
                port: 3001,
            },
            previous: None,
        };
        assert_eq!(s.idle_port(PORTS), 3000);
    }

    #[test]
    fn a_kept_release_is_switched_back_to_only_in_time_and_for_its_incident() {
        let mut s = State::first("api", 3001);
        s.previous = Some(kept(3000, 1_000));
        assert!(s.switch_back_to("20261202-101010", 999).is_some());
        assert!(s.switch_back_to("20261202-101010", 1_000).is_none());
        assert!(s.switch_back_to("20261202-111111", 999).is_none());
        assert!(s.expired(999).is_none());
        assert!(s.expired(1_000).is_some());
    }

    #[test]
    fn a_state_naming_another_process_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = State::first("api", 3000);
        s.save(dir.path(), "api").unwrap();
        assert_eq!(
            State::load(dir.path(), "api", PORTS).unwrap(),
            Some(s.clone())
        );
        // Another app's process, a port not configured, the live slot kept as previous.
        s.live.name = "other".into();
        s.save(dir.path(), "api").unwrap();
        assert!(State::load(dir.path(), "api", PORTS).is_err());
        let mut s = State::first("api", 3000);
        s.previous = Some(kept(3000, 1));
        s.save(dir.path(), "api").unwrap();
        assert!(State::load(dir.path(), "api", PORTS).is_err());
        let s = State::first("api", 4000);
        s.save(dir.path(), "api").unwrap();
        assert!(State::load(dir.path(), "api", PORTS).is_err());
        std::fs::write(path(dir.path(), "api"), "{").unwrap();
        assert!(State::load(dir.path(), "api", PORTS).is_err());
        assert!(State::load(dir.path(), "none", PORTS).unwrap().is_none());
    }

    #[test]
    fn own_processes_are_the_slots_and_the_apps_name() {
        assert!(is_own("api", PORTS, "api"));
        assert!(is_own("api", PORTS, "api-3001"));
        assert!(!is_own("api", PORTS, "api-3002"));
        assert!(!is_own("api", PORTS, "worker"));
    }
}
