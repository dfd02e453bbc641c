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
fn peer_info(extensions: &tonic::codegen::http::Extensions) -> Option<&PeerInfo> {
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
