//! The gRPC face of the authority: operator authentication, request ids, deadlines, and the
//! translation of each RPC to one `Authority` call through `wire`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::authority::{Authority, NewKey};
use crate::error::Error;
use crate::model::{ApplicationId, KeyId, REASON_MAX, check_metadata, check_text, parse_name};
use crate::pb;
use crate::pb::key_authority_service_server::KeyAuthorityService;
use crate::store::Provenance;
use crate::wire;

pub use crate::pb::key_authority_service_server::KeyAuthorityServiceServer;

/// Checks `authorization: Bearer <token>` on operator RPCs, in constant time.
#[derive(Clone)]
pub struct OperatorAuth {
    /// SHA-256 of the configured token: comparing digests keeps the comparison constant-time
    /// whatever the presented length.
    token_digest: Option<[u8; 32]>,
}

impl OperatorAuth {
    pub fn new(token: Option<&str>) -> Self {
        OperatorAuth {
            token_digest: token
                .filter(|t| !t.is_empty())
                .map(|t| Sha256::digest(t.as_bytes()).into()),
        }
    }

    pub fn is_configured(&self) -> bool {
        self.token_digest.is_some()
    }

    fn check(&self, metadata: &MetadataMap) -> Result<(), Error> {
        let Some(expected) = &self.token_digest else {
            return Err(Error::Unauthenticated(
                "operator RPCs are disabled: start the server with KEYAUTH_ADMIN_TOKEN set",
            ));
        };
        let presented = metadata
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.get(..7)
                    .filter(|s| s.eq_ignore_ascii_case("bearer "))
                    .map(|_| v[7..].trim())
            })
            .ok_or(Error::Unauthenticated(
                "missing operator credentials: send `authorization: Bearer <operator token>`",
            ))?;
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        if bool::from(digest.ct_eq(expected)) {
            Ok(())
        } else {
            Err(Error::Unauthenticated("the operator token is not valid"))
        }
    }
}

pub struct KeyAuthorityApi {
    authority: Arc<Authority>,
    operators: OperatorAuth,
}

impl KeyAuthorityApi {
    pub fn new(authority: Arc<Authority>, operators: OperatorAuth) -> Self {
        KeyAuthorityApi {
            authority,
            operators,
        }
    }
}

const REQUEST_ID: &str = "x-request-id";

/// What a handler knows about its call beyond the message.
struct Call {
    provenance: Provenance,
    deadline: Option<Instant>,
}

/// Runs one RPC: request id in and out, a tracing span, operator check, error mapping.
async fn handle<Req, Res, F, Fut>(
    method: &'static str,
    operator: Option<&OperatorAuth>,
    request: Request<Req>,
    work: F,
) -> Result<Response<Res>, Status>
where
    F: FnOnce(Req, Call) -> Fut,
    Fut: std::future::Future<Output = Result<Res, Error>>,
{
    let request_id = request
        .metadata()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| crate::key::random_base62(20).unwrap_or_default());
    let span = tracing::info_span!("rpc", method, request_id = %request_id);
    let header = MetadataValue::try_from(request_id.as_str()).ok();
    let result = async {
        tracing::debug!("started");
        if let Some(auth) = operator {
            auth.check(request.metadata())?;
        }
        let call = Call {
            deadline: deadline(request.metadata()),
            provenance: Provenance {
                request_id: Some(request_id.clone()),
            },
        };
        work(request.into_inner(), call).await
    }
    .instrument(span.clone())
    .await;
    let _enter = span.enter();
    match result {
        Ok(res) => {
            tracing::debug!("ok");
            let mut response = Response::new(res);
            if let Some(h) = header {
                response.metadata_mut().insert(REQUEST_ID, h);
            }
            Ok(response)
        }
        Err(err) => {
            tracing::info!(error = %err, "failed");
            let mut status = Status::from(err);
            if let Some(h) = header {
                status.metadata_mut().insert(REQUEST_ID, h);
            }
            Err(status)
        }
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
        handle(
            "IssueKey",
            Some(&self.operators),
            request,
            |req, call| async move {
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
                let issued = self.authority.issue(new, &call.provenance).await?;
                let now = self.authority.now();
                Ok(pb::IssueKeyResponse {
                    key: Some(wire::key_out(&issued.record, now)),
                    secret: issued.key.expose().to_owned(),
                })
            },
        )
        .await
    }

    async fn roll_key(
        &self,
        request: Request<pb::RollKeyRequest>,
    ) -> Result<Response<pb::RollKeyResponse>, Status> {
        handle(
            "RollKey",
            Some(&self.operators),
            request,
            |req, call| async move {
                let id = KeyId::parse(&req.key_id, "key_id")?;
                let grace = req
                    .grace_period
                    .as_ref()
                    .map(|d| wire::duration_in(d, "grace_period"))
                    .transpose()?;
                let (issued, previous) = self.authority.roll(&id, grace, &call.provenance).await?;
                let now = self.authority.now();
                Ok(pb::RollKeyResponse {
                    key: Some(wire::key_out(&issued.record, now)),
                    secret: issued.key.expose().to_owned(),
                    previous_key: Some(wire::key_out(&previous, now)),
                })
            },
        )
        .await
    }

    async fn revoke_key(
        &self,
        request: Request<pb::RevokeKeyRequest>,
    ) -> Result<Response<pb::RevokeKeyResponse>, Status> {
        handle(
            "RevokeKey",
            Some(&self.operators),
            request,
            |req, call| async move {
                let id = KeyId::parse(&req.key_id, "key_id")?;
                check_text(&req.reason, "reason", REASON_MAX)?;
                let reason = Some(req.reason.as_str()).filter(|r| !r.is_empty());
                let record = self.authority.revoke(&id, reason, &call.provenance).await?;
                Ok(pb::RevokeKeyResponse {
                    key: Some(wire::key_out(&record, self.authority.now())),
                })
            },
        )
        .await
    }

    async fn verify(
        &self,
        request: Request<pb::VerifyRequest>,
    ) -> Result<Response<pb::VerifyResponse>, Status> {
        handle("Verify", None, request, |req, call| async move {
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
        handle("CheckPermission", None, request, |req, call| async move {
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
        handle(
            "GetKey",
            Some(&self.operators),
            request,
            |req, _call| async move {
                let id = KeyId::parse(&req.key_id, "key_id")?;
                let record = self.authority.get(&id).await?;
                Ok(pb::GetKeyResponse {
                    key: Some(wire::key_out(&record, self.authority.now())),
                })
            },
        )
        .await
    }

    async fn list_keys(
        &self,
        request: Request<pb::ListKeysRequest>,
    ) -> Result<Response<pb::ListKeysResponse>, Status> {
        handle(
            "ListKeys",
            Some(&self.operators),
            request,
            |req, _call| async move {
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
            },
        )
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
    fn grpc_timeout_is_parsed() {
        let mut m = MetadataMap::new();
        m.insert("grpc-timeout", "250m".parse().unwrap());
        let d = deadline(&m).unwrap();
        assert!(d > Instant::now() && d <= Instant::now() + Duration::from_millis(250));
        m.insert("grpc-timeout", "x".parse().unwrap());
        assert!(deadline(&m).is_none());
    }
}
