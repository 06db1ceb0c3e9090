//! Helpers shared by the end-to-end tests: a broker on `127.0.0.1:0`, rumqttc clients (3.1.1
//! and 5.0) whose events arrive on a channel, and a raw client built on `bulwark-proto` for
//! what a client library hides. Every wait is bounded.
#![allow(
    dead_code,
    unreachable_pub,
    reason = "each test file uses a different subset of these helpers"
)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bulwark_proto::{
    ConnAck, Connect, Decoder, DecoderLimits, Encode, Encoder, MqttString, Packet, PacketId,
    ProtocolVersion, Publish, QoS, SubAck, Subscribe, SubscribeProperties, Subscription,
    SubscriptionId, SubscriptionOptions, TopicFilter, TopicName, UserProperty,
};
use bulwark_server::{ListenerConfig, Server, ServerConfig};
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// How long a test waits for something that should happen.
pub const WAIT: Duration = Duration::from_secs(3);
/// How long a test watches for something that should not happen.
pub const QUIET: Duration = Duration::from_millis(300);

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Writes a private key readable by its owner only (mode 0600), as the server requires of
/// the keys it serves.
pub fn write_private_key(path: &std::path::Path, pem: &str) {
    std::fs::write(path, pem).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
}

/// A name no other test uses (client ids, topics).
pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id())
}

// ----- the broker ----------------------------------------------------------------------------

/// A broker serving on an ephemeral loopback port until stopped or dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    /// The admin listener's address, when the settings have one.
    pub admin: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<()>>,
}

/// Settings for tests: one listener on port 0, no `$SYS` timer.
pub fn test_config() -> ServerConfig {
    let mut config = ServerConfig {
        listeners: vec![ListenerConfig::tcp("test", "127.0.0.1:0".parse().unwrap())],
        ..ServerConfig::default()
    };
    config.broker.sys_interval = None;
    config.shutdown_grace = Duration::from_secs(2);
    config
}

pub async fn start() -> TestServer {
    start_with(|_| {}).await
}

/// A broker for protocol tests: `adjust` the settings, then every listener lets clients
/// without credentials in (authentication has its own tests, which use [`start_secure_with`]).
pub async fn start_with(adjust: impl FnOnce(&mut ServerConfig)) -> TestServer {
    start_secure_with(|config| {
        adjust(config);
        for listener in &mut config.listeners {
            listener.dangerous_allow_anonymous = true;
        }
    })
    .await
}

/// A broker with the settings as `adjust` leaves them: no anonymous access unless it says so.
pub async fn start_secure_with(adjust: impl FnOnce(&mut ServerConfig)) -> TestServer {
    let mut config = test_config();
    adjust(&mut config);
    spawn(Server::bind(config).await.expect("server binds"))
}

/// An anonymous-friendly broker (as [`start_with`]) keeping its durable state in `store`.
pub async fn start_durable(
    adjust: impl FnOnce(&mut ServerConfig),
    store: Box<dyn bulwark_store::Store>,
) -> TestServer {
    let mut config = test_config();
    adjust(&mut config);
    for listener in &mut config.listeners {
        listener.dangerous_allow_anonymous = true;
    }
    let server = Server::bind(config).await.expect("server binds");
    spawn(server.with_store(store).expect("the store reads back"))
}

/// Runs a bound server until [`TestServer::stop`].
fn spawn(server: Server) -> TestServer {
    let addr = server.local_addrs()[0];
    let admin = server.admin_addr();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(server.run(async {
        let _ = stop_rx.await;
    }));
    TestServer {
        addr,
        admin,
        stop: Some(stop_tx),
        handle: Some(handle),
    }
}

impl TestServer {
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Asks the server to stop and waits until `run` has returned.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(handle) = self.handle.take() {
            tokio::time::timeout(Duration::from_secs(5), handle)
                .await
                .expect("server stops within 5 s")
                .expect("server task does not panic");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

// ----- rumqttc, MQTT 3.1.1 -------------------------------------------------------------------

/// A rumqttc 3.1.1 client whose event loop runs in a task; events arrive on `events`.
pub struct V3 {
    pub client: rumqttc::AsyncClient,
    pub events: mpsc::UnboundedReceiver<Result<rumqttc::Event, String>>,
    /// PUBLISHes that arrived while a helper waited for something else.
    pending: VecDeque<rumqttc::Publish>,
    task: JoinHandle<()>,
}

pub fn v3_options(addr: SocketAddr, id: &str) -> rumqttc::MqttOptions {
    let mut options = rumqttc::MqttOptions::new(id, addr.ip().to_string(), addr.port());
    options.set_keep_alive(Duration::from_secs(30));
    options.set_max_packet_size(1024 * 1024, 1024 * 1024);
    options
}

/// Connects with default options (clean session) and waits for a successful CONNACK.
pub async fn v3_connect(addr: SocketAddr, id: &str) -> V3 {
    v3_connect_with(v3_options(addr, id)).await.0
}

/// Connects and waits for CONNACK; panics unless it is accepted.
pub async fn v3_connect_with(options: rumqttc::MqttOptions) -> (V3, rumqttc::ConnAck) {
    let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 64);
    let (tx, events) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(event) => {
                    if tx.send(Ok(event)).is_err() {
                        break;
                    }
                }
                Err(err) => {
                    // No reconnecting: a test that wants a new connection makes a new client.
                    let _ = tx.send(Err(err.to_string()));
                    break;
                }
            }
        }
    });
    let mut v3 = V3 {
        client,
        events,
        pending: VecDeque::new(),
        task,
    };
    let ack = loop {
        if let rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(ack)) = v3.next_event().await {
            break ack;
        }
    };
    assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success, "CONNACK");
    (v3, ack)
}

impl V3 {
    /// The next event; panics on a connection error or after [`WAIT`].
    pub async fn next_event(&mut self) -> rumqttc::Event {
        match tokio::time::timeout(WAIT, self.events.recv()).await {
            Ok(Some(Ok(event))) => event,
            Ok(Some(Err(err))) => panic!("3.1.1 connection failed: {err}"),
            Ok(None) => panic!("3.1.1 event loop ended"),
            Err(_) => panic!("no 3.1.1 event within {WAIT:?}"),
        }
    }

    /// Waits for an incoming packet matching `pick`.
    pub async fn wait_for<T>(&mut self, mut pick: impl FnMut(&rumqttc::Packet) -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let event = tokio::time::timeout_at(deadline, self.events.recv()).await;
            match event {
                Ok(Some(Ok(rumqttc::Event::Incoming(packet)))) => {
                    if let Some(found) = pick(&packet) {
                        return found;
                    }
                    if let rumqttc::Packet::Publish(publish) = packet {
                        self.pending.push_back(publish);
                    }
                }
                Ok(Some(Ok(rumqttc::Event::Outgoing(_)))) => {}
                Ok(Some(Err(err))) => panic!("3.1.1 connection failed: {err}"),
                Ok(None) => panic!("3.1.1 event loop ended"),
                Err(_) => panic!("expected 3.1.1 packet not received within {WAIT:?}"),
            }
        }
    }

    /// The next incoming PUBLISH.
    pub async fn recv_publish(&mut self) -> rumqttc::Publish {
        if let Some(publish) = self.pending.pop_front() {
            return publish;
        }
        self.wait_for(|p| match p {
            rumqttc::Packet::Publish(publish) => Some(publish.clone()),
            _ => None,
        })
        .await
    }

    /// Asserts that no PUBLISH arrives within `within` (nor arrived unread before).
    pub async fn expect_no_publish(&mut self, within: Duration) {
        if let Some(p) = self.pending.front() {
            panic!("unexpected 3.1.1 PUBLISH on {}: {:?}", p.topic, p.payload);
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))))) => {
                    panic!("unexpected 3.1.1 PUBLISH on {}: {:?}", p.topic, p.payload)
                }
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(err))) => panic!("3.1.1 connection failed: {err}"),
                Ok(None) => panic!("3.1.1 event loop ended"),
                Err(_) => return,
            }
        }
    }

    /// Subscribes and waits for the SUBACK; returns its return codes.
    pub async fn subscribe(
        &mut self,
        filter: &str,
        qos: rumqttc::QoS,
    ) -> Vec<rumqttc::SubscribeReasonCode> {
        self.client.subscribe(filter, qos).await.unwrap();
        self.wait_for(|p| match p {
            rumqttc::Packet::SubAck(ack) => Some(ack.return_codes.clone()),
            _ => None,
        })
        .await
    }

    /// Publishes and, for QoS 1 and 2, waits until the broker has acknowledged it (PUBACK,
    /// PUBCOMP); for QoS 0 until it has been written.
    pub async fn publish(&mut self, topic: &str, qos: rumqttc::QoS, retain: bool, payload: &[u8]) {
        self.client
            .publish(topic, qos, retain, payload.to_vec())
            .await
            .unwrap();
        match qos {
            rumqttc::QoS::AtMostOnce => loop {
                match self.next_event().await {
                    rumqttc::Event::Outgoing(rumqttc::Outgoing::Publish(_)) => break,
                    rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) => {
                        self.pending.push_back(p);
                    }
                    _ => {}
                }
            },
            rumqttc::QoS::AtLeastOnce => {
                self.wait_for(|p| matches!(p, rumqttc::Packet::PubAck(_)).then_some(()))
                    .await;
            }
            rumqttc::QoS::ExactlyOnce => {
                self.wait_for(|p| matches!(p, rumqttc::Packet::PubComp(_)).then_some(()))
                    .await;
            }
        }
    }

    /// Sends DISCONNECT, waits until it has been written, then closes the socket.
    pub async fn disconnect(mut self) {
        self.client.disconnect().await.unwrap();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(Ok(rumqttc::Event::Outgoing(rumqttc::Outgoing::Disconnect)))) => break,
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(_)) | None) => break,
                Err(_) => panic!("3.1.1 DISCONNECT not sent within {WAIT:?}"),
            }
        }
        self.task.abort();
        let _ = self.task.await;
    }

    /// Drops the connection without DISCONNECT (an abnormal close for the broker).
    pub async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

// ----- rumqttc, MQTT 5.0 ---------------------------------------------------------------------

pub use rumqttc::v5::mqttbytes::v5 as m5;

/// A rumqttc 5.0 client whose event loop runs in a task; events arrive on `events`.
pub struct V5 {
    pub client: rumqttc::v5::AsyncClient,
    pub events: mpsc::UnboundedReceiver<Result<rumqttc::v5::Event, String>>,
    /// PUBLISHes that arrived while a helper waited for something else.
    pending: VecDeque<m5::Publish>,
    task: JoinHandle<()>,
}

pub fn v5_options(addr: SocketAddr, id: &str) -> rumqttc::v5::MqttOptions {
    let mut options = rumqttc::v5::MqttOptions::new(id, addr.ip().to_string(), addr.port());
    options.set_keep_alive(Duration::from_secs(30));
    options
}

pub async fn v5_connect(addr: SocketAddr, id: &str) -> V5 {
    v5_connect_with(v5_options(addr, id)).await.0
}

/// Connects and waits for CONNACK; panics unless it is a success.
pub async fn v5_connect_with(options: rumqttc::v5::MqttOptions) -> (V5, m5::ConnAck) {
    let (client, mut eventloop) = rumqttc::v5::AsyncClient::new(options, 64);
    let (tx, events) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(event) => {
                    if tx.send(Ok(event)).is_err() {
                        break;
                    }
                }
                Err(err) => {
                    let _ = tx.send(Err(format!("{err:?}")));
                    break;
                }
            }
        }
    });
    let mut v5 = V5 {
        client,
        events,
        pending: VecDeque::new(),
        task,
    };
    let ack = v5
        .wait_for(|p| match p {
            m5::Packet::ConnAck(ack) => Some(ack.clone()),
            _ => None,
        })
        .await;
    assert_eq!(ack.code, m5::ConnectReturnCode::Success, "CONNACK");
    (v5, ack)
}

impl V5 {
    /// Waits for an incoming packet matching `pick`.
    pub async fn wait_for<T>(&mut self, mut pick: impl FnMut(&m5::Packet) -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(Ok(rumqttc::v5::Event::Incoming(packet)))) => {
                    if let Some(found) = pick(&packet) {
                        return found;
                    }
                    if let m5::Packet::Publish(publish) = packet {
                        self.pending.push_back(publish);
                    }
                }
                Ok(Some(Ok(rumqttc::v5::Event::Outgoing(_)))) => {}
                Ok(Some(Err(err))) => panic!("5.0 connection failed: {err}"),
                Ok(None) => panic!("5.0 event loop ended"),
                Err(_) => panic!("expected 5.0 packet not received within {WAIT:?}"),
            }
        }
    }

    /// The next incoming PUBLISH.
    pub async fn recv_publish(&mut self) -> m5::Publish {
        if let Some(publish) = self.pending.pop_front() {
            return publish;
        }
        self.wait_for(|p| match p {
            m5::Packet::Publish(publish) => Some(publish.clone()),
            _ => None,
        })
        .await
    }

    /// Asserts that no PUBLISH arrives within `within` (nor arrived unread before).
    pub async fn expect_no_publish(&mut self, within: Duration) {
        if let Some(p) = self.pending.front() {
            panic!("unexpected 5.0 PUBLISH on {:?}: {:?}", p.topic, p.payload);
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(Ok(rumqttc::v5::Event::Incoming(m5::Packet::Publish(p))))) => {
                    panic!("unexpected 5.0 PUBLISH on {:?}: {:?}", p.topic, p.payload)
                }
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(err))) => panic!("5.0 connection failed: {err}"),
                Ok(None) => panic!("5.0 event loop ended"),
                Err(_) => return,
            }
        }
    }

    /// Subscribes with `filter` and waits for the SUBACK.
    pub async fn subscribe_filter(
        &mut self,
        filter: m5::Filter,
        properties: Option<m5::SubscribeProperties>,
    ) -> m5::SubAck {
        match properties {
            Some(props) => self
                .client
                .subscribe_many_with_properties(vec![filter], props)
                .await
                .unwrap(),
            None => self.client.subscribe_many(vec![filter]).await.unwrap(),
        }
        self.wait_for(|p| match p {
            m5::Packet::SubAck(ack) => Some(ack.clone()),
            _ => None,
        })
        .await
    }

    pub async fn subscribe(
        &mut self,
        filter: &str,
        qos: rumqttc::v5::mqttbytes::QoS,
    ) -> m5::SubAck {
        self.subscribe_filter(m5::Filter::new(filter, qos), None)
            .await
    }

    /// Publishes and waits for the broker's acknowledgement (QoS 1: PUBACK, QoS 2: PUBCOMP),
    /// or for the write (QoS 0).
    pub async fn publish_with(
        &mut self,
        topic: &str,
        qos: rumqttc::v5::mqttbytes::QoS,
        retain: bool,
        payload: &[u8],
        properties: Option<m5::PublishProperties>,
    ) {
        match properties {
            Some(props) => self
                .client
                .publish_with_properties(topic, qos, retain, payload.to_vec(), props)
                .await
                .unwrap(),
            None => self
                .client
                .publish(topic, qos, retain, payload.to_vec())
                .await
                .unwrap(),
        }
        use rumqttc::v5::mqttbytes::QoS as Q;
        match qos {
            Q::AtMostOnce => {
                let deadline = tokio::time::Instant::now() + WAIT;
                loop {
                    match tokio::time::timeout_at(deadline, self.events.recv()).await {
                        Ok(Some(Ok(rumqttc::v5::Event::Outgoing(rumqttc::Outgoing::Publish(
                            _,
                        ))))) => {
                            break;
                        }
                        Ok(Some(Ok(rumqttc::v5::Event::Incoming(m5::Packet::Publish(p))))) => {
                            self.pending.push_back(p);
                        }
                        Ok(Some(Ok(_))) => {}
                        Ok(Some(Err(err))) => panic!("5.0 connection failed: {err}"),
                        Ok(None) => panic!("5.0 event loop ended"),
                        Err(_) => panic!("5.0 PUBLISH not written within {WAIT:?}"),
                    }
                }
            }
            Q::AtLeastOnce => {
                self.wait_for(|p| matches!(p, m5::Packet::PubAck(_)).then_some(()))
                    .await;
            }
            Q::ExactlyOnce => {
                self.wait_for(|p| matches!(p, m5::Packet::PubComp(_)).then_some(()))
                    .await;
            }
        }
    }

    pub async fn publish(
        &mut self,
        topic: &str,
        qos: rumqttc::v5::mqttbytes::QoS,
        retain: bool,
        payload: &[u8],
    ) {
        self.publish_with(topic, qos, retain, payload, None).await;
    }

    /// Sends DISCONNECT (reason 0x00), waits until it is written, then closes the socket.
    pub async fn disconnect(mut self) {
        self.client.disconnect().await.unwrap();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(Ok(rumqttc::v5::Event::Outgoing(rumqttc::Outgoing::Disconnect)))) => break,
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(_)) | None) => break,
                Err(_) => panic!("5.0 DISCONNECT not sent within {WAIT:?}"),
            }
        }
        self.task.abort();
        let _ = self.task.await;
    }

    /// Drops the connection without DISCONNECT.
    pub async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

// ----- a raw client on bulwark-proto ---------------------------------------------------------

/// What a raw read produced.
#[derive(Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "a test helper, returned once per read; matching on packets stays simple"
)]
pub enum Recv {
    Packet(Packet),
    /// The server closed the connection (EOF or reset).
    Closed,
    Timeout,
    /// The bytes from the server did not decode.
    Invalid(String),
}

/// A client that writes and reads packets itself, to check what libraries hide.
pub struct Raw {
    pub stream: TcpStream,
    decoder: Decoder,
    encoder: Encoder,
    pub version: ProtocolVersion,
    /// PUBLISHes that arrived while a helper waited for something else.
    pending: VecDeque<Publish>,
}

pub fn topic(text: &str) -> TopicName {
    TopicName::new(text).unwrap()
}

pub fn filter(text: &str) -> TopicFilter {
    TopicFilter::new(text).unwrap()
}

pub fn string(text: &str) -> MqttString {
    MqttString::new(text).unwrap()
}

pub fn pid(n: u16) -> PacketId {
    PacketId::new(n).unwrap()
}

pub fn user_property(name: &str, value: &str) -> UserProperty {
    UserProperty::new(string(name), string(value))
}

/// A PUBLISH with QoS and, for QoS 1 and 2, a packet identifier.
pub fn publish(topic_name: &str, qos: QoS, packet_id: u16, payload: &'static [u8]) -> Publish {
    let mut publish = Publish::new(topic(topic_name), Bytes::from_static(payload));
    publish.qos = qos;
    if qos != QoS::AtMostOnce {
        publish.packet_id = Some(pid(packet_id));
    }
    publish
}

/// A CONNECT for `version` with client id `id`, clean start, keep alive 30 s.
pub fn connect_packet(version: ProtocolVersion, id: &str) -> Connect {
    let mut connect = Connect::new(version, bulwark_proto::ClientId::new(id).unwrap());
    connect.keep_alive = 30;
    connect
}

impl Raw {
    /// Opens a TCP connection; nothing is sent.
    pub async fn tcp(addr: SocketAddr, version: ProtocolVersion) -> Self {
        let stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .expect("TCP connect in time")
            .expect("TCP connect");
        stream.set_nodelay(true).unwrap();
        Self {
            stream,
            decoder: Decoder::client(version, DecoderLimits::PROTOCOL),
            encoder: Encoder::new(version),
            version,
            pending: VecDeque::new(),
        }
    }

    /// Opens a TCP connection from the loopback address `local` (any of 127.0.0.0/8), so
    /// that a test can play several source addresses.
    pub async fn tcp_from(
        addr: SocketAddr,
        local: std::net::IpAddr,
        version: ProtocolVersion,
    ) -> Self {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(SocketAddr::new(local, 0))
            .expect("bind the source address");
        let stream = tokio::time::timeout(WAIT, socket.connect(addr))
            .await
            .expect("TCP connect in time")
            .expect("TCP connect");
        stream.set_nodelay(true).unwrap();
        Self {
            stream,
            decoder: Decoder::client(version, DecoderLimits::PROTOCOL),
            encoder: Encoder::new(version),
            version,
            pending: VecDeque::new(),
        }
    }

    /// Sends `connect` and returns the CONNACK.
    pub async fn connect(addr: SocketAddr, connect: &Connect) -> (Self, ConnAck) {
        let mut raw = Self::tcp(addr, connect.protocol_version).await;
        raw.send(connect).await;
        match raw.recv().await {
            Packet::ConnAck(ack) => (raw, *ack),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// A 5.0 connection with client id `id`; panics unless CONNACK is a success.
    pub async fn v5(addr: SocketAddr, id: &str) -> (Self, ConnAck) {
        let (raw, ack) = Self::connect(addr, &connect_packet(ProtocolVersion::V5, id)).await;
        assert_eq!(
            ack.reason_code,
            bulwark_proto::ReasonCode::Success,
            "{ack:?}"
        );
        (raw, ack)
    }

    pub async fn send<P: Encode + ?Sized>(&mut self, packet: &P) {
        let mut buf = BytesMut::new();
        self.encoder.encode(packet, &mut buf).expect("encodes");
        self.send_bytes(&buf).await;
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// Sends `packet` to a server that may close the connection before the whole packet is
    /// written (it refuses a packet too large from its fixed header, resets a socket it
    /// refuses): a failed write is then the expected outcome, not a test failure. What the
    /// server sent before closing is read afterwards ([`Raw::until_closed`]).
    pub async fn send_to_closing<P: Encode + ?Sized>(&mut self, packet: &P) {
        let mut buf = BytesMut::new();
        self.encoder.encode(packet, &mut buf).expect("encodes");
        let _ = self.stream.write_all(&buf).await;
    }

    /// The next packet, EOF, a decode failure, or a timeout after `within`.
    pub async fn recv_within(&mut self, within: Duration) -> Recv {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match self.decoder.poll_packet() {
                Ok(Some(packet)) => return Recv::Packet(packet),
                Ok(None) => {}
                Err(err) => return Recv::Invalid(err.to_string()),
            }
            let buf = self.decoder.buffer_mut();
            buf.reserve(16 * 1024);
            match tokio::time::timeout_at(deadline, self.stream.read_buf(buf)).await {
                Ok(Ok(0) | Err(_)) => return Recv::Closed,
                Ok(Ok(_)) => {}
                Err(_) => return Recv::Timeout,
            }
        }
    }

    /// The next packet; panics on anything else within [`WAIT`].
    pub async fn recv(&mut self) -> Packet {
        match self.recv_within(WAIT).await {
            Recv::Packet(packet) => packet,
            other => panic!("expected a packet, got {other:?}"),
        }
    }

    /// The next PUBLISH (other packets are skipped).
    pub async fn recv_publish(&mut self) -> Publish {
        if let Some(publish) = self.pending.pop_front() {
            return publish;
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.recv_within(left).await {
                Recv::Packet(Packet::Publish(publish)) => return publish,
                Recv::Packet(_) => {}
                other => panic!("expected PUBLISH, got {other:?}"),
            }
        }
    }

    /// Asserts that no PUBLISH arrives within `within`, nor arrived unread before (other
    /// packets are skipped).
    pub async fn expect_no_publish(&mut self, within: Duration) {
        if let Some(publish) = self.pending.front() {
            panic!("unexpected PUBLISH: {publish:?}");
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.recv_within(left).await {
                Recv::Packet(Packet::Publish(publish)) => {
                    panic!("unexpected PUBLISH: {publish:?}")
                }
                Recv::Packet(_) => {}
                Recv::Timeout => return,
                other => panic!("connection ended while watching for PUBLISH: {other:?}"),
            }
        }
    }

    /// Reads until the server closes the connection, within `within`; returns what came.
    pub async fn until_closed(&mut self, within: Duration) -> Vec<Packet> {
        let deadline = tokio::time::Instant::now() + within;
        let mut packets = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.recv_within(left).await {
                Recv::Packet(packet) => packets.push(packet),
                Recv::Closed => return packets,
                Recv::Timeout => {
                    panic!("connection not closed within {within:?}; received {packets:?}")
                }
                Recv::Invalid(err) => panic!("undecodable bytes from the server: {err}"),
            }
        }
    }

    /// Expects a DISCONNECT with `code` (possibly after other packets) and then the close.
    pub async fn expect_disconnect(&mut self, code: bulwark_proto::ReasonCode) {
        let packets = self.until_closed(WAIT).await;
        let disconnect = packets.iter().find_map(|p| match p {
            Packet::Disconnect(d) => Some(d),
            _ => None,
        });
        match disconnect {
            Some(d) => assert_eq!(d.reason_code, code, "DISCONNECT reason code: {d:?}"),
            None => panic!("closed without DISCONNECT {code:?}; received {packets:?}"),
        }
        assert!(
            matches!(packets.last(), Some(Packet::Disconnect(_))),
            "DISCONNECT is the last packet: {packets:?}"
        );
    }

    /// Subscribes to one filter with `options` and an optional Subscription Identifier.
    pub async fn subscribe(
        &mut self,
        packet_id: u16,
        filter_text: &str,
        options: SubscriptionOptions,
        id: Option<u32>,
    ) -> SubAck {
        let subscribe = Subscribe {
            packet_id: pid(packet_id),
            properties: SubscribeProperties {
                subscription_identifier: id.map(|i| SubscriptionId::new(i).unwrap()),
                ..SubscribeProperties::default()
            },
            subscriptions: vec![Subscription {
                filter: filter(filter_text),
                options,
            }],
        };
        self.send(&subscribe).await;
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.recv_within(left).await {
                Recv::Packet(Packet::SubAck(ack)) => {
                    assert_eq!(ack.packet_id, pid(packet_id));
                    return ack;
                }
                Recv::Packet(Packet::Publish(publish)) => self.pending.push_back(publish),
                Recv::Packet(_) => {}
                other => panic!("expected SUBACK, got {other:?}"),
            }
        }
    }

    /// Subscribes with only a maximum QoS; asserts the grant.
    pub async fn subscribe_qos(&mut self, packet_id: u16, filter_text: &str, qos: QoS) {
        let ack = self
            .subscribe(packet_id, filter_text, SubscriptionOptions::qos(qos), None)
            .await;
        assert_eq!(ack.reason_codes.len(), 1);
        assert_eq!(ack.reason_codes[0].as_u8(), qos.as_u8(), "{ack:?}");
    }
}
