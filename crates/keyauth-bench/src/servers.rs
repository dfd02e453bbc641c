//! The servers under test and the connections to them: a keyauth server built as `keyauth
//! serve` builds it, on a runtime of its own in this process, and the ways to reach it.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keyauth_client::Client;
use keyauth_core::cache::CacheSettings;
use keyauth_core::clock::Clock;
use keyauth_core::hashing::HashParams;
use keyauth_core::sealing::SealKey;
use keyauth_core::store::{self, StoreOptions};
use keyauth_server::server::{self, AuthoritySettings, Running, ServeOptions};
use keyauth_server::service::Credentials;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::error::{BoxError, Result};
use crate::procfs;

/// The name of the warm server's threads, whose CPU time the last phase counts.
pub const WARM_THREADS: &str = "keyauth-warm";

/// Longest wait for a set-up call ([`operator_client`]): set-up is not timed, and it may run
/// under valgrind (`--count-calls`), where one argon2id hash takes seconds.
const SETUP_TIMEOUT: Duration = Duration::from_secs(600);

/// A keyauth server running on a runtime of its own in this process (threads named `threads`,
/// so their CPU time can be told from the client's).
pub struct BenchServer {
    pub addr: SocketAddr,
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
    /// hash worker per core, queue of 64, a fresh seal key) over a SQLite store at `db`, and
    /// waits until health reports SERVING.
    pub async fn start(
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
                let authority = server::authority(store, settings, Clock::system()).await?;
                let options = ServeOptions {
                    shutdown_grace: Duration::from_secs(5),
                    credentials: Credentials::from_tokens(Some(&admin_token), None)?,
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

    /// A raw tonic health client: keyauth-client has no health call.
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
    pub async fn stop(mut self) -> Result<()> {
        if let Some(running) = self.running.take() {
            running.stop().await?;
        }
        Ok(())
    }

    /// CPU time (user + system) the server's threads have used so far.
    pub fn cpu_time(&self) -> Result<Duration> {
        procfs::threads_cpu_time(self.threads)
    }
}

/// A temporary directory, an operator token, and the warm server (default cache) on a store
/// in that directory; the directory lives as long as the caller keeps it.
pub async fn warm_server(cores: usize) -> Result<(tempfile::TempDir, String, BenchServer)> {
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

/// Opens `n` HTTP/2 connections to `addr`, for the load tasks' raw tonic clients.
pub async fn connect(addr: SocketAddr, n: usize) -> Result<Vec<Channel>> {
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

/// A keyauth-client connection to `addr` with the operator token, for set-up calls (issuing
/// keys, proving them). No idempotency keys: IssueKey is sent once, as a plain call, and the
/// server seals no secret for a replay.
pub async fn operator_client(addr: SocketAddr, admin_token: &str) -> Result<Client> {
    Ok(Client::builder(format!("http://{addr}"))
        .operator_token(admin_token)
        .idempotency(false)
        .connect_timeout(SETUP_TIMEOUT)
        .timeout(SETUP_TIMEOUT)
        .connect()
        .await?)
}
