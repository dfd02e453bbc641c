//! The flags of `keyauth serve`: one clap struct, every flag with a `KEYAUTH_…` twin. Values
//! are checked here, so a bad setting stops the start with a message naming it (exit code 2).
//!
//! Secrets (the operator and verifier tokens, the seal key) can come from a flag, an
//! environment variable or a file; the file (or the environment) is the one to use in
//! production, as a flag is visible to every local user in the process list. Whatever their
//! source, they are held as [`Secret`]s, whose `Debug` is a redaction.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use clap::builder::TypedValueParser;
use clap::{Args, ValueEnum};
use keyauth_core::auth_failures::AuthFailureSettings;
use keyauth_core::cache::CacheSettings;
use keyauth_core::hashing::HashParams;
use keyauth_core::store::StoreOptions;
use zeroize::Zeroizing;

use keyauth_contract::routes::RouteTable;
use keyauth_core::catalog::Catalog;
use keyauth_core::propagation::FollowOptions;
use keyauth_core::sealing::SealKey;

use crate::ext_authz::ExtAuthzOptions;
use crate::http::{GithubKeys, HttpOptions};
use crate::limits::Limits;
use crate::server::{AuthoritySettings, ServeOptions};
use crate::service::{OperatorAuth, WatchOptions};

/// A setting that cannot be used: which one (flag and environment variable), and why. `main`
/// prints it and exits with code 2.
#[derive(Debug)]
pub struct SettingError {
    pub setting: &'static str,
    pub why: String,
}

impl fmt::Display for SettingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {}: {}", self.setting, self.why)
    }
}

fn setting(setting: &'static str) -> impl Fn(String) -> SettingError {
    move |why| SettingError { setting, why }
}

/// A secret setting: `Debug` prints `Secret(..)`, and the memory is wiped on drop.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    pub fn new(text: impl Into<String>) -> Self {
        Secret(Zeroizing::new(text.into()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Reads a secret from a file, without the trailing newline editors and `echo` add.
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let text = Zeroizing::new(
            std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?,
        );
        let trimmed = text.trim_end_matches(['\n', '\r']);
        if trimmed.is_empty() {
            return Err(format!("{}: the file is empty", path.display()));
        }
        Ok(Secret::new(trimmed))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret::new(s))
    }
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
    /// Unset: operator RPCs are refused; Verify and CheckPermission still work. Prefer
    /// --admin-token-file or the environment: a flag shows in the process list.
    #[arg(
        long,
        env = "KEYAUTH_ADMIN_TOKEN",
        hide_env_values = true,
        conflicts_with = "admin_token_file"
    )]
    pub admin_token: Option<Secret>,

    /// File holding the operator token, instead of KEYAUTH_ADMIN_TOKEN.
    #[arg(long, env = "KEYAUTH_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,

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

    /// Seal key (32 bytes, hex or base64) that encrypts the secrets kept for idempotent
    /// replay of IssueKey and RollKey. Unset: such replays are refused (FAILED_PRECONDITION).
    /// `keyauth gen-seal-key` prints one.
    #[arg(
        long,
        env = "KEYAUTH_SEAL_KEY",
        hide_env_values = true,
        conflicts_with = "seal_key_file"
    )]
    pub seal_key: Option<Secret>,

    /// File holding the seal key, instead of KEYAUTH_SEAL_KEY.
    #[arg(long, env = "KEYAUTH_SEAL_KEY_FILE")]
    pub seal_key_file: Option<PathBuf>,

    /// The seal key before a rotation: replays sealed under it still open, new seals use the
    /// current key. Drop it once --idempotency-ttl has passed since the rotation.
    #[arg(
        long,
        env = "KEYAUTH_SEAL_KEY_PREVIOUS",
        hide_env_values = true,
        conflicts_with = "seal_key_previous_file"
    )]
    pub seal_key_previous: Option<Secret>,

    /// File holding the previous seal key, instead of KEYAUTH_SEAL_KEY_PREVIOUS.
    #[arg(long, env = "KEYAUTH_SEAL_KEY_PREVIOUS_FILE")]
    pub seal_key_previous_file: Option<PathBuf>,

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

    /// Token Verify and CheckPermission callers must send as `authorization: Bearer <token>`.
    /// Unset: anyone who can connect may verify.
    #[arg(
        long,
        env = "KEYAUTH_VERIFIER_TOKEN",
        hide_env_values = true,
        conflicts_with = "verifier_token_file"
    )]
    pub verifier_token: Option<Secret>,

    /// File holding the verifier token, instead of KEYAUTH_VERIFIER_TOKEN.
    #[arg(long, env = "KEYAUTH_VERIFIER_TOKEN_FILE")]
    pub verifier_token_file: Option<PathBuf>,

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
}

/// A secret given directly or as a file (at most one of them: clap refuses both).
fn secret_from(direct: &Option<Secret>, file: Option<&Path>) -> Result<Option<Secret>, String> {
    match (direct, file) {
        (Some(secret), _) => Ok(Some(secret.clone()).filter(|s| !s.expose().is_empty())),
        (None, Some(path)) => Secret::from_file(path).map(Some),
        (None, None) => Ok(None),
    }
}

impl ServeArgs {
    /// Everything the `Authority` is made of, each file read and each value checked.
    pub fn authority_settings(&self) -> Result<AuthoritySettings, SettingError> {
        let catalog = match &self.catalog {
            Some(path) => Catalog::load(path).map_err(setting("--catalog (KEYAUTH_CATALOG)"))?,
            None => Catalog::built_in(),
        };
        self.hash_params()
            .validate()
            .map_err(setting("--argon2-m-cost/--argon2-t-cost/--argon2-p-cost"))?;
        let seal_key = match (&self.seal_key, &self.seal_key_file) {
            (Some(text), _) => Some(
                SealKey::parse(text.expose()).map_err(setting("--seal-key (KEYAUTH_SEAL_KEY)"))?,
            ),
            (None, Some(path)) => Some(
                SealKey::load(path).map_err(setting("--seal-key-file (KEYAUTH_SEAL_KEY_FILE)"))?,
            ),
            (None, None) => None,
        };
        let seal_key_previous = match (&self.seal_key_previous, &self.seal_key_previous_file) {
            (Some(text), _) => Some(
                SealKey::parse(text.expose())
                    .map_err(setting("--seal-key-previous (KEYAUTH_SEAL_KEY_PREVIOUS)"))?,
            ),
            (None, Some(path)) => Some(SealKey::load(path).map_err(setting(
                "--seal-key-previous-file (KEYAUTH_SEAL_KEY_PREVIOUS_FILE)",
            ))?),
            (None, None) => None,
        };
        if seal_key_previous.is_some() && seal_key.is_none() {
            return Err(setting("--seal-key-previous (KEYAUTH_SEAL_KEY_PREVIOUS)")(
                "needs a current seal key (--seal-key or --seal-key-file) to seal with".into(),
            ));
        }
        Ok(AuthoritySettings {
            catalog,
            hash: self.hash_params(),
            hash_workers: self.hash_workers(),
            hash_queue: self.hash_queue,
            cache: self.cache(),
            seal_key: seal_key.map(std::sync::Arc::new),
            seal_key_previous: seal_key_previous.map(std::sync::Arc::new),
            idempotency_ttl: self.idempotency_ttl,
            auth_failures: AuthFailureSettings {
                limit: self.operator_failure_limit,
                retention: self.auth_failure_retention,
                ..AuthFailureSettings::default()
            },
            watch_backlog: self.watch_backlog,
        })
    }

    /// How to serve: TLS, tokens, limits and the timings of the background tasks; with
    /// --http-listen, the HTTP listener too (bound here, so a busy port stops the start).
    pub fn serve_options(&self) -> Result<ServeOptions, SettingError> {
        let tls = crate::tls::load(
            self.tls_cert.as_deref(),
            self.tls_key.as_deref(),
            self.tls_client_ca.as_deref(),
        )
        .map_err(|e| SettingError {
            setting: e.setting,
            why: e.why,
        })?
        .map(std::sync::Arc::new);
        let admin = self
            .admin_token()
            .map_err(setting("--admin-token-file (KEYAUTH_ADMIN_TOKEN_FILE)"))?;
        let verifier = self.verifier_token().map_err(setting(
            "--verifier-token-file (KEYAUTH_VERIFIER_TOKEN_FILE)",
        ))?;
        let routes = match &self.ext_authz_routes {
            Some(path) => RouteTable::load(path)
                .map_err(setting("--ext-authz-routes (KEYAUTH_EXT_AUTHZ_ROUTES)"))?,
            None => RouteTable::default(),
        };
        Ok(ServeOptions {
            health_interval: self.health_interval,
            usage_flush_interval: self.usage_flush_interval,
            shutdown_grace: self.shutdown_grace,
            follow: FollowOptions {
                poll_interval: self.event_poll_interval,
                ..FollowOptions::default()
            },
            http: self.http_options(tls.as_ref())?,
            tls,
            tls_reload_interval: self.tls_reload_interval,
            operators: OperatorAuth::new(admin.as_ref().map(Secret::expose)),
            verifiers: OperatorAuth::verifier(verifier.as_ref().map(Secret::expose)),
            limits: self.limits(),
            ext_authz: ExtAuthzOptions {
                routes,
                strip_authorization: self.ext_authz_strip_authorization,
            },
            watch: WatchOptions {
                heartbeat: self.watch_heartbeat,
                max_streams: self.max_watch_streams,
            },
        })
    }

    /// The HTTP listener of --http-listen: bound, with the gRPC port's TLS (`tls`) and GitHub's
    /// public keys read.
    fn http_options(
        &self,
        tls: Option<&std::sync::Arc<crate::tls::Reloading>>,
    ) -> Result<Option<HttpOptions>, SettingError> {
        const LISTEN: &str = "--http-listen (KEYAUTH_HTTP_LISTEN)";
        const KEYS: &str = "--github-scanning-keys (KEYAUTH_GITHUB_SCANNING_KEYS)";
        let Some(addr) = self.http_listen else {
            return Ok(None);
        };
        let github_keys = self
            .github_scanning_keys
            .as_deref()
            .map(|keys| GithubKeys::load(keys).map(std::sync::Arc::new))
            .transpose()
            .map_err(setting(KEYS))?;
        let listener = std::net::TcpListener::bind(addr).map_err(|e| SettingError {
            setting: LISTEN,
            why: format!("{addr}: {e}"),
        })?;
        Ok(Some(HttpOptions {
            listener: std::sync::Arc::new(listener),
            tls: tls.cloned(),
            github_keys,
            console: self.console,
        }))
    }

    /// The operator token, from --admin-token (KEYAUTH_ADMIN_TOKEN) or --admin-token-file.
    pub fn admin_token(&self) -> Result<Option<Secret>, String> {
        secret_from(&self.admin_token, self.admin_token_file.as_deref())
    }

    /// The verifier token, from --verifier-token (KEYAUTH_VERIFIER_TOKEN) or
    /// --verifier-token-file.
    pub fn verifier_token(&self) -> Result<Option<Secret>, String> {
        secret_from(&self.verifier_token, self.verifier_token_file.as_deref())
    }

    pub fn hash_params(&self) -> HashParams {
        HashParams {
            m_cost: self.argon2_m_cost,
            t_cost: self.argon2_t_cost,
            p_cost: self.argon2_p_cost,
        }
    }

    pub fn hash_workers(&self) -> usize {
        match self.hash_workers {
            0 => default_hash_workers(std::thread::available_parallelism().map_or(1, |n| n.get())),
            n => n,
        }
    }

    pub fn cache(&self) -> CacheSettings {
        CacheSettings {
            max_bytes: self.cache_max_bytes,
            ttl: self.cache_ttl,
            negative_ttl: self.negative_cache_ttl,
            failure_limit: self.failure_limit,
            max_cold_lookups: self.max_cold_lookups,
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
            max_connections: self.max_connections,
            max_in_flight: self.max_in_flight,
            first_request_timeout: self.first_request_timeout,
            keepalive_interval: self.keepalive_interval,
            keepalive_timeout: self.keepalive_timeout,
            max_connection_age: self.max_connection_age,
            max_connection_age_grace: self.max_connection_age_grace,
        }
    }

    pub fn store(&self) -> StoreOptions {
        StoreOptions {
            max_connections: self.database_max_connections,
            ..StoreOptions::default()
        }
    }
}

/// The argon2 pool of `--hash-workers 0` on `cores` cores: all but one, at least one. A pool
/// as wide as the machine lets a burst of cold Verify calls take every core from the runtime,
/// so warm calls (answered from memory in microseconds) would wait behind argon2.
pub fn default_hash_workers(cores: usize) -> usize {
    cores.saturating_sub(1).max(1)
}

/// A duration (see [`parse_duration`]) that is not zero.
pub fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        Duration::ZERO => Err(format!("{s:?} must be more than zero")),
        d => Ok(d),
    }
}

/// Parses a duration as humantime writes them (`30s`, `500ms`, `2m`, `1h 30m`), or a bare
/// number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    match s.parse::<u64>() {
        Ok(seconds) => Ok(Duration::from_secs(seconds)),
        Err(_) => humantime::parse_duration(s)
            .map_err(|e| format!("{s:?} is not a duration like 30s, 500ms, 2m or 1h ({e})")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Serve {
        #[command(flatten)]
        args: ServeArgs,
    }

    fn parse(flags: &[&str]) -> ServeArgs {
        Serve::try_parse_from(std::iter::once("serve").chain(flags.iter().copied()))
            .unwrap()
            .args
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5 fortnights").is_err());
    }

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
        let settings = args.authority_settings().unwrap();
        assert_eq!(settings.auth_failures.limit, 20);
        assert_eq!(
            settings.auth_failures.retention,
            Duration::from_secs(30 * 24 * 3600)
        );
        assert_eq!(settings.cache.max_cold_lookups, 128);
    }

    #[test]
    fn the_attack_limits_are_set_by_flag() {
        let args = parse(&[
            "--operator-failure-limit",
            "5",
            "--auth-failure-retention",
            "7d",
            "--max-cold-lookups",
            "16",
            "--max-connections",
            "100",
            "--max-in-flight",
            "50",
            "--first-request-timeout",
            "2s",
            "--max-connection-age",
            "0s",
        ]);
        let limits = args.limits();
        assert_eq!(limits.max_connections, 100);
        assert_eq!(limits.max_in_flight, 50);
        assert_eq!(limits.first_request_timeout, Duration::from_secs(2));
        assert_eq!(limits.max_connection_age, Duration::ZERO);
        let settings = args.authority_settings().unwrap();
        assert_eq!(settings.auth_failures.limit, 5);
        assert_eq!(
            settings.auth_failures.retention,
            Duration::from_secs(7 * 24 * 3600)
        );
        assert_eq!(settings.cache.max_cold_lookups, 16);
        for bad in [
            ["--operator-failure-limit", "0"],
            ["--max-cold-lookups", "0"],
            ["--auth-failure-retention", "0s"],
            ["--max-connections", "0"],
            ["--max-in-flight", "0"],
            ["--first-request-timeout", "0s"],
        ] {
            assert!(
                Serve::try_parse_from(std::iter::once("serve").chain(bad)).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_hash_pool_leaves_a_core_to_the_runtime() {
        assert_eq!(default_hash_workers(1), 1);
        assert_eq!(default_hash_workers(2), 1);
        assert_eq!(default_hash_workers(8), 7);
        assert_eq!(parse(&["--hash-workers", "3"]).hash_workers(), 3);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(parse(&[]).hash_workers(), default_hash_workers(cores));
    }

    #[test]
    fn ext_authz_settings_are_read() {
        let args = parse(&[]);
        let options = args.serve_options().unwrap();
        assert!(options.ext_authz.routes.is_empty());
        assert!(!options.ext_authz.strip_authorization);

        let dir = tempfile::tempdir().unwrap();
        let routes = dir.path().join("routes.toml");
        std::fs::write(
            &routes,
            "[[route]]\nmethod = \"GET\"\npath = \"/api/v1/reports/*\"\n\
             resource = \"patients\"\naction = \"read\"\n",
        )
        .unwrap();
        let args = parse(&[
            "--ext-authz-routes",
            routes.to_str().unwrap(),
            "--ext-authz-strip-authorization",
        ]);
        let options = args.serve_options().unwrap();
        assert_eq!(options.ext_authz.routes.len(), 1);
        assert!(options.ext_authz.strip_authorization);

        std::fs::write(&routes, "[[route]]\npath = \"no-slash\"\n").unwrap();
        let args = parse(&["--ext-authz-routes", routes.to_str().unwrap()]);
        let err = args.serve_options().unwrap_err();
        assert_eq!(err.setting, "--ext-authz-routes (KEYAUTH_EXT_AUTHZ_ROUTES)");
        assert!(err.why.contains("routes.toml"), "{err}");
    }

    #[test]
    fn a_previous_seal_key_opens_only_beside_a_current_one() {
        let old = keyauth_core::sealing::SealKey::generate_hex().unwrap();
        let new = keyauth_core::sealing::SealKey::generate_hex().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("previous.key");
        std::fs::write(&file, format!("{old}\n")).unwrap();
        let args = parse(&[
            "--seal-key",
            &new,
            "--seal-key-previous-file",
            file.to_str().unwrap(),
        ]);
        let settings = args.authority_settings().unwrap();
        assert!(settings.seal_key.is_some() && settings.seal_key_previous.is_some());
        let args = parse(&["--seal-key", &new, "--seal-key-previous", &old]);
        assert!(
            args.authority_settings()
                .unwrap()
                .seal_key_previous
                .is_some()
        );
        let alone = parse(&["--seal-key-previous", &old]);
        let err = alone.authority_settings().unwrap_err();
        assert!(err.setting.contains("KEYAUTH_SEAL_KEY_PREVIOUS"), "{err}");
        let bad = parse(&["--seal-key", &new, "--seal-key-previous", "abcd"]);
        assert!(bad.authority_settings().is_err());
    }

    #[test]
    fn the_http_listener_serves_the_console_and_the_webhook_when_given_keys() {
        assert!(parse(&[]).serve_options().unwrap().http.is_none());
        let lone = ["serve", "--github-scanning-keys", "keys.json"];
        assert!(Serve::try_parse_from(lone).is_err(), "keys need a listener");
        let console = parse(&["--http-listen", "127.0.0.1:0"])
            .serve_options()
            .unwrap()
            .http
            .expect("an HTTP listener");
        assert!(console.console && console.github_keys.is_none());
        let webhook_only = parse(&["--http-listen", "127.0.0.1:0", "--console", "false"])
            .serve_options()
            .unwrap()
            .http
            .expect("an HTTP listener");
        assert!(!webhook_only.console);
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys.json");
        std::fs::write(&keys, r#"{"public_keys":[]}"#).unwrap();
        let args = parse(&[
            "--http-listen",
            "127.0.0.1:0",
            "--github-scanning-keys",
            keys.to_str().unwrap(),
        ]);
        let err = args.serve_options().unwrap_err();
        assert_eq!(
            err.setting,
            "--github-scanning-keys (KEYAUTH_GITHUB_SCANNING_KEYS)"
        );
        assert!(err.why.contains("no public key"), "{err}");
        std::fs::write(
            &keys,
            r#"{"public_keys":[{"key_identifier":"k1","key":"not a PEM"}]}"#,
        )
        .unwrap();
        let err = args.serve_options().unwrap_err();
        assert!(
            err.why.contains("\"k1\" is not a PEM P-256 public key"),
            "{err}"
        );
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

    #[test]
    fn secrets_are_read_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("admin-token");
        std::fs::write(&token, "from-a-file\n").unwrap();
        let args = parse(&["--admin-token-file", token.to_str().unwrap()]);
        assert_eq!(args.admin_token().unwrap().unwrap().expose(), "from-a-file");
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let args = parse(&["--verifier-token-file", empty.to_str().unwrap()]);
        assert!(args.verifier_token().unwrap_err().contains("empty"));
        let missing = dir.path().join("missing");
        let args = parse(&["--admin-token-file", missing.to_str().unwrap()]);
        assert!(args.admin_token().is_err());
        // Both forms at once is a usage error.
        assert!(
            Serve::try_parse_from([
                "serve",
                "--admin-token",
                "x",
                "--admin-token-file",
                token.to_str().unwrap()
            ])
            .is_err()
        );
    }
}
