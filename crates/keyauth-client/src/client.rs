//! [`Client`]: one typed method for each RPC of `KeyAuthorityService` (IssueKey, RollKey,
//! RevokeKey, UpdateKey, Verify, CheckPermission, GetKey, ListKeys, ListKeyEvents,
//! ReportExposedKeys, WatchKeyChanges, GetCatalog, ListApplications), over plaintext or
//! TLS/mTLS.
//!
//! - Tokens: the operator token goes on operator RPCs, the verifier token on Verify,
//!   CheckPermission and WatchKeyChanges, and on GetCatalog the verifier token when one is set,
//!   else the operator token (`authorization: Bearer …`).
//! - Request ids: [`Client::with_request_id`] passes the caller's `x-request-id` on, so one id
//!   follows a request through every service.
//! - Timeouts: a connect timeout and a per-call timeout (both 5 s unless set), and optionally
//!   one for the TLS handshake ([`ClientBuilder::handshake_timeout`]).
//! - Safe retries: IssueKey, RollKey, RevokeKey and UpdateKey carry an `idempotency-key` (one
//!   per call, the same on every retry), so a retry after `UNAVAILABLE` or `ABORTED` replays the
//!   first call's answer instead of making a second key. Reads, and ReportExposedKeys (reporting
//!   a key again changes nothing), are retried the same way without one. Up to
//!   [`ClientBuilder::retries`] retries, with exponential backoff and jitter. WatchKeyChanges
//!   is never retried: its caller resumes by revision.
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
    /// The URL is not one keyauth can be called at: the URL, and why.
    Url { url: String, why: String },
    /// A setting is wrong (a token, a TLS file).
    Setting(String),
    /// The TLS files were read, but the transport cannot use them (e.g. no system root
    /// certificates, or a client key that does not go with its certificate).
    Tls(tonic::transport::Error),
    /// The server could not be reached.
    Unreachable(tonic::transport::Error),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Url { url, why } => write!(f, "keyauth URL {url:?}: {why}"),
            ConnectError::Setting(why) => f.write_str(why),
            ConnectError::Tls(e) => write!(f, "cannot use these TLS settings: {e}"),
            ConnectError::Unreachable(e) => write!(f, "cannot connect to keyauth: {e}"),
        }
    }
}

impl std::error::Error for ConnectError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConnectError::Tls(e) | ConnectError::Unreachable(e) => std::error::Error::source(e),
            ConnectError::Url { .. } | ConnectError::Setting(_) => None,
        }
    }
}

/// The `authorization` value that carries `token` (`Bearer TOKEN`), or `None` when the token
/// cannot be sent in a header (it holds a control character).
///
/// ```
/// use keyauth_client::client::bearer;
///
/// assert_eq!(bearer("s3cret").unwrap(), "Bearer s3cret");
/// assert!(bearer("line\nbreak").is_none());
/// assert!(bearer("nul\0").is_none());
/// ```
pub fn bearer(token: &str) -> Option<AsciiMetadataValue> {
    MetadataValue::try_from(format!("Bearer {token}")).ok()
}

/// Settings of a [`Client`].
#[derive(Clone)]
pub struct ClientBuilder {
    url: String,
    operator_token: Option<String>,
    verifier_token: Option<String>,
    ca: Option<PathBuf>,
    identity: Option<(PathBuf, PathBuf)>,
    connect_timeout: Duration,
    handshake_timeout: Option<Duration>,
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
    /// The operator token, for IssueKey, RollKey, RevokeKey, UpdateKey, GetKey, ListKeys,
    /// ListKeyEvents, ReportExposedKeys and ListApplications (and GetCatalog when no verifier
    /// token is set).
    pub fn operator_token(mut self, token: impl Into<String>) -> Self {
        self.operator_token = Some(token.into());
        self
    }

    /// The verifier token, for Verify, CheckPermission, WatchKeyChanges and GetCatalog (when
    /// the server requires one).
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

    /// Longest wait for the TLS handshake of a connection (default: no limit of its own; the
    /// connect timeout covers only reaching the server).
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = Some(timeout);
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

    /// Whether IssueKey, RollKey, RevokeKey and UpdateKey carry an `idempotency-key` (default:
    /// yes), which
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
        let bad = |why: String| ConnectError::Url {
            url: self.url.clone(),
            why,
        };
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
            let mut config = tls::client_config(self.ca.as_deref(), identity)
                .map_err(|e| ConnectError::Setting(e.to_string()))?;
            if let Some(timeout) = self.handshake_timeout {
                config = config.timeout(timeout);
            }
            endpoint = endpoint.tls_config(config).map_err(ConnectError::Tls)?;
        } else if !self.url.starts_with("http://") {
            return Err(bad("use http://HOST:PORT or https://HOST:PORT".into()));
        }
        Ok(endpoint)
    }

    fn finish(self, channel: Channel) -> Result<Client, ConnectError> {
        let header = |token: Option<&String>, what: &str| {
            token
                .map(|t| {
                    bearer(t).ok_or_else(|| {
                        ConnectError::Setting(format!("the {what} token is not valid ASCII"))
                    })
                })
                .transpose()
        };
        Ok(Client {
            inner: KeyAuthorityServiceClient::new(channel),
            operator: header(self.operator_token.as_ref(), "operator")?,
            verifier: header(self.verifier_token.as_ref(), "verifier")?,
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

#[derive(Clone, Copy, Debug)]
enum Token {
    Operator,
    Verifier,
    /// The verifier token when one is set, else the operator token (GetCatalog).
    VerifierOrOperator,
    /// The operator token when one is set, else the verifier token (GetPrincipal).
    OperatorOrVerifier,
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

/// One method of a unary RPC: `change` carries an idempotency key (and is retried only with
/// one), `read` is retried as it is; `$token` is the [`Token`] it sends.
macro_rules! unary {
    ($(#[$doc:meta])* $kind:ident $method:ident($request:ident) -> $response:ident, $token:ident) => {
        $(#[$doc])*
        pub async fn $method(&self, r: pb::$request) -> Result<pb::$response, Status> {
            let change = unary!(@change $kind);
            self.call(r, Token::$token, change, |mut c, r| async move { c.$method(r).await })
                .await
        }
    };
    (@change change) => { true };
    (@change read) => { false };
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
            handshake_timeout: None,
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

    /// The `authorization` value a call of `token` carries, if any.
    fn token(&self, token: Token) -> Option<&AsciiMetadataValue> {
        match token {
            Token::Operator => self.operator.as_ref(),
            Token::Verifier => self.verifier.as_ref(),
            Token::VerifierOrOperator => self.verifier.as_ref().or(self.operator.as_ref()),
            Token::OperatorOrVerifier => self.operator.as_ref().or(self.verifier.as_ref()),
        }
    }

    fn request<T>(&self, message: T, token: Token, idempotency: Option<&str>) -> Request<T> {
        let mut request = Request::new(message);
        let metadata = request.metadata_mut();
        if let Some(value) = self.token(token) {
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
            .then(|| format!("kc-{}", keyauth_contract::unique_base62(24)));
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

    unary! {
        /// IssueKey: a new key; its secret is in the answer, this once.
        change issue_key(IssueKeyRequest) -> IssueKeyResponse, Operator
    }
    unary! {
        /// RollKey: a new key in place of one, which keeps working for the grace period.
        change roll_key(RollKeyRequest) -> RollKeyResponse, Operator
    }
    unary! {
        /// RevokeKey: the key stops working at once.
        change revoke_key(RevokeKeyRequest) -> RevokeKeyResponse, Operator
    }
    unary! {
        /// UpdateKey: the fields named in `update_mask` (name, metadata, permissions, expiry).
        change update_key(UpdateKeyRequest) -> UpdateKeyResponse, Operator
    }
    unary! {
        /// GetKey: one key, never its secret.
        read get_key(GetKeyRequest) -> GetKeyResponse, Operator
    }
    unary! {
        /// ListKeys: a page of an application's keys, newest first.
        read list_keys(ListKeysRequest) -> ListKeysResponse, Operator
    }
    unary! {
        /// ListKeyEvents: a page of the audit trail, newest first.
        read list_key_events(ListKeyEventsRequest) -> ListKeyEventsResponse, Operator
    }
    unary! {
        /// ReportExposedKeys: the keys of this authority among them are revoked. Retried like a
        /// read: reporting a key again changes nothing (its outcome is then "already revoked").
        read report_exposed_keys(ReportExposedKeysRequest) -> ReportExposedKeysResponse, Operator
    }
    unary! {
        /// ListApplications: a page of the applications that have keys, with their key counts.
        read list_applications(ListApplicationsRequest) -> ListApplicationsResponse, Operator
    }
    unary! {
        /// GetKeyUsage: how a key or an application's keys were verified, per UTC hour or day.
        read get_key_usage(GetKeyUsageRequest) -> GetKeyUsageResponse, Operator
    }
    unary! {
        /// Verify: a denial is an answer (`valid: false`), not an error.
        read verify(VerifyRequest) -> VerifyResponse, Verifier
    }
    unary! {
        /// CheckPermission: may this key perform this action on this resource?
        read check_permission(CheckPermissionRequest) -> CheckPermissionResponse, Verifier
    }
    unary! {
        /// GetCatalog: the permission catalog in force (the verifier token when one is set,
        /// else the operator token).
        read get_catalog(GetCatalogRequest) -> GetCatalogResponse, VerifierOrOperator
    }
    unary! {
        /// GetPrincipal: who this client's credential names, with its roles and scope (the
        /// operator token when one is set, else the verifier token).
        read get_principal(GetPrincipalRequest) -> GetPrincipalResponse, OperatorOrVerifier
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
    fn bad_urls_are_url_errors() {
        let err = Client::builder("ftp://x").connect_lazy().unwrap_err();
        assert!(matches!(&err, ConnectError::Url { url, .. } if url == "ftp://x"));
        assert!(
            err.to_string().starts_with("keyauth URL \"ftp://x\": "),
            "{err}"
        );
    }

    #[tokio::test]
    async fn tokens_that_cannot_be_sent_are_settings_errors() {
        let err = Client::builder("http://127.0.0.1:1")
            .operator_token("line\nbreak")
            .connect_lazy()
            .unwrap_err();
        assert!(matches!(err, ConnectError::Setting(_)), "{err}");
    }

    /// Every `rpc` of the service in the proto, and the method of [`Client`] that calls it (a
    /// method that does not exist does not compile).
    #[test]
    fn every_rpc_has_a_method() {
        macro_rules! methods {
            ($($rpc:literal => $method:ident),* $(,)?) => {
                vec![$({
                    let _ = Client::$method;
                    $rpc
                }),*]
            };
        }
        let mut covered = methods![
            "IssueKey" => issue_key,
            "RollKey" => roll_key,
            "RevokeKey" => revoke_key,
            "UpdateKey" => update_key,
            "Verify" => verify,
            "CheckPermission" => check_permission,
            "GetKey" => get_key,
            "ListKeys" => list_keys,
            "ListKeyEvents" => list_key_events,
            "ReportExposedKeys" => report_exposed_keys,
            "WatchKeyChanges" => watch_key_changes,
            "GetCatalog" => get_catalog,
            "ListApplications" => list_applications,
            "GetPrincipal" => get_principal,
            "GetKeyUsage" => get_key_usage,
        ];
        let proto = include_str!("../../../proto/keyauth/v1/keyauth.proto");
        let mut rpcs: Vec<&str> = proto
            .lines()
            .filter_map(|line| line.trim().strip_prefix("rpc "))
            .filter_map(|rest| rest.split('(').next())
            .collect();
        rpcs.sort_unstable();
        covered.sort_unstable();
        assert_eq!(rpcs, covered);
    }

    #[tokio::test]
    async fn calls_carry_their_token_request_id_and_idempotency_key() {
        let both = Client::builder("http://127.0.0.1:1")
            .operator_token("op")
            .verifier_token("ver")
            .connect_lazy()
            .unwrap()
            .with_request_id("req-1");
        let header = |client: &Client, token, key| {
            let request = client.request((), token, key);
            let get = |name| {
                request
                    .metadata()
                    .get(name)
                    .map(|v| v.to_str().unwrap().to_owned())
            };
            [
                get("authorization"),
                get("x-request-id"),
                get("idempotency-key"),
            ]
        };
        let some = |s: &str| Some(s.to_owned());
        assert_eq!(
            header(&both, Token::Operator, Some("kc-1")),
            [some("Bearer op"), some("req-1"), some("kc-1")]
        );
        assert_eq!(
            header(&both, Token::Verifier, None),
            [some("Bearer ver"), some("req-1"), None]
        );
        assert_eq!(
            header(&both, Token::VerifierOrOperator, None)[0],
            some("Bearer ver")
        );
        // GetCatalog falls back on the operator token; no token, no header.
        let operator = Client::builder("http://127.0.0.1:1")
            .operator_token("op")
            .connect_lazy()
            .unwrap();
        assert_eq!(
            header(&operator, Token::VerifierOrOperator, None),
            [some("Bearer op"), None, None]
        );
        assert_eq!(header(&operator, Token::Verifier, None), [None, None, None]);
        // A request id that cannot be sent is dropped, not an error.
        let bad_id = operator.with_request_id("line\nbreak");
        assert_eq!(header(&bad_id, Token::Operator, None)[1], None);
    }
}
