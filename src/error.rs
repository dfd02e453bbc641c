//! The one domain error, and its one mapping to `tonic::Status`.
//!
//! Every status carries a `google.rpc.ErrorInfo` (domain `keyauth`, a SCREAMING_SNAKE reason);
//! field problems also carry `google.rpc.BadRequest` field violations. Internal failures reach
//! the caller as "internal error, incident <id>" and reach the log whole.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

pub const ERROR_DOMAIN: &str = "keyauth";

/// One problem with one request field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

impl FieldViolation {
    pub fn new(field: &str, description: impl Into<String>) -> Self {
        FieldViolation {
            field: field.to_owned(),
            description: description.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed; each violation names its field.
    #[error("invalid request: {}", describe(.0))]
    InvalidArgument(Vec<FieldViolation>),

    /// A page token that this server did not issue for these filters.
    #[error("page_token is not a token from a previous ListKeys call with the same filters")]
    InvalidPageToken,

    #[error("key {0} not found")]
    KeyNotFound(String),

    /// The key is in a state that forbids the operation (reason: KEY_REVOKED, …).
    #[error("{message}")]
    FailedPrecondition {
        reason: &'static str,
        message: String,
    },

    /// Operator authentication failed; the message says what to send.
    #[error("{0}")]
    Unauthenticated(&'static str),

    /// A Verify or CheckPermission caller without the verifier token (when one is set).
    #[error("{0}")]
    VerifierUnauthenticated(&'static str),

    /// The argon2 pool is saturated: retry later.
    #[error("the server is overloaded: too many key verifications are waiting; retry shortly")]
    Overloaded,

    /// The caller's deadline passed before the answer was known.
    #[error("deadline exceeded before the key could be checked")]
    DeadlineExceeded,

    /// The store has been unreachable for longer than the staleness limit: no answer from
    /// memory either.
    #[error("the key store has been unreachable for longer than the staleness limit")]
    StoreUnreachable,

    /// The audit record of a change could not be written, so the change was not made.
    #[error("audit write failed")]
    AuditUnavailable(#[source] sqlx::Error),

    /// Same idempotency key, different request.
    #[error(
        "this idempotency key was already used with a different request; use a new key for a new request"
    )]
    IdempotencyKeyReused,

    /// A call with the same idempotency key is still running (or committed concurrently).
    #[error("a call with this idempotency key is in progress; retry shortly")]
    IdempotencyInProgress,

    /// Internal signal: a concurrent call with the same idempotency key committed first.
    #[error("a concurrent call with this idempotency key committed first")]
    IdempotencyRace,

    /// The store failed: unreachable (UNAVAILABLE) or otherwise (INTERNAL).
    #[error("store error")]
    Store(#[from] sqlx::Error),

    /// A failure that is nobody's input: hashing, randomness, a task that panicked.
    #[error("internal error: {0}")]
    Internal(String),
}

fn describe(violations: &[FieldViolation]) -> String {
    violations
        .iter()
        .map(|v| format!("{} {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ")
}

impl Error {
    /// One field violation.
    pub fn invalid(field: &str, description: impl Into<String>) -> Self {
        Error::InvalidArgument(vec![FieldViolation::new(field, description)])
    }

    /// Folds validation errors into one that lists every violation (other errors pass through:
    /// the first one wins).
    pub fn merge(errors: impl IntoIterator<Item = Error>) -> Self {
        let mut violations = Vec::new();
        for err in errors {
            match err {
                Error::InvalidArgument(v) => violations.extend(v),
                other => return other,
            }
        }
        Error::InvalidArgument(violations)
    }

    pub fn internal(what: impl std::fmt::Display) -> Self {
        Error::Internal(what.to_string())
    }

    /// Whether the store could not be reached, as opposed to refusing a statement.
    pub fn is_unavailable_store(err: &sqlx::Error) -> bool {
        matches!(
            err,
            sqlx::Error::Io(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed
                | sqlx::Error::Tls(_)
        ) || matches!(err, sqlx::Error::Database(db) if is_transient_db_code(db.code().as_deref()))
    }
}

/// SQLite busy/locked, PostgreSQL connection failures, shutdowns and serialization failures.
fn is_transient_db_code(code: Option<&str>) -> bool {
    match code {
        Some(c) => {
            matches!(
                c,
                "5" | "6" | "261" | "517" | "40001" | "40P01" | "55P03" | "53300"
            ) || c.starts_with("08")
                || c.starts_with("57P")
        }
        None => false,
    }
}

impl From<Error> for Status {
    fn from(err: Error) -> Status {
        let info = |code: Code, reason: &str, message: String| {
            Status::with_error_details(
                code,
                message,
                ErrorDetails::with_error_info(reason, ERROR_DOMAIN, HashMap::new()),
            )
        };
        match err {
            Error::InvalidArgument(violations) => {
                let message = format!("invalid request: {}", describe(&violations));
                let mut details =
                    ErrorDetails::with_error_info("INVALID_ARGUMENT", ERROR_DOMAIN, HashMap::new());
                details.set_bad_request(
                    violations
                        .into_iter()
                        .map(|v| tonic_types::FieldViolation::new(v.field, v.description))
                        .collect::<Vec<_>>(),
                );
                Status::with_error_details(Code::InvalidArgument, message, details)
            }
            e @ Error::InvalidPageToken => {
                let mut details = ErrorDetails::with_error_info(
                    "INVALID_PAGE_TOKEN",
                    ERROR_DOMAIN,
                    HashMap::new(),
                );
                details.add_bad_request_violation("page_token", e.to_string());
                Status::with_error_details(Code::InvalidArgument, e.to_string(), details)
            }
            e @ Error::KeyNotFound(_) => info(Code::NotFound, "KEY_NOT_FOUND", e.to_string()),
            Error::FailedPrecondition { reason, message } => {
                info(Code::FailedPrecondition, reason, message)
            }
            Error::Unauthenticated(message) => info(
                Code::Unauthenticated,
                "OPERATOR_UNAUTHENTICATED",
                message.to_owned(),
            ),
            Error::VerifierUnauthenticated(message) => info(
                Code::Unauthenticated,
                "VERIFIER_UNAUTHENTICATED",
                message.to_owned(),
            ),
            e @ Error::Overloaded => {
                let mut details =
                    ErrorDetails::with_error_info("OVERLOADED", ERROR_DOMAIN, HashMap::new());
                details.set_retry_info(Some(std::time::Duration::from_millis(100)));
                Status::with_error_details(Code::Unavailable, e.to_string(), details)
            }
            e @ Error::DeadlineExceeded => {
                info(Code::DeadlineExceeded, "DEADLINE_EXCEEDED", e.to_string())
            }
            Error::StoreUnreachable => store_unavailable(),
            Error::AuditUnavailable(source) => {
                tracing::error!(error = %source, "audit record refused; the change was not made");
                let mut details = ErrorDetails::with_error_info(
                    "AUDIT_UNAVAILABLE",
                    ERROR_DOMAIN,
                    HashMap::new(),
                );
                details.set_retry_info(Some(std::time::Duration::from_secs(1)));
                Status::with_error_details(
                    Code::Unavailable,
                    "the audit trail could not be written, so the change was not made; retry shortly",
                    details,
                )
            }
            e @ Error::IdempotencyKeyReused => {
                let mut details = ErrorDetails::with_error_info(
                    "idempotency_key_reused",
                    ERROR_DOMAIN,
                    HashMap::new(),
                );
                details.add_bad_request_violation("idempotency-key", e.to_string());
                Status::with_error_details(Code::InvalidArgument, e.to_string(), details)
            }
            e @ (Error::IdempotencyInProgress | Error::IdempotencyRace) => {
                let mut details = ErrorDetails::with_error_info(
                    "IDEMPOTENCY_IN_PROGRESS",
                    ERROR_DOMAIN,
                    HashMap::new(),
                );
                details.set_retry_info(Some(std::time::Duration::from_millis(200)));
                Status::with_error_details(Code::Aborted, e.to_string(), details)
            }
            Error::Store(source) if Error::is_unavailable_store(&source) => {
                tracing::warn!(error = %source, "store unavailable");
                metrics::counter!(crate::metrics::STORE_ERRORS, "kind" => "unavailable")
                    .increment(1);
                store_unavailable()
            }
            Error::Store(source) => {
                metrics::counter!(crate::metrics::STORE_ERRORS, "kind" => "failed").increment(1);
                internal(&source)
            }
            Error::Internal(what) => internal(&what),
        }
    }
}

/// The answer is unknown because the store cannot be reached: retry.
fn store_unavailable() -> Status {
    let mut details =
        ErrorDetails::with_error_info("STORE_UNAVAILABLE", ERROR_DOMAIN, HashMap::new());
    details.set_retry_info(Some(std::time::Duration::from_secs(1)));
    Status::with_error_details(
        Code::Unavailable,
        "the key store is unreachable; the answer is unknown, retry shortly",
        details,
    )
}

/// The canonical name of a status code (`NOT_FOUND`), as grpcurl and buf print it: the CLI's
/// messages and the metrics' `outcome` label.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Logs the whole failure under a fresh incident id and returns an opaque status naming it.
fn internal(cause: &dyn std::fmt::Display) -> Status {
    let incident = crate::key::random_base62(12).unwrap_or_else(|_| "unknown".into());
    tracing::error!(%incident, error = %cause, "internal error");
    Status::with_error_details(
        Code::Internal,
        format!("internal error, incident {incident}"),
        ErrorDetails::with_error_info("INTERNAL", ERROR_DOMAIN, HashMap::new()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_violations_travel_as_bad_request() {
        let status = Status::from(Error::invalid("name", "is required"));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("name is required"));
        let details = status.get_error_details();
        let bad = details.bad_request().expect("bad request details");
        assert_eq!(bad.field_violations[0].field, "name");
        assert_eq!(details.error_info().unwrap().domain, ERROR_DOMAIN);
    }

    #[test]
    fn internal_errors_do_not_leak() {
        let status = Status::from(Error::Store(sqlx::Error::Protocol(
            "relation api_keys secret xyz".into(),
        )));
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("api_keys"));
        assert!(status.message().starts_with("internal error, incident "));
    }

    #[test]
    fn unreachable_store_is_unavailable() {
        let status = Status::from(Error::Store(sqlx::Error::PoolTimedOut));
        assert_eq!(status.code(), Code::Unavailable);
        let status = Status::from(Error::FailedPrecondition {
            reason: "KEY_REVOKED",
            message: "m".into(),
        });
        assert_eq!(
            status.get_error_details().error_info().unwrap().reason,
            "KEY_REVOKED"
        );
    }
}
