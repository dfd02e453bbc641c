//! The key format of DESIGN.md §1: `sk_<env>_<lookup><secret><checksum>`.
//!
//! - `lookup`: 12 random base62 characters, public; the key id is `key_<lookup>`.
//! - `secret`: 32 base62 characters from the OS CSPRNG (190.5 bits).
//! - `checksum`: CRC32 of everything before it, as 6 base62 characters, so typos, truncated
//!   pastes and random garbage are refused without any I/O.
//!
//! A [`PresentedKey`] exists only once a string has passed these checks. Its `Debug` prints the
//! redaction, never the key.
//!
//! Part of the contract (no I/O, no async, a few small dependencies) so that everything that
//! must recognise a key offline uses the same code: the server, the in-process `Verifier` of
//! `keyauth-client`, the CLI's leak scanner, and the proto's redacting `Debug`.

use std::fmt;

use rand::TryRng;
use rand::rngs::SysRng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// Environment of a key; it decides the key's prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Environment {
    Test,
    Live,
}

impl Environment {
    pub fn as_str(self) -> &'static str {
        match self {
            Environment::Test => "test",
            Environment::Live => "live",
        }
    }

    pub fn from_store(s: &str) -> Option<Self> {
        match s {
            "test" => Some(Environment::Test),
            "live" => Some(Environment::Live),
            _ => None,
        }
    }
}

/// Why a presented key is refused: the REST API's error codes and messages (the seed's error
/// body), the same whether keyauth or a caller's in-process `Verifier` judged it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Denial {
    /// Missing, malformed, bad checksum, unknown, or wrong secret.
    AuthenticationError,
    /// Secret proven, key revoked.
    Revoked,
    /// Secret proven, past `expire_time`.
    Expired,
    /// Secret proven, key valid, a required permission missing.
    InsufficientPermissions,
}

impl Denial {
    /// Every denial, in the order of the rule that judges a key.
    pub const ALL: [Denial; 4] = [
        Denial::AuthenticationError,
        Denial::Revoked,
        Denial::Expired,
        Denial::InsufficientPermissions,
    ];

    /// The denial whose [`Denial::code`] is `code`, if any.
    pub fn from_code(code: &str) -> Option<Denial> {
        Denial::ALL.into_iter().find(|d| d.code() == code)
    }

    pub fn code(self) -> &'static str {
        match self {
            Denial::AuthenticationError => "authentication_error",
            Denial::Revoked => "api_key_revoked",
            Denial::Expired => "api_key_expired",
            Denial::InsufficientPermissions => "insufficient_permissions",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Denial::AuthenticationError => "Invalid API key provided",
            Denial::Revoked => "This API key has been revoked",
            Denial::Expired => "This API key has expired",
            Denial::InsufficientPermissions => {
                "This API key does not have the permissions required for this request"
            }
        }
    }

    pub fn error_type(self) -> &'static str {
        "invalid_request_error"
    }

    pub fn http_status(self) -> i32 {
        match self {
            Denial::InsufficientPermissions => 403,
            _ => 401,
        }
    }
}

/// The product's built-in permission catalog (DESIGN §2): each resource with the actions it
/// allows. The server can replace it (`--catalog`); callers that judge permissions themselves
/// (the in-process `Verifier`) start from it.
pub const BUILT_IN_CATALOG: &[(&str, &[&str])] = &[
    ("patients", &["read", "write", "delete"]),
    ("encounters", &["read", "write"]),
    ("observations", &["read", "write"]),
    ("prescriptions", &["read", "write"]),
    ("diagnoses", &["read", "write"]),
    ("appointments", &["read", "write", "delete"]),
    ("ai", &["read", "write"]),
];

/// Length of a key's public lookup part, the tail of its id (`key_<lookup>`).
pub const LOOKUP_LEN: usize = 12;

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
pub const SECRET_LEN: usize = 32;
pub const CHECKSUM_LEN: usize = 6;
const PREFIX_LEN: usize = 8; // "sk_test_" and "sk_live_"
pub const KEY_LEN: usize = PREFIX_LEN + LOOKUP_LEN + SECRET_LEN + CHECKSUM_LEN;

pub fn prefix(env: Environment) -> &'static str {
    match env {
        Environment::Test => "sk_test_",
        Environment::Live => "sk_live_",
    }
}

/// A full key as presented by a client or just generated. Wiped from memory on drop.
pub struct PresentedKey {
    full: Zeroizing<String>,
    environment: Environment,
}

/// SHA-256 of a whole key: what the verification cache remembers instead of the key.
pub type KeyDigest = [u8; 32];

impl PresentedKey {
    /// Generates a new key for `environment` from the OS CSPRNG.
    pub fn generate(environment: Environment) -> Result<Self, rand::rngs::SysError> {
        let mut full = Zeroizing::new(String::with_capacity(KEY_LEN));
        full.push_str(prefix(environment));
        push_random_base62(&mut full, LOOKUP_LEN + SECRET_LEN)?;
        push_checksum(&mut full);
        Ok(PresentedKey { full, environment })
    }

    /// Builds a key from its parts, computing the checksum; `None` unless each part has its
    /// length and alphabet. For tools and tests that need a well-formed key with a chosen
    /// lookup (e.g. a known id with a wrong secret).
    pub fn from_parts(environment: Environment, lookup: &str, secret: &str) -> Option<Self> {
        let base62 =
            |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_alphanumeric());
        if !base62(lookup, LOOKUP_LEN) || !base62(secret, SECRET_LEN) {
            return None;
        }
        let mut full = Zeroizing::new(String::with_capacity(KEY_LEN));
        full.push_str(prefix(environment));
        full.push_str(lookup);
        full.push_str(secret);
        push_checksum(&mut full);
        Some(PresentedKey { full, environment })
    }

    /// Parses a presented key: the raw key or a whole `Authorization` header value
    /// (`Bearer <key>`, scheme case-insensitive). `None` for anything that is not a
    /// well-formed key with a correct checksum; no detail, as the caller answers
    /// `authentication_error` for all of them alike. The key is copied (and wiped on drop);
    /// [`KeyView::parse`] checks it in place.
    pub fn parse(presented: &str) -> Option<Self> {
        KeyView::parse(presented).map(|view| view.to_owned())
    }

    /// The key as a view (no copy).
    pub fn view(&self) -> KeyView<'_> {
        KeyView {
            raw: &self.full,
            environment: self.environment,
        }
    }

    pub fn environment(&self) -> Environment {
        self.environment
    }

    /// The public lookup part.
    pub fn lookup(&self) -> &str {
        self.view().lookup()
    }

    /// The key id, `key_<lookup>`, as text.
    pub fn id_text(&self) -> String {
        self.view().id_text()
    }

    /// The secret part: what argon2id hashes.
    pub fn secret(&self) -> &[u8] {
        &self.full.as_bytes()[PREFIX_LEN + LOOKUP_LEN..PREFIX_LEN + LOOKUP_LEN + SECRET_LEN]
    }

    /// SHA-256 of the whole key.
    pub fn digest(&self) -> KeyDigest {
        self.view().digest()
    }

    /// The full key, for the one response that returns it.
    pub fn expose(&self) -> &str {
        &self.full
    }

    /// Display form: prefix, six leading characters, `...`, the last four.
    pub fn redacted(&self) -> String {
        self.view().redacted()
    }
}

impl fmt::Debug for PresentedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("PresentedKey")
            .field(&self.redacted())
            .finish()
    }
}

/// `presented` without a leading `Bearer ` (any case) and the blanks after it.
fn without_scheme(presented: &str) -> &str {
    match presented.get(..7) {
        Some(scheme) if scheme.eq_ignore_ascii_case("bearer ") => presented[7..].trim_start(),
        _ => presented,
    }
}

/// The display form of anything shaped like a key (raw or `Bearer …`: a key's prefix and
/// length, base62 after the prefix), its checksum not verified: for printing what a caller
/// sent, whether or not it is a real key. `None` for anything else.
pub fn redact_shaped(presented: &str) -> Option<String> {
    let raw = without_scheme(presented.trim());
    let shaped = raw.len() == KEY_LEN
        && (raw.starts_with("sk_test_") || raw.starts_with("sk_live_"))
        && raw[PREFIX_LEN..].bytes().all(|b| b.is_ascii_alphanumeric());
    shaped.then(|| redaction(raw))
}

/// Prefix, six leading characters, `...`, the last four, of a key-shaped `raw`.
fn redaction(raw: &str) -> String {
    format!("{}...{}", &raw[..PREFIX_LEN + 6], &raw[KEY_LEN - 4..])
}

/// A presented key checked in place, borrowed from the request that carried it: what a Verify
/// answered from memory needs (the lookup part and the digest) without a copy of the key.
/// [`KeyView::to_owned`] makes the [`PresentedKey`] a call that has to wait keeps.
#[derive(Clone, Copy)]
pub struct KeyView<'a> {
    raw: &'a str,
    environment: Environment,
}

impl<'a> KeyView<'a> {
    /// See [`PresentedKey::parse`]: the same checks, without copying.
    pub fn parse(presented: &'a str) -> Option<Self> {
        let raw = without_scheme(presented.trim_matches(|c: char| c == ' ' || c == '\t'));
        if raw.len() != KEY_LEN || !raw.is_ascii() {
            return None;
        }
        let environment = if raw.starts_with("sk_test_") {
            Environment::Test
        } else if raw.starts_with("sk_live_") {
            Environment::Live
        } else {
            return None;
        };
        let (body, check) = raw.split_at(KEY_LEN - CHECKSUM_LEN);
        if !raw[PREFIX_LEN..].bytes().all(|b| b.is_ascii_alphanumeric()) {
            return None;
        }
        if checksum(body.as_bytes()) != check.as_bytes() {
            return None;
        }
        Some(KeyView { raw, environment })
    }

    pub fn environment(&self) -> Environment {
        self.environment
    }

    /// The public lookup part.
    pub fn lookup(&self) -> &'a str {
        &self.raw[PREFIX_LEN..PREFIX_LEN + LOOKUP_LEN]
    }

    /// The key id, `key_<lookup>`, as text.
    pub fn id_text(&self) -> String {
        format!("key_{}", self.lookup())
    }

    /// SHA-256 of the whole key.
    pub fn digest(&self) -> KeyDigest {
        Sha256::digest(self.raw.as_bytes()).into()
    }

    /// Display form: prefix, six leading characters, `...`, the last four.
    pub fn redacted(&self) -> String {
        redaction(self.raw)
    }

    /// The key copied into a [`PresentedKey`] (wiped on drop).
    pub fn to_owned(self) -> PresentedKey {
        PresentedKey {
            full: Zeroizing::new(self.raw.to_owned()),
            environment: self.environment,
        }
    }
}

impl fmt::Debug for KeyView<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("KeyView").field(&self.redacted()).finish()
    }
}

/// Compares two digests in constant time.
pub fn digests_match(a: &KeyDigest, b: &KeyDigest) -> bool {
    a.ct_eq(b).into()
}

/// Appends `n` uniformly random base62 characters (rejection sampling: no modulo bias).
fn push_random_base62(out: &mut String, n: usize) -> Result<(), rand::rngs::SysError> {
    let mut buf = Zeroizing::new([0u8; 64]);
    let mut pushed = 0;
    while pushed < n {
        SysRng.try_fill_bytes(&mut buf[..])?;
        for &b in buf.iter() {
            // 248 = 4 × 62: bytes at or above it would favour the first characters.
            if b < 248 && pushed < n {
                out.push(ALPHABET[usize::from(b % 62)] as char);
                pushed += 1;
            }
        }
    }
    Ok(())
}

/// A random base62 string of `n` characters from the OS CSPRNG (ids, salts for tokens).
pub fn random_base62(n: usize) -> Result<String, rand::rngs::SysError> {
    let mut s = String::with_capacity(n);
    push_random_base62(&mut s, n)?;
    Ok(s)
}

/// A random base62 id that needs to be unique, not secret (request ids): from the thread-local
/// generator, so the hot path makes no system call.
pub fn unique_base62(n: usize) -> String {
    use rand::RngExt;
    let mut rng = rand::rng();
    (0..n)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// CRC32 of `body` as exactly six base62 characters (62^6 > 2^32).
fn checksum(body: &[u8]) -> [u8; CHECKSUM_LEN] {
    let mut n = crc32fast::hash(body);
    let mut out = [b'0'; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(n % 62) as usize];
        n /= 62;
    }
    out
}

/// [`checksum`] appended to a key being built.
fn push_checksum(full: &mut String) {
    let checksum = checksum(full.as_bytes());
    full.extend(checksum.iter().map(|&b| char::from(b)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn generated_keys_round_trip() {
        for env in [Environment::Test, Environment::Live] {
            let key = PresentedKey::generate(env).unwrap();
            assert_eq!(key.expose().len(), KEY_LEN);
            assert!(key.expose().starts_with(prefix(env)));
            let parsed = PresentedKey::parse(key.expose()).expect("own key parses");
            assert_eq!(parsed.environment(), env);
            assert_eq!(parsed.id_text(), key.id_text());
            assert_eq!(parsed.digest(), key.digest());
            assert_eq!(parsed.secret().len(), SECRET_LEN);
            let header = format!("Bearer {}", key.expose());
            assert_eq!(PresentedKey::parse(&header).unwrap().digest(), key.digest());
            let lower = format!("bearer   {} ", key.expose());
            assert_eq!(PresentedKey::parse(&lower).unwrap().digest(), key.digest());
            // The view reads the key where it lies: the same parts, a borrowed lookup.
            let view = KeyView::parse(&lower).expect("own key parses in place");
            assert_eq!(view.environment(), env);
            assert_eq!(view.lookup(), key.lookup());
            assert!(
                lower
                    .as_bytes()
                    .as_ptr_range()
                    .contains(&view.lookup().as_ptr())
            );
            assert_eq!(view.digest(), key.digest());
            assert_eq!(view.redacted(), key.redacted());
            assert!(!format!("{view:?}").contains(&key.expose()[20..]));
            assert_eq!(view.to_owned().expose(), key.expose());
        }
    }

    #[test]
    fn every_single_character_change_is_rejected() {
        let key = PresentedKey::generate(Environment::Live).unwrap();
        let original = key.expose().as_bytes().to_vec();
        for i in 0..original.len() {
            for &c in ALPHABET.iter().chain(b"_-") {
                if c == original[i] {
                    continue;
                }
                let mut changed = original.clone();
                changed[i] = c;
                let changed = String::from_utf8(changed).unwrap();
                assert!(
                    PresentedKey::parse(&changed).is_none(),
                    "change at {i} to {} accepted",
                    c as char
                );
            }
        }
    }

    #[test]
    fn truncations_and_garbage_are_rejected() {
        let key = PresentedKey::generate(Environment::Test).unwrap();
        let full = key.expose();
        for len in 0..full.len() {
            assert!(PresentedKey::parse(&full[..len]).is_none());
        }
        let too_long = format!("{full}x");
        for garbage in [
            "",
            "Bearer ",
            "Bearer",
            "sk_test_",
            "\0\0\0",
            "ключ",
            too_long.as_str(),
            &"a".repeat(100_000),
        ] {
            assert!(PresentedKey::parse(garbage).is_none(), "{garbage:?}");
        }
        // Same body under the other environment's prefix: the checksum covers the prefix.
        let swapped = full.replacen("sk_test_", "sk_live_", 1);
        assert!(PresentedKey::parse(&swapped).is_none());
    }

    #[test]
    fn from_parts_matches_generate() {
        let key = PresentedKey::generate(Environment::Test).unwrap();
        let secret = std::str::from_utf8(key.secret()).unwrap();
        let rebuilt = PresentedKey::from_parts(Environment::Test, key.lookup(), secret).unwrap();
        assert_eq!(rebuilt.expose(), key.expose());
        assert!(PresentedKey::from_parts(Environment::Test, "short", secret).is_none());
        assert!(PresentedKey::from_parts(Environment::Test, key.lookup(), "bad-secret").is_none());
    }

    #[test]
    fn hundred_thousand_keys_are_distinct() {
        let mut seen = HashSet::new();
        let mut lookups = HashSet::new();
        for _ in 0..100_000 {
            let key = PresentedKey::generate(Environment::Test).unwrap();
            lookups.insert(key.lookup().to_owned());
            assert!(seen.insert(key.digest()));
        }
        assert_eq!(lookups.len(), 100_000);
    }

    #[test]
    fn debug_and_redaction_hide_the_secret() {
        let key = PresentedKey::generate(Environment::Live).unwrap();
        let secret = std::str::from_utf8(key.secret()).unwrap().to_owned();
        let debug = format!("{key:?}");
        let redacted = key.redacted();
        assert!(!debug.contains(&secret) && !redacted.contains(&secret));
        assert!(redacted.starts_with("sk_live_") && redacted.contains("..."));
        assert_eq!(redacted.len(), 8 + 6 + 3 + 4);
        assert!(key.expose().ends_with(&redacted[redacted.len() - 4..]));
    }

    #[test]
    fn base62_is_roughly_uniform() {
        let s = random_base62(62 * 2000).unwrap();
        let mut counts = [0u32; 62];
        for b in s.bytes() {
            counts[ALPHABET.iter().position(|&a| a == b).unwrap()] += 1;
        }
        // Expected 2000 each; a biased sampler would skew the first characters by ~3%.
        assert!(
            counts.iter().all(|&c| (1700..2300).contains(&c)),
            "{counts:?}"
        );
    }
}
