//! Per-connection and per-call limits, and the layer that turns those the transport cannot
//! answer well by itself into proper gRPC statuses:
//!
//! - a request larger than `max_request_bytes` is refused by tonic's decoder with
//!   `OUT_OF_RANGE`; gRPC says `RESOURCE_EXHAUSTED` (and so do we, with ErrorInfo
//!   `REQUEST_TOO_LARGE`). Tonic gives no typed signal for it (only its message text), so this
//!   layer watches the request body itself: `FrameWatch` reads the 5-byte gRPC frame header
//!   of each message as the decoder is fed, and flags a declared length past the limit. The
//!   refusal is ours when that flag is set and the answer is `OUT_OF_RANGE`;
//! - metadata larger than `max_header_list_bytes` is refused here with `RESOURCE_EXHAUSTED`
//!   (`HEADERS_TOO_LARGE`). HTTP/2 itself is told a limit four times larger: past that, h2
//!   answers HTTP 431 before any gRPC code runs, which clients can only report as `UNKNOWN`;
//! - a call still running after `request_timeout` (reading the request included) is dropped and
//!   answered `DEADLINE_EXCEEDED` (tonic's own `Server::timeout` answers `CANCELLED`).
//!
//! - past `max_in_flight` calls running at once (health checks aside), a call is answered
//!   `UNAVAILABLE` (`OVERLOADED`, with a RetryInfo delay) at once, its body never read: the
//!   memory calls hold stays bounded (about `max_in_flight` × `max_request_bytes`) whatever
//!   the clients send, and a health check still answers while the service sheds load.
//!
//! Each refuses one call only: the connection and its other calls go on. (The connections
//! themselves are bounded by the accept loop, `connections`, which this module does not depend
//! on: a call marks its connection through [`crate::peer`].)

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http_body::{Body, Frame, SizeHint};
use tonic::codegen::{Bytes, Service, http};
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
    /// Connections open at once at most; one more is closed at once.
    pub max_connections: usize,
    /// Calls running at once at most (health checks aside); more are shed with UNAVAILABLE.
    pub max_in_flight: usize,
    /// Longest a new connection may take to start its first call (TLS handshake included).
    pub first_request_timeout: Duration,
    /// How often an HTTP/2 ping checks that the client is still there (zero: never).
    pub keepalive_interval: Duration,
    /// How long the client has to answer that ping before the connection is closed.
    pub keepalive_timeout: Duration,
    /// Age at which a connection is asked to go away (HTTP/2 GOAWAY; zero: never).
    pub max_connection_age: Duration,
    /// How long past that age its calls (and streams) may take to finish before it is closed.
    pub max_connection_age_grace: Duration,
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
    pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
    pub const DEFAULT_MAX_IN_FLIGHT: usize = 1024;
    pub const DEFAULT_FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
    pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(60);
    pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
    pub const DEFAULT_MAX_CONNECTION_AGE: Duration = Duration::from_secs(30 * 60);
    pub const DEFAULT_MAX_CONNECTION_AGE_GRACE: Duration = Duration::from_secs(60);
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_bytes: Self::DEFAULT_MAX_REQUEST_BYTES,
            max_header_list_bytes: Self::DEFAULT_MAX_HEADER_LIST_BYTES,
            max_concurrent_streams: Self::DEFAULT_MAX_CONCURRENT_STREAMS,
            request_timeout: Self::DEFAULT_REQUEST_TIMEOUT,
            max_connections: Self::DEFAULT_MAX_CONNECTIONS,
            max_in_flight: Self::DEFAULT_MAX_IN_FLIGHT,
            first_request_timeout: Self::DEFAULT_FIRST_REQUEST_TIMEOUT,
            keepalive_interval: Self::DEFAULT_KEEPALIVE_INTERVAL,
            keepalive_timeout: Self::DEFAULT_KEEPALIVE_TIMEOUT,
            max_connection_age: Self::DEFAULT_MAX_CONNECTION_AGE,
            max_connection_age_grace: Self::DEFAULT_MAX_CONNECTION_AGE_GRACE,
        }
    }
}

/// The tower layer enforcing the request timeout and the in-flight limit, and naming oversized
/// requests `RESOURCE_EXHAUSTED` (see the module docs).
#[derive(Clone, Debug)]
pub struct LimitsLayer {
    limits: Limits,
    /// Calls running now (health checks aside), shared by every connection.
    in_flight: Arc<AtomicUsize>,
}

impl LimitsLayer {
    pub fn new(limits: Limits) -> Self {
        LimitsLayer {
            limits,
            in_flight: Arc::default(),
        }
    }
}

impl<S> Layer<S> for LimitsLayer {
    type Service = LimitsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        LimitsService {
            inner,
            limits: self.limits,
            in_flight: self.in_flight.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct LimitsService<S> {
    inner: S,
    limits: Limits,
    in_flight: Arc<AtomicUsize>,
}

/// A call's place among the calls in flight, given back when the call is answered (or
/// dropped).
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The largest Verify or CheckPermission message: a key and at most 64 permissions of 16
/// actions each fit many times over. These RPCs need no operator token, so a larger message is
/// refused from its frame header, before it is read or decoded (F6: decoding a 250 KB list of
/// 80,000 strings cost milliseconds of CPU before any bound could be checked).
pub const MAX_VERIFY_REQUEST_BYTES: usize = 64 * 1024;

/// The request size limit of `rpc`: [`MAX_VERIFY_REQUEST_BYTES`] for the open verification
/// RPCs, `max_request_bytes` for the others.
fn request_limit(rpc: Option<&str>, max_request_bytes: usize) -> usize {
    match rpc {
        Some("Verify" | "CheckPermission") => max_request_bytes.min(MAX_VERIFY_REQUEST_BYTES),
        _ => max_request_bytes,
    }
}

/// Health checks are never shed: an orchestrator must see a loaded instance as alive.
fn is_health_check(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.Health/")
}

type Answer<E> = Result<http::Response<tonic::body::Body>, E>;

impl<S> Service<http::Request<tonic::body::Body>> for LimitsService<S>
where
    S: Service<http::Request<tonic::body::Body>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Answer<S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        crate::peer::note_request(request.extensions());
        let rpc = crate::metrics::rpc_of_path(request.uri().path());
        let limits = self.limits;
        let started = Instant::now();
        let in_flight = if is_health_check(request.uri().path()) {
            None
        } else {
            let running = self.in_flight.fetch_add(1, Ordering::Relaxed);
            let slot = InFlight(self.in_flight.clone());
            if running >= limits.max_in_flight {
                drop(slot);
                drop(request);
                tracing::debug!(
                    rpc,
                    limit = limits.max_in_flight,
                    "call shed: the in-flight limit is reached"
                );
                metrics::counter!(crate::metrics::CALLS_SHED, "rpc" => rpc.unwrap_or("other"))
                    .increment(1);
                if let Some(rpc) = rpc {
                    crate::metrics::call(rpc, "UNAVAILABLE", started.elapsed());
                }
                let refused = shed(limits.max_in_flight);
                return Box::pin(async move { Ok(refused.into_http()) });
            }
            Some(slot)
        };
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
        let oversized = Arc::new(AtomicBool::new(false));
        let limit = request_limit(rpc, limits.max_request_bytes);
        let request = request.map(|body| {
            tonic::body::Body::new(FrameWatch {
                inner: body,
                limit,
                stop: limit < limits.max_request_bytes,
                header: FrameHeader::default(),
                oversized: oversized.clone(),
            })
        });
        let answer = self.inner.call(request);
        Box::pin(async move {
            let _in_flight = in_flight;
            let refused = match tokio::time::timeout(limits.request_timeout, answer).await {
                Ok(Ok(response)) if is_too_large(&response, &oversized) => {
                    tracing::info!(
                        rpc,
                        limit,
                        "request refused: larger than the request size limit"
                    );
                    too_large(limit)
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

/// Whether the request was refused as larger than the decoding limit: a message declared
/// longer than the limit was seen (the same limit tonic's decoder applies) and the answer is
/// the decoder's `OUT_OF_RANGE`. (Health and reflection keep tonic's larger default limit: a
/// large request they accept is answered as they answer it.)
fn is_too_large(response: &http::Response<tonic::body::Body>, oversized: &AtomicBool) -> bool {
    oversized.load(Ordering::SeqCst)
        && response
            .extensions()
            .get::<Status>()
            .is_some_and(|s| matches!(s.code(), Code::OutOfRange | Code::ResourceExhausted))
}

/// Where a request body is in its gRPC framing: each message is a 5-byte header (compressed
/// flag, big-endian u32 length) and that many bytes.
#[derive(Default)]
struct FrameHeader {
    bytes: [u8; 5],
    have: usize,
    /// Bytes of the current message still to pass.
    skip: u64,
}

impl FrameHeader {
    /// Reads `data`, the next bytes of the body; true if a message declares more than `limit`
    /// bytes.
    fn feed(&mut self, mut data: &[u8], limit: usize) -> bool {
        while !data.is_empty() {
            if self.skip > 0 {
                let n = data
                    .len()
                    .min(usize::try_from(self.skip).unwrap_or(usize::MAX));
                self.skip -= n as u64;
                data = &data[n..];
                continue;
            }
            let n = data.len().min(5 - self.have);
            self.bytes[self.have..self.have + n].copy_from_slice(&data[..n]);
            self.have += n;
            data = &data[n..];
            if self.have == 5 {
                self.have = 0;
                let len = u32::from_be_bytes([
                    self.bytes[1],
                    self.bytes[2],
                    self.bytes[3],
                    self.bytes[4],
                ]);
                if len as usize > limit {
                    return true;
                }
                self.skip = u64::from(len);
            }
        }
        false
    }
}

/// A request body passed through unchanged, its frame headers read on the way (see
/// [`FrameHeader`]).
struct FrameWatch {
    inner: tonic::body::Body,
    limit: usize,
    /// Whether a message over `limit` ends the body at once (a limit below tonic's own, which
    /// tonic's decoder would not enforce).
    stop: bool,
    header: FrameHeader,
    oversized: Arc<AtomicBool>,
}

impl Body for FrameWatch {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
            && this.header.feed(data, this.limit)
        {
            this.oversized.store(true, Ordering::SeqCst);
            if this.stop {
                return Poll::Ready(Some(Err(too_large(this.limit))));
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn too_large(limit: usize) -> Status {
    refusal(
        Code::ResourceExhausted,
        "REQUEST_TOO_LARGE",
        format!("the request is larger than this server accepts ({limit} bytes)"),
    )
}

fn shed(limit: usize) -> Status {
    status::detailed(
        Code::Unavailable,
        "OVERLOADED",
        format!("the server is running as many calls as it takes ({limit}); retry shortly"),
        Vec::new(),
        Some(SHED_RETRY_AFTER),
    )
}

/// The retry delay a shed call is given.
const SHED_RETRY_AFTER: Duration = Duration::from_millis(100);

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

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(len: u32) -> Vec<u8> {
        let mut f = vec![0u8];
        f.extend(len.to_be_bytes());
        f
    }

    #[test]
    fn frame_headers_are_read_across_chunks() {
        // A message within the limit, then one past it, split at every byte.
        let mut body = frame(3);
        body.extend(b"abc");
        body.extend(frame(101));
        for split in 0..body.len() {
            let mut h = FrameHeader::default();
            let (a, b) = body.split_at(split);
            let seen = h.feed(a, 100) | h.feed(b, 100);
            assert!(seen, "split at {split}");
        }
        let mut h = FrameHeader::default();
        let mut ok = frame(100);
        ok.extend(vec![0; 100]);
        ok.extend(frame(0));
        assert!(!h.feed(&ok, 100), "exactly the limit is accepted");
    }
}
