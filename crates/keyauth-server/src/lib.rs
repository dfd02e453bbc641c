//! keyauth's gRPC server: the only crate that knows both the domain (`keyauth-core`) and the
//! wire (`keyauth-proto`).
//!
//! - [`config`]: the flags of `keyauth serve`;
//! - [`server`]: assembling the `Authority` and serving it (used by `main`, the tests and the
//!   benchmark alike);
//! - [`service`]: the gRPC handlers (token checks, per-call plumbing, one `Authority` call per
//!   RPC);
//! - [`ext_authz`]: Envoy's external authorization API (`envoy.service.auth.v3.Authorization`)
//!   on the same port;
//! - `wire`: the one proto ⇄ domain conversion; `status`: the one error → status mapping;
//! - [`http`]: the HTTP listener for webhooks (GitHub secret scanning: leaked keys revoke
//!   themselves);
//! - [`principals`]: who is calling: the principals file, legacy tokens, JWT issuers (OIDC, Kubernetes service accounts);
//! - [`connections`] (the accept loop), [`limits`] (per call), [`peer`] (what a connection
//!   shares with its calls), [`tls`], [`metrics`]: what makes it safe to expose and pleasant to
//!   operate.

pub mod config;
pub mod connections;
pub mod ext_authz;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod peer;
pub mod principals;
pub mod server;
pub mod service;
pub mod status;
pub mod tls;

mod wire;

#[cfg(test)]
mod test_support;
