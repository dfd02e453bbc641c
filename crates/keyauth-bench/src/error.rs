//! The error type of every fallible step of the bench: whatever went wrong, as text for the
//! terminal.

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Result<T, E = BoxError> = std::result::Result<T, E>;
