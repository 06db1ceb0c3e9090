//! What a connection driver needs from its byte stream: TCP, TLS over TCP, and (through the
//! WebSocket adapter) either of them carrying WebSocket frames.

use std::future::Future;
use std::io;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use bytes::BytesMut;
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;

/// A stream a driver can serve MQTT over.
pub(crate) trait Transport: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Whether [`Transport::poll_read_ready`] tells when a read would find something: a driver
    /// then waits for readiness before making room to read into, and an idle connection holds
    /// no receive buffer. Otherwise it reads into reserved room and waits there.
    const READINESS: bool;

    /// Resolves when a read would find data, the end of the stream or an error.
    fn poll_read_ready(&self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// Reads what is there without waiting; `WouldBlock` if nothing is.
    fn try_read_buf(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        let mut cx = Context::from_waker(Waker::noop());
        match pin!(self.read_buf(buf)).poll(&mut cx) {
            Poll::Ready(result) => result,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    /// The client's certificate chain, leaf first, when TLS verified one.
    fn peer_certificates(&self) -> Option<&[CertificateDer<'static>]> {
        None
    }

    /// Whether input (or the end of the stream) has arrived that no read has returned yet,
    /// asking the kernel itself: the runtime's readiness may not have seen it yet.
    fn input_waiting(&self) -> bool;
}

/// Whether the kernel holds unread bytes or the peer's close for `stream`.
fn socket_has_input(stream: &TcpStream) -> bool {
    let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 1];
    // The socket is non-blocking: an empty receive queue answers `WouldBlock`; an error is
    // input too (the next read reports it).
    !matches!(
        socket2::SockRef::from(stream).peek(&mut probe),
        Err(err) if err.kind() == io::ErrorKind::WouldBlock
    )
}

impl Transport for TcpStream {
    const READINESS: bool = true;

    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        TcpStream::poll_read_ready(self, cx)
    }

    fn try_read_buf(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        TcpStream::try_read_buf(self, buf)
    }

    fn input_waiting(&self) -> bool {
        socket_has_input(self)
    }
}

/// Boxed: a rustls connection is large, and the driver's future holds the stream inline.
pub(crate) type TlsStream = Box<tokio_rustls::server::TlsStream<TcpStream>>;

impl Transport for TlsStream {
    const READINESS: bool = true;

    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let (tcp, tls) = self.get_ref();
        if !tls.wants_read() {
            // Decrypted bytes (or the peer's close) are waiting: no need for the socket.
            return Poll::Ready(Ok(()));
        }
        tcp.poll_read_ready(cx)
    }

    fn peer_certificates(&self) -> Option<&[CertificateDer<'static>]> {
        self.get_ref().1.peer_certificates()
    }

    fn input_waiting(&self) -> bool {
        let (tcp, tls) = self.get_ref();
        !tls.wants_read() || socket_has_input(tcp)
    }
}

impl<S: Transport> Transport for crate::ws::WsStream<S> {
    // Frames are decoded inside the adapter: it is read with room reserved.
    const READINESS: bool = false;

    fn peer_certificates(&self) -> Option<&[CertificateDer<'static>]> {
        self.get_ref().peer_certificates()
    }

    fn input_waiting(&self) -> bool {
        self.has_unread() || self.get_ref().input_waiting()
    }
}
