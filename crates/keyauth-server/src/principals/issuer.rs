//! The settings of an `[[issuer]]` of the principals file: whose JWTs are accepted, with which
//! keys and algorithms, and what they grant. Plain data for the JWT validation, which is not
//! here.

use std::net::IpAddr;
use std::path::PathBuf;

use keyauth_contract::principal::{Roles, Scope};

/// Where an issuer's keys come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Jwks {
    /// `jwks_url`: https, or http to a loopback host.
    Url(String),
    /// `jwks_file`: a JWKS document on disk.
    File(PathBuf),
}

/// A JWS algorithm an issuer's tokens may be signed with. `none` and the HMAC ones (`HS*`)
/// are not representable: a shared secret is not a public key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    Rs256,
    Rs384,
    Rs512,
    Ps256,
    Ps384,
    Ps512,
    Es256,
    Es384,
    EdDsa,
}

impl Algorithm {
    pub const ALL: [Algorithm; 9] = [
        Algorithm::Rs256,
        Algorithm::Rs384,
        Algorithm::Rs512,
        Algorithm::Ps256,
        Algorithm::Ps384,
        Algorithm::Ps512,
        Algorithm::Es256,
        Algorithm::Es384,
        Algorithm::EdDsa,
    ];

    /// What an issuer accepts when its table has no `algorithms`.
    pub const DEFAULT: [Algorithm; 3] = [Algorithm::Rs256, Algorithm::Es256, Algorithm::EdDsa];

    /// The `alg` header value.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Rs256 => "RS256",
            Algorithm::Rs384 => "RS384",
            Algorithm::Rs512 => "RS512",
            Algorithm::Ps256 => "PS256",
            Algorithm::Ps384 => "PS384",
            Algorithm::Ps512 => "PS512",
            Algorithm::Es256 => "ES256",
            Algorithm::Es384 => "ES384",
            Algorithm::EdDsa => "EdDSA",
        }
    }

    pub fn from_name(name: &str) -> Option<Algorithm> {
        Algorithm::ALL.into_iter().find(|a| a.name() == name)
    }
}

/// An `[[issuer]]`: whose JWTs are accepted and what they grant. Checked, not used here: the
/// JWT validation reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuerConfig {
    /// `iss`, compared exactly.
    pub issuer: String,
    /// Required in `aud`.
    pub audience: String,
    pub jwks: Jwks,
    /// The claim that names the principal (default `sub`).
    pub name_claim: String,
    /// A claim carrying role names.
    pub roles_claim: Option<String>,
    /// A claim carrying application patterns.
    pub applications_claim: Option<String>,
    /// A claim carrying environments.
    pub environments_claim: Option<String>,
    /// Roles every token of this issuer has.
    pub roles: Roles,
    /// The allowed `alg`s, never empty.
    pub algorithms: Vec<Algorithm>,
    /// `[[issuer.subject]]`: roles and scope of given subjects.
    pub subjects: Vec<SubjectConfig>,
}

impl IssuerConfig {
    /// The `[[issuer.subject]]` entry of `sub`, if any.
    pub fn subject(&self, sub: &str) -> Option<&SubjectConfig> {
        self.subjects.iter().find(|s| s.subject == sub)
    }
}

/// An `[[issuer.subject]]`: the roles and scope of one subject (a service account, say).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubjectConfig {
    pub subject: String,
    pub roles: Roles,
    pub scope: Scope,
}

/// A `jwks_url` is https, or http to a loopback host (127.0.0.0/8, `[::1]`, `localhost`).
pub(super) fn check_jwks_url(url: &str) -> Result<(), String> {
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e| format!("jwks_url {url:?} is not a URL: {e}"))?;
    let host = uri
        .host()
        .ok_or_else(|| format!("jwks_url {url:?} has no host"))?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = bare.eq_ignore_ascii_case("localhost")
        || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    match uri.scheme_str() {
        Some("https") => Ok(()),
        Some("http") if loopback => Ok(()),
        _ => Err(format!(
            "jwks_url {url:?} must be https (http only to a loopback host: 127.0.0.0/8, \
             [::1], localhost)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn algorithms_round_trip_by_name() {
        for a in Algorithm::ALL {
            assert_eq!(Algorithm::from_name(a.name()), Some(a));
        }
        for refused in ["none", "HS256", "HS384", "HS512", "rs256", "ES512", ""] {
            assert_eq!(Algorithm::from_name(refused), None, "{refused}");
        }
    }

    #[test]
    fn a_jwks_url_is_https_or_loopback_http() {
        for ok in [
            "https://idp.example.com/jwks",
            "https://10.0.0.1/jwks",
            "http://127.0.0.1:8080/jwks",
            "http://127.9.9.9/jwks",
            "http://[::1]:9000/jwks",
            "http://localhost/jwks",
            "http://LOCALHOST:80/jwks",
        ] {
            check_jwks_url(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "http://idp.example.com/jwks",
            "http://localhost@evil.example/jwks",
            "http://localhost.evil.example/jwks",
            "http://10.0.0.1/jwks",
            "http://[::2]/jwks",
            "ftp://127.0.0.1/jwks",
            "idp.example.com/jwks",
            "",
        ] {
            let e = check_jwks_url(bad).unwrap_err();
            assert!(e.starts_with("jwks_url"), "{bad}: {e}");
        }
    }
}
