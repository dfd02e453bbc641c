//! [`Verifier`]: verify API keys in the caller's own process, in about a microsecond, and still
//! honour a revocation within milliseconds.
//!
//! - The first sight of a key is the Verify RPC: argon2 stays in keyauth. When keyauth proves
//!   the secret, the key's SHA-256 digest and record are kept in memory, and later calls are
//!   answered here: the digest compared in constant time (a wrong secret for a cached id is
//!   refused without a call), then the record judged exactly as the server judges it (revoked,
//!   then expired against the record's `expire_time`, then permissions). The plaintext key is
//!   never kept.
//! - A background task watches `WatchKeyChanges` and drops a key the moment a change for it
//!   arrives; it reconnects and resumes by revision, and drops everything on a reset.
//! - It **fails closed**: once the stream has been silent longer than the staleness limit,
//!   cached answers stop and every call goes to the RPC; if that fails too, the answer is
//!   [`Unavailable`] — never a guessed valid.
//! - Memory is bounded by entries and by bytes.
//! - A permission the server has not yet accepted for a required-permissions check goes to the
//!   RPC once (the server checks it against its catalog; a permission outside it is an
//!   `INVALID_ARGUMENT` there, and [`Unavailable`] with that status here).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use keyauth_contract::routes::Permission;
use keyauth_contract::{Denial, KeyView, digests_match};
use keyauth_proto as pb;
use quick_cache::sync::{Cache, DefaultLifecycle};
use quick_cache::{DefaultHashBuilder, Weighter};
use tonic::Status;

use crate::client::Client;

/// The answer is not known: keyauth could not be asked (or refused the question), and nothing
/// fresh enough is cached. A caller answers 503, never "valid".
#[derive(Debug, Clone)]
pub struct Unavailable(pub Status);

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the key could not be checked: {}", self.0.message())
    }
}

impl std::error::Error for Unavailable {}

/// What a request may know of the key that authenticated it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedKey {
    pub id: String,
    pub application_id: String,
    /// `test` or `live`.
    pub environment: &'static str,
    /// False: a standard key, with every permission of the catalog.
    pub restricted: bool,
    /// A restricted key's permissions: each resource with its actions.
    pub permissions: Vec<(String, Vec<String>)>,
}

impl VerifiedKey {
    fn from_api(key: &pb::ApiKey) -> Self {
        VerifiedKey {
            id: key.id.clone(),
            application_id: key.application_id.clone(),
            environment: match pb::Environment::try_from(key.environment) {
                Ok(pb::Environment::Live) => "live",
                _ => "test",
            },
            restricted: key.restricted,
            permissions: key
                .permissions
                .iter()
                .map(|p| (p.resource.clone(), p.actions.clone()))
                .collect(),
        }
    }

    /// Whether the key holds `action` on `resource`.
    pub fn allows(&self, resource: &str, action: &str) -> bool {
        !self.restricted
            || self
                .permissions
                .iter()
                .any(|(r, actions)| r == resource && actions.iter().any(|a| a == action))
    }
}

/// The answer for one presented key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// Present whenever the secret was proven (also when the key is then refused).
    pub key: Option<Arc<VerifiedKey>>,
    /// Why the key is refused; `None` when it is valid for the request.
    pub denial: Option<Denial>,
}

impl Verdict {
    pub fn is_valid(&self) -> bool {
        self.denial.is_none()
    }

    fn unauthenticated() -> Self {
        Verdict {
            key: None,
            denial: Some(Denial::AuthenticationError),
        }
    }
}

/// Settings of a [`Verifier`].
#[derive(Clone, Debug)]
pub struct VerifierOptions {
    /// How long the change stream may be silent before cached answers stop (keyauth sends a
    /// heartbeat every 2 s by default).
    pub staleness_limit: Duration,
    /// Keys kept at most.
    pub max_entries: u64,
    /// Bytes the kept keys may take at most (estimated).
    pub max_bytes: u64,
}

impl Default for VerifierOptions {
    fn default() -> Self {
        VerifierOptions {
            staleness_limit: Duration::from_secs(5),
            max_entries: 100_000,
            max_bytes: 64 * 1024 * 1024,
        }
    }
}

/// A key keyauth proved, as kept here.
struct Entry {
    digest: [u8; 32],
    key: Arc<VerifiedKey>,
    /// Microseconds since the epoch.
    expire_micros: Option<i64>,
    revoked: bool,
    weight: u64,
}

impl Entry {
    fn new(digest: [u8; 32], key: &pb::ApiKey, floor: u64) -> Self {
        let verified = VerifiedKey::from_api(key);
        let bytes = 200
            + verified.id.len()
            + verified.application_id.len()
            + verified
                .permissions
                .iter()
                .map(|(r, a)| 48 + r.len() + a.iter().map(|x| 24 + x.len()).sum::<usize>())
                .sum::<usize>();
        Entry {
            digest,
            key: Arc::new(verified),
            expire_micros: key.expire_time.as_ref().map(micros),
            revoked: key.revoke_time.is_some(),
            weight: (bytes as u64).max(floor),
        }
    }

    /// The server's rule (`keyauth_contract::verdict`): revoked, then expired, then
    /// permissions.
    fn verdict(&self, now_micros: i64, required: &[Permission]) -> Verdict {
        let required = required
            .iter()
            .map(|p| (p.resource.as_str(), p.action.as_str()));
        Verdict {
            key: Some(self.key.clone()),
            denial: keyauth_contract::verdict::judge(self, now_micros, required),
        }
    }
}

impl keyauth_contract::verdict::ProvenKey for Entry {
    fn is_revoked(&self) -> bool {
        self.revoked
    }

    fn is_expired_at(&self, now_micros: i64) -> bool {
        self.expire_micros.is_some_and(|e| e <= now_micros)
    }

    fn allows(&self, resource: &str, action: &str) -> bool {
        self.key.allows(resource, action)
    }
}

fn micros(t: &prost_types::Timestamp) -> i64 {
    t.seconds
        .saturating_mul(1_000_000)
        .saturating_add(i64::from(t.nanos / 1_000))
}

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

#[derive(Clone, Copy)]
struct ByWeight;

impl Weighter<String, Arc<Entry>> for ByWeight {
    fn weight(&self, _: &String, entry: &Arc<Entry>) -> u64 {
        entry.weight
    }
}

type Keys =
    Cache<String, Arc<Entry>, ByWeight, DefaultHashBuilder, DefaultLifecycle<String, Arc<Entry>>>;

struct State {
    client: Client,
    keys: Keys,
    /// Bumped by every change heard: an RPC answer read before a change is not kept after it.
    generation: AtomicU64,
    origin: Instant,
    /// Milliseconds since `origin` (plus one) of the last message of the stream; 0: none.
    heard_ms: AtomicU64,
    /// Required permissions the server has accepted (so they are in its catalog): resource →
    /// actions.
    known_permissions: RwLock<HashMap<String, HashSet<String>>>,
    options: VerifierOptions,
    entry_floor: u64,
}

impl State {
    fn note_heard(&self) {
        let ms = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.heard_ms.store(ms.saturating_add(1), Ordering::SeqCst);
    }

    fn silence(&self) {
        self.heard_ms.store(0, Ordering::SeqCst);
    }

    /// Whether the change stream has been heard from within the staleness limit.
    fn fresh(&self) -> bool {
        match self.heard_ms.load(Ordering::SeqCst) {
            0 => false,
            heard => {
                let since = self
                    .origin
                    .elapsed()
                    .saturating_sub(Duration::from_millis(heard - 1));
                since <= self.options.staleness_limit
            }
        }
    }

    fn forget(&self, key_id: &str) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.keys.remove(key_id);
    }

    fn forget_all(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.keys.clear();
    }

    fn knows(&self, required: &[Permission]) -> bool {
        if required.is_empty() {
            return true;
        }
        let known = self
            .known_permissions
            .read()
            .unwrap_or_else(|e| e.into_inner());
        required.iter().all(|p| {
            known
                .get(&p.resource)
                .is_some_and(|actions| actions.contains(&p.action))
        })
    }

    fn learn(&self, required: &[Permission]) {
        if self.knows(required) {
            return;
        }
        let mut known = self
            .known_permissions
            .write()
            .unwrap_or_else(|e| e.into_inner());
        // A catalog has a few dozen pairs; the bound only stops a caller inventing names.
        if known.len() < 1_000 {
            for p in required {
                known
                    .entry(p.resource.clone())
                    .or_default()
                    .insert(p.action.clone());
            }
        }
    }
}

/// Aborts the watch task when the last clone of a [`Verifier`] is dropped.
struct WatchTask(tokio::task::AbortHandle);

impl Drop for WatchTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Verifies keys in-process (see the module docs). Cheap to clone; clones share the cache and
/// the watch.
#[derive(Clone)]
pub struct Verifier {
    state: Arc<State>,
    _watch: Arc<WatchTask>,
}

impl Verifier {
    /// A verifier over `client` (with the verifier token, if keyauth requires one). Starts the
    /// watch at once; must be called inside a Tokio runtime.
    pub fn new(client: Client, options: VerifierOptions) -> Self {
        let entry_floor = options.max_bytes / options.max_entries.max(1);
        let typical = 400u64.max(entry_floor);
        let state = Arc::new(State {
            client,
            keys: Keys::with(
                usize::try_from(options.max_bytes / typical)
                    .unwrap_or(usize::MAX)
                    .max(1),
                options.max_bytes.max(1),
                ByWeight,
                DefaultHashBuilder::default(),
                DefaultLifecycle::default(),
            ),
            generation: AtomicU64::new(0),
            origin: Instant::now(),
            heard_ms: AtomicU64::new(0),
            known_permissions: RwLock::new(HashMap::new()),
            options,
            entry_floor,
        });
        let task = tokio::spawn(watch(Arc::downgrade(&state)));
        Verifier {
            state,
            _watch: Arc::new(WatchTask(task.abort_handle())),
        }
    }

    /// Whether cached answers are being given (the change stream is fresh).
    pub fn is_fresh(&self) -> bool {
        self.state.fresh()
    }

    /// Keys kept now.
    pub fn cached(&self) -> usize {
        self.state.keys.len()
    }

    /// Verifies `presented` (the raw key or the whole `Authorization` value) for `required`.
    pub async fn verify(
        &self,
        presented: &str,
        required: &[Permission],
    ) -> Result<Verdict, Unavailable> {
        // Parsed in place, as the server does: a call answered from memory copies nothing.
        let Some(key) = KeyView::parse(presented) else {
            return Ok(Verdict::unauthenticated());
        };
        let id = key.id_text();
        let digest = key.digest();
        let state = &self.state;
        if state.fresh()
            && state.knows(required)
            && let Some(entry) = state.keys.get(&id)
        {
            if !digests_match(&entry.digest, &digest) {
                return Ok(Verdict::unauthenticated());
            }
            return Ok(entry.verdict(now_micros(), required));
        }
        let generation = state.generation.load(Ordering::SeqCst);
        let answer = state
            .client
            .verify(pb::VerifyRequest {
                key: key.to_owned().expose().to_owned(),
                required_permissions: required_out(required),
            })
            .await
            .map_err(Unavailable)?;
        state.learn(required);
        let Some(api_key) = answer.key else {
            return Ok(Verdict::unauthenticated());
        };
        let entry = Arc::new(Entry::new(digest, &api_key, state.entry_floor));
        // Kept only while the stream is fresh and nothing changed since the question was asked.
        if state.fresh() && state.generation.load(Ordering::SeqCst) == generation {
            state.keys.insert(id, entry.clone());
        }
        let denial = answer
            .error
            .as_ref()
            .map(|e| denial_of(&e.code))
            .filter(|_| !answer.valid);
        Ok(Verdict {
            key: Some(entry.key.clone()),
            denial,
        })
    }
}

/// A denial the server answered; a code this version does not know is still a refusal.
fn denial_of(code: &str) -> Denial {
    Denial::from_code(code).unwrap_or(Denial::AuthenticationError)
}

fn required_out(required: &[Permission]) -> Vec<pb::Permission> {
    required
        .iter()
        .map(|p| pb::Permission {
            resource: p.resource.clone(),
            actions: vec![p.action.clone()],
        })
        .collect()
}

/// Follows WatchKeyChanges for as long as the verifier lives: resumes by revision after a
/// disconnect, drops everything on a reset.
async fn watch(state: std::sync::Weak<State>) {
    // None until the first message: the first stream starts from now.
    let mut revision: Option<i64> = None;
    let mut failures = 0u32;
    loop {
        let Some(strong) = state.upgrade() else {
            return;
        };
        let client = strong.client.clone();
        drop(strong);
        match client.watch_key_changes(revision).await {
            Ok(mut stream) => loop {
                let message = stream.message().await;
                let Some(state) = state.upgrade() else { return };
                match message {
                    Ok(Some(m)) => {
                        failures = 0;
                        use pb::watch_key_changes_response::Event;
                        match m.event {
                            // A new key was cached nowhere: nothing to drop.
                            Some(Event::Change(change))
                                if change.r#type == pb::KeyEventType::Issued as i32 => {}
                            Some(Event::Change(change)) => {
                                state.forget(&change.key_id);
                                if !change.related_key_id.is_empty() {
                                    state.forget(&change.related_key_id);
                                }
                            }
                            Some(Event::Reset(reset)) => {
                                tracing::info!(
                                    reason = reset.reason,
                                    "keyauth reset the key change stream; dropping every cached key"
                                );
                                state.forget_all();
                                state.silence();
                                revision = None;
                                break;
                            }
                            Some(Event::Started(_)) => {
                                // From now: whatever was cached may have changed unseen.
                                state.forget_all();
                            }
                            Some(Event::Heartbeat(_)) | None => {}
                        }
                        revision = Some(revision.map_or(m.revision, |r| r.max(m.revision)));
                        state.note_heard();
                    }
                    Ok(None) | Err(_) => break,
                }
            },
            Err(status) => {
                tracing::debug!(error = %status, "cannot open the key change stream");
            }
        }
        failures = failures.saturating_add(1);
        // Cached answers continue until the staleness limit; the reconnect resumes by revision.
        let pause = Duration::from_millis(100u64.saturating_mul(1 << failures.min(4)));
        tokio::time::sleep(pause.min(Duration::from_secs(2))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_key(restricted: bool) -> pb::ApiKey {
        pb::ApiKey {
            id: "key_AAAAAAAAAAAA".into(),
            application_id: "app".into(),
            environment: pb::Environment::Live.into(),
            restricted,
            permissions: vec![pb::Permission {
                resource: "patients".into(),
                actions: vec!["read".into()],
            }],
            ..Default::default()
        }
    }

    #[test]
    fn entries_are_judged_as_the_server_judges() {
        let read = [Permission::new("patients", "read")];
        let write = [Permission::new("patients", "write")];
        let e = Entry::new([0; 32], &api_key(true), 0);
        assert!(e.verdict(0, &read).is_valid());
        assert_eq!(
            e.verdict(0, &write).denial,
            Some(Denial::InsufficientPermissions)
        );
        assert!(
            Entry::new([0; 32], &api_key(false), 0)
                .verdict(0, &write)
                .is_valid()
        );
        let mut expiring = api_key(false);
        expiring.expire_time = Some(prost_types::Timestamp {
            seconds: 10,
            nanos: 0,
        });
        let e = Entry::new([0; 32], &expiring, 0);
        assert!(e.verdict(9_999_999, &[]).is_valid());
        assert_eq!(e.verdict(10_000_000, &[]).denial, Some(Denial::Expired));
        let mut revoked = expiring;
        revoked.revoke_time = Some(prost_types::Timestamp::default());
        let e = Entry::new([0; 32], &revoked, 0);
        assert_eq!(e.verdict(10_000_000, &[]).denial, Some(Denial::Revoked));
        assert_eq!(e.key.environment, "live");
    }

    #[test]
    fn weights_respect_the_entry_floor() {
        assert!(Entry::new([0; 32], &api_key(true), 0).weight < 1_000);
        assert_eq!(Entry::new([0; 32], &api_key(true), 5_000).weight, 5_000);
    }
}
