//! `--serve-rss-keys N`: the resident memory of this process around a real server (as `keyauth
//! serve` runs it: default argon2id, cache and workers) that issued and verified N keys over
//! gRPC; the client keeps none.

use std::time::Instant;

use keyauth_core::hashing::HashParams;

use crate::error::Result;
use crate::keys::{issue_message, spread, verify_request};
use crate::procfs::MemorySample;
use crate::servers::{operator_client, warm_server};

pub async fn run(keys: usize, cores: usize) -> Result<()> {
    let arenas = std::env::var("MALLOC_ARENA_MAX").unwrap_or_else(|_| "unset".into());
    let before = MemorySample::read()?;
    let (_dir, admin_token, server) = warm_server(cores).await?;
    let client = operator_client(server.addr, &admin_token).await?;
    let idle = MemorySample::read()?;
    let started = Instant::now();
    let issuer = client.clone();
    spread(keys, move |i| {
        let client = issuer.clone();
        async move {
            let secret = client.issue_key(issue_message("rss", i)).await?.secret;
            if !client.verify(verify_request(&secret)).await?.valid {
                return Err(format!("key {i} did not verify").into());
            }
            Ok(())
        }
    })
    .await?;
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
    drop(client);
    server.stop().await
}
