//! The key authority: every operation of the service as plain Rust. It owns the rules (grace
//! limits, the Verify order, invalidation before return) and drives the store, the hasher and
//! the caches. It never sees wire types; the clock is read once per operation.
//!
//! By job: the struct, its assembly and accessors here; what operations take and give back in
//! `types`; Verify in `verify`; changes (issue, roll, revoke, update, expose, idempotent
//! replay) in `lifecycle`; reads and paging in `queries`; flushes, retention and key-filter
//! upkeep in `housekeeping`. The job modules read this one and `types`, never each other.

mod housekeeping;
mod lifecycle;
mod queries;
mod types;
mod verify;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::auth_failures::{AuthFailureSettings, AuthFailures};
use crate::cache::{CacheSettings, Flights, VerifyCache};
use crate::catalog::Catalog;
use crate::changes::ChangeHub;
use crate::check_value::CheckKeys;
use crate::clock::{Clock, Timestamp};
use crate::denials::Denials;
use crate::error::Error;
use crate::hashing::Hasher;
use crate::key_filter::{KeyFilter, ProbeBudget};
use crate::lifetime::LifetimeBounds;
use crate::paging::PageTokens;
use crate::sealing::Sealer;
use crate::store::Store;
use crate::usage::UsageRecorder;
use crate::usage_counts::UsageCounts;

pub use types::{ExposureOutcome, FromMemory, Idempotency, Issued, NewKey, Replay, Waiting};

pub const DEFAULT_GRACE: Duration = Duration::from_secs(24 * 3600);
pub const MAX_GRACE: Duration = Duration::from_secs(7 * 24 * 3600);
pub const DEFAULT_PAGE_SIZE: u32 = 50;
pub const DEFAULT_IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 3600);
/// How long usage counts are kept: by the hour, then by the day.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UsageRetention {
    /// Hourly counts older than this are folded into daily ones.
    pub hourly: Duration,
    /// Counts older than this are deleted.
    pub total: Duration,
}

impl Default for UsageRetention {
    fn default() -> Self {
        UsageRetention {
            hourly: Duration::from_secs(90 * 24 * 3600),
            total: Duration::from_secs(400 * 24 * 3600),
        }
    }
}

/// How long before its expiry a key gets its `expiring` event unless told otherwise.
pub const DEFAULT_EXPIRY_WARNING: Duration = Duration::from_secs(7 * 24 * 3600);
pub const MAX_PAGE_SIZE: u32 = 1000;
const PAGE_TOKEN_SETTING: &str = "page_token_key";
/// Keys one report of leaked keys may carry.
pub const MAX_EXPOSED_KEYS: usize = 1000;
/// Characters of a report's `source` and `url` at most.
pub const EXPOSURE_TEXT_MAX: usize = 2000;

pub struct Authority {
    store: Arc<dyn Store>,
    hasher: Hasher,
    catalog: Catalog,
    clock: Clock,
    cache: VerifyCache,
    usage: UsageRecorder,
    page_tokens: PageTokens,
    contact: StoreContact,
    sealer: Sealer,
    /// Makes and judges secrets' check values (a wrong secret refused without argon2).
    checks: CheckKeys,
    idempotency_ttl: Duration,
    /// Every key id of the store (a Bloom filter): unknown ids are refused from memory.
    key_filter: KeyFilter,
    /// Ids absent from `keys` that may still be read from the store (a change of another
    /// instance not yet heard of).
    probes: ProbeBudget,
    /// The `key_events` sequence before `keys` was listed: the change follower starts there,
    /// so no key made meanwhile by another instance escapes the filter.
    keys_listed_after_event: i64,
    /// One cold proof or refresh per key id at a time.
    flights: Flights,
    /// Refused operator calls, counted per peer until written.
    auth_failures: AuthFailures,
    /// Calls refused PERMISSION_DENIED, counted per principal until written.
    denials: Denials,
    /// Verifications counted per key, hour and outcome, until written.
    counts: UsageCounts,
    /// The longest lifetime of a key per environment.
    lifetimes: LifetimeBounds,
    /// How long before its expiry a key gets its `expiring` event.
    expiry_warning: Duration,
    /// How long usage counts are kept by the hour, and at all.
    usage_retention: UsageRetention,
    /// Cold lookups in flight; past `max_cold_lookups`, UNAVAILABLE at once.
    cold: Arc<tokio::sync::Semaphore>,
    changes: ChangeHub,
}

/// Ids absent from the key filter read from the store anyway: at most this many at once…
const PROBE_BURST: u32 = 10;
/// …and this many a second.
const PROBES_PER_SECOND: u32 = 10;

/// When the change follower last heard from the store (monotonic). Untracked until the
/// follower first reports, so an authority used without one never counts as cut off.
struct StoreContact {
    origin: Instant,
    /// Milliseconds since `origin`, plus one; 0 = untracked.
    last_ms: std::sync::atomic::AtomicU64,
}

impl StoreContact {
    fn note(&self) {
        let ms = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms.saturating_add(1), Ordering::Relaxed);
    }

    fn silent_for(&self) -> Option<Duration> {
        match self.last_ms.load(Ordering::Relaxed) {
            0 => None,
            last => Some(
                self.origin
                    .elapsed()
                    .saturating_sub(Duration::from_millis(last - 1)),
            ),
        }
    }
}

impl Authority {
    pub async fn new(
        store: Arc<dyn Store>,
        hasher: Hasher,
        catalog: Catalog,
        clock: Clock,
        cache: CacheSettings,
    ) -> Result<Self, Error> {
        let fresh = crate::key::random_base62(43).map_err(Error::internal)?;
        let page_key = store.setting_or_insert(PAGE_TOKEN_SETTING, &fresh).await?;
        let keys_listed_after_event = store.latest_event().await?;
        let keys = KeyFilter::load(store.as_ref()).await?;
        let (held, capacity, bytes) = keys.stats();
        tracing::info!(keys = held, capacity, bytes, "key filter built");
        let cold = Arc::new(tokio::sync::Semaphore::new(cache.max_cold_lookups.max(1)));
        Ok(Authority {
            store,
            hasher,
            catalog,
            clock,
            cache: VerifyCache::new(cache),
            usage: UsageRecorder::default(),
            page_tokens: PageTokens::new(page_key.into_bytes()),
            contact: StoreContact {
                origin: Instant::now(),
                last_ms: std::sync::atomic::AtomicU64::new(0),
            },
            sealer: Sealer::new(None),
            checks: CheckKeys::default(),
            idempotency_ttl: DEFAULT_IDEMPOTENCY_TTL,
            key_filter: keys,
            probes: ProbeBudget::new(PROBE_BURST, PROBES_PER_SECOND),
            keys_listed_after_event,
            flights: Flights::default(),
            cold,
            auth_failures: AuthFailures::new(AuthFailureSettings::default()),
            denials: Denials::default(),
            counts: UsageCounts::default(),
            lifetimes: LifetimeBounds::NONE,
            expiry_warning: DEFAULT_EXPIRY_WARNING,
            usage_retention: UsageRetention::default(),
            changes: ChangeHub::default(),
        })
    }

    /// Sets the limit and retention of refused operator calls.
    pub fn with_auth_failures(mut self, settings: AuthFailureSettings) -> Self {
        self.auth_failures = AuthFailures::new(settings);
        self
    }

    /// Bounds the lifetime of the keys issued, rolled and updated from now on.
    pub fn with_lifetime_bounds(mut self, bounds: LifetimeBounds) -> Self {
        self.lifetimes = bounds;
        self
    }

    /// Sets how long usage counts are kept by the hour, and at all.
    pub fn with_usage_retention(mut self, retention: UsageRetention) -> Self {
        self.usage_retention = retention;
        self
    }

    /// Sets how long before its expiry a key gets its `expiring` event.
    pub fn with_expiry_warning(mut self, window: Duration) -> Self {
        self.expiry_warning = window;
        self
    }

    /// The `key_events` sequence the change follower starts after (see `propagation`).
    pub fn keys_listed_after_event(&self) -> i64 {
        self.keys_listed_after_event
    }

    /// Enables idempotent replay of secret-bearing responses (with a seal key) and sets how
    /// long responses are kept.
    pub fn with_idempotency(mut self, sealer: Sealer, ttl: Duration) -> Self {
        self.sealer = sealer;
        self.idempotency_ttl = ttl;
        self
    }

    /// Keys check values with the seal key (and the previous one, during a rotation); without
    /// this they are unkeyed (see `check_value`).
    pub fn with_check_keys(mut self, checks: CheckKeys) -> Self {
        self.checks = checks;
        self
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn cache(&self) -> &VerifyCache {
        &self.cache
    }

    pub fn hasher(&self) -> &Hasher {
        &self.hasher
    }

    /// Keeps `backlog` changes for watchers that have not read them yet (default
    /// [`crate::changes::HUB_CAPACITY`]); a watcher further behind is reset.
    pub fn with_change_backlog(mut self, backlog: usize) -> Self {
        self.changes = ChangeHub::new(backlog);
        self
    }

    /// Key changes as watchers see them (fed by the change follower).
    pub fn changes(&self) -> &ChangeHub {
        &self.changes
    }

    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// The time idempotency records are judged at: the earlier of the wall clock and the
    /// steady one, so that a forward jump of the wall clock cannot age out a record a retry is
    /// about to replay (it would run the call again), and a backward one only keeps records
    /// longer.
    fn idempotency_now(&self) -> Timestamp {
        self.clock.now().min(self.clock.steady_now())
    }

    /// The store answered just now (called by the change follower).
    pub fn note_store_contact(&self) {
        self.contact.note();
    }
}

#[cfg(test)]
mod clock_tests;
#[cfg(test)]
mod model_tests;
