//! The load driver: `concurrency` tasks sending one workload's calls over shared HTTP/2
//! connections for a fixed time, each timing its calls into its own [`Tally`].
//!
//! The load tasks use raw tonic clients, not keyauth-client's `Client`: the hot loop measures
//! the server, so the client does as little as it can (no retries, no per-call timeout or
//! metadata, and Verify/CheckPermission answers decoded as [`VerdictOnly`]); the health and
//! ext_authz calls are not keyauth-client's to make at all.

use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use keyauth_proto as pb;
use tokio::task::JoinSet;
use tonic::Request;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::tally::{Outcome, Tally};
use crate::workloads::{Call, Inputs, Workload};

/// What the load tasks read of a Verify or CheckPermission answer: the verdict (`valid` or
/// `allowed`, the error, the HTTP status), not the key. prost skips the fields a message does
/// not declare, so the client decodes about as much as it does of a health answer, and the
/// ratios to the floor measure the server rather than the client sharing its cores.
#[derive(Clone, PartialEq, prost::Message)]
struct VerdictOnly {
    #[prost(bool, tag = "1")]
    valid: bool,
    #[prost(message, optional, tag = "3")]
    error: Option<pb::ApiError>,
    #[prost(int32, tag = "4")]
    http_status: i32,
}

pub struct Clients {
    health: HealthClient<Channel>,
    /// Verify and CheckPermission, decoding [`VerdictOnly`].
    verdicts: tonic::client::Grpc<Channel>,
    envoy: AuthorizationClient<Channel>,
}

impl Clients {
    pub fn new(channel: Channel) -> Self {
        Clients {
            health: HealthClient::new(channel.clone()),
            envoy: AuthorizationClient::new(channel.clone()),
            verdicts: tonic::client::Grpc::new(channel),
        }
    }

    /// A unary call to `path` whose answer is read as [`VerdictOnly`].
    async fn verdict<Req: prost::Message + Send + 'static>(
        &mut self,
        path: &'static str,
        request: Req,
    ) -> Result<VerdictOnly, tonic::Status> {
        self.verdicts
            .ready()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let codec = tonic_prost::ProstCodec::<Req, VerdictOnly>::default();
        let path = http::uri::PathAndQuery::from_static(path);
        let answer = self.verdicts.unary(Request::new(request), path, codec);
        Ok(answer.await?.into_inner())
    }

    pub async fn send(&mut self, call: Call) -> Outcome {
        match call {
            Call::ExtAuthz { key } => match self.envoy.check(envoy_check(&key)).await {
                Ok(r) if r.get_ref().status.as_ref().is_some_and(|s| s.code == 0) => {
                    Outcome::Expected
                }
                Ok(r) => Outcome::Unexpected(format!(
                    "ext_authz Check: status {:?}",
                    r.get_ref().status.as_ref().map(|s| s.code)
                )),
                Err(status) => Outcome::Failed(status),
            },
            Call::Health => match self.health.check(HealthCheckRequest::default()).await {
                Ok(r) if r.get_ref().status == ServingStatus::Serving as i32 => Outcome::Expected,
                Ok(r) => Outcome::Unexpected(format!("health status {}", r.get_ref().status)),
                Err(status) => Outcome::Failed(status),
            },
            Call::Verify { key, expect_valid } => {
                let request = pb::VerifyRequest {
                    key,
                    required_permissions: Vec::new(),
                };
                match self.verdict(VERIFY_PATH, request).await {
                    Ok(r) => {
                        let expected_status = if expect_valid { 200 } else { 401 };
                        if r.valid == expect_valid && r.http_status == expected_status {
                            Outcome::Expected
                        } else {
                            Outcome::Unexpected(format!(
                                "Verify: valid {} http_status {} error {:?}",
                                r.valid,
                                r.http_status,
                                r.error.map(|e| e.code)
                            ))
                        }
                    }
                    Err(status) => Outcome::Failed(status),
                }
            }
            Call::CheckPermission { key } => {
                let request = pb::CheckPermissionRequest {
                    key,
                    resource: "patients".into(),
                    action: "read".into(),
                };
                match self.verdict(CHECK_PERMISSION_PATH, request).await {
                    // `allowed` is field 1, read as `valid`.
                    Ok(r) if r.valid && r.http_status == 200 => Outcome::Expected,
                    Ok(r) => Outcome::Unexpected(format!(
                        "CheckPermission: allowed false, error {:?}",
                        r.error.map(|e| e.code)
                    )),
                    Err(status) => Outcome::Failed(status),
                }
            }
        }
    }
}

const VERIFY_PATH: &str = "/keyauth.v1.KeyAuthorityService/Verify";
const CHECK_PERMISSION_PATH: &str = "/keyauth.v1.KeyAuthorityService/CheckPermission";

/// Runs `workload` for `duration` with `concurrency` tasks spread over `channels`.
pub async fn drive(
    workload: Workload,
    channels: &[Channel],
    inputs: &Arc<Inputs>,
    concurrency: usize,
    duration: Duration,
) -> Tally {
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = JoinSet::new();
    for task in 0..concurrency {
        let mut clients = Clients::new(channels[task % channels.len()].clone());
        let inputs = inputs.clone();
        tasks.spawn(async move {
            let mut tally = Tally::default();
            let mut i = 0;
            while Instant::now() < deadline {
                let (class, call) = inputs.call(workload, task, concurrency, i);
                let sent = Instant::now();
                let outcome = clients.send(call).await;
                tally.record(class, sent.elapsed(), outcome);
                i += 1;
            }
            tally
        });
    }
    let mut total = Tally::default();
    while let Some(joined) = tasks.join_next().await {
        total.merge(joined.expect("a load task panicked"));
    }
    // Up to the last answer, so that the calls still in flight at the deadline count too.
    total.elapsed = started.elapsed();
    total
}

/// A CheckRequest as Envoy's HTTP filter sends it for `GET /api/v1/patients` with `key`.
fn envoy_check(key: &str) -> CheckRequest {
    use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
        HttpRequest, Request as AttributeRequest,
    };
    let headers = [
        (":authority", "api.example.com"),
        (":method", "GET"),
        (":path", "/api/v1/patients"),
        ("authorization", &format!("Bearer {key}")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(AttributeRequest {
                http: Some(HttpRequest {
                    method: "GET".into(),
                    path: "/api/v1/patients".into(),
                    host: "api.example.com".into(),
                    headers,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}
