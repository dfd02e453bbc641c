//! [`KeyAuthLayer`]: API-key authentication for any tower HTTP service (axum, hyper, tonic),
//! in three lines:
//!
//! ```no_run
//! # async fn demo(app: axum::Router) -> Result<(), Box<dyn std::error::Error>> {
//! use keyauth_client::{Client, KeyAuthLayer, Verifier, VerifierOptions};
//! let client = Client::builder("http://127.0.0.1:50051").connect_lazy()?;
//! let app = app.layer(KeyAuthLayer::new(Verifier::new(client, VerifierOptions::default())));
//! # Ok(()) }
//! ```
//!
//! For each request it:
//! - reads `Authorization: Bearer …` (a missing, garbage, truncated or huge header is a 401,
//!   never a panic or a 500);
//! - maps the route to a required permission ([`crate::routes`]: a route table, else
//!   `/api/v1/<resource>…` with GET/HEAD → read, POST/PUT/PATCH → write, DELETE → delete for
//!   resources of the catalog; a restricted key is refused on a route that maps to no
//!   resource, a standard key is not);
//! - verifies the key with the [`Verifier`] (in-process once keyauth has proven it);
//! - answers refusals itself with the seed's JSON error body, `Content-Type:
//!   application/json`, 401 or 403 (`WWW-Authenticate: Bearer` on 401), and 503 when the
//!   answer is unknown (keyauth unreachable and nothing fresh cached);
//! - passes `X-Request-Id` through (generating one when absent) to the service and back;
//! - on success puts the [`VerifiedKey`] into the request's extensions for the handler.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE};
use http::{Request, Response, StatusCode};
use http_body_util::{Either, Full};
use keyauth_contract::Denial;
pub use keyauth_contract::catalog::Catalog;
use keyauth_contract::error_body::{error_body, unavailable_body};
use keyauth_contract::request_id;
use keyauth_contract::routes::RouteTable;
use tower_layer::Layer;
use tower_service::Service;

use crate::verifier::{VerifiedKey, Verifier};

const REQUEST_ID: &str = request_id::HEADER;

/// The tower layer (see the module docs).
#[derive(Clone)]
pub struct KeyAuthLayer {
    shared: Arc<Shared>,
}

struct Shared {
    verifier: Verifier,
    routes: RouteTable,
    catalog: Catalog,
}

impl KeyAuthLayer {
    /// With the built-in catalog and no route table.
    pub fn new(verifier: Verifier) -> Self {
        KeyAuthLayer {
            shared: Arc::new(Shared {
                verifier,
                routes: RouteTable::default(),
                catalog: Catalog::built_in(),
            }),
        }
    }

    /// Routes that override the default mapping.
    pub fn routes(self, routes: RouteTable) -> Self {
        self.with(|s| Shared { routes, ..s })
    }

    /// The catalog the server uses, when it is not the built-in one.
    pub fn catalog(self, catalog: Catalog) -> Self {
        self.with(|s| Shared { catalog, ..s })
    }

    fn with(self, change: impl FnOnce(Shared) -> Shared) -> Self {
        let shared = match Arc::try_unwrap(self.shared) {
            Ok(s) => s,
            Err(arc) => Shared {
                verifier: arc.verifier.clone(),
                routes: arc.routes.clone(),
                catalog: arc.catalog.clone(),
            },
        };
        KeyAuthLayer {
            shared: Arc::new(change(shared)),
        }
    }
}

impl<S> Layer<S> for KeyAuthLayer {
    type Service = KeyAuth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        KeyAuth {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service [`KeyAuthLayer`] wraps around another.
#[derive(Clone)]
pub struct KeyAuth<S> {
    inner: S,
    shared: Arc<Shared>,
}

/// The body of an answer: the service's, or the layer's own JSON refusal.
pub type KeyAuthBody<B> = Either<B, Full<Bytes>>;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A refusal answered by the layer itself.
fn refusal<B>(
    status: StatusCode,
    body: String,
    request_id: &HeaderValue,
) -> Response<KeyAuthBody<B>> {
    let mut response = Response::new(Either::Right(Full::new(Bytes::from(body))));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if status == StatusCode::UNAUTHORIZED {
        headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    headers.insert(REQUEST_ID, request_id.clone());
    response
}

fn denied<B>(denial: Denial, request_id: &HeaderValue) -> Response<KeyAuthBody<B>> {
    let status = u16::try_from(denial.http_status())
        .ok()
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::UNAUTHORIZED);
    let body = error_body(denial.code(), denial.message(), denial.error_type());
    refusal(status, body, request_id)
}

/// The caller's request id when it is usable, else a fresh one (the contract's rules).
fn request_id_of(presented: Option<&HeaderValue>) -> HeaderValue {
    presented
        .filter(|v| request_id::is_usable(v.as_bytes()))
        .cloned()
        .unwrap_or_else(|| {
            HeaderValue::from_bytes(&request_id::fresh())
                .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
        })
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for KeyAuth<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = Response<KeyAuthBody<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        // The clone that was made ready serves this call; a fresh clone waits for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.shared.clone();
        let id = request_id_of(request.headers().get(REQUEST_ID));
        request.headers_mut().insert(REQUEST_ID, id.clone());
        let requirement =
            shared
                .routes
                .requirement(request.method().as_str(), request.uri().path(), |r, a| {
                    shared.catalog.contains(r, a)
                });
        // A header that is not visible ASCII cannot be a key: checked as an empty one.
        let presented = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        Box::pin(async move {
            let verdict = match shared
                .verifier
                .verify(&presented, requirement.required())
                .await
            {
                Ok(verdict) => verdict,
                Err(unavailable) => {
                    tracing::warn!(error = %unavailable, "key check unavailable; answering 503");
                    return Ok(refusal(
                        StatusCode::SERVICE_UNAVAILABLE,
                        unavailable_body(),
                        &id,
                    ));
                }
            };
            let key: Arc<VerifiedKey> = match (verdict.denial, verdict.key) {
                (Some(denial), _) => return Ok(denied(denial, &id)),
                (None, None) => return Ok(denied(Denial::AuthenticationError, &id)),
                (None, Some(key)) => key,
            };
            if requirement.refuses(key.restricted) {
                return Ok(denied(Denial::InsufficientPermissions, &id));
            }
            request.extensions_mut().insert(key);
            let mut response = inner.call(request).await?.map(Either::Left);
            response.headers_mut().insert(REQUEST_ID, id);
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_kept_or_made() {
        let given = HeaderValue::from_static("abc-123");
        assert_eq!(request_id_of(Some(&given)), given);
        let long = HeaderValue::from_str(&"x".repeat(200)).unwrap();
        assert_ne!(request_id_of(Some(&long)), long);
        assert_eq!(request_id_of(None).len(), 20);
    }

    #[test]
    fn refusals_carry_the_seed_body_and_headers() {
        let id = HeaderValue::from_static("r1");
        let r: Response<KeyAuthBody<()>> = denied(Denial::AuthenticationError, &id);
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(r.headers()[WWW_AUTHENTICATE], "Bearer");
        assert_eq!(r.headers()[CONTENT_TYPE], "application/json");
        assert_eq!(r.headers()[REQUEST_ID], "r1");
        let r: Response<KeyAuthBody<()>> = denied(Denial::InsufficientPermissions, &id);
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert!(r.headers().get(WWW_AUTHENTICATE).is_none());
    }
}
