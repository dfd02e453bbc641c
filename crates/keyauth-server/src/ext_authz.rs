//! Envoy's external authorization API, `envoy.service.auth.v3.Authorization/Check`, served on
//! the gRPC port beside the key authority: Envoy asks before forwarding each HTTP request, and
//! keyauth answers allow (with headers for the upstream), deny (401/403 with the seed's JSON
//! error body) or "cannot tell" (503).
//!
//! A Check, in order:
//!
//! 1. the verifier token, when configured, exactly as for Verify (gRPC `UNAUTHENTICATED`
//!    otherwise: Envoy then fails the request with its `status_on_error`);
//! 2. the request id: the HTTP request's `x-request-id` (Envoy's own id when absent);
//! 3. the permission the request needs: the route's `context_extensions`
//!    (`keyauth_resource` + `keyauth_action`), else the `--ext-authz-routes` table, else the
//!    default `/api/v1/<resource>…` mapping (`keyauth_client::routes`);
//! 4. the key, from the HTTP `authorization` header, checked by `Authority::verify` like
//!    Verify (same cache, same order: revoked → expired → permissions).
//!
//! The messages come from the `envoy-types` crate (prost/tonic 0.14 code generated from
//! Envoy's protos). It does not ship a file descriptor set, so this service is not listed by
//! reflection.

use std::sync::Arc;
use std::time::Instant;

use envoy_types::ext_authz::v3::pb::{
    CheckRequest, CheckResponse, DeniedHttpResponse, HeaderAppendAction, HeaderValue,
    HeaderValueOption, HttpResponse, HttpStatus, OkHttpResponse,
};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::HttpRequest;
use envoy_types::pb::google::rpc;
use keyauth_client::error_body;
use keyauth_client::routes::{Permission, Requirement};
use keyauth_core::model::{Denial, KeyRecord};
use keyauth_core::{Authority, Error};
use tonic::metadata::MetadataValue;
use tonic::{Code, Request, Response, Status};
use tracing::Instrument;

pub use envoy_types::ext_authz::v3::pb::{Authorization, AuthorizationServer};
pub use keyauth_client::routes::RouteTable;

use crate::service::OperatorAuth;
use crate::service::call::{self, REQUEST_ID};
use crate::status;

/// Upstream headers of an allowed request.
pub const KEY_ID_HEADER: &str = "x-keyauth-key-id";
pub const APPLICATION_ID_HEADER: &str = "x-keyauth-application-id";
/// `test` or `live`.
pub const ENVIRONMENT_HEADER: &str = "x-keyauth-environment";
/// The `context_extensions` keys a route sets (`ExtAuthzPerRoute.check_settings`) to name the
/// permission it needs.
pub const RESOURCE_EXTENSION: &str = "keyauth_resource";
pub const ACTION_EXTENSION: &str = "keyauth_action";

/// The HTTP header the key comes in (Envoy lower-cases header names).
const AUTHORIZATION: &str = "authorization";
/// The metrics' `rpc` label.
const RPC: &str = "Check";

/// How Check decides, besides the authority: the route table and whether the key is taken
/// off the request.
#[derive(Clone, Debug, Default)]
pub struct ExtAuthzOptions {
    /// Routes overriding the default mapping (`--ext-authz-routes`).
    pub routes: RouteTable,
    /// Remove `authorization` from an allowed request, so the upstream never sees the key
    /// (`--ext-authz-strip-authorization`).
    pub strip_authorization: bool,
}

/// The `envoy.service.auth.v3.Authorization` service.
pub struct ExtAuthzApi {
    authority: Arc<Authority>,
    verifiers: OperatorAuth,
    options: ExtAuthzOptions,
}

impl ExtAuthzApi {
    /// The service; `verifiers` guards Check as it guards Verify, when it is configured.
    pub fn new(
        authority: Arc<Authority>,
        verifiers: OperatorAuth,
        options: ExtAuthzOptions,
    ) -> Self {
        // A route naming a permission outside the catalog refuses every request it matches:
        // say so at start rather than at the first request.
        for p in options.routes.permissions() {
            if authority
                .catalog()
                .check(&p.resource, &p.action, "")
                .is_err()
            {
                tracing::warn!(
                    resource = %p.resource,
                    action = %p.action,
                    "an --ext-authz-routes route names a permission outside the catalog: \
                     every request it matches is refused (403)"
                );
            }
        }
        ExtAuthzApi {
            authority,
            verifiers,
            options,
        }
    }
}

/// What a Check decided.
enum Answer {
    Allowed(Arc<KeyRecord>),
    Denied(Denial),
    /// The authority could not answer (store unreachable, overloaded, deadline): 503, never an
    /// allow.
    Unknown,
}

impl Answer {
    /// The `outcome` label of the metrics.
    fn outcome(&self) -> &'static str {
        match self {
            Answer::Allowed(_) => "valid",
            Answer::Denied(d) => crate::metrics::verdict_outcome(Some(d.code())),
            Answer::Unknown => "unavailable",
        }
    }
}

#[tonic::async_trait]
impl Authorization for ExtAuthzApi {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let started = Instant::now();
        let http = http_request(request.get_ref());
        let request_id = call::request_id(
            http.and_then(|h| h.headers.get(REQUEST_ID))
                .or(http.map(|h| &h.id))
                .map(String::as_str),
        );
        let span = tracing::info_span!("rpc", method = RPC, request_id = %request_id);
        let header = MetadataValue::try_from(request_id.as_str()).ok();
        let result = async {
            tracing::debug!("started");
            if self.verifiers.is_configured() {
                self.verifiers.check(request.metadata())?;
            }
            let deadline = call::deadline(request.metadata());
            Ok::<_, Error>(self.decide(request.get_ref(), deadline).await)
        }
        .instrument(span.clone())
        .await;
        let _enter = span.enter();
        match result {
            Ok(answer) => {
                crate::metrics::call(RPC, answer.outcome(), started.elapsed());
                let mut response = Response::new(self.respond(answer, &request_id));
                if let Some(h) = header {
                    response.metadata_mut().insert(REQUEST_ID, h);
                }
                Ok(response)
            }
            Err(err) => {
                tracing::info!(error = %err, "failed");
                let mut status = status::from_error(err);
                crate::metrics::call(
                    RPC,
                    keyauth_proto::code_name(status.code()),
                    started.elapsed(),
                );
                if let Some(h) = header {
                    status.metadata_mut().insert(REQUEST_ID, h);
                }
                Err(status)
            }
        }
    }
}

fn http_request(request: &CheckRequest) -> Option<&HttpRequest> {
    request.attributes.as_ref()?.request.as_ref()?.http.as_ref()
}

impl ExtAuthzApi {
    /// What the request needs, then the key judged against it.
    async fn decide(&self, request: &CheckRequest, deadline: Option<Instant>) -> Answer {
        let Some(http) = http_request(request) else {
            // Not an HTTP request (or not from Envoy's HTTP filter): no key to check.
            tracing::info!("no HTTP request attributes: refused");
            return Answer::Denied(Denial::AuthenticationError);
        };
        let requirement = self.requirement(request, http);
        let required = match &requirement {
            Requirement::Permission(p) => vec![(p.resource.clone(), p.action.clone())],
            Requirement::Unmapped | Requirement::Unknown(_) => Vec::new(),
        };
        let presented = http.headers.get(AUTHORIZATION).map_or("", String::as_str);
        let verdict = match self.authority.verify(presented, &required, deadline).await {
            Ok(verdict) => verdict,
            Err(err) => {
                // The same logging and store-error metrics as an RPC error, then 503.
                let status = status::from_error(err);
                tracing::warn!(
                    code = keyauth_proto::code_name(status.code()),
                    error = status.message(),
                    "the key could not be checked: 503"
                );
                return Answer::Unknown;
            }
        };
        if let Some(denial) = verdict.denial {
            return Answer::Denied(denial);
        }
        let Some(record) = verdict.record else {
            return Answer::Denied(Denial::AuthenticationError);
        };
        match requirement {
            Requirement::Permission(_) => Answer::Allowed(record),
            Requirement::Unmapped if !record.restricted => Answer::Allowed(record),
            Requirement::Unmapped => {
                tracing::debug!("restricted key on a path that maps to no resource: refused");
                Answer::Denied(Denial::InsufficientPermissions)
            }
            // A route (context_extensions or --ext-authz-routes) naming a permission the
            // catalog does not have is a configuration mistake: no key can hold it, so the
            // request is refused with 403, never allowed, whatever the key.
            Requirement::Unknown(p) => {
                tracing::warn!(
                    resource = %p.resource,
                    action = %p.action,
                    "the route names a permission outside the catalog: refused (403)"
                );
                Answer::Denied(Denial::InsufficientPermissions)
            }
        }
    }

    /// The permission the request needs: the route's context_extensions, else the route
    /// table, else the default mapping.
    fn requirement(&self, request: &CheckRequest, http: &HttpRequest) -> Requirement {
        let catalog = self.authority.catalog();
        let in_catalog = |r: &str, a: &str| catalog.check(r, a, "").is_ok();
        let extensions = request.attributes.as_ref().map(|a| &a.context_extensions);
        let resource = extensions.and_then(|e| e.get(RESOURCE_EXTENSION));
        let action = extensions.and_then(|e| e.get(ACTION_EXTENSION));
        match (resource, action) {
            (Some(r), Some(a)) => Requirement::explicit(r, a, in_catalog),
            (None, None) => self
                .options
                .routes
                .requirement(&http.method, &http.path, in_catalog),
            // Half a permission: a misconfigured route, refused like an unknown permission.
            (r, a) => Requirement::Unknown(Permission::new(
                r.map_or("", String::as_str),
                a.map_or("", String::as_str),
            )),
        }
    }

    fn respond(&self, answer: Answer, request_id: &str) -> CheckResponse {
        match answer {
            Answer::Allowed(record) => {
                allowed(&record, request_id, self.options.strip_authorization)
            }
            Answer::Denied(denial) => denied(
                denial.http_status(),
                if denial.http_status() == 401 {
                    Code::Unauthenticated
                } else {
                    Code::PermissionDenied
                },
                denial.message(),
                error_body::error_body(denial.code(), denial.message(), denial.error_type()),
                request_id,
            ),
            Answer::Unknown => denied(
                503,
                Code::Unavailable,
                error_body::UNAVAILABLE_MESSAGE,
                error_body::unavailable_body(),
                request_id,
            ),
        }
    }
}

/// A header that replaces any value of the same name. Envoy applies
/// `OVERWRITE_IF_EXISTS_OR_ADD` as "set"; older Envoys, which read only the deprecated
/// `append` field, treat it unset as `append: false`, also "set".
fn set_header(key: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_owned(),
            value: value.to_owned(),
            raw_value: Vec::new(),
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd.into(),
        ..Default::default()
    }
}

fn status(code: Code, message: &str) -> Option<rpc::Status> {
    Some(rpc::Status {
        code: code.into(),
        message: message.to_owned(),
        details: Vec::new(),
    })
}

/// The allow: the key's identity for the upstream, the request id back to the client.
///
/// The three `x-keyauth-*` headers are set with overwrite semantics, which replaces any copy
/// the client sent, so they cannot be forged through an allowed request. They are *not* listed
/// in `headers_to_remove`: Envoy's ext_authz filter applies `headers_to_remove` after the
/// headers it sets, so listing them would delete the values set here. (deploy/envoy/envoy.yaml
/// also strips them before ext_authz runs, for routes where ext_authz is off.)
fn allowed(record: &KeyRecord, request_id: &str, strip_authorization: bool) -> CheckResponse {
    let ok = OkHttpResponse {
        headers: vec![
            set_header(KEY_ID_HEADER, record.id.as_str()),
            set_header(APPLICATION_ID_HEADER, record.application_id.as_str()),
            set_header(ENVIRONMENT_HEADER, record.environment.as_str()),
        ],
        headers_to_remove: if strip_authorization {
            vec![AUTHORIZATION.to_owned()]
        } else {
            Vec::new()
        },
        response_headers_to_add: vec![set_header(REQUEST_ID, request_id)],
        ..Default::default()
    };
    CheckResponse {
        status: status(Code::Ok, ""),
        http_response: Some(HttpResponse::OkResponse(ok)),
        dynamic_metadata: None,
    }
}

/// A refusal Envoy sends to the client as is: the HTTP status, the JSON error body, its
/// content type, `www-authenticate: Bearer` on a 401, and the request id.
///
/// It is a `denied_response`, also for the 503: an `error_response` would be subject to
/// Envoy's `failure_mode_allow`, and "cannot tell" must never become an allow.
fn denied(
    http_status: i32,
    code: Code,
    message: &str,
    body: String,
    request_id: &str,
) -> CheckResponse {
    let mut headers = vec![set_header("content-type", "application/json")];
    if http_status == 401 {
        headers.push(set_header("www-authenticate", "Bearer"));
    }
    headers.push(set_header(REQUEST_ID, request_id));
    CheckResponse {
        status: status(code, message),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus { code: http_status }),
            headers,
            body,
        })),
        dynamic_metadata: None,
    }
}
