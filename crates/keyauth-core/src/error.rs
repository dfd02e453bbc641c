//! The one domain error. Its mapping to a gRPC status lives in the server crate
//! (`keyauth-server/src/status.rs`), the only place that knows the transport.

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

    /// An authenticated caller that may not do this: reason `PRINCIPAL_LACKS_ROLE` (with the
    /// role it lacks) or `OUTSIDE_PRINCIPAL_SCOPE`.
    #[error("{message}")]
    PermissionDenied {
        reason: &'static str,
        message: String,
        role: Option<&'static str>,
    },

    /// The argon2 pool is saturated: retry later.
    #[error("the server is overloaded: too many key verifications are waiting; retry shortly")]
    Overloaded,

    /// Too many wrong secrets for this key id lately: its argon2 tries are rationed (one a
    /// second) and this attempt did not get one. Retryable: the key is not judged.
    #[error(
        "too many failed attempts on this key id: the key was not checked; retry in {} ms",
        .0.as_millis().max(1)
    )]
    KeyIdThrottled(std::time::Duration),

    /// Too many refused operator calls from this peer lately: retry after the delay (with
    /// the right token).
    #[error("too many failed operator authentications from this address; retry in {} s", .0.as_secs().max(1))]
    TooManyAuthFailures(std::time::Duration),

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

pub use keyauth_contract::{ECHO_MAX_CHARS, echo};

/// Field violations an error message (and the status's BadRequest details) lists at most.
pub const MAX_VIOLATIONS_SHOWN: usize = 10;

fn describe(violations: &[FieldViolation]) -> String {
    let mut text = violations
        .iter()
        .take(MAX_VIOLATIONS_SHOWN)
        .map(|v| format!("{} {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ");
    if violations.len() > MAX_VIOLATIONS_SHOWN {
        text.push_str(&format!(
            "; and {} more",
            violations.len() - MAX_VIOLATIONS_SHOWN
        ));
    }
    text
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_lists_every_violation() {
        let merged = Error::merge([
            Error::invalid("name", "is required"),
            Error::invalid("a", "b"),
        ]);
        let Error::InvalidArgument(v) = merged else {
            panic!("not merged")
        };
        assert_eq!(v.len(), 2);
        assert!(matches!(
            Error::merge([Error::invalid("x", "y"), Error::Overloaded]),
            Error::Overloaded
        ));
    }

    #[test]
    fn echo_cuts_long_strings() {
        assert_eq!(echo("patients"), "\"patients\"");
        let exact = "a".repeat(ECHO_MAX_CHARS);
        assert_eq!(echo(&exact), format!("\"{exact}\""));
        let long = "é".repeat(100_000);
        let shown = echo(&long);
        assert!(shown.len() < 200, "{}", shown.len());
        assert!(shown.ends_with("…(cut, 200000 bytes)"), "{shown}");
        assert!(shown.starts_with(&format!("\"{}\"", "é".repeat(ECHO_MAX_CHARS))));
        // Control characters are escaped, never written raw into a log line.
        assert_eq!(echo("a\nb"), "\"a\\nb\"");
    }

    #[test]
    fn messages_list_a_bounded_number_of_violations() {
        let many = Error::InvalidArgument(
            (0..1000)
                .map(|i| FieldViolation::new(&format!("f{i}"), "bad"))
                .collect(),
        );
        let message = many.to_string();
        assert!(message.ends_with("; and 990 more"), "{message}");
        assert!(message.len() < 400, "{}", message.len());
    }

    #[test]
    fn unreachable_stores_are_told_apart() {
        assert!(Error::is_unavailable_store(&sqlx::Error::PoolTimedOut));
        assert!(!Error::is_unavailable_store(&sqlx::Error::Protocol(
            "x".into()
        )));
    }
}
