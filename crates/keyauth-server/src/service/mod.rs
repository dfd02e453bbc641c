//! The gRPC face of the authority, split by job:
//!
//! - `auth`: the operator and verifier tokens;
//! - `gate`: the token check made from the headers, before the body is read;
//! - `call`: the per-call plumbing (request id, span, token check, deadline, error mapping,
//!   metrics) and the one sequence of an idempotent change;
//! - `handlers`: one `Authority` call per RPC, translated through `wire`;
//! - `verifier`: Verify and CheckPermission, on a path of their own (a warm key is answered
//!   without an await, its `ApiKey` encoded once);
//! - `watch`: the WatchKeyChanges streams.

mod auth;
pub(crate) mod call;
mod gate;
mod handlers;
mod scope;
mod verifier;
mod watch;

use std::sync::Arc;

use keyauth_core::Authority;

pub use watch::WatchOptions;

pub use auth::Credentials;
pub use gate::{TokenGate, TokenGateLayer};
pub use keyauth_proto::key_authority_service_server::KeyAuthorityServiceServer;
pub use verifier::VerifierRoutes;

pub struct KeyAuthorityApi {
    authority: Arc<Authority>,
    credentials: Credentials,
    watch: watch::Watchers,
}

impl KeyAuthorityApi {
    /// The service, admitting calls with `credentials`.
    pub fn new(authority: Arc<Authority>, credentials: Credentials) -> Self {
        KeyAuthorityApi {
            authority,
            credentials,
            watch: watch::Watchers::new(WatchOptions::default(), None),
        }
    }

    /// Watch streams: their limits, and the server's stop signal (streams end with it, so
    /// that a shutdown drains).
    pub fn with_watch(
        self,
        options: WatchOptions,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        KeyAuthorityApi {
            watch: watch::Watchers::new(options, Some(stop)),
            ..self
        }
    }
}
