//! Durability against the real binary: QoS 1 and 2 messages for persistent sessions whose
//! subscribers are offline, the broker killed with SIGKILL in the middle of the stream,
//! restarted on the same data directory: every acknowledged message arrives, QoS 2 exactly
//! once; sessions, retained messages and expiry hold across restarts.
#![cfg(unix)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests"
)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use bulwark_proto::{
    ClientId, ConnAck, Connect, ConnectProperties, Decoder, DecoderLimits, Encode, Encoder, Packet,
    PacketId, ProtocolVersion, PubAck, PubComp, PubRec, PubRel, Publish, PublishProperties, QoS,
    ReasonCode, Subscribe, Subscription, SubscriptionOptions, TopicFilter, TopicName,
};
use bytes::Bytes;

struct Broker {
    child: Child,
    log: Receiver<String>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A loopback listener for anyone, no authorization, roomy session queues unless `extra`
/// has its own `[limits]`.
fn write_config(dir: &Path, port: u16, extra: &str) -> PathBuf {
    let cfg = dir.join("bulwark.toml");
    let limits = if extra.contains("[limits]") {
        ""
    } else {
        "[limits]\nmax_queued_messages = 100000\nmax_queued_bytes = 104857600\n\n"
    };
    std::fs::write(
        &cfg,
        format!(
            "[[listener]]\nname = \"open\"\nbind = \"127.0.0.1:{port}\"\ndangerous_allow_anonymous = true\n\n\
             [acl]\ndangerous_allow_all = true\n\n{limits}{extra}"
        ),
    )
    .unwrap();
    cfg
}

/// A test that fails leaves no broker behind.
impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Broker {
    fn start(dir: &Path, port: u16, extra: &str) -> Self {
        let cfg = write_config(dir, port, extra);
        let mut child = Command::new(env!("CARGO_BIN_EXE_bulwark"))
            .args(["serve", "--config"])
            .arg(&cfg)
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(["--workers", "2"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, log) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let broker = Self { child, log };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the broker did not listen:\n{}",
                broker.logged()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        broker
    }

    fn logged(&self) -> String {
        let mut text = String::new();
        while let Ok(line) = self.log.try_recv() {
            text.push_str(&line);
            text.push('\n');
        }
        text
    }

    /// SIGKILL: no shutdown, no last commit.
    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, and waits for the orderly stop.
    fn stop(mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let status = self.child.wait().unwrap();
        assert!(status.success(), "{status}\n{}", self.logged());
    }
}

/// A blocking MQTT 5 client that speaks through the broker's own codec.
struct Client {
    stream: TcpStream,
    decoder: Decoder,
    encoder: Encoder,
}

impl Client {
    fn connect(port: u16, id: &str, clean_start: bool, expiry: u32) -> (Self, ConnAck) {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_nodelay(true).unwrap();
        let mut client = Self {
            stream,
            decoder: Decoder::client(ProtocolVersion::V5, DecoderLimits::PROTOCOL),
            encoder: Encoder::new(ProtocolVersion::V5),
        };
        let mut connect = Connect::new(ProtocolVersion::V5, ClientId::new(id).unwrap());
        connect.clean_start = clean_start;
        connect.keep_alive = 60;
        connect.properties = ConnectProperties {
            session_expiry_interval: Some(expiry),
            receive_maximum: Some(NonZero(1000).get()),
            ..ConnectProperties::default()
        };
        client.send(&connect);
        match client.recv(Duration::from_secs(10)) {
            Some(Packet::ConnAck(ack)) => {
                assert_eq!(ack.reason_code, ReasonCode::Success, "{ack:?}");
                (client, *ack)
            }
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    fn send<P: Encode + ?Sized>(&mut self, packet: &P) -> bool {
        let mut buf = bytes::BytesMut::new();
        self.encoder.encode(packet, &mut buf).unwrap();
        self.stream.write_all(&buf).is_ok()
    }

    /// The next packet; `None` on timeout or when the connection ends.
    fn recv(&mut self, within: Duration) -> Option<Packet> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(packet) = self.decoder.poll_packet().unwrap() {
                return Some(packet);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            let mut buf = [0u8; 16 * 1024];
            match self.stream.read(&mut buf) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.decoder.handle_bytes(&buf[..n]),
            }
        }
    }

    fn subscribe(&mut self, filter: &str, qos: QoS) {
        let subscribe = Subscribe {
            packet_id: PacketId::new(1).unwrap(),
            properties: Default::default(),
            subscriptions: vec![Subscription {
                filter: TopicFilter::new(filter).unwrap(),
                options: SubscriptionOptions::qos(qos),
            }],
        };
        self.send(&subscribe);
        match self.recv(Duration::from_secs(10)) {
            Some(Packet::SubAck(_)) => {}
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    /// Receives messages until none comes for `quiet`, completing each QoS 1/2 exchange;
    /// returns each payload with the QoS it came with.
    fn drain(&mut self, quiet: Duration) -> Vec<(String, QoS)> {
        let mut got = Vec::new();
        while let Some(packet) = self.recv(quiet) {
            match packet {
                Packet::Publish(p) => {
                    let text = String::from_utf8(p.payload.to_vec()).unwrap();
                    match (p.qos, p.packet_id) {
                        (QoS::AtLeastOnce, Some(id)) => {
                            self.send(&PubAck::new(id));
                        }
                        (QoS::ExactlyOnce, Some(id)) => {
                            self.send(&PubRec::new(id));
                        }
                        _ => {}
                    }
                    got.push((text, p.qos));
                }
                Packet::PubRel(rel) => {
                    self.send(&PubComp::new(rel.packet_id));
                }
                _ => {}
            }
        }
        got
    }
}

/// `NonZeroU16` from a literal.
struct NonZero(u16);

impl NonZero {
    fn get(self) -> std::num::NonZeroU16 {
        std::num::NonZeroU16::new(self.0).unwrap()
    }
}

fn publish(topic: &str, qos: QoS, id: u16, payload: String, retain: bool) -> Publish {
    let mut p = Publish::new(TopicName::new(topic).unwrap(), Bytes::from(payload));
    p.qos = qos;
    p.retain = retain;
    p.packet_id = (qos != QoS::AtMostOnce).then(|| PacketId::new(id).unwrap());
    p
}

/// Runs `bulwark store COMMAND --path STORE`: its exit status and standard output.
fn store_tool(command: &str, store: &Path) -> (std::process::ExitStatus, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_bulwark"))
        .args(["store", command, "--path"])
        .arg(store)
        .output()
        .unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("bulwark-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Publishes message `i` as QoS 1 (even) or 2 (odd) with up to 32 in flight until the
/// connection breaks; returns the numbers the broker acknowledged (PUBACK, or PUBREC for
/// QoS 2: from then on the message is the broker's) and the ones sent.
fn publish_until_cut(port: u16) -> (BTreeSet<u32>, u32) {
    let (mut c, _) = Client::connect(port, "crash-pub", true, 0);
    let mut acked = BTreeSet::new();
    let mut inflight: HashMap<u16, u32> = HashMap::new();
    let mut next = 0u32;
    let mut free: Vec<u16> = (1..=32).collect();
    loop {
        while let Some(id) = free.pop() {
            let qos = if next.is_multiple_of(2) {
                QoS::AtLeastOnce
            } else {
                QoS::ExactlyOnce
            };
            if !c.send(&publish("crash/t", qos, id, format!("m{next}"), false)) {
                return (acked, next);
            }
            inflight.insert(id, next);
            next += 1;
        }
        match c.recv(Duration::from_secs(10)) {
            Some(Packet::PubAck(ack)) => {
                if let Some(i) = inflight.remove(&ack.packet_id.get()) {
                    assert_eq!(ack.reason_code, ReasonCode::Success);
                    acked.insert(i);
                    free.push(ack.packet_id.get());
                }
            }
            Some(Packet::PubRec(rec)) => {
                if let Some(&i) = inflight.get(&rec.packet_id.get()) {
                    assert_eq!(rec.reason_code, ReasonCode::Success);
                    acked.insert(i);
                }
                c.send(&PubRel::new(rec.packet_id));
            }
            Some(Packet::PubComp(comp)) => {
                if inflight.remove(&comp.packet_id.get()).is_some() {
                    free.push(comp.packet_id.get());
                }
            }
            Some(other) => panic!("unexpected {other:?}"),
            None => return (acked, next),
        }
    }
}

#[test]
fn sigkill_mid_stream_loses_no_acknowledged_message() {
    let dir = temp_dir("crash");
    let port = free_port();
    let broker = Broker::start(&dir, port, "");
    // Three persistent sessions, offline from now on: two take QoS 2, one QoS 1.
    let subscribers = [
        ("crash-q2-a", QoS::ExactlyOnce),
        ("crash-q2-b", QoS::ExactlyOnce),
        ("crash-q1", QoS::AtLeastOnce),
    ];
    for (id, qos) in subscribers {
        let (mut c, _) = Client::connect(port, id, true, 3_600);
        c.subscribe("crash/#", qos);
    }
    let publisher = std::thread::spawn(move || publish_until_cut(port));
    // Kill it once a few hundred messages are acknowledged (the stream goes on meanwhile).
    std::thread::sleep(Duration::from_millis(1_500));
    broker.kill();
    let (acked, sent) = publisher.join().unwrap();
    assert!(
        acked.len() >= 50,
        "only {} of {sent} acknowledged before the kill",
        acked.len()
    );
    eprintln!(
        "{} of {sent} messages acknowledged before the kill",
        acked.len()
    );

    // `store check` on the killed broker's file: intact, recovered as a start would, and the
    // file itself left as it was.
    let store = dir.join("data/store.redb");
    let before = std::fs::read(&store).unwrap();
    let (check, text) = store_tool("check", &store);
    assert!(check.success(), "{text}");
    assert!(text.contains("no damage found"), "{text}");
    assert!(
        std::fs::read(&store).unwrap() == before,
        "check changed the file"
    );

    let broker = Broker::start(&dir, port, "");
    for (id, qos) in subscribers {
        let (mut c, ack) = Client::connect(port, id, false, 3_600);
        assert!(ack.session_present, "{id}: the session survived the kill");
        let got = c.drain(Duration::from_secs(2));
        let mut counts: BTreeMap<u32, usize> = BTreeMap::new();
        for (text, _) in &got {
            let i: u32 = text.strip_prefix('m').unwrap().parse().unwrap();
            assert!(i < sent, "{id}: m{i} was never published");
            *counts.entry(i).or_default() += 1;
        }
        let missing: Vec<_> = acked.iter().filter(|i| !counts.contains_key(i)).collect();
        assert!(
            missing.is_empty(),
            "{id}: {} acknowledged messages lost, first {:?} (got {} of {} acknowledged, {sent} sent)",
            missing.len(),
            missing.first(),
            counts.len(),
            acked.len()
        );
        if qos == QoS::ExactlyOnce {
            let twice: Vec<_> = counts
                .iter()
                .filter(|(i, n)| *i % 2 == 1 && **n > 1)
                .collect();
            assert!(twice.is_empty(), "{id}: QoS 2 messages twice: {twice:?}");
        }
        // In order: the messages of one publisher keep their order.
        let order: Vec<u32> = got.iter().map(|(t, _)| t[1..].parse().unwrap()).collect();
        let mut sorted = order.clone();
        sorted.sort_unstable();
        sorted.dedup();
        let mut first_seen = order.clone();
        let mut seen = BTreeSet::new();
        first_seen.retain(|i| seen.insert(*i));
        assert_eq!(first_seen, sorted, "{id}: out of order");
    }
    broker.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sessions_retained_messages_and_expiry_survive_clean_restarts() {
    let dir = temp_dir("restart");
    let port = free_port();
    let broker = Broker::start(&dir, port, "");
    {
        // A session that outlives the restarts, one that expires while the broker is down,
        // and a retained message.
        // (Both offline before anything is published: a message whose delivery has begun is
        // delivered even once expired.)
        for (id, expiry) in [("keeper", 3_600), ("brief", 2)] {
            let (mut c, _) = Client::connect(port, id, true, expiry);
            c.subscribe("r/#", QoS::AtLeastOnce);
            c.send(&bulwark_proto::Disconnect::new(ReasonCode::Success));
        }
        let (mut p, _) = Client::connect(port, "pub", true, 0);
        p.send(&publish(
            "r/a",
            QoS::AtLeastOnce,
            1,
            "kept".to_owned(),
            true,
        ));
        assert!(matches!(
            p.recv(Duration::from_secs(10)),
            Some(Packet::PubAck(_))
        ));
        let mut q = publish("r/b", QoS::AtLeastOnce, 2, "short-lived".to_owned(), false);
        q.properties = PublishProperties {
            message_expiry_interval: Some(2),
            ..PublishProperties::default()
        };
        p.send(&q);
        assert!(matches!(
            p.recv(Duration::from_secs(10)),
            Some(Packet::PubAck(_))
        ));
    }
    broker.stop();
    // Down for longer than "brief"'s expiry and the second message's.
    std::thread::sleep(Duration::from_millis(3_000));
    let broker = Broker::start(&dir, port, "");
    let (mut c, ack) = Client::connect(port, "keeper", false, 3_600);
    assert!(ack.session_present);
    let got = c.drain(Duration::from_secs(1));
    assert_eq!(
        got.iter().map(|(t, _)| t.as_str()).collect::<Vec<_>>(),
        vec!["kept"],
        "the expired message is not delivered"
    );
    let (_, ack) = Client::connect(port, "brief", false, 3_600);
    assert!(
        !ack.session_present,
        "the session expired while the broker was down"
    );
    // The retained message, to a new subscriber, after a second restart.
    broker.stop();
    let broker = Broker::start(&dir, port, "");
    let (mut n, _) = Client::connect(port, "newcomer", true, 0);
    n.subscribe("r/#", QoS::AtLeastOnce);
    let got = n.drain(Duration::from_secs(1));
    assert_eq!(
        got.iter().map(|(t, _)| t.as_str()).collect::<Vec<_>>(),
        vec!["kept"]
    );
    broker.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_damaged_store_stops_the_broker_with_its_name_and_store_repair_fixes_it() {
    let dir = temp_dir("damaged");
    let port = free_port();
    let broker = Broker::start(&dir, port, "");
    {
        let (mut c, _) = Client::connect(port, "holder", true, 3_600);
        c.subscribe("d/#", QoS::AtLeastOnce);
        drop(c);
        let (mut p, _) = Client::connect(port, "pub", true, 0);
        for i in 0..20u16 {
            p.send(&publish(
                "d/x",
                QoS::AtLeastOnce,
                i + 1,
                format!("payload-{i:03}"),
                false,
            ));
            assert!(matches!(
                p.recv(Duration::from_secs(10)),
                Some(Packet::PubAck(_))
            ));
        }
    }
    broker.stop();
    let store = dir.join("data/store.redb");
    // Every copy of one payload in the file (copy-on-write leaves old pages behind; one of
    // the copies is the live one).
    let mut bytes = std::fs::read(&store).unwrap();
    let copies: Vec<usize> = bytes
        .windows(11)
        .enumerate()
        .filter(|(_, w)| *w == b"payload-007")
        .map(|(at, _)| at)
        .collect();
    assert!(!copies.is_empty(), "the payload is in the file");
    for at in copies {
        bytes[at + 10] ^= 0x04;
    }
    std::fs::write(&store, &bytes).unwrap();

    let mut refused = Command::new(env!("CARGO_BIN_EXE_bulwark"))
        .args(["serve", "--config"])
        .arg(write_config(&dir, port, ""))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = refused.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = refused.kill();
            panic!("the broker started on a damaged store");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    refused
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(!status.success());
    assert!(
        err.contains("store.redb") && err.contains("session \"holder\""),
        "{err}"
    );
    let (check, text) = store_tool("check", &store);
    assert_eq!(check.code(), Some(1), "{text}");
    assert!(
        text.contains("message") && text.contains("checksum"),
        "{text}"
    );
    let (repair, text) = store_tool("repair", &store);
    assert!(repair.success(), "{text}");
    assert!(text.contains("kept 1 sessions, 19 messages"), "{text}");

    let broker = Broker::start(&dir, port, "");
    let (mut c, ack) = Client::connect(port, "holder", false, 3_600);
    assert!(ack.session_present);
    let got = c.drain(Duration::from_secs(1));
    assert_eq!(got.len(), 19, "{got:?}");
    assert!(!got.iter().any(|(t, _)| t == "payload-007"));
    broker.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

/// What a session holds in the store is bounded by its queue limit, and the file gives the
/// space back once the messages are delivered (compaction at start).
#[test]
fn a_session_holds_at_most_its_queue_in_the_store_and_the_file_shrinks_after_delivery() {
    let dir = temp_dir("bounded");
    let port = free_port();
    let limits = "[limits]\nmax_queued_messages = 500\n";
    let broker = Broker::start(&dir, port, limits);
    {
        let (mut c, _) = Client::connect(port, "slow", true, 3_600);
        c.subscribe("b/#", QoS::AtLeastOnce);
    }
    std::thread::sleep(Duration::from_millis(200));
    let (mut p, _) = Client::connect(port, "pub", true, 0);
    let payload = "x".repeat(4_000);
    for round in 0..20u32 {
        for i in 1..=100u16 {
            p.send(&publish(
                "b/x",
                QoS::AtLeastOnce,
                i,
                format!("{round}-{i}-{payload}"),
                false,
            ));
        }
        for _ in 0..100 {
            assert!(matches!(
                p.recv(Duration::from_secs(10)),
                Some(Packet::PubAck(_))
            ));
        }
    }
    broker.stop();
    let store = dir.join("data/store.redb");
    let full = std::fs::metadata(&store).unwrap().len();
    let (check, text) = store_tool("check", &store);
    assert!(check.success(), "{text}");
    assert!(text.contains("messages: 500,"), "{text}");

    let broker = Broker::start(&dir, port, limits);
    let (mut c, _) = Client::connect(port, "slow", false, 3_600);
    assert_eq!(c.drain(Duration::from_secs(2)).len(), 500);
    drop(c);
    std::thread::sleep(Duration::from_millis(200));
    broker.stop();
    // Compacted at the next start.
    Broker::start(&dir, port, limits).stop();
    let empty = std::fs::metadata(&store).unwrap().len();
    eprintln!("store: {full} bytes holding 500 messages of 4 KB, {empty} bytes once delivered");
    assert!(
        empty * 4 < full,
        "{full} bytes with 500 messages of 4 KB, {empty} bytes once delivered"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
