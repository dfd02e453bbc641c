//! Why a command failed, the message on stderr, and the exit code a script relies on.

use std::process::ExitCode;

use keyauth_proto::code_name;
use tonic::{Code, Status};

use crate::args::*;

/// Success, or a valid key.
pub const EXIT_OK: u8 = 0;
/// A refusal: the key is not valid, or the server refused the request.
pub const EXIT_DENIED: u8 = 1;
/// Bad arguments, detected before any call (clap uses 2 as well).
pub const EXIT_USAGE: u8 = 2;
/// No answer: the server is unreachable or could not answer.
pub const EXIT_UNREACHABLE: u8 = 3;

/// Why a command did not succeed; decides the exit code and the message on stderr.
pub(crate) enum Failure {
    /// Bad input found locally: exit 2.
    Usage(String),
    /// No connection: exit 3.
    Unreachable(String),
    /// The server answered with an error status: 1 or 3 by code.
    Status(Status),
}

impl Failure {
    pub(crate) fn report(&self, connection: &Connection) -> ExitCode {
        match self {
            Failure::Usage(message) => {
                eprintln!("keyauth: {message}");
                ExitCode::from(EXIT_USAGE)
            }
            Failure::Unreachable(message) => {
                eprintln!("keyauth: UNAVAILABLE: {message}");
                ExitCode::from(EXIT_UNREACHABLE)
            }
            Failure::Status(status) => {
                let mut line = format!(
                    "keyauth: {}: {}",
                    code_name(status.code()),
                    status.message()
                );
                if let Some(reason) = reason_of(status) {
                    line.push_str(&format!(" (reason {reason})"));
                }
                // A failure of this side's transport (e.g. a TLS alert) keeps its causes.
                line = with_causes(line, std::error::Error::source(status));
                if let Some(id) = status
                    .metadata()
                    .get("x-request-id")
                    .and_then(|v| v.to_str().ok())
                {
                    line.push_str(&format!(" [request id {id}]"));
                }
                eprintln!("{line}");
                // A server requiring client certificates refuses one without after the
                // handshake (TLS 1.3): the call fails with a transport error of this side.
                let local = std::error::Error::source(status).is_some();
                if local && connection.is_https() && connection.client_cert.is_none() {
                    eprintln!(
                        "keyauth: if the server requires client certificates (mTLS), pass --client-cert and --client-key"
                    );
                }
                if reason_of(status).as_deref() == Some("VERIFIER_UNAUTHENTICATED") {
                    eprintln!(
                        "keyauth: this server requires the verifier token: pass --verifier-token or set KEYAUTH_VERIFIER_TOKEN"
                    );
                }
                ExitCode::from(exit_code_of(status.code()))
            }
        }
    }
}

/// The `ErrorInfo` reason of a status, if it has one.
pub(crate) fn reason_of(status: &Status) -> Option<String> {
    use tonic_types::StatusExt;
    status
        .get_error_details()
        .error_info()
        .map(|info| info.reason.clone())
}

/// `message` followed by each error of the chain from `first` (layers often repeat their
/// cause's text: each piece is shown once).
pub(crate) fn with_causes(
    mut message: String,
    first: Option<&(dyn std::error::Error + 'static)>,
) -> String {
    let mut source = first;
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.ends_with(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

impl From<Status> for Failure {
    fn from(status: Status) -> Self {
        Failure::Status(status)
    }
}

/// 1 for a refusal (the server decided), 3 when the answer is not known.
pub fn exit_code_of(code: Code) -> u8 {
    match code {
        Code::Ok => EXIT_OK,
        Code::InvalidArgument
        | Code::NotFound
        | Code::AlreadyExists
        | Code::PermissionDenied
        | Code::FailedPrecondition
        | Code::OutOfRange
        | Code::Unauthenticated
        | Code::Unimplemented => EXIT_DENIED,
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::Cancelled
        | Code::Unknown
        | Code::ResourceExhausted
        | Code::Aborted
        | Code::Internal
        | Code::DataLoss => EXIT_UNREACHABLE,
    }
}
