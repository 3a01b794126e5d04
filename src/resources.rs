//! Memory and CPU of an app instance, summed over its process tree (sysinfo).

use std::collections::HashMap;
use std::time::Duration;

use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};

/// Memory and CPU of one process tree.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Usage {
    /// Resident memory in bytes.
    pub memory_bytes: u64,
    /// CPU in percent of one core, over the sampling window.
    pub cpu_percent: f32,
}

/// Sample the process trees rooted at `pids`; takes one CPU sampling interval (~0.2 s).
pub async fn sample(pids: &[u32]) -> HashMap<u32, Usage> {
    let Ok(mut sys) = System::new() else {
        return HashMap::new();
    };
    let kind = ProcessRefreshKind::nothing().with_memory().with_cpu();
    sys.refresh_processes_specifics(ProcessesToUpdate::All, true, kind);
    tokio::time::sleep(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL.max(Duration::from_millis(200))).await;
    sys.refresh_processes_specifics(ProcessesToUpdate::All, true, kind);
    let mut children: HashMap<Pid, Vec<Pid>> = HashMap::new();
    for (pid, p) in sys.processes() {
        if let Some(parent) = p.parent() {
            children.entry(parent).or_default().push(*pid);
        }
    }
    let mut out = HashMap::new();
    for &root in pids {
        let mut usage = Usage::default();
        let mut stack = vec![Pid::from_u32(root)];
        let mut seen = std::collections::HashSet::new();
        while let Some(pid) = stack.pop() {
            if !seen.insert(pid) {
                continue;
            }
            if let Some(p) = sys.process(pid) {
                // Threads show up as processes on Linux; count each task group once.
                if p.thread_kind().is_some() {
                    continue;
                }
                usage.memory_bytes += p.memory();
                usage.cpu_percent += p.cpu_usage();
            }
            stack.extend(children.get(&pid).into_iter().flatten().copied());
        }
        out.insert(root, usage);
    }
    out
}
