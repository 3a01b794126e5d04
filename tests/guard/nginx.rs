//! A real nginx in front of the demo app, for `strategy = "switch"`: started by the test on a
//! 127.0.0.1 port with its own prefix, config, pid and log files, stopped when dropped.
//! `scripts/test.sh` installs Debian's nginx-light when it is missing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::*;

/// The nginx executable: on PATH or where Debian puts it.
fn nginx_bin() -> PathBuf {
    let found = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("nginx"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/sbin/nginx")])
        .find(|p| p.is_file());
    found.unwrap_or_else(|| {
        panic!(
            "nginx is needed by the switch tests and is not installed: run `apt-get install -y nginx-light` (scripts/test.sh does it as root)"
        )
    })
}

/// One nginx proxying `http://127.0.0.1:<port>/` to the upstream file guard owns.
pub struct Nginx {
    pub port: u16,
    pub prefix: PathBuf,
    pub upstream: PathBuf,
    bin: PathBuf,
}

impl Nginx {
    /// Start nginx with an operator-written upstream file sending traffic to `app_port`, as a
    /// server had it before its first switch.
    pub fn start(root: &Path, upstream_name: &str, app_port: u16) -> Nginx {
        let prefix = root.join("nginx");
        std::fs::create_dir_all(prefix.join("conf.d")).unwrap();
        std::fs::create_dir_all(prefix.join("tmp")).unwrap();
        let port = free_port();
        let p = prefix.display();
        let conf = format!(
            "worker_processes 1;\npid {p}/nginx.pid;\nerror_log {p}/error.log;\nevents {{ worker_connections 512; }}\nhttp {{\n  access_log off;\n  client_body_temp_path {p}/tmp/body;\n  proxy_temp_path {p}/tmp/proxy;\n  fastcgi_temp_path {p}/tmp/fastcgi;\n  uwsgi_temp_path {p}/tmp/uwsgi;\n  scgi_temp_path {p}/tmp/scgi;\n  include {p}/conf.d/*.conf;\n  server {{\n    listen 127.0.0.1:{port};\n    location / {{ proxy_pass http://{upstream_name}; }}\n  }}\n}}\n"
        );
        std::fs::write(prefix.join("nginx.conf"), conf).unwrap();
        let upstream = prefix
            .join("conf.d")
            .join(format!("{upstream_name}.upstream.conf"));
        std::fs::write(
            &upstream,
            format!("upstream {upstream_name} {{ server 127.0.0.1:{app_port}; }}\n"),
        )
        .unwrap();
        let nginx = Nginx {
            port,
            prefix,
            upstream,
            bin: nginx_bin(),
        };
        let out = Command::new(&nginx.bin)
            .args(nginx.args())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "starting nginx: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            wait_until(Duration::from_secs(10), || std::net::TcpStream::connect((
                "127.0.0.1",
                port
            ))
            .is_ok()),
            "nginx does not listen on {port}"
        );
        nginx
    }

    fn args(&self) -> Vec<String> {
        let p = self.prefix.display();
        vec![
            "-p".into(),
            format!("{p}/"),
            "-c".into(),
            format!("{p}/nginx.conf"),
            "-e".into(),
            format!("{p}/error.log"),
        ]
    }

    /// The command line of this nginx with `extra` (`-t`, `-s reload`), for guard.toml.
    pub fn command(&self, extra: &str) -> String {
        format!("{} {} {extra}", self.bin.display(), self.args().join(" "))
    }

    /// guard.toml's `[switch]` for this nginx.
    pub fn switch_config(&self, ports: [u16; 2], drain: &str, keep_previous: &str) -> String {
        format!(
            "\n[switch]\nports = [{}, {}]\nnginx_upstream = {:?}\ntest_command = {:?}\nreload_command = {:?}\ndrain = {drain:?}\nkeep_previous = {keep_previous:?}\n",
            ports[0],
            ports[1],
            self.upstream.display().to_string(),
            self.command("-t -q"),
            self.command("-s reload"),
        )
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = Command::new(&self.bin)
            .args(self.args())
            .args(["-s", "stop"])
            .output();
    }
}
