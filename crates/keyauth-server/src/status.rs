//! The one mapping of the domain error to a gRPC status.
//!
//! Every status carries a `google.rpc.ErrorInfo` (domain `keyauth`, a SCREAMING_SNAKE reason);
//! field problems also carry `google.rpc.BadRequest` field violations, and retryable ones a
//! `google.rpc.RetryInfo`. Internal failures reach the caller as
//! `internal error, incident <id>` and reach the log whole.

use std::collections::HashMap;
use std::time::Duration;

use keyauth_core::error::{FieldViolation, MAX_VIOLATIONS_SHOWN};
use keyauth_core::{Error, key};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

pub const ERROR_DOMAIN: &str = "keyauth";

/// The one builder of a status with details: `reason` as ErrorInfo, then the field
/// violations (BadRequest, the first [`MAX_VIOLATIONS_SHOWN`]) and the retry delay (RetryInfo)
/// when there are any.
pub fn detailed(
    code: Code,
    reason: &str,
    message: impl Into<String>,
    violations: Vec<FieldViolation>,
    retry_after: Option<Duration>,
) -> Status {
    let mut details = ErrorDetails::with_error_info(reason, ERROR_DOMAIN, HashMap::new());
    if !violations.is_empty() {
        details.set_bad_request(
            violations
                .into_iter()
                .take(MAX_VIOLATIONS_SHOWN)
                .map(|v| tonic_types::FieldViolation::new(v.field, v.description))
                .collect::<Vec<_>>(),
        );
    }
    if let Some(delay) = retry_after {
        details.set_retry_info(Some(delay));
    }
    Status::with_error_details(code, message, details)
}

fn plain(code: Code, reason: &str, message: impl Into<String>) -> Status {
    detailed(code, reason, message, Vec::new(), None)
}

fn retryable(code: Code, reason: &str, message: impl Into<String>, after: Duration) -> Status {
    detailed(code, reason, message, Vec::new(), Some(after))
}

fn one_field(code: Code, reason: &str, field: &str, message: String) -> Status {
    let violation = FieldViolation::new(field, message.clone());
    detailed(code, reason, message, vec![violation], None)
}

/// The status a domain error answers with.
pub fn from_error(err: Error) -> Status {
    let message = err.to_string();
    match err {
        Error::InvalidArgument(violations) => detailed(
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
            message,
            violations,
            None,
        ),
        Error::InvalidPageToken => one_field(
            Code::InvalidArgument,
            "INVALID_PAGE_TOKEN",
            "page_token",
            message,
        ),
        Error::KeyNotFound(_) => plain(Code::NotFound, "KEY_NOT_FOUND", message),
        Error::FailedPrecondition { reason, message } => {
            plain(Code::FailedPrecondition, reason, message)
        }
        Error::Unauthenticated(message) => {
            plain(Code::Unauthenticated, "OPERATOR_UNAUTHENTICATED", message)
        }
        Error::VerifierUnauthenticated(message) => {
            plain(Code::Unauthenticated, "VERIFIER_UNAUTHENTICATED", message)
        }
        Error::PermissionDenied {
            reason,
            message,
            role,
        } => {
            let metadata: HashMap<String, String> = role
                .map(|r| ("role".to_owned(), r.to_owned()))
                .into_iter()
                .collect();
            let details = ErrorDetails::with_error_info(reason, ERROR_DOMAIN, metadata);
            Status::with_error_details(Code::PermissionDenied, message, details)
        }
        Error::Overloaded => retryable(
            Code::Unavailable,
            "OVERLOADED",
            message,
            Duration::from_millis(100),
        ),
        Error::KeyIdThrottled(after) => retryable(
            Code::Unavailable,
            "KEY_ID_THROTTLED",
            message,
            after.max(Duration::from_millis(1)),
        ),
        Error::TooManyAuthFailures(after) => retryable(
            Code::ResourceExhausted,
            "TOO_MANY_AUTH_FAILURES",
            message,
            after.max(Duration::from_secs(1)),
        ),
        Error::DeadlineExceeded => plain(Code::DeadlineExceeded, "DEADLINE_EXCEEDED", message),
        Error::StoreUnreachable => store_unavailable(),
        Error::AuditUnavailable(source) => {
            tracing::error!(error = %source, "audit record refused; the change was not made");
            metrics::counter!(crate::metrics::STORE_ERRORS, "kind" => "audit_unavailable")
                .increment(1);
            retryable(
                Code::Unavailable,
                "AUDIT_UNAVAILABLE",
                "the audit trail could not be written, so the change was not made; retry shortly",
                Duration::from_secs(1),
            )
        }
        Error::IdempotencyKeyReused => one_field(
            Code::InvalidArgument,
            "idempotency_key_reused",
            "idempotency-key",
            message,
        ),
        Error::IdempotencyInProgress | Error::IdempotencyRace => retryable(
            Code::Aborted,
            "IDEMPOTENCY_IN_PROGRESS",
            message,
            Duration::from_millis(200),
        ),
        Error::Store(source) if Error::is_unavailable_store(&source) => {
            tracing::warn!(error = %source, "store unavailable");
            metrics::counter!(crate::metrics::STORE_ERRORS, "kind" => "unavailable").increment(1);
            store_unavailable()
        }
        Error::Store(source) => {
            metrics::counter!(crate::metrics::STORE_ERRORS, "kind" => "failed").increment(1);
            internal(&source)
        }
        Error::Internal(what) => internal(&what),
    }
}

/// The answer is unknown because the store cannot be reached: retry.
fn store_unavailable() -> Status {
    retryable(
        Code::Unavailable,
        "STORE_UNAVAILABLE",
        "the key store is unreachable; the answer is unknown, retry shortly",
        Duration::from_secs(1),
    )
}

/// Logs the whole failure under a fresh incident id and returns an opaque status naming it.
fn internal(cause: &dyn std::fmt::Display) -> Status {
    let incident = key::unique_base62(12);
    tracing::error!(%incident, error = %cause, "internal error");
    plain(
        Code::Internal,
        "INTERNAL",
        format!("internal error, incident {incident}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_violations_travel_as_bad_request() {
        let status = from_error(Error::invalid("name", "is required"));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("name is required"));
        let details = status.get_error_details();
        let bad = details.bad_request().expect("bad request details");
        assert_eq!(bad.field_violations[0].field, "name");
        assert_eq!(details.error_info().unwrap().domain, ERROR_DOMAIN);
    }

    #[test]
    fn internal_errors_do_not_leak() {
        let status = from_error(Error::Store(sqlx::Error::Protocol(
            "relation api_keys secret xyz".into(),
        )));
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("api_keys"));
        assert!(status.message().starts_with("internal error, incident "));
    }

    #[test]
    fn a_throttled_key_id_is_retryable_not_a_denial() {
        let status = from_error(Error::KeyIdThrottled(Duration::from_millis(400)));
        assert_eq!(status.code(), Code::Unavailable);
        let details = status.get_error_details();
        assert_eq!(details.error_info().unwrap().reason, "KEY_ID_THROTTLED");
        assert_eq!(
            details.retry_info().unwrap().retry_delay,
            Some(Duration::from_millis(400))
        );
    }

    #[test]
    fn unreachable_store_is_unavailable_and_retryable() {
        let status = from_error(Error::Store(sqlx::Error::PoolTimedOut));
        assert_eq!(status.code(), Code::Unavailable);
        assert!(status.get_error_details().retry_info().is_some());
        let status = from_error(Error::FailedPrecondition {
            reason: "KEY_REVOKED",
            message: "m".into(),
        });
        assert_eq!(
            status.get_error_details().error_info().unwrap().reason,
            "KEY_REVOKED"
        );
    }

    #[test]
    fn many_violations_make_a_small_status() {
        let err = Error::InvalidArgument(
            (0..500)
                .map(|i| {
                    let resource = keyauth_core::error::echo(&"x".repeat(300));
                    let description = format!("{resource} is not in the permission catalog");
                    FieldViolation::new(&format!("required_permissions[{i}].resource"), description)
                })
                .collect(),
        );
        let status = from_error(err);
        let http = status.clone().into_http::<tonic::body::Body>();
        let headers: usize = http
            .headers()
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len())
            .sum();
        // h2 clients refuse a header block of more than a few frames: the whole status stays small.
        assert!(headers < 8 * 1024, "{headers}");
    }
}
