//! Which permission an HTTP request needs: the one route → permission mapping, shared by
//! keyauth's Envoy ext_authz front and the tower layer of `keyauth-client`. Plain Rust: it knows
//! nothing of gRPC, Envoy or the store; whether a resource/action pair is in the permission
//! catalog is asked of the caller (a closure).
//!
//! The mapping, first match wins:
//!
//! 1. the route table (`[[route]]` entries of a TOML file, see [`RouteTable`]), in file order;
//! 2. the default: `/api/v1/<resource>…` where `<resource>` is in the catalog, with
//!    GET/HEAD → `read`, POST/PUT/PATCH → `write`, DELETE → `delete`.
//!
//! The query string (and a fragment) is ignored. A request that maps to nothing is
//! [`Requirement::Unmapped`]: a standard key passes (it holds every permission of the
//! catalog), a restricted key is refused. So is a default-mapped resource whose action the
//! catalog does not have (DELETE on a resource without `delete`), and so is a path that is
//! not canonical (`.` or `..` segments, empty segments, backslashes, percent-encoded `/`, `\`
//! or `.`): a proxy in front is expected to normalise paths, and one it did not normalise
//! must not be read as another resource's path. A route-table entry naming a permission the
//! catalog does not have is [`Requirement::Unknown`], which must be refused.
//!
//! Route patterns are paths split on `/`: a segment is matched exactly, `*` matches any one
//! segment, and a trailing `**` matches the rest (zero or more segments). A trailing slash in
//! the request path is ignored.
//!
//! ```toml
//! [[route]]
//! method = "GET"                  # optional; absent or "*": any method
//! path = "/api/v1/reports/*"
//! resource = "patients"
//! action = "read"
//! ```

use std::path::Path;

use serde::Deserialize;

/// A permission a request needs: `action` on `resource`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Permission {
    pub resource: String,
    pub action: String,
}

impl Permission {
    pub fn new(resource: impl Into<String>, action: impl Into<String>) -> Self {
        Permission {
            resource: resource.into(),
            action: action.into(),
        }
    }
}

/// What a request needs of the key that presents it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Requirement {
    /// This permission, which the catalog has.
    Permission(Permission),
    /// Nothing maps the request to a resource: a standard key passes, a restricted key is
    /// refused.
    Unmapped,
    /// The mapping (a route-table entry, or an explicit permission) names a permission the
    /// catalog does not have: a configuration mistake, refused for every key (never allowed).
    Unknown(Permission),
}

impl Requirement {
    /// The permissions a key must hold, to ask of the verifier: the mapped permission, or none
    /// (an unmapped or unknown requirement is decided by [`Requirement::refuses`]).
    pub fn required(&self) -> &[Permission] {
        match self {
            Requirement::Permission(p) => std::slice::from_ref(p),
            Requirement::Unmapped | Requirement::Unknown(_) => &[],
        }
    }

    /// Whether a key that passed verification (its secret proven, active, holding
    /// [`Requirement::required`]) is still refused: an unknown permission refuses every key,
    /// an unmapped request refuses a restricted key.
    pub fn refuses(&self, restricted: bool) -> bool {
        match self {
            Requirement::Permission(_) => false,
            Requirement::Unmapped => restricted,
            Requirement::Unknown(_) => true,
        }
    }

    /// An explicitly named permission (e.g. from a proxy's per-route settings), checked
    /// against the catalog.
    pub fn explicit(
        resource: &str,
        action: &str,
        in_catalog: impl Fn(&str, &str) -> bool,
    ) -> Requirement {
        let permission = Permission::new(resource, action);
        if in_catalog(resource, action) {
            Requirement::Permission(permission)
        } else {
            Requirement::Unknown(permission)
        }
    }
}

/// The action the default mapping gives an HTTP method, if any.
pub fn default_action(method: &str) -> Option<&'static str> {
    match method {
        "GET" | "HEAD" => Some("read"),
        "POST" | "PUT" | "PATCH" => Some("write"),
        "DELETE" => Some("delete"),
        _ => None,
    }
}

/// The segments of a request path without its query string and fragment, or `None` when the
/// path is not canonical (see the module docs). `/api/v1/x/` gives `["api", "v1", "x"]`.
fn segments(path: &str) -> Option<Vec<&str>> {
    let end = path.find(['?', '#']).unwrap_or(path.len());
    let path = &path[..end];
    let rest = path.strip_prefix('/')?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() {
        return Some(Vec::new());
    }
    // `%2f`, `%5c` or `%2e` in any case, without allocating.
    let encoded_separator = rest.as_bytes().windows(3).any(|w| {
        w[0] == b'%'
            && matches!(
                (w[1], w[2].to_ascii_lowercase()),
                (b'2', b'f' | b'e') | (b'5', b'c')
            )
    });
    if rest.contains('\\') || encoded_separator {
        return None;
    }
    let segments: Vec<&str> = rest.split('/').collect();
    if segments
        .iter()
        .any(|s| s.is_empty() || *s == "." || *s == "..")
    {
        return None;
    }
    Some(segments)
}

/// The default mapping alone: `/api/v1/<resource>…` for a resource and action of the catalog.
pub fn default_requirement(
    method: &str,
    path: &str,
    in_catalog: impl Fn(&str, &str) -> bool,
) -> Requirement {
    let Some(segments) = segments(path) else {
        return Requirement::Unmapped;
    };
    let (Some(action), ["api", "v1", resource, ..]) = (default_action(method), &segments[..])
    else {
        return Requirement::Unmapped;
    };
    if in_catalog(resource, action) {
        Requirement::Permission(Permission::new(*resource, action))
    } else {
        Requirement::Unmapped
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Exact(String),
    /// `*`: any one segment.
    One,
    /// A trailing `**`: the rest, zero or more segments.
    Rest,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Route {
    /// Upper case; `None` matches every method.
    method: Option<String>,
    pattern: Vec<Segment>,
    permission: Permission,
}

impl Route {
    fn matches(&self, method: &str, path: &[&str]) -> bool {
        if self.method.as_deref().is_some_and(|m| m != method) {
            return false;
        }
        let mut path = path.iter();
        for segment in &self.pattern {
            match segment {
                Segment::Rest => return true,
                Segment::One => {
                    if path.next().is_none() {
                        return false;
                    }
                }
                Segment::Exact(exact) => {
                    if path.next() != Some(&exact.as_str()) {
                        return false;
                    }
                }
            }
        }
        path.next().is_none()
    }
}

/// Routes that override the default mapping (see the module docs for the format); empty by
/// default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteTable {
    routes: Vec<Route>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteFile {
    #[serde(default)]
    route: Vec<RouteEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteEntry {
    method: Option<String>,
    path: String,
    resource: String,
    action: String,
}

fn parse_pattern(path: &str) -> Result<Vec<Segment>, String> {
    let rest = path
        .strip_prefix('/')
        .ok_or_else(|| format!("path {path:?} must start with `/`"))?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() {
        return Ok(Vec::new());
    }
    let parts: Vec<&str> = rest.split('/').collect();
    let last = parts.len() - 1;
    parts
        .iter()
        .enumerate()
        .map(|(i, part)| match *part {
            "" => Err(format!("path {path:?} has an empty segment")),
            "**" if i == last => Ok(Segment::Rest),
            "**" => Err(format!("path {path:?}: `**` may only end a path")),
            "*" => Ok(Segment::One),
            "." | ".." => Err(format!("path {path:?} has a `{part}` segment")),
            p if p.contains('*') => Err(format!(
                "path {path:?}: `*` must be a whole segment (`/*/`), not part of one"
            )),
            p if p.contains(['?', '#']) => Err(format!(
                "path {path:?}: no query string or fragment (they are ignored when matching)"
            )),
            p => Ok(Segment::Exact(p.to_owned())),
        })
        .collect()
}

impl RouteTable {
    /// Parses a TOML route table; the error names the entry (1-based) and what is wrong.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        let file: RouteFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut routes = Vec::with_capacity(file.route.len());
        for (i, entry) in file.route.into_iter().enumerate() {
            let at = format!("[[route]] #{}", i + 1);
            let method = match entry.method.as_deref().map(str::trim) {
                None | Some("*") => None,
                Some(m) if !m.is_empty() && m.bytes().all(|b| b.is_ascii_alphabetic()) => {
                    Some(m.to_ascii_uppercase())
                }
                Some(m) => return Err(format!("{at}: method {m:?} is not an HTTP method")),
            };
            let pattern = parse_pattern(&entry.path).map_err(|e| format!("{at}: {e}"))?;
            for (what, value) in [("resource", &entry.resource), ("action", &entry.action)] {
                if value.is_empty() {
                    return Err(format!("{at}: {what} is required"));
                }
            }
            routes.push(Route {
                method,
                pattern,
                permission: Permission::new(entry.resource, entry.action),
            });
        }
        Ok(RouteTable { routes })
    }

    /// Reads and parses a route table file; the error starts with the file's path.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        RouteTable::from_toml(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// The permissions the table names, in file order (to check them against the catalog at
    /// start-up).
    pub fn permissions(&self) -> impl Iterator<Item = &Permission> {
        self.routes.iter().map(|r| &r.permission)
    }

    /// The first route matching the request, if any.
    pub fn lookup(&self, method: &str, path: &str) -> Option<&Permission> {
        let segments = segments(path)?;
        self.routes
            .iter()
            .find(|r| r.matches(method, &segments))
            .map(|r| &r.permission)
    }

    /// What the request needs: the table's first matching route, else the default mapping.
    pub fn requirement(
        &self,
        method: &str,
        path: &str,
        in_catalog: impl Fn(&str, &str) -> bool,
    ) -> Requirement {
        match self.lookup(method, path) {
            Some(p) => Requirement::explicit(&p.resource, &p.action, &in_catalog),
            None => default_requirement(method, path, &in_catalog),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The built-in catalog of keyauth, as far as these tests need it.
    fn catalog(resource: &str, action: &str) -> bool {
        matches!(
            (resource, action),
            ("patients", "read" | "write" | "delete")
                | ("encounters", "read" | "write")
                | ("ai", "read" | "write")
        )
    }

    fn perm(r: &str, a: &str) -> Requirement {
        Requirement::Permission(Permission::new(r, a))
    }

    #[test]
    fn default_mapping_follows_the_method() {
        let none = RouteTable::default();
        let need = |m, p| none.requirement(m, p, catalog);
        assert_eq!(need("GET", "/api/v1/patients"), perm("patients", "read"));
        assert_eq!(
            need("HEAD", "/api/v1/patients/p_1"),
            perm("patients", "read")
        );
        assert_eq!(need("POST", "/api/v1/patients/"), perm("patients", "write"));
        assert_eq!(need("PUT", "/api/v1/patients/1"), perm("patients", "write"));
        assert_eq!(
            need("PATCH", "/api/v1/patients/1"),
            perm("patients", "write")
        );
        assert_eq!(
            need("DELETE", "/api/v1/patients/1"),
            perm("patients", "delete")
        );
        assert_eq!(
            need("GET", "/api/v1/ai/complete?model=x&resource=patients"),
            perm("ai", "read")
        );
        assert_eq!(need("GET", "/api/v1/ai#frag"), perm("ai", "read"));
    }

    #[test]
    fn what_maps_to_no_resource() {
        let none = RouteTable::default();
        let need = |m, p| none.requirement(m, p, catalog);
        for (method, path) in [
            ("GET", "/"),
            ("GET", "/healthz"),
            ("GET", "/api/v1"),
            ("GET", "/api/v1/"),
            ("GET", "/api/v2/patients"),
            ("GET", "/API/v1/patients"),
            ("GET", "/api/v1/billing/1"),
            ("GET", "/api/v1/Patients"),
            ("OPTIONS", "/api/v1/patients"),
            ("get", "/api/v1/patients"),
            // The catalog has no encounters:delete.
            ("DELETE", "/api/v1/encounters/1"),
            // Not canonical: never read as another resource's path.
            ("GET", "/api/v1/ai/../patients"),
            ("GET", "/api/v1/./patients"),
            ("GET", "/api//v1/patients"),
            ("GET", "/api/v1/%70atients/../ai"),
            ("GET", "/api/v1/patients%2F..%2Fai"),
            ("GET", "/api/v1/patients\\..\\ai"),
            ("GET", "api/v1/patients"),
            ("GET", ""),
        ] {
            assert_eq!(need(method, path), Requirement::Unmapped, "{method} {path}");
        }
    }

    const TABLE: &str = r#"
        [[route]]
        method = "GET"
        path = "/api/v1/reports/*"
        resource = "patients"
        action = "read"

        [[route]]
        method = "post"
        path = "/api/v1/patients/*/notes/**"
        resource = "encounters"
        action = "write"

        [[route]]
        path = "/internal/**"
        resource = "ai"
        action = "write"

        [[route]]
        method = "*"
        path = "/api/v1/legacy"
        resource = "billing"
        action = "read"
    "#;

    #[test]
    fn the_route_table_wins_in_file_order() {
        let table = RouteTable::from_toml(TABLE).unwrap();
        assert_eq!(table.len(), 4);
        let need = |m, p| table.requirement(m, p, catalog);
        assert_eq!(need("GET", "/api/v1/reports/r1"), perm("patients", "read"));
        assert_eq!(
            need("GET", "/api/v1/reports/r1?x=1"),
            perm("patients", "read")
        );
        // `*` is exactly one segment; the method must match.
        assert_eq!(need("GET", "/api/v1/reports"), Requirement::Unmapped);
        assert_eq!(need("GET", "/api/v1/reports/r1/pdf"), Requirement::Unmapped);
        assert_eq!(need("POST", "/api/v1/reports/r1"), Requirement::Unmapped);
        // `**` is the rest, zero segments included; methods are compared in upper case.
        assert_eq!(
            need("POST", "/api/v1/patients/p1/notes"),
            perm("encounters", "write")
        );
        assert_eq!(
            need("POST", "/api/v1/patients/p1/notes/n1/attachments"),
            perm("encounters", "write")
        );
        // Not the route's method: the default mapping.
        assert_eq!(
            need("GET", "/api/v1/patients/p1/notes"),
            perm("patients", "read")
        );
        assert_eq!(need("DELETE", "/internal/x/y"), perm("ai", "write"));
        assert_eq!(need("GET", "/internal"), perm("ai", "write"));
        // A route naming a permission outside the catalog is refused, never skipped.
        assert_eq!(
            need("GET", "/api/v1/legacy"),
            Requirement::Unknown(Permission::new("billing", "read"))
        );
        // A non-canonical path matches no route.
        assert_eq!(need("GET", "/api/v1/reports/../x"), Requirement::Unmapped);
        assert_eq!(table.permissions().count(), 4);
    }

    #[test]
    fn bad_tables_say_which_entry() {
        assert_eq!(RouteTable::from_toml("").unwrap(), RouteTable::default());
        for (text, expected) in [
            ("[[route]]\npath = \"/a\"\nresource = \"r\"\n", "action"),
            (
                "[[route]]\npath = \"a\"\nresource = \"r\"\naction = \"a\"\n",
                "must start with `/`",
            ),
            (
                "[[route]]\npath = \"/a/**/b\"\nresource = \"r\"\naction = \"a\"\n",
                "`**` may only end",
            ),
            (
                "[[route]]\npath = \"/a/b*\"\nresource = \"r\"\naction = \"a\"\n",
                "whole segment",
            ),
            (
                "[[route]]\npath = \"/a//b\"\nresource = \"r\"\naction = \"a\"\n",
                "empty segment",
            ),
            (
                "[[route]]\nmethod = \"G T\"\npath = \"/a\"\nresource = \"r\"\naction = \"a\"\n",
                "#1: method",
            ),
            (
                "[[route]]\npath = \"/a\"\nresource = \"\"\naction = \"a\"\n",
                "resource is required",
            ),
            (
                "[[route]]\npath = \"/a\"\nresource = \"r\"\naction = \"a\"\nextra = 1\n",
                "extra",
            ),
            ("[[routes]]\npath = \"/a\"\n", "routes"),
        ] {
            let err = RouteTable::from_toml(text).unwrap_err();
            assert!(err.contains(expected), "{text:?}: {err}");
        }
    }

    #[test]
    fn explicit_permissions_are_checked() {
        assert_eq!(
            Requirement::explicit("ai", "write", catalog),
            perm("ai", "write")
        );
        assert_eq!(
            Requirement::explicit("ai", "delete", catalog),
            Requirement::Unknown(Permission::new("ai", "delete"))
        );
    }

    #[test]
    fn load_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("routes.toml");
        std::fs::write(&path, TABLE).unwrap();
        assert_eq!(RouteTable::load(&path).unwrap().len(), 4);
        std::fs::write(&path, "[[route]]\n").unwrap();
        let err = RouteTable::load(&path).unwrap_err();
        assert!(err.starts_with(&path.display().to_string()), "{err}");
        assert!(RouteTable::load(&dir.path().join("missing")).is_err());
    }
}
