//! `keyauth`: parses configuration, sets up logging, binds, and hands over to `server::run`.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use keyauth::authority::Authority;
use keyauth::catalog::Catalog;
use keyauth::clock::Clock;
use keyauth::config::{Cli, Command, LogFormat, ServeArgs};
use keyauth::hashing::Hasher;
use keyauth::idempotency::{SealKey, Sealer};
use keyauth::propagation::FollowOptions;
use keyauth::server::{self, ServeOptions};
use keyauth::service::OperatorAuth;
use keyauth::store;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("keyauth: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Serve(args) => runtime.block_on(serve(args)),
        Command::Keys(args) => runtime.block_on(keyauth::cli::keys(args)),
        Command::Verify(args) => runtime.block_on(keyauth::cli::verify(args)),
        Command::GenSealKey => match SealKey::generate_hex() {
            Ok(key) => {
                println!("{key}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("keyauth: cannot read the OS random source: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

/// A start-up failure: which setting, and why. Exit code 2 for bad settings.
fn usage_error(setting: &str, why: impl std::fmt::Display) -> ExitCode {
    eprintln!("keyauth: invalid {setting}: {why}");
    ExitCode::from(2)
}

async fn serve(args: ServeArgs) -> ExitCode {
    init_tracing(args.log_format);
    let catalog = match &args.catalog {
        Some(path) => match Catalog::load(path) {
            Ok(c) => c,
            Err(e) => return usage_error("--catalog (KEYAUTH_CATALOG)", e),
        },
        None => Catalog::built_in(),
    };
    let hasher = match Hasher::new(args.hash_params(), args.hash_workers(), args.hash_queue) {
        Ok(h) => h,
        Err(e) => return usage_error("--argon2-m-cost/--argon2-t-cost/--argon2-p-cost", e),
    };
    let tls = match keyauth::tls::server_config(
        args.tls_cert.as_deref(),
        args.tls_key.as_deref(),
        args.tls_client_ca.as_deref(),
    ) {
        Ok(tls) => tls,
        Err(e) => return usage_error(e.setting, e.why),
    };
    if let Some(addr) = args.metrics_listen {
        if let Err(e) = keyauth::metrics::install(addr) {
            return usage_error(
                "--metrics-listen (KEYAUTH_METRICS_LISTEN)",
                format!("{addr}: {e}"),
            );
        }
        tracing::info!(%addr, "metrics at http://{addr}/metrics");
    }
    let seal_key = match (&args.seal_key, &args.seal_key_file) {
        (Some(text), _) => match SealKey::parse(text) {
            Ok(k) => Some(k),
            Err(e) => return usage_error("--seal-key (KEYAUTH_SEAL_KEY)", e),
        },
        (None, Some(path)) => match SealKey::load(path) {
            Ok(k) => Some(k),
            Err(e) => return usage_error("--seal-key-file (KEYAUTH_SEAL_KEY_FILE)", e),
        },
        (None, None) => None,
    };
    let store = match store::connect(&args.database, &args.store()).await {
        Ok(s) => s,
        Err(e) => {
            let detail = match &e {
                keyauth::error::Error::Store(source) => source.to_string(),
                other => other.to_string(),
            };
            eprintln!("keyauth: cannot open the store --database (KEYAUTH_DATABASE_URL): {detail}");
            return ExitCode::FAILURE;
        }
    };
    let authority = match Authority::new(store, hasher, catalog, Clock::System, args.cache()).await
    {
        Ok(a) => Arc::new(a.with_idempotency(Sealer::new(seal_key.as_ref()), args.idempotency_ttl)),
        Err(e) => {
            eprintln!("keyauth: cannot initialise the key authority: {e}");
            return ExitCode::FAILURE;
        }
    };
    let operators = OperatorAuth::new(args.admin_token.as_deref());
    if !operators.is_configured() {
        tracing::warn!(
            "KEYAUTH_ADMIN_TOKEN is not set: operator RPCs (IssueKey, RollKey, RevokeKey, GetKey, ListKeys) \
             will be refused. Set it, e.g. KEYAUTH_ADMIN_TOKEN=$(openssl rand -hex 32), and restart."
        );
    }
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => return usage_error("--listen (KEYAUTH_LISTEN)", format!("{}: {e}", args.listen)),
    };
    let options = ServeOptions {
        health_interval: args.health_interval,
        usage_flush_interval: args.usage_flush_interval,
        shutdown_grace: args.shutdown_grace,
        follow: FollowOptions {
            poll_interval: args.event_poll_interval,
            ..FollowOptions::default()
        },
        tls,
        verifiers: OperatorAuth::verifier(args.verifier_token.as_deref()),
        limits: args.limits(),
    };
    match server::run(listener, authority, operators, options, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "server failed");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
