//! What Linux's `/proc` says about this process and the machine: resident memory
//! (`/proc/self/status`), the CPU time of named threads (`/proc/self/task/*/stat`) and the load
//! average (`/proc/loadavg`).

use std::time::Duration;

use serde::Serialize;

use crate::error::Result;

/// This process's resident memory at one moment.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct MemorySample {
    pub rss_kib: u64,
    /// Peak resident set so far.
    pub hwm_kib: u64,
}

impl MemorySample {
    pub fn read() -> Result<Self> {
        let status = std::fs::read_to_string("/proc/self/status")
            .map_err(|e| format!("reading /proc/self/status (Linux only): {e}"))?;
        let field = |name: &str| -> Result<u64> {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
                .ok_or_else(|| format!("no {name} in /proc/self/status").into())
        };
        Ok(MemorySample {
            rss_kib: field("VmRSS:")?,
            hwm_kib: field("VmHWM:")?,
        })
    }
}

/// CPU time (user + system) used so far by this process's threads named `threads`.
pub fn threads_cpu_time(threads: &str) -> Result<Duration> {
    let mut ticks = 0u64;
    for task in std::fs::read_dir("/proc/self/task")? {
        let Ok(stat) = std::fs::read_to_string(task?.path().join("stat")) else {
            continue; // the thread has ended
        };
        // `pid (comm) state …`: comm may hold spaces; utime and stime are the 14th and
        // 15th fields, the 12th and 13th after the closing parenthesis.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        if &stat[open + 1..close] != threads {
            continue;
        }
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
        ticks += field(11).unwrap_or(0) + field(12).unwrap_or(0);
    }
    // USER_HZ: 100 on Linux.
    Ok(Duration::from_millis(ticks * 10))
}

/// The system's 1, 5 and 15 minute load averages (Linux), e.g. `0.52 0.60 0.41`.
pub fn load_average() -> Option<String> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    Some(
        text.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    )
}
