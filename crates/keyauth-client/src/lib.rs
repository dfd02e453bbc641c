//! Calling keyauth from Rust. Stands on `keyauth-proto` (the generated client and messages).
//!
//! - [`tls`]: the TLS / mTLS settings of a connection, checked before connecting.

pub mod tls;
