//! A key's check value: 32 bits of a keyed hash of its secret, stored beside the argon2id hash,
//! so that a wrong secret is refused without argon2 and without counting against the key id.
//!
//! Why: argon2id makes every proof cost milliseconds, so wrong secrets used to be rationed per
//! key id (one try a second past the failure limit). Whoever knew a key id could then keep
//! its owner from being proven on a cold instance (review finding F2), and the throttle told
//! known ids from unknown ones (F7). With the check value a wrong secret costs one HMAC and is
//! refused with probability 1 − 2⁻³²; argon2 runs only for the owner's secret (and the rare
//! wrong one that passes the check), so nothing needs rationing per id.
//!
//! What it reveals: 32 bits of HMAC-SHA256 of a 190-bit random secret, under a key derived
//! (HKDF-SHA256) from the seal key, which lives outside the store. Even with the seal key and
//! the store in hand, 2¹⁵⁸ secrets match any check value, so it narrows no search. Without a
//! seal key the derivation has no secret input and the check is an unkeyed hash, which reveals
//! the same: nothing usable.
//!
//! Stored as `v1.<fingerprint>.<check>` (8 hex digits each), the fingerprint naming the check
//! key. A check value under another key (the seal key was rotated and the previous one
//! dropped) or none (keys from before check values) is [`Check::Unknown`]: such a key is proven
//! by argon2 as before, and gets a check value under the current key once it is.

use hkdf::Hkdf;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::sealing::SealKey;

const VERSION: &str = "v1";
const INFO: &[u8] = b"keyauth check value v1";

/// What a stored check value says of a presented secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// The secret is wrong: refuse it, no argon2.
    Mismatch,
    /// The secret passes the check: argon2 decides.
    Match,
    /// No check value under a key this server holds: argon2 decides, rationed per id.
    Unknown,
}

/// One key that makes check values.
struct CheckKey {
    mac: Hmac<Sha256>,
    fingerprint: [u8; 4],
}

impl CheckKey {
    fn derive(seal_key: Option<&SealKey>) -> Self {
        let ikm: &[u8] = seal_key.map_or(&[], |k| k.bytes());
        let mut key = Zeroizing::new([0u8; 32]);
        Hkdf::<Sha256>::new(None, ikm)
            .expand(INFO, &mut key[..])
            .expect("32 bytes is a valid HKDF-SHA256 length");
        let mac = Hmac::<Sha256>::new_from_slice(&key[..]).expect("HMAC takes any key length");
        let fingerprint = first4(mac.clone(), b"fingerprint");
        CheckKey { mac, fingerprint }
    }

    fn check(&self, secret: &[u8]) -> [u8; 4] {
        first4(self.mac.clone(), secret)
    }
}

fn first4(mut mac: Hmac<Sha256>, message: &[u8]) -> [u8; 4] {
    mac.update(message);
    let out = mac.finalize().into_bytes();
    [out[0], out[1], out[2], out[3]]
}

/// The check keys of a server: the current one makes check values; the previous one (the
/// seal key before a rotation) still judges those it made.
pub struct CheckKeys {
    current: CheckKey,
    previous: Option<CheckKey>,
}

impl Default for CheckKeys {
    /// Without a seal key: the unkeyed check (see the module's docs).
    fn default() -> Self {
        CheckKeys::new(None, None)
    }
}

impl CheckKeys {
    pub fn new(seal_key: Option<&SealKey>, previous: Option<&SealKey>) -> Self {
        CheckKeys {
            current: CheckKey::derive(seal_key),
            previous: previous.map(|k| CheckKey::derive(Some(k))),
        }
    }

    /// The check value of `secret` under the current key, as stored.
    pub fn make(&self, secret: &[u8]) -> String {
        format!(
            "{VERSION}.{}.{}",
            hex::encode(self.current.fingerprint),
            hex::encode(self.current.check(secret))
        )
    }

    /// Judges `secret` against a stored check value, in constant time in the secret.
    pub fn judge(&self, stored: Option<&str>, secret: &[u8]) -> Check {
        let Some((fingerprint, check)) = stored.and_then(parse) else {
            return Check::Unknown;
        };
        let key = std::iter::once(&self.current)
            .chain(self.previous.as_ref())
            .find(|k| k.fingerprint == fingerprint);
        match key {
            Some(key) if bool::from(key.check(secret).ct_eq(&check)) => Check::Match,
            Some(_) => Check::Mismatch,
            None => Check::Unknown,
        }
    }

    /// Whether `stored` was made under the current key (else a proof should rewrite it).
    pub fn is_current(&self, stored: Option<&str>) -> bool {
        stored
            .and_then(parse)
            .is_some_and(|(fingerprint, _)| fingerprint == self.current.fingerprint)
    }
}

fn parse(stored: &str) -> Option<([u8; 4], [u8; 4])> {
    let mut parts = stored.split('.');
    let (Some(VERSION), Some(fingerprint), Some(check), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let mut f = [0u8; 4];
    let mut c = [0u8; 4];
    hex::decode_to_slice(fingerprint, &mut f).ok()?;
    hex::decode_to_slice(check, &mut c).ok()?;
    Some((f, c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seal(byte: u8) -> SealKey {
        SealKey::parse(&hex::encode([byte; 32])).unwrap()
    }

    #[test]
    fn the_right_secret_matches_and_a_wrong_one_does_not() {
        let keys = CheckKeys::new(Some(&seal(1)), None);
        let stored = keys.make(b"secret-a");
        assert!(stored.starts_with("v1.") && stored.len() == 3 + 8 + 1 + 8);
        assert_eq!(keys.judge(Some(&stored), b"secret-a"), Check::Match);
        assert_eq!(keys.judge(Some(&stored), b"secret-b"), Check::Mismatch);
        assert!(keys.is_current(Some(&stored)));
    }

    #[test]
    fn no_check_value_or_a_malformed_one_is_unknown() {
        let keys = CheckKeys::default();
        for stored in [
            None,
            Some(""),
            Some("v1.zz.00"),
            Some("v2.00000000.00000000"),
            Some("v1.00000000.00000000.00"),
        ] {
            assert_eq!(keys.judge(stored, b"s"), Check::Unknown, "{stored:?}");
            assert!(!keys.is_current(stored));
        }
    }

    #[test]
    fn the_seal_key_keys_the_check_and_the_previous_one_still_judges() {
        let old = CheckKeys::new(Some(&seal(1)), None);
        let stored = old.make(b"secret");
        // Another key: its fingerprint differs, so the value is not judged (never a false
        // Mismatch for the genuine secret).
        let other = CheckKeys::new(Some(&seal(2)), None);
        assert_eq!(other.judge(Some(&stored), b"secret"), Check::Unknown);
        assert_ne!(other.make(b"secret"), stored);
        // After a rotation the previous key still judges, and the value is not current.
        let rotated = CheckKeys::new(Some(&seal(2)), Some(&seal(1)));
        assert_eq!(rotated.judge(Some(&stored), b"secret"), Check::Match);
        assert_eq!(rotated.judge(Some(&stored), b"wrong"), Check::Mismatch);
        assert!(!rotated.is_current(Some(&stored)));
        // Unkeyed differs from keyed.
        assert_eq!(
            CheckKeys::default().judge(Some(&stored), b"secret"),
            Check::Unknown
        );
    }

    #[test]
    fn wrong_secrets_pass_about_once_in_four_billion() {
        let keys = CheckKeys::default();
        let stored = keys.make(b"genuine");
        let passed = (0..100_000)
            .filter(|i| {
                keys.judge(Some(&stored), format!("guess-{i}").as_bytes()) != Check::Mismatch
            })
            .count();
        assert_eq!(passed, 0);
    }
}
