//! [`Principals`]: the loaded set, looked up by token or certificate; and [`PrincipalsCell`],
//! the set in force, swapped whole when the file changes.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use keyauth_contract::principal::{Principal, Role, Roles, Scope};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::file::{self, Credential, FileError, PrincipalsFile};
use super::issuer::IssuerConfig;
use super::jwt::JwtIssuers;

/// The legacy settings' principals: name, role, and the setting an error names.
const LEGACY: [(&str, Role, &str); 2] = [
    (
        "admin",
        Role::Admin,
        "KEYAUTH_ADMIN_TOKEN (--admin-token, --admin-token-file)",
    ),
    (
        "verifier",
        Role::Verify,
        "KEYAUTH_VERIFIER_TOKEN (--verifier-token, --verifier-token-file)",
    ),
];

/// The shortest operator or verifier token accepted.
pub const MIN_TOKEN_CHARS: usize = 32;

/// The credentials configured: static tokens (by their SHA-256), client certificates (by URI
/// SAN or subject) and JWT issuers. Tokens are never held, only their digests.
#[derive(Debug, Default)]
pub struct Principals {
    /// Every static principal, in file order (the legacy ones last).
    all: Vec<Arc<Principal>>,
    tokens: HashMap<[u8; 32], Arc<Principal>>,
    uris: HashMap<String, Arc<Principal>>,
    subjects: HashMap<String, Arc<Principal>>,
    issuers: Vec<IssuerConfig>,
    /// The SHA-256 of the file's bytes this set was loaded from.
    pub(super) source: Option<[u8; 32]>,
}

impl Principals {
    /// No credential at all.
    pub fn empty() -> Principals {
        Principals::default()
    }

    /// Parses and checks a principals file's text.
    pub fn parse(text: &str) -> Result<Principals, FileError> {
        file::parse(text).map(Principals::from_file)
    }

    /// The set of an already parsed file.
    pub fn from_file(parsed: PrincipalsFile) -> Principals {
        let mut set = Principals::empty();
        for p in parsed.principals {
            set.insert(p.credential, p.principal);
        }
        set.issuers = parsed.issuers;
        set
    }

    /// `file` (or nothing) with the legacy tokens as principals: `admin` (role `admin`) for
    /// `KEYAUTH_ADMIN_TOKEN`, `verifier` (role `keys.verify`) for the verifier token. A token
    /// shorter than [`MIN_TOKEN_CHARS`] is an error naming its setting (the start stops), as
    /// is a file principal of the same name or token.
    pub fn with_legacy(
        file: Option<Principals>,
        admin_token: Option<&str>,
        verifier_token: Option<&str>,
    ) -> Result<Principals, String> {
        let mut set = file.unwrap_or_default();
        for ((name, role, setting), token) in LEGACY.into_iter().zip([admin_token, verifier_token])
        {
            let Some(token) = token else { continue };
            let chars = token.chars().count();
            if chars < MIN_TOKEN_CHARS {
                return Err(format!(
                    "{setting}: the token must be at least {MIN_TOKEN_CHARS} characters \
                     (it has {chars})"
                ));
            }
            if set.all.iter().any(|p| p.name == name) {
                return Err(format!(
                    "duplicate name: the principals file has a principal {name:?} and \
                     {setting} is set too; rename the file's principal"
                ));
            }
            let digest = sha256(token);
            if let Some(other) = set.tokens.get(&digest) {
                return Err(format!(
                    "{setting} is the token of principal {:?} in the principals file",
                    other.name
                ));
            }
            let principal = Principal {
                name: name.to_owned(),
                subject: String::new(),
                issuer: String::new(),
                roles: Roles::of([role]),
                scope: Scope::everything(),
            };
            set.insert(Credential::TokenSha256(digest), principal);
        }
        Ok(set)
    }

    fn insert(&mut self, credential: Credential, principal: Principal) {
        let principal = Arc::new(principal);
        self.all.push(principal.clone());
        match credential {
            Credential::TokenSha256(digest) => self.tokens.insert(digest, principal),
            Credential::CertificateUri(uri) => self.uris.insert(uri, principal),
            Credential::CertificateSubject(subject) => self.subjects.insert(subject, principal),
        };
    }

    /// The principal of a bearer token: its SHA-256 finds the entry, whose digest is then
    /// compared in constant time. An empty token is nobody's.
    pub fn by_token(&self, token: &str) -> Option<Arc<Principal>> {
        if token.is_empty() {
            return None;
        }
        let digest = sha256(token);
        let (stored, principal) = self.tokens.get_key_value(&digest)?;
        bool::from(stored.ct_eq(&digest)).then(|| principal.clone())
    }

    /// The principal of a client certificate: the first of its URI SANs that is configured,
    /// else its subject (as the TLS layer renders it, e.g. `CN=…`), compared exactly.
    pub fn by_certificate(&self, uri_sans: &[&str], subject: &str) -> Option<Arc<Principal>> {
        uri_sans
            .iter()
            .find_map(|uri| self.uris.get(*uri))
            .or_else(|| self.subjects.get(subject))
            .cloned()
    }

    /// The JWT issuers, in file order.
    pub fn issuers(&self) -> &[IssuerConfig] {
        &self.issuers
    }

    /// The static principals (tokens and certificates), in file order, legacy ones last.
    pub fn principals(&self) -> &[Arc<Principal>] {
        &self.all
    }

    /// How many credentials are configured: static principals and issuers.
    pub fn len(&self) -> usize {
        self.all.len() + self.issuers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether some configured credential can hold `role` (`admin` counts for every role): a
    /// static principal, or an issuer whose fixed roles or subjects include it or whose tokens
    /// carry roles (`roles_claim`). Verify stays open only while this is false for
    /// `keys.verify`.
    /// Whether some credential is given `role` itself, not only through `admin` (a token
    /// issuer that maps a roles claim may give any): what closes the verifier's RPCs to
    /// callers without a credential, as a verifier token did.
    pub fn names_role(&self, role: Role) -> bool {
        self.all.iter().any(|p| p.roles.contains(role))
            || self.issuers.iter().any(|i| {
                i.roles_claim.is_some()
                    || i.roles.contains(role)
                    || i.subjects.iter().any(|s| s.roles.contains(role))
            })
    }

    pub fn grants(&self, role: Role) -> bool {
        self.all.iter().any(|p| p.may(role))
            || self.issuers.iter().any(|i| {
                i.roles_claim.is_some()
                    || i.roles.allow(role)
                    || i.subjects.iter().any(|s| s.roles.allow(role))
            })
    }
}

pub(super) fn sha256(bytes: impl AsRef<[u8]>) -> [u8; 32] {
    Sha256::digest(bytes.as_ref()).into()
}

/// The set in force, read by every call and swapped whole by the reloader: the principals and
/// the JWT issuers of the same file.
pub struct PrincipalsCell(RwLock<InForce>);

#[derive(Clone)]
struct InForce {
    principals: Arc<Principals>,
    jwt: Option<Arc<JwtIssuers>>,
}

impl std::fmt::Debug for PrincipalsCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let in_force = self.read();
        f.debug_struct("PrincipalsCell")
            .field("principals", &in_force.principals.len())
            .field("jwt_issuers", &in_force.jwt)
            .finish()
    }
}

impl PrincipalsCell {
    /// `principals` without JWT issuers.
    pub fn new(principals: Principals) -> PrincipalsCell {
        PrincipalsCell::with_jwt(principals, None)
    }

    /// `principals` and the validator of their `[[issuer]]`s ([`super::jwt_issuers`]).
    pub fn with_jwt(principals: Principals, jwt: Option<Arc<JwtIssuers>>) -> PrincipalsCell {
        PrincipalsCell(RwLock::new(InForce {
            principals: Arc::new(principals),
            jwt,
        }))
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, InForce> {
        self.0.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The set in force now (a call keeps the one it started with).
    pub fn current(&self) -> Arc<Principals> {
        self.read().principals.clone()
    }

    /// The JWT issuers in force now, if the set has any.
    pub fn jwt(&self) -> Option<Arc<JwtIssuers>> {
        self.read().jwt.clone()
    }

    /// Puts `principals` and their issuers' validator in force, together.
    pub fn replace(&self, principals: Principals, jwt: Option<Arc<JwtIssuers>>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = InForce {
            principals: Arc::new(principals),
            jwt,
        };
    }
}

#[cfg(test)]
#[path = "registry_tests.rs"]
mod tests;
