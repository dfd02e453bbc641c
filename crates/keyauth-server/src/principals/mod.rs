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
//! - [`PrincipalsCell`]: the set in force with its issuers' validator ([`jwt::JwtIssuers`]),
//!   replaced whole by [`spawn_reloader`] when the file's content changes and loads.
//!
//! Tokens are never held (only their digests) nor logged.
//!
//! Wiring, at the start:
//!
//! ```ignore
//! let legacy = LegacyTokens::new(admin_token, verifier_token);
//! let set = principals::load(principals_file.as_deref(), &legacy)?; // Err: exit 2
//! let jwt = jwt_issuers(&set).await?; // Err: exit 2
//! let cell = Arc::new(PrincipalsCell::with_jwt(set, jwt));
//! if let Some(path) = principals_file {
//!     spawn_reloader(Reloader::new(path, cell.clone(), legacy), DEFAULT_RELOAD_INTERVAL);
//! }
//! // per call: cell.current().by_token(bearer), .by_certificate(..), .grants(..); cell.jwt()
//! ```

mod file;
mod issuer;
pub mod jwt;
mod registry;
mod reload;

pub use file::{Credential, FileError, PrincipalsFile, StaticPrincipal, parse};
pub use issuer::{Algorithm, IssuerConfig, Jwks, SubjectConfig};
pub use registry::{MIN_TOKEN_CHARS, Principals, PrincipalsCell};
pub use reload::{
    DEFAULT_RELOAD_INTERVAL, LegacyTokens, Reload, Reloader, jwt_issuers, load, spawn_reloader,
};
