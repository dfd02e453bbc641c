//! The rule that judges a key whose secret was proven, wherever it is judged: keyauth's
//! Authority and a caller's in-process `Verifier` both call [`judge`], so they cannot disagree.
//!
//! The secret comes first (a key not proven is [`Denial::AuthenticationError`] and reveals no
//! state: the caller decides that before asking here); then revoked before expired; the
//! permissions last.

use keyauth_contract::Denial;

/// What the rule needs to know of a proven key.
pub trait ProvenKey {
    fn is_revoked(&self) -> bool;
    /// Whether the key has expired at `now_micros` (microseconds since the epoch): a key
    /// expires at its expiry exactly.
    fn is_expired_at(&self, now_micros: i64) -> bool;
    /// Whether the key holds `action` on `resource`.
    fn allows(&self, resource: &str, action: &str) -> bool;
}

/// Judges a proven key at `now_micros` against `required` (resource, action) pairs: `None`
/// when it may act.
pub fn judge<'a>(
    key: &impl ProvenKey,
    now_micros: i64,
    required: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Option<Denial> {
    if key.is_revoked() {
        Some(Denial::Revoked)
    } else if key.is_expired_at(now_micros) {
        Some(Denial::Expired)
    } else if required.into_iter().any(|(r, a)| !key.allows(r, a)) {
        Some(Denial::InsufficientPermissions)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Key {
        revoked: bool,
        expires: Option<i64>,
    }

    impl ProvenKey for Key {
        fn is_revoked(&self) -> bool {
            self.revoked
        }
        fn is_expired_at(&self, now: i64) -> bool {
            self.expires.is_some_and(|e| e <= now)
        }
        fn allows(&self, resource: &str, action: &str) -> bool {
            (resource, action) == ("patients", "read")
        }
    }

    #[test]
    fn revoked_before_expired_before_permissions() {
        let write = [("patients", "write")];
        let read = [("patients", "read")];
        let cases = [
            (true, Some(5), &write[..], Some(Denial::Revoked)),
            (false, Some(5), &write[..], Some(Denial::Expired)),
            (false, Some(11), &read[..], None),
            (false, Some(10), &read[..], Some(Denial::Expired)),
            (
                false,
                Some(11),
                &write[..],
                Some(Denial::InsufficientPermissions),
            ),
            (false, None, &read[..], None),
            (false, None, &[][..], None),
        ];
        for (revoked, expires, required, expected) in cases {
            let key = Key { revoked, expires };
            assert_eq!(
                judge(&key, 10, required.iter().copied()),
                expected,
                "{revoked} {expires:?} {required:?}"
            );
        }
    }
}
