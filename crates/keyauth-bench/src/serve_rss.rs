//! `--serve-rss-keys N`: the resident memory of this process around a real server (as `keyauth
//! serve` runs it: default argon2id, cache and workers) that issued and verified N keys over
//! gRPC; the client keeps none.

use std::time::Instant;

use keyauth_core::hashing::HashParams;
use keyauth_proto::key_authority_service_client::KeyAuthorityServiceClient;
use tokio::task::JoinSet;
use tonic::metadata::MetadataValue;

use crate::error::{BoxError, Result};
use crate::keys::{SETUP_PARALLELISM, issue_request, verify_request};
use crate::procfs::MemorySample;
use crate::servers::{connect, warm_server};

pub async fn run(keys: usize, cores: usize) -> Result<()> {
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
