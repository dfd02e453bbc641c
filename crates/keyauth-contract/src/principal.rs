//! Who is calling: a [`Principal`] (a named static token, a client certificate or a JWT's
//! subject), the [`Role`]s it holds and the [`Scope`] its operator roles are limited to
//! (DESIGN §7 "Principals"). Plain data and the rules on it; how a credential becomes a
//! principal is the server's.

use std::fmt;

/// A role: which RPCs a principal may call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// GetKey, ListKeys, ListKeyEvents, ListApplications, GetCatalog.
    Read,
    /// IssueKey, RollKey, UpdateKey.
    Issue,
    /// RevokeKey, ReportExposedKeys.
    Revoke,
    /// Verify, CheckPermission, WatchKeyChanges, ext_authz Check, GetCatalog.
    Verify,
    /// Everything, events that belong to no key included.
    Admin,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Read,
        Role::Issue,
        Role::Revoke,
        Role::Verify,
        Role::Admin,
    ];

    /// The role's name in a principals file, a token's claim and an error's metadata.
    pub fn name(self) -> &'static str {
        match self {
            Role::Read => "keys.read",
            Role::Issue => "keys.issue",
            Role::Revoke => "keys.revoke",
            Role::Verify => "keys.verify",
            Role::Admin => "admin",
        }
    }

    pub fn from_name(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.name() == name)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of roles (a bit set: copied, compared and tested without allocating).
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Roles(u8);

impl Roles {
    pub const NONE: Roles = Roles(0);

    pub fn of(roles: impl IntoIterator<Item = Role>) -> Roles {
        roles.into_iter().fold(Roles::NONE, |set, r| set.with(r))
    }

    pub fn with(self, role: Role) -> Roles {
        Roles(self.0 | 1 << role as u8)
    }

    pub fn union(self, other: Roles) -> Roles {
        Roles(self.0 | other.0)
    }

    /// Whether the set holds `role` itself (not through `admin`).
    pub fn contains(self, role: Role) -> bool {
        self.0 & (1 << role as u8) != 0
    }

    /// Whether these roles allow what `role` allows: `admin` allows everything.
    pub fn allow(self, role: Role) -> bool {
        self.contains(role) || self.contains(Role::Admin)
    }

    pub fn iter(self) -> impl Iterator<Item = Role> {
        Role::ALL.into_iter().filter(move |r| self.contains(*r))
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Debug for Roles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter().map(Role::name)).finish()
    }
}

/// Which applications and environments a principal's operator roles reach. An application
/// pattern is a name, or a prefix ending in `*` (`app_lab_*`; `*` alone is every one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    /// Empty: every application.
    applications: Vec<String>,
    /// Empty: both environments. Else a subset of `test`, `live`.
    environments: Vec<String>,
}

impl Default for Scope {
    fn default() -> Self {
        Scope::everything()
    }
}

impl Scope {
    /// Every application and both environments.
    pub fn everything() -> Scope {
        Scope {
            applications: Vec::new(),
            environments: Vec::new(),
        }
    }

    /// A scope of these application patterns and environments; an empty list (or one with
    /// `*`, or both environments) means every one. An environment other than `test` or `live`
    /// is an error naming it.
    pub fn new(
        applications: impl IntoIterator<Item = String>,
        environments: impl IntoIterator<Item = String>,
    ) -> Result<Scope, String> {
        let mut applications: Vec<String> = applications.into_iter().collect();
        if applications.iter().any(|a| a == "*") {
            applications.clear();
        }
        if let Some(bad) = applications
            .iter()
            .find(|a| a.is_empty() || a[..a.len() - 1].contains('*'))
        {
            return Err(format!(
                "application pattern {bad:?}: a name, or a prefix ending in `*`"
            ));
        }
        let mut environments: Vec<String> = environments.into_iter().collect();
        if let Some(bad) = environments.iter().find(|e| *e != "test" && *e != "live") {
            return Err(format!("environment {bad:?}: use \"test\" or \"live\""));
        }
        environments.sort();
        environments.dedup();
        if environments.len() == 2 {
            environments.clear();
        }
        Ok(Scope {
            applications,
            environments,
        })
    }

    /// Whether this is every application and both environments.
    pub fn is_everything(&self) -> bool {
        self.applications.is_empty() && self.environments.is_empty()
    }

    /// The application patterns (empty: every one).
    pub fn applications(&self) -> &[String] {
        &self.applications
    }

    /// The environments, `test` and/or `live` (empty: both).
    pub fn environments(&self) -> &[String] {
        &self.environments
    }

    pub fn has_application(&self, application: &str) -> bool {
        self.applications.is_empty()
            || self.applications.iter().any(|p| match p.strip_suffix('*') {
                Some(prefix) => application.starts_with(prefix),
                None => p == application,
            })
    }

    /// `environment` as a key's store form: `test` or `live`.
    pub fn has_environment(&self, environment: &str) -> bool {
        self.environments.is_empty() || self.environments.iter().any(|e| e == environment)
    }

    /// Whether a key of `application` in `environment` is in scope.
    pub fn has(&self, application: &str, environment: &str) -> bool {
        self.has_application(application) && self.has_environment(environment)
    }
}

/// Who is calling: a name for the audit trail, where it comes from, and what it may do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// Shown in the audit trail: a static principal's name, or a JWT's name claim.
    pub name: String,
    /// A JWT's `sub`, a certificate's URI or subject; empty for a static token.
    pub subject: String,
    /// A JWT's `iss`; empty for a static token or a certificate.
    pub issuer: String,
    pub roles: Roles,
    pub scope: Scope,
}

impl Principal {
    /// A short non-secret id (`op_` and 12 hex digits): what the audit trail's `operator_id`
    /// and the idempotency records are keyed by. Of the issuer and subject for a JWT (stable
    /// when its name claim changes), else of the name; never of a token.
    pub fn id(&self) -> String {
        use sha2::{Digest, Sha256};
        let digest = if self.issuer.is_empty() {
            Sha256::digest(self.name.as_bytes())
        } else {
            Sha256::digest(format!("{}\0{}", self.issuer, self.subject).as_bytes())
        };
        let hex: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
        format!("op_{hex}")
    }

    /// Whether it may call an RPC that needs `role`.
    pub fn may(&self, role: Role) -> bool {
        self.roles.allow(role)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_round_trip_and_admin_allows_everything() {
        for role in Role::ALL {
            assert_eq!(Role::from_name(role.name()), Some(role));
        }
        assert_eq!(Role::from_name("keys.write"), None);
        let reader = Roles::of([Role::Read]);
        assert!(reader.allow(Role::Read) && !reader.allow(Role::Issue));
        let admin = Roles::of([Role::Admin]);
        assert!(Role::ALL.into_iter().all(|r| admin.allow(r)));
        assert_eq!(
            format!("{:?}", Roles::of([Role::Verify, Role::Read])),
            r#"{"keys.read", "keys.verify"}"#
        );
    }

    #[test]
    fn scope_matches_names_prefixes_and_environments() {
        let s = |apps: &[&str], envs: &[&str]| {
            Scope::new(
                apps.iter().map(|a| a.to_string()),
                envs.iter().map(|e| e.to_string()),
            )
        };
        let lab = s(&["app_billing", "app_lab_*"], &["test"]).unwrap();
        assert!(lab.has("app_billing", "test"));
        assert!(lab.has("app_lab_7", "test"));
        assert!(!lab.has("app_lab_7", "live"));
        assert!(!lab.has("app_billing2", "test"));
        assert!(!lab.is_everything());
        assert!(s(&["*"], &["live", "test"]).unwrap().is_everything());
        assert!(s(&[], &[]).unwrap().has("anything", "live"));
        assert!(s(&["a*b"], &[]).is_err());
        assert!(s(&[""], &[]).is_err());
        assert!(s(&[], &["prod"]).unwrap_err().contains("prod"));
    }
}
