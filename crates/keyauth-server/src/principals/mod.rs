//! Principals: who may call, from `--principals FILE` (DESIGN §7) and the legacy tokens.
//!
//! - [`file`](parse): the TOML file, parsed and checked whole; a mistake is a [`FileError`]
//!   with its line and reason (`line 7: unknown role "keys.write" (known: …)`);
//! - [`Principals`]: the loaded set: static tokens by their SHA-256 ([`Principals::by_token`],
//!   compared in constant time), client certificates ([`Principals::by_certificate`]), the
//!   JWT issuers' settings ([`IssuerConfig`], for the JWT validation) and [`Principals::grants`]
//!   (whether any credential can hold a role: Verify stays open only while none holds
//!   `keys.verify`); `KEYAUTH_ADMIN_TOKEN` and the verifier token join it as the principals
//!   `admin` and `verifier` ([`Principals::with_legacy`]);
//! - [`PrincipalsCell`]: the set in force, replaced whole by [`spawn_reloader`] when the file's
//!   content changes and loads.
//!
//! Tokens are never held (only their digests) nor logged.

mod file;
mod issuer;
mod registry;
mod reload;

pub use file::{Credential, FileError, PrincipalsFile, StaticPrincipal, parse};
pub use issuer::{Algorithm, IssuerConfig, Jwks, SubjectConfig};
pub use registry::{MIN_TOKEN_CHARS, Principals, PrincipalsCell};
pub use reload::{DEFAULT_RELOAD_INTERVAL, LegacyTokens, Reload, Reloader, load, spawn_reloader};
