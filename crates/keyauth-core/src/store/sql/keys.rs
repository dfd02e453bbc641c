//! Changes to keys, each one transaction with its audit event (and idempotency record):
//! issue, roll, revoke, expose, update; and the batched last-use times.

use super::Change;
use super::rows::{GET_KEY, KeyRow, micros};
use crate::clock::Timestamp;
use crate::error::Error;
use crate::model::{KeyId, KeyRecord, KeyState};
use crate::store::records::{
    Changed, EventKind, Exposed, Exposure, KeyUpdate, Rolled, Successor, Updated,
};

const INSERT_KEY: &str = "INSERT INTO api_keys (id, application_id, environment, name, \
     secret_hash, redacted, restricted, permissions, metadata, create_time, expire_time, \
     revoke_time, revoke_reason, last_used_time, replaced_by_key_id, secret_check) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)";

/// Gives a key made before check values its check value, once (a check value never changes
/// but for a seal-key rotation, which rewrites it).
const SET_SECRET_CHECK: &str = "UPDATE api_keys SET secret_check = $2 WHERE id = $1";

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

/// Changes the fields an update names (`$7`‥`$10` say which), unless the key is revoked, or
/// rolled when the update sets an expiry (the expiry of a rolled key is its grace period).
const UPDATE_KEY: &str = "UPDATE api_keys SET \
     name = CASE WHEN $7 THEN $2 ELSE name END, \
     metadata = CASE WHEN $8 THEN $3 ELSE metadata END, \
     restricted = CASE WHEN $9 THEN $4 ELSE restricted END, \
     permissions = CASE WHEN $9 THEN $5 ELSE permissions END, \
     expire_time = CASE WHEN $10 THEN $6 ELSE expire_time END, \
     expiry_warned_time = CASE WHEN $10 THEN NULL ELSE expiry_warned_time END \
     WHERE id = $1 AND revoke_time IS NULL AND (NOT $10 OR replaced_by_key_id IS NULL)";

const TOUCH: &str = "UPDATE api_keys SET last_used_time = $2 \
     WHERE id = $1 AND (last_used_time IS NULL OR last_used_time < $2)";

sql_impl! { impl {
    pub(super) async fn insert_key(
        &self,
        key: &KeyRecord,
        change: Change<'_>,
    ) -> Result<(), Error> {
        let Change { who, idem, .. } = change;
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

    pub(super) async fn roll_key(
        &self,
        old: &KeyId,
        new: &Successor,
        old_expire: Timestamp,
        change: Change<'_>,
    ) -> Result<Rolled, Error> {
        let Change { now, who, idem } = change;
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

    pub(super) async fn revoke_key(
        &self,
        id: &KeyId,
        reason: Option<&str>,
        change: Change<'_>,
    ) -> Result<Option<KeyRecord>, Error> {
        let Change { now, who, idem } = change;
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

    /// Never with an idempotency record (`change.idem` is not written).
    pub(super) async fn expose_key(
        &self,
        id: &KeyId,
        reason: &str,
        exposure: Exposure<'_>,
        change: Change<'_>,
    ) -> Result<Exposed, Error> {
        let Change { now, who, .. } = change;
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

    pub(super) async fn update_key(
        &self,
        id: &KeyId,
        update: &KeyUpdate,
        change: Change<'_>,
    ) -> Result<Updated, Error> {
        let Change { now, who, idem } = change;
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

    pub(super) async fn record_last_used(&self, uses: &[(KeyId, Timestamp)]) -> Result<(), Error> {
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

    pub(super) async fn set_secret_check(&self, id: &KeyId, check: &str) -> Result<(), Error> {
        sqlx::query(SET_SECRET_CHECK)
            .bind(id.as_str())
            .bind(check)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub(super) async fn get(
        conn: &mut DB::Connection,
        id: &KeyId,
    ) -> Result<Option<KeyRecord>, Error> {
        let row: Option<KeyRow> = sqlx::query_as(GET_KEY)
            .bind(id.as_str())
            .fetch_optional(conn)
            .await?;
        row.map(KeyRecord::try_from).transpose()
    }

    /// Sets the revocation if none is set yet: whether it was set now, and the key as it
    /// stands.
    pub(super) async fn revoke(
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

    pub(super) async fn insert(conn: &mut DB::Connection, key: &KeyRecord) -> Result<(), Error> {
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
            .bind(key.secret_check.as_deref())
            .execute(conn)
            .await?;
        Ok(())
    }
}}
