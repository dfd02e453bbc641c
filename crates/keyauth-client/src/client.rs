//! [`Client`]: typed calls to every RPC of keyauth, over plaintext or TLS/mTLS.
//!
//! - Tokens: the operator token goes on operator RPCs, the verifier token on Verify,
//!   CheckPermission and WatchKeyChanges (`authorization: Bearer …`).
//! - Request ids: [`Client::with_request_id`] passes the caller's `x-request-id` on, so one id
//!   follows a request through every service.
//! - Timeouts: a connect timeout and a per-call timeout (both 5 s unless set).
//! - Safe retries: IssueKey, RollKey and RevokeKey carry an `idempotency-key` (one per call,
//!   the same on every retry), so a retry after `UNAVAILABLE` or `ABORTED` replays the first
//!   call's answer instead of making a second key. Reads are retried the same way. Up to
//!   [`ClientBuilder::retries`] retries, with exponential backoff and jitter.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use keyauth_client::Client;
//! use keyauth_proto as pb;
//!
//! let client = Client::builder("http://127.0.0.1:50051")
//!     .operator_token("…")
//!     .connect()
//!     .await?;
//! let issued = client
//!     .issue_key(pb::IssueKeyRequest {
//!         application_id: "app_123".into(),
//!         environment: pb::Environment::Test.into(),
//!         name: "Backend".into(),
//!         ..Default::default()
//!     })
//!     .await?;
//! println!("{}", issued.key.unwrap().id);
//! # Ok(()) }
//! ```

use std::path::PathBuf;
use std::time::Duration;

use keyauth_proto as pb;
use keyauth_proto::key_authority_service_client::KeyAuthorityServiceClient;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

use crate::tls;

/// Why a client could not be made.
#[derive(Debug)]
pub enum ConnectError {
    /// A setting is wrong (the URL, a token, a TLS file).
    Setting(String),
    /// The server could not be reached.
    Unreachable(tonic::transport::Error),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Setting(why) => f.write_str(why),
            ConnectError::Unreachable(e) => write!(f, "cannot connect to keyauth: {e}"),
        }
    }
}

impl std::error::Error for ConnectError {}

/// Settings of a [`Client`].
#[derive(Clone)]
pub struct ClientBuilder {
    url: String,
    operator_token: Option<String>,
    verifier_token: Option<String>,
    ca: Option<PathBuf>,
    identity: Option<(PathBuf, PathBuf)>,
    connect_timeout: Duration,
    timeout: Duration,
    retries: u32,
    idempotency: bool,
    http2_window: Option<u32>,
}

impl std::fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("url", &self.url)
            .field(
                "operator_token",
                &self.operator_token.as_ref().map(|_| ".."),
            )
            .field(
                "verifier_token",
                &self.verifier_token.as_ref().map(|_| ".."),
            )
            .field("ca", &self.ca)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl ClientBuilder {
    /// The operator token, for IssueKey, RollKey, RevokeKey, GetKey, ListKeys, ListKeyEvents.
    pub fn operator_token(mut self, token: impl Into<String>) -> Self {
        self.operator_token = Some(token.into());
        self
    }

    /// The verifier token, for Verify, CheckPermission and WatchKeyChanges (when the server
    /// requires one).
    pub fn verifier_token(mut self, token: impl Into<String>) -> Self {
        self.verifier_token = Some(token.into());
        self
    }

    /// TLS: trust the CA certificates of this PEM file instead of the system's roots.
    pub fn ca_certificate(mut self, pem: impl Into<PathBuf>) -> Self {
        self.ca = Some(pem.into());
        self
    }

    /// mTLS: present this certificate chain and key (PEM files).
    pub fn identity(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.identity = Some((cert.into(), key.into()));
        self
    }

    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Longest wait for one call (each retry has its own).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Retries of a call that failed with `UNAVAILABLE` or `ABORTED` (default 3).
    pub fn retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    /// Whether IssueKey, RollKey and RevokeKey carry an `idempotency-key` (default: yes), which
    /// makes their retries safe. IssueKey and RollKey then need the server to have a seal key
    /// (`KEYAUTH_SEAL_KEY_FILE`): it keeps the secret sealed for the replay. Without one, turn
    /// this off; such calls are then never retried.
    pub fn idempotency(mut self, on: bool) -> Self {
        self.idempotency = on;
        self
    }

    /// HTTP/2 flow-control windows of the connection and of each stream, in bytes (default:
    /// the transport's).
    pub fn http2_window(mut self, bytes: u32) -> Self {
        self.http2_window = Some(bytes);
        self
    }

    fn endpoint(&self) -> Result<Endpoint, ConnectError> {
        let bad = |why: String| ConnectError::Setting(format!("keyauth URL {:?}: {why}", self.url));
        let mut endpoint = Endpoint::from_shared(self.url.clone())
            .map_err(|e| bad(e.to_string()))?
            .connect_timeout(self.connect_timeout)
            .timeout(self.timeout)
            .tcp_nodelay(true)
            .initial_stream_window_size(self.http2_window)
            .initial_connection_window_size(self.http2_window);
        if self.url.starts_with("https://") {
            let identity = self
                .identity
                .as_ref()
                .map(|(c, k)| (c.as_path(), k.as_path()));
            let config = tls::client_config(self.ca.as_deref(), identity)
                .map_err(|e| ConnectError::Setting(e.to_string()))?;
            endpoint = endpoint
                .tls_config(config)
                .map_err(|e| ConnectError::Setting(e.to_string()))?;
        } else if !self.url.starts_with("http://") {
            return Err(bad("use http://HOST:PORT or https://HOST:PORT".into()));
        }
        Ok(endpoint)
    }

    fn finish(self, channel: Channel) -> Result<Client, ConnectError> {
        let bearer = |token: Option<&String>, what: &str| {
            token
                .map(|t| {
                    MetadataValue::try_from(format!("Bearer {t}")).map_err(|_| {
                        ConnectError::Setting(format!("the {what} token is not valid ASCII"))
                    })
                })
                .transpose()
        };
        Ok(Client {
            inner: KeyAuthorityServiceClient::new(channel),
            operator: bearer(self.operator_token.as_ref(), "operator")?,
            verifier: bearer(self.verifier_token.as_ref(), "verifier")?,
            request_id: None,
            retries: self.retries,
            idempotency: self.idempotency,
        })
    }

    /// Connects now: an unreachable server is an error here, not at the first call.
    pub async fn connect(self) -> Result<Client, ConnectError> {
        let channel = self
            .endpoint()?
            .connect()
            .await
            .map_err(ConnectError::Unreachable)?;
        self.finish(channel)
    }

    /// Connects at the first call (and reconnects after a failure), so that a service can start
    /// while keyauth is down.
    pub fn connect_lazy(self) -> Result<Client, ConnectError> {
        let channel = self.endpoint()?.connect_lazy();
        self.finish(channel)
    }
}

/// A connection to keyauth: cheap to clone (clones share the connection).
#[derive(Clone)]
pub struct Client {
    inner: KeyAuthorityServiceClient<Channel>,
    operator: Option<AsciiMetadataValue>,
    verifier: Option<AsciiMetadataValue>,
    request_id: Option<AsciiMetadataValue>,
    retries: u32,
    idempotency: bool,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("operator_token", &self.operator.as_ref().map(|_| ".."))
            .field("verifier_token", &self.verifier.as_ref().map(|_| ".."))
            .field("request_id", &self.request_id)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Copy)]
enum Token {
    Operator,
    Verifier,
}

/// Whether a failed call may be sent again: the server did not answer, or asked to retry.
fn retryable(status: &Status) -> bool {
    matches!(status.code(), Code::Unavailable | Code::Aborted)
}

/// Backoff before retry `attempt` (1, 2, …): 50 ms doubled each time, up to 2 s, with ±50%
/// jitter so that clients that failed together do not retry together.
fn backoff(attempt: u32) -> Duration {
    use rand::RngExt;
    let base = 50u64.saturating_mul(1 << attempt.min(6)).min(2_000);
    let jitter = rand::rng().random_range(base / 2..=base + base / 2);
    Duration::from_millis(jitter)
}

impl Client {
    pub fn builder(url: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            url: url.into(),
            operator_token: None,
            verifier_token: None,
            ca: None,
            identity: None,
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(5),
            retries: 3,
            idempotency: true,
            http2_window: None,
        }
    }

    /// This client, sending `id` as the `x-request-id` of its calls (ignored unless 1 to 128
    /// printable ASCII characters).
    pub fn with_request_id(&self, id: &str) -> Client {
        let mut client = self.clone();
        client.request_id = (!id.is_empty() && id.len() <= 128)
            .then(|| MetadataValue::try_from(id).ok())
            .flatten();
        client
    }

    fn request<T>(&self, message: T, token: Token, idempotency: Option<&str>) -> Request<T> {
        let mut request = Request::new(message);
        let metadata = request.metadata_mut();
        let token = match token {
            Token::Operator => &self.operator,
            Token::Verifier => &self.verifier,
        };
        if let Some(value) = token {
            metadata.insert("authorization", value.clone());
        }
        if let Some(id) = &self.request_id {
            metadata.insert("x-request-id", id.clone());
        }
        if let Some(key) = idempotency.and_then(|k| MetadataValue::try_from(k).ok()) {
            metadata.insert("idempotency-key", key);
        }
        request
    }

    /// Sends `message` until it is answered, retrying transient failures (see the module docs).
    async fn call<T, R, F, Fut>(
        &self,
        message: T,
        token: Token,
        idempotent_change: bool,
        send: F,
    ) -> Result<R, Status>
    where
        T: Clone,
        F: Fn(KeyAuthorityServiceClient<Channel>, Request<T>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<R>, Status>>,
    {
        // One key for every attempt of this call: the server answers a retry with the first
        // attempt's response. A change without one is never retried.
        let idempotency = (idempotent_change && self.idempotency)
            .then(|| format!("kc-{}", keyauth_key::unique_base62(24)));
        let retries = if idempotent_change && idempotency.is_none() {
            0
        } else {
            self.retries
        };
        let mut attempt = 0;
        loop {
            let request = self.request(message.clone(), token, idempotency.as_deref());
            match send(self.inner.clone(), request).await {
                Ok(response) => return Ok(response.into_inner()),
                Err(status) if retryable(&status) && attempt < retries => {
                    attempt += 1;
                    tokio::time::sleep(backoff(attempt)).await;
                }
                Err(status) => return Err(status),
            }
        }
    }

    pub async fn issue_key(&self, r: pb::IssueKeyRequest) -> Result<pb::IssueKeyResponse, Status> {
        self.call(r, Token::Operator, true, |mut c, r| async move {
            c.issue_key(r).await
        })
        .await
    }

    pub async fn roll_key(&self, r: pb::RollKeyRequest) -> Result<pb::RollKeyResponse, Status> {
        self.call(r, Token::Operator, true, |mut c, r| async move {
            c.roll_key(r).await
        })
        .await
    }

    pub async fn revoke_key(
        &self,
        r: pb::RevokeKeyRequest,
    ) -> Result<pb::RevokeKeyResponse, Status> {
        self.call(r, Token::Operator, true, |mut c, r| async move {
            c.revoke_key(r).await
        })
        .await
    }

    pub async fn get_key(&self, r: pb::GetKeyRequest) -> Result<pb::GetKeyResponse, Status> {
        self.call(r, Token::Operator, false, |mut c, r| async move {
            c.get_key(r).await
        })
        .await
    }

    pub async fn list_keys(&self, r: pb::ListKeysRequest) -> Result<pb::ListKeysResponse, Status> {
        self.call(r, Token::Operator, false, |mut c, r| async move {
            c.list_keys(r).await
        })
        .await
    }

    pub async fn list_key_events(
        &self,
        r: pb::ListKeyEventsRequest,
    ) -> Result<pb::ListKeyEventsResponse, Status> {
        self.call(r, Token::Operator, false, |mut c, r| async move {
            c.list_key_events(r).await
        })
        .await
    }

    pub async fn verify(&self, r: pb::VerifyRequest) -> Result<pb::VerifyResponse, Status> {
        self.call(r, Token::Verifier, false, |mut c, r| async move {
            c.verify(r).await
        })
        .await
    }

    pub async fn check_permission(
        &self,
        r: pb::CheckPermissionRequest,
    ) -> Result<pb::CheckPermissionResponse, Status> {
        self.call(r, Token::Verifier, false, |mut c, r| async move {
            c.check_permission(r).await
        })
        .await
    }

    /// Opens a WatchKeyChanges stream from now (`None`) or resuming after a revision (not
    /// retried: the caller resumes by revision).
    pub async fn watch_key_changes(
        &self,
        after_revision: Option<i64>,
    ) -> Result<tonic::Streaming<pb::WatchKeyChangesResponse>, Status> {
        let request = self.request(
            pb::WatchKeyChangesRequest { after_revision },
            Token::Verifier,
            None,
        );
        // A stream lives longer than a call: no per-call timeout.
        let mut inner = self.inner.clone();
        Ok(inner.watch_key_changes(request).await?.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_stays_bounded() {
        for attempt in 1..20 {
            let d = backoff(attempt);
            assert!(
                d >= Duration::from_millis(50) && d <= Duration::from_millis(3_000),
                "{d:?}"
            );
        }
        assert!(backoff(1) <= Duration::from_millis(150));
    }

    #[test]
    fn only_transient_failures_are_retried() {
        assert!(retryable(&Status::unavailable("x")));
        assert!(retryable(&Status::aborted("x")));
        assert!(!retryable(&Status::invalid_argument("x")));
        assert!(!retryable(&Status::deadline_exceeded("x")));
    }

    #[test]
    fn tokens_stay_out_of_debug() {
        let builder = Client::builder("http://127.0.0.1:1")
            .operator_token("op-secret")
            .verifier_token("v-secret");
        let shown = format!("{builder:?}");
        assert!(
            !shown.contains("op-secret") && !shown.contains("v-secret"),
            "{shown}"
        );
    }

    #[test]
    fn bad_urls_are_settings_errors() {
        assert!(matches!(
            Client::builder("ftp://x").connect_lazy(),
            Err(ConnectError::Setting(_))
        ));
    }
}
