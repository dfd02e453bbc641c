//! Assembling and serving keyauth, in one place for `main`, the tests and the benchmark:
//!
//! - [`AuthoritySettings`] + [`authority`]: the `Authority` over a store;
//! - [`run`]: the gRPC stack (key authority, Envoy ext_authz, health, reflection v1 and
//!   v1alpha), the HTTP listener for webhooks when configured, the background
//!   tasks (store health probe, last-use flush, change follower, gauges) and graceful shutdown,
//!   on a bound listener until a shutdown future completes;
//! - [`start`]: `run` on its own task, stopped through the returned [`Running`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use keyauth_core::auth_failures::AuthFailureSettings;
use keyauth_core::authority::UsageRetention;
use keyauth_core::cache::CacheSettings;
use keyauth_core::catalog::Catalog;
use keyauth_core::check_value::CheckKeys;
use keyauth_core::clock::Clock;
use keyauth_core::hashing::{HashParams, Hasher};
use keyauth_core::lifetime::LifetimeBounds;
use keyauth_core::propagation::{self, FollowOptions};
use keyauth_core::sealing::{SealKey, Sealer};
use keyauth_core::store::Store;
use keyauth_core::{Authority, Error};
use keyauth_proto as pb;
use keyauth_proto::SERVICE_NAME;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Server;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tower_layer::Layer;

use crate::connections::Incoming;
use crate::ext_authz::{AuthorizationServer, ExtAuthzApi, ExtAuthzOptions};
use crate::http::HttpOptions;
use crate::limits::{Limits, LimitsLayer};
use crate::service::{
    Credentials, KeyAuthorityApi, KeyAuthorityServiceServer, TokenGateLayer, VerifierRoutes,
    WatchOptions,
};

/// How the `Authority` is made: everything but the store and the clock.
#[derive(Clone, Debug)]
pub struct AuthoritySettings {
    pub catalog: Catalog,
    pub hash: HashParams,
    /// argon2 hashes run at once (at least 1).
    pub hash_workers: usize,
    /// argon2 hashes allowed to wait for a worker.
    pub hash_queue: usize,
    pub cache: CacheSettings,
    /// Seals the secrets kept for idempotent replay; `None` refuses such replays.
    pub seal_key: Option<Arc<SealKey>>,
    /// The seal key before a rotation: still opens, never seals.
    pub seal_key_previous: Option<Arc<SealKey>>,
    pub idempotency_ttl: Duration,
    /// The limit and retention of refused operator calls.
    pub auth_failures: AuthFailureSettings,
    /// Key changes kept for watchers that have not read them yet.
    pub watch_backlog: usize,
    /// The longest lifetime of a key per environment.
    pub lifetimes: LifetimeBounds,
    /// How long before its expiry a key gets its `expiring` event.
    pub expiry_warning: Duration,
    /// How long usage counts are kept by the hour, and at all.
    pub usage_retention: UsageRetention,
}

impl Default for AuthoritySettings {
    fn default() -> Self {
        AuthoritySettings {
            catalog: Catalog::built_in(),
            hash: HashParams::DEFAULT,
            hash_workers: 2,
            hash_queue: 64,
            cache: CacheSettings::default(),
            seal_key: None,
            seal_key_previous: None,
            idempotency_ttl: keyauth_core::authority::DEFAULT_IDEMPOTENCY_TTL,
            auth_failures: AuthFailureSettings::default(),
            lifetimes: LifetimeBounds::NONE,
            expiry_warning: keyauth_core::authority::DEFAULT_EXPIRY_WARNING,
            usage_retention: UsageRetention::default(),
            watch_backlog: keyauth_core::changes::HUB_CAPACITY,
        }
    }
}

/// The `Authority` over `store`, reading time from `clock`.
pub async fn authority(
    store: Arc<dyn Store>,
    settings: AuthoritySettings,
    clock: Clock,
) -> Result<Arc<Authority>, Error> {
    let hasher = Hasher::new(settings.hash, settings.hash_workers, settings.hash_queue)
        .map_err(|e| Error::invalid("argon2 parameters", e))?;
    let authority = Authority::new(store, hasher, settings.catalog, clock, settings.cache)
        .await?
        .with_idempotency(
            Sealer::new(settings.seal_key.as_deref())
                .with_previous(settings.seal_key_previous.as_deref()),
            settings.idempotency_ttl,
        )
        .with_check_keys(CheckKeys::new(
            settings.seal_key.as_deref(),
            settings.seal_key_previous.as_deref(),
        ))
        .with_auth_failures(settings.auth_failures)
        .with_change_backlog(settings.watch_backlog)
        .with_lifetime_bounds(settings.lifetimes)
        .with_expiry_warning(settings.expiry_warning)
        .with_usage_retention(settings.usage_retention);
    Ok(Arc::new(authority))
}

/// A server started by [`start`].
pub struct Running {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), Error>>,
}

impl Running {
    /// Shuts down (drain, last-use flush, store closed) and returns how serving ended.
    pub async fn stop(mut self) -> Result<(), Error> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.map_err(Error::internal)?
    }
}

/// Binds `listen` (port 0 for any free port) and serves on a task of its own.
pub async fn start(
    listen: SocketAddr,
    authority: Arc<Authority>,
    options: ServeOptions,
) -> std::io::Result<Running> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(run(listener, authority, options, async {
        let _ = stopped.await;
    }));
    Ok(Running {
        addr,
        stop: Some(stop),
        task,
    })
}

/// How often the TLS files are checked for changes unless told otherwise.
pub const DEFAULT_TLS_RELOAD_INTERVAL: Duration = Duration::from_secs(10);

/// How often the gauges (hash pool, store pool, cache size) are sampled for the metrics.
const GAUGE_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub health_interval: Duration,
    pub usage_flush_interval: Duration,
    pub shutdown_grace: Duration,
    pub follow: FollowOptions,
    /// TLS (and mTLS when it has a client CA), re-read from its files; `None` serves
    /// plaintext.
    pub tls: Option<Arc<crate::tls::Reloading>>,
    /// How often the TLS files (of `tls` and of the HTTP listener's) are checked for changes;
    /// zero: never.
    pub tls_reload_interval: Duration,
    /// Who may call: the principals (and the legacy admin and verifier tokens), JWT issuers.
    pub credentials: Credentials,
    pub limits: Limits,
    /// Envoy ext_authz: the route table and whether `authorization` is stripped.
    pub ext_authz: ExtAuthzOptions,
    /// The HTTP listener for webhooks (GitHub secret scanning); `None`: no HTTP listener.
    pub http: Option<HttpOptions>,
    /// WatchKeyChanges: heartbeat and stream limit.
    pub watch: WatchOptions,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            health_interval: Duration::from_secs(2),
            usage_flush_interval: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(30),
            follow: FollowOptions::default(),
            tls: None,
            tls_reload_interval: DEFAULT_TLS_RELOAD_INTERVAL,
            credentials: Credentials::none(),
            limits: Limits::default(),
            ext_authz: ExtAuthzOptions::default(),
            http: None,
            watch: WatchOptions::default(),
        }
    }
}

async fn set_health(reporter: &HealthReporter, status: ServingStatus) {
    reporter.set_service_status("", status).await;
    reporter.set_service_status(SERVICE_NAME, status).await;
}

/// Serves on `listener` until `shutdown` completes, then drains in-flight calls (up to the
/// grace), writes pending last-use times and closes the store.
pub async fn run(
    listener: TcpListener,
    authority: Arc<Authority>,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let (reporter, health_service) = tonic_health::server::health_reporter();
    set_health(&reporter, ServingStatus::NotServing).await;

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(Error::internal)?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(Error::internal)?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let api = Arc::new(
        KeyAuthorityApi::new(authority.clone(), options.credentials.clone())
            .with_watch(options.watch.clone(), stop_rx.clone()),
    );
    // Verify and CheckPermission on their own path (see `service::verifier`).
    let api = VerifierRoutes::new(
        KeyAuthorityServiceServer::from_arc(api.clone())
            .max_decoding_message_size(options.limits.max_request_bytes),
        api,
        options.limits.max_request_bytes,
    );
    // Tokens checked from the headers, before the body is read (see `service::gate`).
    let api = TokenGateLayer::new(options.credentials.clone(), authority.clone()).layer(api);
    // envoy-types ships no file descriptor set, so reflection does not list this service.
    let ext_authz = AuthorizationServer::new(ExtAuthzApi::new(
        authority.clone(),
        options.credentials.clone(),
        options.ext_authz.clone(),
    ))
    .max_decoding_message_size(options.limits.max_request_bytes);
    // TLS is not tonic's: `Incoming` hands out connections that do their own handshake.
    let mut builder = Server::builder();

    let probe = tokio::spawn(probe_store(
        authority.clone(),
        reporter.clone(),
        options.health_interval,
        stop_rx.clone(),
    ));
    let flusher = tokio::spawn(housekeeping(
        authority.clone(),
        options.usage_flush_interval,
        stop_rx.clone(),
    ));
    let follower = tokio::spawn(propagation::follow_changes(
        authority.clone(),
        options.follow.clone(),
        stop_rx.clone(),
    ));
    let gauges = tokio::spawn(sample_gauges(authority.clone(), stop_rx.clone()));
    // Each TLS source once (the HTTP listener's is the gRPC port's, except in tests).
    let mut tls_sources: Vec<Arc<crate::tls::Reloading>> = Vec::new();
    let http_tls = options.http.as_ref().and_then(|http| http.tls.as_ref());
    for source in options.tls.iter().chain(http_tls) {
        if !tls_sources.iter().any(|s| Arc::ptr_eq(s, source)) {
            tls_sources.push(source.clone());
        }
    }
    let tls_reloaders: Vec<_> = tls_sources
        .into_iter()
        .map(|source| {
            tokio::spawn(source.keep_current(options.tls_reload_interval, stop_rx.clone()))
        })
        .collect();
    // One budget of calls in flight for both listeners.
    let limits_layer = LimitsLayer::new(options.limits);
    let http = options.http.clone().map(|http| {
        // The console's gRPC-Web: the same service, limits and tokens as the gRPC port.
        let grpc_web = http.console.then(|| {
            let service = tonic_web::GrpcWebLayer::new().layer(limits_layer.layer(api.clone()));
            let path = format!("/{SERVICE_NAME}/{{*method}}");
            axum::Router::new().route_service(&path, service)
        });
        tokio::spawn(crate::http::serve(
            http,
            authority.clone(),
            grpc_web,
            stop_rx,
            options.shutdown_grace,
            options.limits.request_timeout,
            options.limits.max_connections,
        ))
    });

    let (drain_tx, drain_rx) = tokio::sync::oneshot::channel::<()>();
    let signal = {
        let reporter = reporter.clone();
        let stop_tx = stop_tx.clone();
        async move {
            shutdown.await;
            tracing::info!("shutting down: health NOT_SERVING, draining in-flight calls");
            let _ = stop_tx.send(true);
            set_health(&reporter, ServingStatus::NotServing).await;
            let _ = drain_tx.send(());
        }
    };

    let addr = listener.local_addr().map_err(Error::internal)?;
    if options.tls.is_none() && !addr.ip().is_loopback() {
        tracing::warn!(
            %addr,
            "gRPC listener serving plaintext on a non-loopback address: keys and tokens cross the network \
             unencrypted. Set --tls-cert and --tls-key (KEYAUTH_TLS_CERT, KEYAUTH_TLS_KEY)."
        );
    }
    let http_addr = options
        .http
        .as_ref()
        .and_then(|http| http.listener.local_addr().ok())
        .map_or_else(|| "off".to_owned(), |a| a.to_string());
    tracing::info!(
        %addr,
        %http_addr,
        store = authority.store().backend(),
        tls = options.tls.is_some(),
        tls_reload_interval = ?options.tls_reload_interval,
        "keyauth serving"
    );
    let limits = options.limits;
    let keepalive = (!limits.keepalive_interval.is_zero()).then_some(limits.keepalive_interval);
    if !limits.max_connection_age.is_zero() {
        // GOAWAY at the age; the close past the grace is `Conn`'s (tonic's own grace closes
        // without a GOAWAY first).
        builder = builder.max_connection_age(limits.max_connection_age);
    }
    let serve = builder
        .http2_max_header_list_size(limits.transport_header_list_bytes())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .http2_keepalive_interval(keepalive)
        .http2_keepalive_timeout(Some(limits.keepalive_timeout))
        .layer(limits_layer)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(api)
        .add_service(ext_authz)
        // Our own accept loop: connection limit, back-off on accept errors, first-request
        // deadline, hard close past the maximum age, TCP_NODELAY, TLS.
        .serve_with_incoming_shutdown(Incoming::new(listener, limits, options.tls.clone()), signal);
    tokio::pin!(serve);

    // Serve until the shutdown signal; then give the drain at most the grace period.
    let served = tokio::select! {
        r = &mut serve => Some(r),
        _ = drain_rx => None,
    };
    let served = match served {
        Some(r) => r,
        None => match tokio::time::timeout(options.shutdown_grace, &mut serve).await {
            Ok(r) => r,
            Err(_) => {
                tracing::warn!(grace = ?options.shutdown_grace, "in-flight calls outlived the shutdown grace; closing");
                Ok(())
            }
        },
    };
    let _ = stop_tx.send(true);
    let _ = probe.await;
    let _ = flusher.await;
    let _ = follower.await;
    let _ = gauges.await;
    for reloader in tls_reloaders {
        let _ = reloader.await;
    }
    let http = match http {
        Some(task) => task.await.map_err(Error::internal)?,
        None => Ok(()),
    };
    authority.store().close().await;
    served.map_err(Error::internal)?;
    http.map_err(|e| Error::internal(format!("HTTP listener: {e}")))
}

/// Samples the gauges of the metrics until stopped (without a recorder installed, this
/// records nothing).
async fn sample_gauges(authority: Arc<Authority>, mut stop: tokio::sync::watch::Receiver<bool>) {
    use crate::metrics::{
        CACHE_BYTES, CACHE_ENTRIES, HASH_BUSY, HASH_WAITING, STORE_CONNECTIONS, STORE_IDLE,
    };
    loop {
        let hasher = authority.hasher();
        metrics::gauge!(HASH_WAITING).set(hasher.waiting() as f64);
        metrics::gauge!(HASH_BUSY).set(hasher.busy() as f64);
        if let Some((open, idle)) = authority.store().pool_stats() {
            metrics::gauge!(STORE_CONNECTIONS).set(f64::from(open));
            metrics::gauge!(STORE_IDLE).set(idle as f64);
        }
        metrics::gauge!(CACHE_ENTRIES).set(authority.cache().len() as f64);
        metrics::gauge!(CACHE_BYTES).set(authority.cache().weight() as f64);
        tokio::select! {
            _ = tokio::time::sleep(GAUGE_INTERVAL) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Health is SERVING only while the store answers a cheap probe.
async fn probe_store(
    authority: Arc<Authority>,
    reporter: HealthReporter,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut last = None;
    loop {
        let probe = tokio::time::timeout(
            every.max(Duration::from_millis(500)),
            authority.store().ping(),
        );
        let status = match probe.await {
            Ok(Ok(())) => ServingStatus::Serving,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "store probe failed");
                ServingStatus::NotServing
            }
            Err(_) => {
                tracing::warn!("store probe timed out");
                ServingStatus::NotServing
            }
        };
        if *stop.borrow() {
            return;
        }
        if last != Some(status) {
            tracing::info!(?status, "health");
            set_health(&reporter, status).await;
            last = Some(status);
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Housekeeping every `every`, and once more at shutdown: writes last-use times and usage
/// counts (folding old hourly counts into daily ones, purging those past retention), the
/// refused operator calls counted since (one row per peer) and the calls refused
/// PERMISSION_DENIED (one row per principal) and the `expiring` events of keys entering the
/// `--expiry-warning` window (and sets `keyauth_keys_expiring`), purges expired idempotency
/// records and refused-call rows past their retention, and rebuilds the key filter when it
/// outgrew its size.
async fn housekeeping(
    authority: Arc<Authority>,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let stopping = tokio::select! {
            _ = tokio::time::sleep(every) => false,
            _ = stop.changed() => true,
        };
        match authority.write_last_use().await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(keys = n, "last-use times written"),
            Err(e) => {
                crate::metrics::background_store_error("usage_flush");
                tracing::warn!(error = %e, "writing last-use times failed; will retry")
            }
        }
        match authority.write_usage_counts().await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(verifications = n, "usage counts written"),
            Err(e) => {
                crate::metrics::background_store_error("usage_counts_flush");
                tracing::warn!(error = %e, "writing usage counts failed; will retry")
            }
        }
        if let Err(e) = authority.compact_usage().await {
            crate::metrics::background_store_error("usage_compaction");
            tracing::warn!(error = %e, "folding or purging usage counts failed; will retry")
        }
        match authority.flush_auth_failures().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                calls = n,
                "refused operator calls written to the audit trail"
            ),
            Err(e) => {
                crate::metrics::background_store_error("auth_failure_flush");
                tracing::warn!(error = %e, "writing refused operator calls failed; will retry")
            }
        }
        match authority.flush_denials().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                calls = n,
                "calls refused PERMISSION_DENIED written to the audit trail"
            ),
            Err(e) => {
                crate::metrics::background_store_error("denial_flush");
                tracing::warn!(error = %e, "writing refused calls failed; will retry")
            }
        }
        match authority.warn_expiring().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(keys = n, "expiring events written"),
            Err(e) => {
                crate::metrics::background_store_error("expiry_warning");
                tracing::warn!(error = %e, "writing expiring events failed; will retry")
            }
        }
        match authority.count_expiring().await {
            Ok(counts) => crate::metrics::keys_expiring(&counts),
            Err(e) => {
                crate::metrics::background_store_error("expiry_count");
                tracing::warn!(error = %e, "counting expiring keys failed; will retry")
            }
        }
        if let Err(e) = authority.purge_auth_failures().await {
            crate::metrics::background_store_error("auth_failure_purge");
            tracing::warn!(error = %e, "purging refused operator calls failed; will retry")
        }
        match authority.purge_idempotency().await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(records = n, "expired idempotency records purged"),
            Err(e) => {
                crate::metrics::background_store_error("idempotency_purge");
                tracing::warn!(error = %e, "purging idempotency records failed; will retry")
            }
        }
        if stopping || *stop.borrow() {
            return;
        }
        if let Err(e) = authority.maintain_key_filter().await {
            crate::metrics::background_store_error("key_filter_rebuild");
            tracing::warn!(error = %e, "rebuilding the key filter failed; will retry")
        }
    }
}
