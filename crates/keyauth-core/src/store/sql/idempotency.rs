//! Idempotency records: written in the transaction of the change they answer for, read for a
//! replay, purged once expired.

use super::rows::IdempotencyRow;
use crate::clock::Timestamp;
use crate::error::Error;
use crate::store::records::{Changed, IdempotencyRecord, IdempotentWrite};

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

/// A concurrent call with the same idempotency key committed first.
fn idempotency_failed(e: sqlx::Error) -> Error {
    match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => Error::IdempotencyRace,
        _ => Error::Store(e),
    }
}

sql_impl! { impl {
    /// Writes the idempotency record of a change, if the call had a key.
    pub(super) async fn remember(
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

    pub(super) async fn idempotency_record(
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

    pub(super) async fn purge_idempotency(&self, now: Timestamp) -> Result<u64, Error> {
        let done = sqlx::query(PURGE_IDEMPOTENCY)
            .bind(now.as_micros())
            .execute(&mut *self.pool.acquire().await?)
            .await?;
        Ok(DB::rows_affected(&done))
    }
}}
