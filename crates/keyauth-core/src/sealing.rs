//! Safe retries of the operator RPCs (Stripe's semantics): an `idempotency-key` names a call;
//! the first completed call's response is kept (24 h by default) with a fingerprint of the
//! request, and a retry with the same key and request gets that response again — secret
//! included, sealed at rest with XChaCha20-Poly1305 under the server's seal key.

use std::fmt;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::TryRng;
use rand::rngs::SysRng;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::error::Error;

pub const HEADER: &str = "idempotency-key";
const NONCE_LEN: usize = 24;

/// A caller's idempotency key: 1 to 255 printable ASCII characters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn parse(value: &[u8]) -> Result<Self, Error> {
        let ok =
            (1..=255).contains(&value.len()) && value.iter().all(|b| (0x20..=0x7e).contains(b));
        match std::str::from_utf8(value) {
            Ok(s) if ok => Ok(IdempotencyKey(s.to_owned())),
            _ => Err(Error::invalid(
                HEADER,
                "must be 1 to 255 printable ASCII characters",
            )),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Fingerprint of a request: SHA-256 of the method and the encoded message, hex.
pub fn fingerprint(method: &str, request: &[u8]) -> String {
    let mut hash = Sha256::new();
    hash.update(method.as_bytes());
    hash.update([0]);
    hash.update(request);
    hex::encode(hash.finalize())
}

/// The 32-byte server key that seals stored secrets.
pub struct SealKey(Zeroizing<[u8; 32]>);

impl fmt::Debug for SealKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SealKey(..)")
    }
}

impl SealKey {
    /// Parses 32 bytes written as 64 hex digits or as base64.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let bytes = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            hex::decode(text).map_err(|e| e.to_string())?
        } else {
            STANDARD
                .decode(text)
                .map_err(|_| "expected 32 bytes as 64 hex digits or base64".to_owned())?
        };
        let bytes = Zeroizing::new(bytes);
        let key: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| format!("expected 32 bytes, got {}", bytes.len()))?;
        Ok(SealKey(Zeroizing::new(key)))
    }

    /// The key's bytes (for deriving other keys from it: `check_value`).
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.0[..]
    }

    pub fn load(path: &Path) -> Result<Self, String> {
        let text = Zeroizing::new(
            std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?,
        );
        SealKey::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// A fresh key from the OS CSPRNG, as hex (`keyauth gen-seal-key`).
    pub fn generate_hex() -> Result<String, rand::rngs::SysError> {
        let mut key = Zeroizing::new([0u8; 32]);
        SysRng.try_fill_bytes(&mut key[..])?;
        Ok(hex::encode(&key[..]))
    }
}

/// Seals and opens stored secrets; without a key it refuses, never stores plaintext.
///
/// Rotation: the previous key (if given) still opens what it sealed; everything new is sealed
/// under the current key. Once the idempotency TTL has passed since the rotation, nothing
/// sealed under the previous key is left and it can be dropped.
pub struct Sealer {
    cipher: Option<XChaCha20Poly1305>,
    previous: Option<XChaCha20Poly1305>,
}

fn cipher_of(key: &SealKey) -> XChaCha20Poly1305 {
    XChaCha20Poly1305::new_from_slice(&key.0[..]).expect("32-byte key")
}

impl Sealer {
    pub fn new(key: Option<&SealKey>) -> Self {
        Sealer {
            cipher: key.map(cipher_of),
            previous: None,
        }
    }

    /// Also opens (never seals) what `previous` sealed: the key before a rotation.
    pub fn with_previous(mut self, previous: Option<&SealKey>) -> Self {
        self.previous = previous.map(cipher_of);
        self
    }

    fn cipher(&self) -> Result<&XChaCha20Poly1305, Error> {
        self.cipher.as_ref().ok_or(Error::FailedPrecondition {
            reason: "SEAL_KEY_MISSING",
            message: "idempotent IssueKey and RollKey need a seal key to keep the secret for \
                      replay: start the server with KEYAUTH_SEAL_KEY (or --seal-key-file); \
                      `keyauth gen-seal-key` prints one"
                .into(),
        })
    }

    /// Seals `secret`, bound to `context` (the record it belongs to): base64(nonce ‖ ciphertext).
    pub fn seal(&self, secret: &str, context: &[u8]) -> Result<String, Error> {
        let cipher = self.cipher()?;
        let mut nonce = [0u8; NONCE_LEN];
        SysRng.try_fill_bytes(&mut nonce).map_err(Error::internal)?;
        let sealed = cipher
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: secret.as_bytes(),
                    aad: context,
                },
            )
            .map_err(|_| Error::internal("sealing failed"))?;
        let mut out = nonce.to_vec();
        out.extend(sealed);
        Ok(STANDARD.encode(out))
    }

    pub fn open(&self, sealed: &str, context: &[u8]) -> Result<String, Error> {
        let cipher = self.cipher()?;
        let bytes = STANDARD
            .decode(sealed)
            .map_err(|_| Error::internal("sealed secret is not base64"))?;
        if bytes.len() <= NONCE_LEN {
            return Err(Error::internal("sealed secret too short"));
        }
        let (nonce, body) = bytes.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(Error::internal)?;
        let open = |cipher: &XChaCha20Poly1305| {
            cipher
                .decrypt(
                    &XNonce::from(nonce),
                    Payload {
                        msg: body,
                        aad: context,
                    },
                )
                .ok()
        };
        let plain = Zeroizing::new(
            open(cipher)
                .or_else(|| self.previous.as_ref().and_then(open))
                .ok_or_else(|| {
                    Error::internal(
                        "a sealed secret does not open: was the seal key changed without \
                         giving the old one as the previous seal key?",
                    )
                })?,
        );
        String::from_utf8(plain.to_vec()).map_err(Error::internal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_printable_ascii_up_to_255() {
        assert!(IdempotencyKey::parse(b"order-123 retry").is_ok());
        assert!(IdempotencyKey::parse(&[b'a'; 255]).is_ok());
        for bad in [
            &b""[..],
            &[b'a'; 256],
            b"tab\there",
            "é".as_bytes(),
            b"\x7f",
        ] {
            assert!(IdempotencyKey::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn seal_round_trip_bound_to_context() {
        let key = SealKey::parse(&SealKey::generate_hex().unwrap()).unwrap();
        let sealer = Sealer::new(Some(&key));
        let sealed = sealer.seal("sk_test_secret", b"ctx").unwrap();
        assert!(!sealed.contains("secret"));
        assert_eq!(sealer.open(&sealed, b"ctx").unwrap(), "sk_test_secret");
        assert!(sealer.open(&sealed, b"other").is_err());
        let other = Sealer::new(Some(
            &SealKey::parse(&SealKey::generate_hex().unwrap()).unwrap(),
        ));
        assert!(other.open(&sealed, b"ctx").is_err());
    }

    #[test]
    fn the_previous_key_still_opens_after_a_rotation() {
        let old = SealKey::parse(&SealKey::generate_hex().unwrap()).unwrap();
        let new = SealKey::parse(&SealKey::generate_hex().unwrap()).unwrap();
        let sealed_before = Sealer::new(Some(&old)).seal("sk_test_a", b"ctx").unwrap();
        let rotated = Sealer::new(Some(&new)).with_previous(Some(&old));
        assert_eq!(rotated.open(&sealed_before, b"ctx").unwrap(), "sk_test_a");
        let sealed_after = rotated.seal("sk_test_b", b"ctx").unwrap();
        assert_eq!(
            Sealer::new(Some(&new)).open(&sealed_after, b"ctx").unwrap(),
            "sk_test_b",
            "new seals use the current key"
        );
        assert!(Sealer::new(Some(&old)).open(&sealed_after, b"ctx").is_err());
        assert!(
            Sealer::new(Some(&new))
                .open(&sealed_before, b"ctx")
                .is_err()
        );
    }

    #[test]
    fn without_a_key_sealing_is_refused() {
        let Err(Error::FailedPrecondition { reason, message }) = Sealer::new(None).seal("s", b"")
        else {
            panic!("sealed without a key")
        };
        assert_eq!(reason, "SEAL_KEY_MISSING");
        assert!(message.contains("KEYAUTH_SEAL_KEY"));
    }

    #[test]
    fn seal_keys_parse_from_hex_or_base64() {
        let hex = SealKey::generate_hex().unwrap();
        assert!(SealKey::parse(&hex).is_ok());
        assert!(SealKey::parse(&STANDARD.encode([7u8; 32])).is_ok());
        assert!(SealKey::parse("abcd").is_err());
        assert!(SealKey::parse(&STANDARD.encode([7u8; 16])).is_err());
        assert_eq!(
            format!("{:?}", SealKey::parse(&hex).unwrap()),
            "SealKey(..)"
        );
    }

    #[test]
    fn fingerprints_differ_by_method_and_body() {
        assert_ne!(fingerprint("IssueKey", b"a"), fingerprint("RollKey", b"a"));
        assert_ne!(fingerprint("IssueKey", b"a"), fingerprint("IssueKey", b"b"));
        assert_eq!(fingerprint("IssueKey", b"a").len(), 64);
    }
}
