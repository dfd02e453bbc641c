//! Calling keyauth from Rust. Stands on `keyauth-proto` (the generated client and messages)
//! and `keyauth-contract` (the key format, denials, catalog, verdict rule, route mapping, error
//! body and request ids, shared with the server; `routes` and `error_body` are re-exported
//! here as they were).
//!
//! - [`Client`]: typed calls to every RPC, tokens, request ids, timeouts, safe retries;
//! - [`Verifier`]: verification in the caller's process, kept current by `WatchKeyChanges`;
//! - [`KeyAuthLayer`]: a tower layer that protects an HTTP service with it;
//! - [`tls`]: the TLS / mTLS settings of a connection, checked before connecting;
//! - [`routes`]: which permission an HTTP request needs (the route → permission mapping shared
//!   by keyauth's Envoy ext_authz front and the tower layer);
//! - [`error_body`]: the seed's JSON error body of a refused request.

pub mod client;
pub mod layer;
pub mod tls;
pub mod verifier;

pub use keyauth_contract::{error_body, routes};

pub use client::{Client, ClientBuilder, ConnectError};
pub use keyauth_contract::Denial;
pub use layer::{Catalog, KeyAuth, KeyAuthLayer};
pub use verifier::{Unavailable, Verdict, VerifiedKey, Verifier, VerifierOptions};
