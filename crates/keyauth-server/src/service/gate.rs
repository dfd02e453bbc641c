//! The credential check before the request body is read.
//!
//! The generated service reads and decodes a call's whole message before any handler runs, so
//! a check made only in the handler lets an anonymous caller make the server read up to
//! `--max-request-bytes` for each refused call. [`TokenGate`] wraps the service and checks the
//! `authorization` header as soon as the headers arrive (`auth::Credentials`):
//!
//! - refused: the body is dropped unread and replaced by one empty message, and the refusal
//!   goes to the handler in the request's extensions, so the call runs through the handler's
//!   plumbing as any other (the same refusal, request id, audit counting of refused operator
//!   calls, metrics and log line) without having read a byte the caller sent;
//! - admitted: the principal ([`Admitted`]) goes to the handler in the request's extensions, so
//!   the credential is not checked twice.
//!
//! A JWT not validated before is validated here, before the call goes on (the only admission
//! that may wait: for the issuer's keys).
//!
//! An operator call from an address past `--operator-failure-limit` is refused before its
//! credential is compared ([`Refusal::Blocked`]), until the address's window passes.
//!
//! Which credential each RPC needs is the contract's table (`keyauth_contract::rpc`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use keyauth_contract::principal::Principal;
use keyauth_contract::rpc::{Access, Rpc};
use keyauth_core::Authority;
use tonic::codegen::{Bytes, Service, http};
use tonic::server::NamedService;
use tower_layer::Layer;

pub(crate) use keyauth_contract::rpc::access_of;

use super::auth::{Admission, Credentials, Refusal};

/// A call the gate admitted: its principal (`None`: an open RPC, no credential needed).
#[derive(Clone, Debug)]
pub(crate) struct Admitted(pub(crate) Option<Arc<Principal>>);

/// A call the gate refused, its body dropped unread.
#[derive(Clone, Debug)]
pub(crate) struct Refused(pub(crate) Refusal);

/// The RPC a request path names, if it is one of the key authority service's.
pub(crate) fn rpc_of(path: &str) -> Option<&'static Rpc> {
    path.rsplit_once('/')
        .and_then(|(_, method)| keyauth_contract::rpc::find(method))
}

/// Wraps the key authority service in a [`TokenGate`].
#[derive(Clone)]
pub struct TokenGateLayer {
    credentials: Credentials,
    authority: Arc<Authority>,
}

impl TokenGateLayer {
    pub fn new(credentials: Credentials, authority: Arc<Authority>) -> Self {
        TokenGateLayer {
            credentials,
            authority,
        }
    }
}

impl<S> Layer<S> for TokenGateLayer {
    type Service = TokenGate<S>;

    fn layer(&self, inner: S) -> TokenGate<S> {
        TokenGate {
            inner,
            credentials: self.credentials.clone(),
            authority: self.authority.clone(),
        }
    }
}

/// See the module docs.
#[derive(Clone)]
pub struct TokenGate<S> {
    inner: S,
    credentials: Credentials,
    /// Knows which addresses are past the limit of refused operator calls.
    authority: Arc<Authority>,
}

impl<S> std::fmt::Debug for TokenGate<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenGate").finish_non_exhaustive()
    }
}

impl<S: NamedService> NamedService for TokenGate<S> {
    const NAME: &'static str = S::NAME;
}

/// One gRPC frame holding an empty message: what a refused call's handler decodes.
const EMPTY_MESSAGE: [u8; 5] = [0, 0, 0, 0, 0];

/// Records the decision in the request: the principal, or the refusal with the body dropped.
fn decide(
    request: &mut http::Request<tonic::body::Body>,
    decided: Result<Option<Arc<Principal>>, Refusal>,
) {
    match decided {
        Ok(principal) => {
            request.extensions_mut().insert(Admitted(principal));
        }
        Err(refusal) => {
            request.extensions_mut().insert(Refused(refusal));
            // Unread, and never to be read.
            *request.body_mut() = tonic::body::Body::new(http_body_util::Full::new(
                Bytes::from_static(&EMPTY_MESSAGE),
            ));
        }
    }
}

/// The gate's future: the inner service's, or (for a JWT not validated before) the check,
/// then the inner service's.
pub enum GateFuture<F: Future> {
    Now(F),
    Checking(Pin<Box<dyn Future<Output = F::Output> + Send>>),
}

impl<F: Future + Unpin> Future for GateFuture<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        match &mut *self {
            GateFuture::Now(inner) => Pin::new(inner).poll(cx),
            GateFuture::Checking(checking) => checking.as_mut().poll(cx),
        }
    }
}

impl<S> Service<http::Request<tonic::body::Body>> for TokenGate<S>
where
    S: Service<http::Request<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send + Unpin + 'static,
    S::Response: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = GateFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<tonic::body::Body>) -> Self::Future {
        let Some(rpc) = rpc_of(request.uri().path()) else {
            return GateFuture::Now(self.inner.call(request));
        };
        // An address past the limit of refused operator calls gets nothing compared until its
        // window passes: guessing stops there, right token or not.
        if matches!(rpc.access, Access::Operator | Access::Authenticated)
            && let Some(wait) = crate::peer::remote_addr_in(request.extensions())
                .and_then(|addr| self.authority.auth_blocked(&addr.ip().to_string()))
        {
            decide(&mut request, Err(Refusal::Blocked { wait }));
            return GateFuture::Now(self.inner.call(request));
        }
        let authorization = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let cert = crate::peer::peer_info(request.extensions()).and_then(|p| p.client_cert());
        match self.credentials.admit_now(rpc, authorization, cert) {
            Admission::Decided(decided) => {
                decide(&mut request, decided);
                GateFuture::Now(self.inner.call(request))
            }
            Admission::Jwt(token) => {
                // The clone that was made ready serves this call; a fresh clone waits for the
                // next.
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                let credentials = self.credentials.clone();
                GateFuture::Checking(Box::pin(async move {
                    let decided = credentials.admit_jwt(rpc, &token).await;
                    decide(&mut request, decided);
                    inner.call(request).await
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rpc_of_the_service_has_an_access() {
        let proto = include_str!("../../../../proto/keyauth/v1/keyauth.proto");
        let methods: Vec<&str> = proto
            .lines()
            .filter_map(|l| l.trim().strip_prefix("rpc "))
            .map(|l| l.split('(').next().unwrap().trim())
            .collect();
        assert!(methods.len() >= 13, "{methods:?}");
        for method in methods {
            assert!(access_of(method).is_some(), "{method} has no access");
        }
        assert_eq!(access_of("NoSuchMethod"), None);
    }
}
