//! The last phase of the default mode: the warm server's own CPU time (user + system of its
//! threads) per call, for a health Check, a Verify with a bad checksum, a warm Verify, a warm
//! CheckPermission and a warm ext_authz Check.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tonic::transport::Channel;

use crate::error::Result;
use crate::load::drive;
use crate::servers::BenchServer;
use crate::tally::Tally;
use crate::workloads::{Inputs, Workload};

/// The warm server's own CPU time over one workload of the last phase.
#[derive(Debug, Serialize)]
pub struct CpuRow {
    pub workload: &'static str,
    pub calls: u64,
    pub server_cpu_ms: f64,
    pub server_cpu_us_per_call: f64,
    /// Per call, relative to a health Check's.
    pub vs_floor: Option<f64>,
    pub problems: String,
}

/// Drives each of [`Workload::CPU`] against `warm` for `duration`, `rounds` times over, and
/// counts the server's CPU time around each run.
pub async fn server_cpu(
    warm: &BenchServer,
    channels: &[Channel],
    inputs: &Arc<Inputs>,
    concurrency: usize,
    duration: Duration,
    rounds: u32,
) -> Result<Vec<CpuRow>> {
    // Round after round, as the RPS phase: drift and the 10 ms resolution of the CPU clock
    // weigh on every workload alike.
    let mut spent = [Duration::ZERO; Workload::CPU.len()];
    let mut tallies: Vec<Tally> = Workload::CPU.iter().map(|_| Tally::default()).collect();
    for _ in 0..rounds {
        for (w, workload) in Workload::CPU.into_iter().enumerate() {
            let before = warm.cpu_time()?;
            let tally = drive(workload, channels, inputs, concurrency, duration).await;
            spent[w] += warm.cpu_time()? - before;
            tallies[w].merge(tally);
        }
    }
    let mut cpu = Vec::new();
    for ((workload, spent), tally) in Workload::CPU.into_iter().zip(spent).zip(&tallies) {
        let calls = tally.total_calls();
        cpu.push(CpuRow {
            workload: workload.label(),
            calls,
            server_cpu_ms: spent.as_secs_f64() * 1000.0,
            server_cpu_us_per_call: spent.as_secs_f64() * 1e6 / calls.max(1) as f64,
            vs_floor: None,
            problems: tally.problems_note(),
        });
    }
    let floor = cpu[0].server_cpu_us_per_call;
    for row in &mut cpu {
        row.vs_floor = (floor > 0.0).then(|| row.server_cpu_us_per_call / floor);
    }
    Ok(cpu)
}
