//! The key authority: every operation of the service as plain Rust. It owns the rules (grace
//! limits, the Verify order, invalidation before return) and drives the store, the hasher and
//! the caches. It never sees wire types; the clock is read once per operation.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::auth_failures::{AuthFailureSettings, AuthFailures};
use crate::cache::{Admission, CacheSettings, Flights, Lookup, Proven, VerifyCache};
use crate::catalog::Catalog;
use crate::changes::ChangeHub;
use crate::clock::{Clock, Timestamp};
use crate::error::Error;
use crate::hashing::Hasher;
use crate::key::{KeyIdOf, KeyView, PresentedKey};
use crate::key_filter::{KeyFilter, ProbeBudget};
use crate::model::{
    ApplicationId, Environment, KeyId, KeyIdText, KeyRecord, KeyState, KeyStates, Metadata,
    Permissions, Verdict,
};
use crate::model::{REASON_MAX, check_text};
use crate::paging::PageTokens;
use crate::sealing::{IdempotencyKey, Sealer};
use crate::store::{
    ApplicationSummary, AuditEvent, Changed, Cursor, EventFilter, EventQuery, Exposed, Exposure,
    IdempotentWrite, KeyListing, KeyUpdate, Provenance, Rolled, Store, Successor, Updated,
};
use crate::usage::UsageRecorder;

pub const DEFAULT_GRACE: Duration = Duration::from_secs(24 * 3600);
pub const MAX_GRACE: Duration = Duration::from_secs(7 * 24 * 3600);
pub const DEFAULT_PAGE_SIZE: u32 = 50;
pub const DEFAULT_IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 3600);
pub const MAX_PAGE_SIZE: u32 = 1000;
const PAGE_TOKEN_SETTING: &str = "page_token_key";
/// Keys one report of leaked keys may carry.
pub const MAX_EXPOSED_KEYS: usize = 1000;
/// Characters of a report's `source` and `url` at most.
pub const EXPOSURE_TEXT_MAX: usize = 2000;

/// What a report of a leaked key found and did. Never holds the key itself.
#[derive(Debug)]
pub enum ExposureOutcome {
    /// Not shaped like a key keyauth issues, or a wrong checksum: nothing was looked up.
    NotAKey,
    /// Well-formed, but not a key of this authority: no such id, or not its secret.
    Unknown { id: KeyId, redacted: String },
    /// A key of this authority, revoked now, with an `exposed` event.
    Revoked(KeyRecord),
    /// A key of this authority that was revoked before: nothing changed.
    AlreadyRevoked(KeyRecord),
}

impl ExposureOutcome {
    /// Whether the report named a real key of this authority (GitHub's `true_positive`).
    pub fn is_ours(&self) -> bool {
        matches!(
            self,
            ExposureOutcome::Revoked(_) | ExposureOutcome::AlreadyRevoked(_)
        )
    }
}

/// A validated IssueKey request.
#[derive(Debug)]
pub struct NewKey {
    pub application_id: ApplicationId,
    pub environment: Environment,
    pub name: String,
    /// Empty: a standard key.
    pub permissions: Permissions,
    pub expire_time: Option<Timestamp>,
    pub metadata: Metadata,
}

/// An operator call made with an idempotency key.
pub struct Idempotency<'a> {
    /// Non-secret id of the operator token: records are scoped per operator.
    pub operator: &'a str,
    pub key: &'a IdempotencyKey,
    /// Fingerprint of the method and request.
    pub fingerprint: String,
    /// Encodes the response (without its secret) from what the change produced.
    pub respond: &'a (dyn Fn(&Changed<'_>) -> Vec<u8> + Send + Sync),
}

impl Idempotency<'_> {
    /// What a sealed secret is bound to: it opens for this record only.
    fn context(&self) -> Vec<u8> {
        format!(
            "{}\0{}\0{}",
            self.operator,
            self.key.as_str(),
            self.fingerprint
        )
        .into_bytes()
    }
}

/// A stored response replayed for a retry: the encoded message, and its secret if it had one.
pub struct Replay {
    pub response: Vec<u8>,
    pub secret: Option<zeroize::Zeroizing<String>>,
}

/// A key just made, with its full key (shown once).
pub struct Issued {
    pub record: KeyRecord,
    pub key: PresentedKey,
}

/// What [`Authority::verify_from_memory`] made of a Verify.
#[derive(Debug)]
pub enum Recall {
    /// Answered from memory.
    Answered(Result<Verdict, Error>),
    /// The store or argon2 is needed: [`Authority::verify_waiting`].
    Wait(Waiting),
}

/// A Verify that has to wait, as [`Authority::verify_from_memory`] left it.
#[derive(Debug)]
pub struct Waiting {
    pending: Pending,
    now: Timestamp,
}

#[derive(Debug)]
enum Pending {
    /// A proven key whose cached record is older than the TTL.
    Refresh(Arc<Proven>),
    /// A key not in the cache.
    Prove(PresentedKey),
}

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
    idempotency_ttl: Duration,
    /// Every key id of the store (a Bloom filter): unknown ids are refused from memory.
    keys: KeyFilter,
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
            idempotency_ttl: DEFAULT_IDEMPOTENCY_TTL,
            keys,
            probes: ProbeBudget::new(PROBE_BURST, PROBES_PER_SECOND),
            keys_listed_after_event,
            flights: Flights::default(),
            cold,
            auth_failures: AuthFailures::new(AuthFailureSettings::default()),
            changes: ChangeHub::default(),
        })
    }

    /// Sets the limit and retention of refused operator calls.
    pub fn with_auth_failures(mut self, settings: AuthFailureSettings) -> Self {
        self.auth_failures = AuthFailures::new(settings);
        self
    }

    /// The `key_events` sequence the change follower starts after (see `propagation`).
    pub fn keys_listed_after_event(&self) -> i64 {
        self.keys_listed_after_event
    }

    /// A key exists (made by another instance, heard from the change feed).
    pub fn note_key_exists(&self, id: &KeyId) {
        self.keys.insert(id);
        self.cache.forget_unknown(id);
    }

    /// Rebuilds the key filter if more keys were added than it was sized for (housekeeping).
    pub async fn maintain_key_filter(&self) -> Result<bool, Error> {
        if !self.keys.needs_rebuild() {
            return Ok(false);
        }
        self.rebuild_key_filter().await?;
        Ok(true)
    }

    /// Rebuilds the key filter from the store now (keys added meanwhile are kept).
    pub async fn rebuild_key_filter(&self) -> Result<(), Error> {
        self.keys.rebuild(self.store.as_ref()).await?;
        let (held, capacity, bytes) = self.keys.stats();
        tracing::info!(keys = held, capacity, bytes, "key filter rebuilt");
        Ok(())
    }

    /// A permit for a cold lookup, or UNAVAILABLE at once when too many are in flight.
    fn cold_permit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Error> {
        self.cold
            .clone()
            .try_acquire_owned()
            .map_err(|_| Error::Overloaded)
    }

    /// Enables idempotent replay of secret-bearing responses (with a seal key) and sets how
    /// long responses are kept.
    pub fn with_idempotency(mut self, sealer: Sealer, ttl: Duration) -> Self {
        self.sealer = sealer;
        self.idempotency_ttl = ttl;
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

    /// The store answered just now (called by the change follower).
    pub fn note_store_contact(&self) {
        self.contact.note();
    }

    /// Whether the store has been unheard from for longer than the staleness limit.
    fn cut_off(&self) -> bool {
        self.contact
            .silent_for()
            .is_some_and(|d| d > self.cache.staleness_limit())
    }

    /// Generates a key and the record that stores it (hash only).
    async fn mint(&self, new: NewKey, now: Timestamp) -> Result<Issued, Error> {
        let key = PresentedKey::generate(new.environment).map_err(Error::internal)?;
        let secret_hash = self.hasher.hash(key.secret(), None).await?;
        let record = KeyRecord {
            id: key.id(),
            application_id: new.application_id,
            environment: new.environment,
            name: new.name,
            secret_hash,
            redacted: key.redacted(),
            restricted: !new.permissions.is_empty(),
            permissions: new.permissions,
            metadata: new.metadata,
            create_time: now,
            expire_time: new.expire_time,
            revoke_time: None,
            revoke_reason: None,
            last_used_time: None,
            replaced_by: None,
            memo: Default::default(),
        };
        Ok(Issued { record, key })
    }

    /// The idempotency record to write with a change, the secret (if any) sealed.
    fn idempotent_write<'a>(
        &self,
        idem: Option<&'a Idempotency<'a>>,
        secret: Option<&PresentedKey>,
        now: Timestamp,
    ) -> Result<Option<IdempotentWrite<'a>>, Error> {
        let Some(idem) = idem else { return Ok(None) };
        let sealed_secret = match secret {
            Some(key) => Some(self.sealer.seal(key.expose(), &idem.context())?),
            None => None,
        };
        Ok(Some(IdempotentWrite {
            operator: idem.operator,
            key: idem.key.as_str(),
            fingerprint: &idem.fingerprint,
            sealed_secret,
            create_time: now,
            expire_time: now.saturating_add(self.idempotency_ttl),
            respond: idem.respond,
        }))
    }

    /// The stored response of an earlier call with this idempotency key, if any. A different
    /// request under the same key is refused.
    pub async fn replay(&self, idem: &Idempotency<'_>) -> Result<Option<Replay>, Error> {
        let Some(record) = self
            .store
            .idempotency_record(idem.operator, idem.key.as_str(), self.now())
            .await?
        else {
            return Ok(None);
        };
        if record.fingerprint != idem.fingerprint {
            return Err(Error::IdempotencyKeyReused);
        }
        let secret = match &record.sealed_secret {
            Some(sealed) => Some(zeroize::Zeroizing::new(
                self.sealer.open(sealed, &idem.context())?,
            )),
            None => None,
        };
        tracing::info!(
            idempotency_key = crate::error::echo(idem.key.as_str()),
            "replaying a stored response"
        );
        Ok(Some(Replay {
            response: record.response,
            secret,
        }))
    }

    pub async fn issue(
        &self,
        new: NewKey,
        who: &Provenance,
        idem: Option<&Idempotency<'_>>,
    ) -> Result<Issued, Error> {
        let now = self.now();
        if new.expire_time.is_some_and(|e| e <= now) {
            return Err(Error::invalid("expire_time", "must be in the future"));
        }
        let issued = self.mint(new, now).await?;
        let write = self.idempotent_write(idem, Some(&issued.key), now)?;
        self.store
            .insert_key(&issued.record, who, write.as_ref())
            .await?;
        // After the commit, not before: a filter rebuild that listed the store before the
        // commit is under way now, and keeps what is added meanwhile (added before it
        // started, the key would be in neither its listing nor its additions). The caller
        // learns the key only from this call's answer, after this line.
        self.keys.insert(&issued.record.id);
        self.cache.forget(&issued.record.id);
        self.changes.note_commit();
        tracing::info!(key_id = %issued.record.id, application_id = issued.record.application_id.as_str(), "key issued");
        Ok(issued)
    }

    /// Rolls `id`: returns the new key and the old key as it now stands. The new key expires
    /// at `expire_time` if given (in the future), else when the old key would have: a roll
    /// never extends a key's lifetime by itself.
    pub async fn roll(
        &self,
        id: &KeyId,
        grace: Option<Duration>,
        expire_time: Option<Timestamp>,
        who: &Provenance,
        idem: Option<&Idempotency<'_>>,
    ) -> Result<(Issued, KeyRecord), Error> {
        let grace = grace.unwrap_or(DEFAULT_GRACE);
        if grace > MAX_GRACE {
            return Err(Error::invalid(
                "grace_period",
                "must be at most 7 days (604800s)",
            ));
        }
        let now = self.now();
        if expire_time.is_some_and(|e| e <= now) {
            return Err(Error::invalid("expire_time", "must be in the future"));
        }
        // Read here only to refuse early, before argon2's time is spent: what the new key
        // inherits is read again by the store inside the transaction that claims `old`, so a
        // change committed meanwhile (UpdateKey) is carried over, never undone.
        let old = self
            .store
            .get_key(id)
            .await?
            .ok_or_else(|| Error::KeyNotFound(id.to_string()))?;
        refuse_roll(&old, now)?;
        let key = PresentedKey::generate(old.environment).map_err(Error::internal)?;
        let successor = Successor {
            id: key.id(),
            secret_hash: self.hasher.hash(key.secret(), None).await?,
            redacted: key.redacted(),
            create_time: now,
            expire_time,
        };
        let write = self.idempotent_write(idem, Some(&key), now)?;
        let outcome = self
            .store
            .roll_key(
                id,
                &successor,
                now.saturating_add(grace),
                now,
                who,
                write.as_ref(),
            )
            .await;
        self.cache.forget(id);
        match outcome? {
            Rolled::Done { new, previous } => {
                // After the commit (see `issue`).
                self.keys.insert(&new.id);
                self.changes.note_commit();
                tracing::info!(key_id = %id, new_key_id = %new.id, grace_secs = grace.as_secs(), "key rolled");
                Ok((Issued { record: new, key }, previous))
            }
            Rolled::NotFound => Err(Error::KeyNotFound(id.to_string())),
            Rolled::Refused(current) => {
                refuse_roll(&current, now)?;
                Err(Error::internal("roll refused for an active, unrolled key"))
            }
        }
    }

    pub async fn revoke(
        &self,
        id: &KeyId,
        reason: Option<&str>,
        who: &Provenance,
        idem: Option<&Idempotency<'_>>,
    ) -> Result<KeyRecord, Error> {
        let now = self.now();
        let write = self.idempotent_write(idem, None, now)?;
        let outcome = self
            .store
            .revoke_key(id, now, reason, who, write.as_ref())
            .await;
        self.cache.forget(id);
        let record = outcome?.ok_or_else(|| Error::KeyNotFound(id.to_string()))?;
        self.changes.note_commit();
        tracing::info!(key_id = %id, "key revoked");
        // As stored: an idempotent retry replays exactly this.
        Ok(record)
    }

    /// Changes a key's name, metadata, permissions or expiry (UpdateKey), with an `updated`
    /// event; every cache of this instance forgets the key before this returns (other
    /// instances hear of it through the event). A revoked key is refused, and so is a new
    /// expiry for a rolled key (its expiry is the end of its grace period).
    pub async fn update(
        &self,
        id: &KeyId,
        update: &KeyUpdate,
        who: &Provenance,
        idem: Option<&Idempotency<'_>>,
    ) -> Result<KeyRecord, Error> {
        let now = self.now();
        if update.paths().is_empty() {
            return Err(Error::invalid("update_mask", "names no field to update"));
        }
        if let Some(Some(t)) = update.expire_time
            && t <= now
        {
            return Err(Error::invalid("key.expire_time", "must be in the future"));
        }
        let write = self.idempotent_write(idem, None, now)?;
        let outcome = self
            .store
            .update_key(id, update, now, who, write.as_ref())
            .await;
        self.cache.forget(id);
        match outcome? {
            Updated::Done(record) => {
                self.changes.note_commit();
                tracing::info!(key_id = %id, paths = ?update.paths(), "key updated");
                Ok(record)
            }
            Updated::NotFound => Err(Error::KeyNotFound(id.to_string())),
            Updated::Refused(current) if current.revoke_time.is_some() => {
                Err(Error::FailedPrecondition {
                    reason: "KEY_REVOKED",
                    message: format!("key {id} cannot be updated: it is revoked"),
                })
            }
            Updated::Refused(current) => Err(Error::FailedPrecondition {
                reason: "KEY_ALREADY_ROLLED",
                message: format!(
                    "the expiry of key {id} cannot be changed: it was rolled to {} and expires \
                     at the end of its grace period",
                    current
                        .replaced_by
                        .as_ref()
                        .map_or_else(String::new, ToString::to_string)
                ),
            }),
        }
    }

    /// Applications that have keys, by id, with their key counts per environment and state
    /// at now, a page at a time.
    pub async fn list_applications(
        &self,
        page_size: u32,
        page_token: &str,
    ) -> Result<(Vec<ApplicationSummary>, String), Error> {
        let size = match page_size {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        };
        let after = match page_token {
            "" => None,
            token => Some(self.page_tokens.open_applications(token)?),
        };
        let mut apps = self
            .store
            .list_applications(after.as_ref(), size + 1, self.now())
            .await?;
        let next = if apps.len() > size as usize {
            apps.truncate(size as usize);
            let last = apps.last().expect("a full page has a last application");
            self.page_tokens.issue_applications(&last.application_id)
        } else {
            String::new()
        };
        Ok((apps, next))
    }

    pub async fn get(&self, id: &KeyId) -> Result<KeyRecord, Error> {
        let record = self
            .store
            .get_key(id)
            .await?
            .ok_or_else(|| Error::KeyNotFound(id.to_string()))?;
        Ok(self.with_pending_use(record))
    }

    pub async fn list(
        &self,
        application: &ApplicationId,
        environment: Option<Environment>,
        states: KeyStates,
        page_size: u32,
        page_token: &str,
    ) -> Result<(Vec<KeyRecord>, String), Error> {
        let size = match page_size {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        };
        let cursor = match page_token {
            "" => None,
            token => Some(
                self.page_tokens
                    .open(application, environment, states, token)?,
            ),
        };
        let listing = KeyListing {
            environment,
            states,
            now: self.now(),
        };
        let mut keys = self
            .store
            .list_keys(application, &listing, cursor.as_ref(), size + 1)
            .await?;
        let next = if keys.len() > size as usize {
            keys.truncate(size as usize);
            let last = keys.last().expect("a full page has a last key");
            let cursor = Cursor {
                create_time: last.create_time,
                id: last.id.clone(),
            };
            self.page_tokens
                .issue(application, environment, states, &cursor)
        } else {
            String::new()
        };
        let keys = keys.into_iter().map(|k| self.with_pending_use(k)).collect();
        Ok((keys, next))
    }

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
            Recall::Answered(answer) => answer,
            Recall::Wait(waiting) => self.verify_waiting(waiting, required, deadline).await,
        }
    }

    /// [`Authority::verify`] as far as memory answers it, without waiting: a key proven before
    /// and fresh in the cache, a malformed key, a wrong secret for a cached key, an id no key
    /// has. Otherwise (the store, argon2) what [`Authority::verify_waiting`] goes on with. The
    /// key is read where it lies: nothing is copied or allocated unless the call has to wait.
    pub fn verify_from_memory(&self, presented: &str, required: &[(String, String)]) -> Recall {
        let Some(key) = KeyView::parse(presented) else {
            return Recall::Answered(Ok(Verdict::unauthenticated()));
        };
        let id = KeyIdText::of(&key);
        let digest = key.digest();
        let now = self.now();
        let pending = match self.cache.lookup(id.as_str(), &digest) {
            // Past the staleness limit nothing is answered from memory.
            Lookup::Proven(_) | Lookup::WrongSecret if self.cut_off() => {
                return Recall::Answered(Err(Error::StoreUnreachable));
            }
            Lookup::WrongSecret => return Recall::Answered(Ok(Verdict::unauthenticated())),
            Lookup::Proven(p) if self.cache.is_fresh(&p, now) => {
                return Recall::Answered(Ok(self.judged(&p, now, required)));
            }
            Lookup::Proven(stale) => Pending::Refresh(stale),
            Lookup::Miss => {
                // An id no key has: refused from memory, unless it may be a key another
                // instance just made (a few such reads a second).
                let key = key.to_owned();
                if !self.keys.may_contain(&key.id()) && !self.probes.take(now) {
                    metrics::counter!(crate::metrics::KEY_FILTER_REFUSALS).increment(1);
                    return Recall::Answered(Ok(Verdict::unauthenticated()));
                }
                Pending::Prove(key)
            }
        };
        Recall::Wait(Waiting { pending, now })
    }

    /// The rest of a Verify that memory could not answer: the stale record re-read, or the
    /// key proven against the store (argon2id), within `deadline`.
    pub async fn verify_waiting(
        &self,
        waiting: Waiting,
        required: &[(String, String)],
        deadline: Option<Instant>,
    ) -> Result<Verdict, Error> {
        let Waiting { pending, now } = waiting;
        let proven = match pending {
            Pending::Refresh(stale) => within(deadline, self.refresh(&stale, now)).await?,
            Pending::Prove(key) => within(deadline, self.prove(&key, now, deadline)).await?,
        };
        Ok(match proven {
            Some(p) => self.judged(&p, now, required),
            None => Verdict::unauthenticated(),
        })
    }

    /// A proven key judged at `now` for `required`; its use noted when it is valid.
    fn judged(&self, proven: &Proven, now: Timestamp, required: &[(String, String)]) -> Verdict {
        let verdict = Verdict::judge(proven.record.clone(), now, required);
        if verdict.is_valid() {
            self.note_use(proven, now);
        }
        verdict
    }

    /// Cold path: one indexed read, argon2id, then cache; one at a time per key id, so
    /// concurrent first calls with one key run argon2 once.
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
        if let Some(after) = self.cache.is_throttled(&id, now) {
            return Err(Error::KeyIdThrottled(after));
        }
        // Waiting for the id's flight holds no cold-lookup permit: a pile of calls on one id
        // cannot take the permits of other keys' lookups.
        let _flight = self.flights.join(&id).await;
        // What the flight before this one found, if any.
        match self.cache.peek(id.as_str(), &key.digest()) {
            Lookup::Proven(p) if self.cache.is_fresh(&p, now) => return Ok(Some(p)),
            Lookup::WrongSecret => return Ok(None),
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
        self.keys.insert(&id);
        if record.environment != key.environment() {
            return Ok(None);
        }
        if !self
            .hasher
            .verify(key.secret(), &record.secret_hash, deadline)
            .await?
        {
            self.cache.note_failure(&id, now);
            tracing::debug!(key_id = %id, "wrong secret");
            return Ok(None);
        }
        let record = Arc::new(for_cache(record));
        Ok(Some(
            self.cache
                .remember(key.digest(), record.clone(), now, generation)
                .unwrap_or_else(|| Arc::new(Proven::uncached(record, now))),
        ))
    }

    /// Re-reads a proven key's record once its cached copy is older than the TTL; one read
    /// per key id at a time (concurrent callers use what it read).
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

    fn with_pending_use(&self, mut record: KeyRecord) -> KeyRecord {
        if let Some(at) = self.usage.pending(&record.id) {
            record.last_used_time = record.last_used_time.max(Some(at));
        }
        record
    }

    /// Handles a report of leaked keys (a secret scanner's, or an operator's): every key of
    /// this authority among `presented` that is not revoked yet is revoked, each in one
    /// transaction with an `exposed` event saying where it was found (`exposure`), and dropped
    /// from the cache. Reporting a key again changes nothing. A key counts as ours only once
    /// its secret is proven (argon2id), so a made-up string with a known id and a valid
    /// checksum cannot revoke anyone's key. One outcome per presented string, in order.
    pub async fn report_exposed(
        &self,
        presented: &[impl AsRef<str>],
        exposure: Exposure<'_>,
        who: &Provenance,
    ) -> Result<Vec<ExposureOutcome>, Error> {
        if presented.is_empty() {
            return Err(Error::invalid("keys", "at least one key is required"));
        }
        if presented.len() > MAX_EXPOSED_KEYS {
            return Err(Error::invalid(
                "keys",
                format!("at most {MAX_EXPOSED_KEYS} keys per report"),
            ));
        }
        check_text(exposure.source, "source", EXPOSURE_TEXT_MAX)?;
        if exposure.source.trim().is_empty() {
            return Err(Error::invalid("source", "is required"));
        }
        check_text(exposure.url, "url", EXPOSURE_TEXT_MAX)?;
        let reason = cut(
            &format!("exposed: reported as leaked by {}", exposure.source),
            REASON_MAX,
        );
        let mut outcomes = Vec::with_capacity(presented.len());
        for text in presented {
            let Some(key) = PresentedKey::parse(text.as_ref()) else {
                outcomes.push(ExposureOutcome::NotAKey);
                continue;
            };
            outcomes.push(self.expose(&key, &reason, exposure, who).await?);
        }
        Ok(outcomes)
    }

    /// Revokes one reported key if it is ours and not revoked yet. Not `prove`: its negative
    /// cache and failure window would let a burst of wrong secrets for an id keep the real,
    /// leaked key from being revoked.
    async fn expose(
        &self,
        key: &PresentedKey,
        reason: &str,
        exposure: Exposure<'_>,
        who: &Provenance,
    ) -> Result<ExposureOutcome, Error> {
        let id = key.id();
        let unknown = || ExposureOutcome::Unknown {
            id: key.id(),
            redacted: key.redacted(),
        };
        let Some(record) = self.store.get_key(&id).await? else {
            return Ok(unknown());
        };
        if record.environment != key.environment()
            || !self
                .hasher
                .verify(key.secret(), &record.secret_hash, None)
                .await?
        {
            tracing::info!(key_id = %id, source = exposure.source, "reported key does not match the stored secret: left alone");
            return Ok(unknown());
        }
        let now = self.now();
        let outcome = self.store.expose_key(&id, now, reason, exposure, who).await;
        self.cache.forget(&id);
        Ok(match outcome? {
            Exposed::Revoked(record) => {
                tracing::warn!(key_id = %id, application_id = record.application_id.as_str(), source = exposure.source, url = exposure.url, "key reported as leaked: revoked");
                ExposureOutcome::Revoked(record)
            }
            Exposed::AlreadyRevoked(record) => {
                tracing::info!(key_id = %id, source = exposure.source, "key reported as leaked was already revoked");
                ExposureOutcome::AlreadyRevoked(record)
            }
            Exposed::NotFound => unknown(),
        })
    }

    /// Audit events of a key, an application or the whole authority (of some types, in a time
    /// range), newest first, a page at a time. A page token holds for the same query only.
    pub async fn list_events(
        &self,
        query: &EventQuery,
        page_size: u32,
        page_token: &str,
    ) -> Result<(Vec<AuditEvent>, String), Error> {
        let size = match page_size {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        };
        if let (Some(start), Some(end)) = (query.start, query.end)
            && end <= start
        {
            return Err(Error::invalid("end_time", "must be after start_time"));
        }
        let mut scope = match &query.filter {
            EventFilter::Key(id) => format!("key:{id}"),
            EventFilter::Application(app) => format!("app:{}", app.as_str()),
            EventFilter::All => "all".to_owned(),
        };
        let mut kinds: Vec<&str> = query.kinds.iter().map(|k| k.as_str()).collect();
        kinds.sort_unstable();
        kinds.dedup();
        let micros = |t: Option<Timestamp>| t.map_or(String::new(), |t| t.as_micros().to_string());
        scope.push_str(&format!(
            "\0{}\0{}\0{}",
            kinds.join(","),
            micros(query.start),
            micros(query.end)
        ));
        let before = match page_token {
            "" => i64::MAX,
            token => self.page_tokens.open_events(&scope, token)?,
        };
        let mut events = self.store.list_events(query, before, size + 1).await?;
        let next = if events.len() > size as usize {
            events.truncate(size as usize);
            let last = events.last().expect("a full page has a last event");
            self.page_tokens.issue_events(&scope, last.seq)
        } else {
            String::new()
        };
        Ok((events, next))
    }

    /// Counts a refused operator call of `peer` (its IP address) in memory; written in
    /// aggregate by [`Authority::flush_auth_failures`]. Past the per-peer limit the refusal
    /// becomes [`Error::TooManyAuthFailures`] (instead of `refusal`).
    pub fn note_auth_failure(
        &self,
        peer: Option<&str>,
        request_id: Option<&str>,
        refusal: Error,
    ) -> Error {
        match self
            .auth_failures
            .note(peer.unwrap_or("unknown"), request_id, self.now())
        {
            Some(wait) => Error::TooManyAuthFailures(wait),
            None => refusal,
        }
    }

    /// Writes the refused operator calls counted since the last flush: one row per peer
    /// (the loudest few; the rest in one row). Returns the calls written.
    pub async fn flush_auth_failures(&self) -> Result<u64, Error> {
        let rows = self.auth_failures.take(self.now());
        if rows.is_empty() {
            return Ok(0);
        }
        let calls = rows.iter().map(|r| r.count).sum();
        if let Err(e) = self.store.record_auth_failures(&rows).await {
            self.auth_failures.restore(rows);
            return Err(e);
        }
        Ok(calls)
    }

    /// Deletes refused-operator-call rows older than the retention.
    pub async fn purge_auth_failures(&self) -> Result<u64, Error> {
        let retention = self.auth_failures.settings().retention;
        let before = Timestamp::from_micros(
            self.now()
                .as_micros()
                .saturating_sub(i64::try_from(retention.as_micros()).unwrap_or(i64::MAX)),
        );
        self.store.purge_auth_failures(before).await
    }

    /// Deletes idempotency records past their time.
    pub async fn purge_idempotency(&self) -> Result<u64, Error> {
        self.store.purge_idempotency(self.now()).await
    }

    /// Writes pending last-use times to the store in one batch.
    pub async fn flush_usage(&self) -> Result<usize, Error> {
        let batch = self.usage.take();
        let n = batch.len();
        if let Err(e) = self.store.record_last_used(&batch).await {
            self.usage.restore(batch);
            return Err(e);
        }
        Ok(n)
    }
}

/// A record as the cache keeps it: without the secret's hash, which a proven digest makes
/// unnecessary (and which is the largest field).
fn for_cache(mut record: KeyRecord) -> KeyRecord {
    record.secret_hash = String::new();
    record
}

/// `text` cut to at most `max` characters.
fn cut(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

/// Why `key` cannot be rolled at `now`, if it cannot.
fn refuse_roll(key: &KeyRecord, now: Timestamp) -> Result<(), Error> {
    let (reason, why) = match (key.state(now), &key.replaced_by) {
        (KeyState::Revoked, _) => ("KEY_REVOKED", "it is revoked".to_owned()),
        (_, Some(by)) => (
            "KEY_ALREADY_ROLLED",
            format!("it was already rolled to {by}"),
        ),
        (KeyState::Expired, None) => ("KEY_EXPIRED", "it has expired".to_owned()),
        (KeyState::Active, None) => return Ok(()),
    };
    Err(Error::FailedPrecondition {
        reason,
        message: format!("key {} cannot be rolled: {why}", key.id),
    })
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
