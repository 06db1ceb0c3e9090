//! MQTT over WebSocket (MQTT 5.0 and 3.1.1, §6): the server side of the opening handshake, and
//! [`WsStream`], which turns the binary messages of a WebSocket connection back into the byte
//! stream a connection driver decodes MQTT packets from.
//!
//! `tokio-tungstenite` does the handshake. Its `WebSocketStream` offers messages only through
//! the `futures` `Stream` and `Sink` traits, which this crate does not depend on; so once the
//! handshake is done the socket is taken back out of it and driven through tungstenite's
//! synchronous `WebSocket`, over [`SyncIo`], which turns `Pending` into `WouldBlock`. Nothing
//! can be lost in that hand-over: the server handshake reads nothing past the request (bytes
//! sent after it in the same read fail the handshake), and the new `WebSocket` has read nothing
//! yet.

use std::error::Error as StdError;
use std::fmt;
use std::io::{self, Read, Write};
use std::mem;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use crate::sync::lock;
use std::task::{Context, Poll, Wake, Waker};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::http::header::{
    CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, HeaderValue, ORIGIN,
    SEC_WEBSOCKET_PROTOCOL,
};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocket, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as TungError, Message, Utf8Bytes};

/// The subprotocols this server speaks, best first. MQTT 5.0 and 3.1.1 name `mqtt`
/// ([MQTT-6.0.0-3], [MQTT-6.0.0-4]); `mqttv3.1` is what MQTT 3.1 clients offer.
const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// Room tungstenite keeps for reading frames: the driver's read chunk. Its default (128 KiB,
/// allocated up front) would cost every idle connection that much.
const READ_BUFFER: usize = 4 * 1024;

/// Messages without payload (pings, pongs, empty binary messages) handled in one `poll_read`
/// before it yields, so that a peer sending nothing else cannot keep the task busy.
const MESSAGES_PER_POLL: usize = 32;

/// Longest excerpt of a request header or path kept in a [`WsError`] (for the log).
const EXCERPT: usize = 128;

/// How a WebSocket listener accepts connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsOptions {
    /// The request path MQTT is served on; the query string is ignored. A request for any
    /// other path is answered with HTTP 404.
    pub path: String,
    /// Web origins allowed to connect, compared ASCII case-insensitively with the request's
    /// `Origin` header (e.g. `https://dashboard.example.com`). Empty: any `Origin`, or none.
    /// Otherwise a request must carry exactly one `Origin`, and a listed one, or it is
    /// answered with HTTP 403: this keeps scripts on other sites from using a browser's
    /// network position and cookies to reach the broker; clients outside browsers send no
    /// `Origin` and are refused too.
    pub allowed_origins: Vec<String>,
    /// The largest frame payload accepted, in bytes; a larger frame fails the connection as
    /// soon as its header is read.
    pub max_frame_size: usize,
    /// The largest message accepted (all its frames together), in bytes. One message may hold
    /// several MQTT packets, so this bounds a batch, not a packet: the packet limits are the
    /// decoder's.
    pub max_message_size: usize,
}

impl Default for WsOptions {
    fn default() -> Self {
        Self {
            path: "/mqtt".to_owned(),
            allowed_origins: Vec::new(),
            max_frame_size: 1_048_576,
            max_message_size: 1_048_576,
        }
    }
}

/// Why a WebSocket connection could not be accepted.
#[derive(Debug)]
pub(crate) enum WsError {
    /// The request was for another path; answered with HTTP 404.
    WrongPath {
        /// The requested path (an excerpt).
        path: String,
        /// The configured path.
        expected: String,
    },
    /// The client offered no subprotocol this server speaks; answered with HTTP 400.
    NoMqttSubprotocol {
        /// What the client offered (an excerpt; empty when it offered nothing).
        offered: String,
    },
    /// The request's `Origin` is not allowed, or is missing or repeated while only listed
    /// origins may connect; answered with HTTP 403.
    OriginNotAllowed {
        /// The first `Origin` sent (an excerpt), if any.
        origin: Option<String>,
    },
    /// A well-formed HTTP request that asks for no WebSocket upgrade (a browser opening the
    /// listener's address as a page, a health check); answered with HTTP 426 Upgrade Required
    /// and a short text saying what is served here.
    NotAnUpgrade(TungError),
    /// The handshake failed: an I/O error, a malformed or oversized HTTP request, or a request
    /// that is not a valid WebSocket upgrade.
    Handshake(TungError),
}

impl WsError {
    /// The HTTP status the refusal is answered with.
    fn status(&self) -> StatusCode {
        match self {
            Self::WrongPath { .. } => StatusCode::NOT_FOUND,
            Self::OriginNotAllowed { .. } => StatusCode::FORBIDDEN,
            Self::NoMqttSubprotocol { .. } | Self::Handshake(_) => StatusCode::BAD_REQUEST,
            Self::NotAnUpgrade(_) => StatusCode::UPGRADE_REQUIRED,
        }
    }

    /// The body of the HTTP refusal. Fixed texts: the peer's own input is not echoed back.
    fn body(&self) -> &'static str {
        match self {
            Self::WrongPath { .. } => "not found\n",
            Self::NoMqttSubprotocol { .. } => {
                "MQTT over WebSocket needs the \"mqtt\" subprotocol (Sec-WebSocket-Protocol)\n"
            }
            Self::OriginNotAllowed { .. } => "origin not allowed\n",
            Self::Handshake(_) => "bad request\n",
            Self::NotAnUpgrade(_) => {
                "This is an MQTT over WebSocket endpoint: connect with an MQTT client over a \
                 WebSocket (subprotocol \"mqtt\"), not as a web page.\n"
            }
        }
    }
}

impl fmt::Display for WsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::WrongPath { path, expected } => write!(
                f,
                "WebSocket upgrade refused (HTTP 404): path {path:?} requested, MQTT is served \
                 on {expected:?}"
            ),
            Self::NoMqttSubprotocol { offered } if offered.is_empty() => f.write_str(
                "WebSocket upgrade refused (HTTP 400): no subprotocol offered; \
                 [MQTT-6.0.0-3] the client must offer \"mqtt\"",
            ),
            Self::NoMqttSubprotocol { offered } => write!(
                f,
                "WebSocket upgrade refused (HTTP 400): subprotocols {offered:?} offered; \
                 [MQTT-6.0.0-3] the client must offer \"mqtt\" (or \"mqttv3.1\")"
            ),
            Self::OriginNotAllowed { origin: None } => f.write_str(
                "WebSocket upgrade refused (HTTP 403): no Origin header, and only listed \
                 origins may connect",
            ),
            Self::OriginNotAllowed {
                origin: Some(origin),
            } => write!(
                f,
                "WebSocket upgrade refused (HTTP 403): origin {origin:?} is not allowed"
            ),
            Self::Handshake(err) => write!(f, "WebSocket handshake failed: {err}"),
            Self::NotAnUpgrade(err) => write!(
                f,
                "HTTP request without a WebSocket upgrade, answered with HTTP 426: {err}"
            ),
        }
    }
}

impl StdError for WsError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            Self::Handshake(err) | Self::NotAnUpgrade(err) => Some(err),
            _ => None,
        }
    }
}

/// Performs the server side of the WebSocket opening handshake on `stream` and returns the
/// connection as a byte stream.
///
/// The request must be for `options.path` (HTTP 404 otherwise), come from an allowed origin
/// when `options.allowed_origins` is not empty (HTTP 403), and offer the `mqtt` or `mqttv3.1`
/// subprotocol (HTTP 400); the chosen one (`mqtt` if both are offered) is echoed in the
/// response, as RFC 6455 and [MQTT-6.0.0-4] require. Some brokers accept a client that offers
/// no subprotocol; this one is strict, as [MQTT-6.0.0-3] asks of clients, so a misconfigured
/// client fails at once rather than later in some proxy. A refused request gets its HTTP
/// answer before this returns the error.
///
/// A well-formed request that asks for no upgrade at all (a browser visiting the address)
/// gets HTTP 426 Upgrade Required with a short text, rather than an empty reply.
///
/// There is no time limit here: the caller bounds the handshake (the CONNECT timeout counts
/// from the TCP accept). tungstenite bounds its size (64 KiB of request, 124 headers).
pub(crate) async fn accept<S>(mut stream: S, options: &WsOptions) -> Result<WsStream<S>, WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let config = websocket_config(options);
    let mut refusal = None;
    #[allow(
        clippy::result_large_err,
        reason = "the signature of tungstenite's handshake callback"
    )]
    let callback = |request: &Request, mut response: Response| match check_request(request, options)
    {
        Ok(subprotocol) => {
            response.headers_mut().insert(
                SEC_WEBSOCKET_PROTOCOL,
                HeaderValue::from_static(subprotocol),
            );
            Ok(response)
        }
        Err(refused) => {
            let answer = refusal_response(&refused);
            refusal = Some(refused);
            Err(answer)
        }
    };
    // The handshake borrows the stream, so that a request tungstenite refuses without an
    // answer can still be answered here. It reads nothing past the request (see the module
    // documentation), so the stream is whole again once the borrow ends.
    let handshake =
        tokio_tungstenite::accept_hdr_async_with_config(&mut stream, callback, Some(config))
            .await
            .map(drop);
    if let Some(refused) = refusal {
        return Err(refused);
    }
    match handshake {
        Ok(()) => Ok(WsStream::new(stream, config)),
        Err(err) if asks_no_upgrade(&err) => {
            let refused = WsError::NotAnUpgrade(err);
            answer_plainly(&mut stream, &refused).await;
            Err(refused)
        }
        Err(err) => Err(WsError::Handshake(err)),
    }
}

/// Whether tungstenite refused a complete, well-formed HTTP request because it does not ask
/// for a WebSocket upgrade (as opposed to a broken one, or an I/O error).
fn asks_no_upgrade(err: &TungError) -> bool {
    matches!(
        err,
        TungError::Protocol(
            ProtocolError::MissingConnectionUpgradeHeader
                | ProtocolError::MissingUpgradeWebSocketHeader
        )
    )
}

/// Writes `refused`'s HTTP answer and closes the writing side; errors are moot (the connection
/// ends either way).
async fn answer_plainly<S: AsyncWrite + Unpin>(stream: &mut S, refused: &WsError) {
    use tokio::io::AsyncWriteExt;
    let body = refused.body();
    let status = refused.status();
    let head = format!(
        "HTTP/1.1 {} {}\r\nUpgrade: websocket\r\nConnection: Upgrade, close\r\n\
         Content-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(body.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// The tungstenite configuration for `options`.
fn websocket_config(options: &WsOptions) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        // Every message goes to the socket as it is written: the driver already batches.
        .write_buffer_size(0)
        .max_frame_size(Some(options.max_frame_size))
        .max_message_size(Some(options.max_message_size))
}

/// Decides on an upgrade request: the subprotocol to answer with, or why it is refused.
/// The path is checked first, then the origin (so that a page on another site learns nothing
/// more), then the subprotocol.
fn check_request(request: &Request, options: &WsOptions) -> Result<&'static str, WsError> {
    let path = request.uri().path();
    if path != options.path {
        return Err(WsError::WrongPath {
            path: excerpt(path.as_bytes()),
            expected: options.path.clone(),
        });
    }
    check_origin(request.headers(), &options.allowed_origins)?;
    choose_subprotocol(request.headers()).ok_or_else(|| WsError::NoMqttSubprotocol {
        offered: excerpt(
            request
                .headers()
                .get_all(SEC_WEBSOCKET_PROTOCOL)
                .iter()
                .map(HeaderValue::as_bytes)
                .collect::<Vec<_>>()
                .join(&b", "[..])
                .as_slice(),
        ),
    })
}

/// Checks the `Origin` header against the allowed list (empty: anything goes).
fn check_origin(headers: &HeaderMap, allowed: &[String]) -> Result<(), WsError> {
    if allowed.is_empty() {
        return Ok(());
    }
    let mut values = headers.get_all(ORIGIN).iter();
    let origin = values.next();
    let single = values.next().is_none();
    match origin {
        Some(origin)
            if single
                && allowed
                    .iter()
                    .any(|ok| ok.as_bytes().eq_ignore_ascii_case(origin.as_bytes())) =>
        {
            Ok(())
        }
        _ => Err(WsError::OriginNotAllowed {
            origin: origin.map(|origin| excerpt(origin.as_bytes())),
        }),
    }
}

/// The best subprotocol this server speaks among those offered, in any number of
/// `Sec-WebSocket-Protocol` headers of comma-separated names. Names compare exactly: the
/// client compares the echoed name with what it offered.
fn choose_subprotocol(headers: &HeaderMap) -> Option<&'static str> {
    let offered = || {
        headers
            .get_all(SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(|name| name.trim_matches([' ', '\t']))
    };
    SUBPROTOCOLS
        .into_iter()
        .find(|wanted| offered().any(|name| name == *wanted))
}

/// The HTTP answer to a refused upgrade request.
fn refusal_response(refused: &WsError) -> ErrorResponse {
    let body = refused.body();
    let mut response = ErrorResponse::new(Some(body.to_owned()));
    *response.status_mut() = refused.status();
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    headers.insert(CONNECTION, HeaderValue::from_static("close"));
    response
}

/// At most [`EXCERPT`] bytes of peer input, as text.
fn excerpt(bytes: &[u8]) -> String {
    let mut text = String::from_utf8_lossy(bytes.get(..EXCERPT).unwrap_or(bytes)).into_owned();
    if bytes.len() > EXCERPT {
        text.push('…');
    }
    text
}

/// Where the reading side of a [`WsStream`] stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadState {
    Open,
    /// The peer closed (a close frame, or the end of the TCP stream): reads return 0.
    Closed,
    /// A read failed (a text message, an oversized message, a protocol violation, an I/O
    /// error): the connection is unusable and later reads fail too.
    Failed,
}

/// An accepted MQTT-over-WebSocket connection, read and written as a byte stream.
///
/// Reads return the payloads of the peer's binary messages, one after the other: MQTT packets
/// are not aligned on messages ([MQTT-6.0.0-2]), and the decoder above sees only bytes. The
/// unread rest of a message is kept for the next read; at most one message is held. A ping is
/// answered by tungstenite, which queues the pong; the read then carries on reading, and that
/// next read of the WebSocket writes the pong out (or, when the socket is full, retries once it
/// drains), so a pong never waits for the broker to write. A text message fails the read with
/// `InvalidData` ([MQTT-6.0.0-1]: binary only, and the connection must be closed), after a
/// close frame 1003 is offered to the peer; a message over the size limits fails it too (close
/// 1009). A close frame from the peer, answered, reads as the end of the stream, and so does
/// the end of the TCP stream without one.
///
/// Each `poll_write` sends the bytes given as one binary message (the driver writes whole
/// buffers of complete packets). When the socket does not take all of a message, the rest
/// stays in tungstenite's buffer and the next write waits until it has gone out; a read or a
/// flush also pushes it on. `poll_flush` flushes the socket, and `poll_shutdown` sends a
/// close frame (1000, normal) and shuts the socket's writing side down.
///
/// Reader and writer may be different tasks (for instance through `tokio::io::split`): the
/// socket wakes both, since a read may have to write (a pong, a close) and so may wait for
/// the socket to be writable.
pub(crate) struct WsStream<S> {
    ws: WebSocket<SyncIo<S>>,
    wakers: Arc<TaskWakers>,
    /// The unread rest of the last binary message.
    unread: Bytes,
    read: ReadState,
    /// A message written was not all taken by the socket; the rest is in tungstenite's buffer.
    unflushed: bool,
}

impl<S> WsStream<S> {
    fn new(stream: S, config: WebSocketConfig) -> Self {
        let wakers = Arc::new(TaskWakers::default());
        let io = SyncIo {
            inner: stream,
            waker: Waker::from(Arc::clone(&wakers)),
        };
        Self {
            ws: WebSocket::from_raw_socket(io, Role::Server, Some(config)),
            wakers,
            unread: Bytes::new(),
            read: ReadState::Open,
            unflushed: false,
        }
    }

    /// The underlying stream (for its peer address, or a TLS stream's client certificates).
    pub(crate) fn get_ref(&self) -> &S {
        &self.ws.get_ref().inner
    }

    /// Whether part of a received message has not been read yet.
    pub(crate) fn has_unread(&self) -> bool {
        !self.unread.is_empty()
    }

    /// Moves as much of the unread message as fits into `buf`.
    fn take_unread(&mut self, buf: &mut ReadBuf<'_>) {
        let n = buf.remaining().min(self.unread.len());
        if n == self.unread.len() {
            // Taken whole, so that the message's memory is released now.
            buf.put_slice(&mem::take(&mut self.unread));
        } else {
            buf.put_slice(&self.unread.split_to(n));
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsStream<S> {
    /// Marks the reading side failed and offers the peer a close frame saying why (RFC 6455
    /// §7.1.7 allows one before the connection is dropped); whatever the socket does not take
    /// now goes with a later flush or shutdown, or not at all.
    fn fail(&mut self, code: CloseCode, reason: &'static str, err: io::Error) -> io::Error {
        self.read = ReadState::Failed;
        let _ = self.ws.close(Some(CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        }));
        err
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if !this.unread.is_empty() {
            this.take_unread(buf);
            return Poll::Ready(Ok(()));
        }
        match this.read {
            ReadState::Open => {}
            ReadState::Closed => return Poll::Ready(Ok(())),
            ReadState::Failed => {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "the WebSocket connection has already failed",
                )));
            }
        }
        this.wakers.register_read(cx.waker());
        if this.unflushed {
            // The driver may now wait only for input: push the rest of its last write on.
            match this.ws.flush() {
                Ok(()) | Err(TungError::ConnectionClosed) => this.unflushed = false,
                Err(TungError::Io(err)) if err.kind() == io::ErrorKind::WouldBlock => {}
                Err(err) => {
                    this.read = ReadState::Failed;
                    return Poll::Ready(Err(io_error(err)));
                }
            }
        }
        for _ in 0..MESSAGES_PER_POLL {
            match this.ws.read() {
                Ok(Message::Binary(data)) => {
                    if !data.is_empty() {
                        this.unread = data;
                        this.take_unread(buf);
                        return Poll::Ready(Ok(()));
                    }
                }
                Ok(Message::Text(_)) => {
                    return Poll::Ready(Err(this.fail(
                        CloseCode::Unsupported,
                        "MQTT needs binary messages",
                        io::Error::new(
                            io::ErrorKind::InvalidData,
                            "[MQTT-6.0.0-1] received a WebSocket text message: MQTT control \
                             packets must be sent in binary messages",
                        ),
                    )));
                }
                // tungstenite has queued the pong; the next `read` writes it out.
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => {}
                Ok(Message::Close(_)) => {
                    this.read = ReadState::Closed;
                    // Sends the queued answering close frame now, if the socket takes it: the
                    // driver stops reading at the end of the stream. tungstenite then marks
                    // the connection terminated (ConnectionClosed), as a server should.
                    let _ = this.ws.flush();
                    return Poll::Ready(Ok(()));
                }
                Err(
                    TungError::ConnectionClosed
                    | TungError::AlreadyClosed
                    | TungError::Protocol(ProtocolError::ResetWithoutClosingHandshake),
                ) => {
                    // The last case: the TCP stream ended without a close frame, which over
                    // plain TCP is the end of the stream too.
                    this.read = ReadState::Closed;
                    return Poll::Ready(Ok(()));
                }
                Err(TungError::Io(err)) if err.kind() == io::ErrorKind::WouldBlock => {
                    return Poll::Pending;
                }
                Err(TungError::Io(err)) => {
                    this.read = ReadState::Failed;
                    return Poll::Ready(Err(err));
                }
                Err(err @ TungError::Capacity(_)) => {
                    return Poll::Ready(Err(this.fail(
                        CloseCode::Size,
                        "message too large",
                        io_error(err),
                    )));
                }
                Err(err) => {
                    return Poll::Ready(Err(this.fail(
                        CloseCode::Protocol,
                        "protocol error",
                        io_error(err),
                    )));
                }
            }
        }
        // Only control frames or empty messages so far: let other tasks run, then go on.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        this.wakers.register_write(cx.waker());
        if this.unflushed {
            // At most one message is held: the last one must be out before another is taken.
            match this.ws.flush() {
                Ok(()) => this.unflushed = false,
                Err(TungError::Io(err)) if err.kind() == io::ErrorKind::WouldBlock => {
                    return Poll::Pending;
                }
                Err(err) => return Poll::Ready(Err(io_error(err))),
            }
        }
        match this.ws.write(Message::Binary(Bytes::copy_from_slice(data))) {
            Ok(()) => Poll::Ready(Ok(data.len())),
            // The message is in tungstenite's buffer, and so taken: the socket gets the rest
            // later.
            Err(TungError::Io(err)) if err.kind() == io::ErrorKind::WouldBlock => {
                this.unflushed = true;
                Poll::Ready(Ok(data.len()))
            }
            Err(err) => Poll::Ready(Err(io_error(err))),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.wakers.register_write(cx.waker());
        match this.ws.flush() {
            // ConnectionClosed: everything was written, and the close handshake is complete.
            Ok(()) | Err(TungError::ConnectionClosed) => {
                this.unflushed = false;
                Poll::Ready(Ok(()))
            }
            Err(TungError::Io(err)) if err.kind() == io::ErrorKind::WouldBlock => Poll::Pending,
            Err(err) => Poll::Ready(Err(io_error(err))),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.wakers.register_write(cx.waker());
        // Queues the close frame the first time only, and flushes it (with anything written
        // before it) every time.
        let close = CloseFrame {
            code: CloseCode::Normal,
            reason: Utf8Bytes::from_static(""),
        };
        match this.ws.close(Some(close)) {
            Ok(()) | Err(TungError::ConnectionClosed | TungError::AlreadyClosed) => {}
            Err(TungError::Io(err)) if err.kind() == io::ErrorKind::WouldBlock => {
                return Poll::Pending;
            }
            Err(err) => return Poll::Ready(Err(io_error(err))),
        }
        this.unflushed = false;
        Pin::new(&mut this.ws.get_mut().inner).poll_shutdown(cx)
    }
}

impl<S: fmt::Debug> fmt::Debug for WsStream<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not the WebSocket itself: its Debug prints the buffered bytes.
        f.debug_struct("WsStream")
            .field("stream", self.get_ref())
            .field("unread", &self.unread.len())
            .field("read", &self.read)
            .field("unflushed", &self.unflushed)
            .finish_non_exhaustive()
    }
}

/// Maps a tungstenite error after the handshake to an I/O error saying what went wrong.
fn io_error(err: TungError) -> io::Error {
    match err {
        TungError::Io(err) => err,
        TungError::ConnectionClosed
        | TungError::AlreadyClosed
        | TungError::Protocol(ProtocolError::SendAfterClosing) => io::Error::new(
            io::ErrorKind::BrokenPipe,
            "the WebSocket connection is closed",
        ),
        TungError::Capacity(err) => io::Error::new(
            io::ErrorKind::InvalidData,
            format!("WebSocket message over the limit: {err}"),
        ),
        TungError::Protocol(err) => io::Error::new(
            io::ErrorKind::InvalidData,
            format!("WebSocket protocol violation: {err}"),
        ),
        TungError::Utf8(err) => io::Error::new(
            io::ErrorKind::InvalidData,
            format!("WebSocket: invalid UTF-8: {err}"),
        ),
        err => io::Error::other(format!("WebSocket: {err}")),
    }
}

/// The tasks waiting on a [`WsStream`]: the one reading and the one writing (the same task,
/// usually). The socket is given one waker for both, which wakes each of them.
#[derive(Debug, Default)]
struct TaskWakers {
    read: Mutex<Option<Waker>>,
    write: Mutex<Option<Waker>>,
}

impl TaskWakers {
    fn register_read(&self, waker: &Waker) {
        Self::register(&self.read, waker);
    }

    fn register_write(&self, waker: &Waker) {
        Self::register(&self.write, waker);
    }

    fn register(slot: &Mutex<Option<Waker>>, waker: &Waker) {
        let mut slot = lock(slot);
        if !slot.as_ref().is_some_and(|old| old.will_wake(waker)) {
            *slot = Some(waker.clone());
        }
    }
}

impl Wake for TaskWakers {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        for slot in [&self.read, &self.write] {
            // Taken out first: the lock is not held while a waker runs.
            let waker = lock(slot).take();
            if let Some(waker) = waker {
                waker.wake();
            }
        }
    }
}

/// The async stream seen as a non-blocking `Read + Write` for tungstenite: `Pending` becomes
/// `WouldBlock`, and the socket keeps the combined waker of [`TaskWakers`], which is woken
/// when it is ready again.
#[derive(Debug)]
struct SyncIo<S> {
    inner: S,
    waker: Waker,
}

impl<S: AsyncRead + Unpin> Read for SyncIo<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut cx = Context::from_waker(&self.waker);
        let mut buf = ReadBuf::new(buf);
        match Pin::new(&mut self.inner).poll_read(&mut cx, &mut buf) {
            Poll::Ready(Ok(())) => Ok(buf.filled().len()),
            Poll::Ready(Err(err)) => Err(err),
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl<S: AsyncWrite + Unpin> Write for SyncIo<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut cx = Context::from_waker(&self.waker);
        match Pin::new(&mut self.inner).poll_write(&mut cx, buf) {
            Poll::Ready(result) => result,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        let mut cx = Context::from_waker(&self.waker);
        match Pin::new(&mut self.inner).poll_flush(&mut cx) {
            Poll::Ready(result) => result,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        reason = "test code"
    )]

    use std::net::SocketAddr;
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::task::JoinHandle;
    use tokio::time::timeout;
    use tokio_tungstenite::tungstenite;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::handshake::client::Response as ClientResponse;
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

    use super::*;

    /// Bound on every wait in these tests.
    const LIMIT: Duration = Duration::from_secs(5);

    /// The blocking client's socket.
    type Client = WebSocket<std::net::TcpStream>;

    async fn listen() -> (TcpListener, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        (listener, addr)
    }

    fn request(
        addr: SocketAddr,
        path: &str,
        protocols: Option<&str>,
        origin: Option<&str>,
    ) -> tungstenite::handshake::client::Request {
        let mut request = format!("ws://{addr}{path}").into_client_request().unwrap();
        if let Some(protocols) = protocols {
            request.headers_mut().insert(
                SEC_WEBSOCKET_PROTOCOL,
                HeaderValue::from_str(protocols).unwrap(),
            );
        }
        if let Some(origin) = origin {
            request
                .headers_mut()
                .insert(ORIGIN, HeaderValue::from_str(origin).unwrap());
        }
        request
    }

    /// Runs one handshake between `accept` and tokio-tungstenite's client; returns what each
    /// side made of it.
    async fn handshake(
        options: WsOptions,
        path: &str,
        protocols: Option<&str>,
        origin: Option<&str>,
    ) -> (
        Result<WsStream<TcpStream>, WsError>,
        Result<ClientResponse, TungError>,
    ) {
        let (listener, addr) = listen().await;
        let request = request(addr, path, protocols, origin);
        let server = async {
            let (tcp, _) = listener.accept().await.unwrap();
            accept(tcp, &options).await
        };
        let client = async {
            let tcp = TcpStream::connect(addr).await.unwrap();
            tokio_tungstenite::client_async_with_config(request, tcp, None)
                .await
                .map(|(_, response)| response)
        };
        timeout(LIMIT, async { tokio::join!(server, client) })
            .await
            .expect("handshake timed out")
    }

    fn subprotocol(response: &ClientResponse) -> Option<&str> {
        response
            .headers()
            .get(SEC_WEBSOCKET_PROTOCOL)
            .map(|value| value.to_str().unwrap())
    }

    fn http_status(result: &Result<ClientResponse, TungError>) -> StatusCode {
        match result {
            Err(TungError::Http(response)) => response.status(),
            other => panic!("expected an HTTP refusal, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn accepts_mqtt_and_echoes_it() {
        let (server, client) = handshake(WsOptions::default(), "/mqtt", Some("mqtt"), None).await;
        server.unwrap();
        assert_eq!(subprotocol(&client.unwrap()), Some("mqtt"));
    }

    #[tokio::test]
    async fn accepts_mqttv31_and_echoes_it() {
        let (server, client) =
            handshake(WsOptions::default(), "/mqtt", Some("mqttv3.1"), None).await;
        server.unwrap();
        assert_eq!(subprotocol(&client.unwrap()), Some("mqttv3.1"));
    }

    #[tokio::test]
    async fn prefers_mqtt_whatever_the_order() {
        let (server, client) = handshake(
            WsOptions::default(),
            "/mqtt",
            Some("wamp, mqttv3.1,mqtt"),
            None,
        )
        .await;
        server.unwrap();
        assert_eq!(subprotocol(&client.unwrap()), Some("mqtt"));
    }

    #[tokio::test]
    async fn ignores_the_query_string() {
        let (server, client) =
            handshake(WsOptions::default(), "/mqtt?client=7", Some("mqtt"), None).await;
        server.unwrap();
        client.unwrap();
    }

    #[tokio::test]
    async fn wrong_path_is_404() {
        let (server, client) = handshake(WsOptions::default(), "/other", Some("mqtt"), None).await;
        assert_eq!(http_status(&client), StatusCode::NOT_FOUND);
        let err = server.unwrap_err();
        assert!(
            matches!(&err, WsError::WrongPath { path, expected } if path == "/other" && expected == "/mqtt"),
            "{err:?}"
        );
        assert!(err.to_string().contains("HTTP 404"), "{err}");
    }

    #[tokio::test]
    async fn no_subprotocol_is_400() {
        let (server, client) = handshake(WsOptions::default(), "/mqtt", None, None).await;
        assert_eq!(http_status(&client), StatusCode::BAD_REQUEST);
        let err = server.unwrap_err();
        assert!(
            matches!(&err, WsError::NoMqttSubprotocol { offered } if offered.is_empty()),
            "{err:?}"
        );
        assert!(err.to_string().contains("MQTT-6.0.0-3"), "{err}");
    }

    #[tokio::test]
    async fn other_subprotocols_only_is_400() {
        let (server, client) =
            handshake(WsOptions::default(), "/mqtt", Some("wamp, MQTT"), None).await;
        assert_eq!(http_status(&client), StatusCode::BAD_REQUEST);
        let err = server.unwrap_err();
        assert!(
            matches!(&err, WsError::NoMqttSubprotocol { offered } if offered == "wamp, MQTT"),
            "{err:?}"
        );
    }

    fn with_origins() -> WsOptions {
        WsOptions {
            allowed_origins: vec!["https://dash.example.com".to_owned()],
            ..WsOptions::default()
        }
    }

    #[tokio::test]
    async fn disallowed_origin_is_403() {
        let (server, client) = handshake(
            with_origins(),
            "/mqtt",
            Some("mqtt"),
            Some("https://evil.example.net"),
        )
        .await;
        assert_eq!(http_status(&client), StatusCode::FORBIDDEN);
        let err = server.unwrap_err();
        assert!(
            matches!(&err, WsError::OriginNotAllowed { origin: Some(origin) } if origin == "https://evil.example.net"),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn missing_origin_is_403_when_origins_are_listed() {
        let (server, client) = handshake(with_origins(), "/mqtt", Some("mqtt"), None).await;
        assert_eq!(http_status(&client), StatusCode::FORBIDDEN);
        assert!(matches!(
            server.unwrap_err(),
            WsError::OriginNotAllowed { origin: None }
        ));
    }

    #[tokio::test]
    async fn allowed_origin_matches_case_insensitively() {
        let (server, client) = handshake(
            with_origins(),
            "/mqtt",
            Some("mqtt"),
            Some("HTTPS://Dash.Example.COM"),
        )
        .await;
        server.unwrap();
        assert_eq!(subprotocol(&client.unwrap()), Some("mqtt"));
    }

    #[tokio::test]
    async fn any_origin_when_none_are_listed() {
        let (server, _) = handshake(
            WsOptions::default(),
            "/mqtt",
            Some("mqtt"),
            Some("https://anywhere.example"),
        )
        .await;
        server.unwrap();
    }

    /// Sends `request` to [`accept`] and reads whatever comes back until the server closes.
    async fn answer_to(request: &'static [u8]) -> (Result<(), WsError>, Vec<u8>) {
        let (listener, addr) = listen().await;
        let client = async {
            let mut tcp = TcpStream::connect(addr).await.unwrap();
            tcp.write_all(request).await.unwrap();
            let mut answer = Vec::new();
            let _ = tcp.read_to_end(&mut answer).await;
            answer
        };
        let server = async {
            let (tcp, _) = listener.accept().await.unwrap();
            accept(tcp, &WsOptions::default()).await.map(drop)
        };
        timeout(LIMIT, async { tokio::join!(server, client) })
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn plain_http_request_is_answered_426_upgrade_required() {
        let (server, answer) = answer_to(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let err = server.unwrap_err();
        assert!(matches!(err, WsError::NotAnUpgrade(_)), "{err:?}");
        let answer = String::from_utf8(answer).unwrap();
        assert!(
            answer.starts_with("HTTP/1.1 426 Upgrade Required\r\n"),
            "{answer}"
        );
        assert!(answer.contains("\r\nUpgrade: websocket\r\n"), "{answer}");
        assert!(answer.ends_with("not as a web page.\n"), "{answer}");
        let length = answer
            .lines()
            .find_map(|line| line.strip_prefix("Content-Length: "))
            .unwrap();
        let body = answer.split("\r\n\r\n").nth(1).unwrap();
        assert_eq!(length.parse::<usize>().unwrap(), body.len());
    }

    #[tokio::test]
    async fn a_broken_request_is_a_handshake_error_without_an_answer() {
        let (server, answer) = answer_to(b"\x10\x0c\x00\x04MQTT\r\n\r\n").await;
        let err = server.unwrap_err();
        assert!(matches!(err, WsError::Handshake(_)), "{err:?}");
        assert!(answer.is_empty(), "{answer:?}");
    }

    #[test]
    fn the_futures_and_the_stream_are_send() {
        fn assert_send<T: Send>(_: &T) {}
        let options = WsOptions::default();
        let std_socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let addr = std_socket.local_addr().unwrap();
            let tcp = TcpStream::connect(addr).await.unwrap();
            let future = accept(tcp, &options);
            assert_send(&future);
        });
        fn assert_stream<T: Send + Unpin + fmt::Debug + 'static>() {}
        assert_stream::<WsStream<TcpStream>>();
    }

    /// A connection: the server's [`WsStream`] and a blocking tungstenite client (on its own
    /// socket, with its own handshake and framing) running `client` on a blocking thread.
    async fn connected<T: Send + 'static>(
        options: WsOptions,
        client: impl FnOnce(Client) -> T + Send + 'static,
    ) -> (WsStream<TcpStream>, JoinHandle<T>) {
        let (listener, addr) = listen().await;
        let handle = tokio::task::spawn_blocking(move || {
            let tcp = std::net::TcpStream::connect(addr).unwrap();
            tcp.set_read_timeout(Some(LIMIT)).unwrap();
            tcp.set_write_timeout(Some(LIMIT)).unwrap();
            let (ws, _) = tungstenite::client::client_with_config(
                request(addr, "/mqtt", Some("mqtt"), None),
                tcp,
                None,
            )
            .map_err(|err| err.to_string())
            .unwrap();
            client(ws)
        });
        let (tcp, _) = timeout(LIMIT, listener.accept()).await.unwrap().unwrap();
        let server = timeout(LIMIT, accept(tcp, &options))
            .await
            .unwrap()
            .unwrap();
        (server, handle)
    }

    async fn join<T>(handle: JoinHandle<T>) -> T {
        timeout(LIMIT, handle).await.unwrap().unwrap()
    }

    /// The client's next data or close message, skipping pings and pongs.
    fn next_message(client: &mut Client) -> Message {
        loop {
            match client.read().unwrap() {
                Message::Ping(_) | Message::Pong(_) => {}
                message => return message,
            }
        }
    }

    #[tokio::test]
    async fn writes_arrive_as_one_binary_message_each() {
        let (mut server, client) = connected(WsOptions::default(), |mut client| {
            let first = next_message(&mut client);
            let second = next_message(&mut client);
            (first, second)
        })
        .await;
        timeout(LIMIT, async {
            server.write_all(b"\x30\x03\x00\x01a").await.unwrap();
            server.write_all(b"\xc0\x00").await.unwrap();
            server.flush().await.unwrap();
        })
        .await
        .unwrap();
        let (first, second) = join(client).await;
        assert_eq!(first, Message::binary(&b"\x30\x03\x00\x01a"[..]));
        assert_eq!(second, Message::binary(&b"\xc0\x00"[..]));
    }

    #[tokio::test]
    async fn messages_and_fragments_read_as_one_byte_stream() {
        let (mut server, client) = connected(WsOptions::default(), |mut client| {
            client.send(Message::binary(&b"ab"[..])).unwrap();
            client.send(Message::binary(&b"cde"[..])).unwrap();
            // One message in three frames.
            for (part, opcode, last) in [
                (&b"fg"[..], Data::Binary, false),
                (&b""[..], Data::Continue, false),
                (&b"h"[..], Data::Continue, true),
            ] {
                let frame = Frame::message(part, OpCode::Data(opcode), last);
                client.send(Message::Frame(frame)).unwrap();
            }
            // Stays connected until the server has read everything.
            next_message(&mut client)
        })
        .await;
        let mut got = [0; 8];
        timeout(LIMIT, server.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&got, b"abcdefgh");
        timeout(LIMIT, server.write_all(b"done"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(join(client).await, Message::binary(&b"done"[..]));
    }

    #[tokio::test]
    async fn a_small_read_buffer_gets_a_long_message_in_pieces() {
        let message: Vec<u8> = (0..=255).cycle().take(1001).collect();
        let sent = message.clone();
        let (mut server, client) = connected(WsOptions::default(), move |mut client| {
            client.send(Message::binary(sent)).unwrap();
            next_message(&mut client)
        })
        .await;
        let mut got = Vec::new();
        let mut buf = [0; 2];
        while got.len() < message.len() {
            let n = timeout(LIMIT, server.read(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(n, 2.min(message.len() - got.len()), "short read");
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, message);
        timeout(LIMIT, server.write_all(b"done"))
            .await
            .unwrap()
            .unwrap();
        join(client).await;
    }

    #[tokio::test]
    async fn a_ping_is_answered_while_the_server_only_reads() {
        let (mut server, client) = connected(WsOptions::default(), |mut client| {
            client
                .send(Message::Ping(Bytes::from_static(b"hi")))
                .unwrap();
            // The server has written nothing: the pong must come on its own.
            let answer = client.read().unwrap();
            client.send(Message::binary(&b"x"[..])).unwrap();
            let _ = next_message(&mut client);
            answer
        })
        .await;
        let mut got = [0; 1];
        timeout(LIMIT, server.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&got, b"x");
        timeout(LIMIT, server.write_all(b"done"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(join(client).await, Message::Pong(Bytes::from_static(b"hi")));
    }

    #[tokio::test]
    async fn a_text_message_is_invalid_data() {
        let (mut server, client) = connected(WsOptions::default(), |mut client| {
            client.send(Message::text("CONNECT")).unwrap();
            next_message(&mut client)
        })
        .await;
        let mut buf = [0; 16];
        let err = timeout(LIMIT, server.read(&mut buf))
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("MQTT-6.0.0-1"), "{err}");
        // Failed for good.
        assert!(
            timeout(LIMIT, server.read(&mut buf))
                .await
                .unwrap()
                .is_err()
        );
        match join(client).await {
            Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Unsupported),
            other => panic!("expected a close frame, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_close_frame_is_the_end_of_the_stream_and_is_answered() {
        let (mut server, client) = connected(WsOptions::default(), |mut client| {
            client.close(None).unwrap();
            next_message(&mut client)
        })
        .await;
        let mut buf = [0; 16];
        let n = timeout(LIMIT, server.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 0);
        assert_eq!(
            timeout(LIMIT, server.read(&mut buf))
                .await
                .unwrap()
                .unwrap(),
            0
        );
        assert!(matches!(join(client).await, Message::Close(_)));
        assert!(
            timeout(LIMIT, server.write_all(b"late"))
                .await
                .unwrap()
                .is_err(),
            "a write after the close handshake must fail"
        );
    }

    #[tokio::test]
    async fn the_end_of_the_tcp_stream_is_the_end_of_the_stream() {
        let (mut server, client) = connected(WsOptions::default(), drop).await;
        join(client).await;
        let mut buf = [0; 16];
        let n = timeout(LIMIT, server.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 0);
    }

    #[tokio::test]
    async fn shutdown_sends_a_normal_close() {
        let (mut server, client) = connected(WsOptions::default(), |mut client| {
            let data = next_message(&mut client);
            (data, next_message(&mut client))
        })
        .await;
        timeout(LIMIT, async {
            server.write_all(b"bye").await.unwrap();
            server.shutdown().await.unwrap();
        })
        .await
        .unwrap();
        let (data, close) = join(client).await;
        assert_eq!(data, Message::binary(&b"bye"[..]));
        match close {
            Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Normal),
            other => panic!("expected a close frame, got {other:?}"),
        }
    }

    fn small_limits() -> WsOptions {
        WsOptions {
            max_frame_size: 64,
            max_message_size: 100,
            ..WsOptions::default()
        }
    }

    async fn assert_read_fails_on_size(
        mut server: WsStream<TcpStream>,
        client: JoinHandle<Message>,
    ) {
        let mut buf = [0; 256];
        let err = timeout(LIMIT, server.read(&mut buf))
            .await
            .expect("an oversized message must fail the read, not hang it")
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("over the limit"), "{err}");
        match join(client).await {
            Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Size),
            other => panic!("expected a close frame, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_frame_over_max_frame_size_fails_the_read() {
        let (server, client) = connected(small_limits(), |mut client| {
            client.send(Message::binary(vec![7; 65])).unwrap();
            next_message(&mut client)
        })
        .await;
        assert_read_fails_on_size(server, client).await;
    }

    #[tokio::test]
    async fn a_message_over_max_message_size_fails_the_read() {
        let (server, client) = connected(small_limits(), |mut client| {
            // Three frames within the frame limit, 120 bytes in all.
            for (opcode, last) in [
                (Data::Binary, false),
                (Data::Continue, false),
                (Data::Continue, true),
            ] {
                let frame = Frame::message(vec![7; 40], OpCode::Data(opcode), last);
                client.send(Message::Frame(frame)).unwrap();
            }
            next_message(&mut client)
        })
        .await;
        assert_read_fails_on_size(server, client).await;
    }

    #[tokio::test]
    async fn messages_at_the_limits_are_accepted() {
        let (mut server, client) = connected(small_limits(), |mut client| {
            client.send(Message::binary(vec![1; 64])).unwrap();
            for (opcode, last) in [(Data::Binary, false), (Data::Continue, true)] {
                let frame = Frame::message(vec![2; 50], OpCode::Data(opcode), last);
                client.send(Message::Frame(frame)).unwrap();
            }
            next_message(&mut client)
        })
        .await;
        let mut got = [0; 164];
        timeout(LIMIT, server.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert!(got[..64].iter().all(|&b| b == 1) && got[64..].iter().all(|&b| b == 2));
        timeout(LIMIT, server.write_all(b"done"))
            .await
            .unwrap()
            .unwrap();
        join(client).await;
    }

    #[tokio::test]
    async fn writes_wait_when_the_peer_does_not_read() {
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let (mut server, client) = connected(WsOptions::default(), move |client| {
            // Reads nothing until told, so the socket buffers fill up.
            let _ = done_rx.recv_timeout(LIMIT);
            drop(client);
        })
        .await;
        let chunk = vec![0x30; 64 * 1024];
        let mut accepted = 0usize;
        let mut blocked = false;
        // Far more than loopback socket buffers hold.
        for _ in 0..4096 {
            match timeout(Duration::from_millis(200), server.write_all(&chunk)).await {
                Ok(result) => {
                    result.unwrap();
                    accepted += chunk.len();
                }
                Err(_) => {
                    blocked = true;
                    break;
                }
            }
        }
        done_tx.send(()).unwrap();
        join(client).await;
        assert!(blocked, "{accepted} bytes taken without the peer reading");
    }
}
