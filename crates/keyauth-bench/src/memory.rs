//! The memory phase (`--rss`, and first in the default mode): fills a verification cache with
//! proven keys through `Authority` directly (no gRPC, cheap argon2id parameters so that 100,000
//! issues take seconds, not minutes) and samples the process's VmRSS/VmHWM around it.

use std::sync::Arc;
use std::time::Instant;

use keyauth_core::authority::NewKey;
use keyauth_core::cache::CacheSettings;
use keyauth_core::catalog::{Catalog, CatalogCheck, RequestedPermission};
use keyauth_core::clock::Clock;
use keyauth_core::hashing::HashParams;
use keyauth_core::model::{ApplicationId, Environment, Metadata, Permissions};
use keyauth_core::store::{self, Provenance, StoreOptions};
use keyauth_server::server::{self, AuthoritySettings};
use serde::Serialize;
use tokio::task::JoinSet;

use crate::error::{BoxError, Result};
use crate::keys::{APPLICATION, SETUP_PARALLELISM};
use crate::procfs::MemorySample;

/// argon2id parameters of the memory phase: the smallest argon2 accepts (8 KiB), so issuing
/// and proving 100,000 keys is quick. They do not change what the cache holds per key.
pub const CHEAP_HASH: HashParams = HashParams {
    m_cost: 8,
    t_cost: 1,
    p_cost: 1,
};

#[derive(Debug, Serialize)]
pub struct MemoryReport {
    pub method: String,
    pub keys: usize,
    /// Proven keys the cache holds at the end (`VerifyCache::len`).
    pub cached: u64,
    /// Authority set up, store empty.
    pub before: MemorySample,
    /// Keys issued (store filled, cache empty); the bench holds the full keys from here on.
    pub after_issue: MemorySample,
    /// Every key verified once (cache full) and the last-use times flushed.
    pub after_verify: MemorySample,
    /// `after_verify.rss − after_issue.rss`: the cache, plus allocator slack.
    pub cache_rss_kib: i64,
    pub cache_bytes_per_key: f64,
}

/// Issues `keys` keys through `Authority` (no gRPC) with cheap argon2id, verifies each once so
/// that the cache holds them all, and samples the process's memory around it.
pub async fn memory_phase(keys: usize, cores: usize, hash: HashParams) -> Result<MemoryReport> {
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
    let authority = server::authority(store, settings, Clock::system()).await?;
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
    authority.write_last_use().await?;
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
