//! The per-call plumbing every handler shares: request id in and out, a tracing span, the
//! token check (a refused operator call counted per peer for the audit trail and the limit),
//! the caller's deadline, the error mapping and the metrics; and the one sequence of an
//! idempotent change.
//!
//! The tokens are checked by `gate` from the headers, before the body is read; a refused call
//! still comes here (with an empty message instead of its unread body), so that its refusal,
//! audit counting, request id, span and metrics are this module's, as for any call.

use std::time::{Duration, Instant};

use keyauth_core::Error;
use keyauth_core::authority::Idempotency;
use keyauth_core::sealing::{self, IdempotencyKey};
use keyauth_core::store::{Changed, Provenance};
use prost::Message;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::KeyAuthorityApi;
use super::gate::{Admitted, authorization};
use crate::status;

pub(crate) const REQUEST_ID: &str = "x-request-id";

/// Which token a call needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    /// The operator token; a refusal is audited.
    Operator,
    /// The verifier token, when one is configured.
    Verifier,
    /// The verifier token (when one is configured) or the operator token: what both a
    /// verifying service and an operator's console read (GetCatalog).
    VerifierOrOperator,
}

/// What a handler knows about its call beyond the message.
pub(crate) struct Call {
    /// The RPC's name (`IssueKey`): part of an idempotency fingerprint.
    method: &'static str,
    pub(crate) provenance: Provenance,
    pub(crate) deadline: Option<Instant>,
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
    /// Runs one RPC: request id in and out, a tracing span, the token check, error mapping.
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
        let started = Instant::now();
        let request_id = request_id(
            request
                .metadata()
                .get(REQUEST_ID)
                .and_then(|v| v.to_str().ok()),
        );
        let span = tracing::info_span!("rpc", method, request_id = %request_id);
        let header = MetadataValue::try_from(request_id.as_str()).ok();
        let result = async {
            tracing::debug!("started");
            let mut provenance = Provenance {
                request_id: Some(request_id.clone()),
                operator: None,
                // Only the audit trail of operator calls needs it: Verify skips the formatting.
                peer: (access == Access::Operator)
                    .then(|| crate::connections::remote_addr(&request).map(|a| a.to_string()))
                    .flatten(),
            };
            debug_assert_eq!(super::gate::access_of(method), Some(access), "{method}");
            // Admitted by the gate from the headers (see `gate`), or checked here.
            let admitted = match request.extensions_mut().remove::<Admitted>() {
                Some(Admitted(operator)) => Ok(operator),
                None => self.tokens.admit(access, authorization(&request)),
            };
            match admitted {
                Ok(operator) => provenance.operator = operator,
                Err(refused) if access == Access::Operator => {
                    // Counted in memory, written in aggregate by the housekeeping task: a
                    // refused call writes nothing itself.
                    let peer =
                        crate::connections::remote_addr(&request).map(|a| a.ip().to_string());
                    return Err(self.authority.note_auth_failure(
                        peer.as_deref(),
                        Some(&request_id),
                        refused,
                    ));
                }
                // Not counted as a failed operator call (GetCatalog answers with the
                // verifier's refusal).
                Err(refused) => return Err(refused),
            }
            let idempotency_key = match access {
                Access::Operator => request
                    .metadata()
                    .get(sealing::HEADER)
                    .map(|v| IdempotencyKey::parse(v.as_bytes()))
                    .transpose()?,
                Access::Verifier | Access::VerifierOrOperator => None,
            };
            let call = Call {
                method,
                deadline: deadline(request.metadata()),
                provenance,
                idempotency_key,
            };
            work(request.into_inner(), call).await
        }
        .instrument(span.clone())
        .await;
        let _enter = span.enter();
        match result {
            Ok(res) => {
                tracing::debug!("ok");
                crate::metrics::call(method, res.outcome(), started.elapsed());
                let mut response = Response::new(res);
                if let Some(h) = header {
                    response.metadata_mut().insert(REQUEST_ID, h);
                }
                Ok(response)
            }
            Err(err) => {
                tracing::info!(error = %err, "failed");
                let mut status = status::from_error(err);
                let outcome = keyauth_proto::code_name(status.code());
                crate::metrics::call(method, outcome, started.elapsed());
                if let Some(h) = header {
                    status.metadata_mut().insert(REQUEST_ID, h);
                }
                Err(status)
            }
        }
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

/// The call's request id: the caller's, when it is usable (1 to 128 visible ASCII characters),
/// else a fresh one.
pub(crate) fn request_id(presented: Option<&str>) -> String {
    presented
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| keyauth_core::key::unique_base62(20))
}

/// The caller's deadline, from the `grpc-timeout` header (`<digits><unit>`).
pub(crate) fn deadline(metadata: &MetadataMap) -> Option<Instant> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
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

    #[test]
    fn grpc_timeout_is_parsed() {
        let mut m = MetadataMap::new();
        m.insert("grpc-timeout", "250m".parse().unwrap());
        let d = deadline(&m).unwrap();
        assert!(d > Instant::now() && d <= Instant::now() + Duration::from_millis(250));
        m.insert("grpc-timeout", "x".parse().unwrap());
        assert!(deadline(&m).is_none());
    }
}
