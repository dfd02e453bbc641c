//! Spawning the real server on port 0 against a fresh store, and the shared checks every test
//! ends with (no issued secret in the logs or at rest).

pub mod pki;
pub mod process;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keyauth_core::Authority;
use keyauth_core::auth_failures::AuthFailureSettings;
use keyauth_core::cache::CacheSettings;
use keyauth_core::catalog::Catalog;
use keyauth_core::clock::{Clock, Timestamp};
use keyauth_core::hashing::HashParams;
use keyauth_core::sealing::SealKey;
use keyauth_core::store::{self, StoreOptions};
use keyauth_proto as pb;
use keyauth_proto::key_authority_service_client::KeyAuthorityServiceClient;
use keyauth_server::ext_authz::ExtAuthzOptions;
use keyauth_server::http::{GithubKeys, HttpOptions};
use keyauth_server::server::{self, AuthoritySettings, Running, ServeOptions};
use keyauth_server::service::{Credentials, WatchOptions};
use sqlx::Connection;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

pub const ADMIN_TOKEN: &str = "operator-token-used-by-the-tests";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Writes each test as one function per store.
#[macro_export]
macro_rules! both_stores {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name($crate::helpers::Backend::Sqlite).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$name($crate::helpers::Backend::Postgres).await
                }
            }
        )*
    };
}

// ---------------------------------------------------------------------------------------------
// Logs of the whole test binary, and every secret it issued.

#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        if std::env::var_os("KEYAUTH_TEST_ECHO_LOGS").is_some() {
            std::io::stderr().write_all(buf)?;
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn logs() -> &'static LogBuffer {
    static LOGS: OnceLock<LogBuffer> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = LogBuffer::default();
        let writer = buffer.clone();
        tracing_subscriber::fmt()
            // Everything our code logs, at every level; the transport crates below debug are
            // frame-level noise and would make the leak scans slow.
            .with_env_filter(
                "trace,h2=debug,hyper=debug,hyper_util=debug,tower=debug,tokio=debug,runtime=debug",
            )
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .init();
        buffer
    })
}

fn secrets() -> &'static Mutex<Vec<String>> {
    static SECRETS: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    SECRETS.get_or_init(Default::default)
}

/// Remembers a full key this run issued, to look for it in logs and stores.
pub fn register_secret(full_key: &str) {
    secrets().lock().unwrap().push(full_key.to_owned());
}

/// The needles for one full key: the key and its secret part alone.
fn needles(full_key: &str) -> [String; 2] {
    [full_key.to_owned(), full_key[20..52].to_owned()]
}

/// Panics if any secret issued so far appears in `haystack` (one pass for all of them).
pub fn assert_no_secret_in(what: &str, haystack: &[u8]) {
    let patterns: Vec<String> = secrets()
        .lock()
        .unwrap()
        .iter()
        .flat_map(|k| needles(k))
        .collect();
    if patterns.is_empty() {
        return;
    }
    let finder = aho_corasick::AhoCorasick::new(&patterns).unwrap();
    assert!(
        finder.find(haystack).is_none(),
        "an issued secret appears in {what}"
    );
}

pub fn captured_logs() -> Vec<u8> {
    logs().0.lock().unwrap().clone()
}

// ---------------------------------------------------------------------------------------------
// Fresh stores.

/// A database made for one test and dropped after it.
pub enum TestDb {
    Sqlite {
        _dir: tempfile::TempDir,
        path: std::path::PathBuf,
    },
    Postgres {
        server_url: String,
        name: String,
    },
}

impl TestDb {
    /// `None` (after a notice) when PostgreSQL is asked for but not configured.
    pub async fn create(backend: Backend) -> Option<TestDb> {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let path = dir.path().join("keyauth.db");
                Some(TestDb::Sqlite { _dir: dir, path })
            }
            Backend::Postgres => {
                let server_url = postgres_server_url()?;
                let name = format!(
                    "keyauth_test_{}",
                    keyauth_core::key::random_base62(12).unwrap().to_lowercase()
                );
                let mut conn = sqlx::PgConnection::connect(&server_url)
                    .await
                    .expect("connect to KEYAUTH_TEST_DATABASE_URL");
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut conn)
                    .await
                    .expect("create test database");
                Some(TestDb::Postgres { server_url, name })
            }
        }
    }

    /// Runs one SQL statement on the test's database (to set up what the API cannot make,
    /// such as a key from before a migration).
    pub async fn execute(&self, sql: &str) {
        let sql = sqlx::AssertSqlSafe(sql.to_owned());
        match self {
            TestDb::Sqlite { .. } => {
                let mut conn = sqlx::SqliteConnection::connect(&self.url()).await.unwrap();
                sqlx::raw_sql(sql).execute(&mut conn).await.unwrap();
            }
            TestDb::Postgres { .. } => {
                let mut conn = sqlx::PgConnection::connect(&self.url()).await.unwrap();
                sqlx::raw_sql(sql).execute(&mut conn).await.unwrap();
            }
        };
    }

    pub fn url(&self) -> String {
        match self {
            TestDb::Sqlite { path, .. } => format!("sqlite://{}", path.display()),
            TestDb::Postgres { server_url, name } => database_url(server_url, name),
        }
    }

    /// Every byte the store holds, as text: the SQLite files, or a dump of the tables.
    pub async fn dump(&self) -> Vec<u8> {
        match self {
            TestDb::Sqlite { path, .. } => {
                let mut bytes = std::fs::read(path).unwrap_or_default();
                bytes.extend(std::fs::read(path.with_extension("db-wal")).unwrap_or_default());
                bytes
            }
            TestDb::Postgres { .. } => {
                let mut conn = sqlx::PgConnection::connect(&self.url()).await.unwrap();
                let mut out = Vec::new();
                // Every table the migrations made, so that a new one cannot escape the scan.
                let tables: Vec<String> = sqlx::query_scalar(
                    "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public'",
                )
                .fetch_all(&mut conn)
                .await
                .unwrap();
                assert!(
                    tables.iter().any(|t| t == "idempotency_records"),
                    "{tables:?}"
                );
                for table in tables {
                    let rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                        "SELECT t::text FROM {table} t"
                    )))
                    .fetch_all(&mut conn)
                    .await
                    .unwrap();
                    out.extend(rows.join("\n").into_bytes());
                }
                out
            }
        }
    }
}

/// The PostgreSQL server the tests make their databases on. Without one, a test says it
/// skipped, visibly; under CI (`CI` set) its absence fails the test: a green CI run must have
/// run against PostgreSQL.
pub fn postgres_server_url() -> Option<String> {
    match std::env::var("KEYAUTH_TEST_DATABASE_URL") {
        Ok(url) => Some(url),
        Err(_) if std::env::var_os("CI").is_some() => {
            panic!(
                "CI is set but KEYAUTH_TEST_DATABASE_URL is not: the PostgreSQL runs cannot be skipped in CI"
            )
        }
        Err(_) => {
            eprintln!(
                "skipped: the PostgreSQL run of this test (KEYAUTH_TEST_DATABASE_URL is unset; \
                 .ci/run sets it)"
            );
            None
        }
    }
}

fn database_url(server_url: &str, name: &str) -> String {
    let (base, query) = match server_url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (server_url, String::new()),
    };
    let without_db = match base.rfind('/') {
        Some(i) if i > "postgres://".len() => &base[..i],
        _ => base,
    };
    format!("{without_db}/{name}{query}")
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let TestDb::Postgres { server_url, name } = self {
            let (server_url, name) = (server_url.clone(), name.clone());
            // Dropping needs async I/O; do it on a runtime of its own.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    if let Ok(mut conn) = sqlx::PgConnection::connect(&server_url).await {
                        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                        )))
                        .execute(&mut conn)
                        .await;
                    }
                });
            })
            .join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The server under test.

#[derive(Clone)]
pub struct Options {
    pub cache: CacheSettings,
    pub hash: HashParams,
    pub hash_workers: usize,
    pub hash_queue: usize,
    pub admin_token: Option<String>,
    pub catalog: Catalog,
    /// Seal key (hex) enabling idempotent replay of secrets.
    pub seal_key: Option<String>,
    /// The seal key before a rotation (hex): still opens replays, never seals.
    pub seal_key_previous: Option<String>,
    pub idempotency_ttl: Duration,
    /// The verifier token Verify, CheckPermission and ext_authz Check then require.
    pub verifier_token: Option<String>,
    /// Envoy ext_authz: the route table and whether `authorization` is stripped.
    pub ext_authz: ExtAuthzOptions,
    /// GitHub's secret-scanning public keys file: set, the HTTP listener serves on port 0.
    pub github_keys: Option<std::path::PathBuf>,
    /// The console and gRPC-Web: set, the HTTP listener serves on port 0.
    pub console: bool,
    /// The HTTP listener's certificate and key (PEM files): set, it speaks TLS only.
    pub http_tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// With `http_tls`: the client CA (`--tls-client-ca`).
    pub http_client_ca: Option<std::path::PathBuf>,
    pub auth_failures: AuthFailureSettings,
    /// WatchKeyChanges: heartbeat (fast in tests) and stream limit.
    pub watch: WatchOptions,
    /// Key changes kept for slow watchers.
    pub watch_backlog: usize,
    /// Where to listen; `None`: any free port.
    pub listen: Option<std::net::SocketAddr>,
    /// Connection and call limits.
    pub limits: keyauth_server::limits::Limits,
    /// A principals file's text (`--principals`), beside the admin and verifier tokens.
    pub principals: Option<String>,
    /// `--max-live-key-lifetime`, `--max-test-key-lifetime`.
    pub lifetimes: keyauth_core::lifetime::LifetimeBounds,
    /// `--expiry-warning`.
    pub expiry_warning: Duration,
    /// `--usage-hourly-retention`, `--usage-retention`.
    pub usage_retention: keyauth_core::authority::UsageRetention,
}

impl Default for Options {
    fn default() -> Self {
        let authority = AuthoritySettings::default();
        Options {
            cache: authority.cache,
            hash: authority.hash,
            hash_workers: authority.hash_workers,
            hash_queue: authority.hash_queue,
            admin_token: Some(ADMIN_TOKEN.to_owned()),
            catalog: authority.catalog,
            seal_key: None,
            seal_key_previous: None,
            idempotency_ttl: authority.idempotency_ttl,
            verifier_token: None,
            ext_authz: ExtAuthzOptions::default(),
            github_keys: None,
            console: false,
            http_tls: None,
            http_client_ca: None,
            auth_failures: authority.auth_failures,
            watch: WatchOptions {
                heartbeat: Duration::from_millis(200),
                ..WatchOptions::default()
            },
            listen: None,
            limits: keyauth_server::limits::Limits::default(),
            watch_backlog: authority.watch_backlog,
            principals: None,
            lifetimes: authority.lifetimes,
            expiry_warning: authority.expiry_warning,
            usage_retention: authority.usage_retention,
        }
    }
}

impl Options {
    fn authority(&self) -> AuthoritySettings {
        AuthoritySettings {
            catalog: self.catalog.clone(),
            hash: self.hash,
            hash_workers: self.hash_workers,
            hash_queue: self.hash_queue,
            cache: self.cache.clone(),
            seal_key: self
                .seal_key
                .as_deref()
                .map(|hex| Arc::new(SealKey::parse(hex).unwrap())),
            seal_key_previous: self
                .seal_key_previous
                .as_deref()
                .map(|hex| Arc::new(SealKey::parse(hex).unwrap())),
            idempotency_ttl: self.idempotency_ttl,
            auth_failures: self.auth_failures.clone(),
            watch_backlog: self.watch_backlog,
            lifetimes: self.lifetimes,
            expiry_warning: self.expiry_warning,
            usage_retention: self.usage_retention,
        }
    }
}

pub struct TestApp {
    /// Where the server under test listens.
    pub addr: std::net::SocketAddr,
    /// Where its HTTP listener listens, when it has one.
    pub http_addr: Option<std::net::SocketAddr>,
    pub client: KeyAuthorityServiceClient<Channel>,
    pub channel: Channel,
    pub clock: Clock,
    pub authority: Arc<Authority>,
    pub db: TestDb,
    server: Option<Running>,
}

pub async fn spawn(backend: Backend) -> Option<TestApp> {
    spawn_with(backend, Options::default()).await
}

pub async fn spawn_with(backend: Backend, options: Options) -> Option<TestApp> {
    let db = TestDb::create(backend).await?;
    Some(spawn_on(db, options).await)
}

/// Starts a server on an existing test database, with the same assembly `main` uses.
pub async fn spawn_on(db: TestDb, options: Options) -> TestApp {
    logs();
    let store = store::connect(&db.url(), &StoreOptions::default())
        .await
        .expect("open test store");
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let clock = Clock::manual(Timestamp::from_micros(now.as_micros() as i64));
    let authority = server::authority(store, options.authority(), clock.clone())
        .await
        .expect("authority");
    let serve_options = ServeOptions {
        health_interval: Duration::from_millis(200),
        usage_flush_interval: Duration::from_secs(3600),
        shutdown_grace: Duration::from_secs(10),
        credentials: credentials(&options),
        ext_authz: options.ext_authz.clone(),
        http: (options.github_keys.is_some() || options.console).then(|| {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind HTTP");
            HttpOptions {
                listener: Arc::new(listener),
                tls: options.http_tls.as_ref().map(|(cert, key)| {
                    let ca = options.http_client_ca.as_deref();
                    let tls = keyauth_server::tls::load(Some(cert), Some(key), ca)
                        .expect("HTTP TLS settings")
                        .expect("TLS");
                    Arc::new(tls)
                }),
                github_keys: options
                    .github_keys
                    .as_deref()
                    .map(|keys| Arc::new(GithubKeys::load(keys).expect("GitHub keys file"))),
                console: options.console,
                console_oidc: None,
            }
        }),
        watch: options.watch.clone(),
        limits: options.limits,
        ..ServeOptions::default()
    };
    let http_addr = serve_options
        .http
        .as_ref()
        .map(|http| http.listener.local_addr().unwrap());
    let running = server::start(
        options
            .listen
            .unwrap_or_else(|| "127.0.0.1:0".parse().unwrap()),
        authority.clone(),
        serve_options,
    )
    .await
    .expect("start the server under test");
    let addr = running.addr;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("connect to the server under test");
    TestApp {
        addr,
        http_addr,
        client: KeyAuthorityServiceClient::new(channel.clone()),
        channel,
        clock,
        authority,
        db,
        server: Some(running),
    }
}

/// The credentials of `options`: its principals file, with the admin and verifier tokens.
fn credentials(options: &Options) -> Credentials {
    use keyauth_server::principals::{Principals, PrincipalsCell};
    let file = options
        .principals
        .as_deref()
        .map(|text| Principals::parse(text).expect("the test's principals file loads"));
    let principals = Principals::with_legacy(
        file,
        options.admin_token.as_deref(),
        options.verifier_token.as_deref(),
    )
    .expect("the tests' tokens are long enough");
    Credentials::new(Arc::new(PrincipalsCell::new(principals)))
}

/// A request with the operator token.
pub fn op<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {ADMIN_TOKEN}").parse().unwrap(),
    );
    request
}

/// A request with the operator token and this idempotency key.
pub fn with_key<T>(message: T, key: &str) -> Request<T> {
    let mut request = op(message);
    request
        .metadata_mut()
        .insert("idempotency-key", key.parse().unwrap());
    request
}

/// A roll of `key_id` with the default grace period and no expiry of its own.
pub fn roll_request(key_id: impl Into<String>) -> pb::RollKeyRequest {
    pb::RollKeyRequest {
        key_id: key_id.into(),
        grace_period: None,
        expire_time: None,
    }
}

/// A server with an argon2 cost slow enough that concurrent cold checks overlap, and no cache
/// (every Verify is cold).
pub fn slow_and_uncached() -> Options {
    Options {
        hash: HashParams {
            m_cost: 32768,
            t_cost: 3,
            p_cost: 1,
        },
        cache: CacheSettings {
            max_bytes: 0,
            ..CacheSettings::default()
        },
        ..Options::default()
    }
}

/// Issues a standard key over `client` (any server, the operator token) and remembers its
/// secret for the leak checks.
pub async fn issue_over(
    client: &mut KeyAuthorityServiceClient<Channel>,
    app: &str,
    env: pb::Environment,
) -> pb::IssueKeyResponse {
    let issued = client
        .issue_key(op(standard(app, env)))
        .await
        .expect("operator RPCs take the operator token")
        .into_inner();
    register_secret(&issued.secret);
    issued
}

pub fn standard(app: &str, env: pb::Environment) -> pb::IssueKeyRequest {
    pb::IssueKeyRequest {
        application_id: app.into(),
        environment: env.into(),
        name: "test key".into(),
        ..Default::default()
    }
}

pub fn permission(resource: &str, actions: &[&str]) -> pb::Permission {
    pb::Permission {
        resource: resource.into(),
        actions: actions.iter().map(|a| a.to_string()).collect(),
    }
}

impl TestApp {
    /// Issues a key and remembers its secret for the leak checks.
    pub async fn issue(
        &self,
        request: pb::IssueKeyRequest,
    ) -> Result<(pb::ApiKey, String), Status> {
        let response = self
            .client
            .clone()
            .issue_key(op(request))
            .await?
            .into_inner();
        register_secret(&response.secret);
        Ok((response.key.unwrap(), response.secret))
    }

    pub async fn issue_test_key(&self) -> (pb::ApiKey, String) {
        self.issue(standard("app_1", pb::Environment::Test))
            .await
            .unwrap()
    }

    pub async fn roll(
        &self,
        key_id: &str,
        grace: Option<Duration>,
    ) -> Result<pb::RollKeyResponse, Status> {
        let response = self
            .client
            .clone()
            .roll_key(op(pb::RollKeyRequest {
                key_id: key_id.into(),
                grace_period: grace.map(|g| prost_types::Duration {
                    seconds: g.as_secs() as i64,
                    nanos: g.subsec_nanos() as i32,
                }),
                expire_time: None,
            }))
            .await?
            .into_inner();
        register_secret(&response.secret);
        Ok(response)
    }

    pub async fn revoke(&self, key_id: &str) -> Result<pb::ApiKey, Status> {
        let response = self
            .client
            .clone()
            .revoke_key(op(pb::RevokeKeyRequest {
                key_id: key_id.into(),
                reason: "compromised".into(),
            }))
            .await?;
        Ok(response.into_inner().key.unwrap())
    }

    pub async fn get(&self, key_id: &str) -> Result<pb::ApiKey, Status> {
        let response = self
            .client
            .clone()
            .get_key(op(pb::GetKeyRequest {
                key_id: key_id.into(),
            }))
            .await?;
        Ok(response.into_inner().key.unwrap())
    }

    pub async fn verify(&self, key: &str) -> pb::VerifyResponse {
        self.verify_with(key, vec![]).await.expect("Verify answers")
    }

    pub async fn verify_with(
        &self,
        key: &str,
        required: Vec<pb::Permission>,
    ) -> Result<pb::VerifyResponse, Status> {
        Ok(self
            .client
            .clone()
            .verify(pb::VerifyRequest {
                key: key.into(),
                required_permissions: required,
            })
            .await?
            .into_inner())
    }

    pub async fn check(
        &self,
        key: &str,
        resource: &str,
        action: &str,
    ) -> Result<pb::CheckPermissionResponse, Status> {
        Ok(self
            .client
            .clone()
            .check_permission(pb::CheckPermissionRequest {
                key: key.into(),
                resource: resource.into(),
                action: action.into(),
            })
            .await?
            .into_inner())
    }

    /// Verify (no permissions) of each key, all at once, in tasks of their own.
    pub async fn verify_concurrently(
        &self,
        keys: impl IntoIterator<Item = String>,
    ) -> Vec<Result<pb::VerifyResponse, Status>> {
        let mut calls = tokio::task::JoinSet::new();
        for key in keys {
            let mut client = self.client.clone();
            calls.spawn(async move {
                client
                    .verify(pb::VerifyRequest {
                        key,
                        required_permissions: vec![],
                    })
                    .await
                    .map(|r| r.into_inner())
            });
        }
        calls.join_all().await
    }

    /// Secrets argon2 has checked so far.
    pub fn argon2_checks(&self) -> u64 {
        self.authority.hasher().verifications()
    }

    /// Key records the store has read so far.
    pub fn key_reads(&self) -> u64 {
        self.authority.store().key_reads()
    }

    /// Stops the server (drain, last-use flush, store closed) and checks that no secret
    /// issued so far is in the logs or in this test's store. Returns the database, still alive.
    pub async fn stop(self) -> TestDb {
        let db = self.stop_only().await;
        assert_no_secret_in("the captured logs", &captured_logs());
        assert_no_secret_in("the store", &db.dump().await);
        db
    }

    /// Stops the server at once, without the leak checks (for a test that times what follows;
    /// it must end with a [`TestApp::stop`] on the same database).
    pub async fn stop_only(mut self) -> TestDb {
        if let Some(server) = self.server.take() {
            server.stop().await.expect("server stops cleanly");
        }
        let TestApp { db, .. } = self;
        db
    }
}

/// Asserts a gRPC error with this code and, when given, this ErrorInfo reason.
pub fn assert_status(
    result: Result<impl std::fmt::Debug, Status>,
    code: Code,
    reason: Option<&str>,
) -> Status {
    use tonic_types::StatusExt;
    let status = result.expect_err("expected an error status");
    assert_eq!(status.code(), code, "{status:?}");
    if let Some(reason) = reason {
        let details = status.get_error_details();
        assert_eq!(
            details.error_info().map(|i| i.reason.as_str()),
            Some(reason),
            "{status:?}"
        );
    }
    status
}

/// The field names of a status's BadRequest violations.
pub fn violated_fields(status: &Status) -> Vec<String> {
    use tonic_types::StatusExt;
    status
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default()
}

pub fn error_code(response: &pb::VerifyResponse) -> Option<&str> {
    response.error.as_ref().map(|e| e.code.as_str())
}

/// Six keys issued on a server with `options`, then verified all at once: each answer valid or
/// UNAVAILABLE (with this ErrorInfo reason when given), at least one of each.
pub async fn assert_a_cold_rush_is_refused(
    backend: Backend,
    options: Options,
    reason: Option<&str>,
) {
    let Some(app) = spawn_with(backend, options).await else {
        return;
    };
    let mut secrets = Vec::new();
    for _ in 0..6 {
        secrets.push(app.issue_test_key().await.1);
    }
    let answers = app.verify_concurrently(secrets).await;
    assert_valid_or_unavailable(answers, reason);
    app.stop().await;
}

/// Concurrent Verify answers that are each valid or UNAVAILABLE (with this ErrorInfo reason
/// when given), at least one of each: an overloaded server refuses, it never guesses.
pub fn assert_valid_or_unavailable(
    answers: Vec<Result<pb::VerifyResponse, Status>>,
    reason: Option<&str>,
) {
    let (mut valid, mut unavailable) = (0, 0);
    for answer in answers {
        match answer {
            Ok(r) => {
                assert!(r.valid, "an answer is never a guess");
                valid += 1;
            }
            Err(status) => {
                assert_status(Err::<(), _>(status), Code::Unavailable, reason);
                unavailable += 1;
            }
        }
    }
    assert!(
        valid >= 1 && unavailable >= 1,
        "valid {valid}, unavailable {unavailable}"
    );
}
