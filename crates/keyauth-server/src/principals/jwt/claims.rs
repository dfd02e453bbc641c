//! A verified token's claims → its [`Principal`]: name from the issuer's `name_claim`, roles =
//! the issuer's roles ∪ the roles claim ∪ the subject entry's, scope from the subject entry,
//! else from the applications/environments claims, else everything.

use keyauth_contract::principal::{Principal, Role, Roles, Scope};
use serde_json::{Map, Value};

use super::{IssuerSettings, JwtRefusal};

type Claims = Map<String, Value>;

pub(super) fn principal(
    settings: &IssuerSettings,
    claims: &Claims,
) -> Result<Principal, JwtRefusal> {
    let subject = string_claim(claims, "sub")?;
    let issuer = string_claim(claims, "iss")?;
    let name = match claims.get(&settings.name_claim) {
        Some(Value::String(name)) if !name.is_empty() => name.clone(),
        _ => {
            tracing::debug!(
                issuer = %settings.issuer,
                claim = %settings.name_claim,
                "no name claim in the token: the principal is named by its sub"
            );
            subject.clone()
        }
    };
    let entry = settings.subjects.iter().find(|s| s.subject == subject);
    let mut roles = settings.roles;
    if let Some(claim) = &settings.roles_claim
        && let Some(value) = claims.get(claim)
    {
        roles = roles.union(roles_of(claim, value, &settings.issuer)?);
    }
    if let Some(entry) = entry {
        roles = roles.union(entry.roles);
    }
    let scope = match entry {
        Some(entry) => entry.scope.clone(),
        None => scope_of(settings, claims)?,
    };
    Ok(Principal {
        name,
        subject,
        issuer,
        roles,
        scope,
    })
}

fn string_claim(claims: &Claims, claim: &str) -> Result<String, JwtRefusal> {
    match claims.get(claim) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(_) => Err(JwtRefusal::InvalidClaim(format!("{claim}: not a string"))),
        None => Err(JwtRefusal::MissingClaim(claim.to_string())),
    }
}

/// An array of strings, or one string of names separated by spaces (as OAuth's `scope`).
fn strings(claim: &str, value: &Value) -> Result<Vec<String>, JwtRefusal> {
    let bad = || JwtRefusal::InvalidClaim(format!("{claim}: an array of strings or a string"));
    match value {
        Value::String(s) => Ok(s.split_whitespace().map(str::to_string).collect()),
        Value::Array(items) => items
            .iter()
            .map(|item| item.as_str().map(str::to_string).ok_or_else(bad))
            .collect(),
        _ => Err(bad()),
    }
}

/// The roles named in the claim; an unknown name is ignored (debug log).
fn roles_of(claim: &str, value: &Value, issuer: &str) -> Result<Roles, JwtRefusal> {
    let mut roles = Roles::NONE;
    for name in strings(claim, value)? {
        match Role::from_name(&name) {
            Some(role) => roles = roles.with(role),
            None => {
                tracing::debug!(issuer, claim, role = %name, "unknown role in the token: ignored")
            }
        }
    }
    Ok(roles)
}

/// The scope the applications/environments claims give; every application or environment when
/// the claim is not configured or not in the token. A claim present but empty is refused (an
/// empty list would otherwise mean every one), and so is an environment other than test/live.
fn scope_of(settings: &IssuerSettings, claims: &Claims) -> Result<Scope, JwtRefusal> {
    let list = |claim: &Option<String>| -> Result<Vec<String>, JwtRefusal> {
        let Some((claim, value)) = claim.as_ref().and_then(|c| Some((c, claims.get(c)?))) else {
            return Ok(Vec::new());
        };
        let items = strings(claim, value)?;
        if items.is_empty() {
            return Err(JwtRefusal::InvalidClaim(format!("{claim}: empty")));
        }
        Ok(items)
    };
    let applications = list(&settings.applications_claim)?;
    let environments = list(&settings.environments_claim)?;
    Scope::new(applications, environments).map_err(JwtRefusal::InvalidClaim)
}
