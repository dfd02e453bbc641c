//! keyauth's domain, as plain Rust: no transport, no wire types (this crate does not depend on
//! tonic or the proto crate, so the compiler keeps it so).
//!
//! The layers read in one direction, each using only those above it:
//! `clock` → `error` → `model` → `key` → `catalog`, `sealing` → `check_value`, `hashing`, `usage`,
//! `auth_failures` →
//! `store` → `key_filter`, `paging`, `cache`, `changes` → `authority` → `propagation`
//! (`testing`, test support only, on top).

pub mod auth_failures;
pub mod authority;
pub mod cache;
pub mod catalog;
pub mod changes;
pub mod check_value;
pub mod clock;
pub mod denials;
pub mod error;
pub mod hashing;
pub mod key;
pub mod key_filter;
pub mod lifetime;
pub mod metrics;
pub mod model;
pub mod propagation;
pub mod sealing;
pub mod store;

mod paging;
mod usage;
pub mod usage_counts;

#[doc(hidden)]
pub mod fuzzing;

#[cfg(any(test, feature = "test-util"))]
pub mod testing;

pub use authority::Authority;
pub use error::Error;
