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
//!    default `/api/v1/<resource>…` mapping (`keyauth_contract::routes`);
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
use keyauth_contract::error_body;
use keyauth_contract::routes::{Permission, Requirement};
use keyauth_core::catalog::CatalogCheck;
use keyauth_core::model::{Denial, KeyRecord};
use keyauth_core::{Authority, Error};
use tonic::codegen::http::HeaderValue as HttpHeaderValue;
use tonic::{Code, Request, Response, Status};
use tracing::Span;
use tracing::level_filters::LevelFilter;

pub use envoy_types::ext_authz::v3::pb::{Authorization, AuthorizationServer};
pub use keyauth_contract::routes::RouteTable;

use crate::service::Credentials;
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
    credentials: Credentials,
    options: ExtAuthzOptions,
}

impl ExtAuthzApi {
    /// The service; `credentials` guard Check as they guard Verify.
    pub fn new(
        authority: Arc<Authority>,
        credentials: Credentials,
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
            credentials,
            options,
        }
    }
}

/// What a Check has to say in the log besides its answer (logged in the call's span, made
/// only then at `info`).
enum Note {
    /// Not an HTTP request (or not from Envoy's HTTP filter): no key to check.
    NotHttp,
    /// The authority could not answer: the RPC error's code and message.
    Unavailable(Status),
    /// The route names a permission the catalog does not have.
    UnknownPermission(Permission),
    /// A restricted key on a path that maps to no resource.
    RestrictedUnmapped,
}

impl Note {
    fn log(&self) {
        match self {
            Note::NotHttp => tracing::info!("no HTTP request attributes: refused"),
            Note::Unavailable(status) => tracing::warn!(
                code = keyauth_proto::code_name(status.code()),
                error = status.message(),
                "the key could not be checked: 503"
            ),
            // A route (context_extensions or --ext-authz-routes) naming a permission the
            // catalog does not have is a configuration mistake: no key can hold it, so the
            // request is refused with 403, never allowed, whatever the key.
            Note::UnknownPermission(p) => tracing::warn!(
                resource = %p.resource,
                action = %p.action,
                "the route names a permission outside the catalog: refused (403)"
            ),
            Note::RestrictedUnmapped => {
                tracing::debug!("restricted key on a path that maps to no resource: refused")
            }
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
        // As for Verify (see `call::handle`): the span is made up front only when debug lines
        // are enabled; otherwise only when the call has something to log, on the way out.
        let eager = LevelFilter::current() >= LevelFilter::DEBUG;
        let mut span = eager.then(|| call::rpc_span(RPC, &request_id));
        let header = HttpHeaderValue::from_str(&request_id).ok();
        let work = async {
            tracing::debug!("started");
            // Guarded as Verify is: by a credential with `keys.verify`, once one exists.
            let verify = keyauth_contract::rpc::find("Verify").expect("Verify is an RPC");
            self.credentials
                .admit(
                    verify,
                    call::authorization(&request),
                    crate::peer::peer_info(request.extensions()).and_then(|p| p.client_cert()),
                )
                .await
                .map_err(Error::from)?;
            let deadline = call::deadline(request.metadata().as_ref());
            Ok::<_, Error>(self.decide(request.get_ref(), deadline).await)
        };
        let make_span = || call::rpc_span(RPC, &request_id);
        let result = call::spanned_once_waiting(&mut span, make_span, work).await;
        let loud = match &result {
            Ok((_, note)) => note.is_some(),
            Err(_) => true,
        };
        if loud && span.is_none() {
            span = Some(make_span());
        }
        let _enter = span.as_ref().map(Span::enter);
        match result {
            Ok((answer, note)) => {
                if let Some(note) = note {
                    note.log();
                }
                crate::metrics::call(RPC, answer.outcome(), started.elapsed());
                let mut response = Response::new(self.respond(answer, &request_id));
                if let Some(h) = header {
                    response
                        .metadata_mut()
                        .as_mut()
                        .insert(call::REQUEST_ID_HEADER, h);
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
                    status
                        .metadata_mut()
                        .as_mut()
                        .insert(call::REQUEST_ID_HEADER, h);
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
    /// What the request needs, then the key judged against it; with what to log, if anything.
    async fn decide(
        &self,
        request: &CheckRequest,
        deadline: Option<Instant>,
    ) -> (Answer, Option<Note>) {
        let Some(http) = http_request(request) else {
            return (
                Answer::Denied(Denial::AuthenticationError),
                Some(Note::NotHttp),
            );
        };
        let requirement = self.requirement(request, http);
        let required: Vec<_> = requirement
            .required()
            .iter()
            .map(|p| (p.resource.clone(), p.action.clone()))
            .collect();
        let presented = http.headers.get(AUTHORIZATION).map_or("", String::as_str);
        let verdict = match self.authority.verify(presented, &required, deadline).await {
            Ok(verdict) => verdict,
            Err(err) => {
                // The same store-error metrics as an RPC error (and the same log line's
                // content), then 503.
                let status = status::from_error(err);
                return (Answer::Unknown, Some(Note::Unavailable(status)));
            }
        };
        if let Some(denial) = verdict.denial {
            return (Answer::Denied(denial), None);
        }
        let Some(record) = verdict.record else {
            return (Answer::Denied(Denial::AuthenticationError), None);
        };
        if !requirement.refuses(record.restricted) {
            return (Answer::Allowed(record), None);
        }
        let note = match requirement {
            Requirement::Unknown(p) => Note::UnknownPermission(p),
            Requirement::Unmapped | Requirement::Permission(_) => Note::RestrictedUnmapped,
        };
        (Answer::Denied(Denial::InsufficientPermissions), Some(note))
    }

    /// The permission the request needs: the route's context_extensions, else the route
    /// table, else the default mapping.
    fn requirement(&self, request: &CheckRequest, http: &HttpRequest) -> Requirement {
        let catalog = self.authority.catalog();
        let in_catalog = |r: &str, a: &str| catalog.contains(r, a);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::Captured;
    use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::Request as AttributeRequest;

    /// A CheckRequest as Envoy's HTTP filter sends it, with the route's context extensions.
    fn check_request(headers: &[(&str, &str)], extensions: &[(&str, &str)]) -> CheckRequest {
        let owned = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(AttributeRequest {
                    http: Some(HttpRequest {
                        method: "GET".into(),
                        path: "/api/v1/patients".into(),
                        headers: owned(headers),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                context_extensions: owned(extensions),
                ..Default::default()
            }),
        }
    }

    /// At `info` a Check makes no span unless it has something to log; what it logs carries
    /// its request id, and a plain denial logs nothing.
    #[tokio::test]
    async fn a_check_logs_only_what_it_has_to_say_with_its_request_id() {
        let captured = Captured::default();
        let _default = captured.install();
        let dir = tempfile::tempdir().unwrap();
        let authority = crate::test_support::authority(&dir).await;
        let new = keyauth_core::authority::NewKey {
            application_id: keyauth_core::model::ApplicationId::parse("app", "app").unwrap(),
            environment: keyauth_core::model::Environment::Test,
            name: "unit".into(),
            permissions: Default::default(),
            expire_time: None,
            metadata: Default::default(),
        };
        let issued = authority
            .issue(new, &Default::default(), None)
            .await
            .unwrap();
        let bearer = format!("Bearer {}", issued.key.expose());
        let api = ExtAuthzApi::new(authority, Credentials::none(), ExtAuthzOptions::default());

        let quiet = check_request(
            &[
                ("x-request-id", "req-quiet-1"),
                ("authorization", "Bearer nope"),
            ],
            &[],
        );
        let answer = api.check(Request::new(quiet)).await.unwrap();
        assert_eq!(answer.metadata().get(REQUEST_ID).unwrap(), "req-quiet-1");

        let misrouted = check_request(
            &[("x-request-id", "req-loud-2"), ("authorization", &bearer)],
            &[
                (RESOURCE_EXTENSION, "spaceships"),
                (ACTION_EXTENSION, "fly"),
            ],
        );
        let answer = api.check(Request::new(misrouted)).await.unwrap();
        assert_eq!(answer.metadata().get(REQUEST_ID).unwrap(), "req-loud-2");

        let not_http = CheckRequest::default();
        let answer = api.check(Request::new(not_http)).await.unwrap();
        let fresh = answer.metadata().get(REQUEST_ID).unwrap().to_str().unwrap();

        let logs = captured.text();
        let lines: Vec<&str> = logs.lines().filter(|l| l.contains("rpc{")).collect();
        assert_eq!(lines.len(), 2, "{logs}");
        assert!(lines[0].contains("outside the catalog"), "{logs}");
        assert!(lines[0].contains("request_id=req-loud-2"), "{logs}");
        assert!(lines[0].contains("method=\"Check\""), "{logs}");
        assert!(lines[1].contains("no HTTP request attributes"), "{logs}");
        assert!(lines[1].contains(&format!("request_id={fresh}")), "{logs}");
        assert!(!logs.contains("req-quiet-1"), "{logs}");
    }
}
