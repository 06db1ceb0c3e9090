//! WebSocket, WebSocket over TLS and PROXY protocol listeners end to end, on 127.0.0.1: a
//! blocking tungstenite client (in a thread) speaks MQTT in binary frames; PROXY headers are
//! written by hand before the CONNECT.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code"
)]

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bulwark_server::tls::TlsSettings;
use bulwark_server::{ListenerConfig, ListenerKind, TrustedProxies, WsOptions};
use tokio_tungstenite::tungstenite::{self, Message, client::IntoClientRequest};

/// A 3.1.1 CONNECT for `id`.
fn connect_packet(id: &str) -> Vec<u8> {
    let mut packet = vec![0x10, (12 + id.len()) as u8, 0, 4];
    packet.extend_from_slice(b"MQTT");
    packet.extend_from_slice(&[4, 2, 0, 60, 0, id.len() as u8]);
    packet.extend_from_slice(id.as_bytes());
    packet
}

fn subscribe_packet(topic: &str) -> Vec<u8> {
    let mut packet = vec![0x82, (5 + topic.len()) as u8, 0, 1, 0, topic.len() as u8];
    packet.extend_from_slice(topic.as_bytes());
    packet.push(0);
    packet
}

fn publish_packet(topic: &str, payload: &[u8]) -> Vec<u8> {
    let mut packet = vec![
        0x30,
        (2 + topic.len() + payload.len()) as u8,
        0,
        topic.len() as u8,
    ];
    packet.extend_from_slice(topic.as_bytes());
    packet.extend_from_slice(payload);
    packet
}

fn ws_request(
    addr: SocketAddr,
    scheme: &str,
    path: &str,
    protocol: &str,
) -> tungstenite::handshake::client::Request {
    let mut request = format!("{scheme}://localhost:{}{path}", addr.port())
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", protocol.parse().unwrap());
    request
}

/// Reads binary messages until `n` bytes of MQTT have arrived.
fn read_bytes<S: Read + Write>(ws: &mut tungstenite::WebSocket<S>, n: usize) -> Vec<u8> {
    let mut got = Vec::new();
    while got.len() < n {
        match ws.read().unwrap() {
            Message::Binary(data) => got.extend_from_slice(&data),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    got
}

/// Subscribes and publishes to itself over `ws`; returns the PUBLISH it got back.
fn round_trip<S: Read + Write>(ws: &mut tungstenite::WebSocket<S>, id: &str) -> Vec<u8> {
    // CONNECT split over two frames: MQTT over WebSocket allows a packet to span frames.
    let connect = connect_packet(id);
    ws.send(Message::binary(connect[..5].to_vec())).unwrap();
    ws.send(Message::binary(connect[5..].to_vec())).unwrap();
    assert_eq!(read_bytes(ws, 4), vec![0x20, 2, 0, 0], "CONNACK");
    ws.send(Message::binary(subscribe_packet("ws/t"))).unwrap();
    assert_eq!(read_bytes(ws, 5), vec![0x90, 3, 0, 1, 0], "SUBACK");
    ws.send(Message::binary(publish_packet("ws/t", b"hi")))
        .unwrap();
    read_bytes(ws, 8)
}

async fn in_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::time::timeout(Duration::from_secs(20), tokio::task::spawn_blocking(f))
        .await
        .expect("client finished in time")
        .unwrap()
}

fn std_tcp(addr: SocketAddr) -> std::net::TcpStream {
    let tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    tcp
}

/// Writes `bytes` and reports whether the server closed the socket without answering. A
/// server that refuses a socket may reset it before the write, during it or after it: a failed
/// write, a reset at the read and an end of stream all mean "closed"; an answer or a read
/// timeout (nothing happened) does not.
fn closed_without_answer(tcp: &mut std::net::TcpStream, bytes: &[u8]) -> bool {
    if tcp.write_all(bytes).is_err() {
        return true;
    }
    closed(tcp.read(&mut [0u8; 4]))
}

/// Whether a read's outcome means the peer closed the connection (end of stream or reset).
fn closed(read: std::io::Result<usize>) -> bool {
    match read {
        Ok(0) => true,
        Ok(_) => false,
        Err(err) => closed_by(&err),
    }
}

/// Whether a read failed because the peer closed the connection, not because the read timed
/// out.
fn closed_by(err: &std::io::Error) -> bool {
    !matches!(
        err.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

#[tokio::test]
async fn mqtt_over_websocket() {
    let server = common::start_with(|c| {
        c.listeners = vec![ListenerConfig {
            kind: ListenerKind::Ws(WsOptions::default()),
            ..ListenerConfig::tcp("ws", "127.0.0.1:0".parse().unwrap())
        }];
    })
    .await;
    let addr = server.addr;
    let publish = in_thread(move || {
        let (mut ws, response) =
            tungstenite::client::client(ws_request(addr, "ws", "/mqtt", "mqtt"), std_tcp(addr))
                .unwrap();
        assert_eq!(response.headers()["sec-websocket-protocol"], "mqtt");
        round_trip(&mut ws, "ws1")
    })
    .await;
    assert_eq!(publish, publish_packet("ws/t", b"hi"));

    // A wrong path, or no MQTT subprotocol, is refused at the handshake.
    let refused = in_thread(move || {
        let wrong_path =
            tungstenite::client::client(ws_request(addr, "ws", "/other", "mqtt"), std_tcp(addr))
                .is_err();
        let no_mqtt =
            tungstenite::client::client(ws_request(addr, "ws", "/mqtt", "chat"), std_tcp(addr))
                .is_err();
        (wrong_path, no_mqtt)
    })
    .await;
    assert_eq!(refused, (true, true));
    server.stop().await;
}

#[tokio::test]
async fn mqtt_over_websocket_over_tls() {
    let dir = std::env::temp_dir().join(common::unique("wss"));
    std::fs::create_dir_all(&dir).unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    std::fs::write(dir.join("c.pem"), cert.cert.pem()).unwrap();
    common::write_private_key(&dir.join("k.pem"), &cert.signing_key.serialize_pem());
    let settings = TlsSettings::new(dir.join("c.pem"), dir.join("k.pem"));
    let server = common::start_with(|c| {
        c.listeners = vec![ListenerConfig {
            kind: ListenerKind::Wss(Box::new(settings), WsOptions::default()),
            ..ListenerConfig::tcp("wss", "127.0.0.1:0".parse().unwrap())
        }];
    })
    .await;
    let addr = server.addr;
    let der = cert.cert.der().clone();
    // A TLS connection to the listener that trusts the test certificate.
    let connect = move || {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der.clone()).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let tls = rustls::ClientConnection::new(Arc::new(config), "localhost".try_into().unwrap())
            .unwrap();
        rustls::StreamOwned::new(tls, std_tcp(addr))
    };
    let again = connect.clone();
    let publish = in_thread(move || {
        let (mut ws, _) =
            tungstenite::client::client(ws_request(addr, "wss", "/mqtt", "mqttv3.1"), connect())
                .unwrap();
        round_trip(&mut ws, "wss1")
    })
    .await;
    assert_eq!(publish, publish_packet("ws/t", b"hi"));
    // A browser opening the address as a page: a plain HTTPS GET gets HTTP 426 and a line of
    // text, not an empty reply.
    let page = in_thread(move || {
        let mut stream = again();
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap();
        let mut answer = String::new();
        // The broker closes after its answer; a TLS close without close_notify reads as an
        // error after the data, which the answer read so far shows.
        let _ = stream.read_to_string(&mut answer);
        answer
    })
    .await;
    assert!(
        page.starts_with("HTTP/1.1 426 Upgrade Required\r\n")
            && page.contains("MQTT over WebSocket endpoint"),
        "{page}"
    );
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn proxy_protocol_from_a_trusted_address_only() {
    let trusted = |entries: &[&str]| {
        TrustedProxies::parse(&entries.iter().map(|e| (*e).to_owned()).collect::<Vec<_>>()).unwrap()
    };
    let server = common::start_with(|c| {
        c.listeners = vec![ListenerConfig {
            proxy_protocol: Some(trusted(&["127.0.0.1"])),
            ..ListenerConfig::tcp("proxied", "127.0.0.1:0".parse().unwrap())
        }];
    })
    .await;
    let addr = server.addr;
    let answers = in_thread(move || {
        // v1 header, then MQTT in the same write.
        let mut tcp = std_tcp(addr);
        let mut bytes = b"PROXY TCP4 203.0.113.7 10.0.0.1 40000 1883\r\n".to_vec();
        bytes.extend_from_slice(&connect_packet("p1"));
        tcp.write_all(&bytes).unwrap();
        let mut connack = [0u8; 4];
        tcp.read_exact(&mut connack).unwrap();
        // A v2 header (TCP over IPv6) works too.
        let mut v2 = std_tcp(addr);
        let mut bytes = b"\r\n\r\n\0\r\nQUIT\n\x21\x21\x00\x24".to_vec();
        bytes.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        bytes.extend_from_slice(&[0; 11]);
        bytes.push(7);
        bytes.extend_from_slice(&[0; 15]);
        bytes.push(1);
        bytes.extend_from_slice(&[0x9c, 0x40, 0x07, 0x5b]);
        bytes.extend_from_slice(&connect_packet("p4"));
        v2.write_all(&bytes).unwrap();
        let mut connack_v2 = [0u8; 4];
        v2.read_exact(&mut connack_v2).unwrap();
        assert_eq!(connack_v2, [0x20, 2, 0, 0]);
        // No header on a PROXY listener: closed without an answer.
        let mut bare = std_tcp(addr);
        let closed = closed_without_answer(&mut bare, &connect_packet("p2"));
        (connack, closed)
    })
    .await;
    assert_eq!(answers, ([0x20, 2, 0, 0], true));
    server.stop().await;

    // A header from an address that is not trusted is refused.
    let server = common::start_with(|c| {
        c.listeners = vec![ListenerConfig {
            proxy_protocol: Some(trusted(&["10.0.0.0/8"])),
            ..ListenerConfig::tcp("proxied", "127.0.0.1:0".parse().unwrap())
        }];
    })
    .await;
    let addr = server.addr;
    let closed = in_thread(move || {
        let mut tcp = std_tcp(addr);
        // A v2 header: signature, version 2 / PROXY, TCP over IPv4, 12 bytes of addresses.
        let mut bytes = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
        bytes.extend_from_slice(&[203, 0, 113, 7, 10, 0, 0, 1, 0x9c, 0x40, 0x07, 0x5b]);
        bytes.extend_from_slice(&connect_packet("p3"));
        closed_without_answer(&mut tcp, &bytes)
    })
    .await;
    assert!(closed);
    server.stop().await;
}

#[tokio::test]
async fn a_listener_at_max_connections_closes_the_next_one() {
    let server = common::start_with(|c| {
        c.listeners = vec![ListenerConfig {
            max_connections: 2,
            ..ListenerConfig::tcp("capped", "127.0.0.1:0".parse().unwrap())
        }];
    })
    .await;
    let addr = server.addr;
    let connack = |id: &'static str| {
        move || {
            let mut tcp = std_tcp(addr);
            // A refused socket may be reset before the CONNECT is written: the write fails.
            if tcp.write_all(&connect_packet(id)).is_err() {
                return None;
            }
            let mut buf = [0u8; 4];
            match tcp.read_exact(&mut buf) {
                Ok(()) if buf == [0x20, 2, 0, 0] => Some(tcp),
                Ok(()) => panic!("expected a CONNACK, got {buf:?}"),
                Err(err) if closed_by(&err) => None,
                Err(err) => panic!("neither a CONNACK nor a close: {err}"),
            }
        }
    };
    let first = in_thread(connack("m1")).await.expect("first connects");
    let second = in_thread(connack("m2")).await.expect("second connects");
    assert!(in_thread(connack("m3")).await.is_none(), "third is closed");
    // A slot frees when a connection ends; the broker notices the close first.
    drop(first);
    let mut again = None;
    for _ in 0..50 {
        again = in_thread(connack("m4")).await;
        if again.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(again.is_some(), "a freed slot is usable");
    drop(second);
    server.stop().await;
}

/// An IPv6 wildcard listener listens on IPv6 only, so it shares its port with an IPv4 one (the
/// first run listens on 0.0.0.0:8883 and [::]:8883); an optional listener whose address this
/// host does not have is skipped, a required one stops the start.
#[tokio::test]
async fn ipv4_and_ipv6_listeners_share_a_port_and_an_absent_address_is_skipped_if_optional() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let has_ipv6 = std::net::TcpListener::bind("[::1]:0").is_ok();
    // An address of the documentation range: on no interface of this host.
    let absent: SocketAddr = "[2001:db8::1]:0".parse().unwrap();
    let mut config = common::test_config();
    config.listeners = vec![ListenerConfig::tcp(
        "v4",
        SocketAddr::from(([127, 0, 0, 1], port)),
    )];
    if has_ipv6 {
        config.listeners.push(ListenerConfig {
            dangerous_plaintext: true,
            ..ListenerConfig::tcp(
                "v6",
                SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)),
            )
        });
    }
    config.listeners.push(ListenerConfig {
        optional: true,
        dangerous_plaintext: true,
        ..ListenerConfig::tcp("absent", absent)
    });
    let server = bulwark_server::Server::bind(config.clone()).await.unwrap();
    let mut bound = server.local_addrs();
    bound.sort();
    let mut expected = vec![SocketAddr::from(([127, 0, 0, 1], port))];
    if has_ipv6 {
        expected.push(SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)));
        std::net::TcpStream::connect(SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)))
            .unwrap();
    }
    expected.sort();
    assert_eq!(bound, expected);
    drop(server);

    if let Some(absent) = config.listeners.last_mut() {
        absent.optional = false;
    }
    config.listeners.retain(|l| l.name == "absent");
    let err = bulwark_server::Server::bind(config).await.unwrap_err();
    assert!(err.to_string().contains("2001:db8::1"), "{err}");
}
