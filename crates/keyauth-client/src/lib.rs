//! Calling keyauth from Rust. Stands on `keyauth-proto` (the generated client and messages).
//!
//! - [`tls`]: the TLS / mTLS settings of a connection, checked before connecting;
//! - [`routes`]: which permission an HTTP request needs (the route → permission mapping shared
//!   by keyauth's Envoy ext_authz front and the tower layer);
//! - [`error_body`]: the seed's JSON error body of a refused request.

pub mod error_body;
pub mod routes;
pub mod tls;
