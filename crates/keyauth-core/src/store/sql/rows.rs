//! The rows the SQL reads (`FromRow`), each converted into the domain with `TryFrom`, and the
//! statement that reads one key.

use crate::clock::Timestamp;
use crate::error::Error;
use crate::model::{ApplicationId, Environment, KeyId, KeyRecord, Metadata, Permissions};
use crate::store::feed::KeyEvent;
use crate::store::records::{Actor, AuditEvent, EventKind, IdempotencyRecord};
use sqlx::FromRow;

/// A `SELECT` of every column of [`KeyRow`] from `api_keys`, followed by `$tail`.
macro_rules! select_keys {
    ($tail:literal) => {
        concat!(
            "SELECT id, application_id, environment, name, secret_hash, redacted, restricted, \
             permissions, metadata, create_time, expire_time, revoke_time, revoke_reason, \
             last_used_time, replaced_by_key_id, secret_check FROM api_keys ",
            $tail
        )
    };
}
pub(super) use select_keys;

pub(super) const GET_KEY: &str = select_keys!("WHERE id = $1");
/// The key a change reads and then writes, locked until the change commits (PostgreSQL; a
/// SQLite write transaction holds the database's write lock from its start).
pub(super) const GET_KEY_LOCKED: &str = select_keys!("WHERE id = $1 FOR UPDATE");

pub(super) fn micros(t: Option<Timestamp>) -> Option<i64> {
    t.map(Timestamp::as_micros)
}

pub(super) fn corrupt(what: &str) -> Error {
    Error::Store(sqlx::Error::Decode(
        format!("a stored row with an invalid {what}").into(),
    ))
}

/// A row of `api_keys`.
#[derive(FromRow)]
pub(super) struct KeyRow {
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
    secret_check: Option<String>,
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
            secret_check: row.secret_check,
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
            encoded_answer: Default::default(),
        })
    }
}

/// A row of `key_events`.
#[derive(FromRow)]
pub(super) struct EventRow {
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
    actor_name: Option<String>,
    actor_subject: Option<String>,
    actor_issuer: Option<String>,
}

/// A row of LIST_APPLICATIONS.
#[derive(FromRow)]
pub(super) struct ApplicationRow {
    pub(super) application_id: String,
    pub(super) environment: String,
    pub(super) active: i64,
    pub(super) expired: i64,
    pub(super) revoked: i64,
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
            // An empty subject or issuer is stored as NULL (see the migration).
            actor: row.actor_name.map(|name| Actor {
                name,
                subject: row.actor_subject.unwrap_or_default(),
                issuer: row.actor_issuer.unwrap_or_default(),
            }),
        })
    }
}

/// The columns of `key_events` that cache invalidation reads.
#[derive(FromRow)]
pub(super) struct ChangeRow {
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
pub(super) struct IdempotencyRow {
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

/// One bucket of GetKeyUsage: its start and its sums.
#[derive(FromRow)]
pub(super) struct UsageBucketRow {
    bucket: i64,
    valid: i64,
    authentication_error: i64,
    api_key_revoked: i64,
    api_key_expired: i64,
    insufficient_permissions: i64,
}

impl UsageBucketRow {
    pub(super) fn bucket(self) -> (Timestamp, crate::usage_counts::Counts) {
        let n = |v: i64| u64::try_from(v).unwrap_or(0);
        (
            Timestamp::from_micros(self.bucket),
            crate::usage_counts::Counts([
                n(self.valid),
                n(self.authentication_error),
                n(self.api_key_revoked),
                n(self.api_key_expired),
                n(self.insufficient_permissions),
            ]),
        )
    }
}

/// A single-column row.
#[derive(FromRow)]
pub(super) struct Value<T> {
    pub(super) value: T,
}
