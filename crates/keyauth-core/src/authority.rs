//! The key authority: every operation of the service as plain Rust. It owns the rules (grace
//! limits, the Verify order, invalidation before return) and drives the store, the hasher and
//! the caches. It never sees wire types; the clock is read once per operation.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::cache::{CacheSettings, Lookup, Proven, VerifyCache};
use crate::catalog::Catalog;
use crate::changes::ChangeHub;
use crate::clock::{Clock, Timestamp};
use crate::error::Error;
use crate::hashing::Hasher;
use crate::key::{KeyIdOf, PresentedKey};
use crate::model::{
    ApplicationId, Environment, KeyId, KeyRecord, KeyState, Metadata, Permissions, Verdict,
};
use crate::paging::PageTokens;
use crate::sealing::{IdempotencyKey, Sealer};
use crate::store::{
    AuditEvent, Changed, Cursor, EventFilter, IdempotentWrite, Provenance, Rolled, Store,
};
use crate::usage::UsageRecorder;

pub const DEFAULT_GRACE: Duration = Duration::from_secs(24 * 3600);
pub const MAX_GRACE: Duration = Duration::from_secs(7 * 24 * 3600);
pub const DEFAULT_PAGE_SIZE: u32 = 50;
pub const DEFAULT_IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 3600);
pub const MAX_PAGE_SIZE: u32 = 1000;
const PAGE_TOKEN_SETTING: &str = "page_token_key";

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
    changes: ChangeHub,
}

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
            changes: ChangeHub::default(),
        })
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
            idempotency_key = idem.key.as_str(),
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
        self.cache.forget(&issued.record.id);
        self.changes.note_commit();
        tracing::info!(key_id = %issued.record.id, application_id = issued.record.application_id.as_str(), "key issued");
        Ok(issued)
    }

    /// Rolls `id`: returns the new key and the old key as it now stands.
    pub async fn roll(
        &self,
        id: &KeyId,
        grace: Option<Duration>,
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
        let old = self
            .store
            .get_key(id)
            .await?
            .ok_or_else(|| Error::KeyNotFound(id.to_string()))?;
        let now = self.now();
        refuse_roll(&old, now)?;
        let new = NewKey {
            application_id: old.application_id.clone(),
            environment: old.environment,
            name: old.name.clone(),
            permissions: old.permissions.clone(),
            expire_time: None,
            metadata: old.metadata.clone(),
        };
        let mut issued = self.mint(new, now).await?;
        issued.record.restricted = old.restricted;
        let write = self.idempotent_write(idem, Some(&issued.key), now)?;
        let outcome = self
            .store
            .roll_key(
                id,
                &issued.record,
                now.saturating_add(grace),
                now,
                who,
                write.as_ref(),
            )
            .await;
        self.cache.forget(id);
        match outcome? {
            Rolled::Done { previous } => {
                self.changes.note_commit();
                tracing::info!(key_id = %id, new_key_id = %issued.record.id, grace_secs = grace.as_secs(), "key rolled");
                Ok((issued, previous))
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
        page_size: u32,
        page_token: &str,
    ) -> Result<(Vec<KeyRecord>, String), Error> {
        let size = match page_size {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        };
        let cursor = match page_token {
            "" => None,
            token => Some(self.page_tokens.open(application, environment, token)?),
        };
        let mut keys = self
            .store
            .list_keys(application, environment, cursor.as_ref(), size + 1)
            .await?;
        let next = if keys.len() > size as usize {
            keys.truncate(size as usize);
            let last = keys.last().expect("a full page has a last key");
            let cursor = Cursor {
                create_time: last.create_time,
                id: last.id.clone(),
            };
            self.page_tokens.issue(application, environment, &cursor)
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
        let Some(key) = PresentedKey::parse(presented) else {
            return Ok(Verdict::unauthenticated());
        };
        let id = key.id();
        let digest = key.digest();
        let now = self.now();
        let proven = match self.cache.lookup(&id, &digest) {
            // Past the staleness limit nothing is answered from memory.
            Lookup::Proven(_) | Lookup::WrongSecret if self.cut_off() => {
                return Err(Error::StoreUnreachable);
            }
            Lookup::WrongSecret => return Ok(Verdict::unauthenticated()),
            Lookup::Proven(p) if self.cache.is_fresh(&p, now) => p,
            Lookup::Proven(stale) => match within(deadline, self.refresh(&stale, now)).await? {
                Some(p) => p,
                None => return Ok(Verdict::unauthenticated()),
            },
            Lookup::Miss => match within(deadline, self.prove(&key, now, deadline)).await? {
                Some(p) => p,
                None => return Ok(Verdict::unauthenticated()),
            },
        };
        let verdict = Verdict::judge(proven.record.clone(), now, required);
        if verdict.is_valid() {
            self.note_use(&proven, now);
        }
        Ok(verdict)
    }

    /// Cold path: one indexed read, argon2id, then cache.
    async fn prove(
        &self,
        key: &PresentedKey,
        now: Timestamp,
        deadline: Option<Instant>,
    ) -> Result<Option<Arc<Proven>>, Error> {
        let id = key.id();
        if self.cache.is_unknown(&id, now) || self.cache.too_many_failures(&id, now) {
            return Ok(None);
        }
        let generation = self.cache.generation();
        let Some(record) = self.store.get_key(&id).await? else {
            self.cache.mark_unknown(&id, now);
            return Ok(None);
        };
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

    /// Re-reads a proven key's record once its cached copy is older than the TTL.
    async fn refresh(&self, stale: &Proven, now: Timestamp) -> Result<Option<Arc<Proven>>, Error> {
        let generation = self.cache.generation();
        let Some(record) = self.store.get_key(&stale.record.id).await? else {
            self.cache.forget(&stale.record.id);
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

    /// Audit events of a key or an application, newest first, a page at a time.
    pub async fn list_events(
        &self,
        filter: &EventFilter,
        page_size: u32,
        page_token: &str,
    ) -> Result<(Vec<AuditEvent>, String), Error> {
        let size = match page_size {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        };
        let scope = match filter {
            EventFilter::Key(id) => format!("key:{id}"),
            EventFilter::Application(app) => format!("app:{}", app.as_str()),
        };
        let before = match page_token {
            "" => i64::MAX,
            token => self.page_tokens.open_events(&scope, token)?,
        };
        let mut events = self.store.list_events(filter, before, size + 1).await?;
        let next = if events.len() > size as usize {
            events.truncate(size as usize);
            let last = events.last().expect("a full page has a last event");
            self.page_tokens.issue_events(&scope, last.seq)
        } else {
            String::new()
        };
        Ok((events, next))
    }

    /// Records a refused operator call in the audit trail (best effort: logged if it fails).
    pub async fn record_auth_failure(&self, who: &Provenance) {
        if let Err(e) = self.store.record_auth_failure(who, self.now()).await {
            tracing::warn!(error = %e, "recording a failed operator authentication failed");
        }
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
