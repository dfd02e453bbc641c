//! The token check before the request body is read.
//!
//! The generated service reads and decodes a call's whole message before any handler runs, so
//! a check made only in the handler lets an anonymous caller make the server read up to
//! `--max-request-bytes` for each refused call. [`TokenGate`] wraps the service and checks the
//! `authorization` header as soon as the headers arrive:
//!
//! - refused: the body is dropped unread and replaced by one empty message, so the call runs
//!   through the handler's plumbing as any other (the same refusal, request id, audit counting
//!   of refused operator calls, metrics and log line) without having read a byte the caller
//!   sent;
//! - admitted: the admission ([`Admitted`]: the operator id, if any) goes to the handler in the
//!   request's extensions, so the token is not checked twice.
//!
//! Which token each RPC needs is the contract's table (`keyauth_contract::rpc`), which the handlers' own
//! `Access` must match (checked in debug builds by `call::handle`).

use std::task::{Context, Poll};

use tonic::codegen::{Bytes, Service, http};
use tonic::server::NamedService;
use tower_layer::Layer;

use super::auth::TokenCheck;
use keyauth_contract::rpc::Access;

pub(crate) use keyauth_contract::rpc::access_of;

/// The tokens a call may present, and what each admits.
#[derive(Clone, Debug)]
pub(crate) struct Tokens {
    pub(crate) operators: TokenCheck,
    pub(crate) verifiers: TokenCheck,
}

/// A call the gate admitted: the operator's id when the operator token was presented.
#[derive(Clone, Debug)]
pub(crate) struct Admitted(pub(crate) Option<String>);

impl Tokens {
    /// Whether a call of `access` needs a token at all (Verify without a verifier token does
    /// not).
    pub(crate) fn needed(&self, access: Access) -> bool {
        access != Access::Verifier || self.verifiers.is_configured()
    }

    /// Admits a call of `access` presenting `authorization`: the operator id when the operator
    /// token was checked, or the refusal. A call that needs the verifier token or the operator
    /// token (GetCatalog) is refused with the verifier's answer when it has neither.
    pub(crate) fn admit(
        &self,
        access: Access,
        authorization: Option<&str>,
    ) -> Result<Option<String>, keyauth_core::Error> {
        match access {
            Access::Operator => self.operators.check_value(authorization).map(Some),
            Access::Verifier if !self.verifiers.is_configured() => Ok(None),
            Access::Verifier => self.verifiers.check_value(authorization).map(|_| None),
            Access::VerifierOrOperator if !self.verifiers.is_configured() => Ok(None),
            Access::VerifierOrOperator => match self.verifiers.check_value(authorization) {
                Ok(_) => Ok(None),
                Err(refused) => self
                    .operators
                    .check_value(authorization)
                    .map(Some)
                    .map_err(|_| refused),
            },
        }
    }
}

/// The `authorization` header of a call, as [`Tokens::admit`] reads it.
pub(crate) fn authorization<T>(request: &tonic::Request<T>) -> Option<&str> {
    request
        .metadata()
        .as_ref()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
}

/// Wraps the key authority service in a [`TokenGate`].
#[derive(Clone, Debug)]
pub struct TokenGateLayer {
    tokens: Tokens,
}

impl TokenGateLayer {
    pub fn new(operators: TokenCheck, verifiers: TokenCheck) -> Self {
        TokenGateLayer {
            tokens: Tokens {
                operators,
                verifiers,
            },
        }
    }
}

impl<S> Layer<S> for TokenGateLayer {
    type Service = TokenGate<S>;

    fn layer(&self, inner: S) -> TokenGate<S> {
        TokenGate {
            inner,
            tokens: self.tokens.clone(),
        }
    }
}

/// See the module docs.
#[derive(Clone, Debug)]
pub struct TokenGate<S> {
    inner: S,
    tokens: Tokens,
}

impl<S: NamedService> NamedService for TokenGate<S> {
    const NAME: &'static str = S::NAME;
}

/// One gRPC frame holding an empty message: what a refused call's handler decodes.
const EMPTY_MESSAGE: [u8; 5] = [0, 0, 0, 0, 0];

impl<S> Service<http::Request<tonic::body::Body>> for TokenGate<S>
where
    S: Service<http::Request<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<tonic::body::Body>) -> Self::Future {
        let access = request
            .uri()
            .path()
            .rsplit_once('/')
            .and_then(|(_, method)| access_of(method));
        if let Some(access) = access.filter(|&a| self.tokens.needed(a)) {
            let authorization = request
                .headers()
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            match self.tokens.admit(access, authorization) {
                Ok(operator) => {
                    request.extensions_mut().insert(Admitted(operator));
                }
                Err(_) => {
                    // Unread, and never to be read: the handler refuses the call again from
                    // its headers, through the shared plumbing.
                    *request.body_mut() = tonic::body::Body::new(http_body_util::Full::new(
                        Bytes::from_static(&EMPTY_MESSAGE),
                    ));
                }
            }
        }
        self.inner.call(request)
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

    #[test]
    fn admission_follows_the_tokens() {
        let tokens = Tokens {
            operators: TokenCheck::new(Some("op")),
            verifiers: TokenCheck::verifier(Some("ver")),
        };
        assert!(
            tokens
                .admit(Access::Operator, Some("Bearer op"))
                .unwrap()
                .is_some()
        );
        assert!(tokens.admit(Access::Operator, Some("Bearer ver")).is_err());
        assert!(tokens.admit(Access::Operator, None).is_err());
        assert_eq!(
            tokens.admit(Access::Verifier, Some("Bearer ver")).unwrap(),
            None
        );
        assert!(tokens.admit(Access::Verifier, Some("Bearer op")).is_err());
        assert!(
            tokens
                .admit(Access::VerifierOrOperator, Some("Bearer op"))
                .unwrap()
                .is_some()
        );
        assert!(matches!(
            tokens.admit(Access::VerifierOrOperator, Some("Bearer x")),
            Err(keyauth_core::Error::VerifierUnauthenticated(_))
        ));
        let open = Tokens {
            operators: TokenCheck::new(Some("op")),
            verifiers: TokenCheck::verifier(None),
        };
        assert!(!open.needed(Access::Verifier));
        assert_eq!(open.admit(Access::Verifier, None).unwrap(), None);
        assert_eq!(open.admit(Access::VerifierOrOperator, None).unwrap(), None);
    }
}
