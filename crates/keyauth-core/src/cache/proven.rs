//! The proven-key cache: per key id, the SHA-256 digest of the one full key whose secret
//! argon2id has proven, with the key's record, weighed in bytes. A generation counter stops a
//! cold-path read that raced an invalidation from caching what it read; an epoch marks every
//! record stale at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use quick_cache::sync::Cache as QuickCache;
use quick_cache::{DefaultHashBuilder, Lifecycle, Weighter};

use super::shared::younger;
use crate::clock::Timestamp;
use crate::key::{KeyDigest, digests_match};
use crate::model::{KeyId, KeyRecord};
use crate::usage_counts::KeyCounter;

/// What one cached key costs beyond its record's own bytes: the `Proven` and its `Arc`, the
/// map's slot and its copy of the id, its usage counter (another copy of the id).
const ENTRY_OVERHEAD: u64 = 280;
/// What a typical key's entry weighs (a short name, no metadata, its memo filled: see the
/// test `a_typical_entry_weighs_what_the_budget_assumes`): sizes the map for the budget.
const TYPICAL_ENTRY_BYTES: u64 = 1000;

/// 100 MiB: about 100,000 typical keys (a name, a few permissions, little metadata: ~1 KB
/// each, the encoded answer a Verify reuses included).
pub(super) const DEFAULT_MAX_BYTES: u64 = 100 * 1024 * 1024;

/// A key whose full key was proven by argon2id.
#[derive(Debug)]
pub struct Proven {
    digest: KeyDigest,
    pub record: Arc<KeyRecord>,
    pub fetched_at: Timestamp,
    epoch: u64,
    /// Bytes this entry is counted for against the budget (computed once).
    weight: u64,
    /// Last use already handed to the usage recorder, to skip redundant hand-offs.
    pub last_use_noted: AtomicI64,
    /// Verifications of this key not written yet (`usage_counts`).
    pub counter: Arc<KeyCounter>,
}

impl Proven {
    fn new(digest: KeyDigest, record: Arc<KeyRecord>, fetched_at: Timestamp, epoch: u64) -> Self {
        Proven {
            digest,
            weight: record.approx_bytes() as u64 + ENTRY_OVERHEAD,
            counter: Arc::new(KeyCounter::new(record.id.clone())),
            record,
            fetched_at,
            epoch,
            last_use_noted: AtomicI64::new(i64::MIN),
        }
    }

    /// A proven key the cache declined to keep (disabled, or raced an invalidation).
    pub fn uncached(record: Arc<KeyRecord>, fetched_at: Timestamp) -> Self {
        Proven::new([0; 32], record, fetched_at, u64::MAX)
    }

    pub fn digest(&self) -> KeyDigest {
        self.digest
    }
}

/// What the cache knows about a presented key.
pub enum Lookup {
    /// Proven earlier; the record may need a refresh (see [`VerifyCache::is_fresh`](super::VerifyCache::is_fresh)).
    Proven(Arc<Proven>),
    /// The id's proven key has another digest: the presented secret is wrong.
    WrongSecret,
    /// Nothing cached.
    Miss,
}

/// Weighs a proven key by its bytes.
#[derive(Clone, Copy, Default)]
struct ByBytes;

impl Weighter<KeyId, Arc<Proven>> for ByBytes {
    fn weight(&self, _: &KeyId, proven: &Arc<Proven>) -> u64 {
        proven.weight
    }
}

/// The proven-key map: quick_cache (CLOCK-PRO eviction, bounded by bytes), whose per-entry
/// bookkeeping is a few words; this map holds 100k keys.
type ProvenCache = QuickCache<KeyId, Arc<Proven>, ByBytes, DefaultHashBuilder, CountEvictions>;

/// Counts proven keys evicted for room.
#[derive(Clone, Default)]
struct CountEvictions;

impl Lifecycle<KeyId, Arc<Proven>> for CountEvictions {
    type RequestState = ();

    fn on_evict(&self, _: &mut (), _: KeyId, _: Arc<Proven>) {
        metrics::counter!(crate::metrics::CACHE_EVICTIONS, "cause" => "size").increment(1);
    }
}

pub(super) struct ProvenKeys {
    map: ProvenCache,
    generation: AtomicU64,
    /// Bumped when an invalidation may have been missed: records cached in an earlier epoch
    /// are stale whatever their age.
    epoch: AtomicU64,
    /// 0: nothing is kept.
    max_bytes: u64,
    /// Age after which a cached record is re-read from the store.
    ttl: Duration,
}

impl ProvenKeys {
    pub(super) fn new(max_bytes: u64, ttl: Duration) -> Self {
        ProvenKeys {
            map: ProvenCache::with(
                usize::try_from(max_bytes / TYPICAL_ENTRY_BYTES)
                    .unwrap_or(usize::MAX)
                    .max(1),
                max_bytes.max(1),
                ByBytes,
                DefaultHashBuilder::default(),
                CountEvictions,
            ),
            generation: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
            max_bytes,
            ttl,
        }
    }

    pub(super) fn lookup(&self, id: &str, digest: &KeyDigest) -> Lookup {
        let lookup = self.peek(id, digest);
        // Literal labels: the metric key is a static, built once, not per lookup.
        let counter = match lookup {
            Lookup::Proven(_) => {
                metrics::counter!(crate::metrics::CACHE_LOOKUPS, "result" => "hit")
            }
            Lookup::WrongSecret => {
                metrics::counter!(crate::metrics::CACHE_LOOKUPS, "result" => "wrong_secret")
            }
            Lookup::Miss => metrics::counter!(crate::metrics::CACHE_LOOKUPS, "result" => "miss"),
        };
        counter.increment(1);
        lookup
    }

    /// [`ProvenKeys::lookup`] without counting it (a second look after waiting for a flight).
    pub(super) fn peek(&self, id: &str, digest: &KeyDigest) -> Lookup {
        match self.map.get(id) {
            Some(p) if digests_match(&p.digest, digest) => Lookup::Proven(p),
            Some(_) => Lookup::WrongSecret,
            None => Lookup::Miss,
        }
    }

    pub(super) fn is_fresh(&self, proven: &Proven, now: Timestamp) -> bool {
        younger(proven.fetched_at, now, self.ttl)
            && proven.epoch == self.epoch.load(Ordering::SeqCst)
    }

    /// The generation to pass to [`ProvenKeys::remember`] for a read that starts now.
    pub(super) fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Caches a proven key read at `generation`, unless an invalidation happened since.
    pub(super) fn remember(
        &self,
        digest: KeyDigest,
        record: Arc<KeyRecord>,
        fetched_at: Timestamp,
        generation: u64,
    ) -> Option<Arc<Proven>> {
        if self.max_bytes == 0 || self.generation() != generation {
            return None;
        }
        let id = record.id.clone();
        let proven = Arc::new(Proven::new(
            digest,
            record,
            fetched_at,
            self.epoch.load(Ordering::SeqCst),
        ));
        self.map.insert(id.clone(), proven.clone());
        // An invalidation between the check and the insert must still win.
        if self.generation() != generation {
            self.map.remove(&id);
            return None;
        }
        Some(proven)
    }

    /// Drops the proven key of `id`; a read under way now is not cached.
    pub(super) fn forget(&self, id: &KeyId) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.map.remove(id);
    }

    /// Marks every cached record stale (a read under way now is not cached in the new epoch).
    pub(super) fn expire_all(&self) {
        // The generation first: a read under way now must not be cached in the new epoch.
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }

    pub(super) fn len(&self) -> u64 {
        self.map.len() as u64
    }

    pub(super) fn weight(&self) -> u64 {
        self.map.weight()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ApplicationId, Permissions};
    use crate::testing::records::blank_record;

    fn record(id: &str) -> Arc<KeyRecord> {
        Arc::new(blank_record(id))
    }

    fn keys(max_bytes: u64) -> ProvenKeys {
        ProvenKeys::new(max_bytes, Duration::from_secs(30))
    }

    /// (README, `--cache-max-bytes`), stay what a typical key weighs.
    #[test]
    fn a_typical_entry_weighs_what_the_budget_assumes() {
        let typical = KeyRecord {
            id: KeyId::from_store("key_AbC123xyz789".into()),
            application_id: ApplicationId::from_store("app_clinic_42".into()),
            name: "Production server".into(),
            redacted: "sk_live_AbC123...wXyZ".into(),
            restricted: true,
            permissions: Permissions::from_pairs([
                ("patients".into(), "read".into()),
                ("encounters".into(), "read".into()),
            ]),
            ..(*record("key_AbC123xyz789")).clone()
        };
        let weight = Proven::new([0; 32], Arc::new(typical), Timestamp::EPOCH, 0).weight;
        println!("a typical entry weighs {weight} bytes");
        assert!(
            (TYPICAL_ENTRY_BYTES * 4 / 5..=TYPICAL_ENTRY_BYTES * 5 / 4).contains(&weight),
            "{weight}"
        );
        let held = DEFAULT_MAX_BYTES / weight;
        assert!((90_000..=130_000).contains(&held), "{held}");
    }

    #[test]
    fn proven_digest_matches_and_others_are_wrong() {
        let c = keys(DEFAULT_MAX_BYTES);
        let r = record("key_a");
        let g = c.generation();
        c.remember([1; 32], r.clone(), Timestamp::EPOCH, g).unwrap();
        assert!(matches!(
            c.lookup(r.id.as_str(), &[1; 32]),
            Lookup::Proven(_)
        ));
        assert!(matches!(
            c.lookup(r.id.as_str(), &[2; 32]),
            Lookup::WrongSecret
        ));
        assert!(matches!(c.lookup("key_b", &[1; 32]), Lookup::Miss));
        c.forget(&r.id);
        assert!(matches!(c.lookup(r.id.as_str(), &[1; 32]), Lookup::Miss));
    }

    #[test]
    fn a_read_that_raced_an_invalidation_is_not_cached() {
        let c = keys(DEFAULT_MAX_BYTES);
        let r = record("key_a");
        let g = c.generation();
        c.forget(&KeyId::from_store("key_other".into()));
        assert!(
            c.remember([1; 32], r.clone(), Timestamp::EPOCH, g)
                .is_none()
        );
        assert!(matches!(c.lookup(r.id.as_str(), &[1; 32]), Lookup::Miss));
    }

    #[test]
    fn freshness_follows_the_ttl() {
        let c = keys(DEFAULT_MAX_BYTES);
        let p = c
            .remember([1; 32], record("key_a"), Timestamp::from_micros(0), 0)
            .unwrap();
        assert!(c.is_fresh(&p, Timestamp::from_micros(29_999_999)));
        assert!(!c.is_fresh(&p, Timestamp::from_micros(30_000_000)));
    }

    #[test]
    fn expire_all_makes_every_record_stale() {
        let c = keys(DEFAULT_MAX_BYTES);
        let p = c
            .remember([1; 32], record("key_a"), Timestamp::EPOCH, 0)
            .unwrap();
        assert!(c.is_fresh(&p, Timestamp::EPOCH));
        c.expire_all();
        assert!(!c.is_fresh(&p, Timestamp::EPOCH));
        assert!(
            matches!(c.lookup(p.record.id.as_str(), &[1; 32]), Lookup::Proven(_)),
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
    fn the_budget_is_in_bytes() {
        let c = keys(2_000_000);
        let mut big = (*record("key_big")).clone();
        for i in 0..50 {
            big.metadata.insert(format!("k{i:02}"), "v".repeat(500));
        }
        let big = Arc::new(big);
        let small = record("key_small");
        let p = c
            .remember([1; 32], big.clone(), Timestamp::EPOCH, 0)
            .unwrap();
        let q = c.remember([2; 32], small, Timestamp::EPOCH, 0).unwrap();
        assert!(p.weight > 25_000, "{}", p.weight);
        assert!(q.weight < 1_000, "{}", q.weight);
        assert_eq!(c.weight(), p.weight + q.weight);
        // 200 large keys would need ~5 MB: the 2 MB budget keeps well under that.
        for i in 0..200 {
            let mut r = (*big).clone();
            r.id = KeyId::from_store(format!("key_{i}"));
            c.remember([3; 32], Arc::new(r), Timestamp::EPOCH, 0);
        }
        assert!(c.weight() <= 2_000_000, "{}", c.weight());
        assert!(c.len() < 100, "{}", c.len());
    }

    #[test]
    fn a_zero_budget_disables_the_cache() {
        let c = keys(0);
        assert!(
            c.remember([1; 32], record("key_a"), Timestamp::EPOCH, 0)
                .is_none()
        );
    }
}
