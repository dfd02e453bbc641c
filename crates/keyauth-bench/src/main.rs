//! `keyauth-bench`: a load benchmark of the Verify hot path against the real gRPC server, run
//! in-process with nothing else needed (`cargo run --release -p keyauth-bench`).
//!
//! It starts two servers on 127.0.0.1 over throw-away SQLite stores, one with the default cache
//! and one with the cache off (capacity 0: every Verify reads the store and runs argon2id),
//! issues keys over gRPC, then drives each workload in turn at a fixed concurrency for a fixed
//! time, round after round (a b c d e a b c d e …) so that drift hits every workload alike:
//!
//! - a. floor: `grpc.health.v1.Health/Check`, the cost of the gRPC stack alone;
//! - b. warm Verify and c. warm CheckPermission (`patients`/`read`) of proven, cached keys;
//! - d. cold Verify against the cache-off server;
//! - e. warm Verify interleaved 1:1 with garbage: a third bad checksums, a third unknown key
//!   ids with a valid checksum (a fresh one per call, as an attacker would send), a third
//!   known ids with a wrong secret.
//!
//! It prints RPS and latency percentiles per workload with their ratios to the floor, the
//! cold-path target `0.8 × cores ÷ argon2id cost`, and writes the same figures as JSON
//! (`--json`). A memory phase, run first so the process is still fresh, fills a verification
//! cache with proven keys through `Authority` directly (no gRPC, cheap argon2id parameters so
//! that 100,000 issues take seconds, not minutes) and reports VmRSS/VmHWM from
//! `/proc/self/status` (Linux) around it; `--rss` runs only that phase, `--skip-rss` skips it.
//!
//! Dependencies: `hdrhistogram` (percentiles from mergeable, fixed-size histograms: each load
//! task keeps its own, merged at the end, so recording costs no lock) and `tempfile` (stores
//! removed on drop, panics included); this crate is the only one that needs them. The servers
//! log as `keyauth serve` does (`tracing-subscriber`, `RUST_LOG`, default `info`), to a sink.
//!
//! Client and server share this process and the machine's cores: the numbers are a lower
//! bound of what the server alone would do, and the ratios to the floor are the figures that
//! compare well across machines. Each server runs on a runtime of its own, whose threads are
//! named, so that a last phase can count the server's own CPU time (user + system, from
//! `/proc/self/task/*/stat`) over a counted number of calls: per call, for a health Check, a
//! Verify with a bad checksum, a warm Verify, a warm CheckPermission and a warm ext_authz Check.
//!
//! Two modes measure one thing each: `--count-calls N` sends exactly N calls of one workload
//! to the warm server from a current-thread client (instruction counts per call under
//! callgrind, collecting the server runtime's workers only; see the README), and
//! `--serve-rss-keys N` reads this process's VmRSS around the real gRPC server issuing and
//! verifying N keys with the default argon2id parameters. `--soak SECONDS` runs that real
//! server under a mixed load of every RPC (garbage and refused calls included) and prints its
//! VmRSS as it goes (`soak.rs`). `--caller` measures what a service using keyauth-client pays
//! (`caller.rs`). `--attack SECONDS` prints the security review's figures for F2, F6 and F7
//! (`attack.rs`).
//!
//! Modules, each importing only from those listed before it (no cycles):
//!
//! - leaves: `error` (the error type), `procfs` (VmRSS/VmHWM, threads' CPU time, load average);
//! - building blocks: `keys` (issuing and proving keys), `servers` (the in-process servers, the
//!   connections to them), `workloads` (what each call presents), `tally` (outcomes and
//!   latency histograms), `load` (the load driver), `memory` (the memory phase),
//!   `argon2_cost`, `cpu` (server CPU per call), `report` (table, terminal, JSON);
//! - `args` (the flags);
//! - one module per mode: `load_bench` (the default), `count_calls`, `serve_rss`, `soak`,
//!   `caller`, `attack`;
//! - `main.rs`: parses the flags and runs the mode they name.

use std::process::ExitCode;

use clap::Parser;

use crate::args::Args;
use crate::error::Result;

mod argon2_cost;
mod args;
mod attack;
mod caller;
mod count_calls;
mod cpu;
mod error;
mod keys;
mod load;
mod load_bench;
mod memory;
mod procfs;
mod report;
mod serve_rss;
mod servers;
mod soak;
mod tally;
mod workloads;

fn main() -> ExitCode {
    let args = Args::parse();
    // As `keyauth serve` logs (RUST_LOG, default `info`), written nowhere: what the filter and
    // the per-call span cost is counted, the terminal is not.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::sink)
        .init();
    let runtime =
        if args.count_calls.is_some() || args.serve_rss_keys.is_some() || args.soak.is_some() {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
        } else {
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
        };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("keyauth-bench: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keyauth-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the mode the flags name: `--caller`, `--count-calls`, `--serve-rss-keys`, `--soak`, or
/// else the default load benchmark.
async fn run(args: Args) -> Result<()> {
    if args.caller {
        return caller::run(caller::CallerSettings {
            seconds: args.seconds,
            rounds: args.rounds,
            concurrency: args.concurrency,
            revocations: args.revocations as usize,
            postgres: std::env::var("KEYAUTH_BENCH_DATABASE_URL").ok(),
        })
        .await;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if let Some(calls) = args.count_calls {
        return count_calls::run(&args.count_workload, calls as usize, cores).await;
    }
    if let Some(keys) = args.serve_rss_keys {
        return serve_rss::run(keys as usize, cores).await;
    }
    if let Some(seconds) = args.attack {
        return attack::run(seconds, cores).await;
    }
    if let Some(seconds) = args.soak {
        return soak::run(seconds, args.concurrency as usize, cores).await;
    }
    load_bench::run(&args, cores).await
}
