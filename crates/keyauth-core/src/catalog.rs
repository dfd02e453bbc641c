//! The permission catalog (`keyauth_contract::Catalog`: the built-in table or `--catalog
//! FILE.toml`) and the checks of a request's permissions against it, as the domain's errors.

pub use keyauth_contract::catalog::Catalog;
use keyauth_contract::catalog::Violation;

use crate::error::{Error, FieldViolation};
use crate::model::Permissions;

/// Permissions one request may list at most (a resource listed twice is folded into one).
pub const MAX_PERMISSIONS: usize = 64;
/// Actions one permission may list at most (an action listed twice counts once).
pub const MAX_ACTIONS_PER_PERMISSION: usize = 16;

/// A permission as a caller wrote it, before it is checked against the catalog.
#[derive(Clone, Debug, Default)]
pub struct RequestedPermission {
    pub resource: String,
    pub actions: Vec<String>,
}

fn field_violations(found: Vec<Violation>) -> Vec<FieldViolation> {
    found
        .into_iter()
        .map(|v| FieldViolation::new(&v.field, v.description))
        .collect()
}

/// The checks of requests against the catalog, answered as [`Error::InvalidArgument`].
pub trait CatalogCheck {
    /// Checks one (resource, action) pair; `at` prefixes the field names in errors.
    fn check(&self, resource: &str, action: &str, at: &str) -> Result<(), Error>;

    /// Checks a caller's permission list against the catalog; `field` is the list's name
    /// (`permissions`, `required_permissions`).
    fn permissions(
        &self,
        requested: &[RequestedPermission],
        field: &str,
    ) -> Result<Permissions, Error>;
}

impl CatalogCheck for Catalog {
    fn check(&self, resource: &str, action: &str, at: &str) -> Result<(), Error> {
        self.violations(resource, std::iter::once(action), at, false)
            .map_or(Ok(()), |v| Err(Error::InvalidArgument(field_violations(v))))
    }

    fn permissions(
        &self,
        requested: &[RequestedPermission],
        field: &str,
    ) -> Result<Permissions, Error> {
        // Bounds first, so that the worst accepted list costs a few times a normal one (F6).
        if requested.len() > MAX_PERMISSIONS {
            return Err(Error::invalid(
                field,
                format!("lists more than {MAX_PERMISSIONS} permissions"),
            ));
        }
        if let Some(i) = requested
            .iter()
            .position(|p| p.actions.len() > MAX_ACTIONS_PER_PERMISSION)
        {
            return Err(Error::invalid(
                &format!("{field}[{i}].actions"),
                format!("lists more than {MAX_ACTIONS_PER_PERMISSION} actions"),
            ));
        }
        let mut violations = Vec::new();
        for (i, p) in requested.iter().enumerate() {
            let at = format!("{field}[{i}].");
            if let Some(v) =
                self.violations(&p.resource, p.actions.iter().map(String::as_str), &at, true)
            {
                violations.extend(field_violations(v));
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
    fn a_pair_outside_the_catalog_is_invalid() {
        let c = Catalog::built_in();
        assert!(c.check("patients", "delete", "").is_ok());
        assert!(c.check("encounters", "delete", "").is_err());
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
    fn lists_are_bounded_before_they_are_judged() {
        let c = Catalog::built_in();
        let many = vec![perm("patients", &["read"]); MAX_PERMISSIONS + 1];
        let Err(Error::InvalidArgument(v)) = c.permissions(&many, "permissions") else {
            panic!("accepted")
        };
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].field, "permissions");
        // At the bound, duplicates fold.
        let folded = c
            .permissions(&many[..MAX_PERMISSIONS], "permissions")
            .unwrap();
        assert_eq!(folded.pairs().count(), 1);
        let actions = vec!["x"; MAX_ACTIONS_PER_PERMISSION + 1];
        let Err(Error::InvalidArgument(v)) = c.permissions(
            &[perm("patients", &["read"]), perm("patients", &actions)],
            "required_permissions",
        ) else {
            panic!("accepted")
        };
        assert_eq!(v.len(), 1, "one violation, not one per action");
        assert_eq!(v[0].field, "required_permissions[1].actions");
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
    }
}
