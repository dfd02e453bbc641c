//! The RPCs of `keyauth.v1.KeyAuthorityService` and the token each needs: the one table the
//! server's token gate, its handlers and its metrics read.

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
}

/// Every RPC of the service with the token it needs, in the proto's order.
pub const RPCS: &[(&str, Access)] = &[
    ("IssueKey", Access::Operator),
    ("RollKey", Access::Operator),
    ("RevokeKey", Access::Operator),
    ("Verify", Access::Verifier),
    ("CheckPermission", Access::Verifier),
    ("GetKey", Access::Operator),
    ("ListKeys", Access::Operator),
    ("ListKeyEvents", Access::Operator),
    ("ReportExposedKeys", Access::Operator),
    ("WatchKeyChanges", Access::Verifier),
    ("UpdateKey", Access::Operator),
    ("GetCatalog", Access::VerifierOrOperator),
    ("ListApplications", Access::Operator),
];

/// The RPC named `method` (its name as a `'static` label) and the token it needs; `None` for a
/// method the service does not have.
pub fn find(method: &str) -> Option<(&'static str, Access)> {
    RPCS.iter().find(|(name, _)| *name == method).copied()
}

/// Which token `method` needs; `None` for a method the service does not have.
pub fn access_of(method: &str) -> Option<Access> {
    find(method).map(|(_, access)| access)
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
        let mut names: Vec<_> = RPCS.iter().map(|(n, _)| *n).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), RPCS.len());
        assert_eq!(access_of("Verify"), Some(Access::Verifier));
        assert_eq!(access_of("GetCatalog"), Some(Access::VerifierOrOperator));
        assert_eq!(access_of("ListKeys"), Some(Access::Operator));
        assert_eq!(access_of("DropTables"), None);
        assert_eq!(
            method_of_path("/keyauth.v1.KeyAuthorityService/GetKey"),
            Some("GetKey")
        );
        assert_eq!(method_of_path("/grpc.health.v1.Health/Check"), None);
    }
}
