//! Prometheus metrics: the names, the labels, and the exporter.
//!
//! Library code only records through the `metrics` macros, which do nothing until a recorder
//! is installed; only `main` installs one ([`install`]), once per process, so the many servers
//! a test binary runs never fight over it.

use std::net::SocketAddr;
use std::time::Duration;

use keyauth_contract::{Denial, rpc};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder};

/// Calls answered, by `rpc` (the method name) and `outcome`: `ok` for operator RPCs, `valid`
/// or the denial code (`authentication_error`, `api_key_expired`, `api_key_revoked`,
/// `insufficient_permissions`) for Verify, CheckPermission and Envoy's `Check` (which also has
/// `unavailable`: answered 503), the status code name (`INVALID_ARGUMENT`, `UNAVAILABLE`, …)
/// for RPC errors.
pub const CALLS: &str = "keyauth_calls_total";
/// Call latency in seconds, by `rpc`.
pub const CALL_DURATION: &str = "keyauth_call_duration_seconds";
pub use keyauth_core::metrics::{CACHE_EVICTIONS, CACHE_LOOKUPS};
/// Proven keys held in memory.
pub const CACHE_ENTRIES: &str = "keyauth_cache_entries";
/// Bytes the proven keys held in memory are counted for (see `--cache-max-bytes`).
pub const CACHE_BYTES: &str = "keyauth_cache_bytes";
/// argon2 hashes waiting for a worker.
pub const HASH_WAITING: &str = "keyauth_hash_queue_waiting";
/// argon2 workers busy hashing.
pub const HASH_BUSY: &str = "keyauth_hash_workers_busy";
/// Store connections open (in use or idle).
pub const STORE_CONNECTIONS: &str = "keyauth_store_pool_connections";
/// Store connections open and idle.
pub const STORE_IDLE: &str = "keyauth_store_pool_idle";
/// Store errors that failed a call, by `kind`: `unavailable` (unreachable, busy), `failed`, or
/// `audit_unavailable` (a change refused because its audit record could not be written).
pub const STORE_ERRORS: &str = "keyauth_store_errors_total";
/// Store errors of the background tasks, by `task`: `usage_flush`, `idempotency_purge`.
pub const BACKGROUND_STORE_ERRORS: &str = "keyauth_background_store_errors_total";
/// Connections closed at once because `--max-connections` were open (on the gRPC port or,
/// counted apart, the HTTP listener).
pub const CONNECTIONS_REFUSED: &str = "keyauth_connections_refused_total";
/// Calls refused UNAVAILABLE without being read because `--max-in-flight` calls were running,
/// by `rpc`.
pub const CALLS_SHED: &str = "keyauth_calls_shed_total";

/// Changes of the TLS files judged (`--tls-reload-interval`), by `result`: `ok` (the new
/// certificate is in force for new connections) or `error` (it cannot be used; the one in
/// force is kept).
pub const TLS_RELOADS: &str = "keyauth_tls_reloads_total";
/// Changes of the principals file judged (`--principals`), by `result`: `ok` (the new set is
/// in force) or `error` (it does not load; the set in force is kept).
pub const PRINCIPALS_RELOADS: &str = "keyauth_principals_reloads_total";

/// Leaked keys reported, by `channel` (`github`: the secret-scanning webhook; `rpc`:
/// ReportExposedKeys) and `label`: `true_positive` (a key of this authority, revoked now or
/// before) or `false_positive` (not a key, or not ours).
pub const EXPOSURES: &str = "keyauth_exposures_total";
/// Keys revoked because they were reported as leaked, by `channel`.
pub const EXPOSURE_REVOCATIONS: &str = "keyauth_exposure_revocations_total";
/// Webhook requests answered 503 because the most bodies the webhook reads at once were being
/// read already.
pub const WEBHOOK_BUSY: &str = "keyauth_webhook_busy_total";
/// Gauge: active keys expiring within `--expiry-warning`, by environment.
pub const KEYS_EXPIRING: &str = "keyauth_keys_expiring";
/// The `channel` label of reports from GitHub secret scanning.
pub const EXPOSURE_GITHUB: &str = "github";
/// The `channel` label of reports made with ReportExposedKeys.
pub const EXPOSURE_RPC: &str = "rpc";

/// Latency buckets, seconds: a cached Verify is well under a millisecond, a cold one a few
/// milliseconds of argon2, an operator write a store transaction.
const DURATION_BUCKETS: &[f64] = &[
    0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Installs the global recorder and serves `/metrics` (Prometheus text) on `addr`. Must run
/// inside the Tokio runtime, at most once per process.
pub fn install(addr: SocketAddr) -> Result<(), BuildError> {
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(Matcher::Full(CALL_DURATION.to_owned()), DURATION_BUCKETS)?
        .install()?;
    describe();
    Ok(())
}

fn describe() {
    use ::metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(CALLS, "Calls answered, by RPC and outcome");
    describe_counter!(
        WEBHOOK_BUSY,
        "GitHub webhook requests answered 503: too many bodies being read"
    );
    describe_histogram!(CALL_DURATION, Unit::Seconds, "Call latency, by RPC");
    describe_counter!(CACHE_LOOKUPS, "Verify cache lookups, by result");
    describe_counter!(
        CACHE_EVICTIONS,
        "Proven keys evicted from the cache, by cause"
    );
    describe_gauge!(CACHE_ENTRIES, "Proven keys held in memory");
    describe_gauge!(
        CACHE_BYTES,
        "Bytes the proven keys held in memory count for"
    );
    describe_gauge!(HASH_WAITING, "argon2 hashes waiting for a worker");
    describe_gauge!(
        KEYS_EXPIRING,
        "Active keys expiring within --expiry-warning, by environment"
    );
    describe_gauge!(HASH_BUSY, "argon2 workers busy");
    describe_gauge!(STORE_CONNECTIONS, "Store connections open");
    describe_gauge!(STORE_IDLE, "Store connections open and idle");
    describe_counter!(STORE_ERRORS, "Store errors that failed a call, by kind");
    describe_counter!(
        EXPOSURES,
        "Leaked keys reported, by channel and label (true_positive, false_positive)"
    );
    describe_counter!(
        EXPOSURE_REVOCATIONS,
        "Keys revoked because they were reported as leaked, by channel"
    );
    describe_counter!(
        BACKGROUND_STORE_ERRORS,
        "Store errors of background tasks, by task"
    );
    describe_counter!(
        TLS_RELOADS,
        "Changes of the TLS files judged, by result (ok, error)"
    );
    describe_counter!(
        PRINCIPALS_RELOADS,
        "Changes of the principals file judged, by result (ok, error)"
    );
}

/// Records a change of the TLS files judged: `ok` or `error`.
pub fn tls_reload(result: &'static str) {
    ::metrics::counter!(TLS_RELOADS, "result" => result).increment(1);
}

/// Records a change of the principals file judged: `ok` or `error`.
pub fn principals_reload(result: &'static str) {
    ::metrics::counter!(PRINCIPALS_RELOADS, "result" => result).increment(1);
}

/// Sets the gauge of keys expiring soon, per environment.
pub fn keys_expiring(counts: &[(keyauth_core::model::Environment, i64)]) {
    for (environment, count) in counts {
        ::metrics::gauge!(KEYS_EXPIRING, "environment" => environment.as_str()).set(*count as f64);
    }
}

/// Records a store error of a background task.
pub fn background_store_error(task: &'static str) {
    ::metrics::counter!(BACKGROUND_STORE_ERRORS, "task" => task).increment(1);
}

/// Records the outcomes of one report of leaked keys from `channel`.
pub fn exposures(channel: &'static str, outcomes: &[keyauth_core::authority::ExposureOutcome]) {
    use keyauth_core::authority::ExposureOutcome;
    for outcome in outcomes {
        let label = if outcome.is_ours() {
            "true_positive"
        } else {
            "false_positive"
        };
        ::metrics::counter!(EXPOSURES, "channel" => channel, "label" => label).increment(1);
        if matches!(outcome, ExposureOutcome::Revoked(_)) {
            ::metrics::counter!(EXPOSURE_REVOCATIONS, "channel" => channel).increment(1);
        }
    }
}

/// Records one answered call.
///
/// The handles are registered once per thread, RPC and outcome and kept (a label lookup in the
/// recorder's registry per call otherwise): the recorder must be installed before the first
/// call, as `main` does ([`install`] before serving).
pub fn call(rpc: &'static str, outcome: &'static str, took: Duration) {
    CALL_HANDLES.with(|cache| {
        let mut cache = cache.borrow_mut();
        let found = cache
            .iter()
            .position(|h| same(h.rpc, rpc) && same(h.outcome, outcome));
        let at = match found {
            Some(at) => at,
            None => {
                let handles = CallHandles {
                    rpc,
                    outcome,
                    calls: ::metrics::counter!(CALLS, "rpc" => rpc, "outcome" => outcome),
                    duration: ::metrics::histogram!(CALL_DURATION, "rpc" => rpc),
                };
                if cache.len() >= MAX_CACHED_HANDLES {
                    handles.record(took);
                    return;
                }
                cache.push(handles);
                cache.len() - 1
            }
        };
        cache[at].record(took);
    });
}

/// The metric handles of one RPC and outcome.
struct CallHandles {
    rpc: &'static str,
    outcome: &'static str,
    calls: ::metrics::Counter,
    duration: ::metrics::Histogram,
}

impl CallHandles {
    fn record(&self, took: Duration) {
        self.calls.increment(1);
        self.duration.record(took.as_secs_f64());
    }
}

/// Handles kept per thread at most (RPCs × outcomes a thread has seen; bounded labels).
const MAX_CACHED_HANDLES: usize = 128;

thread_local! {
    static CALL_HANDLES: std::cell::RefCell<Vec<CallHandles>> = const {
        std::cell::RefCell::new(Vec::new())
    };
}

/// Label equality, by address first (labels are string literals).
fn same(a: &'static str, b: &'static str) -> bool {
    std::ptr::eq(a, b) || a == b
}

/// The `outcome` label of a Verify or CheckPermission answer: `valid`, or its error code.
pub fn verdict_outcome(error_code: Option<&str>) -> &'static str {
    match error_code {
        None => "valid",
        Some(code) => Denial::from_code(code)
            .map(Denial::code)
            // A code this list does not know yet: still a denial, without an unbounded label.
            .unwrap_or("denied"),
    }
}

/// The `rpc` label of a `keyauth.v1.KeyAuthorityService` path, or `Check` for Envoy's
/// `envoy.service.auth.v3.Authorization/Check` (`None` for other services). Callers choose
/// paths, so only the contract's method names become labels; the rest are `other`.
pub fn rpc_of_path(path: &str) -> Option<&'static str> {
    if path == "/envoy.service.auth.v3.Authorization/Check" {
        return Some("Check");
    }
    let method = rpc::method_of_path(path)?;
    Some(rpc::find(method).map_or("other", |rpc| rpc.name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_bounded() {
        assert_eq!(verdict_outcome(None), "valid");
        assert_eq!(verdict_outcome(Some("api_key_revoked")), "api_key_revoked");
        assert_eq!(verdict_outcome(Some("something new")), "denied");
        assert_eq!(keyauth_proto::code_name(tonic::Code::NotFound), "NOT_FOUND");
        assert_eq!(
            rpc_of_path("/keyauth.v1.KeyAuthorityService/Verify"),
            Some("Verify")
        );
        assert_eq!(
            rpc_of_path("/keyauth.v1.KeyAuthorityService/Anything"),
            Some("other")
        );
        assert_eq!(rpc_of_path("/grpc.health.v1.Health/Check"), None);
        assert_eq!(
            rpc_of_path("/envoy.service.auth.v3.Authorization/Check"),
            Some("Check")
        );
    }
}
