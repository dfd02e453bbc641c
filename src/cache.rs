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
//!   that id are refused without argon2. The owner's proven key is answered before this check,
//!   so an attacker cannot lock the owner out.
//!
//! Holds digests, never keys. Keyed by key id so that revoke and roll drop a key's entry in
//! O(1); a generation counter stops a cold-path read that raced an invalidation from caching
//! what it read.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use moka::sync::Cache;
use quick_cache::sync::Cache as QuickCache;
use quick_cache::{DefaultHashBuilder, Lifecycle, UnitWeighter};

use crate::clock::Timestamp;
use crate::key::{KeyDigest, digests_match};
use crate::model::{KeyId, KeyRecord};

#[derive(Clone, Debug)]
pub struct CacheSettings {
    /// Proven keys kept at most; 0 turns the cache off (every Verify takes the cold path).
    pub capacity: u64,
    /// Age after which a cached record is re-read from the store.
    pub ttl: Duration,
    /// How long an unknown key id is remembered.
    pub negative_ttl: Duration,
    /// Failed secrets per key id within `failure_window` before argon2 is skipped.
    pub failure_limit: u32,
    pub failure_window: Duration,
    /// How long the store may go unheard from (see `propagation`) before cached answers stop
    /// and Verify answers UNAVAILABLE.
    pub staleness_limit: Duration,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            capacity: 100_000,
            ttl: Duration::from_secs(30),
            negative_ttl: Duration::from_secs(10),
            failure_limit: 10,
            failure_window: Duration::from_secs(60),
            staleness_limit: Duration::from_secs(10),
        }
    }
}

/// A key whose full key was proven by argon2id.
#[derive(Debug)]
pub struct Proven {
    digest: KeyDigest,
    pub record: Arc<KeyRecord>,
    pub fetched_at: Timestamp,
    epoch: u64,
    /// Last use already handed to the usage recorder, to skip redundant hand-offs.
    pub last_use_noted: AtomicI64,
}

impl Proven {
    /// A proven key the cache declined to keep (disabled, or raced an invalidation).
    pub fn uncached(record: Arc<KeyRecord>, fetched_at: Timestamp) -> Self {
        Proven {
            digest: [0; 32],
            record,
            fetched_at,
            epoch: u64::MAX,
            last_use_noted: AtomicI64::new(i64::MIN),
        }
    }

    pub fn digest(&self) -> KeyDigest {
        self.digest
    }
}

/// What the cache knows about a presented key.
pub enum Lookup {
    /// Proven earlier; the record may need a refresh (see [`VerifyCache::is_fresh`]).
    Proven(Arc<Proven>),
    /// The id's proven key has another digest: the presented secret is wrong.
    WrongSecret,
    /// Nothing cached.
    Miss,
}

/// The proven-key map: quick_cache (CLOCK-PRO eviction, bounded by entries) rather than moka,
/// whose per-entry bookkeeping cost several hundred bytes a key; this map holds 100k keys.
type ProvenCache = QuickCache<KeyId, Arc<Proven>, UnitWeighter, DefaultHashBuilder, CountEvictions>;

/// Counts proven keys evicted for room.
#[derive(Clone, Default)]
struct CountEvictions;

impl Lifecycle<KeyId, Arc<Proven>> for CountEvictions {
    type RequestState = ();

    fn on_evict(&self, _: &mut (), _: KeyId, _: Arc<Proven>) {
        metrics::counter!(crate::metrics::CACHE_EVICTIONS, "cause" => "size").increment(1);
    }
}

pub struct VerifyCache {
    proven: ProvenCache,
    unknown: Cache<KeyId, ()>,
    failures: Cache<KeyId, Arc<AtomicU32>>,
    generation: AtomicU64,
    /// Bumped when an invalidation may have been missed: records cached in an earlier epoch
    /// are stale whatever their age.
    epoch: AtomicU64,
    settings: CacheSettings,
}

impl VerifyCache {
    pub fn new(settings: CacheSettings) -> Self {
        VerifyCache {
            proven: ProvenCache::with(
                usize::try_from(settings.capacity)
                    .unwrap_or(usize::MAX)
                    .max(1),
                settings.capacity.max(1),
                UnitWeighter,
                DefaultHashBuilder::default(),
                CountEvictions,
            ),
            unknown: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(settings.negative_ttl.max(Duration::from_millis(1)))
                .build(),
            failures: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(settings.failure_window.max(Duration::from_millis(1)))
                .build(),
            generation: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
            settings,
        }
    }

    pub fn lookup(&self, id: &KeyId, digest: &KeyDigest) -> Lookup {
        let (lookup, result) = match self.proven.get(id) {
            Some(p) if digests_match(&p.digest, digest) => (Lookup::Proven(p), "hit"),
            Some(_) => (Lookup::WrongSecret, "wrong_secret"),
            None => (Lookup::Miss, "miss"),
        };
        metrics::counter!(crate::metrics::CACHE_LOOKUPS, "result" => result).increment(1);
        lookup
    }

    pub fn staleness_limit(&self) -> Duration {
        self.settings.staleness_limit
    }

    pub fn is_fresh(&self, proven: &Proven, now: Timestamp) -> bool {
        now.since(proven.fetched_at) < self.settings.ttl
            && now >= proven.fetched_at
            && proven.epoch == self.epoch.load(Ordering::SeqCst)
    }

    /// The generation to pass to [`VerifyCache::remember`] for a read that starts now.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Caches a proven key read at `generation`, unless an invalidation happened since.
    pub fn remember(
        &self,
        digest: KeyDigest,
        record: Arc<KeyRecord>,
        fetched_at: Timestamp,
        generation: u64,
    ) -> Option<Arc<Proven>> {
        if self.settings.capacity == 0 || self.generation() != generation {
            return None;
        }
        let proven = Arc::new(Proven {
            digest,
            record: record.clone(),
            fetched_at,
            epoch: self.epoch.load(Ordering::SeqCst),
            last_use_noted: AtomicI64::new(i64::MIN),
        });
        self.proven.insert(record.id.clone(), proven.clone());
        // An invalidation between the check and the insert must still win.
        if self.generation() != generation {
            self.proven.remove(&record.id);
            return None;
        }
        Some(proven)
    }

    /// Drops everything cached about `id`; the next Verify of it reads the store.
    pub fn forget(&self, id: &KeyId) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.proven.remove(id);
        self.unknown.invalidate(id);
    }

    /// Marks every cached record stale: each is re-read from the store (no argon2) before it
    /// answers again. For when an invalidation may have been missed (a lost listener).
    pub fn expire_all(&self) {
        // The generation first: a read under way now must not be cached in the new epoch.
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.unknown.invalidate_all();
    }

    /// Drops only the "unknown id" memory of `id` (a key with that id now exists).
    pub fn forget_unknown(&self, id: &KeyId) {
        self.unknown.invalidate(id);
    }

    pub fn is_unknown(&self, id: &KeyId) -> bool {
        self.unknown.contains_key(id)
    }

    pub fn mark_unknown(&self, id: &KeyId) {
        self.unknown.insert(id.clone(), ());
    }

    /// Whether unproven attempts on `id` have failed too often lately.
    pub fn too_many_failures(&self, id: &KeyId) -> bool {
        self.failures
            .get(id)
            .is_some_and(|n| n.load(Ordering::Relaxed) >= self.settings.failure_limit)
    }

    pub fn note_failure(&self, id: &KeyId) {
        self.failures
            .get_with(id.clone(), || Arc::new(AtomicU32::new(0)))
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Proven keys held now (approximate, for metrics and the benchmark).
    pub fn len(&self) -> u64 {
        self.proven.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ApplicationId, Environment, Metadata, Permissions};

    fn record(id: &str) -> Arc<KeyRecord> {
        Arc::new(KeyRecord {
            id: KeyId::from_store(id.into()),
            application_id: ApplicationId::from_store("app".into()),
            environment: Environment::Test,
            name: "n".into(),
            secret_hash: String::new(),
            redacted: String::new(),
            restricted: false,
            permissions: Permissions::default(),
            metadata: Metadata::new(),
            create_time: Timestamp::EPOCH,
            expire_time: None,
            revoke_time: None,
            revoke_reason: None,
            last_used_time: None,
            replaced_by: None,
        })
    }

    #[test]
    fn proven_digest_matches_and_others_are_wrong() {
        let c = VerifyCache::new(CacheSettings::default());
        let r = record("key_a");
        let g = c.generation();
        c.remember([1; 32], r.clone(), Timestamp::EPOCH, g).unwrap();
        assert!(matches!(c.lookup(&r.id, &[1; 32]), Lookup::Proven(_)));
        assert!(matches!(c.lookup(&r.id, &[2; 32]), Lookup::WrongSecret));
        assert!(matches!(
            c.lookup(&KeyId::from_store("key_b".into()), &[1; 32]),
            Lookup::Miss
        ));
        c.forget(&r.id);
        assert!(matches!(c.lookup(&r.id, &[1; 32]), Lookup::Miss));
    }

    #[test]
    fn a_read_that_raced_an_invalidation_is_not_cached() {
        let c = VerifyCache::new(CacheSettings::default());
        let r = record("key_a");
        let g = c.generation();
        c.forget(&KeyId::from_store("key_other".into()));
        assert!(
            c.remember([1; 32], r.clone(), Timestamp::EPOCH, g)
                .is_none()
        );
        assert!(matches!(c.lookup(&r.id, &[1; 32]), Lookup::Miss));
    }

    #[test]
    fn freshness_follows_the_ttl() {
        let c = VerifyCache::new(CacheSettings {
            ttl: Duration::from_secs(30),
            ..CacheSettings::default()
        });
        let p = c
            .remember([1; 32], record("key_a"), Timestamp::from_micros(0), 0)
            .unwrap();
        assert!(c.is_fresh(&p, Timestamp::from_micros(29_999_999)));
        assert!(!c.is_fresh(&p, Timestamp::from_micros(30_000_000)));
    }

    #[test]
    fn expire_all_makes_every_record_stale() {
        let c = VerifyCache::new(CacheSettings::default());
        let p = c
            .remember([1; 32], record("key_a"), Timestamp::EPOCH, 0)
            .unwrap();
        assert!(c.is_fresh(&p, Timestamp::EPOCH));
        c.expire_all();
        assert!(!c.is_fresh(&p, Timestamp::EPOCH));
        assert!(
            matches!(c.lookup(&p.record.id, &[1; 32]), Lookup::Proven(_)),
            "still proven"
        );
        let g = c.generation();
        let q = c
            .remember([1; 32], record("key_a"), Timestamp::EPOCH, g)
            .unwrap();
        assert!(
            c.is_fresh(&q, Timestamp::EPOCH),
            "a record read afterwards is fresh"
        );
    }

    #[test]
    fn failures_block_after_the_limit() {
        let c = VerifyCache::new(CacheSettings {
            failure_limit: 3,
            ..CacheSettings::default()
        });
        let id = KeyId::from_store("key_a".into());
        for _ in 0..3 {
            assert!(!c.too_many_failures(&id));
            c.note_failure(&id);
        }
        assert!(c.too_many_failures(&id));
    }

    #[test]
    fn capacity_zero_disables_the_cache() {
        let c = VerifyCache::new(CacheSettings {
            capacity: 0,
            ..CacheSettings::default()
        });
        assert!(
            c.remember([1; 32], record("key_a"), Timestamp::EPOCH, 0)
                .is_none()
        );
    }
}
