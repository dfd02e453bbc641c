//! The SQL both backends share, written once: [`SqlStore`] is generic over the database, and
//! the small [`Backend`] trait declares what differs (how a write transaction begins, and the
//! change feed). The statements are portable (`$n` placeholders work in SQLite and PostgreSQL
//! alike). Rows are read into `FromRow` structs and converted into the domain with `TryFrom`.
//!
//! By query family: `keys` (changes to keys), `listings` (reads of keys and applications),
//! `events` (the audit trail and the change follower's reads), `idempotency`, `settings`;
//! `rows`, `filters` (statements assembled at run time) and `backend` apart. Modules read in
//! one direction: `rows`, `filters` → `backend` → this file's
//! `SqlStore`, `Change` and `sql_impl!` → `settings`, `idempotency`, `events` → `keys` →
//! `listings`. The `Store` impl at the end of this file runs each family's inherent method of
//! the same name (an inherent method is found before a trait's).

// The row types are private to this module; the impl bounds name them, which is fine here.
#![allow(private_bounds)]

use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use keyauth_contract::principal::Scope;
use sqlx::Pool;

use super::api::Store;
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

mod backend;
mod filters;
mod rows;

pub use backend::Backend;

/// An `impl` block of [`SqlStore<DB>`] for every `DB: Backend` (`impl { … }`, or
/// `impl Trait { … }`), with what the shared SQL needs of a database driver: sqlx's SQLite and
/// PostgreSQL drivers have it all. Rust does not infer these bounds from `DB: Backend` (nor
/// from a trait that declares them), so every impl block must state them: here, once.
macro_rules! sql_impl {
    ($(#[$attr:meta])* impl $($trait:ident)? { $($body:tt)* }) => {
        $(#[$attr])*
        impl<DB: $crate::store::sql::Backend> $($trait for)? $crate::store::sql::SqlStore<DB>
        where
            for<'c> &'c mut DB::Connection: ::sqlx::Executor<'c, Database = DB>,
            DB::Arguments: ::sqlx::IntoArguments<DB>,
            for<'q> &'q str: ::sqlx::Encode<'q, DB> + ::sqlx::Type<DB>,
            for<'q> Option<&'q str>: ::sqlx::Encode<'q, DB> + ::sqlx::Type<DB>,
            for<'q> &'q [u8]: ::sqlx::Encode<'q, DB> + ::sqlx::Type<DB>,
            for<'q> i64: ::sqlx::Encode<'q, DB> + ::sqlx::Type<DB>,
            for<'q> Option<i64>: ::sqlx::Encode<'q, DB> + ::sqlx::Type<DB>,
            for<'q> bool: ::sqlx::Encode<'q, DB> + ::sqlx::Type<DB>,
            for<'r> $crate::store::sql::rows::KeyRow: ::sqlx::FromRow<'r, DB::Row>,
            for<'r> $crate::store::sql::rows::EventRow: ::sqlx::FromRow<'r, DB::Row>,
            for<'r> $crate::store::sql::rows::ApplicationRow: ::sqlx::FromRow<'r, DB::Row>,
            for<'r> $crate::store::sql::rows::ChangeRow: ::sqlx::FromRow<'r, DB::Row>,
            for<'r> $crate::store::sql::rows::IdempotencyRow: ::sqlx::FromRow<'r, DB::Row>,
            for<'r> $crate::store::sql::rows::UsageBucketRow: ::sqlx::FromRow<'r, DB::Row>,
            for<'r> $crate::store::sql::rows::Value<String>: ::sqlx::FromRow<'r, DB::Row>,
            for<'r> $crate::store::sql::rows::Value<i64>: ::sqlx::FromRow<'r, DB::Row>,
        {
            $($body)*
        }
    };
}

mod events;
mod expiry;
mod idempotency;
mod keys;
mod listings;
mod settings;
mod usage;

/// When and by whom a change is made, and the idempotency record written with it: what every
/// change writes besides the key itself (its audit event, and the replayable answer).
#[derive(Clone, Copy)]
pub(super) struct Change<'a> {
    pub(super) now: Timestamp,
    pub(super) who: &'a Provenance,
    pub(super) idem: Option<&'a IdempotentWrite<'a>>,
}

/// The key store on one database: SQLite (`SqlStore<Sqlite>`) or PostgreSQL
/// (`SqlStore<Postgres>`).
pub struct SqlStore<DB: Backend> {
    pool: Pool<DB>,
    /// Key records read so far (`get_key` calls).
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

sql_impl! { #[async_trait] impl Store {
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
        let change = Change {
            now: key.create_time,
            who,
            idem,
        };
        Self::insert_key(self, key, change).await
    }

    async fn get_key(&self, id: &KeyId) -> Result<Option<KeyRecord>, Error> {
        Self::get_key(self, id).await
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
        let change = Change { now, who, idem };
        Self::roll_key(self, old, new, old_expire, change).await
    }

    async fn revoke_key(
        &self,
        id: &KeyId,
        now: Timestamp,
        reason: Option<&str>,
        who: &Provenance,
        idem: Option<&IdempotentWrite<'_>>,
    ) -> Result<Option<KeyRecord>, Error> {
        let change = Change { now, who, idem };
        Self::revoke_key(self, id, reason, change).await
    }

    async fn expose_key(
        &self,
        id: &KeyId,
        now: Timestamp,
        reason: &str,
        exposure: Exposure<'_>,
        who: &Provenance,
    ) -> Result<Exposed, Error> {
        let change = Change {
            now,
            who,
            idem: None,
        };
        Self::expose_key(self, id, reason, exposure, change).await
    }

    async fn update_key(
        &self,
        id: &KeyId,
        update: &KeyUpdate,
        now: Timestamp,
        who: &Provenance,
        idem: Option<&IdempotentWrite<'_>>,
    ) -> Result<Updated, Error> {
        let change = Change { now, who, idem };
        Self::update_key(self, id, update, change).await
    }

    async fn list_applications(
        &self,
        after: Option<&ApplicationId>,
        limit: u32,
        now: Timestamp,
        scope: &Scope,
    ) -> Result<Vec<ApplicationSummary>, Error> {
        Self::list_applications(self, after, limit, now, scope).await
    }

    async fn list_keys(
        &self,
        application: &ApplicationId,
        listing: &KeyListing,
        cursor: Option<&Cursor>,
        limit: u32,
    ) -> Result<Vec<KeyRecord>, Error> {
        Self::list_keys(self, application, listing, Self::before(cursor), limit).await
    }

    async fn record_last_used(&self, uses: &[(KeyId, Timestamp)]) -> Result<(), Error> {
        Self::record_last_used(self, uses).await
    }

    async fn set_secret_check(&self, id: &KeyId, check: &str) -> Result<(), Error> {
        Self::set_secret_check(self, id, check).await
    }

    async fn setting_or_insert(&self, name: &str, fresh: &str) -> Result<String, Error> {
        Self::setting_or_insert(self, name, fresh).await
    }

    async fn record_auth_failures(&self, rows: &[FailureRow]) -> Result<(), Error> {
        Self::record_auth_failures(self, rows).await
    }

    async fn record_denials(&self, rows: &[DenialRow]) -> Result<(), Error> {
        Self::record_denials(self, rows).await
    }

    async fn record_usage(&self, rows: &[UsageRow]) -> Result<(), Error> {
        Self::record_usage(self, rows).await
    }

    async fn usage(&self, query: &UsageQuery) -> Result<Vec<(Timestamp, Counts)>, Error> {
        Self::usage(self, query).await
    }

    async fn compact_usage(
        &self,
        fold_before: Timestamp,
        delete_before: Timestamp,
    ) -> Result<u64, Error> {
        Self::compact_usage(self, fold_before, delete_before).await
    }

    async fn warn_expiring(
        &self,
        now: Timestamp,
        until: Timestamp,
        limit: u32,
    ) -> Result<Vec<KeyRecord>, Error> {
        Self::warn_expiring(self, now, until, limit).await
    }

    async fn count_expiring(
        &self,
        environment: Environment,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<i64, Error> {
        Self::count_expiring(self, environment, now, until).await
    }

    async fn purge_auth_failures(&self, before: Timestamp) -> Result<u64, Error> {
        Self::purge_auth_failures(self, before).await
    }

    async fn list_events(
        &self,
        query: &EventQuery,
        scope: &Scope,
        before: i64,
        limit: u32,
    ) -> Result<Vec<AuditEvent>, Error> {
        Self::list_events(self, query, scope, before, limit).await
    }

    async fn idempotency_record(
        &self,
        operator: &str,
        key: &str,
        now: Timestamp,
    ) -> Result<Option<IdempotencyRecord>, Error> {
        Self::idempotency_record(self, operator, key, now).await
    }

    async fn purge_idempotency(&self, now: Timestamp) -> Result<u64, Error> {
        Self::purge_idempotency(self, now).await
    }

    async fn count_keys(&self) -> Result<u64, Error> {
        Self::count_keys(self).await
    }

    async fn key_ids(&self, after: Option<&KeyId>, limit: u32) -> Result<Vec<KeyId>, Error> {
        Self::key_ids(self, after, limit).await
    }

    async fn latest_event(&self) -> Result<i64, Error> {
        Self::latest_event(self).await
    }

    async fn events_after(&self, after: i64, limit: u32) -> Result<Vec<KeyEvent>, Error> {
        Self::events_after(self, after, limit).await
    }

    async fn subscribe(&self) -> Result<Option<ChangeFeed>, Error> {
        DB::change_feed(&self.pool).await
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}}

#[cfg(test)]
mod tests;
