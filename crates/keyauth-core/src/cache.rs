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
//!   key id can slow its owner's first proof on this instance, not refuse it. The owner's
//!   proven key is answered before this check.
//! - **flights**: one cold proof or refresh per key id at a time; concurrent callers of the
//!   same id wait for it and then read what it cached (single flight).
//!
//! Holds digests, never keys. Keyed by key id so that revoke and roll drop a key's entry in
//! O(1); a generation counter stops a cold-path read that raced an invalidation from caching
//! what it read.

//! Every entry carries the time it was made, judged against the `now` the authority passes
//! down: nothing here reads a clock, so tests move time instead of sleeping. The proven keys are
//! weighed in bytes (a key with large metadata takes more of the budget than a bare one).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quick_cache::sync::Cache as QuickCache;
use quick_cache::{DefaultHashBuilder, Lifecycle, UnitWeighter, Weighter};

use crate::clock::Timestamp;
use crate::key::{KeyDigest, digests_match};
use crate::model::{KeyId, KeyRecord};

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
    /// 100 MiB: about 100,000 typical keys (a name, a few permissions, little metadata: ~1 KB
    /// each, the encoded answer a Verify reuses included).
    pub const DEFAULT_MAX_BYTES: u64 = 100 * 1024 * 1024;
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

/// Entries of the small maps (unknown ids, failure windows) kept at most.
const SMALL_MAP_ENTRIES: usize = 100_000;

/// What one cached key costs beyond its record's own bytes: the `Proven` and its `Arc`, the
/// map's slot and its copy of the id.
const ENTRY_OVERHEAD: u64 = 160;
/// What a typical key's entry weighs (a short name, no metadata, its memo filled: see the
/// test `a_typical_entry_weighs_what_the_budget_assumes`): sizes the map for the budget.
const TYPICAL_ENTRY_BYTES: u64 = 1000;

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
}

impl Proven {
    fn new(digest: KeyDigest, record: Arc<KeyRecord>, fetched_at: Timestamp, epoch: u64) -> Self {
        Proven {
            digest,
            weight: record.approx_bytes() as u64 + ENTRY_OVERHEAD,
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
    /// Proven earlier; the record may need a refresh (see [`VerifyCache::is_fresh`]).
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

/// Failed secrets for one key id since `start`.
#[derive(Debug)]
struct FailureWindow {
    start: Timestamp,
    count: u32,
    /// The last unproven attempt let through once past the limit.
    last_try: Option<Timestamp>,
}

/// Whether an unproven attempt on a key id may run argon2.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    Try,
    /// Too many failures on this id: retry after this long.
    Throttled(Duration),
}

/// One cold proof or refresh per key id at a time.
#[derive(Default)]
pub struct Flights {
    running: Mutex<std::collections::HashMap<KeyId, Arc<tokio::sync::Mutex<()>>>>,
}

/// A place in the flight of one key id; held while waiting and while running.
struct Ticket<'a> {
    flights: &'a Flights,
    id: KeyId,
    lock: Option<Arc<tokio::sync::Mutex<()>>>,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let mut running = self
            .flights
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        drop(self.lock.take());
        // The map's own reference is the last one: nobody runs or waits for this id.
        if running
            .get(&self.id)
            .is_some_and(|l| Arc::strong_count(l) == 1)
        {
            running.remove(&self.id);
        }
    }
}

/// The flight of one key id: while it is held, no other caller proves or refreshes that id.
pub struct Flight<'a> {
    // Declared first: the lock is released before the ticket cleans up.
    _guard: tokio::sync::OwnedMutexGuard<()>,
    _ticket: Ticket<'a>,
}

impl Flights {
    /// Waits for the running flight of `id`, if any, and starts the next one.
    pub async fn join(&self, id: &KeyId) -> Flight<'_> {
        let lock = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id.clone())
            .or_default()
            .clone();
        let ticket = Ticket {
            flights: self,
            id: id.clone(),
            lock: Some(lock.clone()),
        };
        let guard = lock.lock_owned().await;
        Flight {
            _guard: guard,
            _ticket: ticket,
        }
    }

    /// Key ids with a flight running or waited for.
    pub fn len(&self) -> usize {
        self.running.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

pub struct VerifyCache {
    proven: ProvenCache,
    /// Key ids the store did not know, and when it said so.
    unknown: QuickCache<KeyId, Timestamp>,
    failures: QuickCache<KeyId, Arc<Mutex<FailureWindow>>>,
    generation: AtomicU64,
    /// Bumped when an invalidation may have been missed: records cached in an earlier epoch
    /// are stale whatever their age.
    epoch: AtomicU64,
    settings: CacheSettings,
}

/// Whether something made at `made` is still younger than `ttl` at `now` (a clock moved back
/// counts as expired).
fn younger(made: Timestamp, now: Timestamp, ttl: Duration) -> bool {
    now >= made && now.since(made) < ttl
}

impl VerifyCache {
    pub fn new(settings: CacheSettings) -> Self {
        VerifyCache {
            proven: ProvenCache::with(
                usize::try_from(settings.max_bytes / TYPICAL_ENTRY_BYTES)
                    .unwrap_or(usize::MAX)
                    .max(1),
                settings.max_bytes.max(1),
                ByBytes,
                DefaultHashBuilder::default(),
                CountEvictions,
            ),
            unknown: QuickCache::with_weighter(
                SMALL_MAP_ENTRIES,
                SMALL_MAP_ENTRIES as u64,
                UnitWeighter,
            ),
            failures: QuickCache::with_weighter(
                SMALL_MAP_ENTRIES,
                SMALL_MAP_ENTRIES as u64,
                UnitWeighter,
            ),
            generation: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
            settings,
        }
    }

    pub fn lookup(&self, id: &str, digest: &KeyDigest) -> Lookup {
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

    /// [`VerifyCache::lookup`] without counting it (a second look after waiting for a flight).
    pub fn peek(&self, id: &str, digest: &KeyDigest) -> Lookup {
        match self.proven.get(id) {
            Some(p) if digests_match(&p.digest, digest) => Lookup::Proven(p),
            Some(_) => Lookup::WrongSecret,
            None => Lookup::Miss,
        }
    }

    pub fn staleness_limit(&self) -> Duration {
        self.settings.staleness_limit
    }

    pub fn is_fresh(&self, proven: &Proven, now: Timestamp) -> bool {
        younger(proven.fetched_at, now, self.settings.ttl)
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
        if self.settings.max_bytes == 0 || self.generation() != generation {
            return None;
        }
        let id = record.id.clone();
        let proven = Arc::new(Proven::new(
            digest,
            record,
            fetched_at,
            self.epoch.load(Ordering::SeqCst),
        ));
        self.proven.insert(id.clone(), proven.clone());
        // An invalidation between the check and the insert must still win.
        if self.generation() != generation {
            self.proven.remove(&id);
            return None;
        }
        Some(proven)
    }

    /// Drops everything cached about `id`; the next Verify of it reads the store.
    pub fn forget(&self, id: &KeyId) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.proven.remove(id);
        self.unknown.remove(id);
    }

    /// Marks every cached record stale: each is re-read from the store (no argon2) before it
    /// answers again. For when an invalidation may have been missed (a lost listener).
    pub fn expire_all(&self) {
        // The generation first: a read under way now must not be cached in the new epoch.
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.unknown.clear();
    }

    /// Drops only the "unknown id" memory of `id` (a key with that id now exists).
    pub fn forget_unknown(&self, id: &KeyId) {
        self.unknown.remove(id);
    }

    /// Whether the store said at most the negative TTL ago that `id` does not exist.
    pub fn is_unknown(&self, id: &KeyId, now: Timestamp) -> bool {
        self.unknown
            .get(id)
            .is_some_and(|at| younger(at, now, self.settings.negative_ttl))
    }

    pub fn mark_unknown(&self, id: &KeyId, now: Timestamp) {
        self.unknown.insert(id.clone(), now);
    }

    /// Whether an unproven attempt on `id` may run argon2 at `now`: yes below the failure
    /// limit; past it, once per `throttled_try_interval` (the attempt let through is counted
    /// at once, so concurrent callers do not all pass).
    pub fn admit_unproven(&self, id: &KeyId, now: Timestamp) -> Admission {
        self.judge_unproven(id, now, true)
    }

    /// [`VerifyCache::admit_unproven`] without taking the try: whether an attempt at `now`
    /// would be throttled (checked before waiting for the id's flight, so that a pile of
    /// throttled attempts holds nothing while it waits).
    pub fn is_throttled(&self, id: &KeyId, now: Timestamp) -> Option<Duration> {
        match self.judge_unproven(id, now, false) {
            Admission::Throttled(wait) => Some(wait),
            Admission::Try => None,
        }
    }

    fn judge_unproven(&self, id: &KeyId, now: Timestamp, take: bool) -> Admission {
        let Some(window) = self.failures.get(id) else {
            return Admission::Try;
        };
        let mut w = window.lock().unwrap_or_else(|e| e.into_inner());
        if !younger(w.start, now, self.settings.failure_window)
            || w.count < self.settings.failure_limit
        {
            return Admission::Try;
        }
        let interval = self.settings.throttled_try_interval;
        match w.last_try {
            Some(at) if younger(at, now, interval) => {
                Admission::Throttled(interval.saturating_sub(now.since(at)))
            }
            _ => {
                if take {
                    w.last_try = Some(now);
                }
                Admission::Try
            }
        }
    }

    /// Counts a failed secret for `id`; a window older than `failure_window` starts over.
    pub fn note_failure(&self, id: &KeyId, now: Timestamp) {
        let window = match self.failures.get(id) {
            Some(w) => w,
            None => {
                let fresh = Arc::new(Mutex::new(FailureWindow {
                    start: now,
                    count: 0,
                    last_try: None,
                }));
                self.failures.insert(id.clone(), fresh.clone());
                fresh
            }
        };
        let mut w = window.lock().unwrap_or_else(|e| e.into_inner());
        if !younger(w.start, now, self.settings.failure_window) {
            *w = FailureWindow {
                start: now,
                count: 0,
                last_try: None,
            };
        }
        w.count = w.count.saturating_add(1);
    }

    /// Proven keys held now (for metrics and the benchmark).
    pub fn len(&self) -> u64 {
        self.proven.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes the proven keys are counted for now.
    pub fn weight(&self) -> u64 {
        self.proven.weight()
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
            memo: Default::default(),
        })
    }

    /// The typical weight the map is sized by, and the default budget's "about 100,000 keys"
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
        let keys = CacheSettings::DEFAULT_MAX_BYTES / weight;
        assert!((90_000..=130_000).contains(&keys), "{keys}");
    }

    #[test]
    fn proven_digest_matches_and_others_are_wrong() {
        let c = VerifyCache::new(CacheSettings::default());
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
        let c = VerifyCache::new(CacheSettings::default());
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

    fn secs(n: i64) -> Timestamp {
        Timestamp::from_micros(n * 1_000_000)
    }

    #[test]
    fn past_the_limit_one_try_a_second_and_the_window_expires() {
        let c = VerifyCache::new(CacheSettings {
            failure_limit: 3,
            failure_window: Duration::from_secs(60),
            throttled_try_interval: Duration::from_secs(1),
            ..CacheSettings::default()
        });
        let id = KeyId::from_store("key_a".into());
        for _ in 0..3 {
            assert_eq!(c.admit_unproven(&id, secs(10)), Admission::Try);
            c.note_failure(&id, secs(10));
        }
        // Past the limit: the first attempt of each second runs, the rest wait.
        assert_eq!(c.is_throttled(&id, secs(10)), None, "looking takes nothing");
        assert_eq!(c.admit_unproven(&id, secs(10)), Admission::Try);
        assert_eq!(c.is_throttled(&id, secs(10)), Some(Duration::from_secs(1)));
        assert_eq!(
            c.admit_unproven(&id, secs(10)),
            Admission::Throttled(Duration::from_secs(1))
        );
        assert_eq!(
            c.admit_unproven(&id, Timestamp::from_micros(10_600_000)),
            Admission::Throttled(Duration::from_millis(400))
        );
        assert_eq!(c.admit_unproven(&id, secs(11)), Admission::Try);
        assert_eq!(c.admit_unproven(&id, secs(69)), Admission::Try);
        assert!(matches!(
            c.admit_unproven(&id, secs(69)),
            Admission::Throttled(_)
        ));
        // The window has passed: every attempt runs again.
        assert_eq!(c.admit_unproven(&id, secs(70)), Admission::Try);
        assert_eq!(c.admit_unproven(&id, secs(70)), Admission::Try);
        c.note_failure(&id, secs(71));
        assert_eq!(c.admit_unproven(&id, secs(71)), Admission::Try);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_flight_per_key_id_at_a_time() {
        let flights = Arc::new(Flights::default());
        let running = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let most = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..20 {
            let (flights, running, most) = (flights.clone(), running.clone(), most.clone());
            tasks.spawn(async move {
                let _flight = flights.join(&KeyId::from_store("key_a".into())).await;
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(2)).await;
                running.fetch_sub(1, Ordering::SeqCst);
            });
        }
        // Another id is not held up by them.
        let other = flights.join(&KeyId::from_store("key_b".into())).await;
        drop(other);
        tasks.join_all().await;
        assert_eq!(most.load(Ordering::SeqCst), 1);
        assert!(flights.is_empty(), "finished flights leave nothing behind");
        // A waiter that gives up leaves nothing behind either.
        let held = flights.join(&KeyId::from_store("key_c".into())).await;
        let gave_up = tokio::time::timeout(
            Duration::from_millis(5),
            flights.join(&KeyId::from_store("key_c".into())),
        )
        .await;
        assert!(gave_up.is_err());
        drop(held);
        assert!(flights.is_empty());
    }

    #[test]
    fn unknown_ids_are_forgotten_after_the_negative_ttl() {
        let c = VerifyCache::new(CacheSettings {
            negative_ttl: Duration::from_secs(10),
            ..CacheSettings::default()
        });
        let id = KeyId::from_store("key_a".into());
        assert!(!c.is_unknown(&id, secs(0)));
        c.mark_unknown(&id, secs(0));
        assert!(c.is_unknown(&id, secs(9)));
        assert!(!c.is_unknown(&id, secs(10)));
        c.mark_unknown(&id, secs(20));
        c.forget_unknown(&id);
        assert!(!c.is_unknown(&id, secs(20)));
    }

    #[test]
    fn the_budget_is_in_bytes() {
        let c = VerifyCache::new(CacheSettings {
            max_bytes: 2_000_000,
            ..CacheSettings::default()
        });
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
        let c = VerifyCache::new(CacheSettings {
            max_bytes: 0,
            ..CacheSettings::default()
        });
        assert!(
            c.remember([1; 32], record("key_a"), Timestamp::EPOCH, 0)
                .is_none()
        );
    }
}
