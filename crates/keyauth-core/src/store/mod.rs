//! The key store: one trait, two backends (SQLite for one instance, PostgreSQL for several).
//!
//! Every change (issue, roll, revoke) is one transaction that also appends to `key_events`.
//! One generic implementation serves both databases (`sql.rs`).
//! The store knows records and SQL; it never sees wire types and never sees a secret.

mod sql;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use crate::auth_failures::FailureRow;
use crate::clock::Timestamp;
use crate::error::Error;
use crate::model::{
    ApplicationId, Environment, KeyId, KeyRecord, KeyStates, Metadata, Permissions,
};

pub use sql::{Backend, SqlStore};

/// Who asked for a change, kept with its event (the audit trail).
#[derive(Clone, Debug, Default)]
pub struct Provenance {
    pub request_id: Option<String>,
    /// Non-secret id of the operator token (a short hash).
    pub operator: Option<String>,
    /// The caller's address.
    pub peer: Option<String>,
}

/// What a change produced, for encoding the response an idempotent retry will replay.
pub enum Changed<'a> {
    Issued(&'a KeyRecord),
    Rolled {
        new: &'a KeyRecord,
        previous: &'a KeyRecord,
    },
    Revoked(&'a KeyRecord),
    Updated(&'a KeyRecord),
}

/// The idempotency record written in the same transaction as a change.
pub struct IdempotentWrite<'a> {
    pub operator: &'a str,
    pub key: &'a str,
    pub fingerprint: &'a str,
    /// The response's secret, sealed; the response itself is encoded without it.
    pub sealed_secret: Option<String>,
    pub create_time: Timestamp,
    pub expire_time: Timestamp,
    /// Encodes the response from the records the change produced.
    pub respond: &'a (dyn Fn(&Changed<'_>) -> Vec<u8> + Send + Sync),
}

/// A stored idempotency record.
#[derive(Clone, Debug)]
pub struct IdempotencyRecord {
    pub fingerprint: String,
    pub response: Vec<u8>,
    pub sealed_secret: Option<String>,
    pub expire_time: Timestamp,
}

/// The kinds of audit events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Issued,
    Rolled,
    Revoked,
    OperatorAuthFailed,
    /// A key reported as leaked (a secret scanner, or ReportExposedKeys) and revoked for it.
    Exposed,
    /// A key's name, metadata, permissions or expiry changed (UpdateKey).
    Updated,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Issued => "issued",
            EventKind::Rolled => "rolled",
            EventKind::Revoked => "revoked",
            EventKind::OperatorAuthFailed => "operator_auth_failed",
            EventKind::Exposed => "exposed",
            EventKind::Updated => "updated",
        }
    }

    pub(crate) fn from_store(s: &str) -> Option<Self> {
        [
            EventKind::Issued,
            EventKind::Rolled,
            EventKind::Revoked,
            EventKind::OperatorAuthFailed,
            EventKind::Exposed,
            EventKind::Updated,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// One entry of the audit trail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEvent {
    pub seq: i64,
    pub kind: EventKind,
    pub key_id: Option<KeyId>,
    pub related_key_id: Option<KeyId>,
    pub application_id: Option<String>,
    pub operator: Option<String>,
    pub peer: Option<String>,
    pub request_id: Option<String>,
    pub event_time: Timestamp,
    /// Exposed: who reported the key (e.g. `github`).
    pub source: Option<String>,
    /// Exposed: where the key was found.
    pub url: Option<String>,
    /// How many occurrences the event stands for: refused operator calls are written once
    /// per peer per interval; 1 for every other event.
    pub count: u64,
    /// Updated: the fields that changed (UpdateKey's paths), sorted.
    pub changed_paths: Vec<String>,
}

/// Whose events ListKeyEvents asks for.
#[derive(Clone, Debug)]
pub enum EventFilter {
    Key(KeyId),
    Application(ApplicationId),
    /// Every event of the authority.
    All,
}

/// What ListKeyEvents asks for: whose events, of which types, in which time range.
#[derive(Clone, Debug)]
pub struct EventQuery {
    pub filter: EventFilter,
    /// Empty: every type.
    pub kinds: Vec<EventKind>,
    /// At or after (event_time).
    pub start: Option<Timestamp>,
    /// Before (exclusive).
    pub end: Option<Timestamp>,
}

impl EventQuery {
    /// Every event of `filter`, whatever its type and time.
    pub fn of(filter: EventFilter) -> Self {
        EventQuery {
            filter,
            kinds: Vec::new(),
            start: None,
            end: None,
        }
    }
}

/// The changes UpdateKey makes to a key; `None` leaves a field as it is.
#[derive(Clone, Debug, Default)]
pub struct KeyUpdate {
    pub name: Option<String>,
    /// Replaces the whole map.
    pub metadata: Option<Metadata>,
    /// Replaces the set: empty makes a standard key, non-empty a restricted one.
    pub permissions: Option<Permissions>,
    /// `Some(None)` clears the expiry.
    pub expire_time: Option<Option<Timestamp>>,
}

impl KeyUpdate {
    /// The paths this update changes, sorted (what its audit event records).
    pub fn paths(&self) -> Vec<&'static str> {
        let mut paths = Vec::new();
        if self.expire_time.is_some() {
            paths.push("expire_time");
        }
        if self.metadata.is_some() {
            paths.push("metadata");
        }
        if self.name.is_some() {
            paths.push("name");
        }
        if self.permissions.is_some() {
            paths.push("permissions");
        }
        paths
    }
}

/// Outcome of an update.
#[derive(Debug)]
pub enum Updated {
    /// Changed, with an `updated` event; the key as it now stands.
    Done(KeyRecord),
    NotFound,
    /// Revoked (or, for a new expiry, rolled): nothing was written.
    Refused(KeyRecord),
}

/// Keys of one application and environment in each state (at a given time).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeyCounts {
    pub active: u64,
    pub expired: u64,
    pub revoked: u64,
}

/// One application that has keys, with its key counts per environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApplicationSummary {
    pub application_id: ApplicationId,
    pub test: KeyCounts,
    pub live: KeyCounts,
}

/// A roll's new key as minted before its transaction (the secret's hash takes argon2's time).
/// What the new key inherits is not here: the store copies it from the old key as it stands
/// inside the transaction that claims it, so no change committed meanwhile is undone.
#[derive(Debug)]
pub struct Successor {
    pub id: KeyId,
    /// argon2id PHC string of the new secret.
    pub secret_hash: String,
    pub redacted: String,
    pub create_time: Timestamp,
    /// The expiry the roll names, if any; else the new key expires when `old` would have.
    pub expire_time: Option<Timestamp>,
}

impl Successor {
    /// The new key's record: its own id, secret and times, and `old`'s application,
    /// environment, name, permissions and metadata as `old` stands now.
    pub fn of(&self, old: &KeyRecord) -> KeyRecord {
        KeyRecord {
            id: self.id.clone(),
            application_id: old.application_id.clone(),
            environment: old.environment,
            name: old.name.clone(),
            secret_hash: self.secret_hash.clone(),
            redacted: self.redacted.clone(),
            restricted: old.restricted,
            permissions: old.permissions.clone(),
            metadata: old.metadata.clone(),
            create_time: self.create_time,
            expire_time: self.expire_time.or(old.expire_time),
            revoke_time: None,
            revoke_reason: None,
            last_used_time: None,
            replaced_by: None,
            memo: Default::default(),
        }
    }
}

/// Outcome of a roll attempt.
#[derive(Debug)]
pub enum Rolled {
    /// The old key now expires at the grace limit and names its replacement, `new`.
    Done {
        new: KeyRecord,
        previous: KeyRecord,
    },
    NotFound,
    /// The old key was revoked, expired or already rolled; nothing was written.
    Refused(KeyRecord),
}

/// Where a leaked key was found, kept with its `exposed` event.
#[derive(Clone, Copy, Debug)]
pub struct Exposure<'a> {
    /// Who reported it: `github`, or what an operator's report names.
    pub source: &'a str,
    /// Where it was found (may be empty).
    pub url: &'a str,
}

/// Outcome of marking a key exposed.
#[derive(Debug)]
pub enum Exposed {
    /// Revoked now, with an `exposed` event.
    Revoked(KeyRecord),
    /// It was revoked before: nothing was written.
    AlreadyRevoked(KeyRecord),
    NotFound,
}

/// What ListKeys lists of an application's keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyListing {
    /// Only this environment's keys; `None`: both.
    pub environment: Option<Environment>,
    /// Only keys in these states at `now`.
    pub states: KeyStates,
    pub now: Timestamp,
}

/// Where ListKeys resumes: strictly older than this (create_time, id).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor {
    pub create_time: Timestamp,
    pub id: KeyId,
}

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

    /// Applications that have keys, by id, after `after`, at most `limit`, with their key
    /// counts per environment and state at `now`.
    async fn list_applications(
        &self,
        after: Option<&ApplicationId>,
        limit: u32,
        now: Timestamp,
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

    /// Returns the setting `name`, storing `fresh` first if it has none (first start wins).
    async fn setting_or_insert(&self, name: &str, fresh: &str) -> Result<String, Error>;

    /// Records refused operator calls in the audit trail, one aggregated row each (in one
    /// transaction).
    async fn record_auth_failures(&self, rows: &[FailureRow]) -> Result<(), Error>;

    /// Deletes refused-operator-call rows older than `before`; returns how many.
    async fn purge_auth_failures(&self, before: Timestamp) -> Result<u64, Error>;

    /// Audit events matching `query`, newest first, below sequence `before`.
    async fn list_events(
        &self,
        query: &EventQuery,
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

/// One row of `key_events`, as far as cache invalidation needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyEvent {
    pub seq: i64,
    pub kind: Option<EventKind>,
    /// `None` for events that concern no key (failed operator authentication).
    pub key_id: Option<KeyId>,
    /// The new key of a roll.
    pub related_key_id: Option<KeyId>,
}

/// PostgreSQL notifications of key changes (see migrations/postgres/0002).
pub struct ChangeFeed {
    listener: sqlx::postgres::PgListener,
}

pub const CHANGE_CHANNEL: &str = "keyauth_key_events";

impl ChangeFeed {
    /// The next change; `Ok(None)` when the connection was lost (notifications sent meanwhile
    /// are gone: catch up from `key_events`). The next call reconnects.
    pub async fn next(&mut self) -> Result<Option<KeyEvent>, Error> {
        let Some(notification) = self.listener.try_recv().await? else {
            return Ok(None);
        };
        // "<seq> <event> <key_id>[ <related_key_id>]" (migrations/postgres/0004).
        let mut parts = notification.payload().split(' ');
        let parsed = match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(seq), Some(kind), Some(id), related) => (|| {
                Some(KeyEvent {
                    seq: seq.parse().ok()?,
                    kind: Some(EventKind::from_store(kind)?),
                    key_id: Some(KeyId::parse(id, "payload").ok()?),
                    related_key_id: match related {
                        Some(r) => Some(KeyId::parse(r, "payload").ok()?),
                        None => None,
                    },
                })
            })(),
            _ => None,
        };
        parsed.map(Some).ok_or_else(|| {
            Error::internal(format!(
                "malformed key event notification {}",
                crate::error::echo(notification.payload())
            ))
        })
    }
}

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
pub async fn connect(url: &str, options: &StoreOptions) -> Result<Arc<dyn Store>, Error> {
    if url.starts_with("sqlite:") {
        let connect = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
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
