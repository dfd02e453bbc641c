//! The flags of `keyauth serve`: one clap struct ([`ServeArgs`], in `args`), every flag with a
//! `KEYAUTH_…` twin. Values are checked here, so a bad setting stops the start with a message
//! naming it ([`SettingError`], exit code 2). By concern:
//!
//! - `args`: the flags themselves, and `--log-format`;
//! - `store`: what the `Authority` is made of (store, catalog, hashing, cache, seal keys);
//! - `listeners`: how to serve (the HTTP listener, tokens, ext_authz, background timings);
//! - `console`: the console's sign-in with OIDC, and its issuer among the principals file's;
//! - `limits`: the per-call and per-connection limits;
//! - `tls`: the certificate, key and client CA;
//! - `secret`: secrets and their pairs of flags; `duration`: durations as flags take them.
//!
//! Secrets (the operator and verifier tokens, the seal key) can come from a flag, an
//! environment variable or a file; the file (or the environment) is the one to use in
//! production, as a flag is visible to every local user in the process list. Whatever their
//! source, they are held as [`Secret`]s, whose `Debug` is a redaction.

mod args;
mod console;
mod duration;
mod error;
mod limits;
mod listeners;
mod secret;
mod store;
mod tls;

pub use args::{LogFormat, ServeArgs};
pub use duration::{parse_duration, parse_positive_duration};
pub use error::SettingError;
pub use secret::{
    AdminTokenFlags, PreviousSealKeyFlags, SealKeyFlags, Secret, SecretArg, SecretFlag,
    VerifierTokenFlags,
};
pub use store::default_hash_workers;
