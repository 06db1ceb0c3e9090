//! MQTT over WebSocket (MQTT 5.0 and 3.1.1, §6): the server side of the opening handshake, and
//! [`WsStream`], which turns the binary messages of a WebSocket connection back into the byte
//! stream a connection driver decodes MQTT packets from.
//!
//! `tokio-tungstenite` does the handshake and the framing. The handshake runs on a borrowed
//! stream, so that a request that asks for no upgrade can still be answered (HTTP 426); the
//! stream then becomes a `WebSocketStream`, whose `Stream` and `Sink` of messages [`WsStream`]
//! reads and writes. Nothing can be lost in that hand-over: the server handshake reads nothing
//! past the request (bytes sent after it in the same read fail the handshake), and the new
//! `WebSocketStream` has read nothing yet.

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::mem;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::http::header::{
    CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, HeaderValue, ORIGIN,
    SEC_WEBSOCKET_PROTOCOL,
};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
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
        Ok(()) => Ok(WsStream {
            ws: WebSocketStream::from_raw_socket(stream, Role::Server, Some(config)).await,
            unread: Bytes::new(),
            read: ReadState::Open,
        }),
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
/// Meant for one task that both reads and writes (the driver): a read that has to push a
/// write on (the rest of a message, the answer to a close) waits for the socket with the
/// reading task's waker.
pub(crate) struct WsStream<S> {
    ws: WebSocketStream<S>,
    /// The unread rest of the last binary message.
    unread: Bytes,
    read: ReadState,
}

impl<S> WsStream<S> {
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
    /// The underlying stream (for its peer address, or a TLS stream's client certificates).
    pub(crate) fn get_ref(&self) -> &S {
        self.ws.get_ref()
    }

    /// Marks the reading side failed and offers the peer a close frame saying why (RFC 6455
    /// §7.1.7 allows one before the connection is dropped); whatever the socket does not take
    /// now goes with a later flush or shutdown, or not at all.
    fn fail(&mut self, code: CloseCode, reason: &'static str, err: io::Error) -> io::Error {
        self.read = ReadState::Failed;
        let close = CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        };
        // Queued and written as far as the socket takes it; tungstenite does both.
        let _ = self.ws.start_send_unpin(Message::Close(Some(close)));
        err
    }

    /// Reads the next message with a payload into `buf`, answering pings on the way.
    fn poll_message(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        for _ in 0..MESSAGES_PER_POLL {
            let message = match ready!(self.ws.poll_next_unpin(cx)) {
                Some(Ok(message)) => message,
                // The close handshake is complete, or the stream already ended.
                None => {
                    self.read = ReadState::Closed;
                    return Poll::Ready(Ok(()));
                }
                Some(Err(err)) => return Poll::Ready(self.read_failed(err)),
            };
            match message {
                Message::Binary(data) => {
                    if !data.is_empty() {
                        self.unread = data;
                        self.take_unread(buf);
                        return Poll::Ready(Ok(()));
                    }
                }
                Message::Text(_) => {
                    return Poll::Ready(Err(self.fail(
                        CloseCode::Unsupported,
                        "MQTT needs binary messages",
                        io::Error::new(
                            io::ErrorKind::InvalidData,
                            "[MQTT-6.0.0-1] received a WebSocket text message: MQTT control \
                             packets must be sent in binary messages",
                        ),
                    )));
                }
                // tungstenite has queued the pong; the next read writes it out.
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
                Message::Close(_) => {
                    self.read = ReadState::Closed;
                    // Sends the queued answering close frame now, if the socket takes it: the
                    // driver stops reading at the end of the stream. tungstenite then marks
                    // the connection terminated, as a server should.
                    let _ = self.ws.poll_flush_unpin(cx);
                    return Poll::Ready(Ok(()));
                }
            }
        }
        // Only control frames or empty messages so far: let other tasks run, then go on.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// What a failed read of the WebSocket becomes: the end of the stream, or an error.
    fn read_failed(&mut self, err: TungError) -> io::Result<()> {
        match err {
            // The TCP stream ended without a close frame, which over plain TCP is the end of
            // the stream too.
            TungError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
                self.read = ReadState::Closed;
                Ok(())
            }
            TungError::Io(err) => {
                self.read = ReadState::Failed;
                Err(err)
            }
            err @ TungError::Capacity(_) => {
                Err(self.fail(CloseCode::Size, "message too large", io_error(err)))
            }
            err => Err(self.fail(CloseCode::Protocol, "protocol error", io_error(err))),
        }
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
        // The driver may now wait only for input: push the rest of its last write on (if
        // the socket did not take all of it). A closed connection is for the read to find.
        match this.ws.poll_ready_unpin(cx) {
            Poll::Ready(Ok(()) | Err(TungError::ConnectionClosed)) | Poll::Pending => {}
            Poll::Ready(Err(err)) => {
                this.read = ReadState::Failed;
                return Poll::Ready(Err(io_error(err)));
            }
        }
        this.poll_message(cx, buf)
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
        // At most one message is held: the last one must be out before another is taken.
        ready!(this.ws.poll_ready_unpin(cx)).map_err(io_error)?;
        // Taken whole: what the socket does not take now stays in tungstenite's buffer.
        this.ws
            .start_send_unpin(Message::Binary(Bytes::copy_from_slice(data)))
            .map_err(io_error)?;
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The end of the close handshake counts as flushed: everything was written.
        self.get_mut().ws.poll_flush_unpin(cx).map_err(io_error)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // Whatever was written goes first; a connection closed already needs no close frame.
        match ready!(this.ws.poll_ready_unpin(cx)) {
            Ok(()) => {
                let close = CloseFrame {
                    code: CloseCode::Normal,
                    reason: Utf8Bytes::from_static(""),
                };
                // Queued the first time only: later, the close frame is on its way already.
                match this.ws.start_send_unpin(Message::Close(Some(close))) {
                    Ok(()) => {}
                    Err(err) if closed(&err) => {}
                    Err(err) => return Poll::Ready(Err(io_error(err))),
                }
            }
            Err(err) if closed(&err) => {}
            Err(err) => return Poll::Ready(Err(io_error(err))),
        }
        // Flushes the close frame, with anything written before it.
        match ready!(this.ws.poll_close_unpin(cx)) {
            Ok(()) => {}
            Err(err) if closed(&err) => {}
            Err(err) => return Poll::Ready(Err(io_error(err))),
        }
        Pin::new(this.ws.get_mut()).poll_shutdown(cx)
    }
}

impl<S: fmt::Debug + AsyncRead + AsyncWrite + Unpin> fmt::Debug for WsStream<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not the WebSocket itself: its Debug prints the buffered bytes.
        f.debug_struct("WsStream")
            .field("stream", self.get_ref())
            .field("unread", &self.unread.len())
            .field("read", &self.read)
            .finish_non_exhaustive()
    }
}

/// Whether `err` says that the WebSocket connection is closed (or closing) on this side.
fn closed(err: &TungError) -> bool {
    matches!(
        err,
        TungError::ConnectionClosed
            | TungError::AlreadyClosed
            | TungError::Protocol(ProtocolError::SendAfterClosing)
    )
}

/// Maps a tungstenite error after the handshake to an I/O error saying what went wrong.
fn io_error(err: TungError) -> io::Error {
    match err {
        TungError::Io(err) => err,
        err if closed(&err) => io::Error::new(
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

#[cfg(test)]
mod tests;
