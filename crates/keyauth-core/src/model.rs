//! The domain: validated values ("parse, don't validate") and the key record with the rules
//! that read it. Plain Rust: no wire types, no SQL.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::clock::Timestamp;
use crate::error::{Error, FieldViolation, echo};

pub use keyauth_contract::{Denial, Environment, LOOKUP_LEN};

/// A key id, `key_<lookup>`: public, stable, the primary key of the store.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(String);

impl KeyId {
    pub(crate) fn from_lookup(lookup: &str) -> Self {
        let mut id = String::with_capacity(4 + lookup.len());
        id.push_str("key_");
        id.push_str(lookup);
        KeyId(id)
    }

    /// Parses an id given by a caller; `field` names it in the error.
    pub fn parse(s: &str, field: &str) -> Result<Self, Error> {
        if s.is_empty() {
            return Err(Error::invalid(field, "is required"));
        }
        match s.strip_prefix("key_") {
            Some(lookup)
                if lookup.len() == LOOKUP_LEN
                    && lookup.bytes().all(|b| b.is_ascii_alphanumeric()) =>
            {
                Ok(KeyId(s.to_owned()))
            }
            _ => Err(Error::invalid(
                field,
                format!("must be a key id like `key_` followed by {LOOKUP_LEN} letters or digits"),
            )),
        }
    }

    /// An id read back from the store, trusted as written.
    pub(crate) fn from_store(s: String) -> Self {
        KeyId(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A key id borrows as its text, so that the cache can be read with an id made on the stack
/// ([`KeyIdText`]). `KeyId` hashes and compares as its `String`, hence as that `str`.
impl std::borrow::Borrow<str> for KeyId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// The id of a lookup part as text on the stack (`key_` and the lookup): what a Verify answered
/// from memory reads the cache with, without allocating a [`KeyId`].
pub struct KeyIdText {
    text: [u8; 4 + LOOKUP_LEN],
}

impl KeyIdText {
    /// The id of a parsed key (whose lookup part the parse checked).
    pub fn of(key: &keyauth_contract::KeyView<'_>) -> Self {
        let mut text = [0; 4 + LOOKUP_LEN];
        text[..4].copy_from_slice(b"key_");
        text[4..].copy_from_slice(key.lookup().as_bytes());
        KeyIdText { text }
    }

    pub fn as_str(&self) -> &str {
        // ASCII by construction.
        std::str::from_utf8(&self.text).unwrap_or_default()
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

pub const APPLICATION_ID_MAX: usize = 128;
pub const NAME_MAX: usize = 200;
pub const REASON_MAX: usize = 500;
pub const METADATA_MAX_ENTRIES: usize = 50;
pub const METADATA_KEY_MAX: usize = 40;
pub const METADATA_VALUE_MAX: usize = 500;

/// An application id: 1 to 128 characters of `A-Z a-z 0-9 _ - . :`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApplicationId(String);

impl ApplicationId {
    pub fn parse(s: &str, field: &str) -> Result<Self, Error> {
        if s.is_empty() {
            return Err(Error::invalid(field, "is required"));
        }
        if s.len() > APPLICATION_ID_MAX {
            return Err(Error::invalid(
                field,
                format!("is longer than {APPLICATION_ID_MAX} characters"),
            ));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
        {
            return Err(Error::invalid(
                field,
                "may only contain letters, digits and `_ - . :`",
            ));
        }
        Ok(ApplicationId(s.to_owned()))
    }

    pub(crate) fn from_store(s: String) -> Self {
        ApplicationId(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Checks free text: at most `max` characters, no control characters.
pub fn check_text(s: &str, field: &str, max: usize) -> Result<(), Error> {
    if s.chars().count() > max {
        return Err(Error::invalid(
            field,
            format!("is longer than {max} characters"),
        ));
    }
    if s.chars().any(char::is_control) {
        return Err(Error::invalid(field, "must not contain control characters"));
    }
    Ok(())
}

/// A key's human name: 1 to 200 characters, no control characters.
pub fn parse_name(s: &str, field: &str) -> Result<String, Error> {
    if s.trim().is_empty() {
        return Err(Error::invalid(field, "is required"));
    }
    check_text(s, field, NAME_MAX)?;
    Ok(s.to_owned())
}

pub type Metadata = BTreeMap<String, String>;

/// Checks a metadata map against its limits, naming the offending entry.
pub fn check_metadata(metadata: &Metadata, field: &str) -> Result<(), Error> {
    if metadata.len() > METADATA_MAX_ENTRIES {
        return Err(Error::invalid(
            field,
            format!("has more than {METADATA_MAX_ENTRIES} entries"),
        ));
    }
    let mut violations = Vec::new();
    for (k, v) in metadata {
        let at = format!("{field}[{}]", echo(k));
        if k.is_empty() {
            violations.push(FieldViolation::new(&at, "key must not be empty"));
        }
        for (text, what, max) in [
            (k, "key", METADATA_KEY_MAX),
            (v, "value", METADATA_VALUE_MAX),
        ] {
            if let Err(Error::InvalidArgument(v)) = check_text(text, &at, max) {
                violations.extend(v.into_iter().map(|mut fv| {
                    fv.description = format!("{what} {}", fv.description);
                    fv
                }));
            }
        }
    }
    if violations.is_empty() {
        Ok(())
    } else {
        Err(Error::InvalidArgument(violations))
    }
}

/// A set of permissions: resource → actions, both checked against the catalog.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
/// Held as sorted, exact-size vectors rather than B-trees: every cached key carries one, and a
/// B-tree node reserves room for eleven entries however few it holds.
pub struct Permissions(Vec<(String, Vec<String>)>);

impl Permissions {
    /// Builds a set from already validated pairs.
    pub(crate) fn from_pairs<I: IntoIterator<Item = (String, String)>>(pairs: I) -> Self {
        let mut map: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (resource, action) in pairs {
            map.entry(resource).or_default().insert(action);
        }
        Permissions(
            map.into_iter()
                .map(|(r, a)| (r, a.into_iter().collect()))
                .collect(),
        )
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Heap bytes of the set, estimated (see [`KeyRecord::approx_bytes`]).
    fn approx_bytes(&self) -> usize {
        let vec = std::mem::size_of::<Vec<String>>();
        self.0
            .iter()
            .map(|(r, actions)| {
                r.len() + 2 * vec + actions.iter().map(|a| a.len() + vec).sum::<usize>()
            })
            .sum()
    }

    pub fn allows(&self, resource: &str, action: &str) -> bool {
        self.0
            .binary_search_by(|(r, _)| r.as_str().cmp(resource))
            .is_ok_and(|i| self.0[i].1.iter().any(|a| a == action))
    }

    /// Resource and its actions, resources sorted.
    pub fn iter(&self) -> impl Iterator<Item = (&str, impl Iterator<Item = &str>)> {
        self.0
            .iter()
            .map(|(r, a)| (r.as_str(), a.iter().map(String::as_str)))
    }

    /// Every (resource, action) pair.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0
            .iter()
            .flat_map(|(r, a)| a.iter().map(move |a| (r.as_str(), a.as_str())))
    }

    /// Compact text form kept in the store: `patients:read,write;encounters:read`.
    pub fn to_store(&self) -> String {
        self.0
            .iter()
            .map(|(r, a)| format!("{r}:{}", a.join(",")))
            .collect::<Vec<_>>()
            .join(";")
    }

    pub fn from_store(s: &str) -> Self {
        Permissions::from_pairs(s.split(';').filter(|p| !p.is_empty()).flat_map(|part| {
            let (resource, actions) = part.split_once(':').unwrap_or((part, ""));
            actions
                .split(',')
                .filter(|a| !a.is_empty())
                .map(move |a| (resource.to_owned(), a.to_owned()))
        }))
    }
}

/// State of a key at a given time; never stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyState {
    Active,
    Expired,
    Revoked,
}

/// A set of key states (a ListKeys filter); empty: every state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeyStates(u8);

impl KeyStates {
    /// Every state: no filter.
    pub const ALL: KeyStates = KeyStates(0);

    pub fn of(states: impl IntoIterator<Item = KeyState>) -> Self {
        KeyStates(
            states
                .into_iter()
                .fold(0, |bits, state| bits | Self::bit(state)),
        )
    }

    fn bit(state: KeyState) -> u8 {
        match state {
            KeyState::Active => 1,
            KeyState::Expired => 2,
            KeyState::Revoked => 4,
        }
    }

    /// Whether the set holds `state` (the empty set holds every state).
    pub fn contains(self, state: KeyState) -> bool {
        self.0 == 0 || self.0 & Self::bit(state) != 0
    }

    /// The set as the store's filter parameter: bit 1 active, 2 expired, 4 revoked; 0 every
    /// state.
    pub fn bits(self) -> i64 {
        i64::from(self.0)
    }
}

/// Everything the store keeps about a key. The secret is only there as an argon2id hash.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub id: KeyId,
    pub application_id: ApplicationId,
    pub environment: Environment,
    pub name: String,
    /// argon2id PHC string of the secret part.
    pub secret_hash: String,
    /// The secret's check value (`check_value`), if it has one: a wrong secret is refused
    /// without argon2.
    pub secret_check: Option<String>,
    pub redacted: String,
    /// False: a standard key with every permission of the catalog.
    pub restricted: bool,
    pub permissions: Permissions,
    pub metadata: Metadata,
    pub create_time: Timestamp,
    pub expire_time: Option<Timestamp>,
    pub revoke_time: Option<Timestamp>,
    pub revoke_reason: Option<String>,
    pub last_used_time: Option<Timestamp>,
    pub replaced_by: Option<KeyId>,
    /// What a server derives from this record once and reuses (keyauth-server: the record's
    /// encoded answer to a Verify). Not part of the record's value: see [`EncodedAnswer`].
    pub encoded_answer: EncodedAnswer,
}

/// Bytes derived from a record once, by whoever reads it, and kept with it. Sound because a
/// record is not changed once shared (`Arc<KeyRecord>`: the cache, a verdict): a change makes
/// a new record, and a clone (how a record is changed) starts with an empty memo. Equal for any
/// two records, and not shown in `Debug`.
#[derive(Default)]
pub struct EncodedAnswer(std::sync::OnceLock<bytes::Bytes>);

impl EncodedAnswer {
    /// The memo, made by `make` the first time.
    pub fn get_or_init(&self, make: impl FnOnce() -> bytes::Bytes) -> &bytes::Bytes {
        self.0.get_or_init(make)
    }
}

impl Clone for EncodedAnswer {
    fn clone(&self) -> Self {
        EncodedAnswer::default()
    }
}

impl PartialEq for EncodedAnswer {
    fn eq(&self, _: &EncodedAnswer) -> bool {
        true
    }
}

impl Eq for EncodedAnswer {}

impl fmt::Debug for KeyRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRecord")
            .field("id", &self.id)
            .field("application_id", &self.application_id)
            .field("environment", &self.environment)
            .field("redacted", &self.redacted)
            .field("restricted", &self.restricted)
            .field("expire_time", &self.expire_time)
            .field("revoke_time", &self.revoke_time)
            .field("replaced_by", &self.replaced_by)
            .finish_non_exhaustive()
    }
}

impl KeyRecord {
    /// Bytes the record takes in memory, estimated: the struct and what its strings, metadata
    /// and permissions hold on the heap (with a few words of bookkeeping each), and its memo
    /// once filled.
    pub fn approx_bytes(&self) -> usize {
        const PER_ALLOCATION: usize = 16;
        let text = |s: &str| s.len() + PER_ALLOCATION;
        let optional = |s: &Option<String>| s.as_deref().map_or(0, text);
        std::mem::size_of::<KeyRecord>()
            + text(self.id.as_str())
            + text(self.application_id.as_str())
            + text(&self.name)
            + text(&self.secret_hash)
            + optional(&self.secret_check)
            + text(&self.redacted)
            + optional(&self.revoke_reason)
            + self.replaced_by.as_ref().map_or(0, |id| text(id.as_str()))
            + self
                .metadata
                .iter()
                .map(|(k, v)| text(k) + text(v) + 3 * std::mem::size_of::<usize>())
                .sum::<usize>()
            + self.permissions.approx_bytes()
            + self.approx_memo_bytes()
    }

    /// Bytes the memo takes once filled, estimated as an encoding of the record: its text
    /// with a few bytes of framing each, its timestamps and flags, and the shared buffer's
    /// bookkeeping (two allocations).
    fn approx_memo_bytes(&self) -> usize {
        const FRAMING: usize = 2;
        const FIXED: usize = 32 + 48;
        let text = |s: &str| s.len() + FRAMING;
        text(self.id.as_str())
            + text(self.application_id.as_str())
            + text(&self.name)
            + text(&self.redacted)
            + self.revoke_reason.as_deref().map_or(0, text)
            + self.replaced_by.as_ref().map_or(0, |id| text(id.as_str()))
            + self
                .metadata
                .iter()
                .map(|(k, v)| text(k) + text(v) + FRAMING)
                .sum::<usize>()
            + self
                .permissions
                .iter()
                .map(|(r, actions)| text(r) + FRAMING + actions.map(text).sum::<usize>())
                .sum::<usize>()
            + FIXED
    }

    /// Revoked wins over expired; a key expires at its `expire_time` exactly.
    pub fn state(&self, now: Timestamp) -> KeyState {
        if self.revoke_time.is_some() {
            KeyState::Revoked
        } else if self.expire_time.is_some_and(|e| e <= now) {
            KeyState::Expired
        } else {
            KeyState::Active
        }
    }

    /// Whether the key holds `action` on `resource`; both are known to be in the catalog.
    pub fn allows(&self, resource: &str, action: &str) -> bool {
        !self.restricted || self.permissions.allows(resource, action)
    }
}

impl keyauth_contract::verdict::ProvenKey for KeyRecord {
    fn is_revoked(&self) -> bool {
        self.revoke_time.is_some()
    }

    fn is_expired_at(&self, now_micros: i64) -> bool {
        self.expire_time
            .is_some_and(|e| e.as_micros() <= now_micros)
    }

    fn allows(&self, resource: &str, action: &str) -> bool {
        KeyRecord::allows(self, resource, action)
    }
}

/// The answer to a Verify or CheckPermission: the record whenever the secret was proven.
#[derive(Clone, Debug)]
pub struct Verdict {
    pub record: Option<std::sync::Arc<KeyRecord>>,
    pub denial: Option<Denial>,
}

impl Verdict {
    pub fn unauthenticated() -> Self {
        Verdict {
            record: None,
            denial: Some(Denial::AuthenticationError),
        }
    }

    /// Judges a proven key by the contract's rule (`keyauth_contract::verdict`): revoked
    /// before expired, permissions last.
    pub fn of_proven(
        record: std::sync::Arc<KeyRecord>,
        now: Timestamp,
        required: &[(String, String)],
    ) -> Self {
        let required = required.iter().map(|(r, a)| (r.as_str(), a.as_str()));
        let denial = keyauth_contract::verdict::judge(&*record, now.as_micros(), required);
        Verdict {
            record: Some(record),
            denial,
        }
    }

    pub fn is_valid(&self) -> bool {
        self.denial.is_none()
    }

    /// The state the key was judged in, when its secret was proven (revoked and expired are
    /// denials of their own; a key denied a permission was active).
    pub fn state(&self) -> Option<KeyState> {
        self.record.as_ref()?;
        Some(match self.denial {
            Some(Denial::Revoked) => KeyState::Revoked,
            Some(Denial::Expired) => KeyState::Expired,
            None | Some(Denial::InsufficientPermissions | Denial::AuthenticationError) => {
                KeyState::Active
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn record(restricted: bool) -> KeyRecord {
        KeyRecord {
            restricted,
            permissions: Permissions::from_pairs([("patients".into(), "read".into())]),
            ..crate::testing::records::blank_record(KeyId::from_lookup("AAAAAAAAAAAA").as_str())
        }
    }

    fn t(s: i64) -> Timestamp {
        Timestamp::from_micros(s * 1_000_000)
    }

    #[test]
    fn an_id_on_the_stack_finds_the_key_id() {
        let key = keyauth_contract::PresentedKey::generate(Environment::Live).unwrap();
        let id = KeyIdText::of(&key.view());
        assert_eq!(id.as_str(), format!("key_{}", key.lookup()));
        let owned = KeyId::parse(id.as_str(), "id").unwrap();
        let mut ids = std::collections::HashSet::new();
        ids.insert(owned);
        assert!(ids.contains(id.as_str()));
    }

    /// A record's memo is not part of its value, and a clone (a change) starts without it.
    #[test]
    fn a_memo_does_not_survive_a_clone() {
        let r = record(false);
        r.encoded_answer
            .get_or_init(|| bytes::Bytes::from_static(b"answer"));
        let changed = r.clone();
        assert_eq!(changed, r);
        assert_eq!(
            changed
                .encoded_answer
                .get_or_init(|| bytes::Bytes::from_static(b"new")),
            "new"
        );
        assert_eq!(
            r.encoded_answer
                .get_or_init(|| bytes::Bytes::from_static(b"new")),
            "answer"
        );
    }

    #[test]
    fn state_order_revoked_before_expired() {
        let mut r = record(false);
        assert_eq!(r.state(t(10)), KeyState::Active);
        r.expire_time = Some(t(10));
        assert_eq!(r.state(t(9)), KeyState::Active);
        assert_eq!(r.state(t(10)), KeyState::Expired);
        r.revoke_time = Some(t(5));
        assert_eq!(r.state(t(10)), KeyState::Revoked);
    }

    #[test]
    fn verdict_checks_permissions_last() {
        let need_write = vec![("patients".to_owned(), "write".to_owned())];
        let need_read = vec![("patients".to_owned(), "read".to_owned())];
        let restricted = Arc::new(record(true));
        let v = Verdict::of_proven(restricted.clone(), t(1), &need_write);
        assert_eq!(v.denial, Some(Denial::InsufficientPermissions));
        assert_eq!(v.state(), Some(KeyState::Active));
        assert!(Verdict::of_proven(restricted, t(1), &need_read).is_valid());
        assert_eq!(Verdict::unauthenticated().state(), None);
        assert!(Verdict::of_proven(Arc::new(record(false)), t(1), &need_write).is_valid());
        let mut revoked = record(true);
        revoked.revoke_time = Some(t(0));
        let v = Verdict::of_proven(Arc::new(revoked), t(1), &need_write);
        assert_eq!(v.denial, Some(Denial::Revoked));
        assert_eq!(v.state(), Some(KeyState::Revoked));
        let mut expired = record(false);
        expired.expire_time = Some(t(1));
        let v = Verdict::of_proven(Arc::new(expired), t(1), &need_read);
        assert_eq!(v.state(), Some(KeyState::Expired));
    }

    #[test]
    fn permissions_store_round_trip() {
        let p = Permissions::from_pairs([
            ("patients".into(), "write".into()),
            ("patients".into(), "read".into()),
            ("ai".into(), "read".into()),
        ]);
        assert_eq!(p.to_store(), "ai:read;patients:read,write");
        assert_eq!(Permissions::from_store(&p.to_store()), p);
        assert!(Permissions::from_store("").is_empty());
    }

    #[test]
    fn input_limits_name_the_field() {
        assert!(ApplicationId::parse("app_1.prod:eu-west", "application_id").is_ok());
        for bad in ["", "has space", &"a".repeat(129)] {
            let Err(Error::InvalidArgument(v)) = ApplicationId::parse(bad, "application_id") else {
                panic!("{bad:?} accepted")
            };
            assert_eq!(v[0].field, "application_id");
        }
        assert!(parse_name(&"é".repeat(200), "name").is_ok());
        assert!(parse_name(&"é".repeat(201), "name").is_err());
        assert!(parse_name("a\u{0}b", "name").is_err());
        assert!(KeyId::parse("key_ABCDEFGHIJKL", "key_id").is_ok());
        assert!(KeyId::parse("key_ABC", "key_id").is_err());
        let mut m = Metadata::new();
        m.insert("k".repeat(41), "v".into());
        let Err(Error::InvalidArgument(v)) = check_metadata(&m, "metadata") else {
            panic!()
        };
        assert!(v[0].description.contains("40"));
    }
}
