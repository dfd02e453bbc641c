//! keyauth's gRPC API, `keyauth.v1`: the generated messages, the client and server stubs, and
//! the encoded descriptor set that reflection serves. What any Rust service adds to call
//! keyauth; it depends on tonic, prost and the contract (for the key's shape) only.
//!
//! The messages that carry a full key (`IssueKeyResponse`, `RollKeyResponse`, `VerifyRequest`,
//! `CheckPermissionRequest`, `ReportExposedKeysRequest`) have hand-written `Debug` impls that
//! print a redaction.

#![allow(clippy::all, clippy::pedantic)]

tonic::include_proto!("keyauth.v1");

/// Encoded descriptor set of the proto, served by reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("keyauth_descriptor");

/// The fully qualified name of the key authority service (health reports it by this name).
pub const SERVICE_NAME: &str = "keyauth.v1.KeyAuthorityService";

mod redact;
pub use redact::redact_presented;

/// The canonical name of a status code (`NOT_FOUND`), as grpcurl and buf print it.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
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
