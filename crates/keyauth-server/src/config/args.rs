//! The flags themselves: one clap struct, every flag with a `KEYAUTH_…` twin. What they make
//! is in the sibling modules, by concern.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::TypedValueParser;
use clap::{Args, ValueEnum};
use keyauth_core::auth_failures::AuthFailureSettings;
use keyauth_core::cache::CacheSettings;
use keyauth_core::hashing::HashParams;

use super::duration::{parse_duration, parse_positive_duration};
use super::secret::{
    AdminTokenFlags, PreviousSealKeyFlags, SealKeyFlags, SecretArg, VerifierTokenFlags,
};
use crate::limits::Limits;

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

    // --admin-token, --admin-token-file.
    #[command(flatten)]
    pub admin_token: SecretArg<AdminTokenFlags>,

    /// argon2id memory cost of new hashes, KiB.
    #[arg(long, env = "KEYAUTH_ARGON2_M_COST", default_value_t = HashParams::DEFAULT.m_cost)]
    pub argon2_m_cost: u32,

    /// argon2id iterations of new hashes.
    #[arg(long, env = "KEYAUTH_ARGON2_T_COST", default_value_t = HashParams::DEFAULT.t_cost)]
    pub argon2_t_cost: u32,

    /// argon2id lanes of new hashes.
    #[arg(long, env = "KEYAUTH_ARGON2_P_COST", default_value_t = HashParams::DEFAULT.p_cost)]
    pub argon2_p_cost: u32,

    /// argon2 hashes run at once; 0 = one per core but one (at least 1), leaving a core to
    /// the runtime that answers warm calls.
    #[arg(long, env = "KEYAUTH_HASH_WORKERS", default_value_t = 0)]
    pub hash_workers: usize,

    /// argon2 hashes allowed to wait for a worker; more fail fast with UNAVAILABLE.
    #[arg(long, env = "KEYAUTH_HASH_QUEUE", default_value_t = 64)]
    pub hash_queue: usize,

    /// Bytes the proven keys kept in memory may take (estimated per key from its record and the
    /// encoded answer kept with it: a key with large metadata counts for more); 0 disables the
    /// cache. The default holds about 100,000 typical keys.
    #[arg(long, env = "KEYAUTH_CACHE_MAX_BYTES", default_value_t = CacheSettings::DEFAULT_MAX_BYTES)]
    pub cache_max_bytes: u64,

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

    /// Failed secrets per key id per minute before argon2 is rationed for that id (one try a
    /// second; the other attempts get UNAVAILABLE with a retry delay, never "invalid").
    #[arg(long, env = "KEYAUTH_FAILURE_LIMIT", default_value_t = 10)]
    pub failure_limit: u32,

    /// Cold Verify lookups (store read, argon2) in flight at most; more get UNAVAILABLE at
    /// once instead of queueing.
    #[arg(long, env = "KEYAUTH_MAX_COLD_LOOKUPS", default_value_t = CacheSettings::DEFAULT_MAX_COLD_LOOKUPS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_cold_lookups: usize,

    /// Refused operator calls (wrong or missing operator token) per peer address per minute;
    /// past it, further refusals are RESOURCE_EXHAUSTED with a retry delay.
    #[arg(long, env = "KEYAUTH_OPERATOR_FAILURE_LIMIT", default_value_t = AuthFailureSettings::DEFAULT_LIMIT, value_parser = clap::value_parser!(u32).range(1..))]
    pub operator_failure_limit: u32,

    /// How long the audit trail keeps the rows of refused operator calls.
    #[arg(long, env = "KEYAUTH_AUTH_FAILURE_RETENTION", default_value = "30d", value_parser = parse_positive_duration)]
    pub auth_failure_retention: Duration,

    /// How often last-use times (and refused operator calls) are written to the store.
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

    // --seal-key, --seal-key-file.
    #[command(flatten)]
    pub seal_key: SecretArg<SealKeyFlags>,

    // --seal-key-previous, --seal-key-previous-file.
    #[command(flatten)]
    pub seal_key_previous: SecretArg<PreviousSealKeyFlags>,

    /// The longest lifetime of a live key (e.g. `366d`): a key issued, rolled or updated
    /// without an expiry gets now + this, and a later expiry is refused. Unset: no bound.
    #[arg(long, env = "KEYAUTH_MAX_LIVE_KEY_LIFETIME", value_parser = parse_positive_duration)]
    pub max_live_key_lifetime: Option<Duration>,

    /// The longest lifetime of a test key, as --max-live-key-lifetime. Unset: no bound.
    #[arg(long, env = "KEYAUTH_MAX_TEST_KEY_LIFETIME", value_parser = parse_positive_duration)]
    pub max_test_key_lifetime: Option<Duration>,

    /// How long before its expiry an active key gets one `expiring` event (and counts in the
    /// gauge `keyauth_keys_expiring`).
    #[arg(long, env = "KEYAUTH_EXPIRY_WARNING", default_value = "7d", value_parser = parse_positive_duration)]
    pub expiry_warning: Duration,

    /// How long verification counts are kept by the hour; older ones are kept by the day.
    #[arg(long, env = "KEYAUTH_USAGE_HOURLY_RETENTION", default_value = "90d", value_parser = parse_positive_duration)]
    pub usage_hourly_retention: Duration,

    /// How long verification counts are kept at all.
    #[arg(long, env = "KEYAUTH_USAGE_RETENTION", default_value = "400d", value_parser = parse_positive_duration)]
    pub usage_retention: Duration,

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

    /// How often the TLS files (--tls-cert, --tls-key, --tls-client-ca) are read again: new
    /// contents that can be used serve new connections; unusable ones are logged and the
    /// certificate in force kept. 0s: read once, at start-up.
    #[arg(long, env = "KEYAUTH_TLS_RELOAD_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub tls_reload_interval: Duration,

    // --verifier-token, --verifier-token-file.
    #[command(flatten)]
    pub verifier_token: SecretArg<VerifierTokenFlags>,

    /// Principals file (TOML: named static tokens by SHA-256, client certificates, JWT issuers,
    /// with roles and application scopes; README "Who may do what"). Re-read when its content
    /// changes; a file that does not load keeps the previous one. The admin and verifier tokens
    /// keep working as the principals `admin` and `verifier`.
    #[arg(long, env = "KEYAUTH_PRINCIPALS_FILE")]
    pub principals: Option<std::path::PathBuf>,

    /// How often --principals is checked for changes; 0s: read once, at start-up.
    #[arg(long, env = "KEYAUTH_PRINCIPALS_RELOAD_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub principals_reload_interval: Duration,

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

    /// Connections open at once at most; past it a new connection is closed at once.
    #[arg(long, env = "KEYAUTH_MAX_CONNECTIONS", default_value_t = Limits::DEFAULT_MAX_CONNECTIONS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_connections: usize,

    /// Calls running at once at most, over all connections (health checks aside); past it a
    /// call is answered UNAVAILABLE with a retry delay, its request unread.
    #[arg(long, env = "KEYAUTH_MAX_IN_FLIGHT", default_value_t = Limits::DEFAULT_MAX_IN_FLIGHT, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_in_flight: usize,

    /// Longest a new connection may take to start its first call (TLS handshake included);
    /// past it, it is closed.
    #[arg(long, env = "KEYAUTH_FIRST_REQUEST_TIMEOUT", default_value = "10s", value_parser = parse_positive_duration)]
    pub first_request_timeout: Duration,

    /// How often an HTTP/2 ping checks an open connection's client (0s: never).
    #[arg(long, env = "KEYAUTH_KEEPALIVE_INTERVAL", default_value = "60s", value_parser = parse_duration)]
    pub keepalive_interval: Duration,

    /// How long the client has to answer that ping before its connection is closed.
    #[arg(long, env = "KEYAUTH_KEEPALIVE_TIMEOUT", default_value = "20s", value_parser = parse_positive_duration)]
    pub keepalive_timeout: Duration,

    /// Age at which a connection is asked to go away (HTTP/2 GOAWAY; clients reconnect,
    /// spreading over instances again); 0s: never.
    #[arg(long, env = "KEYAUTH_MAX_CONNECTION_AGE", default_value = "30m", value_parser = parse_duration)]
    pub max_connection_age: Duration,

    /// How long past that age its calls and streams may run before it is closed outright.
    #[arg(long, env = "KEYAUTH_MAX_CONNECTION_AGE_GRACE", default_value = "1m", value_parser = parse_duration)]
    pub max_connection_age_grace: Duration,

    /// WatchKeyChanges: a heartbeat after this long without a message.
    #[arg(long, env = "KEYAUTH_WATCH_HEARTBEAT", default_value = "2s", value_parser = parse_positive_duration)]
    pub watch_heartbeat: Duration,

    /// WatchKeyChanges: key changes kept for watchers that have not read them yet; a watcher
    /// further behind is sent a reset and closed.
    #[arg(long, env = "KEYAUTH_WATCH_BACKLOG", default_value_t = keyauth_core::changes::HUB_CAPACITY, value_parser = clap::value_parser!(u64).range(1..1_000_000).map(|n| n as usize))]
    pub watch_backlog: usize,

    /// WatchKeyChanges streams open at once at most; more are refused RESOURCE_EXHAUSTED.
    #[arg(long, env = "KEYAUTH_MAX_WATCH_STREAMS", default_value_t = 1024)]
    pub max_watch_streams: usize,

    /// Route table (TOML) for Envoy ext_authz Check: `[[route]]` entries (`method`, `path`,
    /// `resource`, `action`; `*` is one path segment, a trailing `**` the rest) naming the
    /// permission a request needs, tried before the default `/api/v1/<resource>…` mapping.
    #[arg(long, env = "KEYAUTH_EXT_AUTHZ_ROUTES")]
    pub ext_authz_routes: Option<PathBuf>,

    /// Remove the `authorization` header from requests ext_authz allows, so the upstream
    /// never sees the key (environment: `KEYAUTH_EXT_AUTHZ_STRIP_AUTHORIZATION=true`).
    #[arg(long, env = "KEYAUTH_EXT_AUTHZ_STRIP_AUTHORIZATION")]
    pub ext_authz_strip_authorization: bool,

    /// Address of the HTTP listener: the operator console at `/` and the gRPC API over
    /// gRPC-Web (unless --console false), and with --github-scanning-keys the webhook
    /// `POST /v1/secret-scanning/github` (GitHub secret scanning reports leaked keys, which are
    /// revoked). TLS with --tls-cert/--tls-key when they are set. Unset: no HTTP listener.
    #[arg(long, env = "KEYAUTH_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,

    /// GitHub's secret-scanning public keys: a copy of
    /// <https://api.github.com/meta/public_keys/secret_scanning> (JSON), re-read when it changes.
    #[arg(long, env = "KEYAUTH_GITHUB_SCANNING_KEYS", requires = "http_listen")]
    pub github_scanning_keys: Option<PathBuf>,

    /// Serve the operator console and gRPC-Web on the HTTP listener (`false`: the listener
    /// serves the webhook alone, e.g. when it faces the internet for GitHub).
    #[arg(long, env = "KEYAUTH_CONSOLE", default_value_t = true, action = clap::ArgAction::Set)]
    pub console: bool,

    /// The OpenID provider the console offers "Sign in with …" for (authorization code with
    /// PKCE, in the browser): its issuer URL, https (http only to a loopback host). With
    /// --console-oidc-client-id; it must be an `[[issuer]]` of --principals (whose `audience`
    /// is the client id), since the console calls keyauth with the ID token it gets.
    #[arg(long, env = "KEYAUTH_CONSOLE_OIDC_ISSUER")]
    pub console_oidc_issuer: Option<String>,

    /// The console's client id at --console-oidc-issuer (a public client: no secret, PKCE;
    /// redirect URI: the console's origin followed by `/`).
    #[arg(long, env = "KEYAUTH_CONSOLE_OIDC_CLIENT_ID")]
    pub console_oidc_client_id: Option<String>,
}
/// The flags parsed as `keyauth serve` parses them, for the unit tests.
#[cfg(test)]
pub(super) mod testing {
    use clap::Parser;

    use super::ServeArgs;

    #[derive(Parser)]
    pub struct Serve {
        #[command(flatten)]
        pub args: ServeArgs,
    }

    /// The operator-failure limit and retention, and the cold lookups at most, of `args`.
    pub fn attack_settings(args: &ServeArgs) -> (u32, std::time::Duration, usize) {
        let settings = args.authority_settings().unwrap();
        let failures = settings.auth_failures;
        (
            failures.limit,
            failures.retention,
            settings.cache.max_cold_lookups,
        )
    }

    pub fn parse(flags: &[&str]) -> ServeArgs {
        Serve::try_parse_from(std::iter::once("serve").chain(flags.iter().copied()))
            .unwrap()
            .args
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{attack_settings, parse};
    use super::*;

    #[test]
    fn defaults_match_the_contract() {
        let args = parse(&[]);
        assert_eq!(args.listen.to_string(), "127.0.0.1:50051");
        assert_eq!(args.database, "sqlite://keyauth.db");
        assert_eq!(args.cache_ttl, Duration::from_secs(30));
        assert_eq!(args.cache().max_bytes, CacheSettings::DEFAULT_MAX_BYTES);
        assert_eq!(args.hash_params(), HashParams::DEFAULT);
        assert_eq!(args.limits(), Limits::default());
        assert!(args.tls_cert.is_none() && args.metrics_listen.is_none());
        assert_eq!(args.tls_reload_interval, Duration::from_secs(10));
        assert_eq!(
            args.serve_options().unwrap().tls_reload_interval,
            crate::server::DEFAULT_TLS_RELOAD_INTERVAL
        );
        assert_eq!(
            parse(&["--tls-reload-interval", "0s"]).tls_reload_interval,
            Duration::ZERO
        );
        assert!(args.verifier_token().unwrap().is_none());
        let days = |n: u64| Duration::from_secs(n * 24 * 3600);
        assert_eq!(attack_settings(&args), (20, days(30), 128));
    }

    #[test]
    fn debug_redacts_every_secret() {
        let args = parse(&[
            "--admin-token",
            "admin-secret-value",
            "--verifier-token",
            "verifier-secret-value",
            "--seal-key",
            "seal-secret-value",
        ]);
        let shown = format!("{args:?}");
        for secret in [
            "admin-secret-value",
            "verifier-secret-value",
            "seal-secret-value",
        ] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("Secret(..)"));
    }
}
