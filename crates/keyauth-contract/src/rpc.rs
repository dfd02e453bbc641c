//! The RPCs of `keyauth.v1.KeyAuthorityService`, the token each needs and the roles that may
//! call it: the one table the server's token gate, its handlers and its metrics read.

use crate::principal::Role;

/// The full name of the service.
pub const SERVICE: &str = "keyauth.v1.KeyAuthorityService";

/// Which token a call needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// The verifier token when one is configured; else none.
    Verifier,
    /// The verifier token or an operator token (none when no verifier token is configured).
    VerifierOrOperator,
    /// An operator token, always.
    Operator,
    /// Any credential the server accepts, whatever its roles (GetPrincipal).
    Authenticated,
}

/// An RPC of the service: its name, the token it needs, and the roles any one of which lets a
/// principal call it (DESIGN §7; none: any authenticated principal).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rpc {
    pub name: &'static str,
    pub access: Access,
    pub roles: &'static [Role],
}

const fn rpc(name: &'static str, access: Access, roles: &'static [Role]) -> Rpc {
    Rpc {
        name,
        access,
        roles,
    }
}

const READ: &[Role] = &[Role::Read];
const ISSUE: &[Role] = &[Role::Issue];
const REVOKE: &[Role] = &[Role::Revoke];
const VERIFY: &[Role] = &[Role::Verify];

/// Every RPC of the service, in the proto's order.
pub const RPCS: &[Rpc] = &[
    rpc("IssueKey", Access::Operator, ISSUE),
    rpc("RollKey", Access::Operator, ISSUE),
    rpc("RevokeKey", Access::Operator, REVOKE),
    rpc("UpdateKey", Access::Operator, ISSUE),
    rpc("Verify", Access::Verifier, VERIFY),
    rpc("CheckPermission", Access::Verifier, VERIFY),
    rpc("GetKey", Access::Operator, READ),
    rpc("ListKeys", Access::Operator, READ),
    rpc("ListKeyEvents", Access::Operator, READ),
    rpc("ReportExposedKeys", Access::Operator, REVOKE),
    rpc("WatchKeyChanges", Access::Verifier, VERIFY),
    rpc(
        "GetCatalog",
        Access::VerifierOrOperator,
        &[Role::Read, Role::Verify],
    ),
    rpc("ListApplications", Access::Operator, READ),
    rpc("GetPrincipal", Access::Authenticated, &[]),
    rpc("GetKeyUsage", Access::Operator, READ),
];

/// The RPC named `method`; `None` for a method the service does not have.
pub fn find(method: &str) -> Option<&'static Rpc> {
    RPCS.iter().find(|rpc| rpc.name == method)
}

/// Which token `method` needs; `None` for a method the service does not have.
pub fn access_of(method: &str) -> Option<Access> {
    find(method).map(|rpc| rpc.access)
}

/// The method of a request path `/keyauth.v1.KeyAuthorityService/<Method>`, whatever it is
/// (`None` for another service's path).
pub fn method_of_path(path: &str) -> Option<&str> {
    path.strip_prefix('/')?
        .strip_prefix(SERVICE)?
        .strip_prefix('/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rpc_once_with_its_token() {
        let mut names: Vec<_> = RPCS.iter().map(|rpc| rpc.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), RPCS.len());
        assert_eq!(access_of("Verify"), Some(Access::Verifier));
        assert_eq!(access_of("GetCatalog"), Some(Access::VerifierOrOperator));
        assert_eq!(access_of("ListKeys"), Some(Access::Operator));
        assert_eq!(access_of("DropTables"), None);
        assert_eq!(find("RevokeKey").unwrap().roles, [Role::Revoke]);
        for rpc in RPCS {
            assert_eq!(
                rpc.roles.is_empty(),
                rpc.access == Access::Authenticated,
                "{}",
                rpc.name
            );
        }
        assert_eq!(
            method_of_path("/keyauth.v1.KeyAuthorityService/GetKey"),
            Some("GetKey")
        );
        assert_eq!(method_of_path("/grpc.health.v1.Health/Check"), None);
    }
}
