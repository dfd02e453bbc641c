//! `--attack SECONDS`: the figures of the security review's findings F2, F6 and F7, against
//! the warm server (default argon2id cost, default cache), from outside over gRPC.
//!
//! - F7, what timing tells of a key id: the server's answer time for a Verify with an unknown
//!   id (valid checksum), with a wrong secret for a known id read for the first time (a store
//!   read and the check value), and again (memory).
//! - F2, a flood of wrong secrets on one key id (32 tasks for SECONDS): the time until the
//!   genuine key, never proven on this instance, is valid, and the cold proofs of other keys
//!   during the flood against before it.
//! - F6, the most expensive accepted Verify (64 permissions × 16 actions) and an oversized one
//!   (1,000 × 80 unknown actions, refused): the server's CPU per call against a plain Verify.

use std::time::{Duration, Instant};

use keyauth_core::key::PresentedKey;
use keyauth_proto as pb;
use keyauth_proto::key_authority_service_client::KeyAuthorityServiceClient;
use tokio::task::JoinSet;
use tonic::transport::Channel;

use crate::error::Result;
use crate::keys::{issue_keys, verify_request};
use crate::servers::{connect, operator_client, warm_server};

const FLOOD_TASKS: usize = 32;
/// Keys whose cold proof is timed before and during the flood.
const BYSTANDERS: usize = 10;
/// Calls per F6 workload.
const CPU_CALLS: usize = 2000;

fn wrong_secret(key: &str, i: usize) -> String {
    let key = PresentedKey::parse(key).expect("an issued key");
    PresentedKey::from_parts(key.environment(), key.lookup(), &format!("{i:0>32}"))
        .expect("well formed")
        .expose()
        .to_owned()
}

/// One Verify; its latency, and whether the key was valid (`Err`: the call failed).
async fn verify(
    client: &mut KeyAuthorityServiceClient<Channel>,
    request: pb::VerifyRequest,
) -> (Duration, std::result::Result<bool, tonic::Status>) {
    let started = Instant::now();
    let answer = client.verify(request).await.map(|r| r.into_inner().valid);
    (started.elapsed(), answer)
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times.get(times.len() / 2).copied().unwrap_or_default()
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

pub async fn run(seconds: f64, cores: usize) -> Result<()> {
    let (_dir, admin_token, server) = warm_server(cores).await?;
    let operator = operator_client(server.addr, &admin_token).await?;
    // 0: the victim; 1..=BYSTANDERS cold before the flood, the next BYSTANDERS cold during it;
    // the rest for F7's first-read timings. None is proven before it is timed.
    let keys = issue_keys(&operator, 1 + 2 * BYSTANDERS + 50).await?;
    let channel = connect(server.addr, 1).await?.remove(0);
    let mut client = KeyAuthorityServiceClient::new(channel.clone());

    // F7.
    let mut unknown = Vec::new();
    for _ in 0..200 {
        let id = PresentedKey::generate(keyauth_core::model::Environment::Test)?;
        unknown.push(verify(&mut client, verify_request(id.expose())).await.0);
    }
    let mut first_read = Vec::new();
    for key in &keys[1 + 2 * BYSTANDERS..] {
        first_read.push(
            verify(&mut client, verify_request(&wrong_secret(key, 1)))
                .await
                .0,
        );
    }
    let mut again = Vec::new();
    for i in 0..200 {
        let key = &keys[1 + 2 * BYSTANDERS + i % 50];
        again.push(
            verify(&mut client, verify_request(&wrong_secret(key, i + 2)))
                .await
                .0,
        );
    }
    println!("F7  answer time of a Verify refused (median, client side, same machine):");
    println!(
        "      unknown key id (valid checksum)           {}",
        us(median(unknown))
    );
    println!(
        "      known id, wrong secret, first read        {}",
        us(median(first_read))
    );
    println!(
        "      known id, wrong secret, again (memory)    {}",
        us(median(again))
    );

    // F2: cold proofs before the flood.
    let mut before = Vec::new();
    for key in &keys[1..=BYSTANDERS] {
        let (took, valid) = verify(&mut client, verify_request(key)).await;
        if valid? {
            before.push(took);
        }
    }
    let victim = keys[0].clone();
    let flood_until = Instant::now() + Duration::from_secs_f64(seconds);
    let cpu_before = server.cpu_time()?;
    let mut flood = JoinSet::new();
    for task in 0..FLOOD_TASKS {
        let mut client = KeyAuthorityServiceClient::new(channel.clone());
        let victim = victim.clone();
        flood.spawn(async move {
            let (mut sent, mut throttled, mut valid) = (0u64, 0u64, 0u64);
            while Instant::now() < flood_until {
                let guess = wrong_secret(&victim, task * 1_000_000 + sent as usize + 10);
                match client.verify(verify_request(&guess)).await {
                    Ok(r) if r.get_ref().valid => valid += 1,
                    Ok(_) => {}
                    Err(_) => throttled += 1,
                }
                sent += 1;
            }
            (sent, throttled, valid)
        });
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let mut tries = 0;
    let owner = loop {
        tries += 1;
        let (_, answer) = verify(&mut client, verify_request(&victim)).await;
        if matches!(answer, Ok(true)) {
            break started.elapsed();
        }
        if started.elapsed() > Duration::from_secs(30) {
            return Err("the genuine key was not valid within 30 s of the flood".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut during = Vec::new();
    for key in &keys[1 + BYSTANDERS..=2 * BYSTANDERS] {
        let (took, valid) = verify(&mut client, verify_request(key)).await;
        if valid? {
            during.push(took);
        }
    }
    let (mut sent, mut throttled, mut valid) = (0, 0, 0);
    while let Some(joined) = flood.join_next().await {
        let (s, t, v) = joined?;
        sent += s;
        throttled += t;
        valid += v;
    }
    let flood_cpu = server.cpu_time()? - cpu_before;
    println!(
        "F2  {FLOOD_TASKS} tasks sending wrong secrets for one key id for {seconds} s: {sent} sent, \
         {throttled} refused as retryable, {valid} valid"
    );
    println!(
        "      the genuine key (cold) valid after {} ({tries} tr{})",
        us(owner),
        if tries == 1 { "y" } else { "ies" }
    );
    println!(
        "      other keys' cold proofs: median {} before the flood, {} during it",
        us(median(before)),
        us(median(during))
    );
    println!(
        "      server CPU over the flood: {:.1} µs per wrong secret",
        flood_cpu.as_secs_f64() * 1e6 / sent.max(1) as f64
    );

    // F6.
    let plain = verify_request(&keys[1]);
    let worst = pb::VerifyRequest {
        key: keys[1].clone(),
        required_permissions: vec![
            pb::Permission {
                resource: "patients".into(),
                actions: vec!["read".into(); 16],
            };
            64
        ],
    };
    let oversized = pb::VerifyRequest {
        key: keys[1].clone(),
        required_permissions: vec![
            pb::Permission {
                resource: "patients".into(),
                actions: vec!["x".into(); 80],
            };
            1000
        ],
    };
    println!("F6  server CPU per Verify ({CPU_CALLS} calls each, 16 at a time):");
    let mut floor = None;
    for (what, request) in [
        ("plain (no permission asked)", plain),
        ("64 permissions × 16 actions (accepted)", worst),
        ("1,000 × 80 unknown actions (refused)", oversized),
    ] {
        let cpu = server_cpu_per_call(&server, &channel, request).await?;
        let base = *floor.get_or_insert(cpu);
        println!(
            "      {what:<40} {:>7.1} µs  ({:.2}×)",
            cpu.as_secs_f64() * 1e6,
            cpu.as_secs_f64() / base.as_secs_f64()
        );
    }
    drop(client);
    drop(channel);
    server.stop().await
}

/// The server's CPU time per call over [`CPU_CALLS`] copies of `request`, 16 in flight.
async fn server_cpu_per_call(
    server: &crate::servers::BenchServer,
    channel: &Channel,
    request: pb::VerifyRequest,
) -> Result<Duration> {
    const TASKS: usize = 16;
    let before = server.cpu_time()?;
    let mut tasks = JoinSet::new();
    for _ in 0..TASKS {
        let mut client = KeyAuthorityServiceClient::new(channel.clone());
        let request = request.clone();
        tasks.spawn(async move {
            for _ in 0..CPU_CALLS / TASKS {
                let _ = client.verify(request.clone()).await;
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined?;
    }
    Ok((server.cpu_time()? - before) / CPU_CALLS as u32)
}
