//! The permission catalog: which resources exist and the actions each allows. The seed's table
//! is built in; `--catalog FILE.toml` replaces it:
//!
//! ```toml
//! [resources]
//! patients = ["read", "write", "delete"]
//! encounters = ["read", "write"]
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, FieldViolation, echo};
use crate::model::Permissions;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Catalog {
    resources: BTreeMap<String, BTreeSet<String>>,
}

/// A permission as a caller wrote it, before it is checked against the catalog.
#[derive(Clone, Debug, Default)]
pub struct RequestedPermission {
    pub resource: String,
    pub actions: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    resources: BTreeMap<String, Vec<String>>,
}

use keyauth_key::BUILT_IN_CATALOG as BUILT_IN;

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

impl Catalog {
    /// Every resource with its actions, both sorted.
    pub fn resources(&self) -> impl Iterator<Item = (&str, impl Iterator<Item = &str>)> {
        self.resources
            .iter()
            .map(|(r, actions)| (r.as_str(), actions.iter().map(String::as_str)))
    }

    /// The seed's catalog.
    pub fn built_in() -> Self {
        Catalog {
            resources: BUILT_IN
                .iter()
                .map(|(r, a)| (r.to_string(), a.iter().map(|a| a.to_string()).collect()))
                .collect(),
        }
    }

    /// Parses a TOML catalog; the error says what is wrong and where.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        let file: CatalogFile = toml::from_str(text).map_err(|e| e.to_string())?;
        if file.resources.is_empty() {
            return Err("[resources] lists no resource".into());
        }
        let mut resources = BTreeMap::new();
        for (resource, actions) in file.resources {
            if !is_name(&resource) {
                return Err(format!(
                    "resource {}: use 1 to 64 of a-z 0-9 _ -",
                    echo(&resource)
                ));
            }
            if actions.is_empty() {
                return Err(format!("resource {} lists no action", echo(&resource)));
            }
            if let Some(bad) = actions.iter().find(|a| !is_name(a)) {
                return Err(format!(
                    "resource {}: action {}: use 1 to 64 of a-z 0-9 _ -",
                    echo(&resource),
                    echo(bad)
                ));
            }
            resources.insert(resource, actions.into_iter().collect());
        }
        Ok(Catalog { resources })
    }

    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Catalog::from_toml(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Checks one (resource, action) pair; `at` prefixes the field names in errors.
    pub fn check(&self, resource: &str, action: &str, at: &str) -> Result<(), Error> {
        self.violations(resource, std::iter::once(action), at, false)
            .map_or(Ok(()), |v| Err(Error::InvalidArgument(v)))
    }

    fn violations<'a>(
        &self,
        resource: &str,
        actions: impl Iterator<Item = &'a str>,
        at: &str,
        indexed: bool,
    ) -> Option<Vec<FieldViolation>> {
        let Some(allowed) = self.resources.get(resource) else {
            let known = self
                .resources
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ");
            let description = if resource.is_empty() {
                "is required".to_owned()
            } else {
                format!(
                    "{} is not in the permission catalog (known: {known})",
                    echo(resource)
                )
            };
            return Some(vec![FieldViolation::new(
                &format!("{at}resource"),
                description,
            )]);
        };
        let mut out = Vec::new();
        let mut any = false;
        for (i, action) in actions.enumerate() {
            any = true;
            if !allowed.contains(action) {
                let field = if indexed {
                    format!("{at}actions[{i}]")
                } else {
                    format!("{at}action")
                };
                let known = allowed.iter().cloned().collect::<Vec<_>>().join(", ");
                out.push(FieldViolation::new(
                    &field,
                    format!(
                        "{} is not an action of {} (known: {known})",
                        echo(action),
                        echo(resource)
                    ),
                ));
            }
        }
        if !any {
            out.push(FieldViolation::new(
                &format!("{at}actions"),
                "must list at least one action",
            ));
        }
        (!out.is_empty()).then_some(out)
    }

    /// Checks a caller's permission list against the catalog; `field` is the list's name
    /// (`permissions`, `required_permissions`).
    pub fn permissions(
        &self,
        requested: &[RequestedPermission],
        field: &str,
    ) -> Result<Permissions, Error> {
        const MAX: usize = 1000;
        if requested.len() > MAX {
            return Err(Error::invalid(
                field,
                format!("lists more than {MAX} permissions"),
            ));
        }
        let mut violations = Vec::new();
        for (i, p) in requested.iter().enumerate() {
            let at = format!("{field}[{i}].");
            if let Some(v) =
                self.violations(&p.resource, p.actions.iter().map(String::as_str), &at, true)
            {
                violations.extend(v);
            }
        }
        if !violations.is_empty() {
            return Err(Error::InvalidArgument(violations));
        }
        Ok(Permissions::from_pairs(requested.iter().flat_map(|p| {
            p.actions.iter().map(|a| (p.resource.clone(), a.clone()))
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn perm(resource: &str, actions: &[&str]) -> RequestedPermission {
        RequestedPermission {
            resource: resource.into(),
            actions: actions.iter().map(|a| a.to_string()).collect(),
        }
    }

    #[test]
    fn built_in_matches_the_seed() {
        let c = Catalog::built_in();
        assert!(c.check("patients", "delete", "").is_ok());
        assert!(c.check("appointments", "delete", "").is_ok());
        assert!(c.check("encounters", "delete", "").is_err());
        assert!(c.check("ai", "write", "").is_ok());
        assert!(c.check("billing", "read", "").is_err());
    }

    #[test]
    fn violations_name_the_field() {
        let c = Catalog::built_in();
        let Err(Error::InvalidArgument(v)) = c.permissions(
            &[
                perm("patients", &["read"]),
                perm("encounters", &["read", "delete"]),
                perm("x", &["read"]),
            ],
            "permissions",
        ) else {
            panic!("accepted")
        };
        let fields: Vec<_> = v.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(
            fields,
            ["permissions[1].actions[1]", "permissions[2].resource"]
        );
        let Err(Error::InvalidArgument(v)) = c.permissions(&[perm("ai", &[])], "permissions")
        else {
            panic!()
        };
        assert_eq!(v[0].field, "permissions[0].actions");
    }

    #[test]
    fn unknown_names_are_echoed_cut() {
        let c = Catalog::built_in();
        let huge = "x".repeat(200_000);
        for (resource, action) in [(huge.as_str(), "read"), ("patients", huge.as_str())] {
            let Err(Error::InvalidArgument(v)) = c.check(resource, action, "") else {
                panic!("accepted")
            };
            assert!(v[0].description.len() < 400, "{}", v[0].description.len());
            assert!(v[0].description.contains("…(cut, 200000 bytes)"));
        }
        let err = Catalog::from_toml(&format!("[resources]\n{huge} = [\"read\"]\n")).unwrap_err();
        assert!(err.len() < 400, "{}", err.len());
    }

    #[test]
    fn toml_replaces_the_catalog() {
        let c = Catalog::from_toml("[resources]\nbilling = [\"read\"]\n").unwrap();
        assert!(c.check("billing", "read", "").is_ok());
        assert!(c.check("patients", "read", "").is_err());
        assert!(Catalog::from_toml("[resources]\n").is_err());
        assert!(Catalog::from_toml("[resources]\nx = []\n").is_err());
        assert!(Catalog::from_toml("[resources]\n\"Bad Name\" = [\"read\"]\n").is_err());
        assert!(Catalog::from_toml("resources = 3").is_err());
    }
}
