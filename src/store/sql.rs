//! The SQL both backends share. The statements are portable (`$n` placeholders work in SQLite
//! and PostgreSQL alike), so one macro writes the `Store` impl for each pool type; only how a
//! write transaction begins differs (SQLite takes the write lock up front with
//! `BEGIN IMMEDIATE`, so concurrent writers queue instead of failing).

use async_trait::async_trait;
use sqlx::{PgPool, Row, SqlitePool};

use super::{CHANGE_CHANNEL, ChangeFeed, Cursor, KeyEvent, Provenance, Rolled, Store};
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
     (event, key_id, related_key_id, application_id, request_id, event_time) \
     VALUES ($1, $2, $3, $4, $5, $6)";

const TOUCH: &str = "UPDATE api_keys SET last_used_time = $2 \
     WHERE id = $1 AND (last_used_time IS NULL OR last_used_time < $2)";

const LATEST_EVENT: &str = "SELECT COALESCE(MAX(seq), 0) AS seq FROM key_events";
const EVENTS_AFTER: &str =
    "SELECT seq, key_id FROM key_events WHERE seq > $1 ORDER BY seq LIMIT $2";

const SETTING_INSERT: &str =
    "INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING";
const SETTING_GET: &str = "SELECT value FROM settings WHERE name = $1";

fn micros(t: Option<Timestamp>) -> Option<i64> {
    t.map(Timestamp::as_micros)
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
                event: &str,
                key: &KeyRecord,
                related: Option<&KeyId>,
                when: Timestamp,
                who: &Provenance,
            ) -> Result<(), Error> {
                sqlx::query(INSERT_EVENT)
                    .bind(event)
                    .bind(key.id.as_str())
                    .bind(related.map(KeyId::as_str))
                    .bind(key.application_id.as_str())
                    .bind(who.request_id.as_deref())
                    .bind(when.as_micros())
                    .execute(&mut **tx)
                    .await?;
                Ok(())
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

            async fn ping(&self) -> Result<(), Error> {
                sqlx::query("SELECT 1").execute(&self.pool).await?;
                Ok(())
            }

            async fn insert_key(&self, key: &KeyRecord, who: &Provenance) -> Result<(), Error> {
                let mut tx = self.begin_write().await?;
                Self::insert_in(&mut tx, key).await?;
                Self::event_in(&mut tx, "issued", key, None, key.create_time, who).await?;
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
                Self::event_in(&mut tx, "rolled", &previous, Some(&new.id), now, who).await?;
                tx.commit().await?;
                Ok(Rolled::Done { previous })
            }

            async fn revoke_key(
                &self,
                id: &KeyId,
                now: Timestamp,
                reason: Option<&str>,
                who: &Provenance,
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
                    Self::event_in(&mut tx, "revoked", key, None, now, who).await?;
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
                        Ok(KeyEvent {
                            seq: row.try_get("seq")?,
                            key_id: KeyId::from_store(row.try_get("key_id")?),
                        })
                    })
                    .collect()
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
