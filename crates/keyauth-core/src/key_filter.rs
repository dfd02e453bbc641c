//! Which key ids exist, in memory: a Bloom filter of every key id of the store, so that a
//! random key with a valid checksum (garbage that passed CRC32) costs no store read.
//!
//! - Built at start-up from the store (every id, a page at a time), sized for twice the keys
//!   it holds (at least [`MIN_CAPACITY`]) at a 1% false-positive rate once full; rebuilt (by
//!   the housekeeping task) when more keys than that were added since.
//! - Kept current: the authority adds a key once its write committed (issue, roll), and the
//!   change follower adds the keys other instances made (`issued` events and a roll's new
//!   key). A filter never answers "absent" for an id added to it: no false negatives.
//! - A rebuild lists the store while keys keep being added: those added meanwhile are also
//!   kept aside and folded into the new filter when it replaces the old one, so none is lost.
//!   This relies on keys being added after their commit: a key committed after the listing
//!   read past it is added after the rebuild began, so it is kept aside.
//! - An id the filter does not hold may still have been made a moment ago by another instance
//!   whose change has not reached this one yet (milliseconds with PostgreSQL notifications).
//!   [`ProbeBudget`] lets a few such ids per second be read from the store anyway; past it they
//!   are refused from memory.
//!
//! The positions come from SipHash with random keys (std's `RandomState`), so a caller cannot
//! choose ids that collide. Nothing here is a secret: key ids are public.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::{Mutex, RwLock};
use std::time::Duration;

use crate::clock::Timestamp;
use crate::error::Error;
use crate::model::KeyId;
use crate::store::Store;

/// The smallest filter: 65,536 ids (about 77 KiB).
pub const MIN_CAPACITY: usize = 1 << 16;

/// False positives once the filter holds its capacity.
const FALSE_POSITIVE_RATE: f64 = 0.01;

/// Ids read per page when the filter is built.
const PAGE: u32 = 1000;

/// A Bloom filter over key ids (Kirsch–Mitzenmacher double hashing).
struct Bloom {
    bits: Vec<u64>,
    /// Bits in the filter.
    m: u64,
    /// Positions per id.
    k: u32,
    /// Ids it was sized for.
    capacity: usize,
    hasher: RandomState,
}

impl Bloom {
    fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        let ln2 = std::f64::consts::LN_2;
        let m = (-(capacity as f64) * FALSE_POSITIVE_RATE.ln() / (ln2 * ln2)).ceil() as u64;
        let m = m.max(64).next_multiple_of(64);
        let k = ((m as f64 / capacity as f64) * ln2)
            .round()
            .clamp(1.0, 16.0) as u32;
        Bloom {
            bits: vec![0; (m / 64) as usize],
            m,
            k,
            capacity,
            hasher: RandomState::new(),
        }
    }

    fn positions(&self, id: &KeyId) -> impl Iterator<Item = u64> + use<> {
        let h1 = self.hasher.hash_one((0u8, id.as_str()));
        let h2 = self.hasher.hash_one((1u8, id.as_str())) | 1;
        let m = self.m;
        (0..u64::from(self.k)).map(move |i| h1.wrapping_add(i.wrapping_mul(h2)) % m)
    }

    /// Adds `id`; false if every bit was set already (it was, or looked, present).
    fn insert(&mut self, id: &KeyId) -> bool {
        let mut added = false;
        for bit in self.positions(id) {
            let (word, mask) = ((bit / 64) as usize, 1u64 << (bit % 64));
            added |= self.bits[word] & mask == 0;
            self.bits[word] |= mask;
        }
        added
    }

    fn contains(&self, id: &KeyId) -> bool {
        self.positions(id)
            .all(|bit| self.bits[(bit / 64) as usize] & (1u64 << (bit % 64)) != 0)
    }

    fn bytes(&self) -> usize {
        self.bits.len() * 8
    }
}

struct Current {
    bloom: Bloom,
    /// Ids added since it was built, plus those it was built with.
    held: usize,
}

pub struct KeyFilter {
    current: RwLock<Current>,
    /// While a rebuild lists the store: the ids added meanwhile, for the new filter.
    added_during_rebuild: Mutex<Option<Vec<KeyId>>>,
}

/// Room for the keys of the store now and as many again.
fn capacity_for(keys: u64) -> usize {
    usize::try_from(keys.saturating_mul(2))
        .unwrap_or(usize::MAX)
        .max(MIN_CAPACITY)
}

impl KeyFilter {
    /// An empty filter (for a store known to be empty, and for tests).
    pub fn empty() -> Self {
        KeyFilter {
            current: RwLock::new(Current {
                bloom: Bloom::new(MIN_CAPACITY),
                held: 0,
            }),
            added_during_rebuild: Mutex::new(None),
        }
    }

    /// A filter of every key of `store`.
    pub async fn load(store: &dyn Store) -> Result<Self, Error> {
        let filter = KeyFilter::empty();
        filter.rebuild(store).await?;
        Ok(filter)
    }

    /// Whether `id` may exist (false: it certainly does not, as far as this instance has
    /// heard).
    pub fn may_contain(&self, id: &KeyId) -> bool {
        self.read().bloom.contains(id)
    }

    /// Adds an id that exists (or is about to).
    pub fn insert(&self, id: &KeyId) {
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        if current.bloom.insert(id) {
            current.held += 1;
        }
        if let Some(pending) = self
            .added_during_rebuild
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            pending.push(id.clone());
        }
    }

    /// Whether more ids were added than the filter was sized for (its false positives grow
    /// past the design rate): time for [`KeyFilter::rebuild`].
    pub fn needs_rebuild(&self) -> bool {
        let current = self.read();
        current.held > current.bloom.capacity
    }

    /// (ids held, capacity, bytes), for the log and the tests.
    pub fn stats(&self) -> (usize, usize, usize) {
        let current = self.read();
        (current.held, current.bloom.capacity, current.bloom.bytes())
    }

    /// Rebuilds the filter from the store, sized for what it holds now. Ids added while it
    /// runs are kept; a rebuild already under way makes this one a no-op.
    pub async fn rebuild(&self, store: &dyn Store) -> Result<(), Error> {
        {
            let mut pending = self
                .added_during_rebuild
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if pending.is_some() {
                return Ok(());
            }
            *pending = Some(Vec::new());
        }
        let built = Self::list(store).await;
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        let pending = self
            .added_during_rebuild
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .unwrap_or_default();
        let (mut bloom, mut held) = built?;
        for id in &pending {
            if bloom.insert(id) {
                held += 1;
            }
        }
        *current = Current { bloom, held };
        Ok(())
    }

    async fn list(store: &dyn Store) -> Result<(Bloom, usize), Error> {
        let mut bloom = Bloom::new(capacity_for(store.count_keys().await?));
        let mut held = 0;
        let mut after: Option<KeyId> = None;
        loop {
            let page = store.key_ids(after.as_ref(), PAGE).await?;
            for id in &page {
                if bloom.insert(id) {
                    held += 1;
                }
            }
            if page.len() < PAGE as usize {
                return Ok((bloom, held));
            }
            after = page.last().cloned();
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Current> {
        self.current.read().unwrap_or_else(|e| e.into_inner())
    }
}

/// A token bucket: how many ids absent from the filter may still be read from the store
/// (`burst` at once, refilled at `per_second`), judged against the `now` passed in.
pub struct ProbeBudget {
    state: Mutex<(f64, Timestamp)>,
    burst: f64,
    per_second: f64,
}

impl ProbeBudget {
    pub fn new(burst: u32, per_second: u32) -> Self {
        ProbeBudget {
            state: Mutex::new((f64::from(burst), Timestamp::EPOCH)),
            burst: f64::from(burst),
            per_second: f64::from(per_second),
        }
    }

    /// Takes one probe if one is left at `now`.
    pub fn take(&self, now: Timestamp) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (tokens, last) = *state;
        let elapsed = if now > last {
            now.since(last)
        } else {
            Duration::ZERO
        };
        let tokens = (tokens + elapsed.as_secs_f64() * self.per_second).min(self.burst);
        let last = last.max(now);
        if tokens >= 1.0 {
            *state = (tokens - 1.0, last);
            true
        } else {
            *state = (tokens, last);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(i: usize) -> KeyId {
        KeyId::from_store(format!("key_{i:012}"))
    }

    #[test]
    fn no_false_negatives_and_about_one_percent_false_positives_when_full() {
        let mut bloom = Bloom::new(10_000);
        for i in 0..10_000 {
            bloom.insert(&id(i));
        }
        assert!((0..10_000).all(|i| bloom.contains(&id(i))));
        let false_positives = (10_000..110_000)
            .filter(|&i| bloom.contains(&id(i)))
            .count();
        // 1% of 100,000 = 1,000; allow for chance.
        assert!((500..1_500).contains(&false_positives), "{false_positives}");
        assert!(bloom.bytes() < 13_000, "{}", bloom.bytes());
    }

    #[test]
    fn a_nearly_empty_filter_has_almost_no_false_positives() {
        let filter = KeyFilter::empty();
        for i in 0..100 {
            filter.insert(&id(i));
        }
        let false_positives = (100..100_100)
            .filter(|&i| filter.may_contain(&id(i)))
            .count();
        assert!(false_positives < 5, "{false_positives}");
        assert!(!filter.needs_rebuild());
    }

    #[test]
    fn past_its_capacity_it_asks_for_a_rebuild() {
        let filter = KeyFilter::empty();
        // Ids that look present already are not counted (at most the false-positive rate).
        for i in 0..MIN_CAPACITY * 11 / 10 {
            filter.insert(&id(i));
        }
        assert!(filter.needs_rebuild());
        assert!(capacity_for(1_000_000) == 2_000_000);
        assert_eq!(capacity_for(0), MIN_CAPACITY);
    }

    #[test]
    fn the_probe_budget_refills_with_time() {
        let budget = ProbeBudget::new(2, 10);
        let t = Timestamp::from_micros(1_000_000);
        assert!(budget.take(t) && budget.take(t));
        assert!(!budget.take(t));
        assert!(!budget.take(Timestamp::from_micros(1_050_000)));
        assert!(budget.take(Timestamp::from_micros(1_100_000)));
        // A clock moved back takes nothing it did not earn.
        assert!(!budget.take(Timestamp::from_micros(0)));
    }
}
