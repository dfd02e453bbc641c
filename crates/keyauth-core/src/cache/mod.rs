//! In-memory state of the Verify hot path (DESIGN.md §4):
//!
//! - **proven keys**: per key id, the SHA-256 digest of the one full key whose secret argon2id
//!   has proven, with the key's record. A presented key whose digest matches is genuine without
//!   argon2; one whose digest differs is wrong (a key id has exactly one secret), also without
//!   argon2. The record is re-read from the store once it is older than the TTL (no argon2:
//!   the digest stays proven), so what the cache says is never older than the TTL.
//! - **unknown ids**: a short negative cache, so garbage with a valid checksum costs one store
//!   lookup per id per TTL.
//! - **failures**: failed secrets per key id in a window; past the limit, unproven attempts on
//!   that id get one argon2 try per `throttled_try_interval` (one a second) and the rest a
//!   retryable refusal ([`Admission::Throttled`]), never "invalid": an attacker who knows a
//!   key id can slow its owner's first proof on this instance, not refuse it (only a key without
//!   a check value: a wrong secret that fails the check value is not counted). The owner's
//!   proven key is answered before this check.
//! - **checks**: the check values of keys read but not proven here, so that wrong secrets for
//!   a key id are refused from memory (see `check_value`).
//! - **flights**: one cold proof or refresh per key id at a time; concurrent callers of the
//!   same id wait for it and then read what it cached (single flight).
//!
//! Holds digests, never keys. Keyed by key id so that revoke and roll drop a key's entry in
//! O(1); a generation counter stops a cold-path read that raced an invalidation from caching
//! what it read.

//! Every entry carries the time it was made, judged against the `now` the authority passes
//! down: nothing here reads a clock, so tests move time instead of sleeping. The proven keys are
//! weighed in bytes (a key with large metadata takes more of the budget than a bare one).
//!
//! One file per cache: `proven`, `negative`, `failures`, `checks`, `flights`; [`VerifyCache`]
//! here holds all but the flights behind the one face the authority uses.

mod checks;
mod failures;
mod flights;
mod negative;
mod proven;
mod shared;

use std::sync::Arc;
use std::time::Duration;

use crate::clock::Timestamp;
use crate::key::KeyDigest;
use crate::model::KeyId;

use checks::KnownChecks;
use failures::{FailedSecrets, FailureLimits};
use negative::UnknownIds;
use proven::ProvenKeys;

pub use failures::Admission;
pub use flights::{Flight, Flights};
pub use proven::{Lookup, Proven};

#[derive(Clone, Debug)]
pub struct CacheSettings {
    /// Bytes the proven keys may take at most (records, digests and bookkeeping, estimated);
    /// 0 turns the cache off (every Verify takes the cold path).
    pub max_bytes: u64,
    /// Age after which a cached record is re-read from the store.
    pub ttl: Duration,
    /// How long an unknown key id is remembered.
    pub negative_ttl: Duration,
    /// Failed secrets per key id within `failure_window` before argon2 is rationed.
    pub failure_limit: u32,
    pub failure_window: Duration,
    /// Past the failure limit, one unproven attempt per id per this interval still runs
    /// argon2; the others are refused as retryable.
    pub throttled_try_interval: Duration,
    /// Cold lookups (store read, argon2) in flight at most; past it Verify answers
    /// UNAVAILABLE at once instead of queueing.
    pub max_cold_lookups: usize,
    /// How long the store may go unheard from (see `propagation`) before cached answers stop
    /// and Verify answers UNAVAILABLE.
    pub staleness_limit: Duration,
}

impl CacheSettings {
    /// 100 MiB: about 100,000 typical keys (~1 KB each: see `proven`).
    pub const DEFAULT_MAX_BYTES: u64 = proven::DEFAULT_MAX_BYTES;
    pub const DEFAULT_MAX_COLD_LOOKUPS: usize = 128;
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            max_bytes: Self::DEFAULT_MAX_BYTES,
            ttl: Duration::from_secs(30),
            negative_ttl: Duration::from_secs(10),
            failure_limit: 10,
            failure_window: Duration::from_secs(60),
            throttled_try_interval: Duration::from_secs(1),
            max_cold_lookups: Self::DEFAULT_MAX_COLD_LOOKUPS,
            staleness_limit: Duration::from_secs(10),
        }
    }
}

/// The proven keys, the unknown ids and the failed-secret windows, behind one face.
pub struct VerifyCache {
    proven: ProvenKeys,
    unknown: UnknownIds,
    failures: FailedSecrets,
    checks: KnownChecks,
    settings: CacheSettings,
}

impl VerifyCache {
    pub fn new(settings: CacheSettings) -> Self {
        VerifyCache {
            proven: ProvenKeys::new(settings.max_bytes, settings.ttl),
            unknown: UnknownIds::new(settings.negative_ttl),
            failures: FailedSecrets::new(FailureLimits {
                limit: settings.failure_limit,
                window: settings.failure_window,
                try_interval: settings.throttled_try_interval,
            }),
            checks: KnownChecks::new(),
            settings,
        }
    }

    /// The check value last read for `id`, if any (see `checks`).
    pub fn known_check(&self, id: &KeyId) -> Option<Box<str>> {
        self.checks.get(id)
    }

    pub fn note_check(&self, id: &KeyId, check: &str) {
        self.checks.note(id, check);
    }

    pub fn lookup(&self, id: &str, digest: &KeyDigest) -> Lookup {
        self.proven.lookup(id, digest)
    }

    /// [`VerifyCache::lookup`] without counting it (a second look after waiting for a flight).
    pub fn peek(&self, id: &str, digest: &KeyDigest) -> Lookup {
        self.proven.peek(id, digest)
    }

    pub fn staleness_limit(&self) -> Duration {
        self.settings.staleness_limit
    }

    pub fn is_fresh(&self, proven: &Proven, now: Timestamp) -> bool {
        self.proven.is_fresh(proven, now)
    }

    /// The generation to pass to [`VerifyCache::remember`] for a read that starts now.
    pub fn generation(&self) -> u64 {
        self.proven.generation()
    }

    /// Caches a proven key read at `generation`, unless an invalidation happened since.
    pub fn remember(
        &self,
        digest: KeyDigest,
        record: Arc<crate::model::KeyRecord>,
        fetched_at: Timestamp,
        generation: u64,
    ) -> Option<Arc<Proven>> {
        self.proven.remember(digest, record, fetched_at, generation)
    }

    /// Drops everything cached about `id`; the next Verify of it reads the store.
    pub fn forget(&self, id: &KeyId) {
        self.proven.forget(id);
        self.unknown.forget(id);
    }

    /// Marks every cached record stale: each is re-read from the store (no argon2) before it
    /// answers again. For when an invalidation may have been missed (a lost listener).
    pub fn expire_all(&self) {
        self.proven.expire_all();
        self.unknown.clear();
    }

    /// Drops only the "unknown id" memory of `id` (a key with that id now exists).
    pub fn forget_unknown(&self, id: &KeyId) {
        self.unknown.forget(id);
    }

    /// Whether the store said at most the negative TTL ago that `id` does not exist.
    pub fn is_unknown(&self, id: &KeyId, now: Timestamp) -> bool {
        self.unknown.contains(id, now)
    }

    pub fn mark_unknown(&self, id: &KeyId, now: Timestamp) {
        self.unknown.mark(id, now);
    }

    /// Whether an unproven attempt on `id` may run argon2 at `now`: yes below the failure
    /// limit; past it, once per `throttled_try_interval` (the attempt let through is counted
    /// at once, so concurrent callers do not all pass).
    pub fn admit_unproven(&self, id: &KeyId, now: Timestamp) -> Admission {
        self.failures.judge(id, now, true)
    }

    /// [`VerifyCache::admit_unproven`] without taking the try: whether an attempt at `now`
    /// would be throttled (checked before waiting for the id's flight, so that a pile of
    /// throttled attempts holds nothing while it waits).
    pub fn is_throttled(&self, id: &KeyId, now: Timestamp) -> Option<Duration> {
        match self.failures.judge(id, now, false) {
            Admission::Throttled(wait) => Some(wait),
            Admission::Try => None,
        }
    }

    /// Counts a failed secret for `id`; a window older than `failure_window` starts over.
    pub fn note_failure(&self, id: &KeyId, now: Timestamp) {
        self.failures.note(id, now);
    }

    /// Proven keys held now (for metrics and the benchmark).
    pub fn len(&self) -> u64 {
        self.proven.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes the proven keys are counted for now.
    pub fn weight(&self) -> u64 {
        self.proven.weight()
    }
}
