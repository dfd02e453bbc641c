//! What the authority's operations take and give back.

use std::sync::Arc;

use crate::cache::Proven;
use crate::clock::Timestamp;
use crate::error::Error;
use crate::key::PresentedKey;
use crate::model::{ApplicationId, Environment, KeyId, KeyRecord, Metadata, Permissions, Verdict};
use crate::sealing::IdempotencyKey;
use crate::store::Changed;

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
    pub(super) fn context(&self) -> Vec<u8> {
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

/// What [`Authority::verify_from_memory`](super::Authority::verify_from_memory) made of a Verify.
#[derive(Debug)]
pub enum FromMemory {
    /// Answered from memory.
    Answered(Result<Verdict, Error>),
    /// The store or argon2 is needed: [`Authority::verify_waiting`](super::Authority::verify_waiting).
    Wait(Waiting),
}

/// A Verify that has to wait, as [`Authority::verify_from_memory`](super::Authority::verify_from_memory) left it.
#[derive(Debug)]
pub struct Waiting {
    pub(super) pending: Pending,
    /// Wall-clock time, for the verdict.
    pub(super) now: Timestamp,
    /// Steady time, for the caches' ages (see `clock`).
    pub(super) steady: Timestamp,
}

#[derive(Debug)]
pub(super) enum Pending {
    /// A proven key whose cached record is older than the TTL.
    Refresh(Arc<Proven>),
    /// A key not in the cache.
    Prove(PresentedKey),
}
