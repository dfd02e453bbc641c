//! An issuer's keys: its JWKS, parsed into verification keys by `kid`. Fetched at start, again
//! when a token names an unknown `kid` (at most every 30 s) and by the refresher; a fetch that
//! fails keeps the keys known so far.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use serde_json::Value;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::fetch::{self, JwksSource};

/// One verification key of a JWKS.
pub(super) struct Key {
    pub(super) key: DecodingKey,
    pub(super) family: AlgorithmFamily,
    /// The JWK's `alg`, when it names one: a token must then use exactly that one.
    pub(super) alg: Option<Algorithm>,
    /// As published, to tell a changed key from the same one.
    jwk: Jwk,
}

/// `kid` → key; a key without `kid` is under "".
type Keys = HashMap<String, Arc<Key>>;

pub(super) struct KeySet {
    source: JwksSource,
    keys: RwLock<Arc<Keys>>,
    /// When the last fetch was tried; held while fetching, so that concurrent tokens with an
    /// unknown `kid` cause one fetch.
    last_fetch: Mutex<Option<Instant>>,
    /// Fetches tried (for tests and the log).
    fetches: AtomicU64,
}

impl KeySet {
    pub(super) fn new(source: JwksSource) -> Self {
        KeySet {
            source,
            keys: RwLock::new(Arc::default()),
            last_fetch: Mutex::new(None),
            fetches: AtomicU64::new(0),
        }
    }

    /// The key named `kid`; a token without `kid` may use the only key of a one-key JWKS.
    pub(super) fn get(&self, kid: Option<&str>) -> Option<Arc<Key>> {
        let keys = self.keys.read().unwrap_or_else(PoisonError::into_inner);
        match kid {
            Some(kid) => keys.get(kid).cloned(),
            None if keys.len() == 1 => keys.values().next().cloned(),
            None => None,
        }
    }

    #[cfg(test)]
    pub(super) fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// For a token naming an unknown `kid`: fetches unless the last fetch was less than
    /// `min_interval` ago. `Some(changed)` after a successful fetch (see [`KeySet::fetch`]).
    pub(super) async fn refetch(&self, issuer: &str, min_interval: Duration) -> Option<bool> {
        let mut last = self.last_fetch.lock().await;
        if last.is_some_and(|at| at.elapsed() < min_interval) {
            return None;
        }
        self.fetch_locked(issuer, &mut last)
            .await
            .inspect_err(|e| {
                tracing::warn!(issuer, error = %e, "cannot refetch the issuer's JWKS for an unknown kid")
            })
            .ok()
    }

    /// Fetches now and replaces the keys; `Ok(true)` when a key known before is gone or
    /// changed. On an error the keys stay as they were.
    pub(super) async fn fetch(&self, issuer: &str) -> Result<bool, String> {
        let mut last = self.last_fetch.lock().await;
        self.fetch_locked(issuer, &mut last).await
    }

    async fn fetch_locked(&self, issuer: &str, last: &mut Option<Instant>) -> Result<bool, String> {
        *last = Some(Instant::now());
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let body = fetch::fetch(&self.source).await?;
        let fresh = parse_jwks(&body, issuer)?;
        let mut keys = self.keys.write().unwrap_or_else(PoisonError::into_inner);
        let changed = keys
            .iter()
            .any(|(kid, old)| fresh.get(kid).is_none_or(|new| new.jwk != old.jwk));
        tracing::debug!(
            issuer,
            keys = fresh.len(),
            changed,
            "fetched the issuer's JWKS"
        );
        *keys = Arc::new(fresh);
        Ok(changed)
    }
}

/// The signature keys of a JWKS. A key that is not one (`use` = `enc`, a symmetric `oct` key,
/// an algorithm not for signatures, a key that does not parse) is left out with a debug log; a
/// body that is not a JWKS is an error.
fn parse_jwks(body: &[u8], issuer: &str) -> Result<Keys, String> {
    #[derive(serde::Deserialize)]
    struct RawSet {
        keys: Vec<Value>,
    }
    let raw: RawSet =
        serde_json::from_slice(body).map_err(|e| format!("the JWKS does not parse: {e}"))?;
    let mut keys = Keys::new();
    for value in raw.keys {
        match key_of(value) {
            Ok((kid, key)) => {
                keys.insert(kid, Arc::new(key));
            }
            Err(why) => tracing::debug!(issuer, why, "a key of the JWKS is left out"),
        }
    }
    Ok(keys)
}

fn key_of(value: Value) -> Result<(String, Key), String> {
    let jwk: Jwk = serde_json::from_value(value).map_err(|e| format!("not a JWK: {e}"))?;
    let kid = jwk.common.key_id.clone().unwrap_or_default();
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return Err(format!("{kid:?}: an encryption key"));
    }
    if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)) {
        return Err(format!("{kid:?}: a symmetric key is never accepted"));
    }
    let alg = match jwk.common.key_algorithm {
        Some(alg) => Some(
            Algorithm::try_from(alg)
                .map_err(|_| format!("{kid:?}: {alg} is not for signatures"))?,
        ),
        None => None,
    };
    let key = DecodingKey::from_jwk(&jwk).map_err(|e| format!("{kid:?}: {e}"))?;
    if alg.is_some_and(|a| a.family() != key.family()) {
        return Err(format!("{kid:?}: its alg is not of its key type"));
    }
    Ok((
        kid,
        Key {
            family: key.family(),
            key,
            alg,
            jwk,
        },
    ))
}
