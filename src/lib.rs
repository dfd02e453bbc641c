//! keyauth: the gRPC key authority of the health-records API. See ARCHITECTURE.md for the map.

pub mod authority;
pub mod cache;
pub mod catalog;
pub mod cli;
pub mod clock;
pub mod config;
pub mod error;
pub mod hashing;
pub mod idempotency;
pub mod key;
pub mod limits;
pub mod metrics;
pub mod model;
pub mod paging;
pub mod propagation;
pub mod server;
pub mod service;
pub mod store;
pub mod tls;
pub mod usage;
mod wire;

/// Generated wire types of `keyauth.v1`. Only `service` and `wire` use them.
pub mod pb {
    #![allow(clippy::all, clippy::pedantic)]
    tonic::include_proto!("keyauth.v1");

    /// Encoded descriptor set of the proto, served by reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("keyauth_descriptor");

    use std::fmt;

    /// Shows a full key as its redaction, or as its length if it does not parse.
    struct Redacted<'a>(&'a str);

    impl fmt::Debug for Redacted<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match crate::key::PresentedKey::parse(self.0) {
                Some(key) => write!(f, "{:?}", key.redacted()),
                None => write!(f, "<{} bytes>", self.0.len()),
            }
        }
    }

    impl fmt::Debug for IssueKeyResponse {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("IssueKeyResponse")
                .field("key", &self.key)
                .field("secret", &Redacted(&self.secret))
                .finish()
        }
    }

    impl fmt::Debug for RollKeyResponse {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("RollKeyResponse")
                .field("key", &self.key)
                .field("secret", &Redacted(&self.secret))
                .field("previous_key", &self.previous_key)
                .finish()
        }
    }

    impl fmt::Debug for VerifyRequest {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("VerifyRequest")
                .field("key", &Redacted(&self.key))
                .field("required_permissions", &self.required_permissions)
                .finish()
        }
    }

    impl fmt::Debug for CheckPermissionRequest {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("CheckPermissionRequest")
                .field("key", &Redacted(&self.key))
                .field("resource", &self.resource)
                .field("action", &self.action)
                .finish()
        }
    }
}
