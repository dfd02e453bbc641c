//! Command line and environment: one clap struct, every flag with a `KEYAUTH_…` twin. Values
//! are checked here, so a bad setting stops the start with a message naming it (exit code 2).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::cache::CacheSettings;
use crate::hashing::HashParams;
use crate::limits::Limits;
use crate::store::StoreOptions;

#[derive(Debug, Parser)]
#[command(
    name = "keyauth",
    version,
    about = "The API-key authority: issue, roll, revoke and verify keys over gRPC"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gRPC server.
    Serve(ServeArgs),
    /// Operator commands against a running server: issue, roll, revoke, get, list, events.
    Keys(crate::cli::KeysArgs),
    /// Verify a key against a running server (exit 0 valid, 1 not valid).
    Verify(crate::cli::VerifyArgs),
    /// Print a fresh seal key (64 hex digits) for KEYAUTH_SEAL_KEY.
    GenSealKey,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "KEYAUTH_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    /// Store URL: sqlite://FILE (created on first start) or postgres://… (several instances).
    #[arg(
        long,
        env = "KEYAUTH_DATABASE_URL",
        default_value = "sqlite://keyauth.db"
    )]
    pub database: String,

    /// Store connections at most.
    #[arg(long, env = "KEYAUTH_DATABASE_MAX_CONNECTIONS", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub database_max_connections: u32,

    /// Permission catalog (TOML) replacing the built-in one.
    #[arg(long, env = "KEYAUTH_CATALOG")]
    pub catalog: Option<PathBuf>,

    /// Operator token for the operator RPCs (IssueKey, RollKey, RevokeKey, GetKey, ListKeys).
    /// Unset: operator RPCs are refused; Verify and CheckPermission still work.
    #[arg(long, env = "KEYAUTH_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// argon2id memory cost of new hashes, KiB.
    #[arg(long, env = "KEYAUTH_ARGON2_M_COST", default_value_t = HashParams::DEFAULT.m_cost)]
    pub argon2_m_cost: u32,

    /// argon2id iterations of new hashes.
    #[arg(long, env = "KEYAUTH_ARGON2_T_COST", default_value_t = HashParams::DEFAULT.t_cost)]
    pub argon2_t_cost: u32,

    /// argon2id lanes of new hashes.
    #[arg(long, env = "KEYAUTH_ARGON2_P_COST", default_value_t = HashParams::DEFAULT.p_cost)]
    pub argon2_p_cost: u32,

    /// argon2 hashes run at once; 0 = one per core.
    #[arg(long, env = "KEYAUTH_HASH_WORKERS", default_value_t = 0)]
    pub hash_workers: usize,

    /// argon2 hashes allowed to wait for a worker; more fail fast with UNAVAILABLE.
    #[arg(long, env = "KEYAUTH_HASH_QUEUE", default_value_t = 64)]
    pub hash_queue: usize,

    /// Proven keys kept in memory; 0 disables the cache.
    #[arg(long, env = "KEYAUTH_CACHE_CAPACITY", default_value_t = 100_000)]
    pub cache_capacity: u64,

    /// Age after which a cached key is re-read from the store (e.g. 30s, 500ms, 2m).
    #[arg(long, env = "KEYAUTH_CACHE_TTL", default_value = "30s", value_parser = parse_duration)]
    pub cache_ttl: Duration,

    /// How long an unknown key id is remembered.
    #[arg(long, env = "KEYAUTH_NEGATIVE_CACHE_TTL", default_value = "10s", value_parser = parse_duration)]
    pub negative_cache_ttl: Duration,

    /// How long the store may be unreachable before cached answers stop too (Verify then
    /// answers UNAVAILABLE until it is back).
    #[arg(long, env = "KEYAUTH_STORE_STALENESS_LIMIT", default_value = "10s", value_parser = parse_duration)]
    pub store_staleness_limit: Duration,

    /// How often key_events is polled for changes made by other instances (the catch-up
    /// behind PostgreSQL notifications).
    #[arg(long, env = "KEYAUTH_EVENT_POLL_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub event_poll_interval: Duration,

    /// Failed secrets per key id per minute before further attempts skip argon2.
    #[arg(long, env = "KEYAUTH_FAILURE_LIMIT", default_value_t = 10)]
    pub failure_limit: u32,

    /// How often last-use times are written to the store.
    #[arg(long, env = "KEYAUTH_USAGE_FLUSH_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub usage_flush_interval: Duration,

    /// How often health probes the store.
    #[arg(long, env = "KEYAUTH_HEALTH_INTERVAL", default_value = "2s", value_parser = parse_duration)]
    pub health_interval: Duration,

    /// Longest wait for in-flight calls at shutdown.
    #[arg(long, env = "KEYAUTH_SHUTDOWN_GRACE", default_value = "30s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// Log format.
    #[arg(long, env = "KEYAUTH_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Seal key (32 bytes, hex or base64) that encrypts the secrets kept for idempotent
    /// replay of IssueKey and RollKey. Unset: such replays are refused (FAILED_PRECONDITION).
    /// `keyauth gen-seal-key` prints one.
    #[arg(
        long,
        env = "KEYAUTH_SEAL_KEY",
        hide_env_values = true,
        conflicts_with = "seal_key_file"
    )]
    pub seal_key: Option<String>,

    /// File holding the seal key, instead of KEYAUTH_SEAL_KEY.
    #[arg(long, env = "KEYAUTH_SEAL_KEY_FILE")]
    pub seal_key_file: Option<PathBuf>,

    /// How long responses of calls made with an idempotency key are kept for replay.
    #[arg(long, env = "KEYAUTH_IDEMPOTENCY_TTL", default_value = "24h", value_parser = parse_duration)]
    pub idempotency_ttl: Duration,

    /// TLS certificate chain (PEM). With --tls-key, the server speaks TLS only; without both,
    /// plaintext.
    #[arg(long, env = "KEYAUTH_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,

    /// TLS private key (PEM) of --tls-cert.
    #[arg(long, env = "KEYAUTH_TLS_KEY")]
    pub tls_key: Option<PathBuf>,

    /// CA certificates (PEM): when set, every client must present a certificate they signed
    /// (mTLS).
    #[arg(long, env = "KEYAUTH_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,

    /// Token Verify and CheckPermission callers must send as `authorization: Bearer <token>`.
    /// Unset: anyone who can connect may verify.
    #[arg(long, env = "KEYAUTH_VERIFIER_TOKEN", hide_env_values = true)]
    pub verifier_token: Option<String>,

    /// Address of the Prometheus metrics listener (HTTP, /metrics). Unset: no metrics.
    #[arg(long, env = "KEYAUTH_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Largest request message accepted, bytes; larger ones get RESOURCE_EXHAUSTED.
    #[arg(long, env = "KEYAUTH_MAX_REQUEST_BYTES", default_value_t = Limits::DEFAULT_MAX_REQUEST_BYTES as u32, value_parser = clap::value_parser!(u32).range(1024..))]
    pub max_request_bytes: u32,

    /// Largest header list (a call's metadata) accepted, bytes.
    #[arg(long, env = "KEYAUTH_MAX_HEADER_BYTES", default_value_t = Limits::DEFAULT_MAX_HEADER_LIST_BYTES, value_parser = clap::value_parser!(u32).range(1024..))]
    pub max_header_bytes: u32,

    /// Calls in flight on one connection at most (HTTP/2 max concurrent streams).
    #[arg(long, env = "KEYAUTH_MAX_CONCURRENT_STREAMS", default_value_t = Limits::DEFAULT_MAX_CONCURRENT_STREAMS, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_streams: u32,

    /// Longest a call may run; longer ones get DEADLINE_EXCEEDED.
    #[arg(long, env = "KEYAUTH_REQUEST_TIMEOUT", default_value = "10s", value_parser = parse_positive_duration)]
    pub request_timeout: Duration,
}

impl ServeArgs {
    pub fn hash_params(&self) -> HashParams {
        HashParams {
            m_cost: self.argon2_m_cost,
            t_cost: self.argon2_t_cost,
            p_cost: self.argon2_p_cost,
        }
    }

    pub fn hash_workers(&self) -> usize {
        match self.hash_workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    pub fn cache(&self) -> CacheSettings {
        CacheSettings {
            capacity: self.cache_capacity,
            ttl: self.cache_ttl,
            negative_ttl: self.negative_cache_ttl,
            failure_limit: self.failure_limit,
            staleness_limit: self.store_staleness_limit,
            ..CacheSettings::default()
        }
    }

    pub fn limits(&self) -> Limits {
        Limits {
            max_request_bytes: self.max_request_bytes as usize,
            max_header_list_bytes: self.max_header_bytes,
            max_concurrent_streams: self.max_concurrent_streams,
            request_timeout: self.request_timeout,
        }
    }

    pub fn store(&self) -> StoreOptions {
        StoreOptions {
            max_connections: self.database_max_connections,
            ..StoreOptions::default()
        }
    }
}

/// A duration (see [`parse_duration`]) that is not zero.
pub fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        Duration::ZERO => Err(format!("{s:?} must be more than zero")),
        d => Ok(d),
    }
}

/// Parses `30s`, `500ms`, `2m`, `1h`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 30s, 500ms, 2m or 1h"))?;
    match unit {
        "" | "s" => Ok(Duration::from_secs(n)),
        "ms" => Ok(Duration::from_millis(n)),
        "m" => Ok(Duration::from_secs(n.saturating_mul(60))),
        "h" => Ok(Duration::from_secs(n.saturating_mul(3600))),
        _ => Err(format!("{s:?}: unknown unit {unit:?} (use ms, s, m or h)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5d").is_err());
    }

    #[test]
    fn defaults_match_the_contract() {
        let cli = Cli::try_parse_from(["keyauth", "serve"]).unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("not the serve command");
        };
        assert_eq!(args.listen.to_string(), "127.0.0.1:50051");
        assert_eq!(args.database, "sqlite://keyauth.db");
        assert_eq!(args.cache_ttl, Duration::from_secs(30));
        assert_eq!(args.hash_params(), HashParams::DEFAULT);
        assert_eq!(args.limits(), Limits::default());
        assert!(args.tls_cert.is_none() && args.metrics_listen.is_none());
        assert!(args.verifier_token.is_none());
    }
}
