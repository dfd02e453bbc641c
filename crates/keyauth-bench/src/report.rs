//! The default mode's figures: the table of workloads (one row per workload, the garbage mix
//! split in parts), the report printed to the terminal, and the same figures as JSON.

use std::path::Path;

use serde::Serialize;

use crate::argon2_cost::Argon2Cost;
use crate::cpu::CpuRow;
use crate::error::Result;
use crate::memory::MemoryReport;
use crate::tally::Tally;
use crate::workloads::{CLASSES, Class, Workload};

#[derive(Debug, Serialize)]
pub struct Settings {
    pub seconds: f64,
    pub warmup: f64,
    pub rounds: u32,
    pub concurrency: u32,
    pub channels: u32,
    pub keys: u32,
    pub cores: usize,
    /// 1, 5 and 15 minute load averages at the start and the end: other work on the machine
    /// shows here, and in the figures.
    pub load_average_start: Option<String>,
    pub load_average_end: Option<String>,
}

/// One line of the table.
#[derive(Debug, Serialize)]
pub struct Row {
    pub workload: &'static str,
    /// Answered calls (failed calls are counted apart and not timed).
    pub calls: u64,
    pub rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub rps_vs_floor: Option<f64>,
    pub p99_vs_floor: Option<f64>,
    pub failed: u64,
    pub unexpected: u64,
}

/// The table: one row per workload, the garbage mix split into its valid and garbage halves
/// and the garbage half into its three kinds.
pub fn rows(totals: &[Tally]) -> Vec<Row> {
    let mut rows = Vec::new();
    for (workload, tally) in Workload::ALL.into_iter().zip(totals) {
        let parts: &[(&'static str, &[Class])] = match workload {
            Workload::GarbageMix => &[
                ("e. garbage mix: valid half", &[Class::Valid]),
                ("e. garbage mix: garbage half", &Class::GARBAGE),
                ("e.   bad checksum", &[Class::BadChecksum]),
                ("e.   unknown id, valid checksum", &[Class::UnknownId]),
                ("e.   known id, wrong secret", &[Class::WrongSecret]),
            ],
            _ => &[(workload.label(), &[Class::Valid])],
        };
        for &(label, classes) in parts {
            let h = tally.histogram(classes);
            let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
            let sum = |counts: &[u64; CLASSES]| classes.iter().map(|c| counts[c.index()]).sum();
            rows.push(Row {
                workload: label,
                calls: h.len(),
                rps: h.len() as f64 / tally.elapsed.as_secs_f64(),
                p50_us: us(0.5),
                p99_us: us(0.99),
                p999_us: us(0.999),
                max_us: h.max() as f64 / 1000.0,
                rps_vs_floor: None,
                p99_vs_floor: None,
                failed: sum(&tally.failed),
                unexpected: sum(&tally.unexpected),
            });
        }
    }
    let ratio = |a: f64, b: f64| (b > 0.0).then(|| a / b);
    let (floor_rps, floor_p99) = (rows[0].rps, rows[0].p99_us);
    for row in &mut rows {
        row.rps_vs_floor = ratio(row.rps, floor_rps);
        row.p99_vs_floor = ratio(row.p99_us, floor_p99);
    }
    rows
}
#[derive(Debug, Serialize)]
pub struct Report {
    pub settings: Settings,
    pub argon2: Option<Argon2Cost>,
    pub workloads: Vec<Row>,
    /// Server CPU per call (the warm server's threads only).
    pub server_cpu: Vec<CpuRow>,
    pub memory: Option<MemoryReport>,
}

pub fn print_report(report: &Report, totals: &[Tally]) {
    let s = &report.settings;
    println!();
    println!(
        "keyauth-bench: {} cores; {} tasks over {} HTTP/2 channels; {} s warm-up, then {} rounds \
         × {} s per workload; {} keys per server (half restricted)",
        s.cores, s.concurrency, s.channels, s.warmup, s.rounds, s.seconds, s.keys
    );
    println!(
        "client and server share this process and its cores; load average (1 5 15 min) {} at \
         the start, {} at the end.",
        s.load_average_start.as_deref().unwrap_or("unknown"),
        s.load_average_end.as_deref().unwrap_or("unknown")
    );
    println!("latencies are of answered calls, in µs; problems: failed calls and wrong answers.");
    println!();
    println!(
        "{:<34} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "workload",
        "calls",
        "RPS",
        "p50 µs",
        "p99 µs",
        "p999 µs",
        "RPS/floor",
        "p99/floor",
        "problems"
    );
    let ratio = |r: Option<f64>| r.map_or_else(|| "-".to_owned(), |r| format!("{r:.3}"));
    for row in &report.workloads {
        println!(
            "{:<34} {:>9} {:>9.0} {:>9.1} {:>9.1} {:>9.1} {:>9} {:>9} {:>9}",
            row.workload,
            row.calls,
            row.rps,
            row.p50_us,
            row.p99_us,
            row.p999_us,
            ratio(row.rps_vs_floor),
            ratio(row.p99_vs_floor),
            row.failed + row.unexpected
        );
    }
    for (workload, tally) in Workload::ALL.iter().zip(totals) {
        if tally.first_problem.is_some() {
            println!("problems in {}:{}", workload.label(), tally.problems_note());
        }
    }
    if !report.server_cpu.is_empty() {
        println!();
        println!(
            "server CPU per call (user + system of the warm server's threads, over the calls of \
             {} rounds of {} s each):",
            s.rounds, s.seconds
        );
        println!(
            "{:<34} {:>9} {:>12} {:>12} {:>9}",
            "workload", "calls", "CPU ms", "µs/call", "vs floor"
        );
        for row in &report.server_cpu {
            println!(
                "{:<34} {:>9} {:>12.0} {:>12.1} {:>9}{}",
                row.workload,
                row.calls,
                row.server_cpu_ms,
                row.server_cpu_us_per_call,
                ratio(row.vs_floor),
                row.problems
            );
        }
    }
    if let Some(a) = &report.argon2 {
        println!();
        println!(
            "argon2id (m={} KiB, t={}, p={}): {:.0} µs per Hasher::verify (median of {} \
             single-threaded calls; mean {:.0} µs, fastest {:.0} µs)",
            a.m_cost_kib, a.t_cost, a.p_cost, a.median_us, a.samples, a.mean_us, a.min_us
        );
        println!(
            "cold-path target 0.8 × {} cores ÷ {:.0} µs = {:.0} RPS; measured cold Verify {} RPS ({} of target)",
            a.cores,
            a.median_us,
            a.cold_target_rps,
            a.cold_measured_rps
                .map_or_else(|| "-".to_owned(), |r| format!("{r:.0}")),
            ratio(a.cold_vs_target)
        );
    }
    print_memory(report.memory.as_ref());
}

pub fn print_memory(memory: Option<&MemoryReport>) {
    let Some(m) = memory else {
        return;
    };
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!();
    println!("memory: {}", m.method);
    println!(
        "  {} keys issued and verified; the cache holds {} proven keys",
        m.keys, m.cached
    );
    println!(
        "  VmRSS {:.1} MiB before, {:.1} MiB after issuing, {:.1} MiB with the cache full; \
         VmHWM (peak) {:.1} MiB",
        mib(m.before.rss_kib),
        mib(m.after_issue.rss_kib),
        mib(m.after_verify.rss_kib),
        mib(m.after_verify.hwm_kib)
    );
    println!(
        "  cache: {:+.1} MiB of RSS, {:.0} bytes per proven key (includes allocator slack)",
        m.cache_rss_kib as f64 / 1024.0,
        m.cache_bytes_per_key
    );
}

pub fn write_json(path: &Path, report: &Report) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("creating {} for --json: {e}", dir.display()))?;
    }
    let json = serde_json::to_string_pretty(report)?;
    std::fs::write(path, json + "\n").map_err(|e| format!("writing {}: {e}", path.display()))?;
    println!();
    println!("figures written to {}", path.display());
    Ok(())
}
