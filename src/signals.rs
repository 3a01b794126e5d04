//! Signals: SIGHUP (the operator's ssh dropped) is ignored from the first line of `main`, so a
//! deploy always reaches its verdict; the first SIGINT/SIGTERM asks the running command to stop safely; a second one
//! exits at once.

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

/// Tells a command that it was asked to stop, and by which signal.
#[derive(Debug, Clone)]
pub struct Cancel {
    rx: watch::Receiver<Option<i32>>,
}

impl Cancel {
    /// A token that never fires (for tests and read-only commands).
    pub fn never() -> Cancel {
        let (tx, rx) = watch::channel(None);
        // Keep the sender alive for the life of the program so `changed` never errors.
        std::mem::forget(tx);
        Cancel { rx }
    }

    /// The signal received, if any.
    pub fn signal(&self) -> Option<i32> {
        *self.rx.borrow()
    }

    /// Resolves when a stop was asked for.
    pub async fn cancelled(&self) {
        let mut rx = self.rx.clone();
        while rx.borrow_and_update().is_none() {
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

/// Install the handlers; call inside the runtime before any work starts.
pub fn install() -> std::io::Result<Cancel> {
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let (tx, rx) = watch::channel(None);
    tokio::spawn(async move {
        loop {
            let sig = tokio::select! {
                _ = int.recv() => libc::SIGINT,
                _ = term.recv() => libc::SIGTERM,
            };
            if tx.borrow().is_some() {
                // Second signal: the operator insists. The lock dies with the process.
                let _ = std::io::Write::write_all(
                    &mut std::io::stderr(),
                    b"guard: second signal, exiting now without cleaning up\n",
                );
                std::process::exit(128 + sig);
            }
            tracing::warn!(
                "signal {sig} received: stopping safely (send it again to exit at once)"
            );
            let _ = tx.send(Some(sig));
        }
    });
    Ok(Cancel { rx })
}
