//! Who and where this run is: host, user, pid, command line and start time, as recorded in
//! manifests, the lock and the audit log.

use serde::{Deserialize, Serialize};

/// The identity of one guard run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Origin {
    /// Process id.
    pub pid: u32,
    /// Host name.
    pub host: String,
    /// User name (or uid).
    pub user: String,
    /// Start time, RFC 3339 UTC.
    pub started_at: String,
    /// The command line.
    pub command: String,
    /// Who ran it behind `sudo` (`SUDO_USER`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sudo_user: Option<String>,
    /// Where from, over ssh: the client's address (`SSH_CONNECTION`'s first field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
}

impl Origin {
    /// This process.
    pub fn current() -> Origin {
        Origin {
            pid: std::process::id(),
            host: host(),
            user: user(),
            started_at: now_rfc3339(),
            command: std::env::args().collect::<Vec<_>>().join(" "),
            sudo_user: std::env::var("SUDO_USER").ok().filter(|u| !u.is_empty()),
            from: std::env::var("SSH_CONNECTION")
                .ok()
                .and_then(|c| c.split_whitespace().next().map(String::from)),
        }
    }
}

/// The host name.
pub fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".into())
}

/// The user name of the real uid (from the password database), else $USER, else the uid.
pub fn user() -> String {
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    // SAFETY: an all-zero passwd is a valid value to be overwritten by getpwuid_r.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    let mut buf = vec![0 as libc::c_char; 4096];
    // SAFETY: getpwuid_r writes into `pw` and `buf`, both valid for the sizes given; `result`
    // is null or points at `pw`, whose `pw_name` then points into `buf`, alive below.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut result) };
    if rc == 0 && !result.is_null() && !pw.pw_name.is_null() {
        // SAFETY: pw_name is a NUL-terminated string inside `buf`.
        let name = unsafe { std::ffi::CStr::from_ptr(pw.pw_name) };
        if let Ok(name) = name.to_str() {
            return name.to_string();
        }
    }
    std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| format!("uid {uid}"))
}

/// Now as RFC 3339 in UTC, to the millisecond.
pub fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}
