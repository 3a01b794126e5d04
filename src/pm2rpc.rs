//! PM2's own RPC socket, for the question guard asks most: the process list. `pm2 jlist`
//! starts Node and loads PM2 each time (0.1-0.25 s of CPU, several times per deploy and per
//! rollback); the daemon answers the same question over `$PM2_HOME/rpc.sock` in about a
//! millisecond. The protocol is the one pm2's `lib/Client.js` speaks (axon `req`/`rep` with
//! axon-rpc on top, framed by `amp`): one request `[j:{type:"call",method,args}, s:<id>]`,
//! one reply `[j:{args:[result]} | j:{error}, s:<id>]`. Each frame is one byte (version 1 in
//! the high nibble, the argument count in the low one), then per argument a 32-bit
//! big-endian length and the bytes.
//!
//! Anything unexpected (no socket, an old daemon, `PM2_RPC_PORT` set, a timeout, a reply
//! guard cannot read) is an error, and the caller asks the `pm2` CLI instead: the socket is
//! a shortcut, never the only way.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The longest reply read: a process list of hundreds of apps is a few MB.
const MAX_ARG: u32 = 64 << 20;

/// What the daemon answers to `getMonitorData`, parsed as `T` (PM2's process list).
pub async fn monitor_data<T: serde::de::DeserializeOwned>(
    home: &Path,
    limit: Duration,
) -> Result<T> {
    if std::env::var_os("PM2_RPC_PORT").is_some() {
        bail!("PM2_RPC_PORT is set: the socket is elsewhere");
    }
    let sock = home.join("rpc.sock");
    let meta = std::fs::symlink_metadata(&sock)
        .with_context(|| format!("no PM2 RPC socket at {}", sock.display()))?;
    if !std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()) {
        bail!("{} is not a socket", sock.display());
    }
    let call = async {
        let mut stream = tokio::net::UnixStream::connect(&sock).await?;
        let id = format!("guard-{}:1", std::process::id());
        let request = serde_json::json!({"type": "call", "method": "getMonitorData", "args": [{}]});
        stream
            .write_all(&encode(&[
                format!("j:{request}").as_bytes(),
                format!("s:{id}").as_bytes(),
            ]))
            .await?;
        let reply = read_frame(&mut stream).await?;
        anyhow::Ok((reply, id))
    };
    let (reply, id) = tokio::time::timeout(limit, call)
        .await
        .with_context(|| format!("{} did not answer within {limit:?}", sock.display()))?
        .with_context(|| format!("asking PM2 over {}", sock.display()))?;
    parse_reply(&reply, &id).with_context(|| format!("reading PM2's answer on {}", sock.display()))
}

/// One amp frame of `args`.
fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut out = vec![(1u8 << 4) | (args.len() as u8 & 0x0f)];
    for a in args {
        out.extend_from_slice(&(a.len() as u32).to_be_bytes());
        out.extend_from_slice(a);
    }
    out
}

/// Read one amp frame: its arguments.
async fn read_frame(stream: &mut (impl AsyncReadExt + Unpin)) -> Result<Vec<Vec<u8>>> {
    let header = stream.read_u8().await?;
    if header >> 4 != 1 {
        bail!("not an amp version 1 frame (header {header:#04x})");
    }
    let mut args = Vec::new();
    for _ in 0..(header & 0x0f) {
        let len = stream.read_u32().await?;
        if len > MAX_ARG {
            bail!("an argument of {len} bytes: refused");
        }
        let mut buf = vec![0u8; len as usize];
        stream.read_exact(&mut buf).await?;
        args.push(buf);
    }
    Ok(args)
}

/// axon-rpc's reply object.
#[derive(Deserialize)]
struct Reply<T> {
    #[serde(default = "none")]
    args: Option<Vec<T>>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

fn none<T>() -> Option<T> {
    None
}

/// The result in a reply frame to request `id`.
fn parse_reply<T: serde::de::DeserializeOwned>(args: &[Vec<u8>], id: &str) -> Result<T> {
    let [body, got] = args else {
        bail!("{} argument(s) in the reply, not 2", args.len());
    };
    if got.as_slice() != format!("s:{id}").as_bytes() {
        bail!("a reply to another request");
    }
    let json = body.strip_prefix(b"j:").context("the reply is not JSON")?;
    let reply: Reply<T> = serde_json::from_slice(json).context("unexpected JSON")?;
    if let Some(e) = reply.error {
        // Only the message: the daemon's error object may carry more than guard shows.
        let message = e.get("message").and_then(|m| m.as_str()).unwrap_or("error");
        bail!("PM2 answered with an error: {message}");
    }
    reply
        .args
        .and_then(|a| a.into_iter().next())
        .context("the reply holds no result")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket that answers one request with `reply` (a test double of the daemon's error
    /// paths; the real daemon is asked in the test below).
    async fn answering(reply: impl Fn(&str) -> Vec<u8> + Send + 'static) -> tempfile::TempDir {
        let home = tempfile::tempdir().unwrap();
        let listener = tokio::net::UnixListener::bind(home.path().join("rpc.sock")).unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let args = read_frame(&mut s).await.unwrap();
            let id = String::from_utf8(args[1].clone()).unwrap();
            s.write_all(&reply(&id)).await.unwrap();
            // Held open: a reply that never comes must end in the time limit.
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        home
    }

    #[tokio::test]
    async fn a_list_an_error_garbage_and_silence_are_told_apart() {
        let home = answering(|id| encode(&[br#"j:{"args":[[{"n":1}]]}"#, id.as_bytes()])).await;
        let list: Vec<serde_json::Value> = monitor_data(home.path(), Duration::from_secs(2))
            .await
            .unwrap();
        assert_eq!(list, [serde_json::json!({"n": 1})]);
        let home = answering(|id| {
            encode(&[
                br#"j:{"error":{"message":"boom","stack":"x"}}"#,
                id.as_bytes(),
            ])
        })
        .await;
        let err = monitor_data::<Vec<serde_json::Value>>(home.path(), Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(format!("{err:#}").contains("boom"), "{err:#}");
        let home = answering(|_| b"\x99garbage".to_vec()).await;
        assert!(
            monitor_data::<Vec<serde_json::Value>>(home.path(), Duration::from_secs(2))
                .await
                .is_err()
        );
        let home = answering(|_| Vec::new()).await;
        let err = monitor_data::<Vec<serde_json::Value>>(home.path(), Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(format!("{err:#}").contains("did not answer"), "{err:#}");
        let none = tempfile::tempdir().unwrap();
        assert!(
            monitor_data::<Vec<serde_json::Value>>(none.path(), Duration::from_secs(1))
                .await
                .is_err()
        );
    }

    /// The real daemon: what it answers over the socket is what `pm2 jlist` prints.
    #[tokio::test]
    #[cfg_attr(
        not(feature = "real-pm2"),
        ignore = "needs node and the pinned pm2: the real tier (scripts/test.sh)"
    )]
    async fn the_real_daemon_answers_what_pm2_jlist_prints() {
        let pm2 = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/node/node_modules/.bin/pm2"
        );
        let home = tempfile::tempdir().unwrap();
        let app = home.path().join("app.js");
        std::fs::write(&app, "setInterval(() => {}, 1000);\n").unwrap();
        let pm2_cmd = |args: &[&str]| {
            let out = std::process::Command::new(pm2)
                .args(args)
                .env("PM2_HOME", home.path())
                .output()
                .expect("the pinned pm2 (npm ci --prefix tests/node)");
            assert!(out.status.success(), "pm2 {args:?}: {out:?}");
            String::from_utf8(out.stdout).unwrap()
        };
        pm2_cmd(&["start", app.to_str().unwrap(), "--name", "rpc-test"]);
        let cli = crate::pm2::parse_jlist(&pm2_cmd(&["jlist"])).unwrap();
        let raw: Vec<serde_json::Value> = monitor_data(home.path(), Duration::from_secs(5))
            .await
            .unwrap();
        let _ = std::process::Command::new(pm2)
            .arg("kill")
            .env("PM2_HOME", home.path())
            .output();
        assert_eq!(raw.len(), 1);
        assert_eq!(raw.len(), cli.len());
        assert_eq!(raw[0]["name"], "rpc-test");
        assert_eq!(raw[0]["pid"].as_u64(), cli[0].pid.map(u64::from));
        assert_eq!(raw[0]["pm2_env"]["status"], cli[0].status.as_str());
    }
}
