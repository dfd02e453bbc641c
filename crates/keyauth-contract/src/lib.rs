//! keyauth's contract: everything the server, the client crate (its in-process `Verifier` and
//! tower layer) and the CLI must agree on, written once. Plain Rust: no network, no async, no
//! gRPC, no store.
//!
//! - the key format ([`PresentedKey`], [`KeyView`], redaction), [`Environment`];
//! - [`Denial`]: the seed's error codes, messages and HTTP statuses, and back from a code;
//! - [`catalog::Catalog`]: the resources and the actions each allows;
//! - [`verdict`]: the rule that judges a proven key (revoked before expired, permissions last);
//! - [`routes`]: the HTTP route → permission mapping, its TOML route table, and the
//!   requirement decision shared by Envoy's ext_authz front and the tower layer;
//! - [`error_body`]: the seed's JSON error body;
//! - [`request_id`]: which `x-request-id` is kept, and how a fresh one is made;
//! - [`rpc`]: the RPCs of `KeyAuthorityService`, the token and the roles each needs;
//! - [`principal`]: who is calling: [`principal::Principal`], its roles and scope;
//! - [`pem`]: the checks of PEM certificate and key files, named by their setting.

pub mod catalog;
pub mod error_body;
pub mod pem;
pub mod principal;
pub mod request_id;
pub mod routes;
pub mod rpc;
pub mod verdict;

pub use catalog::Catalog;
pub use keyauth_contract::*;

/// Characters of a caller's string an error message or a log field shows at most.
pub const ECHO_MAX_CHARS: usize = 64;

/// A caller's string as an error message or a log field may show it: quoted and escaped like
/// `{:?}`, and cut after [`ECHO_MAX_CHARS`] characters, marked `…(cut, N bytes)`. The one way
/// caller input reaches a message, so that no request can make an answer or a log line as
/// large as itself.
pub fn echo(s: &str) -> String {
    match s.char_indices().nth(ECHO_MAX_CHARS) {
        None => format!("{s:?}"),
        Some((end, _)) => format!("{:?}…(cut, {} bytes)", &s[..end], s.len()),
    }
}
