//! The `Store` trait: every read and change the authority asks of a store.

use async_trait::async_trait;
use keyauth_contract::principal::Scope;

use super::feed::{ChangeFeed, KeyEvent};
use super::records::{
    ApplicationSummary, AuditEvent, Cursor, EventQuery, Exposed, Exposure, IdempotencyRecord,
    IdempotentWrite, KeyListing, KeyUpdate, Provenance, Rolled, Successor, Updated, UsageQuery,
};
use crate::auth_failures::FailureRow;
use crate::clock::Timestamp;
use crate::denials::DenialRow;
use crate::error::Error;
use crate::model::{ApplicationId, Environment, KeyId, KeyRecord};
use crate::usage_counts::{Counts, UsageRow};

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// `sqlite` or `postgres`.
    fn backend(&self) -> &'static str;

    /// Connections of the pool: (open, of which idle), for metrics; `None` if unknown.
    fn pool_stats(&self) -> Option<(u32, usize)> {
        None
    }

    /// Key records read so far (`get_key` calls): what the cold path costs the store.
    fn key_reads(&self) -> u64;

    /// A cheap round trip, for health.
    async fn ping(&self) -> Result<(), Error>;

    async fn insert_key(
        &self,
        key: &KeyRecord,
        who: &Provenance,
        idem: Option<&IdempotentWrite<'_>>,
    ) -> Result<(), Error>;

    async fn get_key(&self, id: &KeyId) -> Result<Option<KeyRecord>, Error>;

    /// In one transaction: reads `old` as it stands under the transaction's write lock; if it
    /// is active and not yet rolled at `now`, inserts its successor (`new`, completed from
    /// `old` as read there: see [`Successor::of`]), sets `old`'s expiry to
    /// `min(expire_time, old_expire)` and its replacement. A change committed before the roll's
    /// transaction is carried over to the successor; one committed after it applies to `old`.
    async fn roll_key(
        &self,
        old: &KeyId,
        new: &Successor,
        old_expire: Timestamp,
        now: Timestamp,
        who: &Provenance,
        idem: Option<&IdempotentWrite<'_>>,
    ) -> Result<Rolled, Error>;

    /// Sets the revocation if none is set yet; returns the key as it now stands.
    async fn revoke_key(
        &self,
        id: &KeyId,
        now: Timestamp,
        reason: Option<&str>,
        who: &Provenance,
        idem: Option<&IdempotentWrite<'_>>,
    ) -> Result<Option<KeyRecord>, Error>;

    /// In one transaction: revokes the key if it is not revoked yet, with an `exposed` event
    /// carrying where it was found (revoke reason `reason`); an already revoked key is left as
    /// it is, without an event.
    async fn expose_key(
        &self,
        id: &KeyId,
        now: Timestamp,
        reason: &str,
        exposure: Exposure<'_>,
        who: &Provenance,
    ) -> Result<Exposed, Error>;

    /// In one transaction: applies `update` unless the key is revoked (or, when the update sets
    /// an expiry, rolled), with an `updated` event naming the changed paths.
    async fn update_key(
        &self,
        id: &KeyId,
        update: &KeyUpdate,
        now: Timestamp,
        who: &Provenance,
        idem: Option<&IdempotentWrite<'_>>,
    ) -> Result<Updated, Error>;

    /// Applications that have keys in `scope`, by id, after `after`, at most `limit`, with
    /// their key counts per environment (of `scope`'s) and state at `now`.
    async fn list_applications(
        &self,
        after: Option<&ApplicationId>,
        limit: u32,
        now: Timestamp,
        scope: &Scope,
    ) -> Result<Vec<ApplicationSummary>, Error>;

    /// Keys of an application, newest first, after `cursor`; only those of `environment` (if
    /// given) and in `states` at `now`.
    async fn list_keys(
        &self,
        application: &ApplicationId,
        listing: &KeyListing,
        cursor: Option<&Cursor>,
        limit: u32,
    ) -> Result<Vec<KeyRecord>, Error>;

    /// Records last-use times in one batch; a time never moves backwards.
    async fn record_last_used(&self, uses: &[(KeyId, Timestamp)]) -> Result<(), Error>;

    /// Sets a key's check value (a key made before check values, once proven).
    async fn set_secret_check(&self, id: &KeyId, check: &str) -> Result<(), Error>;

    /// Returns the setting `name`, storing `fresh` first if it has none (first start wins).
    async fn setting_or_insert(&self, name: &str, fresh: &str) -> Result<String, Error>;

    /// Records refused operator calls in the audit trail, one aggregated row each (in one
    /// transaction).
    async fn record_auth_failures(&self, rows: &[FailureRow]) -> Result<(), Error>;

    /// Adds verification counts, one row per key and hour (in one transaction); counts of a
    /// key that no longer exists are dropped.
    async fn record_usage(&self, rows: &[UsageRow]) -> Result<(), Error>;

    /// The summed counts of `query`, one entry per non-empty bucket, oldest first.
    async fn usage(&self, query: &UsageQuery) -> Result<Vec<(Timestamp, Counts)>, Error>;

    /// Folds hourly counts before `fold_before` (rounded down to a UTC day) into daily ones,
    /// and deletes every count before `delete_before`; returns the rows removed.
    async fn compact_usage(
        &self,
        fold_before: Timestamp,
        delete_before: Timestamp,
    ) -> Result<u64, Error>;

    /// Writes one `expiring` event for each key (at most `limit`) that expires within
    /// (`now`, `until`], is active, was never rolled and was not warned of yet; returns those
    /// keys. Of instances sweeping at once, one writes each key's event.
    async fn warn_expiring(
        &self,
        now: Timestamp,
        until: Timestamp,
        limit: u32,
    ) -> Result<Vec<KeyRecord>, Error>;

    /// How many keys of `environment` are active, never rolled, and expire within (`now`,
    /// `until`].
    async fn count_expiring(
        &self,
        environment: Environment,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<i64, Error>;

    /// Records calls refused PERMISSION_DENIED, one aggregated row per principal (in one
    /// transaction).
    async fn record_denials(&self, rows: &[DenialRow]) -> Result<(), Error>;

    /// Deletes refused-call rows (failed authentications and denials) older than `before`;
    /// returns how many.
    async fn purge_auth_failures(&self, before: Timestamp) -> Result<u64, Error>;

    /// Audit events matching `query`, of keys in `scope` (every event for
    /// [`Scope::everything`]; no event without a key for a limited scope), newest first, below
    /// sequence `before`.
    async fn list_events(
        &self,
        query: &EventQuery,
        scope: &Scope,
        before: i64,
        limit: u32,
    ) -> Result<Vec<AuditEvent>, Error>;

    /// The idempotency record of (`operator`, `key`), if one has not expired at `now`.
    async fn idempotency_record(
        &self,
        operator: &str,
        key: &str,
        now: Timestamp,
    ) -> Result<Option<IdempotencyRecord>, Error>;

    /// Deletes idempotency records expired at `now`; returns how many.
    async fn purge_idempotency(&self, now: Timestamp) -> Result<u64, Error>;

    /// How many keys the store holds (sizes the key filter).
    async fn count_keys(&self) -> Result<u64, Error>;

    /// Key ids in id order, after `after`, at most `limit`: every key, a page at a time (the
    /// key filter is built from them).
    async fn key_ids(&self, after: Option<&KeyId>, limit: u32) -> Result<Vec<KeyId>, Error>;

    /// The highest `key_events` sequence so far (0 when there is none).
    async fn latest_event(&self) -> Result<i64, Error>;

    /// Key events with a sequence above `after`, oldest first, at most `limit`.
    async fn events_after(&self, after: i64, limit: u32) -> Result<Vec<KeyEvent>, Error>;

    /// A live feed of key changes made by any instance, where the backend has one
    /// (PostgreSQL's LISTEN/NOTIFY); `None` for SQLite.
    async fn subscribe(&self) -> Result<Option<ChangeFeed>, Error>;

    async fn close(&self);
}
