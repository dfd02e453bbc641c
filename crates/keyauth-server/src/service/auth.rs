//! Who may call: the operator token on operator RPCs, the verifier token (when configured) on
//! Verify and CheckPermission. Tokens are kept as SHA-256 digests and compared in constant time.

use keyauth_core::Error;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::metadata::MetadataMap;

/// Checks `authorization: Bearer <token>` in constant time: the operator token on operator
/// RPCs ([`TokenCheck::new`]), the verifier token on Verify and CheckPermission
/// ([`TokenCheck::verifier`]).
#[derive(Clone)]
pub struct TokenCheck {
    /// SHA-256 of the configured token: comparing digests keeps the comparison constant-time
    /// whatever the presented length.
    token_digest: Option<[u8; 32]>,
    role: &'static Role,
}

/// Who a token admits, and what a refusal says.
struct Role {
    name: &'static str,
    deny: fn(&'static str) -> Error,
    disabled: &'static str,
    missing: &'static str,
    wrong: &'static str,
}

const OPERATOR: Role = Role {
    name: "operator",
    deny: Error::Unauthenticated,
    disabled: "operator RPCs are disabled: start the server with KEYAUTH_ADMIN_TOKEN set",
    missing: "missing operator credentials: send `authorization: Bearer <operator token>`",
    wrong: "the operator token is not valid",
};

const VERIFIER: Role = Role {
    name: "verifier",
    deny: Error::VerifierUnauthenticated,
    disabled: "no verifier token is configured",
    missing: "missing verifier credentials: send `authorization: Bearer <verifier token>`",
    wrong: "the verifier token is not valid",
};

impl std::fmt::Debug for TokenCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCheck")
            .field("role", &self.role.name)
            .field("configured", &self.is_configured())
            .finish()
    }
}

impl TokenCheck {
    /// The operator token; unset (or empty) refuses every operator RPC.
    pub fn new(token: Option<&str>) -> Self {
        Self::with_role(token, &OPERATOR)
    }

    /// The verifier token; unset (or empty) lets every caller verify.
    pub fn verifier(token: Option<&str>) -> Self {
        Self::with_role(token, &VERIFIER)
    }

    fn with_role(token: Option<&str>, role: &'static Role) -> Self {
        TokenCheck {
            token_digest: token
                .filter(|t| !t.is_empty())
                .map(|t| Sha256::digest(t.as_bytes()).into()),
            role,
        }
    }

    pub fn is_configured(&self) -> bool {
        self.token_digest.is_some()
    }

    /// Checks the call's token; returns the operator's non-secret id (`op_` and 12 hex digits
    /// of the token's SHA-256), kept in the audit trail and scoping idempotency keys.
    pub(crate) fn check(&self, metadata: &MetadataMap) -> Result<String, Error> {
        self.check_value(metadata.get("authorization").and_then(|v| v.to_str().ok()))
    }

    /// [`Self::check`] of an `authorization` header's value.
    pub(crate) fn check_value(&self, authorization: Option<&str>) -> Result<String, Error> {
        let Some(expected) = &self.token_digest else {
            return Err((self.role.deny)(self.role.disabled));
        };
        let presented = authorization
            .and_then(|v| {
                v.get(..7)
                    .filter(|s| s.eq_ignore_ascii_case("bearer "))
                    .map(|_| v[7..].trim())
            })
            .ok_or_else(|| (self.role.deny)(self.role.missing))?;
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        if bool::from(digest.ct_eq(expected)) {
            Ok(format!("op_{}", hex::encode(&digest[..6])))
        } else {
            Err((self.role.deny)(self.role.wrong))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_auth(value: &str) -> MetadataMap {
        let mut m = MetadataMap::new();
        m.insert("authorization", value.parse().unwrap());
        m
    }

    #[test]
    fn operator_token_is_checked() {
        let auth = TokenCheck::new(Some("s3cret-token"));
        assert!(auth.check(&with_auth("Bearer s3cret-token")).is_ok());
        assert!(auth.check(&with_auth("bearer s3cret-token")).is_ok());
        assert!(auth.check(&with_auth("Bearer s3cret-tokeN")).is_err());
        assert!(auth.check(&with_auth("s3cret-token")).is_err());
        assert!(auth.check(&MetadataMap::new()).is_err());
        let none = TokenCheck::new(None);
        assert!(none.check(&with_auth("Bearer ")).is_err());
        assert!(!TokenCheck::new(Some("")).is_configured());
        assert!(!format!("{auth:?}").contains("s3cret"));
    }

    #[test]
    fn verifier_token_is_checked_with_its_own_reason() {
        let auth = TokenCheck::verifier(Some("v-token"));
        assert!(auth.check(&with_auth("Bearer v-token")).is_ok());
        let refused = auth.check(&with_auth("Bearer operator-token")).unwrap_err();
        assert!(matches!(refused, Error::VerifierUnauthenticated(_)));
        assert!(matches!(
            auth.check(&MetadataMap::new()),
            Err(Error::VerifierUnauthenticated(m)) if m.contains("verifier token")
        ));
        assert!(!TokenCheck::verifier(None).is_configured());
        assert!(!format!("{auth:?}").contains("v-token"));
    }
}
