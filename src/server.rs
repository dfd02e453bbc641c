//! Serving: the gRPC stack (key authority, health, reflection v1 and v1alpha), the background
//! tasks (store health probe, last-use flush) and graceful shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::authority::Authority;
use crate::error::Error;
use crate::pb;
use crate::propagation::{self, FollowOptions};
use crate::service::{KeyAuthorityApi, KeyAuthorityServiceServer, OperatorAuth};

pub const SERVICE_NAME: &str = "keyauth.v1.KeyAuthorityService";

#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub health_interval: Duration,
    pub usage_flush_interval: Duration,
    pub shutdown_grace: Duration,
    pub follow: FollowOptions,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            health_interval: Duration::from_secs(2),
            usage_flush_interval: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(30),
            follow: FollowOptions::default(),
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
    operators: OperatorAuth,
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

    let api = KeyAuthorityServiceServer::new(KeyAuthorityApi::new(authority.clone(), operators));

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let probe = tokio::spawn(probe_store(
        authority.clone(),
        reporter.clone(),
        options.health_interval,
        stop_rx.clone(),
    ));
    let flusher = tokio::spawn(flush_usage(
        authority.clone(),
        options.usage_flush_interval,
        stop_rx.clone(),
    ));
    let follower = tokio::spawn(propagation::follow_changes(
        authority.clone(),
        options.follow.clone(),
        stop_rx,
    ));

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
    tracing::info!(%addr, store = authority.store().backend(), "keyauth serving");
    let serve = Server::builder()
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(api)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), signal);
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
    authority.store().close().await;
    served.map_err(Error::internal)
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

/// Writes last-use times every `every`, and once more at shutdown.
async fn flush_usage(
    authority: Arc<Authority>,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let stopping = tokio::select! {
            _ = tokio::time::sleep(every) => false,
            _ = stop.changed() => true,
        };
        match authority.flush_usage().await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(keys = n, "last-use times written"),
            Err(e) => tracing::warn!(error = %e, "writing last-use times failed; will retry"),
        }
        if stopping || *stop.borrow() {
            return;
        }
    }
}
