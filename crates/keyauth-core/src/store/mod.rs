//! The key store: one trait, two backends (SQLite for one instance, PostgreSQL for several).
//!
//! Every change (issue, roll, revoke) is one transaction that also appends to `key_events`.
//! One generic implementation serves both databases (`sql/`).
//! The store knows records and SQL; it never sees wire types and never sees a secret.
//!
//! Modules read in one direction: `records` → `feed` → `api` (the `Store` trait) → `sql`;
//! this file re-exports them and opens a store ([`connect`]).

mod api;
mod feed;
mod records;
mod sql;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use crate::error::Error;

pub use api::Store;
pub use feed::{CHANGE_CHANNEL, ChangeFeed, KeyEvent};
pub use records::{
    Actor, ApplicationSummary, AuditEvent, Changed, Cursor, EventFilter, EventKind, EventKinds,
    EventQuery, Exposed, Exposure, Granularity, IdempotencyRecord, IdempotentWrite, KeyCounts,
    KeyFilters, KeyListing, KeyUpdate, Provenance, Rolled, Successor, Updated, UsageOf, UsageQuery,
};
pub use sql::{Backend, SqlStore};

/// Store connection settings.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    pub max_connections: u32,
    /// How long a call waits for a connection before the store counts as unreachable.
    pub acquire_timeout: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            max_connections: 10,
            acquire_timeout: Duration::from_secs(3),
        }
    }
}

/// Opens the store named by `url` (`sqlite://…` or `postgres://…`) and runs its migrations.
/// A SQLite store holds the keys' hashes, the sealed secrets of idempotent replay and the page
/// tokens' key: its files (the database, and the `-wal` and `-shm` files SQLite makes with the
/// database's own mode) are readable and writable by their owner only. A new database is
/// created so; an existing one, and its `-wal` and `-shm`, are set so.
fn owner_only(path: &std::path::Path) -> Result<(), Error> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let name = path.to_string_lossy();
        if name.is_empty() || name == ":memory:" {
            return Ok(());
        }
        let denied = |e: std::io::Error| {
            Error::internal(format!(
                "making {} readable by its owner only: {e}",
                path.display()
            ))
        };
        if !path.exists() {
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(path)
                .map_err(denied)?;
        }
        for suffix in ["", "-wal", "-shm"] {
            let file = std::path::PathBuf::from(format!("{name}{suffix}"));
            if file.exists() {
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
                    .map_err(denied)?;
            }
        }
    }
    Ok(())
}

pub async fn connect(url: &str, options: &StoreOptions) -> Result<Arc<dyn Store>, Error> {
    if url.starts_with("sqlite:") {
        let connect = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        owner_only(connect.get_filename())?;
        let pool = SqlitePoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect)
            .await?;
        sqlx::migrate!("migrations/sqlite")
            .run(&pool)
            .await
            .map_err(|e| Error::internal(format!("migrating the SQLite store: {e}")))?;
        Ok(Arc::new(SqlStore::<sqlx::Sqlite>::new(pool)))
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.acquire_timeout)
            .connect(url)
            .await?;
        sqlx::migrate!("migrations/postgres")
            .run(&pool)
            .await
            .map_err(|e| Error::internal(format!("migrating the PostgreSQL store: {e}")))?;
        Ok(Arc::new(SqlStore::<sqlx::Postgres>::new(pool)))
    } else {
        Err(Error::invalid(
            "database",
            "must start with sqlite:// or postgres://",
        ))
    }
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[tokio::test]
    async fn sqlite_files_are_the_owners_only() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("keys.db");
        let mode = |suffix: &str| {
            let file = format!("{}{suffix}", db.display());
            std::fs::metadata(file).unwrap().permissions().mode() & 0o777
        };
        let url = format!("sqlite://{}", db.display());
        let store = connect(&url, &StoreOptions::default()).await.unwrap();
        store.setting_or_insert("probe", "value").await.unwrap();
        for suffix in ["", "-wal", "-shm"] {
            assert_eq!(mode(suffix), 0o600, "keys.db{suffix}");
        }
        drop(store);
        // A database made before (0644) is set to the owner's only at the next start.
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
        let _store = connect(&url, &StoreOptions::default()).await.unwrap();
        assert_eq!(mode(""), 0o600);
    }
}
