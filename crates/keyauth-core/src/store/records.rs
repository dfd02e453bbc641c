//! The store's records: what a change takes (who asked, the idempotency record, a roll's
//! successor, an update) and what it produces, audit events and their queries, listings.

use keyauth_contract::principal::Principal;

use crate::clock::Timestamp;
use crate::model::{
    ApplicationId, Environment, KeyId, KeyRecord, KeyStates, Metadata, Permissions,
};

/// Who asked for a change, kept with its event (the audit trail).
#[derive(Clone, Debug, Default)]
pub struct Provenance {
    pub request_id: Option<String>,
    /// Non-secret id of the operator token (a short hash).
    pub operator: Option<String>,
    /// The caller's address.
    pub peer: Option<String>,
    /// The principal that made the call (DESIGN §7 "Audit"); `None` for a change no principal
    /// made (a secret scanner's report).
    pub actor: Option<Actor>,
}

/// The principal named in the audit trail: a static principal's or a JWT's name, where it
/// comes from (a JWT's `sub`, a certificate's URI or subject) and a JWT's `iss`. `subject` and
/// `issuer` are empty where the principal has none.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Actor {
    pub name: String,
    pub subject: String,
    pub issuer: String,
}

impl From<&Principal> for Actor {
    fn from(principal: &Principal) -> Self {
        Actor {
            name: principal.name.clone(),
            subject: principal.subject.clone(),
            issuer: principal.issuer.clone(),
        }
    }
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
    /// Calls of one principal refused PERMISSION_DENIED (aggregated, like
    /// `OperatorAuthFailed`).
    PermissionDenied,
    /// A key entered the `--expiry-warning` window (one per key and expiry).
    Expiring,
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
            EventKind::PermissionDenied => "permission_denied",
            EventKind::Expiring => "expiring",
        }
    }

    pub(crate) fn from_store(s: &str) -> Option<Self> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Every kind, in the order of their bits in [`EventKinds`].
    pub const ALL: [EventKind; 8] = [
        EventKind::Issued,
        EventKind::Rolled,
        EventKind::Revoked,
        EventKind::OperatorAuthFailed,
        EventKind::Exposed,
        EventKind::Updated,
        EventKind::PermissionDenied,
        EventKind::Expiring,
    ];

    /// Whether an event of this kind changes its key (what caches forget and watchers hear
    /// of): not a refused call, not an expiry warning.
    pub fn changes_key(self) -> bool {
        match self {
            EventKind::Issued
            | EventKind::Rolled
            | EventKind::Revoked
            | EventKind::Exposed
            | EventKind::Updated => true,
            EventKind::OperatorAuthFailed | EventKind::PermissionDenied | EventKind::Expiring => {
                false
            }
        }
    }

    /// The kind's bit in [`EventKinds`] (and in the store's filter parameter): 1 issued,
    /// 2 rolled, 4 revoked, 8 operator_auth_failed, 16 exposed, 32 updated, 64
    /// permission_denied, 128 expiring.
    pub const fn bit(self) -> u8 {
        1 << self as u8
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
    /// Who made the change; `None` for events no principal made.
    pub actor: Option<Actor>,
}

/// Whose events ListKeyEvents asks for.
#[derive(Clone, Debug)]
pub enum EventFilter {
    Key(KeyId),
    Application(ApplicationId),
    /// Every event of the authority.
    All,
}

/// What ListKeyEvents asks for: whose events, of which types, made by whom, in which time
/// range.
#[derive(Clone, Debug)]
pub struct EventQuery {
    pub filter: EventFilter,
    /// [`EventKinds::ALL`]: every type.
    pub kinds: EventKinds,
    /// Only events whose actor has this name or this subject.
    pub actor: Option<String>,
    /// At or after (event_time).
    pub start: Option<Timestamp>,
    /// Before (exclusive).
    pub end: Option<Timestamp>,
}

impl EventQuery {
    /// Every event of `filter`, whatever its type, actor and time.
    pub fn of(filter: EventFilter) -> Self {
        EventQuery {
            filter,
            kinds: EventKinds::ALL,
            actor: None,
            start: None,
            end: None,
        }
    }
}

/// A set of event kinds (a bit set: a repeated kind counts once, and the store binds the whole
/// set as one value however many kinds were asked for). The empty set is every kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EventKinds(u8);

impl EventKinds {
    /// Every kind: no filter.
    pub const ALL: EventKinds = EventKinds(0);

    pub fn of(kinds: impl IntoIterator<Item = EventKind>) -> Self {
        EventKinds(kinds.into_iter().fold(0, |bits, kind| bits | kind.bit()))
    }

    /// Whether the set holds `kind` (the empty set holds every kind).
    pub fn contains(self, kind: EventKind) -> bool {
        self.0 == 0 || self.0 & kind.bit() != 0
    }

    /// The kinds the set names, in bit order (none for [`EventKinds::ALL`]).
    pub fn iter(self) -> impl Iterator<Item = EventKind> {
        EventKind::ALL
            .into_iter()
            .filter(move |k| self.0 & k.bit() != 0)
    }

    /// The set as the store's filter parameter: [`EventKind::bit`] of each kind; 0 every kind.
    pub fn bits(self) -> i64 {
        i64::from(self.0)
    }
}

impl FromIterator<EventKind> for EventKinds {
    fn from_iter<I: IntoIterator<Item = EventKind>>(kinds: I) -> Self {
        EventKinds::of(kinds)
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
    /// Check value of the new secret.
    pub secret_check: Option<String>,
    pub redacted: String,
    pub create_time: Timestamp,
    /// The expiry the roll names, if any; else the new key expires when `old` would have.
    pub expire_time: Option<Timestamp>,
    /// The lifetime bound (`lifetime`): the new key expires at the latest then.
    pub latest_expire: Option<Timestamp>,
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
            secret_check: self.secret_check.clone(),
            redacted: self.redacted.clone(),
            restricted: old.restricted,
            permissions: old.permissions.clone(),
            metadata: old.metadata.clone(),
            create_time: self.create_time,
            expire_time: match (self.expire_time.or(old.expire_time), self.latest_expire) {
                (Some(e), Some(latest)) => Some(e.min(latest)),
                (e, latest) => e.or(latest),
            },
            revoke_time: None,
            revoke_reason: None,
            last_used_time: None,
            replaced_by: None,
            encoded_answer: Default::default(),
        }
    }
}

/// Outcome of a roll attempt.
// Returned once per roll and matched at once, never kept: boxing would buy nothing.
#[allow(clippy::large_enum_variant)]
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
    pub filters: KeyFilters,
    /// The time `filters.states` are judged at.
    pub now: Timestamp,
}

/// ListKeys' filters; a page token holds for the same ones only.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeyFilters {
    /// Only this environment's keys; `None`: both.
    pub environment: Option<Environment>,
    /// Only keys in these states.
    pub states: KeyStates,
    /// Only keys not used since then, never-used keys included.
    pub last_used_before: Option<Timestamp>,
}

impl KeyFilters {
    /// Keys of `environment` (`None`: both) in `states`, used or not.
    pub fn of(environment: Option<Environment>, states: KeyStates) -> Self {
        KeyFilters {
            environment,
            states,
            last_used_before: None,
        }
    }
}

/// Where ListKeys resumes: strictly older than this (create_time, id).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor {
    pub create_time: Timestamp,
    pub id: KeyId,
}

/// How GetKeyUsage groups counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Granularity {
    Hour,
    Day,
}

/// Whose usage GetKeyUsage reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UsageOf {
    Key(KeyId),
    /// An application's keys, of one environment or (`None`) both.
    Application(ApplicationId, Option<Environment>),
}

/// A GetKeyUsage query: buckets starting within [`start`, `end`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageQuery {
    pub of: UsageOf,
    pub start: Timestamp,
    pub end: Timestamp,
    pub granularity: Granularity,
}
