//! JWT bearer tokens (OIDC ID/access tokens, Kubernetes projected service-account tokens) →
//! [`Principal`] (DESIGN §7 "Principals").
//!
//! The rules: algorithms from a per-issuer allow-list (RS256, ES256, EdDSA by default); `none`
//! and HS* always refused; `exp` required, `nbf` honoured, 60 s leeway; `iss` exact; `aud` must
//! contain the audience; tokens over 16 KiB refused before parsing; a `jku`, `x5u` or `crit`
//! header refused (nothing a token points to is ever fetched). Keys come by `kid` from the
//! issuer's JWKS only ([`keys`]); the JWS work is `jsonwebtoken`'s.
//!
//! A verified token is cached (keyed by its SHA-256, until its `exp`): a warm call costs a hash
//! and a map lookup. Tokens are never logged.
//!
//! - [`keys`]: an issuer's keys, fetched and refetched; [`fetch`]: where a JWKS comes from;
//! - [`claims`]: a verified token's claims → roles and scope.

mod claims;
mod fetch;
mod keys;
#[cfg(test)]
pub(crate) mod tests;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{AlgorithmFamily, Validation};
use keyauth_contract::principal::{Principal, Role, Roles, Scope};
use quick_cache::sync::Cache;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;

pub use fetch::JwksSource;
pub use jsonwebtoken::Algorithm;

use keys::KeySet;

/// Tokens longer than this are refused before anything is parsed.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Clock skew allowed on `exp` and `nbf`, in seconds.
pub const LEEWAY_SECS: u64 = 60;
/// The algorithms an issuer accepts unless its settings say otherwise.
pub const DEFAULT_ALGORITHMS: [Algorithm; 3] =
    [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];
/// A token naming an unknown `kid` refetches the JWKS at most this often.
pub const REFETCH_MIN_INTERVAL: Duration = Duration::from_secs(30);
/// The refresher refetches every issuer's JWKS this often.
pub const REFRESH_EVERY: Duration = Duration::from_secs(600);
/// How many verified tokens the cache holds.
const CACHE_ENTRIES: usize = 10_000;

/// One `[[issuer]]`: whose tokens are accepted, and what they may do. The principals file's
/// parser maps its own struct onto this one.
#[derive(Clone, Debug)]
pub struct IssuerSettings {
    /// `iss`, exactly.
    pub issuer: String,
    /// Must be in `aud`.
    pub audience: String,
    pub jwks: JwksSource,
    /// The claim that names the principal in the audit trail (`sub` by default).
    pub name_claim: String,
    /// A claim holding role names (an array, or a space-separated string).
    pub roles_claim: Option<String>,
    pub applications_claim: Option<String>,
    pub environments_claim: Option<String>,
    /// Roles every token of this issuer has.
    pub roles: Roles,
    /// `[[issuer.subject]]`: roles and scope of one subject.
    pub subjects: Vec<SubjectSettings>,
    /// The allow-list of `alg`s; HS* is refused at construction.
    pub algorithms: Vec<Algorithm>,
}

impl IssuerSettings {
    /// An issuer with the defaults: name from `sub`, no claims mapped, no roles, the default
    /// algorithms.
    pub fn new(issuer: impl Into<String>, audience: impl Into<String>, jwks: JwksSource) -> Self {
        IssuerSettings {
            issuer: issuer.into(),
            audience: audience.into(),
            jwks,
            name_claim: "sub".to_string(),
            roles_claim: None,
            applications_claim: None,
            environments_claim: None,
            roles: Roles::NONE,
            subjects: Vec::new(),
            algorithms: DEFAULT_ALGORITHMS.to_vec(),
        }
    }

    /// Whether some token of this issuer may hold `role`.
    fn can_grant(&self, role: Role) -> bool {
        self.roles_claim.is_some()
            || self.roles.allow(role)
            || self.subjects.iter().any(|s| s.roles.allow(role))
    }

    fn check(&self) -> Result<(), String> {
        let what = format!("issuer {:?}", self.issuer);
        if self.issuer.is_empty() || self.audience.is_empty() || self.name_claim.is_empty() {
            return Err(format!(
                "{what}: issuer, audience and name_claim must not be empty"
            ));
        }
        if self.algorithms.is_empty() {
            return Err(format!("{what}: no algorithm allowed"));
        }
        if let Some(hs) = self
            .algorithms
            .iter()
            .find(|a| a.family() == AlgorithmFamily::Hmac)
        {
            return Err(format!(
                "{what}: {hs:?} is never accepted (a shared secret, not a public key)"
            ));
        }
        if let JwksSource::Url(url) = &self.jwks {
            fetch::check_url(url).map_err(|e| format!("{what}: {e}"))?;
        }
        Ok(())
    }
}

/// `[[issuer.subject]]`: the roles and scope of one subject (`sub`), e.g. a service account.
#[derive(Clone, Debug)]
pub struct SubjectSettings {
    pub subject: String,
    pub roles: Roles,
    pub scope: Scope,
}

/// Why a token was refused: for the log (never the token itself); callers answer
/// `UNAUTHENTICATED` whatever it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JwtRefusal {
    TooLarge,
    /// Not three base64url segments, or a header or payload that does not parse (an unknown
    /// `alg` such as `none` included).
    Malformed(String),
    /// `jku`, `x5u` or `crit`.
    ForbiddenHeader(&'static str),
    AlgorithmNotAllowed(Algorithm),
    UnknownIssuer(String),
    /// No key with this `kid` in the issuer's JWKS, even after a refetch.
    UnknownKid(String),
    /// The key named by `kid` is not of the token's `alg`.
    KeyMismatch,
    BadSignature,
    Expired,
    NotYetValid,
    WrongAudience,
    WrongIssuer,
    MissingClaim(String),
    InvalidClaim(String),
    Invalid(String),
}

impl fmt::Display for JwtRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JwtRefusal::TooLarge => write!(f, "token over {MAX_TOKEN_BYTES} bytes"),
            JwtRefusal::Malformed(why) => write!(f, "malformed token: {why}"),
            JwtRefusal::ForbiddenHeader(h) => write!(f, "header {h:?} is refused"),
            JwtRefusal::AlgorithmNotAllowed(a) => write!(f, "algorithm {a:?} is not allowed"),
            JwtRefusal::UnknownIssuer(iss) => write!(f, "unknown issuer {iss:?}"),
            JwtRefusal::UnknownKid(kid) => write!(f, "no key {kid:?} in the issuer's JWKS"),
            JwtRefusal::KeyMismatch => f.write_str("the key is not of the token's algorithm"),
            JwtRefusal::BadSignature => f.write_str("bad signature"),
            JwtRefusal::Expired => f.write_str("expired"),
            JwtRefusal::NotYetValid => f.write_str("not yet valid (nbf)"),
            JwtRefusal::WrongAudience => f.write_str("audience not accepted"),
            JwtRefusal::WrongIssuer => f.write_str("issuer not accepted"),
            JwtRefusal::MissingClaim(c) => write!(f, "claim {c:?} missing"),
            JwtRefusal::InvalidClaim(why) => write!(f, "invalid claim: {why}"),
            JwtRefusal::Invalid(why) => write!(f, "invalid token: {why}"),
        }
    }
}

impl std::error::Error for JwtRefusal {}

/// Whether `token` has the shape of a JWS compact serialization: three base64url segments
/// (the last may be empty, so that an unsigned token is refused as a JWT, not as an unknown
/// static token).
pub fn looks_like_jwt(token: &str) -> bool {
    let mut segments = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) = (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    ) else {
        return false;
    };
    let base64url = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    !header.is_empty()
        && !payload.is_empty()
        && [header, payload, signature].into_iter().all(base64url)
}

/// Every configured issuer, their keys and the cache of verified tokens.
pub struct JwtIssuers {
    issuers: Vec<Issuer>,
    /// SHA-256 of a token → its principal, until `exp` (+ leeway).
    cache: Cache<[u8; 32], Verified>,
    /// Signatures checked (cache misses that got as far as a key): for tests and the log.
    verifications: AtomicU64,
    refetch_min: Duration,
}

impl fmt::Debug for JwtIssuers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.issuers.iter().map(|i| &i.settings.issuer))
            .finish()
    }
}

struct Issuer {
    settings: IssuerSettings,
    /// One per allowed algorithm (jsonwebtoken wants every algorithm of a validation to be of
    /// the key's family).
    validations: Vec<Validation>,
    keys: KeySet,
}

#[derive(Clone)]
struct Verified {
    principal: Arc<Principal>,
    /// Seconds since the epoch: `exp` + leeway.
    until: u64,
}

/// Only the issuer, to choose the keys before anything is verified.
#[derive(serde::Deserialize)]
struct IssuerOnly {
    iss: Option<String>,
}

impl JwtIssuers {
    /// Checks the settings (an error names the issuer and what is wrong) and fetches every
    /// issuer's JWKS. A JWKS that cannot be fetched at start is logged and the issuer starts
    /// with no keys: its tokens are refused until a refetch (on a token's unknown `kid`, at
    /// most every 30 s, or by the refresher) succeeds. An identity provider's outage does not
    /// stop keyauth from starting.
    pub async fn new(settings: Vec<IssuerSettings>) -> Result<Self, String> {
        let mut issuers: Vec<Issuer> = Vec::with_capacity(settings.len());
        for s in settings {
            s.check()?;
            if issuers.iter().any(|i| i.settings.issuer == s.issuer) {
                return Err(format!("issuer {:?} is configured twice", s.issuer));
            }
            let validations = s
                .algorithms
                .iter()
                .map(|alg| validation(&s, *alg))
                .collect();
            issuers.push(Issuer {
                keys: KeySet::new(s.jwks.clone()),
                settings: s,
                validations,
            });
        }
        let this = JwtIssuers {
            issuers,
            cache: Cache::new(CACHE_ENTRIES),
            verifications: AtomicU64::new(0),
            refetch_min: REFETCH_MIN_INTERVAL,
        };
        this.refresh_all().await;
        Ok(this)
    }

    /// Whether any issuer is configured.
    pub fn is_empty(&self) -> bool {
        self.issuers.is_empty()
    }

    /// Whether some token of some issuer may hold `role` (through the issuer's roles, a subject
    /// entry, or a roles claim, which may carry any role).
    pub fn can_grant(&self, role: Role) -> bool {
        self.issuers.iter().any(|i| i.settings.can_grant(role))
    }

    /// The principal of `token` if it was validated before and has not expired: memory only
    /// (what a call's admission tries first, without waiting).
    pub fn cached(&self, token: &str) -> Option<Arc<Principal>> {
        if token.len() > MAX_TOKEN_BYTES {
            return None;
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let hit = self.cache.get(&digest)?;
        (jsonwebtoken::get_current_timestamp() <= hit.until).then_some(hit.principal)
    }

    /// The principal of a JWT, or why it is refused.
    pub async fn authenticate(&self, token: &str) -> Result<Arc<Principal>, JwtRefusal> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(JwtRefusal::TooLarge);
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(hit) = self.cache.get(&digest) {
            if jsonwebtoken::get_current_timestamp() <= hit.until {
                return Ok(hit.principal);
            }
            self.cache.remove(&digest);
        }
        let verified = self.verify(token).await?;
        self.cache.insert(digest, verified.clone());
        Ok(verified.principal)
    }

    async fn verify(&self, token: &str) -> Result<Verified, JwtRefusal> {
        if !looks_like_jwt(token) {
            return Err(JwtRefusal::Malformed("not three base64url segments".into()));
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| JwtRefusal::Malformed(format!("header: {e}")))?;
        for (name, present) in [
            ("jku", header.jku.is_some()),
            ("x5u", header.x5u.is_some()),
            ("crit", header.crit.is_some()),
        ] {
            if present {
                return Err(JwtRefusal::ForbiddenHeader(name));
            }
        }
        if header.alg.family() == AlgorithmFamily::Hmac {
            return Err(JwtRefusal::AlgorithmNotAllowed(header.alg));
        }
        let iss = jsonwebtoken::dangerous::insecure_decode_claims::<IssuerOnly>(token)
            .map_err(|e| JwtRefusal::Malformed(format!("payload: {e}")))?
            .iss
            .ok_or_else(|| JwtRefusal::MissingClaim("iss".into()))?;
        let Some(issuer) = self.issuers.iter().find(|i| i.settings.issuer == iss) else {
            return Err(JwtRefusal::UnknownIssuer(iss.chars().take(200).collect()));
        };
        let Some(validation) = issuer
            .validations
            .iter()
            .find(|v| v.algorithms == [header.alg])
        else {
            return Err(JwtRefusal::AlgorithmNotAllowed(header.alg));
        };
        let kid = header.kid.as_deref();
        let key = match issuer.keys.get(kid) {
            Some(key) => key,
            None => {
                if let Some(changed) = issuer.keys.refetch(&iss, self.refetch_min).await {
                    self.keys_fetched(changed);
                }
                issuer.keys.get(kid).ok_or_else(|| {
                    JwtRefusal::UnknownKid(kid.unwrap_or_default().chars().take(200).collect())
                })?
            }
        };
        if key.family != header.alg.family() || key.alg.is_some_and(|a| a != header.alg) {
            return Err(JwtRefusal::KeyMismatch);
        }
        self.verifications.fetch_add(1, Ordering::Relaxed);
        let claims = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, validation)
            .map_err(|e| refusal(e.into_kind()))?
            .claims;
        let principal = claims::principal(&issuer.settings, &claims)?;
        let exp = claims
            .get("exp")
            .and_then(|e| e.as_u64().or_else(|| e.as_f64().map(|f| f as u64)))
            .ok_or_else(|| JwtRefusal::InvalidClaim("exp: not a number".into()))?;
        Ok(Verified {
            principal: Arc::new(principal),
            until: exp.saturating_add(LEEWAY_SECS),
        })
    }

    /// Refetches every issuer's JWKS now (at start, and from the refresher). A failure keeps the
    /// keys known so far.
    pub async fn refresh_all(&self) {
        for issuer in &self.issuers {
            match issuer.keys.fetch(&issuer.settings.issuer).await {
                Ok(changed) => self.keys_fetched(changed),
                Err(e) => tracing::warn!(
                    issuer = %issuer.settings.issuer,
                    error = %e,
                    "cannot fetch the issuer's JWKS; the keys known so far keep working"
                ),
            }
        }
    }

    /// After a successful fetch: if a key known before is gone or changed, tokens it verified
    /// must be verified again.
    fn keys_fetched(&self, changed: bool) {
        if changed {
            self.cache.clear();
        }
    }

    /// Refetches every issuer's JWKS every [`REFRESH_EVERY`], until these issuers are dropped
    /// (a reload of the principals file makes new ones).
    pub fn spawn_refresh(self: &Arc<Self>) -> JoinHandle<()> {
        spawn_refresh_every(Arc::downgrade(self), REFRESH_EVERY)
    }
}

fn spawn_refresh_every(issuers: Weak<JwtIssuers>, every: Duration) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(issuers) = issuers.upgrade() else {
                return;
            };
            issuers.refresh_all().await;
        }
    })
}

/// The checks of a token of `settings`' issuer signed with `alg`.
fn validation(settings: &IssuerSettings, alg: Algorithm) -> Validation {
    let mut validation = Validation::new(alg);
    validation.leeway = LEEWAY_SECS;
    validation.validate_exp = true;
    validation.validate_nbf = true;
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    validation.set_issuer(&[&settings.issuer]);
    validation.set_audience(&[&settings.audience]);
    validation
}

/// What a failed `jsonwebtoken::decode` means.
fn refusal(kind: ErrorKind) -> JwtRefusal {
    match kind {
        ErrorKind::InvalidSignature => JwtRefusal::BadSignature,
        ErrorKind::ExpiredSignature => JwtRefusal::Expired,
        ErrorKind::ImmatureSignature => JwtRefusal::NotYetValid,
        ErrorKind::InvalidAudience => JwtRefusal::WrongAudience,
        ErrorKind::InvalidIssuer => JwtRefusal::WrongIssuer,
        ErrorKind::MissingRequiredClaim(c) => JwtRefusal::MissingClaim(c),
        ErrorKind::InvalidClaimFormat(c) => JwtRefusal::InvalidClaim(c),
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => {
            JwtRefusal::Invalid("algorithm".into())
        }
        ErrorKind::Base64(_)
        | ErrorKind::Json(_)
        | ErrorKind::Utf8(_)
        | ErrorKind::InvalidToken => JwtRefusal::Malformed(format!("{kind:?}")),
        other => JwtRefusal::Invalid(format!("{other:?}")),
    }
}

impl From<&crate::principals::IssuerConfig> for IssuerSettings {
    /// An `[[issuer]]` of the principals file as the validator takes it (the file's parser has
    /// checked its URL and its algorithms already).
    fn from(config: &crate::principals::IssuerConfig) -> Self {
        use crate::principals::Jwks;
        IssuerSettings {
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            jwks: match &config.jwks {
                Jwks::Url(url) => JwksSource::Url(url.clone()),
                Jwks::File(path) => JwksSource::File(path.clone()),
            },
            name_claim: config.name_claim.clone(),
            roles_claim: config.roles_claim.clone(),
            applications_claim: config.applications_claim.clone(),
            environments_claim: config.environments_claim.clone(),
            roles: config.roles,
            subjects: config
                .subjects
                .iter()
                .map(|s| SubjectSettings {
                    subject: s.subject.clone(),
                    roles: s.roles,
                    scope: s.scope.clone(),
                })
                .collect(),
            algorithms: config
                .algorithms
                .iter()
                .filter_map(|a| a.name().parse().ok())
                .collect(),
        }
    }
}
