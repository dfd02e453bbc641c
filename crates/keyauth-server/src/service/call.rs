//! The per-call plumbing every handler shares: request id in and out, a tracing span, the
//! token check (a refused operator call counted per peer for the audit trail and the limit),
//! the caller's deadline, the error mapping and the metrics; and the one sequence of an
//! idempotent change.
//!
//! The tokens are checked by `gate` from the headers, before the body is read; a refused call
//! still comes here (with an empty message instead of its unread body), so that its refusal,
//! audit counting, request id, span and metrics are this module's, as for any call.

use std::time::{Duration, Instant};

use std::net::IpAddr;
use std::sync::Arc;

use keyauth_contract::principal::Principal;
use keyauth_contract::rpc::Rpc;
use keyauth_contract::{request_id, rpc};
use keyauth_core::Error;
use keyauth_core::authority::Idempotency;
use keyauth_core::sealing::{self, IdempotencyKey};
use keyauth_core::store::{Changed, Provenance};
use prost::Message;
use tonic::codegen::http::{HeaderMap, HeaderName, HeaderValue};
use tonic::{Request, Response, Status};
use tracing::level_filters::LevelFilter;
use tracing::{Instrument, Span};

use super::KeyAuthorityApi;
use super::auth::{Admission, Refusal, Unauthenticated};
use super::gate::{Admitted, Refused};
use crate::status;

pub(crate) const REQUEST_ID: &str = request_id::HEADER;
/// The same names as header names made at compile time: looked up and inserted without
/// parsing the name on every call.
pub(crate) const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static(REQUEST_ID);
const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static(sealing::HEADER);

pub(crate) use keyauth_contract::rpc::Access;

/// What a handler knows about its call beyond the message.
pub(crate) struct Call {
    /// The RPC's name (`IssueKey`): part of an idempotency fingerprint.
    method: &'static str,
    /// Who is calling (`None` for an RPC open to every caller).
    pub(crate) principal: Option<Arc<Principal>>,
    pub(crate) provenance: Provenance,
    idempotency_key: Option<IdempotencyKey>,
}

/// The `outcome` label of an answered call in the metrics: `ok`, or for Verify and
/// CheckPermission `valid` or the denial's code.
pub(crate) trait Outcome {
    fn outcome(&self) -> &'static str {
        "ok"
    }
}

/// Encodes the response an idempotent retry replays, from what a change produced.
type Respond<'a> = &'a (dyn Fn(&Changed<'_>) -> Vec<u8> + Send + Sync);

impl KeyAuthorityApi {
    /// Runs one operator RPC (or GetCatalog): request id in and out, a tracing span, the token
    /// check, error mapping. Verify and CheckPermission take `verifier`'s path instead.
    pub(crate) async fn handle<Req, Res, F, Fut>(
        &self,
        method: &'static str,
        access: Access,
        mut request: Request<Req>,
        work: F,
    ) -> Result<Response<Res>, Status>
    where
        F: FnOnce(Req, Call) -> Fut,
        Fut: std::future::Future<Output = Result<Res, Error>>,
        Res: Outcome,
    {
        debug_assert_ne!(
            access,
            Access::Verifier,
            "{method} takes the verifier's path"
        );
        debug_assert_eq!(super::gate::access_of(method), Some(access), "{method}");
        let started = Instant::now();
        let header = request_id_header(request.metadata().as_ref());
        let request_id = header.to_str().unwrap_or_default();
        // Every line of the call (its changes log at info) carries the method and request id.
        let span = rpc_span(method, request_id);
        let work = async {
            tracing::debug!("started");
            let mut provenance = Provenance {
                // Only operator calls are audited: the others skip the copy.
                request_id: (access == Access::Operator).then(|| request_id.to_owned()),
                operator: None,
                peer: (access == Access::Operator)
                    .then(|| crate::connections::remote_addr(&request).map(|a| a.to_string()))
                    .flatten(),
                actor: None,
            };
            let principal = match self.admitted(method, &mut request).await {
                Ok(principal) => principal,
                Err(refused)
                    if matches!(access, Access::Operator | Access::Authenticated)
                        && refused.is_failed_authentication() =>
                {
                    // Counted in memory, written in aggregate by the housekeeping task: a
                    // refused call writes nothing itself. GetPrincipal (any credential) counts
                    // too: it is how the console signs in, and as good a place to guess a
                    // token as any operator RPC.
                    let peer =
                        crate::connections::remote_addr(&request).map(|a| a.ip().to_string());
                    let refusal = self.authority.note_auth_failure(
                        peer.as_deref(),
                        Some(request_id),
                        refused.into(),
                    );
                    // Guessing from many addresses at once: past the global ceiling every
                    // failure waits before it is answered (bounded by --max-in-flight).
                    if self.authority.auth_failures_over_ceiling() {
                        tokio::time::sleep(keyauth_core::auth_failures::GLOBAL_DELAY).await;
                    }
                    return Err(refusal);
                }
                // Not counted as a failed operator call: an authenticated caller without the
                // role (`admitted` counted it as a denial), or GetCatalog answering with the
                // verifier's refusal.
                Err(refused) => return Err(refused.into()),
            };
            provenance.operator = principal.as_ref().map(|p| p.id());
            // Who acted, in every event the call writes.
            provenance.actor = principal.as_deref().map(Into::into);
            let idempotency_key = match access {
                Access::Operator => request
                    .metadata()
                    .as_ref()
                    .get(IDEMPOTENCY_KEY)
                    .map(|v| IdempotencyKey::parse(v.as_bytes()))
                    .transpose()?,
                Access::Verifier | Access::VerifierOrOperator | Access::Authenticated => None,
            };
            // A denial from the call's scope is counted like one for a missing role.
            let denied = principal.clone();
            let peer = crate::connections::remote_addr(&request).map(|a| a.ip());
            let call = Call {
                method,
                principal,
                provenance,
                idempotency_key,
            };
            let result = work(request.into_inner(), call).await;
            if let (Err(Error::PermissionDenied { .. }), Some(principal)) = (&result, denied) {
                self.note_denial(&principal, peer, request_id);
            }
            result
        };
        let result = work.instrument(span.clone()).await;
        finish(method, started, header, Some(span), result)
    }

    /// What memory decides of a call's admission: the gate's decision, made from the headers
    /// (see `gate`), or made here for a call that did not pass the gate (a unit test calling
    /// the service directly); or the JWT left to validate.
    fn admission<T>(&self, rpc: &Rpc, request: &mut Request<T>) -> Admission {
        match gate_decision(request) {
            Some(decided) => Admission::Decided(decided),
            None => self.credentials.admit_now(
                rpc,
                authorization(request),
                crate::peer::peer_info(request.extensions()).and_then(|p| p.client_cert()),
            ),
        }
    }

    /// A call's admission: its principal, or `None` for an RPC open to every caller.
    pub(crate) async fn admitted<T>(
        &self,
        method: &str,
        request: &mut Request<T>,
    ) -> Result<Option<Arc<Principal>>, Refusal> {
        let rpc = rpc::find(method).expect("a method of the service");
        let admitted = match self.admission(rpc, request) {
            Admission::Decided(decided) => decided,
            Admission::Jwt(token) => self.credentials.admit_jwt(rpc, &token).await,
        };
        self.noting_denial(admitted, request)
    }

    /// [`KeyAuthorityApi::admitted`] from memory only (the verifier's path, which answers a
    /// warm key without waiting): a JWT the gate did not see is refused.
    pub(crate) fn admitted_now<T>(
        &self,
        method: &str,
        request: &mut Request<T>,
    ) -> Result<Option<Arc<Principal>>, Refusal> {
        let rpc = rpc::find(method).expect("a method of the service");
        let admitted = match self.admission(rpc, request) {
            Admission::Decided(decided) => decided,
            Admission::Jwt(_) => Err(Refusal::Unauthenticated {
                access: rpc.access,
                why: Unauthenticated::Wrong,
            }),
        };
        self.noting_denial(admitted, request)
    }

    /// `admitted`, a principal without the RPC's role counted as a denial.
    fn noting_denial<T>(
        &self,
        admitted: Result<Option<Arc<Principal>>, Refusal>,
        request: &Request<T>,
    ) -> Result<Option<Arc<Principal>>, Refusal> {
        if let Err(Refusal::LacksRole { principal, .. }) = &admitted {
            let request_id = request_id_header(request.metadata().as_ref());
            self.note_denial(
                principal,
                crate::connections::remote_addr(request).map(|a| a.ip()),
                request_id.to_str().unwrap_or_default(),
            );
        }
        admitted
    }

    /// Counts a call of `principal` refused PERMISSION_DENIED; the audit trail gets one row
    /// per principal per housekeeping interval, never a write per call.
    fn note_denial(&self, principal: &Principal, peer: Option<IpAddr>, request_id: &str) {
        let peer = peer.map(|ip| ip.to_string());
        self.authority
            .note_denial(&principal.into(), peer.as_deref(), Some(request_id));
    }

    /// Runs a change under the call's idempotency key, if it has one: an earlier call's stored
    /// response is replayed (its secret, if any, put back with `restore`); otherwise `change`
    /// runs, writing the response `stored` encodes in its transaction, and `fresh` answers. When
    /// a concurrent call with the same key committed first, its response is the answer (or
    /// ABORTED while it cannot be read yet).
    pub(crate) async fn idempotent<Req, Res, T>(
        &self,
        call: &Call,
        request: &Req,
        stored: impl Fn(&Changed<'_>) -> Option<Res> + Send + Sync,
        restore: fn(&mut Res, String),
        change: impl AsyncFnOnce(Option<&Idempotency<'_>>) -> Result<T, Error>,
        fresh: impl FnOnce(T) -> Res,
    ) -> Result<Res, Error>
    where
        Req: Message,
        Res: Message + Default,
    {
        let respond = move |changed: &Changed<'_>| {
            stored(changed)
                .map(|r| r.encode_to_vec())
                .unwrap_or_default()
        };
        let encoded = request.encode_to_vec();
        let idem = call.idempotency(&encoded, &respond);
        if let Some(replay) = self.replayed(idem.as_ref(), restore).await? {
            return Ok(replay);
        }
        match change(idem.as_ref()).await {
            Ok(done) => Ok(fresh(done)),
            Err(Error::IdempotencyRace) => self
                .replayed(idem.as_ref(), restore)
                .await?
                .ok_or(Error::IdempotencyInProgress),
            Err(e) => Err(e),
        }
    }

    /// The stored response of an earlier call with the same idempotency key, decoded, its
    /// secret (if any) put back with `restore`.
    async fn replayed<Res: Message + Default>(
        &self,
        idem: Option<&Idempotency<'_>>,
        restore: fn(&mut Res, String),
    ) -> Result<Option<Res>, Error> {
        let Some(idem) = idem else { return Ok(None) };
        let Some(replay) = self.authority.replay(idem).await? else {
            return Ok(None);
        };
        let mut response = Res::decode(replay.response.as_slice()).map_err(Error::internal)?;
        if let Some(secret) = replay.secret {
            restore(&mut response, secret.to_string());
        }
        Ok(Some(response))
    }
}

impl Call {
    /// The idempotency of this call, when the caller sent a key (operator RPCs only).
    fn idempotency<'a>(&'a self, request: &[u8], respond: Respond<'a>) -> Option<Idempotency<'a>> {
        Some(Idempotency {
            operator: self.provenance.operator.as_deref()?,
            key: self.idempotency_key.as_ref()?,
            fingerprint: sealing::fingerprint(self.method, request),
            respond,
        })
    }
}

/// Runs `work` in `span` when there is one; otherwise without a span until `work` first waits,
/// and from then on in the span `make` makes (left in `span` for the caller's last lines). A
/// call answered from memory thus pays for no span, and one that waits on the store or argon2
/// has its lines, and those of the libraries under it, carry its request id.
pub(crate) async fn spanned_once_waiting<T>(
    span: &mut Option<Span>,
    make: impl Fn() -> Span,
    work: impl Future<Output = T>,
) -> T {
    let mut work = std::pin::pin!(work);
    std::future::poll_fn(|cx| {
        let polled = {
            let _enter = span.as_ref().map(Span::enter);
            work.as_mut().poll(cx)
        };
        if polled.is_pending() && span.is_none() {
            *span = Some(make());
        }
        polled
    })
    .await
}

/// The end of a call: its metrics, its request id in the answer (or the error), and a line
/// for a failure, in the call's span (`span`, or one made now).
pub(crate) fn finish<Res: Outcome>(
    method: &'static str,
    started: Instant,
    request_id: HeaderValue,
    span: Option<Span>,
    result: Result<Res, Error>,
) -> Result<Response<Res>, Status> {
    match result {
        Ok(res) => {
            if let Some(span) = &span {
                span.in_scope(|| tracing::debug!("ok"));
            }
            crate::metrics::call(method, res.outcome(), started.elapsed());
            let mut response = Response::new(res);
            response
                .metadata_mut()
                .as_mut()
                .insert(REQUEST_ID_HEADER, request_id);
            Ok(response)
        }
        Err(err) => {
            let span =
                span.unwrap_or_else(|| rpc_span(method, request_id.to_str().unwrap_or_default()));
            let _enter = span.enter();
            tracing::info!(error = %err, "failed");
            let mut status = status::from_error(err);
            let outcome = keyauth_proto::code_name(status.code());
            crate::metrics::call(method, outcome, started.elapsed());
            status
                .metadata_mut()
                .as_mut()
                .insert(REQUEST_ID_HEADER, request_id);
            Err(status)
        }
    }
}

/// The call's request id as the header it arrived in (a shared reference to the received
/// bytes, no copy), or a fresh one: no string unless a span, a log line or an audit record
/// needs one. Never indexed by HPACK: each call's id is new, so indexing it would only churn
/// both ends' header tables (and walk them on every call).
pub(crate) fn request_id_header(headers: &HeaderMap) -> HeaderValue {
    let mut header = presented_request_id(headers).unwrap_or_else(fresh_request_id);
    header.set_sensitive(true);
    header
}

/// A verifier's span made up front: only when debug lines are enabled somewhere (its
/// `started` line written in it). A verifier's call answered from memory writes nothing at
/// `info`, so it runs without one: see `verifier`.
pub(crate) fn debug_span(method: &'static str, request_id: &HeaderValue) -> Option<Span> {
    if LevelFilter::current() < LevelFilter::DEBUG {
        return None;
    }
    let span = rpc_span(method, request_id.to_str().unwrap_or_default());
    span.in_scope(|| tracing::debug!("started"));
    Some(span)
}

/// The span of one call: every line it logs carries the method and the request id.
pub(crate) fn rpc_span(method: &'static str, request_id: &str) -> Span {
    tracing::info_span!("rpc", method, request_id = %request_id)
}

/// The caller's request id, when it is usable, as the header it came in (a shared reference to
/// the received bytes, not a copy).
fn presented_request_id(headers: &HeaderMap) -> Option<HeaderValue> {
    headers
        .get(REQUEST_ID_HEADER)
        .filter(|v| request_id::is_usable(v.as_bytes()))
        .cloned()
}

/// The call's request id: the caller's, when it is usable, else a fresh one.
pub(crate) fn request_id(presented: Option<&str>) -> String {
    request_id::or_fresh(presented)
}

/// A fresh request id as a header value.
fn fresh_request_id() -> HeaderValue {
    HeaderValue::from_bytes(&request_id::fresh())
        .expect("base62 characters make a valid header value")
}

/// What the gate decided for this call, if it saw it.
fn gate_decision<T>(request: &mut Request<T>) -> Option<Result<Option<Arc<Principal>>, Refusal>> {
    let extensions = request.extensions_mut();
    if let Some(Admitted(principal)) = extensions.remove::<Admitted>() {
        return Some(Ok(principal));
    }
    extensions
        .remove::<Refused>()
        .map(|Refused(refusal)| Err(refusal))
}

/// The call's `authorization` header, if it is text.
pub(crate) fn authorization<T>(request: &Request<T>) -> Option<&str> {
    request
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
}

/// The caller's deadline, from the `grpc-timeout` header (`<digits><unit>`).
pub(crate) fn deadline(headers: &HeaderMap) -> Option<Instant> {
    let value = headers.get(GRPC_TIMEOUT)?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    let timeout = match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    };
    Instant::now().checked_add(timeout)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::Captured;
    use tonic::metadata::MetadataMap;

    /// Work answered at once makes no span; work that waits gets one then, and what it logs
    /// from then on (a slow statement) carries the request id.
    #[tokio::test]
    async fn a_span_is_made_the_first_time_the_work_waits() {
        let captured = Captured::default();
        let _default = captured.install();
        let mut span = None;
        let quick =
            spanned_once_waiting(&mut span, || rpc_span("Verify", "req-quick-1"), async { 1 })
                .await;
        assert_eq!(quick, 1);
        assert!(span.is_none());
        let waited = spanned_once_waiting(&mut span, || rpc_span("Verify", "req-cold-2"), async {
            tokio::task::yield_now().await;
            tracing::warn!("slow statement");
            2
        })
        .await;
        assert_eq!(waited, 2);
        assert!(span.is_some());
        let logs = captured.text();
        let slow: Vec<&str> = logs.lines().filter(|l| l.contains("slow")).collect();
        assert_eq!(slow.len(), 1, "{logs}");
        assert!(slow[0].contains("request_id=req-cold-2"), "{logs}");
        assert!(!logs.contains("req-quick-1"), "{logs}");
    }

    #[test]
    fn grpc_timeout_is_parsed() {
        let mut m = MetadataMap::new();
        m.insert("grpc-timeout", "250m".parse().unwrap());
        let d = deadline(m.as_ref()).unwrap();
        assert!(d > Instant::now() && d <= Instant::now() + Duration::from_millis(250));
        m.insert("grpc-timeout", "x".parse().unwrap());
        assert!(deadline(m.as_ref()).is_none());
    }
}
