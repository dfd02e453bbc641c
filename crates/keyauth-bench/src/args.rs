//! The command line: every flag, its default and its checks.

use std::path::PathBuf;

use clap::Parser;

use crate::memory::CHEAP_HASH;

#[derive(Debug, Parser)]
#[command(
    name = "keyauth-bench",
    about = "Load benchmark of keyauth's Verify path against in-process servers"
)]
pub struct Args {
    /// Seconds each workload runs in each round.
    #[arg(long, default_value_t = 3.0, value_parser = parse_seconds)]
    pub seconds: f64,

    /// Seconds each workload runs once, uncounted, before the first round (fresh connections,
    /// threads and allocator arenas would otherwise penalise whichever workload runs first).
    #[arg(long, default_value_t = 1.0, value_parser = parse_warmup)]
    pub warmup: f64,

    /// Rounds; each round runs every workload once, in the same order.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub rounds: u32,

    /// Calls in flight at once (one tokio task each).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub concurrency: u32,

    /// HTTP/2 connections to each server; the tasks are spread over them.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    pub channels: u32,

    /// Keys issued to each server, half standard and half restricted (`patients: [read]`).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(2..))]
    pub keys: u32,

    /// Where to write the figures as JSON.
    #[arg(long, default_value = "target/keyauth-bench.json")]
    pub json: PathBuf,

    /// Skip the memory phase.
    #[arg(long)]
    pub skip_rss: bool,

    /// Run only the memory phase.
    #[arg(long, conflicts_with = "skip_rss")]
    pub rss: bool,

    /// Proven keys the memory phase caches.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub rss_keys: u32,

    /// Run only the caller's view (keyauth-client): in-process verify, the REST endpoint with
    /// and without the tower layer, revocation latency seen by the caller (across two
    /// instances too when KEYAUTH_BENCH_DATABASE_URL names a PostgreSQL database).
    #[arg(long, conflicts_with_all = ["rss", "skip_rss"])]
    pub caller: bool,

    /// Keys revoked to measure the revocation latency seen by the caller.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..))]
    pub revocations: u32,

    /// argon2id memory cost (KiB) of the memory phase's keys. The default (8) keeps the phase
    /// about the cache; 4096 (the server's default) shows what hashing itself keeps resident.
    #[arg(long, default_value_t = CHEAP_HASH.m_cost, value_parser = clap::value_parser!(u32).range(8..))]
    pub rss_m_cost: u32,

    /// Instruction counting (e.g. under `valgrind --tool=callgrind`): start the warm server
    /// only, then send exactly this many calls of `--count-workload` (16 in flight over two
    /// connections) and stop. The client runs on a current-thread runtime, so that the
    /// server's work is that of the multi-threaded runtime's workers alone.
    #[arg(long, conflicts_with_all = ["rss", "caller"])]
    pub count_calls: Option<u32>,

    /// The real server's memory: start the in-process gRPC server as `keyauth serve` runs it
    /// (default argon2id, cache and workers), issue this many keys over gRPC and verify each
    /// once (the client keeps none), and print VmRSS/VmHWM of this process (client and server)
    /// before, with the server idle, and after. Run it with and without `MALLOC_ARENA_MAX=2`.
    #[arg(long, conflicts_with_all = ["rss", "caller", "count_calls"])]
    pub serve_rss_keys: Option<u32>,

    /// Soak: run the real server (as `keyauth serve` builds it) under a mixed load of every
    /// RPC, garbage and refused calls included, for this many seconds, printing this process's
    /// VmRSS as it goes (`--concurrency` client tasks; 16 is a fair load for two cores).
    #[arg(long, value_parser = parse_seconds, conflicts_with_all = ["rss", "caller", "count_calls", "serve_rss_keys"])]
    pub soak: Option<f64>,

    /// The security review's figures (F2, F6, F7; `attack.rs`), the flood of wrong secrets
    /// lasting this many seconds.
    #[arg(long, value_parser = parse_seconds, conflicts_with_all = ["rss", "caller", "count_calls", "serve_rss_keys", "soak"])]
    pub attack: Option<f64>,

    /// The workload `--count-calls` sends: health, verify, check or bad-checksum.
    #[arg(long, default_value = "verify", requires = "count_calls")]
    pub count_workload: String,
}

fn parse_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(n) if n.is_finite() && n > 0.0 => Ok(n),
        _ => Err(format!("{s:?} is not a positive number of seconds")),
    }
}

fn parse_warmup(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(n) if n.is_finite() && n >= 0.0 => Ok(n),
        _ => Err(format!("{s:?} is not a number of seconds (0 for none)")),
    }
}
