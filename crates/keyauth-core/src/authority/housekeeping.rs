//! Housekeeping: last-use and refused-call flushes, retention purges, key-filter upkeep.

use super::Authority;
use std::time::Duration;

use crate::clock::Timestamp;
use crate::error::Error;
use crate::model::{Environment, KeyId};
use crate::store::Actor;

impl Authority {
    /// A key exists (made by another instance, heard from the change feed).
    pub fn note_key_exists(&self, id: &KeyId) {
        self.key_filter.insert(id);
        self.cache.forget_unknown(id);
    }

    /// Rebuilds the key filter if more keys were added than it was sized for (housekeeping).
    pub async fn maintain_key_filter(&self) -> Result<bool, Error> {
        if !self.key_filter.needs_rebuild() {
            return Ok(false);
        }
        self.rebuild_key_filter().await?;
        Ok(true)
    }

    /// Rebuilds the key filter from the store now (keys added meanwhile are kept).
    pub async fn rebuild_key_filter(&self) -> Result<(), Error> {
        self.key_filter.rebuild(self.store.as_ref()).await?;
        let (held, capacity, bytes) = self.key_filter.stats();
        tracing::info!(keys = held, capacity, bytes, "key filter rebuilt");
        Ok(())
    }

    /// Counts a refused operator call of `peer` (its IP address) in memory; written in
    /// aggregate by [`Authority::flush_auth_failures`]. Past the per-peer limit the refusal
    /// becomes [`Error::TooManyAuthFailures`] (instead of `refusal`).
    /// `Some(wait)` when `peer` is past the limit of refused operator calls: its calls are
    /// refused without their credential being compared until `wait` has passed.
    pub fn auth_blocked(&self, peer: &str) -> Option<std::time::Duration> {
        self.auth_failures.blocked(peer, self.clock.steady_now())
    }

    /// Whether refused operator calls over all peers are past the global ceiling: a refusal
    /// is then answered only after [`crate::auth_failures::GLOBAL_DELAY`].
    pub fn auth_failures_over_ceiling(&self) -> bool {
        self.auth_failures
            .over_global_ceiling(self.clock.steady_now())
    }

    pub fn note_auth_failure(
        &self,
        peer: Option<&str>,
        request_id: Option<&str>,
        refusal: Error,
    ) -> Error {
        match self.auth_failures.note(
            peer.unwrap_or("unknown"),
            request_id,
            self.now(),
            self.clock.steady_now(),
        ) {
            Some(wait) => Error::TooManyAuthFailures(wait),
            None => refusal,
        }
    }

    /// Writes the refused operator calls counted since the last flush: one row per peer
    /// (the loudest few; the rest in one row). Returns the calls written.
    pub async fn flush_auth_failures(&self) -> Result<u64, Error> {
        let rows = self.auth_failures.take(self.clock.steady_now());
        if rows.is_empty() {
            return Ok(0);
        }
        let calls = rows.iter().map(|r| r.count).sum();
        if let Err(e) = self.store.record_auth_failures(&rows).await {
            self.auth_failures.restore(rows);
            return Err(e);
        }
        Ok(calls)
    }

    /// Counts a call of `actor` refused PERMISSION_DENIED (from `peer`, with `request_id`) in
    /// memory; written in aggregate by [`Authority::flush_denials`].
    pub fn note_denial(&self, actor: &Actor, peer: Option<&str>, request_id: Option<&str>) {
        self.denials.note(actor, peer, request_id, self.now());
    }

    /// Writes the calls refused PERMISSION_DENIED counted since the last flush: one row per
    /// principal. Returns the calls written.
    pub async fn flush_denials(&self) -> Result<u64, Error> {
        let rows = self.denials.take();
        if rows.is_empty() {
            return Ok(0);
        }
        let calls = rows.iter().map(|r| r.count).sum();
        if let Err(e) = self.store.record_denials(&rows).await {
            self.denials.restore(rows);
            return Err(e);
        }
        Ok(calls)
    }

    /// Writes the verification counts made since the last flush (one row per key and hour,
    /// in one transaction); returns how many verifications were written. A failed write
    /// keeps them for the next flush.
    pub async fn write_usage_counts(&self) -> Result<u64, Error> {
        let rows = self.counts.take();
        if rows.is_empty() {
            return Ok(0);
        }
        let calls = rows.iter().map(|r| r.counts.total()).sum();
        if let Err(e) = self.store.record_usage(&rows).await {
            self.counts.restore(rows);
            return Err(e);
        }
        Ok(calls)
    }

    /// Folds hourly usage counts past the hourly retention into daily ones and deletes
    /// counts past the retention; returns the rows removed.
    pub async fn compact_usage(&self) -> Result<u64, Error> {
        let now = self.now().as_micros();
        let ago = |d: Duration| {
            Timestamp::from_micros(
                now.saturating_sub(i64::try_from(d.as_micros()).unwrap_or(i64::MAX)),
            )
        };
        let retention = self.usage_retention;
        self.store
            .compact_usage(ago(retention.hourly), ago(retention.total))
            .await
    }

    /// Writes one `expiring` event for every key that entered the `--expiry-warning` window
    /// (active, never rolled, not warned of before; of several instances, one writes each).
    /// Returns how many keys were warned of.
    pub async fn warn_expiring(&self) -> Result<usize, Error> {
        const BATCH: u32 = 1000;
        let now = self.now();
        let until = now.saturating_add(self.expiry_warning);
        let mut warned = 0;
        loop {
            let batch = self.store.warn_expiring(now, until, BATCH).await?;
            for key in &batch {
                tracing::info!(
                    key_id = %key.id,
                    application_id = key.application_id.as_str(),
                    expire_time_micros = key.expire_time.unwrap_or(now).as_micros(),
                    "key expires soon: expiring event written"
                );
            }
            warned += batch.len();
            if batch.len() < BATCH as usize {
                return Ok(warned);
            }
        }
    }

    /// How many active, never-rolled keys of each environment expire within the
    /// `--expiry-warning` window (test, live).
    pub async fn count_expiring(&self) -> Result<[(Environment, i64); 2], Error> {
        let now = self.now();
        let until = now.saturating_add(self.expiry_warning);
        let mut counts = [(Environment::Test, 0), (Environment::Live, 0)];
        for (environment, count) in &mut counts {
            *count = self.store.count_expiring(*environment, now, until).await?;
        }
        Ok(counts)
    }

    /// Deletes refused-call rows (failed authentications, denials) older than the retention.
    pub async fn purge_auth_failures(&self) -> Result<u64, Error> {
        let retention = self.auth_failures.settings().retention;
        let before = Timestamp::from_micros(
            self.now()
                .as_micros()
                .saturating_sub(i64::try_from(retention.as_micros()).unwrap_or(i64::MAX)),
        );
        self.store.purge_auth_failures(before).await
    }

    /// Deletes idempotency records past their time.
    pub async fn purge_idempotency(&self) -> Result<u64, Error> {
        self.store.purge_idempotency(self.idempotency_now()).await
    }

    /// Writes pending last-use times to the store in one batch.
    pub async fn write_last_use(&self) -> Result<usize, Error> {
        let batch = self.usage.take();
        let n = batch.len();
        if let Err(e) = self.store.record_last_used(&batch).await {
            self.usage.restore(batch);
            return Err(e);
        }
        Ok(n)
    }
}
