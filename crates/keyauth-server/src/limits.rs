//! Per-connection and per-call limits, and the layer that turns those the transport cannot
//! answer well by itself into proper gRPC statuses:
//!
//! - a request larger than `max_request_bytes` is refused by tonic's decoder with
//!   `OUT_OF_RANGE`; gRPC says `RESOURCE_EXHAUSTED` (and so do we, with ErrorInfo
//!   `REQUEST_TOO_LARGE`);
//! - metadata larger than `max_header_list_bytes` is refused here with `RESOURCE_EXHAUSTED`
//!   (`HEADERS_TOO_LARGE`). HTTP/2 itself is told a limit four times larger: past that, h2
//!   answers HTTP 431 before any gRPC code runs, which clients can only report as `UNKNOWN`;
//! - a call still running after `request_timeout` (reading the request included) is dropped and
//!   answered `DEADLINE_EXCEEDED` (tonic's own `Server::timeout` answers `CANCELLED`).
//!
//! Each refuses one call only: the connection and its other calls go on.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tonic::codegen::{Service, http};
use tonic::{Code, Status};
use tower_layer::Layer;

use crate::status;

/// Limits on what one caller may ask of the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest request message of the key authority service, bytes (encoded).
    pub max_request_bytes: usize,
    /// Largest HTTP/2 header list (all metadata of a call), bytes.
    pub max_header_list_bytes: u32,
    /// Calls in flight on one connection at most (HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS`).
    pub max_concurrent_streams: u32,
    /// Longest a call may run, reading its request included.
    pub request_timeout: Duration,
}

impl Limits {
    /// The header list limit HTTP/2 enforces (see the module docs).
    pub fn transport_header_list_bytes(&self) -> u32 {
        self.max_header_list_bytes.saturating_mul(4)
    }

    /// Verify carries one key and a few permissions, IssueKey a name and bounded metadata; a
    /// quarter MiB leaves room for any honest request.
    pub const DEFAULT_MAX_REQUEST_BYTES: usize = 256 * 1024;
    pub const DEFAULT_MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;
    pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 256;
    pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_bytes: Self::DEFAULT_MAX_REQUEST_BYTES,
            max_header_list_bytes: Self::DEFAULT_MAX_HEADER_LIST_BYTES,
            max_concurrent_streams: Self::DEFAULT_MAX_CONCURRENT_STREAMS,
            request_timeout: Self::DEFAULT_REQUEST_TIMEOUT,
        }
    }
}

/// The tower layer enforcing the request timeout and naming oversized requests
/// `RESOURCE_EXHAUSTED` (see the module docs).
#[derive(Clone, Copy, Debug)]
pub struct LimitsLayer {
    limits: Limits,
}

impl LimitsLayer {
    pub fn new(limits: Limits) -> Self {
        LimitsLayer { limits }
    }
}

impl<S> Layer<S> for LimitsLayer {
    type Service = LimitsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        LimitsService {
            inner,
            limits: self.limits,
        }
    }
}

#[derive(Clone, Debug)]
pub struct LimitsService<S> {
    inner: S,
    limits: Limits,
}

type Answer<E> = Result<http::Response<tonic::body::Body>, E>;

impl<S, B> Service<http::Request<B>> for LimitsService<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Answer<S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let rpc = crate::metrics::rpc_of_path(request.uri().path());
        let limits = self.limits;
        let started = Instant::now();
        let header_bytes = header_list_bytes(&request);
        if header_bytes > limits.max_header_list_bytes as usize {
            tracing::info!(
                rpc,
                header_bytes,
                limit = limits.max_header_list_bytes,
                "request refused: metadata larger than the header list limit"
            );
            let refused = headers_too_large(limits.max_header_list_bytes);
            if let Some(rpc) = rpc {
                crate::metrics::call(rpc, "RESOURCE_EXHAUSTED", started.elapsed());
            }
            return Box::pin(async move { Ok(refused.into_http()) });
        }
        let answer = self.inner.call(request);
        Box::pin(async move {
            let refused = match tokio::time::timeout(limits.request_timeout, answer).await {
                Ok(Ok(response)) if is_too_large(&response) => {
                    tracing::info!(
                        rpc,
                        limit = limits.max_request_bytes,
                        "request refused: larger than the request size limit"
                    );
                    too_large(limits.max_request_bytes)
                }
                Ok(answer) => return answer,
                Err(_) => {
                    tracing::warn!(
                        rpc,
                        timeout = ?limits.request_timeout,
                        "call dropped: it outlived the request timeout"
                    );
                    timed_out(limits.request_timeout)
                }
            };
            if let Some(rpc) = rpc {
                let outcome = keyauth_proto::code_name(refused.code());
                crate::metrics::call(rpc, outcome, started.elapsed());
            }
            Ok(refused.into_http())
        })
    }
}

/// The size of a request's header list as HTTP/2 counts it (RFC 7541 §4.1: name, value and
/// 32 bytes each), pseudo-headers included.
fn header_list_bytes<B>(request: &http::Request<B>) -> usize {
    let uri = request.uri();
    let pseudo = [
        (":method", request.method().as_str().len()),
        (
            ":path",
            uri.path_and_query().map_or(0, |p| p.as_str().len()),
        ),
        (":scheme", uri.scheme_str().map_or(0, str::len)),
        (
            ":authority",
            uri.authority().map_or(0, |a| a.as_str().len()),
        ),
    ];
    let pseudo: usize = pseudo.iter().map(|(n, v)| n.len() + v + 32).sum();
    let headers: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 32)
        .sum();
    pseudo + headers
}

fn refusal(code: Code, reason: &str, message: String) -> Status {
    status::detailed(code, reason, message, Vec::new(), None)
}

fn headers_too_large(limit: u32) -> Status {
    refusal(
        Code::ResourceExhausted,
        "HEADERS_TOO_LARGE",
        format!("the request's metadata is larger than this server accepts ({limit} bytes)"),
    )
}

/// Whether tonic refused the request message as larger than the decoding limit.
fn is_too_large(response: &http::Response<tonic::body::Body>) -> bool {
    response.extensions().get::<Status>().is_some_and(|s| {
        s.code() == Code::OutOfRange
            && s.message()
                .starts_with("Error, decoded message length too large")
    })
}

fn too_large(limit: usize) -> Status {
    refusal(
        Code::ResourceExhausted,
        "REQUEST_TOO_LARGE",
        format!("the request is larger than this server accepts ({limit} bytes)"),
    )
}

fn timed_out(timeout: Duration) -> Status {
    refusal(
        Code::DeadlineExceeded,
        "REQUEST_TIMEOUT",
        format!(
            "the call did not finish within the server's request timeout ({} ms)",
            timeout.as_millis()
        ),
    )
}
