//! GitHub secret scanning's partner alerts: `POST /v1/secret-scanning/github`.
//!
//! GitHub finds strings matching keyauth's key pattern in public places and posts them here, a
//! JSON array of `{"token", "type", "url", "source"}`, signed: `Github-Public-Key-Identifier`
//! names one of its public keys, `Github-Public-Key-Signature` is the base64 ASN.1 DER ECDSA
//! P-256/SHA-256 signature of the raw body. The public keys come from a file in the shape of
//! GitHub's public-keys endpoint (`--github-scanning-keys`), re-read when it changes; nothing is
//! fetched from the network.
//!
//! Only a signed body is parsed. Every token is handed to `Authority::report_exposed` (the one
//! path ReportExposedKeys takes too), and the answer is GitHub's feedback array: for each token
//! its SHA-256, its type, and `true_positive` (a key keyauth issued, revoked now or before) or
//! `false_positive`. The token itself is never logged, stored or sent back.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use keyauth_core::Authority;
use keyauth_core::authority::{EXPOSURE_TEXT_MAX, ExposureOutcome};
use keyauth_core::store::{Exposure, Provenance};
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use tracing::Instrument;

use super::shared::{Peer, refusal};

/// Path of GitHub secret scanning's alerts.
pub const GITHUB_PATH: &str = "/v1/secret-scanning/github";
pub const KEY_ID_HEADER: &str = "github-public-key-identifier";
pub const SIGNATURE_HEADER: &str = "github-public-key-signature";

/// What the webhook's handler is given: the authority that revokes, and GitHub's keys.
pub(super) struct AppState {
    pub(super) authority: Arc<Authority>,
    pub(super) github_keys: Arc<GithubKeys>,
    /// Bodies being read and checked now ([`BODIES_IN_FLIGHT`] at most).
    pub(super) bodies: Arc<tokio::sync::Semaphore>,
}

/// Unauthenticated bodies read at once at most: one more is answered 503 with `Retry-After`
/// at once (GitHub retries). With [`super::MAX_BODY_BYTES`] each, the webhook holds at most
/// 16 MiB of bodies whose signature is not checked yet, whatever the senders do.
pub const BODIES_IN_FLIGHT: usize = 16;
/// A body must arrive within this, once its request head has: 408 after.
pub const BODY_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

/// The public keys GitHub signs alerts with, from a file in the shape of
/// `https://api.github.com/meta/public_keys/secret_scanning`. The file's modification time and
/// size are checked on every alert (one `stat`); when they change it is read again. A file that
/// turns unreadable or malformed keeps the last good keys in use (and says so in the log).
#[derive(Debug)]
pub struct GithubKeys {
    path: PathBuf,
    loaded: Mutex<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    /// Modification time and size of the file when these keys were read.
    stamp: Option<(SystemTime, u64)>,
    keys: Arc<HashMap<String, VerifyingKey>>,
}

#[derive(Deserialize)]
struct KeysFile {
    public_keys: Vec<PublicKeyEntry>,
}

#[derive(Deserialize)]
struct PublicKeyEntry {
    key_identifier: String,
    /// PEM SubjectPublicKeyInfo.
    key: String,
}

impl GithubKeys {
    /// Reads and checks the file: at start-up, a bad file stops the start.
    pub fn load(path: &Path) -> Result<Self, String> {
        let stamp = stamp(path);
        let keys = read_keys(path)?;
        tracing::info!(path = %path.display(), keys = keys.len(), "GitHub secret-scanning public keys loaded");
        Ok(GithubKeys {
            path: path.to_owned(),
            loaded: Mutex::new(Loaded {
                stamp,
                keys: Arc::new(keys),
            }),
        })
    }

    /// The keys in force, read again first if the file changed.
    fn current(&self) -> Arc<HashMap<String, VerifyingKey>> {
        let now = stamp(&self.path);
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        if now.is_some() && now != loaded.stamp {
            // Remember the stamp either way: a bad file is reported once, not on every alert.
            loaded.stamp = now;
            match read_keys(&self.path) {
                Ok(keys) => {
                    tracing::info!(path = %self.path.display(), keys = keys.len(), "GitHub secret-scanning public keys reloaded");
                    loaded.keys = Arc::new(keys);
                }
                Err(e) => tracing::warn!(
                    error = %e,
                    "the GitHub secret-scanning public keys file changed but cannot be used; \
                     keeping the keys read before"
                ),
            }
        }
        loaded.keys.clone()
    }
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

fn read_keys(path: &Path) -> Result<HashMap<String, VerifyingKey>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let file: KeysFile = serde_json::from_str(&text).map_err(|e| {
        format!(
            "{}: not GitHub's public-keys JSON ({{\"public_keys\":[{{\"key_identifier\",\"key\"}}]}}): {e}",
            path.display()
        )
    })?;
    if file.public_keys.is_empty() {
        return Err(format!("{}: holds no public key", path.display()));
    }
    file.public_keys
        .into_iter()
        .map(|entry| {
            let key = VerifyingKey::from_public_key_pem(entry.key.trim()).map_err(|e| {
                format!(
                    "{}: key {:?} is not a PEM P-256 public key: {e}",
                    path.display(),
                    entry.key_identifier
                )
            })?;
            Ok((entry.key_identifier, key))
        })
        .collect()
}

/// One alert of GitHub's payload.
#[derive(Deserialize)]
struct Alert {
    token: String,
    #[serde(rename = "type", default)]
    token_type: String,
    #[serde(default)]
    url: String,
    #[serde(default)]
    source: String,
}

/// A refused alert, logged.
fn refuse(status: StatusCode, why: &str) -> Response {
    tracing::info!(
        status = status.as_u16(),
        why,
        "GitHub secret-scanning alert refused"
    );
    refusal(status, why)
}

/// The body, read within [`BODY_DEADLINE`] while one of [`BODIES_IN_FLIGHT`] places is
/// held, and its signature checked; or the answer refusing it.
async fn signed_body(
    state: &AppState,
    headers: &HeaderMap,
    body: axum::body::Body,
) -> Result<Bytes, Response> {
    let Ok(_place) = state.bodies.clone().try_acquire_owned() else {
        metrics::counter!(crate::metrics::WEBHOOK_BUSY).increment(1);
        let mut busy = refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many alerts are being read right now; retry",
        );
        busy.headers_mut().insert(
            axum::http::header::RETRY_AFTER,
            axum::http::HeaderValue::from_static("1"),
        );
        return Err(busy);
    };
    let read = tokio::time::timeout(
        BODY_DEADLINE,
        axum::body::to_bytes(body, super::MAX_BODY_BYTES),
    );
    let body = match read.await {
        Err(_) => {
            return Err(refuse(
                StatusCode::REQUEST_TIMEOUT,
                "the body did not arrive in time",
            ));
        }
        Ok(Err(e)) if too_large(&e) => {
            return Err(refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                "the body is larger than 1 MiB",
            ));
        }
        Ok(Err(_)) => {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "the body could not be read",
            ));
        }
        Ok(Ok(body)) => body,
    };
    let keys = state.github_keys.current();
    match check_signature(&keys, headers, &body) {
        Ok(()) => Ok(body),
        Err(why) => Err(refuse(StatusCode::UNAUTHORIZED, why)),
    }
}

/// Whether reading a body failed for its size.
fn too_large(error: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = e.source();
    }
    false
}

/// Why a body's signature is not good, if it is not.
fn check_signature(
    keys: &HashMap<String, VerifyingKey>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), &'static str> {
    let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(key_id), Some(signature)) = (header(KEY_ID_HEADER), header(SIGNATURE_HEADER)) else {
        return Err("missing Github-Public-Key-Identifier or Github-Public-Key-Signature");
    };
    let key = keys
        .get(key_id.trim())
        .ok_or("unknown Github-Public-Key-Identifier")?;
    let der = base64::engine::general_purpose::STANDARD
        .decode(signature.trim())
        .map_err(|_| "Github-Public-Key-Signature is not base64")?;
    let signature = Signature::from_der(&der)
        .map_err(|_| "Github-Public-Key-Signature is not a DER signature")?;
    key.verify(body, &signature)
        .map_err(|_| "the signature does not match the body")
}

/// GitHub's `source` and `url` as the audit trail keeps them: no control characters, cut to
/// the report limit.
fn clean(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_control())
        .take(EXPOSURE_TEXT_MAX)
        .collect()
}

pub(super) async fn alert(
    State(state): State<Arc<AppState>>,
    Extension(peer): Extension<Peer>,
    request: axum::extract::Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let headers = parts.headers;
    let request_id = crate::service::call::request_id(
        headers
            .get(crate::service::call::REQUEST_ID)
            .and_then(|v| v.to_str().ok()),
    );
    let span = tracing::info_span!("http", path = GITHUB_PATH, request_id = %request_id);
    async move {
        let started = Instant::now();
        let body = match signed_body(&state, &headers, body).await {
            Ok(body) => body,
            Err(refused) => return refused,
        };
        let Ok(alerts) = serde_json::from_slice::<Vec<Alert>>(&body) else {
            return refuse(
                StatusCode::BAD_REQUEST,
                "the body is not a JSON array of {\"token\",\"type\",\"url\",\"source\"}",
            );
        };
        let who = Provenance {
            request_id: Some(request_id.clone()),
            operator: None,
            peer: Some(peer.0.to_string()),
            actor: None,
        };
        let mut feedback = Vec::with_capacity(alerts.len());
        let mut outcomes = Vec::with_capacity(alerts.len());
        for alert in &alerts {
            let source = match clean(&alert.source) {
                s if s.is_empty() => "github".to_owned(),
                s => clean(&format!("github:{s}")),
            };
            let url = clean(&alert.url);
            let exposure = Exposure {
                source: &source,
                url: &url,
            };
            let outcome = match state
                .authority
                .report_exposed(std::slice::from_ref(&alert.token), exposure, &who)
                .await
            {
                Ok(mut found) => found.pop().unwrap_or(ExposureOutcome::NotAKey),
                Err(e) => {
                    // Nothing is lost: GitHub retries, and reporting a key again is harmless.
                    crate::metrics::exposures(crate::metrics::EXPOSURE_GITHUB, &outcomes);
                    let status = crate::status::from_error(e);
                    let code = match status.code() {
                        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => {
                            StatusCode::SERVICE_UNAVAILABLE
                        }
                        tonic::Code::InvalidArgument => StatusCode::BAD_REQUEST,
                        _ => StatusCode::INTERNAL_SERVER_ERROR,
                    };
                    return refuse(code, status.message());
                }
            };
            feedback.push(json!({
                "token_hash": hex::encode(Sha256::digest(alert.token.as_bytes())),
                "token_type": alert.token_type,
                "label": if outcome.is_ours() { "true_positive" } else { "false_positive" },
            }));
            outcomes.push(outcome);
        }
        crate::metrics::exposures(crate::metrics::EXPOSURE_GITHUB, &outcomes);
        let revoked = outcomes
            .iter()
            .filter(|o| matches!(o, ExposureOutcome::Revoked(_)))
            .count();
        let ours = outcomes.iter().filter(|o| o.is_ours()).count();
        tracing::info!(
            alerts = alerts.len(),
            true_positives = ours,
            revoked,
            took_ms = started.elapsed().as_millis() as u64,
            "GitHub secret-scanning alert handled"
        );
        (StatusCode::OK, Json(feedback)).into_response()
    }
    .instrument(span)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of GitHub's secret-scanning partner documentation (its signature of this
    /// body under one of its published keys): what GitHub sends verifies here.
    #[test]
    fn githubs_documented_signature_verifies() {
        let key_id = "90a421169f0a406205f1563a953312f0be898d3c7b6c06b681aa86a874555f4a";
        let pem = "-----BEGIN PUBLIC KEY-----\n\
                   MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE9MJJHnMfn2+H4xL4YaPDA4RpJqUq\n\
                   kCmRCBnYERxZanmcpzQSXs1X/AljlKkbJ8qpVIW4clayyef9gWhFbNHWAA==\n\
                   -----END PUBLIC KEY-----\n";
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        let file =
            json!({"public_keys": [{"key_identifier": key_id, "key": pem, "is_current": true}]});
        std::fs::write(&path, file.to_string()).unwrap();
        let keys = GithubKeys::load(&path).unwrap().current();

        let body = br#"[{"token":"some_token","type":"some_type","url":"some_url"}]"#;
        let mut headers = HeaderMap::new();
        headers.insert(KEY_ID_HEADER, key_id.parse().unwrap());
        headers.insert(
            SIGNATURE_HEADER,
            "MEUCIQDKZokqnCjrRtw0tni+2Ltvl/uiMJ1EGumEsp1BsNr32AIgQY1YXD2nlj+XNfGK4rBfkMJ1JDOQcYXxa2sY8FNkrKc="
                .parse()
                .unwrap(),
        );
        assert_eq!(check_signature(&keys, &headers, body), Ok(()));
        let tampered = br#"[{"token":"some_token","type":"some_type","url":"some_urk"}]"#;
        assert!(check_signature(&keys, &headers, tampered).is_err());
        headers.insert(KEY_ID_HEADER, "another-key".parse().unwrap());
        assert_eq!(
            check_signature(&keys, &headers, body),
            Err("unknown Github-Public-Key-Identifier")
        );
    }
}
