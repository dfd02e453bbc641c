//! `keyauth`: the root command. `serve` parses its settings, sets up logging, opens the store,
//! binds and hands over to `keyauth_server::server::run`; `keys`, `verify` and `scan` are the
//! operator CLI (`keyauth-cli`); `gen-seal-key` prints a seal key.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use keyauth_contract::principal::Role;
use keyauth_core::clock::Clock;
use keyauth_core::sealing::SealKey;
use keyauth_core::store;
use keyauth_server::config::{LogFormat, ServeArgs};
use keyauth_server::server;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(
    name = "keyauth",
    version,
    about = "The API-key authority: issue, roll, revoke and verify keys over gRPC"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gRPC server.
    Serve(ServeArgs),
    /// Operator commands against a running server: issue, roll, revoke, get, list, events.
    Keys(keyauth_cli::KeysArgs),
    /// Verify a key against a running server (exit 0 valid, 1 not valid).
    Verify(keyauth_cli::VerifyArgs),
    /// Who the server says the caller is: the principal of --token / --token-file, its roles
    /// and scope.
    Whoami(keyauth_cli::WhoamiArgs),
    /// Find keys in files, offline (exit 1 when any is found, 0 when none); --report has the
    /// server revoke them.
    Scan(keyauth_cli::ScanArgs),
    /// Print a fresh seal key (64 hex digits) for KEYAUTH_SEAL_KEY / --seal-key-file.
    GenSealKey,
}

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
        Command::Keys(args) => runtime.block_on(keyauth_cli::keys(args)),
        Command::Verify(args) => runtime.block_on(keyauth_cli::verify(args)),
        Command::Whoami(args) => runtime.block_on(keyauth_cli::whoami(args)),
        Command::Scan(args) => runtime.block_on(keyauth_cli::scan(args)),
        Command::GenSealKey => match SealKey::generate_hex() {
            Ok(key) => {
                println!("{key}");
                // On stderr, so that `keyauth gen-seal-key > file` keeps the bare key.
                eprintln!("{SEAL_KEY_ROTATION}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("keyauth: cannot read the OS random source: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

/// How to put a new seal key in service without breaking replays in flight.
const SEAL_KEY_ROTATION: &str = "\
keyauth: a new seal key is printed on stdout. To rotate to it without breaking replays:
  1. start every instance with the new key as the seal key (KEYAUTH_SEAL_KEY or
     --seal-key-file) and the old one as the previous key (KEYAUTH_SEAL_KEY_PREVIOUS or
     --seal-key-previous-file): replays sealed under either open, new seals use the new key;
  2. once --idempotency-ttl (24h by default) has passed since the last instance restarted,
     remove the previous key and restart; the old key can then be destroyed.";

/// A start-up failure: which setting, and why. Exit code 2 for bad settings.
fn usage_error(setting: &str, why: impl std::fmt::Display) -> ExitCode {
    eprintln!("keyauth: invalid {setting}: {why}");
    ExitCode::from(2)
}

async fn serve(args: ServeArgs) -> ExitCode {
    init_tracing(args.log_format);
    let settings = match args.authority_settings() {
        Ok(s) => s,
        Err(e) => return usage_error(e.setting, e.why),
    };
    let mut options = match args.serve_options() {
        Ok(o) => o,
        Err(e) => return usage_error(e.setting, e.why),
    };
    options.credentials = match args.credentials().await {
        Ok(c) => c,
        Err(e) => return usage_error(e.setting, e.why),
    };
    if let Some(addr) = args.metrics_listen {
        if let Err(e) = keyauth_server::metrics::install(addr) {
            return usage_error(
                "--metrics-listen (KEYAUTH_METRICS_LISTEN)",
                format!("{addr}: {e}"),
            );
        }
        tracing::info!(%addr, "metrics at http://{addr}/metrics");
    }
    let store = match store::connect(&args.database, &args.store()).await {
        Ok(s) => s,
        Err(e) => {
            let detail = match &e {
                keyauth_core::Error::Store(source) => source.to_string(),
                other => other.to_string(),
            };
            eprintln!("keyauth: cannot open the store --database (KEYAUTH_DATABASE_URL): {detail}");
            return ExitCode::FAILURE;
        }
    };
    let authority = match server::authority(store, settings, Clock::system()).await {
        Ok(a) => a,
        Err(e) => {
            eprintln!("keyauth: cannot initialise the key authority: {e}");
            return ExitCode::FAILURE;
        }
    };
    if !options.credentials.grants(Role::Read) && !options.credentials.grants(Role::Issue) {
        tracing::warn!(
            "no operator token is set: operator RPCs (IssueKey, UpdateKey, RollKey, RevokeKey, \
             GetKey, ListKeys, ListKeyEvents, ListApplications) will be refused. Set KEYAUTH_ADMIN_TOKEN_FILE (or \
             KEYAUTH_ADMIN_TOKEN), e.g. to a file holding `openssl rand -hex 32`, and restart."
        );
    }
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => return usage_error("--listen (KEYAUTH_LISTEN)", format!("{}: {e}", args.listen)),
    };
    match server::run(listener, authority, options, shutdown_signal()).await {
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
