//! Tests of the WebSocket handshake and of [`WsStream`] against tungstenite clients.

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
use tokio_tungstenite::tungstenite::protocol::WebSocket;
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
    let (server, client) = handshake(WsOptions::default(), "/mqtt", Some("mqttv3.1"), None).await;
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
    let (server, client) = handshake(WsOptions::default(), "/mqtt", Some("wamp, MQTT"), None).await;
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

async fn assert_read_fails_on_size(mut server: WsStream<TcpStream>, client: JoinHandle<Message>) {
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
