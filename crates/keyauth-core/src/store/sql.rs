//! The SQL both backends share, written once: [`SqlStore`] is generic over the database, and
//! the small [`Backend`] trait declares what differs (how a write transaction begins, and the
//! change feed). The statements are portable (`$n` placeholders work in SQLite and PostgreSQL
//! alike). Rows are read into `FromRow` structs and converted into the domain with `TryFrom`.

// The row types are private to this module; the impl bounds name them, which is fine here.
#![allow(private_bounds)]

use std::future::Future;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use sqlx::{
    Database, Encode, Executor, FromRow, IntoArguments, Pool, Postgres, Sqlite, Transaction, Type,
};

use super::{
    ApplicationSummary, AuditEvent, CHANGE_CHANNEL, ChangeFeed, Changed, Cursor, EventFilter,
    EventKind, EventQuery, Exposed, Exposure, IdempotencyRecord, IdempotentWrite, KeyCounts,
    KeyEvent, KeyListing, KeyUpdate, Provenance, Rolled, Store, Successor, Updated,
};
use crate::auth_failures::FailureRow;
use crate::clock::Timestamp;
use crate::error::Error;
use crate::model::{ApplicationId, Environment, KeyId, KeyRecord, KeyState, Metadata, Permissions};

macro_rules! select_keys {
    ($tail:literal) => {
        concat!(
            "SELECT id, application_id, environment, name, secret_hash, redacted, restricted, \
             permissions, metadata, create_time, expire_time, revoke_time, revoke_reason, \
             last_used_time, replaced_by_key_id FROM api_keys ",
            $tail
        )
    };
}

const INSERT_KEY: &str = "INSERT INTO api_keys (id, application_id, environment, name, \
     secret_hash, redacted, restricted, permissions, metadata, create_time, expire_time, \
     revoke_time, revoke_reason, last_used_time, replaced_by_key_id) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)";

const GET_KEY: &str = select_keys!("WHERE id = $1");
/// The key a change reads and then writes, locked until the change commits (PostgreSQL; a
/// SQLite write transaction holds the database's write lock from its start).
const GET_KEY_LOCKED: &str = select_keys!("WHERE id = $1 FOR UPDATE");

/// $5: an environment or NULL for both; $6: the states (`KeyStates::bits`: 1 active, 2
/// expired, 4 revoked; 0 every state) at $7 (now).
const LIST_KEYS: &str = select_keys!(
    "WHERE application_id = $1 AND (create_time < $2 OR (create_time = $2 AND id < $3)) \
     AND ($5 IS NULL OR environment = $5) \
     AND ($6 = 0 \
          OR ($6 & 1 <> 0 AND revoke_time IS NULL AND (expire_time IS NULL OR expire_time > $7)) \
          OR ($6 & 2 <> 0 AND revoke_time IS NULL AND expire_time <= $7) \
          OR ($6 & 4 <> 0 AND revoke_time IS NOT NULL)) \
     ORDER BY create_time DESC, id DESC LIMIT $4"
);

/// Claims the old key for a roll: only an active, never rolled key matches, so of two
/// concurrent rolls exactly one updates a row (the other's transaction is rolled back, taking
/// its new key with it).
const CLAIM_FOR_ROLL: &str = "UPDATE api_keys SET \
     expire_time = CASE WHEN expire_time IS NOT NULL AND expire_time < $2 THEN expire_time ELSE $2 END, \
     replaced_by_key_id = $3 \
     WHERE id = $1 AND replaced_by_key_id IS NULL AND revoke_time IS NULL \
     AND (expire_time IS NULL OR expire_time > $4)";

const REVOKE: &str = "UPDATE api_keys SET revoke_time = $2, revoke_reason = $3 \
     WHERE id = $1 AND revoke_time IS NULL";

const INSERT_EVENT: &str = "INSERT INTO key_events \
     (event, key_id, related_key_id, application_id, operator, peer, request_id, event_time, \
     source, url, detail) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)";

/// The start of every ListKeyEvents query; `list_events` adds the conditions its query needs
/// (placeholders only, never a value).
const SELECT_EVENTS: &str = "SELECT seq, event, key_id, related_key_id, application_id, \
     operator, peer, request_id, event_time, source, url, occurrences, detail FROM key_events \
     WHERE seq < $1";

/// Changes the fields an update names (`$7`‥`$10` say which), unless the key is revoked, or
/// rolled when the update sets an expiry (the expiry of a rolled key is its grace period).
const UPDATE_KEY: &str = "UPDATE api_keys SET \
     name = CASE WHEN $7 THEN $2 ELSE name END, \
     metadata = CASE WHEN $8 THEN $3 ELSE metadata END, \
     restricted = CASE WHEN $9 THEN $4 ELSE restricted END, \
     permissions = CASE WHEN $9 THEN $5 ELSE permissions END, \
     expire_time = CASE WHEN $10 THEN $6 ELSE expire_time END \
     WHERE id = $1 AND revoke_time IS NULL AND (NOT $10 OR replaced_by_key_id IS NULL)";

/// Key counts per application, environment and state at `$2` (as `KeyRecord::state` judges:
/// revoked wins, a key expires at its expire_time exactly), for the applications of one page.
const LIST_APPLICATIONS: &str = "SELECT application_id, environment, \
     SUM(CASE WHEN revoke_time IS NULL AND (expire_time IS NULL OR expire_time > $2) \
         THEN 1 ELSE 0 END) AS active, \
     SUM(CASE WHEN revoke_time IS NULL AND expire_time IS NOT NULL AND expire_time <= $2 \
         THEN 1 ELSE 0 END) AS expired, \
     SUM(CASE WHEN revoke_time IS NOT NULL THEN 1 ELSE 0 END) AS revoked \
     FROM api_keys WHERE application_id IN (SELECT DISTINCT application_id FROM api_keys \
         WHERE application_id > $1 ORDER BY application_id LIMIT $3) \
     GROUP BY application_id, environment ORDER BY application_id, environment";

/// Takes the (operator, key) slot unless a live record holds it: an expired record not yet
/// purged is replaced. No row written means a concurrent call with the key got there first.
const INSERT_IDEMPOTENCY: &str = "INSERT INTO idempotency_records \
     (operator, key, fingerprint, response, sealed_secret, create_time, expire_time) \
     VALUES ($1, $2, $3, $4, $5, $6, $7) \
     ON CONFLICT (operator, key) DO UPDATE SET fingerprint = excluded.fingerprint, \
     response = excluded.response, sealed_secret = excluded.sealed_secret, \
     create_time = excluded.create_time, expire_time = excluded.expire_time \
     WHERE idempotency_records.expire_time <= excluded.create_time";
const GET_IDEMPOTENCY: &str = "SELECT fingerprint, response, sealed_secret, expire_time \
     FROM idempotency_records WHERE operator = $1 AND key = $2 AND expire_time > $3";
const PURGE_IDEMPOTENCY: &str = "DELETE FROM idempotency_records WHERE expire_time <= $1";

const TOUCH: &str = "UPDATE api_keys SET last_used_time = $2 \
     WHERE id = $1 AND (last_used_time IS NULL OR last_used_time < $2)";

const INSERT_AUTH_FAILURES: &str = "INSERT INTO key_events \
     (event, peer, request_id, event_time, occurrences) VALUES ($1, $2, $3, $4, $5)";
const PURGE_AUTH_FAILURES: &str = "DELETE FROM key_events WHERE event = $1 AND event_time < $2";

const LATEST_EVENT: &str = "SELECT COALESCE(MAX(seq), 0) AS value FROM key_events";
const EVENTS_AFTER: &str = "SELECT seq, event, key_id, related_key_id FROM key_events \
     WHERE seq > $1 ORDER BY seq LIMIT $2";

const COUNT_KEYS: &str = "SELECT COUNT(*) AS value FROM api_keys";
/// Key ids in id order after `$1` (the primary key's index: no sort).
const KEY_IDS_AFTER: &str = "SELECT id AS value FROM api_keys WHERE id > $1 ORDER BY id LIMIT $2";

const SETTING_INSERT: &str =
    "INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING";
const SETTING_GET: &str = "SELECT value FROM settings WHERE name = $1";

fn micros(t: Option<Timestamp>) -> Option<i64> {
    t.map(Timestamp::as_micros)
}

/// A failed audit write stops the change: the store refused the record (UNAVAILABLE).
fn audit_failed(e: sqlx::Error) -> Error {
    Error::AuditUnavailable(e)
}

/// A concurrent call with the same idempotency key committed first.
fn idempotency_failed(e: sqlx::Error) -> Error {
    match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => Error::IdempotencyRace,
        _ => Error::Store(e),
    }
}

fn corrupt(what: &str) -> Error {
    Error::Store(sqlx::Error::Decode(
        format!("a stored row with an invalid {what}").into(),
    ))
}

/// What differs between the databases the store runs on.
pub trait Backend: Database + Sync {
    /// `sqlite` or `postgres`, for logs and metrics.
    const LABEL: &'static str;

    /// Begins a transaction that will write.
    fn begin_write(
        pool: &Pool<Self>,
    ) -> impl Future<Output = Result<Transaction<'static, Self>, sqlx::Error>> + Send;

    /// Reads a key inside a write transaction so that no other change to it commits before
    /// this transaction does.
    const GET_KEY_FOR_WRITE: &'static str;

    /// Rows a statement changed.
    fn rows_affected(result: &Self::QueryResult) -> u64;

    /// A live feed of key changes made by any instance, if the database has one.
    fn change_feed(
        pool: &Pool<Self>,
    ) -> impl Future<Output = Result<Option<ChangeFeed>, Error>> + Send;
}

impl Backend for Sqlite {
    const LABEL: &'static str = "sqlite";
    /// `BEGIN IMMEDIATE` took the write lock already.
    const GET_KEY_FOR_WRITE: &'static str = GET_KEY;

    /// Takes SQLite's write lock up front: writers queue on the busy timeout instead of
    /// failing when a read lock would need upgrading.
    async fn begin_write(pool: &Pool<Self>) -> Result<Transaction<'static, Self>, sqlx::Error> {
        pool.begin_with("BEGIN IMMEDIATE").await
    }

    fn rows_affected(result: &Self::QueryResult) -> u64 {
        result.rows_affected()
    }

    /// One SQLite file serves one instance: there is no one else to hear from.
    async fn change_feed(_: &Pool<Self>) -> Result<Option<ChangeFeed>, Error> {
        Ok(None)
    }
}

impl Backend for Postgres {
    const LABEL: &'static str = "postgres";
    const GET_KEY_FOR_WRITE: &'static str = GET_KEY_LOCKED;

    async fn begin_write(pool: &Pool<Self>) -> Result<Transaction<'static, Self>, sqlx::Error> {
        pool.begin().await
    }

    fn rows_affected(result: &Self::QueryResult) -> u64 {
        result.rows_affected()
    }

    async fn change_feed(pool: &Pool<Self>) -> Result<Option<ChangeFeed>, Error> {
        let mut listener = sqlx::postgres::PgListener::connect_with(pool).await?;
        listener.listen(CHANGE_CHANNEL).await?;
        Ok(Some(ChangeFeed { listener }))
    }
}

/// A row of `api_keys`.
#[derive(FromRow)]
struct KeyRow {
    id: String,
    application_id: String,
    environment: String,
    name: String,
    secret_hash: String,
    redacted: String,
    restricted: bool,
    permissions: String,
    metadata: String,
    create_time: i64,
    expire_time: Option<i64>,
    revoke_time: Option<i64>,
    revoke_reason: Option<String>,
    last_used_time: Option<i64>,
    replaced_by_key_id: Option<String>,
}

impl TryFrom<KeyRow> for KeyRecord {
    type Error = Error;

    fn try_from(row: KeyRow) -> Result<Self, Error> {
        let time = |t: Option<i64>| t.map(Timestamp::from_micros);
        Ok(KeyRecord {
            id: KeyId::from_store(row.id),
            application_id: ApplicationId::from_store(row.application_id),
            environment: Environment::from_store(&row.environment)
                .ok_or_else(|| corrupt("environment"))?,
            name: row.name,
            secret_hash: row.secret_hash,
            redacted: row.redacted,
            restricted: row.restricted,
            permissions: Permissions::from_store(&row.permissions),
            metadata: serde_json::from_str::<Metadata>(&row.metadata)
                .map_err(|_| corrupt("metadata"))?,
            create_time: Timestamp::from_micros(row.create_time),
            expire_time: time(row.expire_time),
            revoke_time: time(row.revoke_time),
            revoke_reason: row.revoke_reason,
            last_used_time: time(row.last_used_time),
            replaced_by: row.replaced_by_key_id.map(KeyId::from_store),
            memo: Default::default(),
        })
    }
}

/// A row of `key_events`.
#[derive(FromRow)]
struct EventRow {
    seq: i64,
    event: String,
    key_id: Option<String>,
    related_key_id: Option<String>,
    application_id: Option<String>,
    operator: Option<String>,
    peer: Option<String>,
    request_id: Option<String>,
    event_time: i64,
    source: Option<String>,
    url: Option<String>,
    occurrences: Option<i64>,
    detail: Option<String>,
}

/// A row of LIST_APPLICATIONS.
#[derive(FromRow)]
struct ApplicationRow {
    application_id: String,
    environment: String,
    active: i64,
    expired: i64,
    revoked: i64,
}

impl TryFrom<EventRow> for AuditEvent {
    type Error = Error;

    fn try_from(row: EventRow) -> Result<Self, Error> {
        Ok(AuditEvent {
            seq: row.seq,
            kind: EventKind::from_store(&row.event).ok_or_else(|| corrupt("event"))?,
            key_id: row.key_id.map(KeyId::from_store),
            related_key_id: row.related_key_id.map(KeyId::from_store),
            application_id: row.application_id,
            operator: row.operator,
            peer: row.peer,
            request_id: row.request_id,
            event_time: Timestamp::from_micros(row.event_time),
            source: row.source,
            url: row.url,
            count: row.occurrences.map_or(1, |n| u64::try_from(n).unwrap_or(0)),
            changed_paths: row
                .detail
                .as_deref()
                .filter(|d| !d.is_empty())
                .map(|d| d.split(',').map(str::to_owned).collect())
                .unwrap_or_default(),
        })
    }
}

/// The columns of `key_events` that cache invalidation reads.
#[derive(FromRow)]
struct ChangeRow {
    seq: i64,
    event: String,
    key_id: Option<String>,
    related_key_id: Option<String>,
}

impl From<ChangeRow> for KeyEvent {
    fn from(row: ChangeRow) -> Self {
        KeyEvent {
            seq: row.seq,
            kind: EventKind::from_store(&row.event),
            key_id: row.key_id.map(KeyId::from_store),
            related_key_id: row.related_key_id.map(KeyId::from_store),
        }
    }
}

/// A row of `idempotency_records`.
#[derive(FromRow)]
struct IdempotencyRow {
    fingerprint: String,
    response: Vec<u8>,
    sealed_secret: Option<String>,
    expire_time: i64,
}

impl From<IdempotencyRow> for IdempotencyRecord {
    fn from(row: IdempotencyRow) -> Self {
        IdempotencyRecord {
            fingerprint: row.fingerprint,
            response: row.response,
            sealed_secret: row.sealed_secret,
            expire_time: Timestamp::from_micros(row.expire_time),
        }
    }
}

/// A single-column row.
#[derive(FromRow)]
struct Value<T> {
    value: T,
}

/// The key store on one database: SQLite (`SqlStore<Sqlite>`) or PostgreSQL
/// (`SqlStore<Postgres>`).
pub struct SqlStore<DB: Backend> {
    pool: Pool<DB>,
    key_reads: AtomicU64,
    _db: PhantomData<fn() -> DB>,
}

impl<DB: Backend> SqlStore<DB> {
    pub fn new(pool: Pool<DB>) -> Self {
        SqlStore {
            pool,
            key_reads: AtomicU64::new(0),
            _db: PhantomData,
        }
    }
}

// The bounds below say what the shared SQL needs of a database driver (sqlx's SQLite and
// PostgreSQL drivers have it all). Rust does not infer them from `DB: Backend`, so the two impl
// blocks of `SqlStore` (the statements a change runs inside its transaction, and the `Store`
// methods) each state them.
#[async_trait]
impl<DB: Backend> Store for SqlStore<DB>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> Option<&'q str>: Encode<'q, DB> + Type<DB>,
    for<'q> &'q [u8]: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> Option<i64>: Encode<'q, DB> + Type<DB>,
    for<'q> bool: Encode<'q, DB> + Type<DB>,
    for<'r> KeyRow: FromRow<'r, DB::Row>,
    for<'r> EventRow: FromRow<'r, DB::Row>,
    for<'r> ApplicationRow: FromRow<'r, DB::Row>,
    for<'r> ChangeRow: FromRow<'r, DB::Row>,
    for<'r> IdempotencyRow: FromRow<'r, DB::Row>,
    for<'r> Value<String>: FromRow<'r, DB::Row>,
    for<'r> Value<i64>: FromRow<'r, DB::Row>,
{
    fn backend(&self) -> &'static str {
        DB::LABEL
    }

    fn pool_stats(&self) -> Option<(u32, usize)> {
        Some((self.pool.size(), self.pool.num_idle()))
    }

    fn key_reads(&self) -> u64 {
        self.key_reads.load(Ordering::Relaxed)
    }

    async fn ping(&self) -> Result<(), Error> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn insert_key(
        &self,
        key: &KeyRecord,
        who: &Provenance,
        idem: Option<&IdempotentWrite<'_>>,
    ) -> Result<(), Error> {
        let mut tx = DB::begin_write(&self.pool).await?;
        Self::insert(&mut *tx, key).await?;
        Self::event(
            &mut *tx,
            EventKind::Issued,
            key,
            None,
            key.create_time,
            who,
            None,
            None,
        )
        .await?;
        Self::remember(&mut *tx, idem, Changed::Issued(key)).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_key(&self, id: &KeyId) -> Result<Option<KeyRecord>, Error> {
        self.key_reads.fetch_add(1, Ordering::Relaxed);
        let mut conn = self.pool.acquire().await?;
        Self::get(&mut *conn, id).await
    }

    async fn roll_key(
        &self,
        old: &KeyId,
        new: &Successor,
        old_expire: Timestamp,
        now: Timestamp,
        who: &Provenance,
        idem: Option<&IdempotentWrite<'_>>,
    ) -> Result<Rolled, Error> {
        let mut tx = DB::begin_write(&self.pool).await?;
        // Read under the write lock: no change to `old` can commit between this read and the
        // claim, so the successor inherits `old` as it stands at the roll.
        let current: Option<KeyRow> = sqlx::query_as(DB::GET_KEY_FOR_WRITE)
            .bind(old.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        let Some(current) = current.map(KeyRecord::try_from).transpose()? else {
            tx.rollback().await?;
            return Ok(Rolled::NotFound);
        };
        if current.replaced_by.is_some() || current.state(now) != KeyState::Active {
            tx.rollback().await?;
            return Ok(Rolled::Refused(current));
        }
        let new = new.of(&current);
        // The new row first: the old one's replaced_by_key_id references it.
        Self::insert(&mut *tx, &new).await?;
        let claimed = sqlx::query(CLAIM_FOR_ROLL)
            .bind(old.as_str())
            .bind(old_expire.as_micros())
            .bind(new.id.as_str())
            .bind(now.as_micros())
            .execute(&mut *tx)
            .await?;
        if DB::rows_affected(&claimed) == 0 {
            tx.rollback().await?;
            return Err(Error::internal(
                "a key locked for its roll changed meanwhile",
            ));
        }
        let previous = Self::get(&mut *tx, old)
            .await?
            .ok_or_else(|| Error::internal("rolled key vanished in its transaction"))?;
        Self::event(
            &mut *tx,
            EventKind::Rolled,
            &previous,
            Some(&new.id),
            now,
            who,
            None,
            None,
        )
        .await?;
        let changed = Changed::Rolled {
            new: &new,
            previous: &previous,
        };
        Self::remember(&mut *tx, idem, changed).await?;
        tx.commit().await?;
        Ok(Rolled::Done { new, previous })
    }

    async fn revoke_key(
        &self,
        id: &KeyId,
        now: Timestamp,
        reason: Option<&str>,
        who: &Provenance,
        idem: Option<&IdempotentWrite<'_>>,
    ) -> Result<Option<KeyRecord>, Error> {
        let mut tx = DB::begin_write(&self.pool).await?;
        let (changed, current) = Self::revoke(&mut *tx, id, now, reason).await?;
        if let (true, Some(key)) = (changed, &current) {
            Self::event(
                &mut *tx,
                EventKind::Revoked,
                key,
                None,
                now,
                who,
                None,
                None,
            )
            .await?;
        }
        if let Some(key) = &current {
            Self::remember(&mut *tx, idem, Changed::Revoked(key)).await?;
        }
        tx.commit().await?;
        Ok(current)
    }

    async fn expose_key(
        &self,
        id: &KeyId,
        now: Timestamp,
        reason: &str,
        exposure: Exposure<'_>,
        who: &Provenance,
    ) -> Result<Exposed, Error> {
        let mut tx = DB::begin_write(&self.pool).await?;
        let (changed, current) = Self::revoke(&mut *tx, id, now, Some(reason)).await?;
        let Some(key) = current else {
            tx.rollback().await?;
            return Ok(Exposed::NotFound);
        };
        if !changed {
            tx.rollback().await?;
            return Ok(Exposed::AlreadyRevoked(key));
        }
        Self::event(
            &mut *tx,
            EventKind::Exposed,
            &key,
            None,
            now,
            who,
            Some(exposure),
            None,
        )
        .await?;
        tx.commit().await?;
        Ok(Exposed::Revoked(key))
    }

    async fn list_keys(
        &self,
        application: &ApplicationId,
        listing: &KeyListing,
        cursor: Option<&Cursor>,
        limit: u32,
    ) -> Result<Vec<KeyRecord>, Error> {
        let (before_time, before_id) = match cursor {
            Some(c) => (c.create_time.as_micros(), c.id.as_str()),
            // Every id sorts below "~", every time below i64::MAX.
            None => (i64::MAX, "~"),
        };
        let rows = sqlx::query_as::<_, KeyRow>(LIST_KEYS)
            .bind(application.as_str())
            .bind(before_time)
            .bind(before_id)
            .bind(i64::from(limit))
            .bind(listing.environment.map(Environment::as_str))
            .bind(listing.states.bits())
            .bind(listing.now.as_micros())
            .fetch_all(&mut *self.pool.acquire().await?)
            .await?;
        rows.into_iter().map(KeyRecord::try_from).collect()
    }

    async fn record_last_used(&self, uses: &[(KeyId, Timestamp)]) -> Result<(), Error> {
        if uses.is_empty() {
            return Ok(());
        }
        let mut tx = DB::begin_write(&self.pool).await?;
        for (id, at) in uses {
            sqlx::query(TOUCH)
                .bind(id.as_str())
                .bind(at.as_micros())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn setting_or_insert(&self, name: &str, fresh: &str) -> Result<String, Error> {
        let mut conn = self.pool.acquire().await?;
        sqlx::query(SETTING_INSERT)
            .bind(name)
            .bind(fresh)
            .execute(&mut *conn)
            .await?;
        let row: Value<String> = sqlx::query_as(SETTING_GET)
            .bind(name)
            .fetch_one(&mut *conn)
            .await?;
        Ok(row.value)
    }

    async fn latest_event(&self) -> Result<i64, Error> {
        let row: Value<i64> = sqlx::query_as(LATEST_EVENT)
            .fetch_one(&mut *self.pool.acquire().await?)
            .await?;
        Ok(row.value)
    }

    async fn count_keys(&self) -> Result<u64, Error> {
        let row: Value<i64> = sqlx::query_as(COUNT_KEYS)
            .fetch_one(&mut *self.pool.acquire().await?)
            .await?;
        Ok(u64::try_from(row.value).unwrap_or(0))
    }

    async fn key_ids(&self, after: Option<&KeyId>, limit: u32) -> Result<Vec<KeyId>, Error> {
        let rows: Vec<Value<String>> = sqlx::query_as(KEY_IDS_AFTER)
            .bind(after.map_or("", KeyId::as_str))
            .bind(i64::from(limit))
            .fetch_all(&mut *self.pool.acquire().await?)
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| KeyId::from_store(r.value))
            .collect())
    }

    async fn events_after(&self, after: i64, limit: u32) -> Result<Vec<KeyEvent>, Error> {
        let rows: Vec<ChangeRow> = sqlx::query_as(EVENTS_AFTER)
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(&mut *self.pool.acquire().await?)
            .await?;
        Ok(rows.into_iter().map(KeyEvent::from).collect())
    }

    async fn record_auth_failures(&self, rows: &[FailureRow]) -> Result<(), Error> {
        let mut tx = DB::begin_write(&self.pool).await?;
        for row in rows {
            sqlx::query(INSERT_AUTH_FAILURES)
                .bind(EventKind::OperatorAuthFailed.as_str())
                .bind(row.peer.as_str())
                .bind(row.last_request_id.as_deref())
                .bind(row.at.as_micros())
                .bind(i64::try_from(row.count).unwrap_or(i64::MAX))
                .execute(&mut *tx)
                .await
                .map_err(audit_failed)?;
        }
        tx.commit().await.map_err(audit_failed)?;
        Ok(())
    }

    async fn purge_auth_failures(&self, before: Timestamp) -> Result<u64, Error> {
        let done = sqlx::query(PURGE_AUTH_FAILURES)
            .bind(EventKind::OperatorAuthFailed.as_str())
            .bind(before.as_micros())
            .execute(&mut *self.pool.acquire().await?)
            .await?;
        Ok(DB::rows_affected(&done))
    }

    async fn list_events(
        &self,
        query: &EventQuery,
        before: i64,
        limit: u32,
    ) -> Result<Vec<AuditEvent>, Error> {
        // The statement is assembled from fixed pieces with numbered placeholders; every value
        // is bound, in the order of its placeholder.
        let mut sql = String::from(SELECT_EVENTS);
        let mut texts: Vec<&str> = Vec::new();
        let mut times = Vec::new();
        let mut next = 2;
        let mut placeholder = || {
            next += 1;
            format!("${}", next - 1)
        };
        match &query.filter {
            EventFilter::Key(id) => {
                let p = placeholder();
                sql.push_str(&format!(" AND (key_id = {p} OR related_key_id = {p})"));
                texts.push(id.as_str());
            }
            EventFilter::Application(app) => {
                sql.push_str(&format!(" AND application_id = {}", placeholder()));
                texts.push(app.as_str());
            }
            EventFilter::All => {}
        }
        if !query.kinds.is_empty() {
            let list: Vec<String> = query.kinds.iter().map(|_| placeholder()).collect();
            sql.push_str(&format!(" AND event IN ({})", list.join(", ")));
            texts.extend(query.kinds.iter().map(|k| k.as_str()));
        }
        if let Some(start) = query.start {
            sql.push_str(&format!(" AND event_time >= {}", placeholder()));
            times.push(start.as_micros());
        }
        if let Some(end) = query.end {
            sql.push_str(&format!(" AND event_time < {}", placeholder()));
            times.push(end.as_micros());
        }
        sql.push_str(&format!(" ORDER BY seq DESC LIMIT {}", placeholder()));
        let mut statement = sqlx::query_as::<_, EventRow>(sqlx::AssertSqlSafe(sql)).bind(before);
        for text in texts {
            statement = statement.bind(text);
        }
        for time in times {
            statement = statement.bind(time);
        }
        let rows = statement
            .bind(i64::from(limit))
            .fetch_all(&mut *self.pool.acquire().await?)
            .await?;
        rows.into_iter().map(AuditEvent::try_from).collect()
    }

    async fn update_key(
        &self,
        id: &KeyId,
        update: &KeyUpdate,
        now: Timestamp,
        who: &Provenance,
        idem: Option<&IdempotentWrite<'_>>,
    ) -> Result<Updated, Error> {
        let metadata = update
            .metadata
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .map_err(Error::internal)?;
        let permissions = update.permissions.as_ref().map(|p| p.to_store());
        let mut tx = DB::begin_write(&self.pool).await?;
        let done = sqlx::query(UPDATE_KEY)
            .bind(id.as_str())
            .bind(update.name.as_deref().unwrap_or(""))
            .bind(metadata.as_deref().unwrap_or("{}"))
            .bind(update.permissions.as_ref().is_some_and(|p| !p.is_empty()))
            .bind(permissions.as_deref().unwrap_or(""))
            .bind(micros(update.expire_time.flatten()))
            .bind(update.name.is_some())
            .bind(update.metadata.is_some())
            .bind(update.permissions.is_some())
            .bind(update.expire_time.is_some())
            .execute(&mut *tx)
            .await?;
        let current = Self::get(&mut *tx, id).await?;
        let Some(key) = current else {
            tx.rollback().await?;
            return Ok(Updated::NotFound);
        };
        if DB::rows_affected(&done) == 0 {
            tx.rollback().await?;
            return Ok(Updated::Refused(key));
        }
        let detail = update.paths().join(",");
        Self::event(
            &mut *tx,
            EventKind::Updated,
            &key,
            None,
            now,
            who,
            None,
            Some(&detail),
        )
        .await?;
        Self::remember(&mut *tx, idem, Changed::Updated(&key)).await?;
        tx.commit().await?;
        Ok(Updated::Done(key))
    }

    async fn list_applications(
        &self,
        after: Option<&ApplicationId>,
        limit: u32,
        now: Timestamp,
    ) -> Result<Vec<ApplicationSummary>, Error> {
        let rows: Vec<ApplicationRow> = sqlx::query_as(LIST_APPLICATIONS)
            .bind(after.map_or("", ApplicationId::as_str))
            .bind(now.as_micros())
            .bind(i64::from(limit))
            .fetch_all(&mut *self.pool.acquire().await?)
            .await?;
        let mut out: Vec<ApplicationSummary> = Vec::new();
        for row in rows {
            if out
                .last()
                .is_none_or(|a| a.application_id.as_str() != row.application_id)
            {
                out.push(ApplicationSummary {
                    application_id: ApplicationId::from_store(row.application_id.clone()),
                    test: KeyCounts::default(),
                    live: KeyCounts::default(),
                });
            }
            let count = |n: i64| u64::try_from(n).unwrap_or(0);
            let counts = KeyCounts {
                active: count(row.active),
                expired: count(row.expired),
                revoked: count(row.revoked),
            };
            let summary = out.last_mut().expect("pushed above");
            match Environment::from_store(&row.environment).ok_or_else(|| corrupt("environment"))? {
                Environment::Test => summary.test = counts,
                Environment::Live => summary.live = counts,
            }
        }
        Ok(out)
    }

    async fn idempotency_record(
        &self,
        operator: &str,
        key: &str,
        now: Timestamp,
    ) -> Result<Option<IdempotencyRecord>, Error> {
        let row: Option<IdempotencyRow> = sqlx::query_as(GET_IDEMPOTENCY)
            .bind(operator)
            .bind(key)
            .bind(now.as_micros())
            .fetch_optional(&mut *self.pool.acquire().await?)
            .await?;
        Ok(row.map(IdempotencyRecord::from))
    }

    async fn purge_idempotency(&self, now: Timestamp) -> Result<u64, Error> {
        let done = sqlx::query(PURGE_IDEMPOTENCY)
            .bind(now.as_micros())
            .execute(&mut *self.pool.acquire().await?)
            .await?;
        Ok(DB::rows_affected(&done))
    }

    async fn subscribe(&self) -> Result<Option<ChangeFeed>, Error> {
        DB::change_feed(&self.pool).await
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}

/// The statements a change runs inside its transaction; each takes the transaction's
/// connection (`&mut *tx`).
impl<DB: Backend> SqlStore<DB>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> Option<&'q str>: Encode<'q, DB> + Type<DB>,
    for<'q> &'q [u8]: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> Option<i64>: Encode<'q, DB> + Type<DB>,
    for<'q> bool: Encode<'q, DB> + Type<DB>,
    for<'r> KeyRow: FromRow<'r, DB::Row>,
    for<'r> EventRow: FromRow<'r, DB::Row>,
    for<'r> ApplicationRow: FromRow<'r, DB::Row>,
    for<'r> ChangeRow: FromRow<'r, DB::Row>,
    for<'r> IdempotencyRow: FromRow<'r, DB::Row>,
    for<'r> Value<String>: FromRow<'r, DB::Row>,
    for<'r> Value<i64>: FromRow<'r, DB::Row>,
{
    async fn get(conn: &mut DB::Connection, id: &KeyId) -> Result<Option<KeyRecord>, Error> {
        let row: Option<KeyRow> = sqlx::query_as(GET_KEY)
            .bind(id.as_str())
            .fetch_optional(conn)
            .await?;
        row.map(KeyRecord::try_from).transpose()
    }

    /// Sets the revocation if none is set yet: whether it was set now, and the key as it
    /// stands.
    async fn revoke(
        conn: &mut DB::Connection,
        id: &KeyId,
        now: Timestamp,
        reason: Option<&str>,
    ) -> Result<(bool, Option<KeyRecord>), Error> {
        let revoked = sqlx::query(REVOKE)
            .bind(id.as_str())
            .bind(now.as_micros())
            .bind(reason)
            .execute(&mut *conn)
            .await?;
        let current = Self::get(conn, id).await?;
        Ok((DB::rows_affected(&revoked) == 1, current))
    }

    async fn insert(conn: &mut DB::Connection, key: &KeyRecord) -> Result<(), Error> {
        let metadata = serde_json::to_string(&key.metadata).map_err(Error::internal)?;
        let permissions = key.permissions.to_store();
        sqlx::query(INSERT_KEY)
            .bind(key.id.as_str())
            .bind(key.application_id.as_str())
            .bind(key.environment.as_str())
            .bind(key.name.as_str())
            .bind(key.secret_hash.as_str())
            .bind(key.redacted.as_str())
            .bind(key.restricted)
            .bind(permissions.as_str())
            .bind(metadata.as_str())
            .bind(key.create_time.as_micros())
            .bind(micros(key.expire_time))
            .bind(micros(key.revoke_time))
            .bind(key.revoke_reason.as_deref())
            .bind(micros(key.last_used_time))
            .bind(key.replaced_by.as_ref().map(KeyId::as_str))
            .execute(conn)
            .await?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn event(
        conn: &mut DB::Connection,
        kind: EventKind,
        key: &KeyRecord,
        related: Option<&KeyId>,
        when: Timestamp,
        who: &Provenance,
        exposure: Option<Exposure<'_>>,
        detail: Option<&str>,
    ) -> Result<(), Error> {
        sqlx::query(INSERT_EVENT)
            .bind(kind.as_str())
            .bind(key.id.as_str())
            .bind(related.map(KeyId::as_str))
            .bind(key.application_id.as_str())
            .bind(who.operator.as_deref())
            .bind(who.peer.as_deref())
            .bind(who.request_id.as_deref())
            .bind(when.as_micros())
            .bind(exposure.map(|e| e.source))
            .bind(exposure.map(|e| e.url))
            .bind(detail)
            .execute(conn)
            .await
            .map_err(audit_failed)?;
        Ok(())
    }

    /// Writes the idempotency record of a change, if the call had a key.
    async fn remember(
        conn: &mut DB::Connection,
        write: Option<&IdempotentWrite<'_>>,
        changed: Changed<'_>,
    ) -> Result<(), Error> {
        let Some(w) = write else { return Ok(()) };
        let response = (w.respond)(&changed);
        let written = sqlx::query(INSERT_IDEMPOTENCY)
            .bind(w.operator)
            .bind(w.key)
            .bind(w.fingerprint)
            .bind(response.as_slice())
            .bind(w.sealed_secret.as_deref())
            .bind(w.create_time.as_micros())
            .bind(w.expire_time.as_micros())
            .execute(conn)
            .await
            .map_err(idempotency_failed)?;
        if DB::rows_affected(&written) == 0 {
            return Err(Error::IdempotencyRace);
        }
        Ok(())
    }
}
