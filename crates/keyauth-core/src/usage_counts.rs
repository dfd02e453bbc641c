//! Verifications counted per key, per UTC hour and per outcome (valid, and each of the seed's
//! denial codes), in memory, and written to the store in batches with the last-use times:
//! never a write per call.
//!
//! The warm path counts on the proven key's own [`KeyCounter`] (an atomic add, no lock): the
//! first count of a flush interval registers the counter as dirty (one push under a lock), and
//! the flush moves every dirty counter's counts into the pending tally. Counts are kept by the
//! hour they were made in: the first count of a new hour moves the counter's counts of the
//! hour before into the tally. Denials without a proven key (a wrong secret for a real key id)
//! go straight to the tally.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::clock::Timestamp;
use crate::model::{Denial, KeyId};

/// Microseconds in an hour.
pub const HOUR_MICROS: i64 = 3_600_000_000;
/// Microseconds in a day.
pub const DAY_MICROS: i64 = 24 * HOUR_MICROS;

/// The start of `at`'s UTC hour.
pub fn hour_of(at: Timestamp) -> Timestamp {
    Timestamp::from_micros(at.as_micros().div_euclid(HOUR_MICROS) * HOUR_MICROS)
}

/// The start of `at`'s UTC day.
pub fn day_of(at: Timestamp) -> Timestamp {
    Timestamp::from_micros(at.as_micros().div_euclid(DAY_MICROS) * DAY_MICROS)
}

/// What a verification answered: valid, or one of the seed's denials.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Valid,
    Denied(Denial),
}

impl Outcome {
    fn index(self) -> usize {
        match self {
            Outcome::Valid => 0,
            Outcome::Denied(d) => 1 + Denial::ALL.iter().position(|x| *x == d).unwrap_or(0),
        }
    }
}

/// Counts of one key in one bucket: valid, then one per [`Denial::ALL`], in that order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts(pub [u64; 5]);

impl Counts {
    pub fn valid(&self) -> u64 {
        self.0[0]
    }

    /// The count of `denial`.
    pub fn denied(&self, denial: Denial) -> u64 {
        self.0[Outcome::Denied(denial).index()]
    }

    /// One more of `outcome`.
    pub fn add(&mut self, outcome: Outcome, n: u64) {
        self.0[outcome.index()] += n;
    }

    pub fn merge(&mut self, other: &Counts) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a += b;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|n| *n == 0)
    }

    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
}

/// One row to write: a key's counts in the hour starting at `hour`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageRow {
    pub key_id: KeyId,
    pub hour: Timestamp,
    pub counts: Counts,
}

/// The counts of one proven key since the last flush, all in the hour `hour`.
#[derive(Debug)]
pub struct KeyCounter {
    id: KeyId,
    hour: AtomicI64,
    counts: [AtomicU64; 5],
    /// Registered with the tally since the last flush.
    dirty: AtomicBool,
}

impl KeyCounter {
    pub fn new(id: KeyId) -> Self {
        KeyCounter {
            id,
            hour: AtomicI64::new(i64::MIN),
            counts: Default::default(),
            dirty: AtomicBool::new(false),
        }
    }

    /// Takes the counts (zeroing them) with their hour.
    fn take(&self) -> (Timestamp, Counts) {
        let mut counts = Counts::default();
        for (n, c) in counts.0.iter_mut().zip(&self.counts) {
            *n = c.swap(0, Ordering::AcqRel);
        }
        (
            Timestamp::from_micros(self.hour.load(Ordering::Acquire)),
            counts,
        )
    }
}

#[derive(Default)]
struct Pending {
    /// Hour (µs) → key → counts.
    rows: HashMap<i64, HashMap<KeyId, Counts>>,
    dirty: Vec<Arc<KeyCounter>>,
}

impl Pending {
    fn add(&mut self, id: &KeyId, hour: Timestamp, counts: &Counts) {
        if counts.is_empty() {
            return;
        }
        let keys = self.rows.entry(hour.as_micros()).or_default();
        match keys.get_mut(id) {
            Some(row) => row.merge(counts),
            None => {
                keys.insert(id.clone(), *counts);
            }
        }
    }
}

/// The counts not written yet.
#[derive(Default)]
pub struct UsageCounts {
    pending: Mutex<Pending>,
}

impl std::fmt::Debug for UsageCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UsageCounts").finish_non_exhaustive()
    }
}

impl UsageCounts {
    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts one `outcome` of the key of `counter` at `at` (the warm path: an atomic add).
    pub fn count(&self, counter: &Arc<KeyCounter>, outcome: Outcome, at: Timestamp) {
        let hour = hour_of(at).as_micros();
        if counter.hour.load(Ordering::Acquire) != hour {
            // A new hour (or the first count): what the counter holds belongs to the one
            // before. Rare; under the lock, so two threads do not both move it.
            let mut pending = self.pending();
            if counter.hour.load(Ordering::Acquire) != hour {
                let (before, counts) = counter.take();
                pending.add(&counter.id, before, &counts);
                counter.hour.store(hour, Ordering::Release);
            }
        }
        counter.counts[outcome.index()].fetch_add(1, Ordering::AcqRel);
        if !counter.dirty.load(Ordering::Acquire) && !counter.dirty.swap(true, Ordering::AcqRel) {
            self.pending().dirty.push(counter.clone());
        }
    }

    /// Counts one `outcome` of key `id` at `at` without a counter (a denial before any key
    /// was proven: a wrong secret for a real key id).
    pub fn count_id(&self, id: &KeyId, outcome: Outcome, at: Timestamp) {
        let mut counts = Counts::default();
        counts.add(outcome, 1);
        self.pending().add(id, hour_of(at), &counts);
    }

    /// Adds counts made elsewhere (ReportKeyUsage: a client's `Verifier`).
    pub fn add(&self, rows: &[UsageRow]) {
        let mut pending = self.pending();
        for row in rows {
            pending.add(&row.key_id, hour_of(row.hour), &row.counts);
        }
    }

    /// Takes every count not written yet, one row per key and hour. Under the tally's lock,
    /// so no counter moves to a new hour while its counts are taken.
    pub fn take(&self) -> Vec<UsageRow> {
        let mut pending = self.pending();
        for counter in std::mem::take(&mut pending.dirty) {
            // Cleared before the counts are taken: a count made meanwhile registers again.
            counter.dirty.store(false, Ordering::Release);
            let (hour, counts) = counter.take();
            pending.add(&counter.id, hour, &counts);
        }
        std::mem::take(&mut pending.rows)
            .into_iter()
            .flat_map(|(hour, keys)| {
                keys.into_iter().map(move |(key_id, counts)| UsageRow {
                    key_id,
                    hour: Timestamp::from_micros(hour),
                    counts,
                })
            })
            .collect()
    }

    /// Puts back rows whose write failed, to be written with the next batch.
    pub fn restore(&self, rows: Vec<UsageRow>) {
        self.add(&rows);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(hour: i64, micros: i64) -> Timestamp {
        Timestamp::from_micros(
            1_800_000_000 * 1_000_000 / HOUR_MICROS * HOUR_MICROS + hour * HOUR_MICROS + micros,
        )
    }

    fn sorted(mut rows: Vec<UsageRow>) -> Vec<(String, Timestamp, [u64; 5])> {
        rows.sort_by_key(|r| (r.key_id.to_string(), r.hour));
        rows.into_iter()
            .map(|r| (r.key_id.to_string(), r.hour, r.counts.0))
            .collect()
    }

    #[test]
    fn counts_land_in_their_utc_hour_exactly_once() {
        let tally = UsageCounts::default();
        let a = Arc::new(KeyCounter::new(KeyId::from_store("key_a".into())));
        let b = KeyId::from_store("key_b".into());
        tally.count(&a, Outcome::Valid, at(0, 1));
        tally.count(&a, Outcome::Valid, at(0, HOUR_MICROS - 1));
        tally.count(&a, Outcome::Denied(Denial::Expired), at(0, 5));
        // The next hour: the counts before move to the tally, these start afresh.
        tally.count(&a, Outcome::Valid, at(1, 0));
        tally.count_id(&b, Outcome::Denied(Denial::AuthenticationError), at(1, 9));
        let rows = sorted(tally.take());
        assert_eq!(
            rows,
            [
                ("key_a".into(), at(0, 0), [2, 0, 0, 1, 0]),
                ("key_a".into(), at(1, 0), [1, 0, 0, 0, 0]),
                ("key_b".into(), at(1, 0), [0, 1, 0, 0, 0]),
            ]
        );
        assert!(tally.take().is_empty(), "taken once");
        // Counted again after a take: registered again.
        tally.count(
            &a,
            Outcome::Denied(Denial::InsufficientPermissions),
            at(1, 7),
        );
        let again = tally.take();
        assert_eq!(
            sorted(again.clone()),
            [("key_a".into(), at(1, 0), [0, 0, 0, 0, 1])]
        );
        // A failed write comes back, added to what was counted meanwhile.
        tally.count(&a, Outcome::Valid, at(1, 8));
        tally.restore(again);
        assert_eq!(
            sorted(tally.take()),
            [("key_a".into(), at(1, 0), [1, 0, 0, 0, 1])]
        );
    }

    #[test]
    fn concurrent_counts_are_all_kept() {
        let tally = Arc::new(UsageCounts::default());
        let a = Arc::new(KeyCounter::new(KeyId::from_store("key_a".into())));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (tally, a) = (tally.clone(), a.clone());
                std::thread::spawn(move || {
                    let mut taken = 0u64;
                    for i in 0..10_000 {
                        tally.count(&a, Outcome::Valid, at(0, i));
                        if i % 1000 == 0 {
                            taken += tally.take().iter().map(|r| r.counts.total()).sum::<u64>();
                        }
                    }
                    taken
                })
            })
            .collect();
        let taken: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
        let rest: u64 = tally.take().iter().map(|r| r.counts.total()).sum();
        assert_eq!(taken + rest, 40_000);
    }

    #[test]
    fn hours_and_days_are_utc() {
        let t = Timestamp::from_micros(DAY_MICROS * 20_000 + 13 * HOUR_MICROS + 42);
        assert_eq!(
            hour_of(t).as_micros(),
            DAY_MICROS * 20_000 + 13 * HOUR_MICROS
        );
        assert_eq!(day_of(t).as_micros(), DAY_MICROS * 20_000);
        let before_epoch = Timestamp::from_micros(-1);
        assert_eq!(hour_of(before_epoch).as_micros(), -HOUR_MICROS);
    }
}
