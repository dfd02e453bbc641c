//! The permission catalog: which resources exist and the actions each allows. The seed's table
//! is built in; `--catalog FILE.toml` replaces it:
//!
//! ```toml
//! [resources]
//! patients = ["read", "write", "delete"]
//! encounters = ["read", "write"]
//! ```
//!
//! The one catalog type: the server checks requests against it, the tower layer of
//! `keyauth-client` maps routes with it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Deserialize;

use crate::echo;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Catalog {
    resources: BTreeMap<String, BTreeSet<String>>,
}

/// What is wrong with a requested permission, and in which field of the request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub field: String,
    pub description: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    resources: BTreeMap<String, Vec<String>>,
}

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
        Catalog::new(
            keyauth_contract::BUILT_IN_CATALOG
                .iter()
                .map(|(r, actions)| (r.to_string(), actions.iter().map(|a| a.to_string()))),
        )
    }

    /// A catalog of these resources and actions, as given (e.g. a server's `GetCatalog`).
    pub fn new<A: IntoIterator<Item = String>>(
        resources: impl IntoIterator<Item = (String, A)>,
    ) -> Self {
        Catalog {
            resources: resources
                .into_iter()
                .map(|(r, a)| (r, a.into_iter().collect()))
                .collect(),
        }
    }

    pub fn has_resource(&self, resource: &str) -> bool {
        self.resources.contains_key(resource)
    }

    pub fn contains(&self, resource: &str, action: &str) -> bool {
        self.resources
            .get(resource)
            .is_some_and(|a| a.contains(action))
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

    /// What is wrong with `actions` on `resource`, if anything; `at` prefixes the field
    /// names, and `indexed` names each action by its index (`actions[1]`) instead of `action`.
    pub fn violations<'a>(
        &self,
        resource: &str,
        actions: impl Iterator<Item = &'a str>,
        at: &str,
        indexed: bool,
    ) -> Option<Vec<Violation>> {
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
            return Some(vec![Violation {
                field: format!("{at}resource"),
                description,
            }]);
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
                out.push(Violation {
                    field,
                    description: format!(
                        "{} is not an action of {} (known: {known})",
                        echo(action),
                        echo(resource)
                    ),
                });
            }
        }
        if !any {
            out.push(Violation {
                field: format!("{at}actions"),
                description: "must list at least one action".to_owned(),
            });
        }
        (!out.is_empty()).then_some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_matches_the_seed() {
        let c = Catalog::built_in();
        assert!(c.contains("patients", "delete"));
        assert!(c.contains("appointments", "delete"));
        assert!(!c.contains("encounters", "delete"));
        assert!(c.contains("ai", "write"));
        assert!(!c.has_resource("billing"));
    }

    #[test]
    fn toml_replaces_the_catalog() {
        let c = Catalog::from_toml("[resources]\nbilling = [\"read\"]\n").unwrap();
        assert!(c.contains("billing", "read"));
        assert!(!c.contains("patients", "read"));
        assert!(Catalog::from_toml("[resources]\n").is_err());
        assert!(Catalog::from_toml("[resources]\nx = []\n").is_err());
        assert!(Catalog::from_toml("[resources]\n\"Bad Name\" = [\"read\"]\n").is_err());
        assert!(Catalog::from_toml("resources = 3").is_err());
        let huge = "x".repeat(200_000);
        let err = Catalog::from_toml(&format!("[resources]\n{huge} = [\"read\"]\n")).unwrap_err();
        assert!(err.len() < 400, "{}", err.len());
    }

    #[test]
    fn violations_name_the_field_and_the_known_names() {
        let c = Catalog::built_in();
        assert_eq!(
            c.violations("patients", ["read"].into_iter(), "", false),
            None
        );
        let v = c
            .violations("encounters", ["read", "delete"].into_iter(), "p[1].", true)
            .unwrap();
        assert_eq!(v[0].field, "p[1].actions[1]");
        assert!(
            v[0].description.contains("known: read, write"),
            "{:?}",
            v[0]
        );
        let v = c.violations("x", ["read"].into_iter(), "", false).unwrap();
        assert_eq!(v[0].field, "resource");
        let v = c.violations("ai", [].into_iter(), "", true).unwrap();
        assert_eq!(v[0].field, "actions");
    }
}
