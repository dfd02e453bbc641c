//! Names of the metrics this crate records through the `metrics` facade (which records
//! nothing until the server installs an exporter; see `keyauth-server/src/metrics.rs`).

/// Verify cache lookups by `result`: `hit`, `miss`, `wrong_secret` (another digest is proven
/// for the key id: refused without I/O).
pub const CACHE_LOOKUPS: &str = "keyauth_cache_lookups_total";
/// Proven keys dropped by the cache itself, by `cause`: `size`.
pub const CACHE_EVICTIONS: &str = "keyauth_cache_evictions_total";
/// Verify calls refused from memory because no key has the presented id (the key filter).
pub const KEY_FILTER_REFUSALS: &str = "keyauth_key_filter_refusals_total";
