//! Expiry warnings (`--expiry-warning`): the keys entering the window get one `expiring`
//! event each, however many instances sweep at once; and how many keys are in the window.

use super::rows::{KeyRow, Value, select_keys};
use crate::clock::Timestamp;
use crate::error::Error;
use crate::model::{Environment, KeyRecord};
use crate::store::records::{EventKind, Provenance};

/// Keys that expire within ($1, $2], not warned of yet: active and never rolled (a rolled
/// key's expiry is the end of its grace period, which its roll chose).
const WINDOW: &str = "revoke_time IS NULL AND replaced_by_key_id IS NULL \
     AND expire_time > $1 AND expire_time <= $2";

/// Claims the warning of one key: of two instances, one updates the row (the other waits for
/// its row lock, then finds it warned).
const CLAIM_WARNING: &str = "UPDATE api_keys SET expiry_warned_time = $2 \
     WHERE id = $1 AND expiry_warned_time IS NULL AND revoke_time IS NULL \
     AND replaced_by_key_id IS NULL";

sql_impl! { impl {
    pub(super) async fn warn_expiring(
        &self,
        now: Timestamp,
        until: Timestamp,
        limit: u32,
    ) -> Result<Vec<KeyRecord>, Error> {
        let unwarned = format!(
            "{} WHERE {WINDOW} AND expiry_warned_time IS NULL ORDER BY expire_time LIMIT $3",
            select_keys!("")
        );
        let candidates: Vec<KeyRow> = sqlx::query_as(sqlx::AssertSqlSafe(unwarned))
            .bind(now.as_micros())
            .bind(until.as_micros())
            .bind(i64::from(limit))
            .fetch_all(&mut *self.pool.acquire().await?)
            .await?;
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        let mut warned = Vec::with_capacity(candidates.len());
        let mut tx = DB::begin_write(&self.pool).await?;
        for row in candidates {
            let key = KeyRecord::try_from(row)?;
            let claimed = sqlx::query(CLAIM_WARNING)
                .bind(key.id.as_str())
                .bind(now.as_micros())
                .execute(&mut *tx)
                .await?;
            if DB::rows_affected(&claimed) == 1 {
                Self::event(
                    &mut *tx,
                    EventKind::Expiring,
                    &key,
                    None,
                    now,
                    &Provenance::default(),
                    None,
                    None,
                )
                .await?;
                warned.push(key);
            }
        }
        tx.commit().await?;
        Ok(warned)
    }

    pub(super) async fn count_expiring(
        &self,
        environment: Environment,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<i64, Error> {
        let sql = format!(
            "SELECT COUNT(*) AS value FROM api_keys WHERE {WINDOW} AND environment = $3"
        );
        let row: Value<i64> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(now.as_micros())
            .bind(until.as_micros())
            .bind(environment.as_str())
            .fetch_one(&mut *self.pool.acquire().await?)
            .await?;
        Ok(row.value)
    }
}}
