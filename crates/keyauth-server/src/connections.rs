//! The accept loop: what bounds the connections, whatever the clients do.
//!
//! - at most `max_connections` are open at once; one accepted past it is closed at once;
//! - an accept error for want of resources (`EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM`: the fd
//!   limit reached) pauses accepting for [`ACCEPT_BACKOFF`] instead of retrying in a loop that
//!   spins a core (tonic's own accept loop does);
//! - a connection must start its first call within `first_request_timeout` (TLS handshake
//!   included), or it is closed: idle sockets hold nothing for long;
//! - a connection older than `max_connection_age` is told to go away (HTTP/2 GOAWAY, by
//!   tonic: its calls finish, new ones go to a new connection) and closed outright
//!   `max_connection_age_grace` later (long streams such as WatchKeyChanges included).
//!
//! Each connection is a [`Conn`]: the TCP stream (or, with TLS, the TLS stream over it), its
//! slot among the connections, and the two deadlines, checked whenever the connection reads or
//! writes. A call marks its connection as used through the [`PeerInfo`] tonic puts in every
//! request's extensions ([`note_request`]), which also gives the peer's address
//! ([`remote_addr`]); both live in [`crate::peer`], which the per-call layer shares.
//!
//! With TLS, keyauth terminates it here rather than in tonic: each accepted connection takes
//! the configuration in force at that moment from [`tls::Reloading`] (so a reloaded
//! certificate serves new connections while open ones keep theirs), and its handshake runs
//! on the connection's own task, when it is first read or written, under the first-request
//! deadline. A failed handshake ends that connection only.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tokio_rustls::TlsAcceptor;
use tokio_stream::Stream;
use tonic::transport::server::Connected;

use crate::limits::Limits;
use crate::peer::ClientCert;
pub use crate::peer::{PeerInfo, note_request, remote_addr};
use crate::tls;

/// How long accepting pauses after an accept error for want of resources.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// At most one warning about accept errors per this long.
const WARN_EVERY: Duration = Duration::from_secs(5);

/// The connections of a listener, as tonic's `serve_with_incoming` wants them.
pub struct Incoming {
    listener: TcpListener,
    slots: Arc<Semaphore>,
    limits: Limits,
    /// TLS, when the port speaks it.
    tls: Option<Arc<tls::Reloading>>,
    backoff: Option<Pin<Box<Sleep>>>,
    last_warning: Option<Instant>,
}

impl Incoming {
    /// The connections of `listener`, TLS with the configuration in force at each accept when
    /// `tls` is set.
    pub fn new(listener: TcpListener, limits: Limits, tls: Option<Arc<tls::Reloading>>) -> Self {
        Incoming {
            listener,
            slots: Arc::new(Semaphore::new(limits.max_connections.max(1))),
            limits,
            tls,
            backoff: None,
            last_warning: None,
        }
    }

    /// Whether an accept error means the process (or system) is out of descriptors or memory:
    /// retrying at once would fail again.
    fn is_resource_error(e: &io::Error) -> bool {
        // EMFILE 24, ENFILE 23, ENOBUFS 105, ENOMEM 12 on Linux.
        matches!(e.raw_os_error(), Some(23 | 24 | 105 | 12))
    }

    fn warn(&mut self, what: &str, e: &io::Error) {
        let now = Instant::now();
        if self
            .last_warning
            .is_none_or(|last| now.duration_since(last) >= WARN_EVERY)
        {
            self.last_warning = Some(now);
            tracing::warn!(error = %e, backoff = ?ACCEPT_BACKOFF, "{what}");
        }
    }
}

impl Stream for Incoming {
    type Item = io::Result<Conn>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(backoff) = &mut this.backoff {
                ready!(backoff.as_mut().poll(cx));
                this.backoff = None;
            }
            match ready!(this.listener.poll_accept(cx)) {
                Ok((stream, remote)) => {
                    let Ok(slot) = this.slots.clone().try_acquire_owned() else {
                        // Dropped: closed at once, before TLS or HTTP/2 cost anything.
                        metrics::counter!(crate::metrics::CONNECTIONS_REFUSED).increment(1);
                        tracing::debug!(%remote, limit = this.limits.max_connections, "connection refused: the connection limit is reached");
                        continue;
                    };
                    // Without TCP_NODELAY a small answer waits for the peer's delayed ACK
                    // (~40 ms at p999 in keyauth-bench).
                    let _ = stream.set_nodelay(true);
                    let tls = this.tls.as_ref().map(|tls| tls.grpc());
                    return Poll::Ready(Some(Ok(Conn::new(stream, slot, &this.limits, tls))));
                }
                Err(e) if Self::is_resource_error(&e) => {
                    this.warn(
                        "accepting connections failed for want of resources (file descriptors?); pausing",
                        &e,
                    );
                    this.backoff = Some(Box::pin(tokio::time::sleep(ACCEPT_BACKOFF)));
                }
                // The peer gave up before the accept (ECONNABORTED) and the like: next one.
                Err(e) => tracing::debug!(error = %e, "accept failed"),
            }
        }
    }
}

/// An accepted connection: the stream, its slot among the connections (freed on drop) and its
/// deadlines.
pub struct Conn {
    io: Io,
    _slot: OwnedSemaphorePermit,
    info: PeerInfo,
    /// Until the first call starts.
    first_request: Option<Pin<Box<Sleep>>>,
    /// The end of the grace past the maximum age.
    closing: Option<Pin<Box<Sleep>>>,
}

/// The bytes of a connection: plaintext TCP, or TLS over it, its handshake first.
enum Io {
    Plain(TcpStream),
    /// Handshaking, driven by the first reads and writes.
    Handshaking(Box<tokio_rustls::Accept<TcpStream>>),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// The handshake failed: nothing more to read or write.
    Failed,
}

impl Conn {
    fn new(
        stream: TcpStream,
        slot: OwnedSemaphorePermit,
        limits: &Limits,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Self {
        let info = PeerInfo::tracked(stream.peer_addr().ok());
        let hard_age = limits
            .max_connection_age
            .saturating_add(limits.max_connection_age_grace);
        let io = match tls {
            None => Io::Plain(stream),
            Some(config) => Io::Handshaking(Box::new(TlsAcceptor::from(config).accept(stream))),
        };
        Conn {
            io,
            _slot: slot,
            info,
            first_request: Some(Box::pin(tokio::time::sleep(limits.first_request_timeout))),
            closing: (!limits.max_connection_age.is_zero())
                .then(|| Box::pin(tokio::time::sleep(hard_age))),
        }
    }

    /// An error once a deadline has passed; registers for its wake-up otherwise.
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if let Some(first) = &mut self.first_request {
            if self.info.requested() {
                self.first_request = None;
            } else if first.as_mut().poll(cx).is_ready() {
                tracing::debug!(remote = ?self.info.remote, "connection closed: no call within the first-request timeout");
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no call within the first-request timeout",
                ));
            }
        }
        if let Some(closing) = &mut self.closing
            && closing.as_mut().poll(cx).is_ready()
        {
            tracing::debug!(remote = ?self.info.remote, "connection closed: past its maximum age and grace");
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "past the maximum connection age and its grace",
            ));
        }
        Ok(())
    }

    /// The stream to read and write, once the TLS handshake (if any) is done: drives it.
    fn ready_io(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Ready<'_>>> {
        if let Io::Handshaking(accept) = &mut self.io {
            match ready!(Pin::new(&mut **accept).poll(cx)) {
                Ok(stream) => {
                    if let Some(cert) = ClientCert::of_chain(stream.get_ref().1.peer_certificates())
                    {
                        self.info.set_client_cert(cert);
                    }
                    self.io = Io::Tls(Box::new(stream));
                }
                Err(e) => {
                    tracing::debug!(remote = ?self.info.remote, error = %e, "TLS handshake failed");
                    self.io = Io::Failed;
                    return Poll::Ready(Err(e));
                }
            }
        }
        Poll::Ready(match &mut self.io {
            Io::Plain(stream) => Ok(Ready::Plain(stream)),
            Io::Tls(stream) => Ok(Ready::Tls(stream)),
            Io::Handshaking(_) | Io::Failed => Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "the TLS handshake failed",
            )),
        })
    }
}

/// A stream ready for I/O.
enum Ready<'a> {
    Plain(&'a mut TcpStream),
    Tls(&'a mut tokio_rustls::server::TlsStream<TcpStream>),
}

impl Ready<'_> {
    fn read(self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self {
            Ready::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Ready::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }

    fn write(self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self {
            Ready::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Ready::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn write_vectored(
        self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self {
            Ready::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Ready::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn flush(self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Ready::Plain(s) => Pin::new(s).poll_flush(cx),
            Ready::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }
}

impl Connected for Conn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check(cx)?;
        ready!(this.ready_io(cx))?.read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check(cx)?;
        ready!(this.ready_io(cx))?.write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check(cx)?;
        ready!(this.ready_io(cx))?.write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        // Asked once, before any handshake is done: TCP and tokio-rustls's TLS streams both
        // write vectored.
        match &self.io {
            Io::Plain(stream) => stream.is_write_vectored(),
            Io::Handshaking(_) | Io::Tls(_) | Io::Failed => true,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.get_mut().ready_io(cx))?.flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            // TLS: close_notify, then the TCP shutdown.
            Io::Tls(stream) => Pin::new(&mut **stream).poll_shutdown(cx),
            // Mid-handshake: nothing of the session to close; the TCP half only.
            Io::Handshaking(accept) => match accept.get_mut() {
                Some(stream) => Pin::new(stream).poll_shutdown(cx),
                None => Poll::Ready(Ok(())),
            },
            Io::Failed => Poll::Ready(Ok(())),
        }
    }
}
