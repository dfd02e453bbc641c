//! One `Authority` call per RPC: the request checked and converted through `wire`, the answer
//! converted back.

use std::future::Future;

use keyauth_core::Error;
use keyauth_core::authority::Idempotency;
use keyauth_core::model::{ApplicationId, KeyId, KeyRecord, REASON_MAX, check_text};
use keyauth_core::store::{
    Changed, EventFilter, EventQuery, Exposure, KeyFilters, UsageOf, UsageQuery,
};
use keyauth_proto as pb;
use keyauth_proto::key_authority_service_server::KeyAuthorityService;
use prost::Message;
use tonic::{Request, Response, Status};

use super::KeyAuthorityApi;
use super::call::{Access, Call, Outcome};
use super::scope;
use super::verifier::VerdictAnswer;
use crate::wire;

impl Outcome for pb::IssueKeyResponse {}
impl Outcome for pb::RollKeyResponse {}
impl Outcome for pb::RevokeKeyResponse {}
impl Outcome for pb::GetKeyResponse {}
impl Outcome for pb::ListKeysResponse {}
impl Outcome for pb::ListKeyEventsResponse {}
impl Outcome for pb::ReportExposedKeysResponse {}
impl Outcome for pb::UpdateKeyResponse {}
impl Outcome for pb::GetCatalogResponse {}
impl Outcome for pb::ListApplicationsResponse {}
impl Outcome for pb::GetKeyUsageResponse {}
impl Outcome for pb::GetPrincipalResponse {}

fn page_size(value: i32) -> Result<u32, Error> {
    u32::try_from(value).map_err(|_| Error::invalid("page_size", "must not be negative"))
}

/// The record a change left, when it is the kind of change the caller answers.
type ChangedRecord = for<'a> fn(&Changed<'a>) -> Option<&'a KeyRecord>;

impl KeyAuthorityApi {
    /// `handle` for an operator RPC.
    async fn operator<Req, Res: Outcome, Fut>(
        &self,
        method: &'static str,
        request: Request<Req>,
        work: impl FnOnce(Req, Call) -> Fut,
    ) -> Result<Response<Res>, Status>
    where
        Fut: Future<Output = Result<Res, Error>>,
    {
        self.handle(method, Access::Operator, request, work).await
    }

    /// A change answered with the one key record it leaves (RevokeKey, UpdateKey): run under
    /// the call's idempotency key (see `idempotent`), the answer the same fresh or replayed.
    async fn record_change<Req, Res>(
        &self,
        call: &Call,
        req: &Req,
        changed: ChangedRecord,
        answer: fn(Option<pb::ApiKey>) -> Res,
        change: impl AsyncFnOnce(Option<&Idempotency<'_>>) -> Result<KeyRecord, Error>,
    ) -> Result<Res, Error>
    where
        Req: Message,
        Res: Message + Default,
    {
        let now = self.authority.now();
        let respond = |record: &KeyRecord| answer(Some(wire::key_out(record, now)));
        self.idempotent(
            call,
            req,
            |c| changed(c).map(respond),
            |_, _| {},
            change,
            |record| respond(&record),
        )
        .await
    }
}

#[tonic::async_trait]
impl KeyAuthorityService for KeyAuthorityApi {
    type WatchKeyChangesStream = super::watch::ChangeStream;

    async fn watch_key_changes(
        &self,
        request: Request<pb::WatchKeyChangesRequest>,
    ) -> Result<Response<Self::WatchKeyChangesStream>, Status> {
        self.watch_changes(request).await
    }

    async fn issue_key(
        &self,
        request: Request<pb::IssueKeyRequest>,
    ) -> Result<Response<pb::IssueKeyResponse>, Status> {
        self.operator("IssueKey", request, |req, call| async move {
            let now = self.authority.now();
            self.idempotent(
                &call,
                &req,
                |changed| match changed {
                    Changed::Issued(record) => Some(pb::IssueKeyResponse {
                        key: Some(wire::key_out(record, now)),
                        secret: String::new(),
                    }),
                    _ => None,
                },
                |r, secret| r.secret = secret,
                async |idem| {
                    let new = wire::new_key_in(&req, self.authority.catalog())?;
                    scope::check(&call, new.application_id.as_str(), Some(new.environment))?;
                    self.authority.issue(new, &call.provenance, idem).await
                },
                |issued| pb::IssueKeyResponse {
                    key: Some(wire::key_out(&issued.record, now)),
                    secret: issued.key.expose().to_owned(),
                },
            )
            .await
        })
        .await
    }

    async fn roll_key(
        &self,
        request: Request<pb::RollKeyRequest>,
    ) -> Result<Response<pb::RollKeyResponse>, Status> {
        self.operator("RollKey", request, |req, call| async move {
            let now = self.authority.now();
            self.idempotent(
                &call,
                &req,
                |changed| match changed {
                    Changed::Rolled { new, previous } => Some(pb::RollKeyResponse {
                        key: Some(wire::key_out(new, now)),
                        secret: String::new(),
                        previous_key: Some(wire::key_out(previous, now)),
                    }),
                    _ => None,
                },
                |r, secret| r.secret = secret,
                async |idem| {
                    let id = KeyId::parse(&req.key_id, "key_id")?;
                    self.check_key_scope(&call, &id).await?;
                    let grace = req
                        .grace_period
                        .as_ref()
                        .map(|d| wire::duration_in(d, "grace_period"))
                        .transpose()?;
                    let expire_time = wire::optional_timestamp_in(&req.expire_time, "expire_time")?;
                    self.authority
                        .roll(&id, grace, expire_time, &call.provenance, idem)
                        .await
                },
                |(issued, previous)| pb::RollKeyResponse {
                    key: Some(wire::key_out(&issued.record, now)),
                    secret: issued.key.expose().to_owned(),
                    previous_key: Some(wire::key_out(&previous, now)),
                },
            )
            .await
        })
        .await
    }

    async fn revoke_key(
        &self,
        request: Request<pb::RevokeKeyRequest>,
    ) -> Result<Response<pb::RevokeKeyResponse>, Status> {
        self.operator("RevokeKey", request, |req, call| async move {
            self.record_change(
                &call,
                &req,
                |c| match c {
                    Changed::Revoked(record) => Some(record),
                    _ => None,
                },
                |key| pb::RevokeKeyResponse { key },
                async |idem| {
                    let id = KeyId::parse(&req.key_id, "key_id")?;
                    check_text(&req.reason, "reason", REASON_MAX)?;
                    self.check_key_scope(&call, &id).await?;
                    let reason = Some(req.reason.as_str()).filter(|r| !r.is_empty());
                    self.authority
                        .revoke(&id, reason, &call.provenance, idem)
                        .await
                },
            )
            .await
        })
        .await
    }

    async fn verify(
        &self,
        request: Request<pb::VerifyRequest>,
    ) -> Result<Response<pb::VerifyResponse>, Status> {
        // Served by `verifier::VerifierRoutes`; this is the same call for the generated route.
        self.verdict_response(request, VerdictAnswer::into_verify_response)
            .await
    }

    async fn check_permission(
        &self,
        request: Request<pb::CheckPermissionRequest>,
    ) -> Result<Response<pb::CheckPermissionResponse>, Status> {
        // As `verify`.
        self.verdict_response(request, VerdictAnswer::into_check_permission_response)
            .await
    }

    async fn get_key(
        &self,
        request: Request<pb::GetKeyRequest>,
    ) -> Result<Response<pb::GetKeyResponse>, Status> {
        self.operator("GetKey", request, |req, call| async move {
            let id = KeyId::parse(&req.key_id, "key_id")?;
            self.check_key_scope(&call, &id).await?;
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
        self.operator("ListKeys", request, |req, call| async move {
            let app = ApplicationId::parse(&req.application_id, "application_id")?;
            let env = wire::environment_in(req.environment, "environment")?;
            scope::check(&call, app.as_str(), env)?;
            let env = scope::narrow(&call, env);
            let filters = KeyFilters {
                environment: env,
                states: wire::states_in(&req.states, "states")?,
                last_used_before: wire::optional_timestamp_in(
                    &req.last_used_before,
                    "last_used_before",
                )?,
            };
            let (keys, next_page_token) = self
                .authority
                .list(&app, filters, page_size(req.page_size)?, &req.page_token)
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
        self.operator("ListKeyEvents", request, |req, call| async move {
            let filter = match (req.key_id.is_empty(), req.application_id.is_empty()) {
                (false, true) => EventFilter::Key(KeyId::parse(&req.key_id, "key_id")?),
                (true, false) => EventFilter::Application(ApplicationId::parse(
                    &req.application_id,
                    "application_id",
                )?),
                (true, true) => EventFilter::All,
                (false, false) => {
                    return Err(Error::invalid(
                        "key_id",
                        "at most one of key_id and application_id (neither: every event)",
                    ));
                }
            };
            match &filter {
                EventFilter::Key(id) => self.check_key_scope(&call, id).await?,
                EventFilter::Application(app) => scope::check(&call, app.as_str(), None)?,
                EventFilter::All => {}
            }
            let query = EventQuery {
                filter,
                kinds: wire::event_types_in(&req.types, "types")?
                    .into_iter()
                    .collect(),
                actor: Some(req.actor.clone()).filter(|a| !a.is_empty()),
                start: wire::optional_timestamp_in(&req.start_time, "start_time")?,
                end: wire::optional_timestamp_in(&req.end_time, "end_time")?,
            };
            let (events, next_page_token) = self
                .authority
                .list_events(
                    &query,
                    page_size(req.page_size)?,
                    &req.page_token,
                    &scope::of(&call),
                )
                .await?;
            Ok(pb::ListKeyEventsResponse {
                events: events.iter().map(wire::event_out).collect(),
                next_page_token,
            })
        })
        .await
    }

    async fn update_key(
        &self,
        request: Request<pb::UpdateKeyRequest>,
    ) -> Result<Response<pb::UpdateKeyResponse>, Status> {
        self.operator("UpdateKey", request, |req, call| async move {
            self.record_change(
                &call,
                &req,
                |c| match c {
                    Changed::Updated(record) => Some(record),
                    _ => None,
                },
                |key| pb::UpdateKeyResponse { key },
                async |idem| {
                    let (id, update) = wire::key_update_in(&req, self.authority.catalog())?;
                    self.check_key_scope(&call, &id).await?;
                    self.authority
                        .update(&id, &update, &call.provenance, idem)
                        .await
                },
            )
            .await
        })
        .await
    }

    async fn get_catalog(
        &self,
        request: Request<pb::GetCatalogRequest>,
    ) -> Result<Response<pb::GetCatalogResponse>, Status> {
        self.handle(
            "GetCatalog",
            Access::VerifierOrOperator,
            request,
            |_req, _call| async move { Ok(wire::catalog_out(self.authority.catalog())) },
        )
        .await
    }

    async fn get_principal(
        &self,
        request: Request<pb::GetPrincipalRequest>,
    ) -> Result<Response<pb::GetPrincipalResponse>, Status> {
        self.handle(
            "GetPrincipal",
            Access::Authenticated,
            request,
            |_req, call| async move {
                let principal = call
                    .principal
                    .as_deref()
                    .ok_or_else(|| Error::internal("GetPrincipal admitted without a principal"))?;
                Ok(pb::GetPrincipalResponse {
                    principal: Some(wire::principal_out(principal)),
                })
            },
        )
        .await
    }

    async fn list_applications(
        &self,
        request: Request<pb::ListApplicationsRequest>,
    ) -> Result<Response<pb::ListApplicationsResponse>, Status> {
        self.operator("ListApplications", request, |req, call| async move {
            let (apps, next_page_token) = self
                .authority
                .list_applications(
                    page_size(req.page_size)?,
                    &req.page_token,
                    &scope::of(&call),
                )
                .await?;
            Ok(pb::ListApplicationsResponse {
                applications: apps.iter().map(wire::application_out).collect(),
                next_page_token,
            })
        })
        .await
    }

    async fn get_key_usage(
        &self,
        request: Request<pb::GetKeyUsageRequest>,
    ) -> Result<Response<pb::GetKeyUsageResponse>, Status> {
        self.operator("GetKeyUsage", request, |req, call| async move {
            let of = match (req.key_id.is_empty(), req.application_id.is_empty()) {
                (false, true) => {
                    let id = KeyId::parse(&req.key_id, "key_id")?;
                    self.check_key_scope(&call, &id).await?;
                    // NOT_FOUND for a key no one has, as GetKey answers.
                    self.authority.get(&id).await?;
                    UsageOf::Key(id)
                }
                (true, false) => {
                    let app = ApplicationId::parse(&req.application_id, "application_id")?;
                    scope::check(&call, app.as_str(), None)?;
                    let environment = scope::narrow(&call, None);
                    UsageOf::Application(app, environment)
                }
                _ => {
                    return Err(Error::invalid(
                        "key_id",
                        "exactly one of key_id and application_id is required",
                    ));
                }
            };
            let (start, end, granularity) = wire::usage_range_in(&req)?;
            let buckets = self
                .authority
                .usage(&UsageQuery {
                    of,
                    start,
                    end,
                    granularity,
                })
                .await?;
            Ok(pb::GetKeyUsageResponse {
                buckets: buckets.iter().map(wire::usage_bucket_out).collect(),
            })
        })
        .await
    }

    async fn report_exposed_keys(
        &self,
        request: Request<pb::ReportExposedKeysRequest>,
    ) -> Result<Response<pb::ReportExposedKeysResponse>, Status> {
        self.operator("ReportExposedKeys", request, |req, call| async move {
            let exposure = Exposure {
                source: &req.source,
                url: &req.url,
            };
            let outcomes = self
                .authority
                .report_exposed_in(
                    &req.keys,
                    exposure,
                    &call.provenance,
                    &crate::service::scope::of(&call),
                )
                .await?;
            crate::metrics::exposures(crate::metrics::EXPOSURE_RPC, &outcomes);
            Ok(pb::ReportExposedKeysResponse {
                results: outcomes.iter().map(wire::exposure_out).collect(),
            })
        })
        .await
    }
}
