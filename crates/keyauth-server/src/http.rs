//! The HTTP listener (`--http-listen`, off by default): what a browser or a webhook sender
//! reaches, since neither speaks gRPC over HTTP/2:
//!
//! - the operator console (`console`): its page at `/`, and the key authority service itself
//!   over gRPC-Web (tonic-web) at the same origin, so the browser makes the very RPCs every
//!   other client makes, with the same operator token and the same limits; with
//!   `--console-oidc-issuer`, the page also signs in with that OpenID provider ([`ConsoleOidc`]);
//! - with `--github-scanning-keys`, `POST /v1/secret-scanning/github`, GitHub secret
//!   scanning's partner alerts (`github`): leaked keys revoke themselves.
//!
//! Served by axum on an accept loop of our own (hyper's HTTP/1.1 connections, plaintext or TLS
//! with the gRPC port's certificate through tokio-rustls: the one in force at each accept, so
//! a reloaded certificate serves new connections), started and drained by `server::run`
//! alongside the gRPC server.

mod console;
mod github;
mod shared;

use std::sync::Arc;
use std::time::Duration;

use std::future::Future;

use axum::Router;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::post;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use keyauth_core::Authority;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

pub use console::{CONFIG_PATH, ConsoleOidc, ConsoleOidcError, content_security_policy};
use github::AppState;
pub use github::{
    BODIES_IN_FLIGHT, BODY_DEADLINE, GITHUB_PATH, GithubKeys, KEY_ID_HEADER, SIGNATURE_HEADER,
};
use shared::{Peer, refusal};

/// Largest request body accepted; larger ones get 413.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// A connection that has not sent its request head by then is closed; so is a TLS handshake.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// The HTTP listener's settings: a bound listener (so tests use port 0), TLS, and GitHub's
/// public keys.
#[derive(Clone, Debug)]
pub struct HttpOptions {
    /// Bound by the caller; `run` serves a duplicate of it.
    pub listener: Arc<std::net::TcpListener>,
    /// The server certificate (the gRPC port's `--tls-cert`/`--tls-key`, reloaded with it);
    /// `None`: plaintext.
    pub tls: Option<Arc<crate::tls::Reloading>>,
    /// The public keys GitHub signs its alerts with, re-read when their file changes; `None`:
    /// no webhook route.
    pub github_keys: Option<Arc<GithubKeys>>,
    /// Whether the console and gRPC-Web are served.
    pub console: bool,
    /// The console's "Sign in with …" (`--console-oidc-issuer`, `--console-oidc-client-id`);
    /// `None`: token sign-in only.
    pub console_oidc: Option<ConsoleOidc>,
}

/// The listener's routes: the webhook when GitHub's keys are given, the console and
/// `grpc_web` (the key authority service behind tonic-web) when given. For a connection
/// without the client certificate `--tls-client-ca` requires (`uncertified`), the webhook
/// only: every other path is refused with 403.
fn router(
    authority: Arc<Authority>,
    options: &HttpOptions,
    grpc_web: Option<Router>,
    request_timeout: Duration,
    uncertified: bool,
) -> Router {
    let grpc_web = grpc_web.filter(|_| !uncertified);
    let mut app = Router::new();
    if let Some(github_keys) = &options.github_keys {
        let state = Arc::new(AppState {
            authority,
            github_keys: github_keys.clone(),
            bodies: Arc::new(tokio::sync::Semaphore::new(github::BODIES_IN_FLIGHT)),
        });
        app = app.merge(
            Router::new()
                .route(GITHUB_PATH, post(github::alert))
                .with_state(state),
        );
    }
    if let Some(grpc_web) = grpc_web {
        app = app
            .merge(console::routes(
                options.tls.is_some(),
                options.console_oidc.as_ref(),
            ))
            .merge(grpc_web);
    }
    let (status, message) = if uncertified {
        (
            StatusCode::FORBIDDEN,
            "this listener needs a client certificate signed by the server's --tls-client-ca \
             for everything but the GitHub webhook",
        )
    } else {
        (StatusCode::NOT_FOUND, "no such path")
    };
    app.fallback(move || async move { refusal(status, message) })
        .layer(axum::middleware::from_fn(
            move |request: Request, next: Next| async move {
                within(request_timeout, next.run(request)).await
            },
        ))
}

/// A request still running after `limit` (reading its body included: a client trickling its
/// body holds no task for longer) is answered 408. Reporting a key again is harmless, so a
/// sender's retry completes what was cut.
async fn within(limit: Duration, answer: impl Future<Output = Response>) -> Response {
    match tokio::time::timeout(limit, answer).await {
        Ok(response) => response,
        Err(_) => {
            tracing::info!(?limit, "HTTP request timed out");
            refusal(StatusCode::REQUEST_TIMEOUT, "the request took too long")
        }
    }
}

/// Serves `options` until `stop` turns true; then stops accepting and gives open connections
/// at most `grace` to finish their request. A request may take `request_timeout` at most (the
/// gRPC port's `--request-timeout`); at most `max_connections` are open at once (the gRPC
/// port's `--max-connections`, counted apart): one more is closed at once.
pub(crate) async fn serve(
    options: HttpOptions,
    authority: Arc<Authority>,
    grpc_web: Option<Router>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    grace: Duration,
    request_timeout: Duration,
    max_connections: usize,
) -> std::io::Result<()> {
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections.max(1)));
    let listener = options.listener.try_clone()?;
    listener.set_nonblocking(true)?;
    let listener = TcpListener::from_std(listener)?;
    let addr = listener.local_addr()?;
    let tls = options.tls.clone();
    tracing::info!(
        %addr,
        tls = tls.is_some(),
        console = grpc_web.is_some(),
        github = options.github_keys.is_some(),
        "HTTP listener serving"
    );
    if tls.is_none() && !addr.ip().is_loopback() {
        tracing::warn!(
            %addr,
            "HTTP listener serving plaintext on a non-loopback address: the console sends the \
             operator's token on every call, and the webhook receives leaked keys, unencrypted. \
             Set --tls-cert and --tls-key, or listen on loopback behind a TLS proxy."
        );
    }
    let certified_only = tls
        .as_ref()
        .is_some_and(|tls| tls.requires_client_certificate());
    let uncertified =
        certified_only.then(|| router(authority.clone(), &options, None, request_timeout, true));
    let app = router(authority, &options, grpc_web, request_timeout, false);
    let graceful = GracefulShutdown::new();
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %e, "HTTP listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics::counter!(crate::metrics::CONNECTIONS_REFUSED).increment(1);
            tracing::debug!(%peer, "HTTP listener: connection refused: the connection limit is reached");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        // The peer for the webhook's audit rows, and as the gRPC port's connections give it
        // to the service (gRPC-Web calls record it like any other operator call).
        // Shared with the calls: the TLS handshake below records the client certificate in it.
        let info = crate::peer::PeerInfo::detached(peer);
        let layered = |app: &Router| {
            app.clone()
                .layer(axum::Extension(Peer(peer)))
                .layer(axum::Extension(info.clone()))
        };
        let app = layered(&app);
        let uncertified = uncertified.as_ref().map(layered);
        let watcher = graceful.watcher();
        // The configuration in force now: a reload later leaves this connection as it is.
        let tls = tls.as_ref().map(|tls| TlsAcceptor::from(tls.http()));
        tokio::spawn(async move {
            let _slot = slot;
            let served = match tls {
                None => connection(tcp, app, watcher).await,
                Some(tls) => match tokio::time::timeout(HEAD_TIMEOUT, tls.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        // A certificate given was checked against the CA in the handshake.
                        let chain = stream.get_ref().1.peer_certificates();
                        let certified = chain.is_some_and(|chain| !chain.is_empty());
                        if let Some(cert) = crate::peer::ClientCert::of_chain(chain) {
                            info.set_client_cert(cert);
                        }
                        let app = match uncertified {
                            Some(webhook_only) if !certified => webhook_only,
                            _ => app,
                        };
                        connection(stream, app, watcher).await
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "HTTP listener: TLS handshake failed");
                        Ok(())
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "HTTP listener: TLS handshake timed out");
                        Ok(())
                    }
                },
            };
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "HTTP listener: connection ended");
            }
        });
    }
    drop(listener);
    tracing::info!("HTTP listener: draining");
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            ?grace,
            "HTTP connections outlived the shutdown grace; closing"
        );
    }
    Ok(())
}

/// One HTTP/1.1 connection, closed gracefully when the server shuts down.
async fn connection<I>(
    io: I,
    app: Router,
    watcher: hyper_util::server::graceful::Watcher,
) -> Result<(), hyper::Error>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .serve_connection(TokioIo::new(io), TowerToHyperService::new(app));
    watcher.watch(conn).await
}
