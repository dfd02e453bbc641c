//! Verify and CheckPermission: the calls every request of the REST API makes, on their own
//! path, so that a key answered from memory costs about what a bare RPC costs.
//!
//! [`VerifierRoutes`] sits in front of the generated service and serves these two methods
//! itself, through tonic's own unary handling (`tonic::server::Grpc`, the prost codec), with
//! two differences from the generated route:
//!
//! - **No wait, no box, for a warm key.** [`Authority::verify_from_memory`] answers a key
//!   proven before (or a malformed key, a wrong secret, an id no key has) without an `await`:
//!   the answer is ready when the handler returns. Only a call that has to wait (the store,
//!   argon2) becomes a boxed future, and gets its span the first time it waits
//!   (`call::spanned_once_waiting`), so that what is logged meanwhile carries its request id.
//! - **The key's answer is encoded once.** The `ApiKey` of an active key is encoded the first
//!   time it is answered and kept with the cached record (`KeyRecord::encoded_answer`); the answer,
//!   [`VerdictAnswer`], carries those bytes as its field 2, which on the wire is the
//!   `VerifyResponse`/`CheckPermissionResponse` a client decodes (an embedded message is
//!   length-delimited bytes).
//!
//! The generated trait methods (`handlers.rs`) run the same code and decode the key back, so
//! that both routes give one answer. The decoded request's copy of the presented key is wiped
//! when the call is done with it.

use std::convert::Infallible;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use keyauth_core::authority::{FromMemory, Waiting};
use keyauth_core::catalog::{Catalog, CatalogCheck};
use keyauth_core::model::{KeyRecord, KeyState, Verdict};
use keyauth_core::{Authority, Error};
use keyauth_proto as pb;
use prost::Message;
use tonic::codegen::{BoxFuture, Service, http};
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::{Request, Response, Status};
use zeroize::Zeroize;

use super::KeyAuthorityApi;
use super::call::{self, Outcome};
use crate::wire;

/// The answer to Verify and CheckPermission as it goes on the wire: the fields and tags of
/// both `VerifyResponse` and `CheckPermissionResponse`, with the key as its encoded `ApiKey`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct VerdictAnswer {
    /// `valid` (Verify) or `allowed` (CheckPermission).
    #[prost(bool, tag = "1")]
    pub(crate) valid: bool,
    /// The encoded `ApiKey`, whenever the secret was proven.
    #[prost(bytes = "bytes", optional, tag = "2")]
    pub(crate) key: Option<Bytes>,
    #[prost(message, optional, tag = "3")]
    pub(crate) error: Option<pb::ApiError>,
    #[prost(int32, tag = "4")]
    pub(crate) http_status: i32,
}

impl Outcome for VerdictAnswer {
    fn outcome(&self) -> &'static str {
        crate::metrics::verdict_outcome(self.error.as_ref().map(|e| e.code.as_str()))
    }
}

impl VerdictAnswer {
    /// The answer to `verdict`, the key in the state it was judged in.
    fn of(verdict: &Verdict) -> Self {
        let (valid, error, http_status) = wire::verdict_out(verdict);
        VerdictAnswer {
            valid,
            key: verdict
                .record
                .as_deref()
                .zip(verdict.state())
                .map(|(record, state)| encoded_key(record, state)),
            error,
            http_status,
        }
    }

    /// The answer's key decoded: what the generated trait methods return.
    fn into_parts(self) -> Result<(bool, Option<pb::ApiKey>, Option<pb::ApiError>, i32), Status> {
        let key = match self.key {
            Some(bytes) => Some(pb::ApiKey::decode(bytes).map_err(|e| {
                crate::status::from_error(Error::internal(format!(
                    "the encoded ApiKey of a verdict does not decode: {e}"
                )))
            })?),
            None => None,
        };
        Ok((self.valid, key, self.error, self.http_status))
    }

    pub(crate) fn into_verify_response(self) -> Result<pb::VerifyResponse, Status> {
        let (valid, key, error, http_status) = self.into_parts()?;
        Ok(pb::VerifyResponse {
            valid,
            key,
            error,
            http_status,
        })
    }

    pub(crate) fn into_check_permission_response(
        self,
    ) -> Result<pb::CheckPermissionResponse, Status> {
        let (allowed, key, error, http_status) = self.into_parts()?;
        Ok(pb::CheckPermissionResponse {
            allowed,
            key,
            error,
            http_status,
        })
    }
}

/// `record`'s `ApiKey` in `state`, encoded: for an active key, once (kept in the record's
/// encoded_answer: an active key's answer changes only with the record, which a change replaces); for a
/// revoked or expired one (rarely asked), each time.
fn encoded_key(record: &KeyRecord, state: KeyState) -> Bytes {
    let encode = || Bytes::from(wire::key_out_as(record, state).encode_to_vec());
    match state {
        KeyState::Active => record.encoded_answer.get_or_init(encode).clone(),
        KeyState::Expired | KeyState::Revoked => encode(),
    }
}

/// A verifier's request: the presented key, and the permissions it is judged for.
pub(crate) trait VerdictRequest: Send + 'static {
    const METHOD: &'static str;
    /// The permissions the key must hold, checked against the catalog.
    type Required: AsRef<[(String, String)]> + Send + 'static;
    fn key(&self) -> &str;
    fn required(&mut self, catalog: &Catalog) -> Result<Self::Required, Error>;
    /// Wipes the decoded copy of the presented key.
    fn wipe(&mut self);
}

/// A verifier's request whose presented key is wiped when it is dropped, however the call
/// ends (the key a cold call keeps is `keyauth_contract::PresentedKey`'s own copy, wiped too).
struct WipedOnDrop<Req: VerdictRequest>(Req);

impl<Req: VerdictRequest> Drop for WipedOnDrop<Req> {
    fn drop(&mut self) {
        self.0.wipe();
    }
}

impl VerdictRequest for pb::VerifyRequest {
    const METHOD: &'static str = "Verify";
    type Required = Vec<(String, String)>;

    fn key(&self) -> &str {
        &self.key
    }

    fn wipe(&mut self) {
        self.key.zeroize();
    }

    fn required(&mut self, catalog: &Catalog) -> Result<Self::Required, Error> {
        // Most calls require nothing: no catalog walk, no allocation.
        if self.required_permissions.is_empty() {
            return Ok(Vec::new());
        }
        Ok(catalog
            .permissions(
                &wire::permissions_from(std::mem::take(&mut self.required_permissions)),
                "required_permissions",
            )?
            .pairs()
            .map(|(r, a)| (r.to_owned(), a.to_owned()))
            .collect())
    }
}

impl VerdictRequest for pb::CheckPermissionRequest {
    const METHOD: &'static str = "CheckPermission";
    type Required = [(String, String); 1];

    fn key(&self) -> &str {
        &self.key
    }

    fn wipe(&mut self) {
        self.key.zeroize();
    }

    fn required(&mut self, catalog: &Catalog) -> Result<Self::Required, Error> {
        catalog.check(&self.resource, &self.action, "")?;
        Ok([(
            std::mem::take(&mut self.resource),
            std::mem::take(&mut self.action),
        )])
    }
}

type Answer = Result<Response<VerdictAnswer>, Status>;

/// The future of a verifier's call: the answer itself when memory gave it, else the wait.
pub(crate) enum VerdictFuture {
    Now(std::future::Ready<Answer>),
    Later(Pin<Box<dyn Future<Output = Answer> + Send>>),
}

impl Future for VerdictFuture {
    type Output = Answer;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Answer> {
        match self.get_mut() {
            VerdictFuture::Now(answer) => Pin::new(answer).poll(cx),
            VerdictFuture::Later(waiting) => waiting.as_mut().poll(cx),
        }
    }
}

/// What memory made of a verifier's call.
enum MemoryAnswer<R> {
    Answered(VerdictAnswer),
    /// The key needs the store or argon2; the permissions it is judged for.
    Wait(Waiting, R),
}

impl KeyAuthorityApi {
    /// The token check, the permissions against the catalog, then the key from memory.
    fn answer_from_memory<Req: VerdictRequest>(
        &self,
        request: &mut Request<()>,
        message: &mut Req,
    ) -> Result<MemoryAnswer<Req::Required>, Error> {
        self.admitted_now(Req::METHOD, request)?;
        let required = message.required(self.authority.catalog())?;
        match self
            .authority
            .verify_from_memory(message.key(), required.as_ref())
        {
            FromMemory::Answered(verdict) => {
                Ok(MemoryAnswer::Answered(VerdictAnswer::of(&verdict?)))
            }
            FromMemory::Wait(waiting) => Ok(MemoryAnswer::Wait(waiting, required)),
        }
    }

    /// One Verify or CheckPermission: the token check, the permissions against the catalog,
    /// then the key, from memory when it can (see the module docs).
    pub(crate) fn verdict<Req: VerdictRequest>(&self, request: Request<Req>) -> VerdictFuture {
        let method = Req::METHOD;
        let (metadata, extensions, message) = request.into_parts();
        let mut message = WipedOnDrop(message);
        let mut request = Request::from_parts(metadata, extensions, ());
        let started = Instant::now();
        let request_id = call::request_id_header(request.metadata().as_ref());
        // Up front only when debug lines are enabled; otherwise made if the call waits or
        // fails (see `call::finish`).
        let mut span = call::debug_span(method, &request_id);
        let ready = |result: Result<VerdictAnswer, Error>, request_id, span| {
            VerdictFuture::Now(std::future::ready(call::finish(
                method, started, request_id, span, result,
            )))
        };
        // What memory decides runs in the span when there is one (debug), so that any line it
        // writes carries the request id.
        let looked = match &span {
            Some(span) => span.in_scope(|| self.answer_from_memory(&mut request, &mut message.0)),
            None => self.answer_from_memory(&mut request, &mut message.0),
        };
        let (waiting, required) = match looked {
            Ok(MemoryAnswer::Answered(answer)) => return ready(Ok(answer), request_id, span),
            Ok(MemoryAnswer::Wait(waiting, required)) => (waiting, required),
            Err(error) => return ready(Err(error), request_id, span),
        };
        let metadata = request.into_parts().0;
        drop(message);
        let authority: Arc<Authority> = self.authority.clone();
        VerdictFuture::Later(Box::pin(async move {
            let deadline = call::deadline(metadata.as_ref());
            let verdict = call::spanned_once_waiting(
                &mut span,
                || call::rpc_span(method, request_id.to_str().unwrap_or_default()),
                authority.verify_waiting(waiting, required.as_ref(), deadline),
            )
            .await;
            let answer = verdict.map(|v| VerdictAnswer::of(&v));
            call::finish(method, started, request_id, span, answer)
        }))
    }
}

impl KeyAuthorityApi {
    /// Verify or CheckPermission as the generated route answers it: `verdict`'s answer, decoded
    /// back into the message `decode` makes of it.
    pub(crate) async fn verdict_response<Req: VerdictRequest, Res>(
        &self,
        request: Request<Req>,
        decode: fn(VerdictAnswer) -> Result<Res, Status>,
    ) -> Result<Response<Res>, Status> {
        let (metadata, answer, extensions) = self.verdict(request).await?.into_parts();
        Ok(Response::from_parts(metadata, decode(answer)?, extensions))
    }
}

/// Serves Verify and CheckPermission on `KeyAuthorityApi::verdict`'s path and every other
/// method through `inner` (the generated service).
#[derive(Clone)]
pub struct VerifierRoutes<S> {
    inner: S,
    api: Arc<KeyAuthorityApi>,
    max_request_bytes: usize,
}

impl<S> VerifierRoutes<S> {
    /// `inner` serves the other methods; requests larger than `max_request_bytes` are refused
    /// (RESOURCE_EXHAUSTED), as the generated service refuses them.
    pub fn new(inner: S, api: Arc<KeyAuthorityApi>, max_request_bytes: usize) -> Self {
        VerifierRoutes {
            inner,
            api,
            max_request_bytes,
        }
    }
}

impl<S: NamedService> NamedService for VerifierRoutes<S> {
    const NAME: &'static str = S::NAME;
}

const VERIFY_PATH: &str = "/keyauth.v1.KeyAuthorityService/Verify";
const CHECK_PERMISSION_PATH: &str = "/keyauth.v1.KeyAuthorityService/CheckPermission";

/// tonic's unary service for one verifier method.
struct VerdictService<Req> {
    api: Arc<KeyAuthorityApi>,
    request: PhantomData<fn() -> Req>,
}

impl<Req: VerdictRequest> UnaryService<Req> for VerdictService<Req> {
    type Response = VerdictAnswer;
    type Future = VerdictFuture;

    fn call(&mut self, request: Request<Req>) -> VerdictFuture {
        self.api.verdict(request)
    }
}

impl<S> VerifierRoutes<S> {
    fn serve<Req>(&self, request: http::Request<tonic::body::Body>) -> RouteFuture
    where
        Req: VerdictRequest + Message + Default,
    {
        let service = VerdictService::<Req> {
            api: self.api.clone(),
            request: PhantomData,
        };
        let max_request_bytes = self.max_request_bytes;
        Box::pin(async move {
            let codec = tonic_prost::ProstCodec::<VerdictAnswer, Req>::default();
            let mut grpc =
                Grpc::new(codec).apply_max_message_size_config(Some(max_request_bytes), None);
            Ok(grpc.unary(service, request).await)
        })
    }
}

type RouteFuture = BoxFuture<http::Response<tonic::body::Body>, Infallible>;

impl<S> Service<http::Request<tonic::body::Body>> for VerifierRoutes<S>
where
    S: Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
            Future = RouteFuture,
        >,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = RouteFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> RouteFuture {
        match request.uri().path() {
            VERIFY_PATH => self.serve::<pb::VerifyRequest>(request),
            CHECK_PERMISSION_PATH => self.serve::<pb::CheckPermissionRequest>(request),
            _ => self.inner.call(request),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::Credentials;
    use crate::service::call::REQUEST_ID;
    use crate::test_support::Captured;

    fn api_key() -> pb::ApiKey {
        pb::ApiKey {
            id: "key_AAAAAAAAAAAA".into(),
            application_id: "app".into(),
            name: "n".into(),
            permissions: vec![pb::Permission {
                resource: "patients".into(),
                actions: vec!["read".into()],
            }],
            restricted: true,
            state: pb::KeyState::Active.into(),
            ..Default::default()
        }
    }

    /// The answer decodes as both messages it stands for, field for field.
    #[test]
    fn the_answer_is_a_verify_and_a_check_permission_response_on_the_wire() {
        let error = pb::ApiError {
            code: "insufficient_permissions".into(),
            message: "m".into(),
            ..Default::default()
        };
        for (valid, key, error, http_status) in [
            (true, Some(api_key()), None, 200),
            (false, Some(api_key()), Some(error.clone()), 403),
            (false, None, Some(error), 401),
            (false, Some(pb::ApiKey::default()), None, 0),
        ] {
            let answer = VerdictAnswer {
                valid,
                key: key.as_ref().map(|k| Bytes::from(k.encode_to_vec())),
                error: error.clone(),
                http_status,
            };
            let bytes = answer.encode_to_vec();
            let verify = pb::VerifyResponse {
                valid,
                key: key.clone(),
                error: error.clone(),
                http_status,
            };
            assert_eq!(pb::VerifyResponse::decode(&bytes[..]).unwrap(), verify);
            assert_eq!(bytes, verify.encode_to_vec());
            let check = pb::CheckPermissionResponse {
                allowed: valid,
                key,
                error,
                http_status,
            };
            assert_eq!(
                pb::CheckPermissionResponse::decode(&bytes[..]).unwrap(),
                check
            );
            assert_eq!(answer.clone().into_verify_response().unwrap(), verify);
            assert_eq!(answer.into_check_permission_response().unwrap(), check);
        }
    }

    /// An API without tokens over a throw-away store in `dir`, its authority, and a key issued
    /// in it: its record and secret.
    async fn api_with_a_key(
        dir: &tempfile::TempDir,
    ) -> (KeyAuthorityApi, Arc<Authority>, KeyRecord, String) {
        let authority = crate::test_support::authority(dir).await;
        let api = KeyAuthorityApi::new(authority.clone(), Credentials::none());
        let issue = pb::IssueKeyRequest {
            application_id: "app_1".into(),
            environment: pb::Environment::Test.into(),
            name: "reader".into(),
            ..Default::default()
        };
        let new = wire::new_key_in(&issue, authority.catalog()).unwrap();
        let issued = authority.issue(new, &Default::default(), None).await;
        let issued = issued.unwrap();
        let secret = issued.key.expose().to_owned();
        (api, authority, issued.record, secret)
    }

    /// A verifier's request that reports, when it is dropped, the key it still holds.
    struct Spy<R: VerdictRequest> {
        inner: R,
        left: Arc<std::sync::Mutex<Option<String>>>,
    }

    impl<R: VerdictRequest> VerdictRequest for Spy<R> {
        const METHOD: &'static str = R::METHOD;
        type Required = R::Required;

        fn key(&self) -> &str {
            self.inner.key()
        }

        fn required(&mut self, catalog: &Catalog) -> Result<Self::Required, Error> {
            self.inner.required(catalog)
        }

        fn wipe(&mut self) {
            self.inner.wipe();
        }
    }

    impl<R: VerdictRequest> Drop for Spy<R> {
        fn drop(&mut self) {
            *self.left.lock().unwrap() = Some(self.inner.key().to_owned());
        }
    }

    /// What `verdict` leaves of `request`'s key when it drops it.
    async fn key_left<R: VerdictRequest>(api: &KeyAuthorityApi, request: R) -> Option<String> {
        let left = Arc::default();
        let spy = Spy {
            inner: request,
            left: Arc::clone(&left),
        };
        let _ = api.verdict(Request::new(spy)).await;
        left.lock().unwrap().take()
    }

    /// `verdict` wipes the decoded request's copy of the key, however the call ends: answered
    /// from memory, waiting for the store and argon2, or refused before the key is looked at.
    #[tokio::test]
    async fn the_handler_wipes_the_requests_key() {
        // A subscriber, as the other tests here have: a callsite first reached with none would
        // be taken as never enabled by the tests that capture logs meanwhile.
        let _default = Captured::default().install();
        let dir = tempfile::tempdir().unwrap();
        let (api, _, _, secret) = api_with_a_key(&dir).await;
        let unknown = vec![pb::Permission {
            resource: "payroll".into(),
            actions: vec!["read".into()],
        }];
        let verifies = [
            (secret.clone(), Vec::new()), // cold: waits for the store and argon2
            (secret.clone(), Vec::new()), // warm: answered from memory
            ("sk_test_nope".into(), Vec::new()), // malformed: refused from memory
            (secret.clone(), unknown),    // refused before the key is looked at
        ];
        for (key, required_permissions) in verifies {
            let verify = pb::VerifyRequest {
                key,
                required_permissions,
            };
            assert_eq!(key_left(&api, verify).await.as_deref(), Some(""));
        }
        let check = pb::CheckPermissionRequest {
            key: secret,
            resource: "patients".into(),
            action: "read".into(),
        };
        assert_eq!(key_left(&api, check).await.as_deref(), Some(""));
    }

    fn verify(key: &str, id: Option<&str>) -> Request<pb::VerifyRequest> {
        let mut request = Request::new(pb::VerifyRequest {
            key: key.into(),
            required_permissions: Vec::new(),
        });
        if let Some(id) = id {
            request
                .metadata_mut()
                .insert(REQUEST_ID, id.parse().unwrap());
        }
        request
    }

    /// A warm key is answered without waiting, with the `ApiKey` encoded once for it; a
    /// changed record is encoded afresh; answers carry the request id; at `info` only a
    /// failure logs, with its request id.
    #[tokio::test]
    async fn warm_keys_are_answered_at_once_from_their_encoded_answer() {
        let captured = Captured::default();
        let _default = captured.install();
        let dir = tempfile::tempdir().unwrap();
        let (api, authority, record, secret) = api_with_a_key(&dir).await;

        // Cold: the store and argon2, so a wait.
        let cold = api.verdict(verify(&secret, Some("req-cold-1")));
        assert!(matches!(cold, VerdictFuture::Later(_)));
        let cold = cold.await.unwrap();
        assert_eq!(cold.metadata().get(REQUEST_ID).unwrap(), "req-cold-1");
        let cold = cold.into_inner();
        assert!(cold.valid);
        // Warm: ready at once, the same bytes for the key.
        let warm = api.verdict(verify(&format!("Bearer {secret}"), Some("req-warm-2")));
        assert!(matches!(warm, VerdictFuture::Now(_)));
        let warm = warm.await.unwrap().into_inner();
        let (cold_key, warm_key) = (cold.key.unwrap(), warm.key.clone().unwrap());
        assert_eq!(cold_key.as_ptr(), warm_key.as_ptr(), "encoded once");
        // As issued (a Verify answers the record as cached, without the use just noted).
        let expected = wire::key_out(&record, authority.now());
        assert_eq!(warm.into_verify_response().unwrap().key.unwrap(), expected);
        // A clone (how a record changes) is encoded afresh.
        let changed = KeyRecord {
            name: "renamed".into(),
            ..record.clone()
        };
        let renamed = pb::ApiKey::decode(encoded_key(&changed, KeyState::Active)).unwrap();
        assert_eq!(renamed.name, "renamed");

        // Refused from memory: a malformed key, and a permission outside the catalog.
        let garbage = api.verdict(verify("sk_test_nope", Some("req-quiet-3")));
        assert!(matches!(garbage, VerdictFuture::Now(_)));
        let garbage = garbage.await.unwrap().into_inner();
        assert!(!garbage.valid && garbage.key.is_none());
        assert_eq!(garbage.http_status, 401);
        let mut unknown = verify(&secret, Some("req-loud-4"));
        unknown.get_mut().required_permissions = vec![pb::Permission {
            resource: "payroll".into(),
            actions: vec!["read".into()],
        }];
        let invalid = api.verdict(unknown).await.unwrap_err();
        assert_eq!(invalid.code(), tonic::Code::InvalidArgument);
        assert_eq!(invalid.metadata().get(REQUEST_ID).unwrap(), "req-loud-4");
        let check = Request::new(pb::CheckPermissionRequest {
            key: secret.clone(),
            resource: "patients".into(),
            action: "fly".into(),
        });
        let fresh = api.verdict(check).await.unwrap_err();
        let fresh = fresh.metadata().get(REQUEST_ID).unwrap().to_str().unwrap();
        assert!(!fresh.is_empty());

        let logs = captured.text();
        let failed: Vec<&str> = logs.lines().filter(|l| l.contains("failed")).collect();
        assert_eq!(failed.len(), 2, "{logs}");
        assert!(failed[0].contains("request_id=req-loud-4"), "{logs}");
        assert!(failed[0].contains("method=\"Verify\""), "{logs}");
        assert!(failed[1].contains(&format!("request_id={fresh}")), "{logs}");
        assert!(failed[1].contains("method=\"CheckPermission\""), "{logs}");
        for quiet in ["req-cold-1", "req-warm-2", "req-quiet-3"] {
            assert!(!logs.contains(quiet), "{quiet} logs nothing: {logs}");
        }
        assert!(!logs.contains(&secret[8..]), "{logs}");
    }
}
