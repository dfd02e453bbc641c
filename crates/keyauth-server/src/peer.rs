//! What a connection and the calls made on it share: the [`PeerInfo`] tonic puts in every
//! request's extensions. The accept loop (`connections`) makes one per connection and reads
//! whether a call has started on it; the per-call layer (`limits`) marks it
//! ([`note_request`]); the handlers read the peer's address ([`remote_addr`]). Both sides
//! depend on this module, and it on neither.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// What a connection shares with the calls made on it.
#[derive(Debug, Default)]
pub struct ConnState {
    requested: AtomicBool,
    /// The client certificate the TLS handshake verified, if any.
    client: std::sync::OnceLock<ClientCert>,
}

/// What names a client certificate (the leaf the handshake verified against the client CA):
/// its URI SANs (a SPIFFE id, say) and its subject, as x509-parser renders it (`CN=edge,
/// O=clinic`). The principals file's `certificate_uri` / `certificate_subject` match these.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientCert {
    pub uris: Vec<String>,
    pub subject: String,
}

impl ClientCert {
    /// The names of a DER certificate; `None` when it does not parse (the handshake has
    /// verified it, so only a certificate x509-parser cannot read).
    pub fn of(der: &[u8]) -> Option<Self> {
        use x509_parser::extensions::GeneralName;
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let uris = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|name| match name {
                        GeneralName::URI(uri) => Some((*uri).to_owned()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        Some(ClientCert {
            uris,
            subject: cert.subject().to_string(),
        })
    }

    /// The names of the first certificate of a verified chain.
    pub fn of_chain(chain: Option<&[rustls::pki_types::CertificateDer<'_>]>) -> Option<Self> {
        chain
            .and_then(|c| c.first())
            .and_then(|leaf| ClientCert::of(leaf))
    }
}

/// The connection info tonic puts in each request's extensions.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    pub remote: Option<SocketAddr>,
    state: Arc<ConnState>,
}

impl PeerInfo {
    /// The peer of a connection the accept loop tracks: `requested` tells it when the first
    /// call starts.
    pub(crate) fn tracked(remote: Option<SocketAddr>) -> Self {
        PeerInfo {
            remote,
            state: Arc::default(),
        }
    }

    /// The client certificate the connection's handshake verified, if any.
    pub fn client_cert(&self) -> Option<&ClientCert> {
        self.state.client.get()
    }

    /// Records the connection's verified client certificate (once, after the handshake).
    pub(crate) fn set_client_cert(&self, cert: ClientCert) {
        let _ = self.state.client.set(cert);
    }

    /// Whether a call has started on the connection.
    pub(crate) fn requested(&self) -> bool {
        self.state.requested.load(Ordering::Relaxed)
    }

    /// The peer of a connection the accept loop does not track (the HTTP listener's): its
    /// address for the audit trail, no deadlines.
    pub fn detached(remote: SocketAddr) -> Self {
        PeerInfo {
            remote: Some(remote),
            state: Arc::default(),
        }
    }
}

/// The peer info of the connection `extensions` come from (plaintext or TLS alike: TLS is
/// ours, inside `connections::Conn`).
pub(crate) fn peer_info(extensions: &tonic::codegen::http::Extensions) -> Option<&PeerInfo> {
    extensions.get::<PeerInfo>()
}

/// Marks the connection of a call as used: it is no longer closed for idleness.
pub fn note_request(extensions: &tonic::codegen::http::Extensions) {
    if let Some(peer) = peer_info(extensions)
        && !peer.state.requested.load(Ordering::Relaxed)
    {
        peer.state.requested.store(true, Ordering::Relaxed);
    }
}

/// The address of the peer a request (before tonic has made it a `Request`) came from.
pub fn remote_addr_in(extensions: &tonic::codegen::http::Extensions) -> Option<SocketAddr> {
    peer_info(extensions)
        .and_then(|peer| peer.remote)
        .or_else(|| {
            extensions
                .get::<tonic::transport::server::TcpConnectInfo>()
                .and_then(|info| info.remote_addr())
        })
}

/// The address of the peer that sent a call (tonic's `Request::remote_addr` knows only its
/// own connection types).
pub fn remote_addr<T>(request: &tonic::Request<T>) -> Option<SocketAddr> {
    peer_info(request.extensions())
        .and_then(|peer| peer.remote)
        .or_else(|| request.remote_addr())
}
