//! The proxy adapter of `strategy = "switch"`: points the reverse proxy in front of the app at
//! one port. For nginx guard owns one upstream file: written atomically, checked with the
//! config test, then nginx reloaded gracefully (its old workers finish the requests they
//! hold); a failing test or reload puts the previous file back. Any other proxy is a command
//! with `{port}`. Every command goes through the one child runner with a time limit.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::process::Command;

use crate::runner;
use crate::settings::Proxy;

/// Limit for one proxy command (`nginx -t`, a reload, the switch command).
const LIMIT: Duration = Duration::from_secs(60);

/// The upstream file guard writes for `name`, sending traffic to `host:port`.
pub fn upstream_text(app: &str, name: &str, host: &str, port: u16) -> String {
    format!(
        "# Written by guard for app {app} (deploy.strategy = \"switch\"): it is rewritten at every\n\
         # switch, so change guard.toml's [switch], not this file. Use it with\n\
         # `proxy_pass http://{name};`.\n\
         upstream {name} {{\n    server {host}:{port};\n}}\n"
    )
}

/// The port the upstream file guard wrote sends traffic to (None when the file is missing or
/// was not written by guard).
pub fn upstream_port(path: &Path) -> Option<u16> {
    let bytes = crate::store::read_small(path).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    if !text.starts_with("# Written by guard") {
        return None;
    }
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("server "))
        .find_map(|rest| {
            let addr = rest.trim_end_matches(';').trim();
            addr.rsplit_once(':').and_then(|(_, p)| p.parse().ok())
        })
}

/// The host the proxy reaches the app on: the health URL's host when it is an address,
/// else 127.0.0.1 (a name could resolve to two addresses in nginx).
pub fn host_of(url: &reqwest::Url) -> String {
    match url.host_str() {
        Some(h) if h.parse::<std::net::Ipv4Addr>().is_ok() => h.to_string(),
        Some(h) if h.starts_with('[') => h.to_string(),
        _ => "127.0.0.1".into(),
    }
}

async fn shell(command: &str, dir: &Path) -> Result<()> {
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(command).current_dir(dir);
    runner::run_ok(cmd, command, LIMIT).await.map(drop)
}

/// Point the proxy at `host:port`. Returns what was done, for the step line; an error says
/// what failed, and for nginx the previous upstream file is back in place.
pub async fn point(proxy: &Proxy, app: &str, host: &str, port: u16, dir: &Path) -> Result<String> {
    match proxy {
        Proxy::Command(template) => {
            let command = template.replace("{port}", &port.to_string());
            shell(&command, dir).await?;
            Ok(format!("`{command}`"))
        }
        Proxy::Nginx {
            upstream,
            name,
            test,
            reload,
        } => {
            // Never through a symlink: the file is put back as read, and a link swapped in
            // would have guard copy another file's content into nginx's folder.
            let before = match crate::store::read_small(upstream) {
                Ok(b) => Some(b),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(e).with_context(|| format!("reading {}", upstream.display())),
            };
            let text = upstream_text(app, name, host, port);
            crate::atomic::write(upstream, text.as_bytes(), 0o644)
                .with_context(|| format!("writing the upstream file {}", upstream.display()))?;
            let applied = async {
                shell(test, dir).await?;
                shell(reload, dir).await
            }
            .await;
            if let Err(e) = applied {
                let put_back = match &before {
                    Some(b) => crate::atomic::write(upstream, b, 0o644),
                    None => std::fs::remove_file(upstream).map_err(Into::into),
                };
                if let Err(p) = put_back {
                    bail!(
                        "{e:#}; and putting the previous {} back failed: {p:#}",
                        upstream.display()
                    );
                }
                bail!(
                    "{e:#}; the previous {} is back and nginx was not reloaded with the new one",
                    upstream.display()
                );
            }
            Ok(format!(
                "{} -> {host}:{port}, config test passed, reloaded",
                upstream.display()
            ))
        }
    }
}

/// What `guard check` says of the proxy: for nginx, that the upstream file's folder exists
/// and the config test passes (it changes nothing); a command cannot be tried without
/// switching, so it is only named.
pub async fn check(proxy: &Proxy, dir: &Path) -> crate::checks::Check {
    use crate::checks::Check;
    match proxy {
        Proxy::Command(c) => Check::ok(
            "proxy",
            format!("switch.command {c:?} (not tried: it would switch)"),
        ),
        Proxy::Nginx { upstream, test, .. } => {
            let folder = upstream.parent().unwrap_or(Path::new("/"));
            if !folder.is_dir() {
                return Check::fail(
                    "proxy",
                    format!(
                        "the folder of switch.nginx_upstream {} does not exist",
                        upstream.display()
                    ),
                    "create it, or point nginx_upstream into nginx's conf.d",
                );
            }
            match shell(test, dir).await {
                Ok(()) => Check::ok("proxy", format!("nginx config test passes (`{test}`)")),
                Err(e) => Check::fail(
                    "proxy",
                    format!("the nginx config test fails: {e:#}"),
                    "fix nginx's config (or switch.test_command) until it passes: a deploy would fail at the switch",
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_upstream_file_is_read_back_only_when_guard_wrote_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("api.upstream.conf");
        assert_eq!(upstream_port(&p), None);
        std::fs::write(&p, upstream_text("api", "api", "127.0.0.1", 3001)).unwrap();
        assert_eq!(upstream_port(&p), Some(3001));
        std::fs::write(&p, upstream_text("api", "api", "[::1]", 3000)).unwrap();
        assert_eq!(upstream_port(&p), Some(3000));
        std::fs::write(&p, "upstream api { server 127.0.0.1:9; }\n").unwrap();
        assert_eq!(upstream_port(&p), None);
    }

    #[test]
    fn hosts_are_addresses() {
        let u = |s: &str| reqwest::Url::parse(s).unwrap();
        assert_eq!(host_of(&u("http://127.0.0.1:3000/health")), "127.0.0.1");
        assert_eq!(host_of(&u("http://[::1]:3000/health")), "[::1]");
        assert_eq!(host_of(&u("http://localhost:3000/health")), "127.0.0.1");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_failing_config_test_puts_the_previous_file_back() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("api.upstream.conf");
        std::fs::write(&p, "previous\n").unwrap();
        let proxy = Proxy::Nginx {
            upstream: p.clone(),
            name: "api".into(),
            test: "echo 'emerg: bad' >&2; exit 1".into(),
            reload: "touch reloaded".into(),
        };
        let err = point(&proxy, "api", "127.0.0.1", 3001, dir.path())
            .await
            .unwrap_err();
        assert!(format!("{err:#}").contains("emerg: bad"), "{err:#}");
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "previous\n");
        assert!(!dir.path().join("reloaded").exists());
        // A passing test: the new file stays and the reload ran.
        let proxy = Proxy::Nginx {
            upstream: p.clone(),
            name: "api".into(),
            test: "true".into(),
            reload: "touch reloaded".into(),
        };
        point(&proxy, "api", "127.0.0.1", 3001, dir.path())
            .await
            .unwrap();
        assert_eq!(upstream_port(&p), Some(3001));
        assert!(dir.path().join("reloaded").exists());
        // guard check: the same test, nothing written.
        let before = std::fs::read(&p).unwrap();
        assert_eq!(
            check(&proxy, dir.path()).await.level,
            crate::checks::Level::Ok
        );
        let failing = Proxy::Nginx {
            upstream: p.clone(),
            name: "api".into(),
            test: "exit 1".into(),
            reload: "true".into(),
        };
        assert_eq!(
            check(&failing, dir.path()).await.level,
            crate::checks::Level::Fail
        );
        let nowhere = Proxy::Nginx {
            upstream: dir.path().join("missing/api.conf"),
            name: "api".into(),
            test: "true".into(),
            reload: "true".into(),
        };
        assert_eq!(
            check(&nowhere, dir.path()).await.level,
            crate::checks::Level::Fail
        );
        assert_eq!(std::fs::read(&p).unwrap(), before);
    }
}
