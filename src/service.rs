//! The gRPC face of the authority: operator authentication, request ids, deadlines, and the
//! translation of each RPC to one `Authority` call through `wire`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::authority::{Authority, Idempotency, NewKey};
use crate::error::Error;
use crate::idempotency::{self, IdempotencyKey};
use crate::model::{ApplicationId, KeyId, REASON_MAX, check_metadata, check_text, parse_name};
use crate::pb;
use crate::pb::key_authority_service_server::KeyAuthorityService;
use crate::store::{Changed, EventFilter, Provenance};
use crate::wire;

pub use crate::pb::key_authority_service_server::KeyAuthorityServiceServer;

/// Checks `authorization: Bearer <token>` in constant time: the operator token on operator
/// RPCs ([`OperatorAuth::new`]), the verifier token on Verify and CheckPermission
/// ([`OperatorAuth::verifier`]).
#[derive(Clone)]
pub struct OperatorAuth {
    /// SHA-256 of the configured token: comparing digests keeps the comparison constant-time
    /// whatever the presented length.
    token_digest: Option<[u8; 32]>,
    role: &'static Role,
}

/// Who a token admits, and what a refusal says.
struct Role {
    name: &'static str,
    deny: fn(&'static str) -> Error,
    disabled: &'static str,
    missing: &'static str,
    wrong: &'static str,
}

const OPERATOR: Role = Role {
    name: "operator",
    deny: Error::Unauthenticated,
    disabled: "operator RPCs are disabled: start the server with KEYAUTH_ADMIN_TOKEN set",
    missing: "missing operator credentials: send `authorization: Bearer <operator token>`",
    wrong: "the operator token is not valid",
};

const VERIFIER: Role = Role {
    name: "verifier",
    deny: Error::VerifierUnauthenticated,
    disabled: "no verifier token is configured",
    missing: "missing verifier credentials: send `authorization: Bearer <verifier token>`",
    wrong: "the verifier token is not valid",
};

impl std::fmt::Debug for OperatorAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OperatorAuth")
            .field("role", &self.role.name)
            .field("configured", &self.is_configured())
            .finish()
    }
}

impl OperatorAuth {
    /// The operator token; unset (or empty) refuses every operator RPC.
    pub fn new(token: Option<&str>) -> Self {
        Self::with_role(token, &OPERATOR)
    }

    /// The verifier token; unset (or empty) lets every caller verify.
    pub fn verifier(token: Option<&str>) -> Self {
        Self::with_role(token, &VERIFIER)
    }

    fn with_role(token: Option<&str>, role: &'static Role) -> Self {
        OperatorAuth {
            token_digest: token
                .filter(|t| !t.is_empty())
                .map(|t| Sha256::digest(t.as_bytes()).into()),
            role,
        }
    }

    pub fn is_configured(&self) -> bool {
        self.token_digest.is_some()
    }

    /// Checks the call's token; returns the operator's non-secret id (`op_` and 12 hex digits
    /// of the token's SHA-256), kept in the audit trail and scoping idempotency keys.
    fn check(&self, metadata: &MetadataMap) -> Result<String, Error> {
        let Some(expected) = &self.token_digest else {
            return Err((self.role.deny)(self.role.disabled));
        };
        let presented = metadata
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.get(..7)
                    .filter(|s| s.eq_ignore_ascii_case("bearer "))
                    .map(|_| v[7..].trim())
            })
            .ok_or_else(|| (self.role.deny)(self.role.missing))?;
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        if bool::from(digest.ct_eq(expected)) {
            Ok(format!(
                "op_{}",
                digest[..6]
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
            ))
        } else {
            Err((self.role.deny)(self.role.wrong))
        }
    }
}

pub struct KeyAuthorityApi {
    authority: Arc<Authority>,
    operators: OperatorAuth,
    verifiers: OperatorAuth,
}

impl KeyAuthorityApi {
    pub fn new(authority: Arc<Authority>, operators: OperatorAuth) -> Self {
        KeyAuthorityApi {
            authority,
            operators,
            verifiers: OperatorAuth::verifier(None),
        }
    }

    /// Requires the verifier token on Verify and CheckPermission (when it is configured).
    pub fn with_verifiers(self, verifiers: OperatorAuth) -> Self {
        KeyAuthorityApi { verifiers, ..self }
    }
}

const REQUEST_ID: &str = "x-request-id";

/// What a handler knows about its call beyond the message.
struct Call {
    provenance: Provenance,
    deadline: Option<Instant>,
    idempotency_key: Option<IdempotencyKey>,
}

impl Call {
    /// The idempotency of this call, when the caller sent a key (operator RPCs only).
    fn idempotency<'a>(
        &'a self,
        method: &str,
        request: &[u8],
        respond: &'a (dyn Fn(&Changed<'_>) -> Vec<u8> + Send + Sync),
    ) -> Option<Idempotency<'a>> {
        Some(Idempotency {
            operator: self.provenance.operator.as_deref()?,
            key: self.idempotency_key.as_ref()?,
            fingerprint: idempotency::fingerprint(method, request),
            respond,
        })
    }
}

impl KeyAuthorityApi {
    /// Runs one RPC: request id in and out, a tracing span, operator check (recorded in the
    /// audit trail when refused), error mapping.
    async fn handle<Req, Res, F, Fut>(
        &self,
        method: &'static str,
        operator_rpc: bool,
        request: Request<Req>,
        work: F,
    ) -> Result<Response<Res>, Status>
    where
        F: FnOnce(Req, Call) -> Fut,
        Fut: std::future::Future<Output = Result<Res, Error>>,
        Res: Outcome,
    {
        let started = Instant::now();
        let request_id = request
            .metadata()
            .get(REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
            .map(str::to_owned)
            .unwrap_or_else(|| crate::key::unique_base62(20));
        let span = tracing::info_span!("rpc", method, request_id = %request_id);
        let header = MetadataValue::try_from(request_id.as_str()).ok();
        let result = async {
            tracing::debug!("started");
            let mut provenance = Provenance {
                request_id: Some(request_id.clone()),
                operator: None,
                // Only the audit trail of operator calls needs it: Verify skips the formatting.
                peer: operator_rpc
                    .then(|| request.remote_addr().map(|a| a.to_string()))
                    .flatten(),
            };
            if operator_rpc {
                match self.operators.check(request.metadata()) {
                    Ok(operator) => provenance.operator = Some(operator),
                    Err(e) => {
                        self.authority.record_auth_failure(&provenance).await;
                        return Err(e);
                    }
                }
            } else if self.verifiers.is_configured() {
                self.verifiers.check(request.metadata())?;
            }
            let idempotency_key = if operator_rpc {
                request
                    .metadata()
                    .get(idempotency::HEADER)
                    .map(|v| IdempotencyKey::parse(v.as_bytes()))
                    .transpose()?
            } else {
                None
            };
            let call = Call {
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
                let mut status = Status::from(err);
                let outcome = crate::error::code_name(status.code());
                crate::metrics::call(method, outcome, started.elapsed());
                if let Some(h) = header {
                    status.metadata_mut().insert(REQUEST_ID, h);
                }
                Err(status)
            }
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

    /// Settles a change made under an idempotency key: when a concurrent call with the same
    /// key committed first, its response is the answer (or ABORTED while it cannot be read).
    async fn settle<T, Res: Message + Default>(
        &self,
        outcome: Result<T, Error>,
        idem: Option<&Idempotency<'_>>,
        restore: fn(&mut Res, String),
        respond: impl FnOnce(T) -> Res,
    ) -> Result<Res, Error> {
        match outcome {
            Ok(done) => Ok(respond(done)),
            Err(Error::IdempotencyRace) => self
                .replayed(idem, restore)
                .await?
                .ok_or(Error::IdempotencyInProgress),
            Err(e) => Err(e),
        }
    }
}

/// The `outcome` label of an answered call in the metrics: `ok`, or for Verify and
/// CheckPermission `valid` or the denial's code.
trait Outcome {
    fn outcome(&self) -> &'static str {
        "ok"
    }
}

impl Outcome for pb::IssueKeyResponse {}
impl Outcome for pb::RollKeyResponse {}
impl Outcome for pb::RevokeKeyResponse {}
impl Outcome for pb::GetKeyResponse {}
impl Outcome for pb::ListKeysResponse {}
impl Outcome for pb::ListKeyEventsResponse {}

impl Outcome for pb::VerifyResponse {
    fn outcome(&self) -> &'static str {
        crate::metrics::verdict_outcome(self.error.as_ref().map(|e| e.code.as_str()))
    }
}

impl Outcome for pb::CheckPermissionResponse {
    fn outcome(&self) -> &'static str {
        crate::metrics::verdict_outcome(self.error.as_ref().map(|e| e.code.as_str()))
    }
}

/// The caller's deadline, from the `grpc-timeout` header (`<digits><unit>`).
fn deadline(metadata: &MetadataMap) -> Option<Instant> {
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

#[tonic::async_trait]
impl KeyAuthorityService for KeyAuthorityApi {
    async fn issue_key(
        &self,
        request: Request<pb::IssueKeyRequest>,
    ) -> Result<Response<pb::IssueKeyResponse>, Status> {
        self.handle("IssueKey", true, request, |req, call| async move {
            let request = req.encode_to_vec();
            let now = self.authority.now();
            let respond = |changed: &Changed<'_>| match changed {
                Changed::Issued(record) => pb::IssueKeyResponse {
                    key: Some(wire::key_out(record, now)),
                    secret: String::new(),
                }
                .encode_to_vec(),
                _ => Vec::new(),
            };
            let idem = call.idempotency("IssueKey", &request, &respond);
            let restore: fn(&mut pb::IssueKeyResponse, String) = |r, s| r.secret = s;
            if let Some(replay) = self.replayed(idem.as_ref(), restore).await? {
                return Ok(replay);
            }
            let metadata = req.metadata.into_iter().collect();
            // Check every field, so that one answer names every problem.
            let new = match (
                ApplicationId::parse(&req.application_id, "application_id"),
                wire::required_environment(req.environment, "environment"),
                parse_name(&req.name, "name"),
                self.authority
                    .catalog()
                    .permissions(&wire::permissions_in(&req.permissions), "permissions"),
                req.expire_time
                    .as_ref()
                    .map(|t| wire::timestamp_in(t, "expire_time"))
                    .transpose(),
                check_metadata(&metadata, "metadata"),
            ) {
                (
                    Ok(application_id),
                    Ok(environment),
                    Ok(name),
                    Ok(permissions),
                    Ok(expire_time),
                    Ok(()),
                ) => NewKey {
                    application_id,
                    environment,
                    name,
                    permissions,
                    expire_time,
                    metadata,
                },
                (a, e, n, p, x, m) => {
                    return Err(Error::merge(
                        [a.err(), e.err(), n.err(), p.err(), x.err(), m.err()]
                            .into_iter()
                            .flatten(),
                    ));
                }
            };
            let outcome = self
                .authority
                .issue(new, &call.provenance, idem.as_ref())
                .await;
            self.settle(outcome, idem.as_ref(), restore, |issued| {
                pb::IssueKeyResponse {
                    key: Some(wire::key_out(&issued.record, now)),
                    secret: issued.key.expose().to_owned(),
                }
            })
            .await
        })
        .await
    }

    async fn roll_key(
        &self,
        request: Request<pb::RollKeyRequest>,
    ) -> Result<Response<pb::RollKeyResponse>, Status> {
        self.handle("RollKey", true, request, |req, call| async move {
            let request = req.encode_to_vec();
            let now = self.authority.now();
            let respond = |changed: &Changed<'_>| match changed {
                Changed::Rolled { new, previous } => pb::RollKeyResponse {
                    key: Some(wire::key_out(new, now)),
                    secret: String::new(),
                    previous_key: Some(wire::key_out(previous, now)),
                }
                .encode_to_vec(),
                _ => Vec::new(),
            };
            let idem = call.idempotency("RollKey", &request, &respond);
            let restore: fn(&mut pb::RollKeyResponse, String) = |r, s| r.secret = s;
            if let Some(replay) = self.replayed(idem.as_ref(), restore).await? {
                return Ok(replay);
            }
            let id = KeyId::parse(&req.key_id, "key_id")?;
            let grace = req
                .grace_period
                .as_ref()
                .map(|d| wire::duration_in(d, "grace_period"))
                .transpose()?;
            let outcome = self
                .authority
                .roll(&id, grace, &call.provenance, idem.as_ref())
                .await;
            self.settle(outcome, idem.as_ref(), restore, |(issued, previous)| {
                pb::RollKeyResponse {
                    key: Some(wire::key_out(&issued.record, now)),
                    secret: issued.key.expose().to_owned(),
                    previous_key: Some(wire::key_out(&previous, now)),
                }
            })
            .await
        })
        .await
    }

    async fn revoke_key(
        &self,
        request: Request<pb::RevokeKeyRequest>,
    ) -> Result<Response<pb::RevokeKeyResponse>, Status> {
        self.handle("RevokeKey", true, request, |req, call| async move {
            let request = req.encode_to_vec();
            let now = self.authority.now();
            let respond = |changed: &Changed<'_>| match changed {
                Changed::Revoked(record) => pb::RevokeKeyResponse {
                    key: Some(wire::key_out(record, now)),
                }
                .encode_to_vec(),
                _ => Vec::new(),
            };
            let idem = call.idempotency("RevokeKey", &request, &respond);
            let restore: fn(&mut pb::RevokeKeyResponse, String) = |_, _| {};
            if let Some(replay) = self.replayed(idem.as_ref(), restore).await? {
                return Ok(replay);
            }
            let id = KeyId::parse(&req.key_id, "key_id")?;
            check_text(&req.reason, "reason", REASON_MAX)?;
            let reason = Some(req.reason.as_str()).filter(|r| !r.is_empty());
            let outcome = self
                .authority
                .revoke(&id, reason, &call.provenance, idem.as_ref())
                .await;
            self.settle(outcome, idem.as_ref(), restore, |record| {
                pb::RevokeKeyResponse {
                    key: Some(wire::key_out(&record, now)),
                }
            })
            .await
        })
        .await
    }

    async fn verify(
        &self,
        request: Request<pb::VerifyRequest>,
    ) -> Result<Response<pb::VerifyResponse>, Status> {
        self.handle("Verify", false, request, |req, call| async move {
            let required = self
                .authority
                .catalog()
                .permissions(
                    &wire::permissions_in(&req.required_permissions),
                    "required_permissions",
                )?
                .pairs()
                .map(|(r, a)| (r.to_owned(), a.to_owned()))
                .collect::<Vec<_>>();
            let verdict = self
                .authority
                .verify(&req.key, &required, call.deadline)
                .await?;
            let (valid, key, error, http_status) =
                wire::verdict_out(&verdict, self.authority.now());
            Ok(pb::VerifyResponse {
                valid,
                key,
                error,
                http_status,
            })
        })
        .await
    }

    async fn check_permission(
        &self,
        request: Request<pb::CheckPermissionRequest>,
    ) -> Result<Response<pb::CheckPermissionResponse>, Status> {
        self.handle("CheckPermission", false, request, |req, call| async move {
            self.authority
                .catalog()
                .check(&req.resource, &req.action, "")?;
            let required = [(req.resource, req.action)];
            let verdict = self
                .authority
                .verify(&req.key, &required, call.deadline)
                .await?;
            let (allowed, key, error, http_status) =
                wire::verdict_out(&verdict, self.authority.now());
            Ok(pb::CheckPermissionResponse {
                allowed,
                key,
                error,
                http_status,
            })
        })
        .await
    }

    async fn get_key(
        &self,
        request: Request<pb::GetKeyRequest>,
    ) -> Result<Response<pb::GetKeyResponse>, Status> {
        self.handle("GetKey", true, request, |req, _call| async move {
            let id = KeyId::parse(&req.key_id, "key_id")?;
            let record = self.authority.get(&id).await?;
            Ok(pb::GetKeyResponse {
                key: Some(wire::key_out(&record, self.authority.now())),
            })
        })
        .await
    }

    async fn list_keys(
        &self,
        request: Request<pb::ListKeysRequest>,
    ) -> Result<Response<pb::ListKeysResponse>, Status> {
        self.handle("ListKeys", true, request, |req, _call| async move {
            let app = ApplicationId::parse(&req.application_id, "application_id")?;
            let env = wire::environment_in(req.environment, "environment")?;
            let page_size = u32::try_from(req.page_size)
                .map_err(|_| Error::invalid("page_size", "must not be negative"))?;
            let (keys, next_page_token) = self
                .authority
                .list(&app, env, page_size, &req.page_token)
                .await?;
            let now = self.authority.now();
            Ok(pb::ListKeysResponse {
                keys: keys.iter().map(|k| wire::key_out(k, now)).collect(),
                next_page_token,
            })
        })
        .await
    }

    async fn list_key_events(
        &self,
        request: Request<pb::ListKeyEventsRequest>,
    ) -> Result<Response<pb::ListKeyEventsResponse>, Status> {
        self.handle("ListKeyEvents", true, request, |req, _call| async move {
            let filter = match (req.key_id.is_empty(), req.application_id.is_empty()) {
                (false, true) => EventFilter::Key(KeyId::parse(&req.key_id, "key_id")?),
                (true, false) => EventFilter::Application(ApplicationId::parse(
                    &req.application_id,
                    "application_id",
                )?),
                _ => {
                    return Err(Error::invalid(
                        "key_id",
                        "exactly one of key_id and application_id is required",
                    ));
                }
            };
            let page_size = u32::try_from(req.page_size)
                .map_err(|_| Error::invalid("page_size", "must not be negative"))?;
            let (events, next_page_token) = self
                .authority
                .list_events(&filter, page_size, &req.page_token)
                .await?;
            Ok(pb::ListKeyEventsResponse {
                events: events.iter().map(wire::event_out).collect(),
                next_page_token,
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_auth(value: &str) -> MetadataMap {
        let mut m = MetadataMap::new();
        m.insert("authorization", value.parse().unwrap());
        m
    }

    #[test]
    fn operator_token_is_checked() {
        let auth = OperatorAuth::new(Some("s3cret-token"));
        assert!(auth.check(&with_auth("Bearer s3cret-token")).is_ok());
        assert!(auth.check(&with_auth("bearer s3cret-token")).is_ok());
        assert!(auth.check(&with_auth("Bearer s3cret-tokeN")).is_err());
        assert!(auth.check(&with_auth("s3cret-token")).is_err());
        assert!(auth.check(&MetadataMap::new()).is_err());
        let none = OperatorAuth::new(None);
        assert!(none.check(&with_auth("Bearer ")).is_err());
        assert!(!OperatorAuth::new(Some("")).is_configured());
    }

    #[test]
    fn verifier_token_is_checked_with_its_own_reason() {
        let auth = OperatorAuth::verifier(Some("v-token"));
        assert!(auth.check(&with_auth("Bearer v-token")).is_ok());
        let refused = auth.check(&with_auth("Bearer operator-token")).unwrap_err();
        assert!(matches!(refused, Error::VerifierUnauthenticated(_)));
        assert!(matches!(
            auth.check(&MetadataMap::new()),
            Err(Error::VerifierUnauthenticated(m)) if m.contains("verifier token")
        ));
        assert!(!OperatorAuth::verifier(None).is_configured());
        assert!(!format!("{auth:?}").contains("v-token"));
    }

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
