//! What the listener (`http`) and its routes share: the peer of a connection and the error
//! answer.

use std::net::SocketAddr;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// The peer of a connection, for the audit trail.
#[derive(Clone, Copy, Debug)]
pub(super) struct Peer(pub(super) SocketAddr);

/// An error answer: the status and `{"error": why}` (never echoing the request).
pub(super) fn refusal(status: StatusCode, why: &str) -> Response {
    (status, axum::Json(serde_json::json!({ "error": why }))).into_response()
}
