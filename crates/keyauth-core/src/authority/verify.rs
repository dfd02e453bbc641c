//! Verify: memory first (the proven-key cache, the negative cache, the key filter), then the
//! store and argon2 one flight per key id within the cold-lookup permits; fail-closed once the
//! store has been unheard from past the staleness limit.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::Authority;
use super::types::{FromMemory, Pending, Waiting};
use crate::cache::{Admission, Lookup, Proven};
use crate::check_value::Check;
use crate::clock::Timestamp;
use crate::error::Error;
use crate::key::{KeyIdOf, KeyView, PresentedKey};
use crate::model::{Denial, KeyId, KeyIdText, KeyRecord, Verdict};
use crate::usage_counts::Outcome;

impl Authority {
    /// Verifies a presented key (raw or `Bearer …`) and judges it against `required`
    /// (resource, action) pairs, which the caller has checked against the catalog.
    ///
    /// Order: the secret is proven before any state is revealed; revoked before expired;
    /// permissions last. A store failure is an error (UNAVAILABLE), never a guess.
    pub async fn verify(
        &self,
        presented: &str,
        required: &[(String, String)],
        deadline: Option<Instant>,
    ) -> Result<Verdict, Error> {
        match self.verify_from_memory(presented, required) {
            FromMemory::Answered(answer) => answer,
            FromMemory::Wait(waiting) => self.verify_waiting(waiting, required, deadline).await,
        }
    }

    /// [`Authority::verify`] as far as memory answers it, without waiting: a key proven before
    /// and fresh in the cache, a malformed key, a wrong secret for a cached key, an id no key
    /// has. Otherwise (the store, argon2) what [`Authority::verify_waiting`] goes on with. The
    /// key is read where it lies: nothing is copied or allocated unless the call has to wait.
    pub fn verify_from_memory(&self, presented: &str, required: &[(String, String)]) -> FromMemory {
        let Some(key) = KeyView::parse(presented) else {
            return FromMemory::Answered(Ok(Verdict::unauthenticated()));
        };
        let id = KeyIdText::of(&key);
        let digest = key.digest();
        // The verdict is judged at wall-clock time; the caches' ages are measured on the steady
        // clock, which no jump of the wall clock moves.
        let now = self.now();
        let steady = self.clock.steady_now();
        let pending = match self.cache.lookup(id.as_str(), &digest) {
            // Past the staleness limit nothing is answered from memory.
            Lookup::Proven(_) | Lookup::WrongSecret if self.cut_off() => {
                return FromMemory::Answered(Err(Error::StoreUnreachable));
            }
            Lookup::WrongSecret => {
                self.count_wrong_secret(&key.to_owned().id(), now);
                return FromMemory::Answered(Ok(Verdict::unauthenticated()));
            }
            Lookup::Proven(p) if self.cache.is_fresh(&p, steady) => {
                return FromMemory::Answered(Ok(self.judged(&p, now, required)));
            }
            Lookup::Proven(stale) => Pending::Refresh(stale),
            Lookup::Miss => {
                // An id no key has: refused from memory, unless it may be a key another
                // instance just made (a few such reads a second).
                let key = key.to_owned();
                if !self.key_filter.may_contain(&key.id()) && !self.probes.take(steady) {
                    metrics::counter!(crate::metrics::KEY_FILTER_REFUSALS).increment(1);
                    return FromMemory::Answered(Ok(Verdict::unauthenticated()));
                }
                Pending::Prove(key)
            }
        };
        FromMemory::Wait(Waiting {
            pending,
            now,
            steady,
        })
    }

    /// The rest of a Verify that memory could not answer: the stale record re-read, or the
    /// key proven against the store (argon2id), within `deadline`.
    pub async fn verify_waiting(
        &self,
        waiting: Waiting,
        required: &[(String, String)],
        deadline: Option<Instant>,
    ) -> Result<Verdict, Error> {
        let Waiting {
            pending,
            now,
            steady,
        } = waiting;
        let proven = match pending {
            Pending::Refresh(stale) => within(deadline, self.refresh(&stale, steady)).await?,
            Pending::Prove(key) => within(deadline, self.prove(&key, steady, deadline)).await?,
        };
        Ok(match proven {
            Some(p) => self.judged(&p, now, required),
            None => Verdict::unauthenticated(),
        })
    }

    /// A proven key judged at `now` for `required`: the answer counted, its use noted when it
    /// is valid.
    fn judged(&self, proven: &Proven, now: Timestamp, required: &[(String, String)]) -> Verdict {
        let verdict = Verdict::of_proven(proven.record.clone(), now, required);
        let outcome = match verdict.denial {
            None => Outcome::Valid,
            Some(denial) => Outcome::Denied(denial),
        };
        self.counts.count(&proven.counter, outcome, now);
        if verdict.is_valid() {
            self.note_use(proven, now);
        }
        verdict
    }

    /// A wrong secret presented for `id`, a key that exists: counted as its
    /// `authentication_error` (an id no key has is counted nowhere).
    fn count_wrong_secret(&self, id: &KeyId, now: Timestamp) {
        self.counts
            .count_id(id, Outcome::Denied(Denial::AuthenticationError), now);
    }

    /// Cold path: one indexed read, argon2id, then cache; one at a time per key id, so
    /// concurrent first calls with one key run argon2 once. `now`: the steady reading (the
    /// caches' ages and windows).
    async fn prove(
        &self,
        key: &PresentedKey,
        now: Timestamp,
        deadline: Option<Instant>,
    ) -> Result<Option<Arc<Proven>>, Error> {
        let id = key.id();
        if self.cache.is_unknown(&id, now) {
            return Ok(None);
        }
        // A wrong secret for a key whose check value this instance has read: refused from
        // memory, counted against nothing, and never waiting in the flight the owner needs.
        if let Some(check) = self.cache.known_check(&id)
            && self.checks.judge(Some(&check), key.secret()) == Check::Mismatch
        {
            self.count_wrong_secret(&id, self.now());
            return Ok(None);
        }
        if let Some(after) = self.cache.is_throttled(&id, now) {
            return Err(Error::KeyIdThrottled(after));
        }
        // Waiting for the id's flight holds no cold-lookup permit: a pile of calls on one id
        // cannot take the permits of other keys' lookups.
        let _flight = self.flights.join(&id).await;
        // What the flight before this one found, if any.
        match self.cache.peek(id.as_str(), &key.digest()) {
            Lookup::Proven(p) if self.cache.is_fresh(&p, now) => return Ok(Some(p)),
            Lookup::WrongSecret => {
                self.count_wrong_secret(&id, self.now());
                return Ok(None);
            }
            _ if self.cache.is_unknown(&id, now) => return Ok(None),
            _ => {}
        }
        if let Admission::Throttled(after) = self.cache.admit_unproven(&id, now) {
            return Err(Error::KeyIdThrottled(after));
        }
        let _cold = self.cold_permit()?;
        let generation = self.cache.generation();
        let Some(record) = self.store.get_key(&id).await? else {
            self.cache.mark_unknown(&id, now);
            return Ok(None);
        };
        // It exists: a probe past the filter found a key made elsewhere.
        self.key_filter.insert(&id);
        if record.environment != key.environment() {
            self.count_wrong_secret(&id, self.now());
            return Ok(None);
        }
        let stored_check = record.secret_check.as_deref();
        if let Some(check) = stored_check {
            self.cache.note_check(&id, check);
        }
        if self.checks.judge(stored_check, key.secret()) == Check::Mismatch {
            tracing::debug!(key_id = %id, "wrong secret (check value)");
            self.count_wrong_secret(&id, self.now());
            return Ok(None);
        }
        if !self
            .hasher
            .verify(key.secret(), &record.secret_hash, deadline)
            .await?
        {
            // Only keys without a check value under our keys get here with a wrong secret
            // (and one wrong secret in 2³² for the others): rationed per id, as before.
            self.cache.note_failure(&id, now);
            tracing::debug!(key_id = %id, "wrong secret");
            self.count_wrong_secret(&id, self.now());
            return Ok(None);
        }
        if !self.checks.is_current(stored_check) {
            self.give_check_value(&id, key.secret()).await;
        }
        let record = Arc::new(for_cache(record));
        Ok(Some(
            self.cache
                .remember(key.digest(), record.clone(), now, generation)
                .unwrap_or_else(|| Arc::new(Proven::uncached(record, now))),
        ))
    }

    /// Re-reads a proven key's record once its cached copy is older than the TTL; one read
    /// per key id at a time (concurrent callers use what it read). `now`: the steady reading.
    async fn refresh(&self, stale: &Proven, now: Timestamp) -> Result<Option<Arc<Proven>>, Error> {
        let id = &stale.record.id;
        let _flight = self.flights.join(id).await;
        match self.cache.peek(id.as_str(), &stale.digest()) {
            Lookup::Proven(p) if self.cache.is_fresh(&p, now) => return Ok(Some(p)),
            // Dropped or replaced meanwhile (a revoke, a roll): judged afresh.
            Lookup::WrongSecret => return Ok(None),
            _ => {}
        }
        let _cold = self.cold_permit()?;
        let generation = self.cache.generation();
        let Some(record) = self.store.get_key(id).await? else {
            self.cache.forget(id);
            return Ok(None);
        };
        // The digest stays proven: a key's secret never changes (a roll makes a new key).
        let record = Arc::new(for_cache(record));
        Ok(Some(
            self.cache
                .remember(stale.digest(), record.clone(), now, generation)
                .unwrap_or_else(|| Arc::new(Proven::uncached(record, now))),
        ))
    }

    /// Writes the check value of a key proven without one under the current check key (made
    /// before check values, or before a seal-key rotation). A failed write is logged and
    /// tried again on a later proof: the key stays provable by argon2 meanwhile.
    async fn give_check_value(&self, id: &KeyId, secret: &[u8]) {
        let check = self.checks.make(secret);
        match self.store.set_secret_check(id, &check).await {
            Ok(()) => self.cache.note_check(id, &check),
            Err(e) => {
                tracing::warn!(key_id = %id, error = %e, "could not store a key's check value; it is proven by argon2 until it has one")
            }
        }
    }

    /// Hands a use to the recorder at most once a second per key.
    fn note_use(&self, proven: &Proven, now: Timestamp) {
        let last = proven.last_use_noted.load(Ordering::Relaxed);
        if now.as_micros().saturating_sub(last) >= 1_000_000 {
            proven
                .last_use_noted
                .store(now.as_micros(), Ordering::Relaxed);
            self.usage.note(&proven.record.id, now);
        }
    }

    /// A permit for a cold lookup, or UNAVAILABLE at once when too many are in flight.
    fn cold_permit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Error> {
        self.cold
            .clone()
            .try_acquire_owned()
            .map_err(|_| Error::Overloaded)
    }

    /// Whether the store has been unheard from for longer than the staleness limit.
    fn cut_off(&self) -> bool {
        self.contact
            .silent_for()
            .is_some_and(|d| d > self.cache.staleness_limit())
    }
}

/// A record as the cache keeps it: without the secret's hash, which a proven digest makes
/// unnecessary (and which is the largest field).
fn for_cache(mut record: KeyRecord) -> KeyRecord {
    record.secret_hash = String::new();
    record
}

/// Runs `work` within the caller's deadline, if there is one.
async fn within<T>(
    deadline: Option<Instant>,
    work: impl std::future::Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    match deadline {
        Some(d) => tokio::time::timeout_at(d.into(), work)
            .await
            .map_err(|_| Error::DeadlineExceeded)?,
        None => work.await,
    }
}

#[cfg(test)]
mod tests;
