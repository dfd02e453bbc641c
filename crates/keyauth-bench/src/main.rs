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
//! VmRSS as it goes (`soak.rs`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::task::JoinSet;
use tonic::Request;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use keyauth_core::authority::NewKey;
use keyauth_core::cache::CacheSettings;
use keyauth_core::catalog::{Catalog, RequestedPermission};
use keyauth_core::clock::Clock;
use keyauth_core::hashing::{HashParams, Hasher};
use keyauth_core::key::PresentedKey;
use keyauth_core::model::{ApplicationId, Environment, Metadata, Permissions};
use keyauth_core::sealing::SealKey;
use keyauth_core::store::{self, Provenance, StoreOptions};
use keyauth_proto as pb;
use keyauth_proto::key_authority_service_client::KeyAuthorityServiceClient;
use keyauth_server::server::{self, AuthoritySettings, Running, ServeOptions};
use keyauth_server::service::OperatorAuth;

mod caller;
mod soak;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Result<T, E = BoxError> = std::result::Result<T, E>;

#[derive(Debug, Parser)]
#[command(
    name = "keyauth-bench",
    about = "Load benchmark of keyauth's Verify path against in-process servers"
)]
struct Args {
    /// Seconds each workload runs in each round.
    #[arg(long, default_value_t = 3.0, value_parser = parse_seconds)]
    seconds: f64,

    /// Seconds each workload runs once, uncounted, before the first round (fresh connections,
    /// threads and allocator arenas would otherwise penalise whichever workload runs first).
    #[arg(long, default_value_t = 1.0, value_parser = parse_warmup)]
    warmup: f64,

    /// Rounds; each round runs every workload once, in the same order.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,

    /// Calls in flight at once (one tokio task each).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    concurrency: u32,

    /// HTTP/2 connections to each server; the tasks are spread over them.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    channels: u32,

    /// Keys issued to each server, half standard and half restricted (`patients: [read]`).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(2..))]
    keys: u32,

    /// Where to write the figures as JSON.
    #[arg(long, default_value = "target/keyauth-bench.json")]
    json: PathBuf,

    /// Skip the memory phase.
    #[arg(long)]
    skip_rss: bool,

    /// Run only the memory phase.
    #[arg(long, conflicts_with = "skip_rss")]
    rss: bool,

    /// Proven keys the memory phase caches.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(1..))]
    rss_keys: u32,

    /// Run only the caller's view (keyauth-client): in-process verify, the REST endpoint with
    /// and without the tower layer, revocation latency seen by the caller (across two
    /// instances too when KEYAUTH_BENCH_DATABASE_URL names a PostgreSQL database).
    #[arg(long, conflicts_with_all = ["rss", "skip_rss"])]
    caller: bool,

    /// Keys revoked to measure the revocation latency seen by the caller.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..))]
    revocations: u32,

    /// argon2id memory cost (KiB) of the memory phase's keys. The default (8) keeps the phase
    /// about the cache; 4096 (the server's default) shows what hashing itself keeps resident.
    #[arg(long, default_value_t = CHEAP_HASH.m_cost, value_parser = clap::value_parser!(u32).range(8..))]
    rss_m_cost: u32,

    /// Instruction counting (e.g. under `valgrind --tool=callgrind`): start the warm server
    /// only, then send exactly this many calls of `--count-workload` (16 in flight over two
    /// connections) and stop. The client runs on a current-thread runtime, so that the
    /// server's work is that of the multi-threaded runtime's workers alone.
    #[arg(long, conflicts_with_all = ["rss", "caller"])]
    count_calls: Option<u32>,

    /// The real server's memory: start the in-process gRPC server as `keyauth serve` runs it
    /// (default argon2id, cache and workers), issue this many keys over gRPC and verify each
    /// once (the client keeps none), and print VmRSS/VmHWM of this process (client and server)
    /// before, with the server idle, and after. Run it with and without `MALLOC_ARENA_MAX=2`.
    #[arg(long, conflicts_with_all = ["rss", "caller", "count_calls"])]
    serve_rss_keys: Option<u32>,

    /// Soak: run the real server (as `keyauth serve` builds it) under a mixed load of every
    /// RPC, garbage and refused calls included, for this many seconds, printing this process's
    /// VmRSS as it goes (`--concurrency` client tasks; 16 is a fair load for two cores).
    #[arg(long, value_parser = parse_seconds, conflicts_with_all = ["rss", "caller", "count_calls", "serve_rss_keys"])]
    soak: Option<f64>,

    /// The workload `--count-calls` sends: health, verify, check or bad-checksum.
    #[arg(long, default_value = "verify", requires = "count_calls")]
    count_workload: String,
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

/// argon2id parameters of the memory phase: the smallest argon2 accepts (8 KiB), so issuing
/// and proving 100,000 keys is quick. They do not change what the cache holds per key.
const CHEAP_HASH: HashParams = HashParams {
    m_cost: 8,
    t_cost: 1,
    p_cost: 1,
};

/// Single-threaded `Hasher::verify` calls timed to estimate the argon2id cost.
const ARGON2_SAMPLES: u32 = 50;

/// Calls in flight while issuing keys and warming the cache (setup, not measured).
const SETUP_PARALLELISM: usize = 8;

const APPLICATION: &str = "bench-app";

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
        return count_calls(&args.count_workload, calls as usize, cores).await;
    }
    if let Some(keys) = args.serve_rss_keys {
        return serve_rss(keys as usize, cores).await;
    }
    if let Some(seconds) = args.soak {
        return soak::run(seconds, args.concurrency as usize, cores).await;
    }
    let mut settings = Settings {
        seconds: args.seconds,
        warmup: args.warmup,
        rounds: args.rounds,
        concurrency: args.concurrency,
        channels: args.channels,
        keys: args.keys,
        cores,
        load_average_start: load_average(),
        load_average_end: None,
    };

    // First, while the process is fresh: its peak and resident memory are then the cache's.
    let memory = if args.skip_rss {
        None
    } else {
        let hash = HashParams {
            m_cost: args.rss_m_cost,
            ..CHEAP_HASH
        };
        Some(memory_phase(args.rss_keys as usize, cores, hash).await?)
    };
    if args.rss {
        let report = Report {
            settings,
            argon2: None,
            workloads: Vec::new(),
            server_cpu: Vec::new(),
            memory,
        };
        print_memory(report.memory.as_ref());
        return write_json(&args.json, &report);
    }

    let argon2 = measure_argon2(cores).await?;
    eprintln!(
        "argon2id verify: {:.2} ms (median of {ARGON2_SAMPLES}, single-threaded)",
        argon2.median_us / 1000.0
    );

    let (dir, admin_token, warm) = warm_server(cores).await?;
    let cold = BenchServer::start(
        &dir.path().join("cold.db"),
        CacheSettings {
            max_bytes: 0,
            ..CacheSettings::default()
        },
        &admin_token,
        cores,
        "keyauth-cold",
    )
    .await?;

    let keys = args.keys as usize;
    eprintln!("issuing {keys} keys to each server…");
    let warm_channels = connect(warm.addr, args.channels as usize).await?;
    let cold_channels = connect(cold.addr, args.channels as usize).await?;
    let warm_keys = issue_keys(&warm_channels[0], keys, &admin_token).await?;
    let cold_keys = issue_keys(&cold_channels[0], keys, &admin_token).await?;
    eprintln!("warming the cache…");
    warm_cache(&warm_channels[0], &warm_keys).await?;

    let inputs = Arc::new(Inputs::new(warm_keys, cold_keys)?);
    let channels_for = |workload| match workload {
        Workload::ColdVerify => &cold_channels,
        _ => &warm_channels,
    };
    let concurrency = args.concurrency as usize;
    if args.warmup > 0.0 {
        eprintln!("warm-up: {} s of each workload, not counted…", args.warmup);
        for workload in Workload::ALL {
            let warmup = Duration::from_secs_f64(args.warmup);
            let tally = drive(
                workload,
                channels_for(workload),
                &inputs,
                concurrency,
                warmup,
            )
            .await;
            if let Some(first) = &tally.first_problem {
                eprintln!("warm-up: {}: {first}", workload.label());
            }
        }
    }
    let duration = Duration::from_secs_f64(args.seconds);
    let mut totals: Vec<Tally> = Workload::ALL.iter().map(|_| Tally::default()).collect();
    for round in 1..=args.rounds {
        for (w, workload) in Workload::ALL.into_iter().enumerate() {
            let channels = channels_for(workload);
            let tally = drive(workload, channels, &inputs, concurrency, duration).await;
            eprintln!(
                "round {round}/{}: {:<34} {:>9.0} RPS{}",
                args.rounds,
                workload.label(),
                tally.total_calls() as f64 / tally.elapsed.as_secs_f64(),
                tally.problems_note()
            );
            totals[w].merge(tally);
        }
    }

    // Round after round, as the RPS phase: drift and the 10 ms resolution of the CPU clock
    // weigh on every workload alike.
    eprintln!(
        "server CPU per call: {} rounds of {} s of each…",
        args.rounds, args.seconds
    );
    let mut spent = [Duration::ZERO; Workload::CPU.len()];
    let mut tallies: Vec<Tally> = Workload::CPU.iter().map(|_| Tally::default()).collect();
    for _ in 0..args.rounds {
        for (w, workload) in Workload::CPU.into_iter().enumerate() {
            let before = warm.cpu_time()?;
            let tally = drive(workload, &warm_channels, &inputs, concurrency, duration).await;
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

    drop(warm_channels);
    drop(cold_channels);
    warm.stop().await?;
    cold.stop().await?;

    settings.load_average_end = load_average();
    let workloads = rows(&totals);
    let report = Report {
        settings,
        argon2: Some(argon2.with_measured(&workloads)),
        workloads,
        server_cpu: cpu,
        memory,
    };
    print_report(&report, &totals);
    write_json(&args.json, &report)
}

/// `--count-calls`: exactly `calls` calls of one workload against a warm server (two keys
/// issued and proven first), for instruction counts per call: run it with 0 calls and with
/// N, and divide the difference by N.
async fn count_calls(workload: &str, calls: usize, cores: usize) -> Result<()> {
    const TASKS: usize = 16;
    let workload = match workload {
        "health" => Workload::Floor,
        "verify" => Workload::WarmVerify,
        "check" => Workload::WarmCheck,
        "bad-checksum" => Workload::BadChecksum,
        other => return Err(format!("unknown --count-workload {other:?}").into()),
    };
    let (_dir, admin_token, server) = warm_server(cores).await?;
    let channels = connect(server.addr, 2).await?;
    let keys = issue_keys(&channels[0], 2, &admin_token).await?;
    warm_cache(&channels[0], &keys).await?;
    let inputs = Arc::new(Inputs::new(keys.clone(), keys)?);
    let mut tasks = JoinSet::new();
    for task in 0..TASKS {
        let mut clients = Clients::new(channels[task % channels.len()].clone());
        let inputs = inputs.clone();
        let n = calls / TASKS + usize::from(task < calls % TASKS);
        tasks.spawn(async move {
            let mut problems = 0usize;
            for i in 0..n {
                let (_, call) = inputs.call(workload, task, TASKS, i);
                if !matches!(clients.send(call).await, Outcome::Expected) {
                    problems += 1;
                }
            }
            problems
        });
    }
    let mut problems = 0;
    while let Some(joined) = tasks.join_next().await {
        problems += joined?;
    }
    eprintln!(
        "{calls} calls of {}, {problems} unexpected",
        workload.label()
    );
    drop(channels);
    server.stop().await
}

/// `--serve-rss-keys`: the resident memory of this process around a real server that issued
/// and verified `keys` keys over gRPC with the default argon2id parameters.
async fn serve_rss(keys: usize, cores: usize) -> Result<()> {
    let arenas = std::env::var("MALLOC_ARENA_MAX").unwrap_or_else(|_| "unset".into());
    let before = MemorySample::read()?;
    let (_dir, admin_token, server) = warm_server(cores).await?;
    let channels = connect(server.addr, 1).await?;
    let idle = MemorySample::read()?;
    let started = Instant::now();
    let bearer: MetadataValue<_> = format!("Bearer {admin_token}").parse()?;
    let mut tasks = JoinSet::new();
    for worker in 0..SETUP_PARALLELISM {
        let mut client = KeyAuthorityServiceClient::new(channels[0].clone());
        let bearer = bearer.clone();
        tasks.spawn(async move {
            for i in (worker..keys).step_by(SETUP_PARALLELISM) {
                let request = issue_request("rss", i, &bearer);
                let secret = client.issue_key(request).await?.into_inner().secret;
                if !client
                    .verify(verify_request(&secret))
                    .await?
                    .into_inner()
                    .valid
                {
                    return Err::<_, BoxError>(format!("key {i} did not verify").into());
                }
            }
            Ok(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined??;
    }
    let took = started.elapsed();
    let after = MemorySample::read()?;
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!(
        "real server, {keys} keys issued and verified over gRPC (argon2id m={} KiB, {} hash \
         workers) in {:.0} s, MALLOC_ARENA_MAX={arenas}: VmRSS {:.1} MiB before the server, \
         {:.1} MiB with it idle, {:.1} MiB after; peak (VmHWM) {:.1} MiB",
        HashParams::DEFAULT.m_cost,
        cores,
        took.as_secs_f64(),
        mib(before.rss_kib),
        mib(idle.rss_kib),
        mib(after.rss_kib),
        mib(after.hwm_kib),
    );
    drop(channels);
    server.stop().await
}

// ---------------------------------------------------------------------------------------------
// Servers and clients

/// A keyauth server running on a runtime of its own in this process (threads named `threads`,
/// so their CPU time can be told from the client's).
struct BenchServer {
    addr: SocketAddr,
    threads: &'static str,
    running: Option<Running>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for BenchServer {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl BenchServer {
    /// Builds the server as `keyauth serve` does (built-in catalog, default argon2id cost, one
    /// hash worker per core, queue of 64, a fresh seal key) over a SQLite store at `db`, and waits until health
    /// reports SERVING.
    async fn start(
        db: &Path,
        cache: CacheSettings,
        admin_token: &str,
        cores: usize,
        threads: &'static str,
    ) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cores)
            .thread_name(threads)
            .enable_all()
            .build()?;
        let url = format!("sqlite://{}", db.display());
        let admin_token = admin_token.to_owned();
        let running = runtime
            .spawn(async move {
                let store = store::connect(&url, &StoreOptions::default()).await?;
                let settings = AuthoritySettings {
                    hash: HashParams::DEFAULT,
                    hash_workers: cores,
                    hash_queue: 64,
                    cache,
                    // As a deployment that accepts idempotency keys runs (the soak sends them).
                    seal_key: Some(Arc::new(SealKey::parse(&SealKey::generate_hex()?)?)),
                    ..AuthoritySettings::default()
                };
                let authority = server::authority(store, settings, Clock::System).await?;
                let options = ServeOptions {
                    shutdown_grace: Duration::from_secs(5),
                    operators: OperatorAuth::new(Some(&admin_token)),
                    ..ServeOptions::default()
                };
                let running = server::start("127.0.0.1:0".parse()?, authority, options).await?;
                Ok::<_, BoxError>(running)
            })
            .await??;
        let server = BenchServer {
            addr: running.addr,
            threads,
            running: Some(running),
            runtime: Some(runtime),
        };
        server.wait_until_serving().await?;
        Ok(server)
    }

    async fn wait_until_serving(&self) -> Result<()> {
        let mut health = HealthClient::new(connect(self.addr, 1).await?.remove(0));
        let give_up = Instant::now() + Duration::from_secs(10);
        loop {
            let status = health
                .check(HealthCheckRequest::default())
                .await?
                .into_inner()
                .status;
            if status == ServingStatus::Serving as i32 {
                return Ok(());
            }
            if Instant::now() > give_up {
                return Err(format!("server on {} not SERVING after 10 s", self.addr).into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Shuts the server down as a signal would; the caller drops its channels first.
    async fn stop(mut self) -> Result<()> {
        if let Some(running) = self.running.take() {
            running.stop().await?;
        }
        Ok(())
    }

    /// CPU time (user + system) the server's threads have used so far.
    fn cpu_time(&self) -> Result<Duration> {
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
            if &stat[open + 1..close] != self.threads {
                continue;
            }
            let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
            let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
            ticks += field(11).unwrap_or(0) + field(12).unwrap_or(0);
        }
        // USER_HZ: 100 on Linux.
        Ok(Duration::from_millis(ticks * 10))
    }
}

/// Opens `n` HTTP/2 connections to `addr`.
/// A temporary directory, an operator token, and the warm server (default cache) on a store
/// in that directory; the directory lives as long as the caller keeps it.
async fn warm_server(cores: usize) -> Result<(tempfile::TempDir, String, BenchServer)> {
    let dir = tempfile::Builder::new()
        .prefix("keyauth-bench-")
        .tempdir()?;
    let admin_token = keyauth_core::key::random_base62(32)?;
    let server = BenchServer::start(
        &dir.path().join("warm.db"),
        CacheSettings::default(),
        &admin_token,
        cores,
        WARM_THREADS,
    )
    .await?;
    Ok((dir, admin_token, server))
}

async fn connect(addr: SocketAddr, n: usize) -> Result<Vec<Channel>> {
    let mut channels = Vec::with_capacity(n);
    for _ in 0..n {
        channels.push(
            Endpoint::from_shared(format!("http://{addr}"))?
                .connect()
                .await?,
        );
    }
    Ok(channels)
}

/// Issues `n` keys over gRPC, odd ones restricted to `patients: [read]`; returns the full
/// keys in issue order.
async fn issue_keys(channel: &Channel, n: usize, admin_token: &str) -> Result<Vec<String>> {
    let bearer: MetadataValue<_> = format!("Bearer {admin_token}").parse()?;
    let mut tasks = JoinSet::new();
    for worker in 0..SETUP_PARALLELISM {
        let mut client = KeyAuthorityServiceClient::new(channel.clone());
        let bearer = bearer.clone();
        tasks.spawn(async move {
            let mut issued = Vec::new();
            for i in (worker..n).step_by(SETUP_PARALLELISM) {
                let restricted = i % 2 == 1;
                let request = issue_request("bench", i, &bearer);
                let response = client.issue_key(request).await?.into_inner();
                if response.key.as_ref().map(|k| k.restricted) != Some(restricted) {
                    return Err::<_, BoxError>(format!("IssueKey {i}: unexpected answer").into());
                }
                issued.push((i, response.secret));
            }
            Ok(issued)
        });
    }
    let mut keys = vec![String::new(); n];
    while let Some(joined) = tasks.join_next().await {
        for (i, key) in joined?? {
            keys[i] = key;
        }
    }
    Ok(keys)
}

/// Verifies every key once, so that each is proven and cached.
/// The `i`th key the benchmark issues (`{prefix}-{i}`): odd ones restricted to `patients:read`,
/// even ones standard.
fn issue_request(
    prefix: &str,
    i: usize,
    bearer: &MetadataValue<tonic::metadata::Ascii>,
) -> Request<pb::IssueKeyRequest> {
    let permissions = if i % 2 == 1 {
        vec![pb::Permission {
            resource: "patients".into(),
            actions: vec!["read".into()],
        }]
    } else {
        Vec::new()
    };
    let mut request = Request::new(pb::IssueKeyRequest {
        application_id: APPLICATION.into(),
        environment: pb::Environment::Test as i32,
        name: format!("{prefix}-{i}"),
        permissions,
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("authorization", bearer.clone());
    request
}

async fn warm_cache(channel: &Channel, keys: &[String]) -> Result<()> {
    let keys: Arc<[String]> = keys.into();
    let mut tasks = JoinSet::new();
    for worker in 0..SETUP_PARALLELISM {
        let mut client = KeyAuthorityServiceClient::new(channel.clone());
        let keys = keys.clone();
        tasks.spawn(async move {
            for key in keys.iter().skip(worker).step_by(SETUP_PARALLELISM) {
                let answer = client.verify(verify_request(key)).await?.into_inner();
                if !answer.valid {
                    return Err::<_, BoxError>("warming: an issued key did not verify".into());
                }
            }
            Ok(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined??;
    }
    Ok(())
}

fn verify_request(key: &str) -> pb::VerifyRequest {
    pb::VerifyRequest {
        key: key.to_owned(),
        required_permissions: Vec::new(),
    }
}

// ---------------------------------------------------------------------------------------------
// Workloads

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Workload {
    Floor,
    WarmVerify,
    WarmCheck,
    ColdVerify,
    GarbageMix,
    /// Verify with a bad checksum only (the CPU phase).
    BadChecksum,
    /// Envoy's ext_authz Check of warm keys (`GET /api/v1/patients`).
    ExtAuthz,
}

impl Workload {
    /// The workloads whose server CPU per call the last phase measures.
    const CPU: [Workload; 5] = [
        Workload::Floor,
        Workload::BadChecksum,
        Workload::WarmVerify,
        Workload::WarmCheck,
        Workload::ExtAuthz,
    ];

    /// Run order within a round.
    const ALL: [Workload; 6] = [
        Workload::Floor,
        Workload::WarmVerify,
        Workload::WarmCheck,
        Workload::ColdVerify,
        Workload::GarbageMix,
        Workload::ExtAuthz,
    ];

    fn label(self) -> &'static str {
        match self {
            Workload::Floor => "a. floor: Health/Check",
            Workload::WarmVerify => "b. warm Verify",
            Workload::WarmCheck => "c. warm CheckPermission",
            Workload::ColdVerify => "d. cold Verify (cache off)",
            Workload::GarbageMix => "e. garbage mix",
            Workload::BadChecksum => "Verify, bad checksum",
            Workload::ExtAuthz => "f. warm ext_authz Check (Envoy)",
        }
    }
}

/// What kind of key a call presents; each kind has its own latency histogram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    /// A valid key, or no key at all (the floor).
    Valid,
    BadChecksum,
    UnknownId,
    WrongSecret,
}

const CLASSES: usize = 4;

impl Class {
    const GARBAGE: [Class; 3] = [Class::BadChecksum, Class::UnknownId, Class::WrongSecret];

    fn index(self) -> usize {
        self as usize
    }
}

/// The keys the workloads present.
struct Inputs {
    warm_keys: Vec<String>,
    cold_keys: Vec<String>,
    /// Warm keys with one character of the secret changed: the checksum no longer matches.
    bad_checksum: Vec<String>,
    /// Warm keys' lookups with another secret and a correct checksum.
    wrong_secret: Vec<String>,
}

impl Inputs {
    fn new(warm_keys: Vec<String>, cold_keys: Vec<String>) -> Result<Self> {
        let mut bad_checksum = Vec::with_capacity(warm_keys.len());
        let mut wrong_secret = Vec::with_capacity(warm_keys.len());
        for full in &warm_keys {
            let key = PresentedKey::parse(full).ok_or("an issued key does not parse")?;
            // The secret's first character, just after "sk_test_" and the lookup.
            let at = full.len() - keyauth_core::key::SECRET_LEN - keyauth_core::key::CHECKSUM_LEN;
            let flipped = if full.as_bytes()[at] == b'A' {
                "B"
            } else {
                "A"
            };
            let mut bad = full.clone();
            bad.replace_range(at..=at, flipped);
            bad_checksum.push(bad);
            let other_secret = keyauth_core::key::random_base62(keyauth_core::key::SECRET_LEN)?;
            let wrong = PresentedKey::from_parts(key.environment(), key.lookup(), &other_secret)
                .ok_or("cannot build a key from an issued key's lookup")?;
            wrong_secret.push(wrong.expose().to_owned());
        }
        Ok(Inputs {
            warm_keys,
            cold_keys,
            bad_checksum,
            wrong_secret,
        })
    }

    /// The `i`-th call of load task `task` out of `tasks`. Tasks walk the keys interleaved, so
    /// that between them they present every key in turn.
    fn call(&self, workload: Workload, task: usize, tasks: usize, i: usize) -> (Class, Call) {
        let n = i * tasks + task;
        let warm = &self.warm_keys[n % self.warm_keys.len()];
        match workload {
            Workload::Floor => (Class::Valid, Call::Health),
            Workload::BadChecksum => (
                Class::BadChecksum,
                Call::verify(&self.bad_checksum[n % self.bad_checksum.len()], false),
            ),
            Workload::WarmVerify => (Class::Valid, Call::verify(warm, true)),
            Workload::WarmCheck => (Class::Valid, Call::CheckPermission { key: warm.clone() }),
            Workload::ExtAuthz => (Class::Valid, Call::ExtAuthz { key: warm.clone() }),
            Workload::ColdVerify => {
                let cold = &self.cold_keys[n % self.cold_keys.len()];
                (Class::Valid, Call::verify(cold, true))
            }
            // Alternate within each task, so that both halves see the same conditions.
            Workload::GarbageMix if i.is_multiple_of(2) => (Class::Valid, Call::verify(warm, true)),
            Workload::GarbageMix => {
                let j = n % self.warm_keys.len();
                let (class, key) = match (i / 2 + task) % 3 {
                    0 => (Class::BadChecksum, self.bad_checksum[j].clone()),
                    1 => (Class::WrongSecret, self.wrong_secret[j].clone()),
                    // A fresh id each call: an attacker's garbage is in no cache.
                    _ => (
                        Class::UnknownId,
                        PresentedKey::generate(Environment::Test)
                            .expect("the OS random generator works")
                            .expose()
                            .to_owned(),
                    ),
                };
                let call = Call::Verify {
                    key,
                    expect_valid: false,
                };
                (class, call)
            }
        }
    }
}

/// A CheckRequest as Envoy's HTTP filter sends it for `GET /api/v1/patients` with `key`.
fn envoy_check(key: &str) -> envoy_types::pb::envoy::service::auth::v3::CheckRequest {
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
        HttpRequest, Request as AttributeRequest,
    };
    use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
    let headers = [
        (":authority", "api.example.com"),
        (":method", "GET"),
        (":path", "/api/v1/patients"),
        ("authorization", &format!("Bearer {key}")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(AttributeRequest {
                http: Some(HttpRequest {
                    method: "GET".into(),
                    path: "/api/v1/patients".into(),
                    host: "api.example.com".into(),
                    headers,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

/// One RPC, built before the clock starts.
enum Call {
    Health,
    Verify {
        key: String,
        expect_valid: bool,
    },
    CheckPermission {
        key: String,
    },
    /// Envoy's ext_authz Check of `GET /api/v1/patients` with this key.
    ExtAuthz {
        key: String,
    },
}

impl Call {
    fn verify(key: &str, expect_valid: bool) -> Self {
        Call::Verify {
            key: key.to_owned(),
            expect_valid,
        }
    }
}

/// How a call went: the answer expected, another answer (with what it was), or an RPC error.
enum Outcome {
    Expected,
    Unexpected(String),
    Failed(tonic::Status),
}

/// What the load tasks read of a Verify or CheckPermission answer: the verdict (`valid` or
/// `allowed`, the error, the HTTP status), not the key. prost skips the fields a message does
/// not declare, so the client decodes about as much as it does of a health answer, and the
/// ratios to the floor measure the server rather than the client sharing its cores.
#[derive(Clone, PartialEq, prost::Message)]
struct VerdictOnly {
    #[prost(bool, tag = "1")]
    valid: bool,
    #[prost(message, optional, tag = "3")]
    error: Option<pb::ApiError>,
    #[prost(int32, tag = "4")]
    http_status: i32,
}

struct Clients {
    health: HealthClient<Channel>,
    /// Verify and CheckPermission, decoding [`VerdictOnly`].
    verdicts: tonic::client::Grpc<Channel>,
    envoy: AuthorizationClient<Channel>,
}

impl Clients {
    fn new(channel: Channel) -> Self {
        Clients {
            health: HealthClient::new(channel.clone()),
            envoy: AuthorizationClient::new(channel.clone()),
            verdicts: tonic::client::Grpc::new(channel),
        }
    }

    /// A unary call to `path` whose answer is read as [`VerdictOnly`].
    async fn verdict<Req: prost::Message + Send + 'static>(
        &mut self,
        path: &'static str,
        request: Req,
    ) -> Result<VerdictOnly, tonic::Status> {
        self.verdicts
            .ready()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let codec = tonic_prost::ProstCodec::<Req, VerdictOnly>::default();
        let path = http::uri::PathAndQuery::from_static(path);
        let answer = self.verdicts.unary(Request::new(request), path, codec);
        Ok(answer.await?.into_inner())
    }

    async fn send(&mut self, call: Call) -> Outcome {
        match call {
            Call::ExtAuthz { key } => match self.envoy.check(envoy_check(&key)).await {
                Ok(r) if r.get_ref().status.as_ref().is_some_and(|s| s.code == 0) => {
                    Outcome::Expected
                }
                Ok(r) => Outcome::Unexpected(format!(
                    "ext_authz Check: status {:?}",
                    r.get_ref().status.as_ref().map(|s| s.code)
                )),
                Err(status) => Outcome::Failed(status),
            },
            Call::Health => match self.health.check(HealthCheckRequest::default()).await {
                Ok(r) if r.get_ref().status == ServingStatus::Serving as i32 => Outcome::Expected,
                Ok(r) => Outcome::Unexpected(format!("health status {}", r.get_ref().status)),
                Err(status) => Outcome::Failed(status),
            },
            Call::Verify { key, expect_valid } => {
                let request = pb::VerifyRequest {
                    key,
                    required_permissions: Vec::new(),
                };
                match self.verdict(VERIFY_PATH, request).await {
                    Ok(r) => {
                        let expected_status = if expect_valid { 200 } else { 401 };
                        if r.valid == expect_valid && r.http_status == expected_status {
                            Outcome::Expected
                        } else {
                            Outcome::Unexpected(format!(
                                "Verify: valid {} http_status {} error {:?}",
                                r.valid,
                                r.http_status,
                                r.error.map(|e| e.code)
                            ))
                        }
                    }
                    Err(status) => Outcome::Failed(status),
                }
            }
            Call::CheckPermission { key } => {
                let request = pb::CheckPermissionRequest {
                    key,
                    resource: "patients".into(),
                    action: "read".into(),
                };
                match self.verdict(CHECK_PERMISSION_PATH, request).await {
                    // `allowed` is field 1, read as `valid`.
                    Ok(r) if r.valid && r.http_status == 200 => Outcome::Expected,
                    Ok(r) => Outcome::Unexpected(format!(
                        "CheckPermission: allowed false, error {:?}",
                        r.error.map(|e| e.code)
                    )),
                    Err(status) => Outcome::Failed(status),
                }
            }
        }
    }
}

const VERIFY_PATH: &str = "/keyauth.v1.KeyAuthorityService/Verify";
const CHECK_PERMISSION_PATH: &str = "/keyauth.v1.KeyAuthorityService/CheckPermission";

/// Runs `workload` for `duration` with `concurrency` tasks spread over `channels`.
async fn drive(
    workload: Workload,
    channels: &[Channel],
    inputs: &Arc<Inputs>,
    concurrency: usize,
    duration: Duration,
) -> Tally {
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = JoinSet::new();
    for task in 0..concurrency {
        let mut clients = Clients::new(channels[task % channels.len()].clone());
        let inputs = inputs.clone();
        tasks.spawn(async move {
            let mut tally = Tally::default();
            let mut i = 0;
            while Instant::now() < deadline {
                let (class, call) = inputs.call(workload, task, concurrency, i);
                let sent = Instant::now();
                let outcome = clients.send(call).await;
                tally.record(class, sent.elapsed(), outcome);
                i += 1;
            }
            tally
        });
    }
    let mut total = Tally::default();
    while let Some(joined) = tasks.join_next().await {
        total.merge(joined.expect("a load task panicked"));
    }
    // Up to the last answer, so that the calls still in flight at the deadline count too.
    total.elapsed = started.elapsed();
    total
}

// ---------------------------------------------------------------------------------------------
// Measurements

/// Latencies in nanoseconds, 1 µs to 60 s, three significant digits.
fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1_000, 60_000_000_000, 3).expect("valid histogram bounds")
}

/// What one workload did: latencies per class, problems, and the time it ran.
#[derive(Default)]
struct Tally {
    latencies: [Option<Histogram<u64>>; CLASSES],
    unexpected: [u64; CLASSES],
    failed: [u64; CLASSES],
    first_problem: Option<String>,
    elapsed: Duration,
}

impl Tally {
    fn record(&mut self, class: Class, latency: Duration, outcome: Outcome) {
        let c = class.index();
        match outcome {
            Outcome::Expected => {}
            Outcome::Unexpected(what) => {
                self.unexpected[c] += 1;
                self.first_problem.get_or_insert(what);
            }
            Outcome::Failed(status) => {
                // A failed call has no answer to time.
                self.failed[c] += 1;
                self.first_problem
                    .get_or_insert_with(|| format!("{:?}: {}", status.code(), status.message()));
                return;
            }
        }
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.latencies[c]
            .get_or_insert_with(new_histogram)
            .saturating_record(nanos);
    }

    fn merge(&mut self, other: Tally) {
        for c in 0..CLASSES {
            if let Some(h) = &other.latencies[c] {
                self.latencies[c]
                    .get_or_insert_with(new_histogram)
                    .add(h)
                    .expect("histograms share their bounds");
            }
            self.unexpected[c] += other.unexpected[c];
            self.failed[c] += other.failed[c];
        }
        if self.first_problem.is_none() {
            self.first_problem = other.first_problem;
        }
        self.elapsed += other.elapsed;
    }

    /// Latencies of the given classes, merged.
    fn histogram(&self, classes: &[Class]) -> Histogram<u64> {
        let mut merged = new_histogram();
        for c in classes {
            if let Some(h) = &self.latencies[c.index()] {
                merged.add(h).expect("histograms share their bounds");
            }
        }
        merged
    }

    fn total_calls(&self) -> u64 {
        self.latencies.iter().flatten().map(Histogram::len).sum()
    }

    fn problems_note(&self) -> String {
        let unexpected: u64 = self.unexpected.iter().sum();
        let failed: u64 = self.failed.iter().sum();
        match &self.first_problem {
            None => String::new(),
            Some(first) => format!("  ({failed} failed, {unexpected} unexpected; first: {first})"),
        }
    }
}

/// One line of the table.
#[derive(Debug, Serialize)]
struct Row {
    workload: &'static str,
    /// Answered calls (failed calls are counted apart and not timed).
    calls: u64,
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    max_us: f64,
    rps_vs_floor: Option<f64>,
    p99_vs_floor: Option<f64>,
    failed: u64,
    unexpected: u64,
}

/// The table: one row per workload, the garbage mix split into its valid and garbage halves
/// and the garbage half into its three kinds.
fn rows(totals: &[Tally]) -> Vec<Row> {
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
struct Argon2Cost {
    m_cost_kib: u32,
    t_cost: u32,
    p_cost: u32,
    /// Wall time of one `Hasher::verify`, thread hand-off included: the median (the cost the
    /// target uses: robust to other load on the machine), the mean and the fastest.
    median_us: f64,
    mean_us: f64,
    min_us: f64,
    samples: u32,
    cores: usize,
    /// 0.8 × cores ÷ median cost: what the cold path should reach with argon2id as its
    /// bottleneck.
    cold_target_rps: f64,
    cold_measured_rps: Option<f64>,
    cold_vs_target: Option<f64>,
}

impl Argon2Cost {
    fn with_measured(mut self, rows: &[Row]) -> Self {
        let cold = Workload::ColdVerify.label();
        self.cold_measured_rps = rows.iter().find(|r| r.workload == cold).map(|r| r.rps);
        self.cold_vs_target = self.cold_measured_rps.map(|m| m / self.cold_target_rps);
        self
    }
}

/// Times `Hasher::verify` of a default-cost hash, one call at a time.
async fn measure_argon2(cores: usize) -> Result<Argon2Cost> {
    let hasher = Hasher::new(HashParams::DEFAULT, 1, 0)?;
    let secret = keyauth_core::key::random_base62(keyauth_core::key::SECRET_LEN)?;
    let phc = hasher.hash(secret.as_bytes(), None).await?;
    // One untimed call: first touches of the blocking pool and the allocator.
    hasher.verify(secret.as_bytes(), &phc, None).await?;
    let mut times = Vec::with_capacity(ARGON2_SAMPLES as usize);
    for _ in 0..ARGON2_SAMPLES {
        let started = Instant::now();
        if !hasher.verify(secret.as_bytes(), &phc, None).await? {
            return Err("argon2id: a secret did not verify against its own hash".into());
        }
        times.push(started.elapsed());
    }
    times.sort();
    let median = times[times.len() / 2];
    let mean = times.iter().sum::<Duration>() / ARGON2_SAMPLES;
    Ok(Argon2Cost {
        m_cost_kib: HashParams::DEFAULT.m_cost,
        t_cost: HashParams::DEFAULT.t_cost,
        p_cost: HashParams::DEFAULT.p_cost,
        median_us: median.as_secs_f64() * 1e6,
        mean_us: mean.as_secs_f64() * 1e6,
        min_us: times[0].as_secs_f64() * 1e6,
        samples: ARGON2_SAMPLES,
        cores,
        cold_target_rps: 0.8 * cores as f64 / median.as_secs_f64(),
        cold_measured_rps: None,
        cold_vs_target: None,
    })
}

// ---------------------------------------------------------------------------------------------
// Memory

#[derive(Clone, Copy, Debug, Serialize)]
struct MemorySample {
    rss_kib: u64,
    /// Peak resident set so far.
    hwm_kib: u64,
}

impl MemorySample {
    fn read() -> Result<Self> {
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

#[derive(Debug, Serialize)]
struct MemoryReport {
    method: String,
    keys: usize,
    /// Proven keys the cache holds at the end (`VerifyCache::len`).
    cached: u64,
    /// Authority set up, store empty.
    before: MemorySample,
    /// Keys issued (store filled, cache empty); the bench holds the full keys from here on.
    after_issue: MemorySample,
    /// Every key verified once (cache full) and the last-use times flushed.
    after_verify: MemorySample,
    /// `after_verify.rss − after_issue.rss`: the cache, plus allocator slack.
    cache_rss_kib: i64,
    cache_bytes_per_key: f64,
}

/// Issues `keys` keys through `Authority` (no gRPC) with cheap argon2id, verifies each once so
/// that the cache holds them all, and samples the process's memory around it.
async fn memory_phase(keys: usize, cores: usize, hash: HashParams) -> Result<MemoryReport> {
    eprintln!("memory phase: issuing and verifying {keys} keys in-process…");
    let dir = tempfile::Builder::new()
        .prefix("keyauth-bench-rss-")
        .tempdir()?;
    // Two connections: SQLite's page cache (2 MiB a connection) stays out of the figures.
    let store = store::connect(
        &format!("sqlite://{}", dir.path().join("rss.db").display()),
        &StoreOptions {
            max_connections: 2,
            ..StoreOptions::default()
        },
    )
    .await?;
    let catalog = Catalog::built_in();
    let restricted = catalog.permissions(
        &[RequestedPermission {
            resource: "patients".into(),
            actions: vec!["read".into()],
        }],
        "permissions",
    )?;
    let settings = AuthoritySettings {
        hash,
        hash_workers: cores,
        hash_queue: 1024,
        // Room for every key, whatever the byte budget's default.
        cache: CacheSettings {
            max_bytes: CacheSettings::DEFAULT_MAX_BYTES.max(keys as u64 * 2048),
            ..CacheSettings::default()
        },
        catalog: catalog.clone(),
        ..AuthoritySettings::default()
    };
    let authority = server::authority(store, settings, Clock::System).await?;
    let application = ApplicationId::parse(APPLICATION, "application_id")?;
    let before = MemorySample::read()?;

    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for worker in 0..SETUP_PARALLELISM {
        let authority = authority.clone();
        let application = application.clone();
        let restricted = restricted.clone();
        tasks.spawn(async move {
            let mut issued = Vec::new();
            for i in (worker..keys).step_by(SETUP_PARALLELISM) {
                let new = NewKey {
                    application_id: application.clone(),
                    environment: Environment::Test,
                    name: format!("rss-{i}"),
                    permissions: if i % 2 == 1 {
                        restricted.clone()
                    } else {
                        Permissions::default()
                    },
                    expire_time: None,
                    metadata: Metadata::new(),
                };
                let key = authority
                    .issue(new, &Provenance::default(), None)
                    .await?
                    .key;
                issued.push(key.expose().to_owned());
            }
            Ok::<_, keyauth_core::Error>(issued)
        });
    }
    let mut full_keys = Vec::with_capacity(keys);
    while let Some(joined) = tasks.join_next().await {
        full_keys.extend(joined??);
    }
    let after_issue = MemorySample::read()?;
    eprintln!(
        "memory phase: {keys} keys issued in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let started = Instant::now();
    let full_keys: Arc<[String]> = full_keys.into();
    let mut tasks = JoinSet::new();
    for worker in 0..SETUP_PARALLELISM {
        let authority = authority.clone();
        let full_keys = full_keys.clone();
        tasks.spawn(async move {
            for key in full_keys.iter().skip(worker).step_by(SETUP_PARALLELISM) {
                if !authority.verify(key, &[], None).await?.is_valid() {
                    return Err::<_, BoxError>("memory phase: an issued key did not verify".into());
                }
            }
            Ok(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined??;
    }
    // The server writes last-use times every few seconds; do as it does.
    authority.flush_usage().await?;
    let after_verify = MemorySample::read()?;
    let cached = authority.cache().len();
    eprintln!(
        "memory phase: {keys} keys verified in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    authority.store().close().await;

    let cache_rss_kib = after_verify.rss_kib as i64 - after_issue.rss_kib as i64;
    Ok(MemoryReport {
        method: format!(
            "in-process Authority::issue + Authority::verify (no gRPC), argon2id m={} KiB t={} p={}, \
             SQLite with 2 connections, default cache settings",
            hash.m_cost, hash.t_cost, hash.p_cost
        ),
        keys,
        cached,
        before,
        after_issue,
        after_verify,
        cache_rss_kib,
        cache_bytes_per_key: cache_rss_kib as f64 * 1024.0 / cached.max(1) as f64,
    })
}

// ---------------------------------------------------------------------------------------------
// Output

#[derive(Debug, Serialize)]
struct Settings {
    seconds: f64,
    warmup: f64,
    rounds: u32,
    concurrency: u32,
    channels: u32,
    keys: u32,
    cores: usize,
    /// 1, 5 and 15 minute load averages at the start and the end: other work on the machine
    /// shows here, and in the figures.
    load_average_start: Option<String>,
    load_average_end: Option<String>,
}

/// The system's 1, 5 and 15 minute load averages (Linux), e.g. `0.52 0.60 0.41`.
fn load_average() -> Option<String> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    Some(
        text.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    )
}

/// The name of the warm server's threads, whose CPU time the last phase counts.
const WARM_THREADS: &str = "keyauth-warm";

/// The warm server's own CPU time over one workload of the last phase.
#[derive(Debug, Serialize)]
struct CpuRow {
    workload: &'static str,
    calls: u64,
    server_cpu_ms: f64,
    server_cpu_us_per_call: f64,
    /// Per call, relative to a health Check's.
    vs_floor: Option<f64>,
    problems: String,
}

#[derive(Debug, Serialize)]
struct Report {
    settings: Settings,
    argon2: Option<Argon2Cost>,
    workloads: Vec<Row>,
    /// Server CPU per call (the warm server's threads only).
    server_cpu: Vec<CpuRow>,
    memory: Option<MemoryReport>,
}

fn print_report(report: &Report, totals: &[Tally]) {
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

fn print_memory(memory: Option<&MemoryReport>) {
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

fn write_json(path: &Path, report: &Report) -> Result<()> {
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
