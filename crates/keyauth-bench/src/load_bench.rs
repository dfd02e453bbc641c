//! The default mode: the memory phase (unless `--skip-rss`; alone with `--rss`), the argon2id
//! cost, then the warm and cold servers under each workload in turn, round after round, the
//! warm server's CPU per call, and the report.

use std::sync::Arc;
use std::time::Duration;

use keyauth_core::cache::CacheSettings;
use keyauth_core::hashing::HashParams;

use crate::argon2_cost::{ARGON2_SAMPLES, measure_argon2};
use crate::args::Args;
use crate::cpu::server_cpu;
use crate::error::Result;
use crate::keys::{issue_keys, warm_cache};
use crate::load::drive;
use crate::memory::{CHEAP_HASH, memory_phase};
use crate::procfs::load_average;
use crate::report::{Report, Settings, print_memory, print_report, rows, write_json};
use crate::servers::{BenchServer, connect, operator_client, warm_server};
use crate::tally::Tally;
use crate::workloads::{Inputs, Workload};

pub async fn run(args: &Args, cores: usize) -> Result<()> {
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
    let (warm_keys, cold_keys) = {
        let warm_client = operator_client(warm.addr, &admin_token).await?;
        let cold_client = operator_client(cold.addr, &admin_token).await?;
        let warm_keys = issue_keys(&warm_client, keys).await?;
        let cold_keys = issue_keys(&cold_client, keys).await?;
        eprintln!("warming the cache…");
        warm_cache(&warm_client, &warm_keys).await?;
        (warm_keys, cold_keys)
    };

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

    eprintln!(
        "server CPU per call: {} rounds of {} s of each…",
        args.rounds, args.seconds
    );
    let cpu = server_cpu(
        &warm,
        &warm_channels,
        &inputs,
        concurrency,
        duration,
        args.rounds,
    )
    .await?;

    drop(warm_channels);
    drop(cold_channels);
    warm.stop().await?;
    cold.stop().await?;

    settings.load_average_end = load_average();
    let workloads = rows(&totals);
    let cold_label = Workload::ColdVerify.label();
    let cold_rps = workloads
        .iter()
        .find(|r| r.workload == cold_label)
        .map(|r| r.rps);
    let report = Report {
        settings,
        argon2: Some(argon2.with_measured(cold_rps)),
        workloads,
        server_cpu: cpu,
        memory,
    };
    print_report(&report, &totals);
    write_json(&args.json, &report)
}
