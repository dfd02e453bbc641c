//! Where an issuer's JWKS comes from: a file, or one GET over HTTPS (the system's CA roots) or
//! plain HTTP to a loopback address. No redirect is followed and nothing a token names is
//! fetched. Bounded in time ([`FETCH_TIMEOUT`]) and size ([`MAX_JWKS_BYTES`]).
//!
//! hyper's client connection and tokio-rustls are already in the tree (tonic's channel and the
//! TLS listener): one connection per fetch, every 10 minutes at most, needs no pool.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::{Request, Uri, header};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// A fetch (connect, TLS, request, body) taking longer fails.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// A larger JWKS is refused.
pub const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// Where an issuer's JWKS comes from (`jwks_url` or `jwks_file`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JwksSource {
    /// https, or http to a loopback address.
    Url(String),
    /// Re-read on every fetch.
    File(PathBuf),
}

/// A checked `jwks_url`.
pub(super) struct JwksUrl {
    uri: Uri,
    host: String,
    port: u16,
    tls: bool,
}

/// `url` if it is https, or http to a loopback address (an IP address, or `localhost`, whose
/// address is checked again once connected).
pub(super) fn check_url(url: &str) -> Result<JwksUrl, String> {
    let uri: Uri = url.parse().map_err(|e| format!("jwks_url {url:?}: {e}"))?;
    let tls = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(format!("jwks_url {url:?}: use https")),
    };
    let host = uri
        .host()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| format!("jwks_url {url:?}: no host"))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if !tls && !loopback {
        return Err(format!(
            "jwks_url {url:?}: http only to a loopback address; use https"
        ));
    }
    Ok(JwksUrl {
        port: uri.port_u16().unwrap_or(if tls { 443 } else { 80 }),
        host,
        tls,
        uri,
    })
}

/// The JWKS's bytes.
pub(super) async fn fetch(source: &JwksSource) -> Result<Vec<u8>, String> {
    let fetching = async {
        match source {
            JwksSource::File(path) => read_file(path).await,
            JwksSource::Url(url) => get(&check_url(url)?).await,
        }
    };
    tokio::time::timeout(FETCH_TIMEOUT, fetching)
        .await
        .map_err(|_| format!("no JWKS within {FETCH_TIMEOUT:?}"))?
}

async fn read_file(path: &PathBuf) -> Result<Vec<u8>, String> {
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut body = Vec::new();
    file.take(MAX_JWKS_BYTES as u64 + 1)
        .read_to_end(&mut body)
        .await
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if body.len() > MAX_JWKS_BYTES {
        return Err(format!("{}: over {MAX_JWKS_BYTES} bytes", path.display()));
    }
    Ok(body)
}

async fn get(url: &JwksUrl) -> Result<Vec<u8>, String> {
    let tcp = TcpStream::connect((url.host.as_str(), url.port))
        .await
        .map_err(|e| format!("connect to {}:{}: {e}", url.host, url.port))?;
    let peer = tcp.peer_addr().map_err(|e| e.to_string())?;
    if !url.tls && !peer.ip().is_loopback() {
        return Err(format!("{} is not a loopback address", peer.ip()));
    }
    let authority = url
        .uri
        .authority()
        .map_or(url.host.as_str(), |a| a.as_str());
    let request = Request::get(url.uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(header::HOST, authority)
        .header(header::ACCEPT, "application/json")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    if !url.tls {
        return send(TokioIo::new(tcp), request).await;
    }
    let name = ServerName::try_from(url.host.clone()).map_err(|e| e.to_string())?;
    let tls = tls_connector()?
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS with {}: {e}", url.host))?;
    send(TokioIo::new(tls), request).await
}

async fn send<T>(io: T, request: Request<Empty<Bytes>>) -> Result<Vec<u8>, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(connection);
    let result = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("HTTP {}", response.status()));
        }
        let body = Limited::new(response.into_body(), MAX_JWKS_BYTES)
            .collect()
            .await
            .map_err(|e| format!("the JWKS body: {e}"))?;
        Ok(body.to_bytes().to_vec())
    }
    .await;
    driver.abort();
    result
}

/// A TLS client with the system's CA roots, made once.
fn tls_connector() -> Result<TlsConnector, String> {
    static CONNECTOR: OnceLock<Result<TlsConnector, String>> = OnceLock::new();
    CONNECTOR
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = rustls::RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(format!(
                    "no CA certificate found on this system ({} errors)",
                    found.errors.len()
                ));
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots)
                .with_no_client_auth();
            Ok(TlsConnector::from(Arc::new(config)))
        })
        .clone()
}
