//! Who may call: every credential the server accepts — the principals of `--principals FILE`
//! (static tokens, JWT issuers), and the legacy `KEYAUTH_ADMIN_TOKEN` and verifier token as the
//! principals `admin` and `verifier` — and the rule of each RPC (`keyauth_contract::rpc`): the
//! roles that may call it (DESIGN §7).
//!
//! - An RPC of the verifier (Verify, CheckPermission, WatchKeyChanges, GetCatalog) is open to
//!   every caller while no credential can hold `keys.verify` (today's rule for the verifier
//!   token); then the header is not even read.
//! - A missing, unknown, expired or badly signed credential is UNAUTHENTICATED; an
//!   authenticated principal without the RPC's role is PERMISSION_DENIED
//!   (`PRINCIPAL_LACKS_ROLE`, the role in its metadata).
//! - Tokens are compared as SHA-256 digests in constant time (`principals::Principals`); a JWT
//!   is validated once and then cached until it expires (`principals::jwt`).

use std::sync::Arc;

use keyauth_contract::principal::{Principal, Role};
use keyauth_contract::rpc::{Access, Rpc};
use keyauth_core::Error;

use crate::peer::ClientCert;
use crate::principals::jwt::looks_like_jwt;
use crate::principals::{Principals, PrincipalsCell};

/// Every credential the server accepts, and the rule that admits a call.
#[derive(Clone)]
pub struct Credentials {
    /// The principals and the JWT issuers in force, swapped together by the reloader.
    principals: Arc<PrincipalsCell>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("principals", &self.principals.current().len())
            .field("jwt_issuers", &self.principals.jwt().is_some())
            .finish()
    }
}

/// Why a call was refused, before any work: kept in the request's extensions by the gate (it
/// is `Clone`, unlike `Error`) and answered by the handler.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// No usable credential, for an RPC of `access`.
    Unauthenticated {
        access: Access,
        why: Unauthenticated,
    },
    /// An operator call from an address past the limit of refused operator calls: refused
    /// without its credential being compared, until `wait` has passed (F8).
    Blocked { wait: std::time::Duration },
    /// An authenticated principal without any of the RPC's roles; `role`: the first of them.
    LacksRole {
        principal: Arc<Principal>,
        rpc: &'static str,
        role: Role,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Unauthenticated {
    /// No credential can hold the RPC's roles at all.
    Disabled,
    /// No `authorization: Bearer …`.
    Missing,
    /// A credential no principal has (or a JWT refused).
    Wrong,
}

impl Refusal {
    /// Whether it counts towards the per-peer limit of refused operator calls: only a failed
    /// authentication does (a PERMISSION_DENIED is an authenticated caller, not a guess).
    pub(crate) fn is_failed_authentication(&self) -> bool {
        matches!(
            self,
            Refusal::Unauthenticated { .. } | Refusal::Blocked { .. }
        )
    }
}

impl From<Refusal> for Error {
    fn from(refusal: Refusal) -> Error {
        match refusal {
            Refusal::Unauthenticated { access, why } => {
                let verifier = matches!(access, Access::Verifier | Access::VerifierOrOperator);
                match (verifier, why) {
                    (false, Unauthenticated::Disabled) => Error::Unauthenticated(
                        "operator RPCs are disabled: start the server with KEYAUTH_ADMIN_TOKEN \
                         set, or with --principals naming a principal with this RPC's role",
                    ),
                    (false, Unauthenticated::Missing) => Error::Unauthenticated(
                        "missing operator credentials: send `authorization: Bearer <operator token>`",
                    ),
                    (false, Unauthenticated::Wrong) => {
                        Error::Unauthenticated("the operator token is not valid")
                    }
                    (true, Unauthenticated::Disabled) => {
                        Error::VerifierUnauthenticated("no verifier token is configured")
                    }
                    (true, Unauthenticated::Missing) => Error::VerifierUnauthenticated(
                        "missing verifier credentials: send `authorization: Bearer <verifier token>`",
                    ),
                    (true, Unauthenticated::Wrong) => {
                        Error::VerifierUnauthenticated("the verifier token is not valid")
                    }
                }
            }
            Refusal::Blocked { wait } => Error::TooManyAuthFailures(wait),
            Refusal::LacksRole {
                principal,
                rpc,
                role,
            } => Error::PermissionDenied {
                reason: "PRINCIPAL_LACKS_ROLE",
                message: format!(
                    "principal {:?} may not call {rpc}: it needs the role {role}",
                    principal.name
                ),
                role: Some(role.name()),
            },
        }
    }
}

/// What the credential of a call says, as far as memory knows.
pub(crate) enum Admission {
    /// Decided: the principal (`None`: an open RPC, no credential needed), or the refusal.
    Decided(Result<Option<Arc<Principal>>, Refusal>),
    /// A JWT not validated yet: [`Credentials::admit_jwt`] decides (it may fetch the issuer's
    /// keys).
    Jwt(String),
}

impl Credentials {
    /// The principals and JWT issuers of `cell` (kept current by its reloader).
    pub fn new(principals: Arc<PrincipalsCell>) -> Self {
        Credentials { principals }
    }

    /// Only the legacy tokens: `KEYAUTH_ADMIN_TOKEN` as the principal `admin` and the verifier
    /// token as `verifier`. A token shorter than 32 characters is an error naming it.
    pub fn from_tokens(admin: Option<&str>, verifier: Option<&str>) -> Result<Self, String> {
        let principals = Principals::with_legacy(None, admin, verifier)?;
        Ok(Credentials::new(Arc::new(PrincipalsCell::new(principals))))
    }

    /// No credential at all: operator RPCs are refused, the verifier's are open.
    pub fn none() -> Self {
        Credentials::new(Arc::new(PrincipalsCell::new(Principals::empty())))
    }

    /// Whether some credential can hold `role` (a static principal, or an issuer's token).
    pub fn grants(&self, role: Role) -> bool {
        self.principals.current().grants(role)
            || self.principals.jwt().is_some_and(|j| j.can_grant(role))
    }

    /// Whether a call of `rpc` needs a credential: every RPC but the verifier's while no
    /// credential is given `keys.verify` (an `admin` alone does not close them: the legacy
    /// admin token never did).
    pub(crate) fn needed(&self, rpc: &Rpc) -> bool {
        match rpc.access {
            Access::Verifier | Access::VerifierOrOperator => {
                self.principals.current().names_role(Role::Verify)
            }
            Access::Operator | Access::Authenticated => true,
        }
    }

    /// Admits a call of `rpc` presenting `authorization` from memory: static tokens, and JWTs
    /// validated before; a new JWT is left to [`Credentials::admit_jwt`].
    /// `cert`: the client certificate the connection's handshake verified, if any; it names a
    /// principal when no bearer token is sent.
    pub(crate) fn admit_now(
        &self,
        rpc: &Rpc,
        authorization: Option<&str>,
        cert: Option<&ClientCert>,
    ) -> Admission {
        if !self.needed(rpc) {
            return Admission::Decided(Ok(None));
        }
        let refused = |why| Refusal::Unauthenticated {
            access: rpc.access,
            why,
        };
        if !self.can_call(rpc) {
            return Admission::Decided(Err(refused(Unauthenticated::Disabled)));
        }
        let Some(token) = bearer(authorization) else {
            let uris: Vec<&str> =
                cert.map_or_else(Vec::new, |c| c.uris.iter().map(String::as_str).collect());
            return Admission::Decided(
                match cert.and_then(|c| self.principals.current().by_certificate(&uris, &c.subject))
                {
                    Some(principal) => authorize(rpc, principal),
                    None => Err(refused(Unauthenticated::Missing)),
                },
            );
        };
        if let Some(principal) = self.principals.current().by_token(token) {
            return Admission::Decided(authorize(rpc, principal));
        }
        match self.principals.jwt() {
            Some(jwt) if looks_like_jwt(token) => match jwt.cached(token) {
                Some(principal) => Admission::Decided(authorize(rpc, principal)),
                None => Admission::Jwt(token.to_owned()),
            },
            _ => Admission::Decided(Err(refused(Unauthenticated::Wrong))),
        }
    }

    /// Admits a call of `rpc` presenting the JWT `token` (see [`Admission::Jwt`]).
    pub(crate) async fn admit_jwt(
        &self,
        rpc: &Rpc,
        token: &str,
    ) -> Result<Option<Arc<Principal>>, Refusal> {
        let refused = Refusal::Unauthenticated {
            access: rpc.access,
            why: Unauthenticated::Wrong,
        };
        let Some(jwt) = self.principals.jwt() else {
            return Err(refused);
        };
        match jwt.authenticate(token).await {
            Ok(principal) => authorize(rpc, principal),
            Err(why) => {
                tracing::info!(reason = %why, "a JWT was refused");
                Err(refused)
            }
        }
    }

    /// [`Credentials::admit_now`], then [`Credentials::admit_jwt`] if it must.
    pub(crate) async fn admit(
        &self,
        rpc: &Rpc,
        authorization: Option<&str>,
        cert: Option<&ClientCert>,
    ) -> Result<Option<Arc<Principal>>, Refusal> {
        match self.admit_now(rpc, authorization, cert) {
            Admission::Decided(decided) => decided,
            Admission::Jwt(token) => self.admit_jwt(rpc, &token).await,
        }
    }

    /// Whether any credential could call `rpc` at all.
    fn can_call(&self, rpc: &Rpc) -> bool {
        rpc.roles.is_empty()
            && self.principals.current().len() + usize::from(self.principals.jwt().is_some()) > 0
            || rpc.roles.iter().any(|r| self.grants(*r))
    }
}

/// The token of `authorization: Bearer <token>` (the scheme in any case), if there is one.
fn bearer(authorization: Option<&str>) -> Option<&str> {
    let value = authorization?;
    value
        .get(..7)
        .filter(|s| s.eq_ignore_ascii_case("bearer "))
        .map(|_| value[7..].trim())
        .filter(|t| !t.is_empty())
}

/// `principal` if it holds one of `rpc`'s roles (any principal for an RPC without roles).
fn authorize(rpc: &Rpc, principal: Arc<Principal>) -> Result<Option<Arc<Principal>>, Refusal> {
    if rpc.roles.is_empty() || rpc.roles.iter().any(|r| principal.may(*r)) {
        return Ok(Some(principal));
    }
    Err(Refusal::LacksRole {
        principal,
        rpc: rpc.name,
        role: rpc.roles[0],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyauth_contract::principal::{Roles, Scope};
    use keyauth_contract::rpc;

    const ADMIN: &str = "an-admin-token-of-at-least-32-chars";
    const VERIFIER: &str = "a-verifier-token-of-at-least-32-ch";

    fn decided(
        c: &Credentials,
        method: &str,
        auth: Option<&str>,
    ) -> Result<Option<String>, Refusal> {
        match c.admit_now(rpc::find(method).unwrap(), auth, None) {
            Admission::Decided(d) => d.map(|p| p.map(|p| p.name.clone())),
            Admission::Jwt(_) => panic!("no JWT here"),
        }
    }

    #[test]
    fn legacy_tokens_are_the_principals_admin_and_verifier() {
        let c = Credentials::from_tokens(Some(ADMIN), Some(VERIFIER)).unwrap();
        let admin = format!("Bearer {ADMIN}");
        let verifier = format!("bearer {VERIFIER}");
        assert_eq!(
            decided(&c, "IssueKey", Some(&admin)),
            Ok(Some("admin".into()))
        );
        assert_eq!(
            decided(&c, "Verify", Some(&verifier)),
            Ok(Some("verifier".into()))
        );
        assert_eq!(
            decided(&c, "GetCatalog", Some(&verifier)),
            Ok(Some("verifier".into()))
        );
        assert_eq!(
            decided(&c, "GetCatalog", Some(&admin)),
            Ok(Some("admin".into()))
        );
        assert_eq!(
            decided(&c, "GetPrincipal", Some(&verifier)),
            Ok(Some("verifier".into()))
        );
        assert!(matches!(
            decided(&c, "IssueKey", Some(&verifier)),
            Err(Refusal::LacksRole {
                principal,
                rpc: "IssueKey",
                role: Role::Issue
            }) if principal.name == "verifier"
        ));
        for (method, auth, why) in [
            ("IssueKey", None, Unauthenticated::Missing),
            ("IssueKey", Some("Bearer "), Unauthenticated::Missing),
            ("IssueKey", Some("Bearer nope"), Unauthenticated::Wrong),
            ("Verify", Some(ADMIN), Unauthenticated::Missing),
        ] {
            let Err(Refusal::Unauthenticated { why: got, .. }) = decided(&c, method, auth) else {
                panic!("{method} {auth:?} admitted")
            };
            assert_eq!(got, why, "{method} {auth:?}");
        }
        assert!(
            Credentials::from_tokens(Some("short"), None)
                .unwrap_err()
                .contains("32")
        );
    }

    #[test]
    fn verifier_rpcs_are_open_until_a_credential_can_verify() {
        let c = Credentials::from_tokens(Some(ADMIN), None).unwrap();
        assert_eq!(decided(&c, "Verify", None), Ok(None));
        assert_eq!(decided(&c, "GetCatalog", Some("Bearer whatever")), Ok(None));
        let none = Credentials::none();
        assert_eq!(decided(&none, "CheckPermission", None), Ok(None));
        let Err(refused) = decided(&none, "ListKeys", Some("Bearer x")) else {
            panic!("admitted")
        };
        assert!(matches!(
            Error::from(refused),
            Error::Unauthenticated(m) if m.contains("disabled")
        ));
        assert!(matches!(
            decided(&none, "GetPrincipal", None),
            Err(Refusal::Unauthenticated {
                why: Unauthenticated::Disabled,
                ..
            })
        ));
    }

    #[test]
    fn a_refusal_becomes_the_error_its_rpc_answers() {
        let auditor = Principal {
            name: "auditor".into(),
            subject: String::new(),
            issuer: String::new(),
            roles: Roles::of([Role::Read]),
            scope: Scope::everything(),
        };
        let lacks = Error::from(Refusal::LacksRole {
            principal: Arc::new(auditor),
            rpc: "RevokeKey",
            role: Role::Revoke,
        });
        assert!(matches!(
            lacks,
            Error::PermissionDenied {
                reason: "PRINCIPAL_LACKS_ROLE",
                role: Some("keys.revoke"),
                ..
            }
        ));
        let verifier = Error::from(Refusal::Unauthenticated {
            access: Access::Verifier,
            why: Unauthenticated::Wrong,
        });
        assert!(matches!(verifier, Error::VerifierUnauthenticated(_)));
        assert!(
            !format!("{:?}", Credentials::from_tokens(Some(ADMIN), None).unwrap()).contains(ADMIN)
        );
    }

    /// Not an assertion: what admitting a warm Verify costs with a static verifier token and
    /// with a JWT validated before (DESIGN §7 allows the JWT at most 2 µs more). Run it with
    /// `cargo test --release -p keyauth-server --lib admission_cost -- --nocapture`.
    #[tokio::test]
    async fn admission_cost_static_token_and_warm_jwt() {
        use crate::principals::jwt::tests::support::{AUDIENCE, ISSUER, TestKey, claims, jwks_of};
        use crate::principals::jwt::{IssuerSettings, JwksSource, JwtIssuers};
        let key = TestKey::p256("ec-1");
        let dir = tempfile::tempdir().unwrap();
        let jwks = dir.path().join("jwks.json");
        std::fs::write(&jwks, jwks_of(&[&key])).unwrap();
        let mut settings = IssuerSettings::new(ISSUER, AUDIENCE, JwksSource::File(jwks));
        settings.roles = Roles::of([Role::Verify]);
        let jwt = Arc::new(JwtIssuers::new(vec![settings]).await.unwrap());
        let principals = Principals::with_legacy(None, None, Some(VERIFIER)).unwrap();
        let c = Credentials::new(Arc::new(PrincipalsCell::with_jwt(principals, Some(jwt))));
        // A Kubernetes service-account token's shape: two audiences, a long subject.
        let mut body = claims("system:serviceaccount:portal:backend");
        body["aud"] = serde_json::json!([AUDIENCE, "https://kubernetes.default.svc"]);
        let token = format!("Bearer {}", key.sign(&body));
        let verify = rpc::find("Verify").unwrap();
        assert!(c.admit(verify, Some(&token), None).await.unwrap().is_some());
        let static_token = format!("Bearer {VERIFIER}");
        const CALLS: u32 = 200_000;
        let cost = |authorization: &str| {
            let started = std::time::Instant::now();
            for _ in 0..CALLS {
                match c.admit_now(verify, Some(std::hint::black_box(authorization)), None) {
                    Admission::Decided(Ok(Some(p))) => {
                        std::hint::black_box(p);
                    }
                    _ => panic!("not admitted from memory"),
                }
            }
            started.elapsed().as_nanos() / u128::from(CALLS)
        };
        let (by_static, by_jwt) = (cost(&static_token), cost(&token));
        println!(
            "admitting a warm Verify: static token {by_static} ns, JWT ({} bytes) {by_jwt} ns, \
             {} ns more",
            token.len() - 7,
            by_jwt.saturating_sub(by_static)
        );
    }
}
