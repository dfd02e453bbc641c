//! Test support (feature `test-util`, and this crate's own unit tests): records, times, and an
//! [`Authority`](crate::Authority) on a fresh store with a manual clock.

use std::sync::Arc;

use crate::Authority;
use crate::authority::{DEFAULT_IDEMPOTENCY_TTL, NewKey};
use crate::cache::CacheSettings;
use crate::catalog::Catalog;
use crate::check_value::CheckKeys;
use crate::clock::{Clock, Timestamp};
use crate::error::Error;
use crate::hashing::{HashParams, Hasher};
use crate::key::PresentedKey;
use crate::model::{ApplicationId, Environment, Metadata, Permissions};
use crate::sealing::{SealKey, Sealer};
use crate::store::{self, Actor, Provenance, Store, StoreOptions};

pub mod records;

pub use records::{blank_record, scope, secs};

/// The store a test runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreKind {
    Sqlite,
    Postgres,
}

/// Writes each test `async fn name(kind: StoreKind)` as one `#[tokio::test]` per store:
/// `name::sqlite` and `name::postgres`.
#[macro_export]
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                $crate::on_both_stores!(@on $name, sqlite, Sqlite);
                $crate::on_both_stores!(@on $name, postgres, Postgres);
            }
        )*
    };
    (@on $name:ident, $test:ident, $kind:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $test() {
            super::$name($crate::testing::StoreKind::$kind).await
        }
    };
}

/// A database made for one test and dropped after it: a SQLite file in a directory of its
/// own, or a PostgreSQL database made on the server of `KEYAUTH_TEST_DATABASE_URL`.
pub enum TestDb {
    Sqlite { dir: std::path::PathBuf },
    Postgres { server_url: String, name: String },
}

impl TestDb {
    /// A fresh database; `None` (after saying so) when PostgreSQL is asked for but not
    /// configured, which fails the test under CI instead (`CI` set).
    pub async fn create(kind: StoreKind) -> Option<TestDb> {
        let unique = crate::key::random_base62(12)
            .expect("random name")
            .to_lowercase();
        match kind {
            StoreKind::Sqlite => {
                let dir = std::env::temp_dir().join(format!("keyauth-core-test-{unique}"));
                std::fs::create_dir_all(&dir).expect("temp dir");
                Some(TestDb::Sqlite { dir })
            }
            StoreKind::Postgres => {
                let server_url = postgres_server_url()?;
                let name = format!("keyauth_core_test_{unique}");
                on_server(&server_url, format!("CREATE DATABASE {name}"))
                    .await
                    .expect("create test database");
                Some(TestDb::Postgres { server_url, name })
            }
        }
    }

    pub fn url(&self) -> String {
        match self {
            TestDb::Sqlite { dir } => format!("sqlite://{}", dir.join("keyauth.db").display()),
            TestDb::Postgres { server_url, name } => database_url(server_url, name),
        }
    }

    /// Everything the store holds, as text: the SQLite files (database and write-ahead log),
    /// or every row of every table of the PostgreSQL database.
    pub async fn dump(&self) -> String {
        use sqlx::Connection;
        match self {
            TestDb::Sqlite { dir } => ["keyauth.db", "keyauth.db-wal"]
                .iter()
                .map(|f| {
                    String::from_utf8_lossy(&std::fs::read(dir.join(f)).unwrap_or_default())
                        .into_owned()
                })
                .collect(),
            TestDb::Postgres { .. } => {
                let mut conn = sqlx::PgConnection::connect(&self.url())
                    .await
                    .expect("connect");
                let tables: Vec<String> = sqlx::query_scalar(
                    "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public'",
                )
                .fetch_all(&mut conn)
                .await
                .expect("tables");
                let mut out = String::new();
                for table in tables {
                    let rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                        "SELECT t::text FROM {table} t"
                    )))
                    .fetch_all(&mut conn)
                    .await
                    .expect("rows");
                    out.push_str(&rows.join("\n"));
                }
                out
            }
        }
    }

    /// The store on this database, migrated.
    pub async fn store(&self) -> Arc<dyn Store> {
        store::connect(&self.url(), &StoreOptions::default())
            .await
            .expect("open test store")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        match self {
            TestDb::Sqlite { dir } => {
                let _ = std::fs::remove_dir_all(dir);
            }
            TestDb::Postgres { server_url, name } => drop_database(server_url, name),
        }
    }
}

/// Drops database `name` (its connections cut). Dropping needs async I/O and may be called
/// inside a runtime, so it runs on a thread with a runtime of its own.
fn drop_database(server_url: &str, name: &str) {
    let statement = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            if let Err(e) = runtime.block_on(on_server(server_url, statement)) {
                eprintln!("test database {name} was not dropped: {e}");
            }
        });
    });
}

/// The server tests make their PostgreSQL databases on (`KEYAUTH_TEST_DATABASE_URL`). Without
/// one, a test says visibly that it skipped; under CI (`CI` set) its absence fails the test,
/// so that a green CI run has run against PostgreSQL.
pub fn postgres_server_url() -> Option<String> {
    if let Ok(url) = std::env::var("KEYAUTH_TEST_DATABASE_URL") {
        return Some(url);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI is set but KEYAUTH_TEST_DATABASE_URL is not: PostgreSQL may not be skipped in CI"
    );
    eprintln!("skipped: the PostgreSQL run of this test (KEYAUTH_TEST_DATABASE_URL is unset)");
    None
}

/// Runs `statement` (creating or dropping a database) on the server of `server_url`.
async fn on_server(server_url: &str, statement: String) -> Result<(), sqlx::Error> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(server_url).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
        .execute(&mut conn)
        .await?;
    Ok(())
}

/// `server_url` (`postgres://user@host:port[/database][?query]`) naming database `name`.
fn database_url(server_url: &str, name: &str) -> String {
    let (base, query) = server_url
        .split_once('?')
        .map_or((server_url, None), |(b, q)| (b, Some(q)));
    let host_start = base.find("://").map_or(0, |i| i + 3);
    let server = match base[host_start..].find('/') {
        Some(i) => &base[..host_start + i],
        None => base,
    };
    match query {
        Some(q) => format!("{server}/{name}?{q}"),
        None => format!("{server}/{name}"),
    }
}

/// When a test authority's manual clock starts (2023-11-14).
pub const START: Timestamp = Timestamp::from_micros(1_700_000_000_000_000);

/// An [`Authority`] on a fresh store with a manual clock (starting at [`START`]), the built-in
/// catalog, cheap argon2 and idempotent replay of secrets; dereferences to the authority.
pub struct TestAuthority {
    pub authority: Arc<Authority>,
    pub clock: Clock,
    pub store: Arc<dyn Store>,
    // Last: the database outlives the authority's connections to it.
    pub db: TestDb,
}

impl std::ops::Deref for TestAuthority {
    type Target = Authority;

    fn deref(&self) -> &Authority {
        &self.authority
    }
}

/// argon2id at its cheapest: tests prove keys in microseconds.
pub const CHEAP_HASH: HashParams = HashParams {
    m_cost: 8,
    t_cost: 1,
    p_cost: 1,
};

/// A test authority on `kind` with the default cache; `None` where [`TestDb::create`] says.
pub async fn authority(kind: StoreKind) -> Option<TestAuthority> {
    authority_with(kind, CacheSettings::default()).await
}

/// A test authority on `kind` with these cache settings.
pub async fn authority_with(kind: StoreKind, cache: CacheSettings) -> Option<TestAuthority> {
    let db = TestDb::create(kind).await?;
    let store = db.store().await;
    let clock = Clock::manual(START);
    let authority = assemble(store.clone(), clock.clone(), cache).await;
    Some(TestAuthority {
        authority: Arc::new(authority),
        clock,
        store,
        db,
    })
}

/// The tests' authority over `store`: cheap argon2, the built-in catalog, a seal key.
async fn assemble(store: Arc<dyn Store>, clock: Clock, cache: CacheSettings) -> Authority {
    let hasher = Hasher::new(CHEAP_HASH, 2, 64).expect("argon2 parameters");
    let seal = SealKey::parse(&"5e".repeat(32)).expect("seal key");
    Authority::new(store, hasher, Catalog::built_in(), clock, cache)
        .await
        .expect("authority")
        .with_idempotency(Sealer::new(Some(&seal)), DEFAULT_IDEMPOTENCY_TTL)
        .with_check_keys(CheckKeys::new(Some(&seal), None))
}

impl TestAuthority {
    /// A restart: a new authority (empty caches, the key filter read again) over the same
    /// store and clock.
    pub async fn restart(&mut self) {
        self.authority = Arc::new(
            assemble(
                self.store.clone(),
                self.clock.clone(),
                CacheSettings::default(),
            )
            .await,
        );
    }
}

/// Who the tests' changes are made by.
pub fn who() -> Provenance {
    Provenance {
        request_id: Some("req-test".into()),
        operator: Some("op-test".into()),
        peer: Some("127.0.0.1".into()),
        actor: Some(actor()),
    }
}

/// The principal the tests' changes are made by (a JWT's).
pub fn actor() -> Actor {
    Actor {
        name: "ops@example.com".into(),
        subject: "user-1234".into(),
        issuer: "https://idp.example.com".into(),
    }
}

/// An IssueKey request for a standard test key of `app` that never expires.
pub fn new_key(app: &str) -> NewKey {
    NewKey {
        application_id: ApplicationId::parse(app, "application_id").expect("application id"),
        environment: Environment::Test,
        name: "test key".into(),
        permissions: Permissions::default(),
        expire_time: None,
        metadata: Metadata::new(),
    }
}

/// The reason a change was refused for (its `FailedPrecondition`); panics on anything else.
pub fn refusal<T>(result: Result<T, Error>) -> &'static str {
    match result {
        Err(Error::FailedPrecondition { reason, .. }) => reason,
        Err(other) => panic!("expected a refusal, got {other:?}"),
        Ok(_) => panic!("expected a refusal, got a success"),
    }
}

/// `key` with another secret: well-formed (a valid checksum), its id, not its secret.
pub fn wrong_secret(key: &PresentedKey) -> String {
    PresentedKey::from_parts(key.environment(), key.lookup(), &"W".repeat(32))
        .expect("a well-formed key")
        .expose()
        .to_owned()
}
