//! The SQL both backends share. The statements are portable (`$n` placeholders work in SQLite
//! and PostgreSQL alike), so one macro writes the `Store` impl for each pool type; only how a
//! write transaction begins differs (SQLite takes the write lock up front with
//! `BEGIN IMMEDIATE`, so concurrent writers queue instead of failing).

use async_trait::async_trait;
use sqlx::{PgPool, Row, SqlitePool};

use super::{
    AuditEvent, CHANGE_CHANNEL, ChangeFeed, Changed, Cursor, EventFilter, EventKind,
    IdempotencyRecord, IdempotentWrite, KeyEvent, Provenance, Rolled, Store,
};
use crate::clock::Timestamp;
use crate::error::Error;
use crate::model::{ApplicationId, Environment, KeyId, KeyRecord, Metadata, Permissions};

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

const LIST_KEYS: &str = select_keys!(
    "WHERE application_id = $1 AND (create_time < $2 OR (create_time = $2 AND id < $3)) \
     ORDER BY create_time DESC, id DESC LIMIT $4"
);

const LIST_KEYS_IN_ENV: &str = select_keys!(
    "WHERE application_id = $1 AND (create_time < $2 OR (create_time = $2 AND id < $3)) \
     AND environment = $5 ORDER BY create_time DESC, id DESC LIMIT $4"
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
     (event, key_id, related_key_id, application_id, operator, peer, request_id, event_time) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";

const EVENT_COLUMNS_BY_KEY: &str = "SELECT seq, event, key_id, related_key_id, application_id, \
     operator, peer, request_id, event_time FROM key_events \
     WHERE (key_id = $1 OR related_key_id = $1) AND seq < $2 ORDER BY seq DESC LIMIT $3";
const EVENT_COLUMNS_BY_APPLICATION: &str = "SELECT seq, event, key_id, related_key_id, \
     application_id, operator, peer, request_id, event_time FROM key_events \
     WHERE application_id = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3";

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

const LATEST_EVENT: &str = "SELECT COALESCE(MAX(seq), 0) AS seq FROM key_events";
const EVENTS_AFTER: &str =
    "SELECT seq, event, key_id FROM key_events WHERE seq > $1 ORDER BY seq LIMIT $2";

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

fn corrupt(what: &str) -> sqlx::Error {
    sqlx::Error::Decode(format!("api_keys row with an invalid {what}").into())
}

/// Writes the Store impl for one backend: `$store` wraps a `$pool`, rows are `$row`.
macro_rules! sql_store {
    ($store:ident, $pool:ty, $row:ty, $name:literal) => {
        pub struct $store {
            pool: $pool,
        }

        impl $store {
            pub fn new(pool: $pool) -> Self {
                $store { pool }
            }

            fn decode(row: &$row) -> Result<KeyRecord, sqlx::Error> {
                let environment: String = row.try_get("environment")?;
                let metadata: String = row.try_get("metadata")?;
                let permissions: String = row.try_get("permissions")?;
                let opt_time = |col: &str| -> Result<Option<Timestamp>, sqlx::Error> {
                    Ok(row
                        .try_get::<Option<i64>, _>(col)?
                        .map(Timestamp::from_micros))
                };
                Ok(KeyRecord {
                    id: KeyId::from_store(row.try_get("id")?),
                    application_id: ApplicationId::from_store(row.try_get("application_id")?),
                    environment: Environment::from_store(&environment)
                        .ok_or_else(|| corrupt("environment"))?,
                    name: row.try_get("name")?,
                    secret_hash: row.try_get("secret_hash")?,
                    redacted: row.try_get("redacted")?,
                    restricted: row.try_get("restricted")?,
                    permissions: Permissions::from_store(&permissions),
                    metadata: serde_json::from_str::<Metadata>(&metadata)
                        .map_err(|_| corrupt("metadata"))?,
                    create_time: Timestamp::from_micros(row.try_get("create_time")?),
                    expire_time: opt_time("expire_time")?,
                    revoke_time: opt_time("revoke_time")?,
                    revoke_reason: row.try_get("revoke_reason")?,
                    last_used_time: opt_time("last_used_time")?,
                    replaced_by: row
                        .try_get::<Option<String>, _>("replaced_by_key_id")?
                        .map(KeyId::from_store),
                })
            }

            async fn insert_in<'c>(
                tx: &mut sqlx::Transaction<'c, <$pool as PoolDb>::Db>,
                key: &KeyRecord,
            ) -> Result<(), Error> {
                let metadata = serde_json::to_string(&key.metadata).map_err(Error::internal)?;
                sqlx::query(INSERT_KEY)
                    .bind(key.id.as_str())
                    .bind(key.application_id.as_str())
                    .bind(key.environment.as_str())
                    .bind(&key.name)
                    .bind(&key.secret_hash)
                    .bind(&key.redacted)
                    .bind(key.restricted)
                    .bind(key.permissions.to_store())
                    .bind(metadata)
                    .bind(key.create_time.as_micros())
                    .bind(micros(key.expire_time))
                    .bind(micros(key.revoke_time))
                    .bind(key.revoke_reason.as_deref())
                    .bind(micros(key.last_used_time))
                    .bind(key.replaced_by.as_ref().map(KeyId::as_str))
                    .execute(&mut **tx)
                    .await?;
                Ok(())
            }

            async fn event_in<'c>(
                tx: &mut sqlx::Transaction<'c, <$pool as PoolDb>::Db>,
                event: EventKind,
                key: &KeyRecord,
                related: Option<&KeyId>,
                when: Timestamp,
                who: &Provenance,
            ) -> Result<(), Error> {
                sqlx::query(INSERT_EVENT)
                    .bind(event.as_str())
                    .bind(key.id.as_str())
                    .bind(related.map(KeyId::as_str))
                    .bind(key.application_id.as_str())
                    .bind(who.operator.as_deref())
                    .bind(who.peer.as_deref())
                    .bind(who.request_id.as_deref())
                    .bind(when.as_micros())
                    .execute(&mut **tx)
                    .await
                    .map_err(audit_failed)?;
                Ok(())
            }

            async fn idempotency_in<'c>(
                tx: &mut sqlx::Transaction<'c, <$pool as PoolDb>::Db>,
                write: Option<&IdempotentWrite<'_>>,
                changed: Changed<'_>,
            ) -> Result<(), Error> {
                let Some(w) = write else { return Ok(()) };
                let written = sqlx::query(INSERT_IDEMPOTENCY)
                    .bind(w.operator)
                    .bind(w.key)
                    .bind(w.fingerprint)
                    .bind((w.respond)(&changed))
                    .bind(w.sealed_secret.as_deref())
                    .bind(w.create_time.as_micros())
                    .bind(w.expire_time.as_micros())
                    .execute(&mut **tx)
                    .await
                    .map_err(idempotency_failed)?;
                if written.rows_affected() == 0 {
                    return Err(Error::IdempotencyRace);
                }
                Ok(())
            }

            fn decode_event(row: &$row) -> Result<AuditEvent, sqlx::Error> {
                let kind: String = row.try_get("event")?;
                Ok(AuditEvent {
                    seq: row.try_get("seq")?,
                    kind: EventKind::from_store(&kind).ok_or_else(|| corrupt("event"))?,
                    key_id: row
                        .try_get::<Option<String>, _>("key_id")?
                        .map(KeyId::from_store),
                    related_key_id: row
                        .try_get::<Option<String>, _>("related_key_id")?
                        .map(KeyId::from_store),
                    application_id: row.try_get("application_id")?,
                    operator: row.try_get("operator")?,
                    peer: row.try_get("peer")?,
                    request_id: row.try_get("request_id")?,
                    event_time: Timestamp::from_micros(row.try_get("event_time")?),
                })
            }

            async fn get_in<'c>(
                tx: &mut sqlx::Transaction<'c, <$pool as PoolDb>::Db>,
                id: &KeyId,
            ) -> Result<Option<KeyRecord>, Error> {
                let row = sqlx::query(GET_KEY)
                    .bind(id.as_str())
                    .fetch_optional(&mut **tx)
                    .await?;
                Ok(row.as_ref().map(Self::decode).transpose()?)
            }
        }

        #[async_trait]
        impl Store for $store {
            fn backend(&self) -> &'static str {
                $name
            }

            fn pool_stats(&self) -> Option<(u32, usize)> {
                Some((self.pool.size(), self.pool.num_idle()))
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
                let mut tx = self.begin_write().await?;
                Self::insert_in(&mut tx, key).await?;
                Self::event_in(&mut tx, EventKind::Issued, key, None, key.create_time, who).await?;
                Self::idempotency_in(&mut tx, idem, Changed::Issued(key)).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn get_key(&self, id: &KeyId) -> Result<Option<KeyRecord>, Error> {
                let row = sqlx::query(GET_KEY)
                    .bind(id.as_str())
                    .fetch_optional(&self.pool)
                    .await?;
                Ok(row.as_ref().map(Self::decode).transpose()?)
            }

            async fn roll_key(
                &self,
                old: &KeyId,
                new: &KeyRecord,
                old_expire: Timestamp,
                now: Timestamp,
                who: &Provenance,
                idem: Option<&IdempotentWrite<'_>>,
            ) -> Result<Rolled, Error> {
                let mut tx = self.begin_write().await?;
                // The new row first: the old one's replaced_by_key_id references it.
                Self::insert_in(&mut tx, new).await?;
                let claimed = sqlx::query(CLAIM_FOR_ROLL)
                    .bind(old.as_str())
                    .bind(old_expire.as_micros())
                    .bind(new.id.as_str())
                    .bind(now.as_micros())
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if claimed == 0 {
                    let current = Self::get_in(&mut tx, old).await?;
                    tx.rollback().await?;
                    return Ok(current.map_or(Rolled::NotFound, Rolled::Refused));
                }
                let previous = Self::get_in(&mut tx, old)
                    .await?
                    .ok_or_else(|| Error::internal("rolled key vanished in its transaction"))?;
                Self::event_in(
                    &mut tx,
                    EventKind::Rolled,
                    &previous,
                    Some(&new.id),
                    now,
                    who,
                )
                .await?;
                Self::idempotency_in(
                    &mut tx,
                    idem,
                    Changed::Rolled {
                        new,
                        previous: &previous,
                    },
                )
                .await?;
                tx.commit().await?;
                Ok(Rolled::Done { previous })
            }

            async fn revoke_key(
                &self,
                id: &KeyId,
                now: Timestamp,
                reason: Option<&str>,
                who: &Provenance,
                idem: Option<&IdempotentWrite<'_>>,
            ) -> Result<Option<KeyRecord>, Error> {
                let mut tx = self.begin_write().await?;
                let changed = sqlx::query(REVOKE)
                    .bind(id.as_str())
                    .bind(now.as_micros())
                    .bind(reason)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                let current = Self::get_in(&mut tx, id).await?;
                if let (1, Some(key)) = (changed, &current) {
                    Self::event_in(&mut tx, EventKind::Revoked, key, None, now, who).await?;
                }
                if let Some(key) = &current {
                    Self::idempotency_in(&mut tx, idem, Changed::Revoked(key)).await?;
                }
                tx.commit().await?;
                Ok(current)
            }

            async fn list_keys(
                &self,
                application: &ApplicationId,
                environment: Option<Environment>,
                cursor: Option<&Cursor>,
                limit: u32,
            ) -> Result<Vec<KeyRecord>, Error> {
                let (before_time, before_id) = match cursor {
                    Some(c) => (c.create_time.as_micros(), c.id.as_str()),
                    // Every id sorts below "~", every time below i64::MAX.
                    None => (i64::MAX, "~"),
                };
                let query = match environment {
                    None => sqlx::query(LIST_KEYS),
                    Some(_) => sqlx::query(LIST_KEYS_IN_ENV),
                };
                let mut query = query
                    .bind(application.as_str())
                    .bind(before_time)
                    .bind(before_id)
                    .bind(i64::from(limit));
                if let Some(env) = environment {
                    query = query.bind(env.as_str());
                }
                let rows = query.fetch_all(&self.pool).await?;
                Ok(rows.iter().map(Self::decode).collect::<Result<_, _>>()?)
            }

            async fn record_last_used(&self, uses: &[(KeyId, Timestamp)]) -> Result<(), Error> {
                if uses.is_empty() {
                    return Ok(());
                }
                let mut tx = self.begin_write().await?;
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
                sqlx::query(SETTING_INSERT)
                    .bind(name)
                    .bind(fresh)
                    .execute(&self.pool)
                    .await?;
                let row = sqlx::query(SETTING_GET)
                    .bind(name)
                    .fetch_one(&self.pool)
                    .await?;
                Ok(row.try_get("value")?)
            }

            async fn latest_event(&self) -> Result<i64, Error> {
                let row = sqlx::query(LATEST_EVENT).fetch_one(&self.pool).await?;
                Ok(row.try_get("seq")?)
            }

            async fn events_after(&self, after: i64, limit: u32) -> Result<Vec<KeyEvent>, Error> {
                let rows = sqlx::query(EVENTS_AFTER)
                    .bind(after)
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter()
                    .map(|row| {
                        let kind: String = row.try_get("event")?;
                        Ok(KeyEvent {
                            seq: row.try_get("seq")?,
                            kind: EventKind::from_store(&kind),
                            key_id: row
                                .try_get::<Option<String>, _>("key_id")?
                                .map(KeyId::from_store),
                        })
                    })
                    .collect()
            }

            async fn record_auth_failure(
                &self,
                who: &Provenance,
                at: Timestamp,
            ) -> Result<(), Error> {
                sqlx::query(INSERT_EVENT)
                    .bind(EventKind::OperatorAuthFailed.as_str())
                    .bind(None::<&str>)
                    .bind(None::<&str>)
                    .bind(None::<&str>)
                    .bind(None::<&str>)
                    .bind(who.peer.as_deref())
                    .bind(who.request_id.as_deref())
                    .bind(at.as_micros())
                    .execute(&self.pool)
                    .await
                    .map_err(audit_failed)?;
                Ok(())
            }

            async fn list_events(
                &self,
                filter: &EventFilter,
                before: i64,
                limit: u32,
            ) -> Result<Vec<AuditEvent>, Error> {
                let (query, value) = match filter {
                    EventFilter::Key(id) => (EVENT_COLUMNS_BY_KEY, id.as_str()),
                    EventFilter::Application(app) => (EVENT_COLUMNS_BY_APPLICATION, app.as_str()),
                };
                let rows = sqlx::query(query)
                    .bind(value)
                    .bind(before)
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await?;
                Ok(rows
                    .iter()
                    .map(Self::decode_event)
                    .collect::<Result<_, _>>()?)
            }

            async fn idempotency_record(
                &self,
                operator: &str,
                key: &str,
                now: Timestamp,
            ) -> Result<Option<IdempotencyRecord>, Error> {
                let row = sqlx::query(GET_IDEMPOTENCY)
                    .bind(operator)
                    .bind(key)
                    .bind(now.as_micros())
                    .fetch_optional(&self.pool)
                    .await?;
                let Some(row) = row else { return Ok(None) };
                Ok(Some(IdempotencyRecord {
                    fingerprint: row.try_get("fingerprint")?,
                    response: row.try_get("response")?,
                    sealed_secret: row.try_get("sealed_secret")?,
                    expire_time: Timestamp::from_micros(row.try_get("expire_time")?),
                }))
            }

            async fn purge_idempotency(&self, now: Timestamp) -> Result<u64, Error> {
                let done = sqlx::query(PURGE_IDEMPOTENCY)
                    .bind(now.as_micros())
                    .execute(&self.pool)
                    .await?;
                Ok(done.rows_affected())
            }

            async fn subscribe(&self) -> Result<Option<ChangeFeed>, Error> {
                self.change_feed().await
            }

            async fn close(&self) {
                self.pool.close().await;
            }
        }
    };
}

/// Names the database type of a pool, so the macro can spell transaction types.
trait PoolDb {
    type Db: sqlx::Database;
}
impl PoolDb for SqlitePool {
    type Db = sqlx::Sqlite;
}
impl PoolDb for PgPool {
    type Db = sqlx::Postgres;
}

sql_store!(SqliteStore, SqlitePool, sqlx::sqlite::SqliteRow, "sqlite");
sql_store!(PgStore, PgPool, sqlx::postgres::PgRow, "postgres");

impl SqliteStore {
    /// Takes SQLite's write lock up front: writers queue on the busy timeout instead of
    /// failing when a read lock would need upgrading.
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, Error> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }

    /// One SQLite file serves one instance: there is no one else to hear from.
    async fn change_feed(&self) -> Result<Option<ChangeFeed>, Error> {
        Ok(None)
    }
}

impl PgStore {
    async fn change_feed(&self) -> Result<Option<ChangeFeed>, Error> {
        let mut listener = sqlx::postgres::PgListener::connect_with(&self.pool).await?;
        listener.listen(CHANGE_CHANNEL).await?;
        Ok(Some(ChangeFeed { listener }))
    }

    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, Error> {
        Ok(self.pool.begin().await?)
    }
}
