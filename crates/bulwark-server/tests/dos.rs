//! Denial of service end to end: admission control before any handshake, and sockets that
//! never finish their CONNECT, on real sockets from several 127/8 source addresses.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code"
)]

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bulwark_limits::admission::AdmissionSettings;
use bulwark_proto::{ProtocolVersion, QoS, ReasonCode};
use common::{Raw, Recv, connect_packet};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

fn from(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))
}

/// A socket from `local`, or `None` if the server reset it before the connect completed (a
/// socket refused at accept is reset at once, which may overtake the connect).
async fn try_tcp_from(addr: SocketAddr, local: IpAddr) -> Option<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(local, 0)).unwrap();
    match tokio::time::timeout(common::WAIT, socket.connect(addr))
        .await
        .expect("TCP connect in time")
    {
        Ok(stream) => Some(stream),
        Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => None,
        Err(err) => panic!("TCP connect: {err}"),
    }
}

/// A socket from `local` the server accepted and has not reset.
async fn tcp_from(addr: SocketAddr, local: IpAddr) -> TcpStream {
    try_tcp_from(addr, local)
        .await
        .expect("TCP connect, not reset")
}

/// Whether a new socket from `local` is refused: reset at once, or closed within `within`
/// without the server sending anything.
async fn refused(addr: SocketAddr, local: IpAddr, within: Duration) -> bool {
    match try_tcp_from(addr, local).await {
        None => true,
        Some(mut stream) => closed_within(&mut stream, within).await,
    }
}

/// Whether the server closes `stream` within `within` without sending anything.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 16];
    matches!(
        tokio::time::timeout(within, stream.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

/// A 5.0 client from `local`: CONNECT, expecting success.
async fn mqtt_from(addr: SocketAddr, local: IpAddr, id: &str) -> Raw {
    let mut raw = Raw::tcp_from(addr, local, ProtocolVersion::V5).await;
    raw.send(&connect_packet(ProtocolVersion::V5, id)).await;
    match raw.recv().await {
        bulwark_proto::Packet::ConnAck(ack) => {
            assert_eq!(ack.reason_code, ReasonCode::Success, "{ack:?}");
        }
        other => panic!("expected CONNACK, got {other:?}"),
    }
    raw
}

#[tokio::test]
async fn a_connection_flood_from_one_address_does_not_stop_another() {
    let server = common::start_with(|c| {
        c.admission = AdmissionSettings {
            exempt: Vec::new(),
            rate: 2,
            burst: 20,
            cooldown: Duration::from_secs(30),
            ..AdmissionSettings::default()
        };
    })
    .await;
    let attacker = from(2);
    // All at once, then see which the server kept: the burst, give or take a token refilled
    // while the loop ran.
    let mut streams = Vec::new();
    for _ in 0..100 {
        streams.extend(try_tcp_from(server.addr, attacker).await);
    }
    let mut kept = 0;
    for stream in &mut streams {
        if !closed_within(stream, Duration::from_millis(20)).await {
            kept += 1;
        }
    }
    assert!(
        (20..=23).contains(&kept),
        "the burst is let in, the rest refused: {kept}"
    );
    // Cooling off: even a single new socket from the attacker is refused now.
    assert!(refused(server.addr, attacker, Duration::from_millis(500)).await);
    // Another address connects and works.
    let mut other = mqtt_from(server.addr, from(3), "bystander").await;
    other.subscribe_qos(1, "t/#", QoS::AtLeastOnce).await;
    server.stop().await;
}

#[tokio::test]
async fn per_address_caps_hold_without_a_rate() {
    let server = common::start_with(|c| {
        c.admission = AdmissionSettings {
            exempt: Vec::new(),
            rate: 0,
            max_per_address: 5,
            max_handshakes_per_address: 3,
            ..AdmissionSettings::default()
        };
    })
    .await;
    // Three silent sockets use the address's handshake room ...
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(tcp_from(server.addr, from(4)).await);
    }
    assert!(refused(server.addr, from(4), Duration::from_millis(500)).await);
    // ... while a finished login does not count as a handshake any more.
    drop(silent);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut clients = Vec::new();
    for i in 0..5 {
        clients.push(mqtt_from(server.addr, from(4), &format!("c{i}")).await);
    }
    assert!(
        refused(server.addr, from(4), Duration::from_millis(500)).await,
        "max_per_address"
    );
    let _ = mqtt_from(server.addr, from(5), "elsewhere").await;
    server.stop().await;
}

#[tokio::test]
async fn a_thousand_silent_sockets_are_closed_on_time_while_a_client_works() {
    let server = common::start_with(|c| c.connect_timeout = Duration::from_secs(2)).await;
    let mut subscriber = mqtt_from(server.addr, from(1), "worker-sub").await;
    subscriber
        .subscribe_qos(1, "work/#", QoS::AtLeastOnce)
        .await;
    let mut publisher = mqtt_from(server.addr, from(1), "worker-pub").await;
    let started = Instant::now();
    let mut silent = Vec::with_capacity(1000);
    for i in 0..1000u32 {
        // Spread over addresses, as a botnet would.
        let local = from(10 + u8::try_from(i % 200).unwrap());
        silent.push(tcp_from(server.addr, local).await);
    }
    // Meanwhile messages still flow both ways.
    for n in 1..=20u16 {
        publisher
            .send(&common::publish("work/item", QoS::AtLeastOnce, n, b"x"))
            .await;
        let got = subscriber.recv_publish().await;
        assert_eq!(got.topic.as_str(), "work/item");
    }
    let mut open = 0;
    for stream in &mut silent {
        let left = Duration::from_secs(5).saturating_sub(started.elapsed());
        if !closed_within(stream, left).await {
            open += 1;
        }
    }
    let took = started.elapsed();
    assert_eq!(open, 0, "every silent socket is closed");
    assert!(
        took < Duration::from_secs(5),
        "closed by the 2 s CONNECT timeout: {took:?}"
    );
    // The working clients are still connected.
    publisher
        .send(&common::publish("work/done", QoS::AtMostOnce, 0, b"y"))
        .await;
    assert_eq!(subscriber.recv_publish().await.topic.as_str(), "work/done");
    assert!(matches!(
        subscriber.recv_within(Duration::from_millis(50)).await,
        Recv::Timeout
    ));
    server.stop().await;
}

#[tokio::test]
async fn a_client_over_its_rate_is_slowed_not_dropped() {
    use bulwark_limits::rate::{RateLimit, RateOverride, RateSettings};
    let server = common::start_with(|c| {
        c.rates = RateSettings {
            default: RateLimit::default(),
            overrides: vec![RateOverride {
                listener: Some("test".to_owned()),
                limit: RateLimit {
                    messages_per_second: 40,
                    messages_burst: 5,
                    bytes_per_second: 40 * 1024,
                    bytes_burst: 4 * 1024,
                },
                ..RateOverride::default()
            }],
        };
    })
    .await;
    let mut subscriber = mqtt_from(server.addr, from(1), "rate-sub").await;
    subscriber.subscribe_qos(1, "rate/#", QoS::AtMostOnce).await;
    let mut publisher = mqtt_from(server.addr, from(1), "rate-pub").await;
    let payload: &'static [u8] = &[7u8; 1000];
    let started = Instant::now();
    for _ in 0..60 {
        publisher
            .send(&common::publish("rate/x", QoS::AtMostOnce, 0, payload))
            .await;
    }
    for i in 0..60 {
        let got = subscriber.recv_publish().await;
        assert_eq!(got.payload.len(), 1000, "message {i}");
    }
    let took = started.elapsed();
    // 60 messages (60 KB) at 40/s (40 KB/s) after a burst of 5 (4 KB): at least 1.3 s, less
    // what one read can take beyond the rate.
    assert!(took >= Duration::from_millis(1000), "not slowed: {took:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    server.stop().await;
}

/// The reason code of the PUBACK for packet `id`, skipping other packets.
async fn puback_code(raw: &mut Raw, id: u16) -> ReasonCode {
    loop {
        match raw.recv().await {
            bulwark_proto::Packet::PubAck(ack) if ack.packet_id == common::pid(id) => {
                return ack.reason_code;
            }
            bulwark_proto::Packet::PubAck(_) | bulwark_proto::Packet::Publish(_) => {}
            other => panic!("expected PUBACK {id}, got {other:?}"),
        }
    }
}

async fn suback_code(raw: &mut Raw, id: u16, filter: &str) -> ReasonCode {
    let options = bulwark_proto::SubscriptionOptions::qos(QoS::AtMostOnce);
    raw.subscribe(id, filter, options, None).await.reason_codes[0]
}

#[tokio::test]
async fn storms_hit_their_limits_with_the_documented_codes() {
    let server = common::start_with(|c| {
        c.broker.sessions.max_subscriptions_per_session = 5;
        c.broker.sessions.receive_maximum = 3;
        c.broker.retained.max_retained_messages = 4;
        c.broker.packets.max_user_properties = 4;
    })
    .await;
    // A subscription storm: the sixth filter is over the session's cap.
    let mut raw = mqtt_from(server.addr, from(1), "storm-sub").await;
    for i in 1..=5u16 {
        assert_eq!(
            suback_code(&mut raw, i, &format!("s/{i}")).await,
            ReasonCode::Success
        );
    }
    assert_eq!(
        suback_code(&mut raw, 6, "s/6").await,
        ReasonCode::QuotaExceeded
    );
    // A retained storm: the fifth retained topic is over the broker's cap.
    let mut retained = mqtt_from(server.addr, from(1), "storm-retain").await;
    for i in 1..=5u16 {
        let mut p = common::publish(&format!("r/{i}"), QoS::AtLeastOnce, i, b"keep");
        p.retain = true;
        retained.send(&p).await;
        let code = puback_code(&mut retained, i).await;
        let expected = if i <= 4 {
            ReasonCode::NoMatchingSubscribers
        } else {
            ReasonCode::QuotaExceeded
        };
        assert_eq!(code, expected, "retained {i}");
    }
    // A QoS 2 flood without PUBREL: past the Receive Maximum, the client is disconnected.
    let mut qos2 = mqtt_from(server.addr, from(1), "storm-qos2").await;
    for i in 1..=4u16 {
        qos2.send(&common::publish("q/x", QoS::ExactlyOnce, i, b"x"))
            .await;
    }
    qos2.expect_disconnect(ReasonCode::ReceiveMaximumExceeded)
        .await;
    // A user-property flood.
    let mut props = mqtt_from(server.addr, from(1), "storm-props").await;
    let mut p = common::publish("p/x", QoS::AtMostOnce, 0, b"x");
    for i in 0..5 {
        p.properties
            .user_properties
            .push(common::user_property(&format!("k{i}"), "v"));
    }
    props.send(&p).await;
    props.expect_disconnect(ReasonCode::QuotaExceeded).await;
    server.stop().await;
}

/// The password of every user [`password_store`] makes.
const PASSWORD: &str = "violet-Harbour-lantern-93";

/// A new directory with a password store of `users` (password [`PASSWORD`]); returns the
/// directory and the store's path.
fn password_store(prefix: &str, users: &[&str]) -> (std::path::PathBuf, std::path::PathBuf) {
    use bulwark_auth::password::{Argon2Params, PasswordStore, hash_password};
    let dir = std::env::temp_dir().join(common::unique(prefix));
    std::fs::create_dir_all(&dir).unwrap();
    let mut store = PasswordStore::new();
    let hash = hash_password(PASSWORD, &Argon2Params::default()).unwrap();
    for user in users {
        store.add(user, &hash, Vec::new()).unwrap();
    }
    let store_path = dir.join("passwords.toml");
    bulwark_server::files::save_store(&store_path, &store).unwrap();
    (dir, store_path)
}

#[tokio::test]
async fn per_user_quotas_hold_across_connections() {
    let (dir, store_path) = password_store("bulwark-quota", &["u1", "u2"]);
    let server = common::start_secure_with(|c| {
        c.auth.password_file = Some(store_path.clone());
        c.auth.max_connections_per_user = 2;
        c.broker.per_user.max_subscriptions_per_user = 3;
        c.broker.per_user.max_retained_per_user = 2;
        c.broker.per_user.max_retained_bytes_per_user = 100;
    })
    .await;
    let login = |user: &str, id: &str| {
        let mut connect = connect_packet(ProtocolVersion::V5, id);
        connect.username = Some(common::string(user));
        connect.password = Some(bytes::Bytes::from(PASSWORD));
        connect
    };
    let (mut c1, ack) = Raw::connect(server.addr, &login("u1", "c1")).await;
    assert_eq!(ack.reason_code, ReasonCode::Success);
    let (mut c2, ack) = Raw::connect(server.addr, &login("u1", "c2")).await;
    assert_eq!(ack.reason_code, ReasonCode::Success);
    let (_c3, ack) = Raw::connect(server.addr, &login("u1", "c3")).await;
    assert_eq!(
        ack.reason_code,
        ReasonCode::QuotaExceeded,
        "a third connection"
    );
    let (_other, ack) = Raw::connect(server.addr, &login("u2", "c3")).await;
    assert_eq!(
        ack.reason_code,
        ReasonCode::Success,
        "another user is not affected"
    );

    // Subscriptions count over both of u1's sessions.
    assert_eq!(suback_code(&mut c1, 1, "a/1").await, ReasonCode::Success);
    assert_eq!(suback_code(&mut c1, 2, "a/2").await, ReasonCode::Success);
    assert_eq!(suback_code(&mut c2, 1, "a/3").await, ReasonCode::Success);
    assert_eq!(
        suback_code(&mut c2, 2, "a/4").await,
        ReasonCode::QuotaExceeded
    );
    // Re-subscribing to a filter it has is not a new subscription.
    assert_eq!(suback_code(&mut c2, 3, "a/3").await, ReasonCode::Success);

    // Retained messages and bytes per user.
    let retained = |topic: &str, id: u16, payload: &'static [u8]| {
        let mut p = common::publish(topic, QoS::AtLeastOnce, id, payload);
        p.retain = true;
        p
    };
    c1.send(&retained("r/1", 10, b"one")).await;
    assert_eq!(
        puback_code(&mut c1, 10).await,
        ReasonCode::NoMatchingSubscribers
    );
    c2.send(&retained("r/2", 11, b"two")).await;
    assert_eq!(
        puback_code(&mut c2, 11).await,
        ReasonCode::NoMatchingSubscribers
    );
    c1.send(&retained("r/3", 12, b"three")).await;
    assert_eq!(puback_code(&mut c1, 12).await, ReasonCode::QuotaExceeded);
    // Replacing one of its own is fine; one too large for the byte quota is not.
    c1.send(&retained("r/1", 13, b"uno")).await;
    assert_eq!(
        puback_code(&mut c1, 13).await,
        ReasonCode::NoMatchingSubscribers
    );
    c1.send(&retained("r/1", 14, &[b'x'; 200])).await;
    assert_eq!(puback_code(&mut c1, 14).await, ReasonCode::QuotaExceeded);

    // Taking over its own client id is not a new connection.
    c1.send(&bulwark_proto::Disconnect::new(ReasonCode::Success))
        .await;
    let (_c2_again, ack) = Raw::connect(server.addr, &login("u1", "c2")).await;
    assert_eq!(ack.reason_code, ReasonCode::Success, "takeover of c2");
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A subscriber that does not read while `n` QoS 1 messages are published to it, then reads
/// (acknowledging each if `ack`) until nothing more comes; returns the payload numbers it got
/// and the other packets.
async fn stalled_subscriber_run(
    server: &common::TestServer,
    id: &str,
    n: u16,
    ack: bool,
) -> (Vec<u16>, Vec<bulwark_proto::Packet>) {
    let mut sub = mqtt_from(server.addr, from(1), id).await;
    let options = bulwark_proto::SubscriptionOptions::qos(QoS::AtLeastOnce);
    sub.subscribe(1, &format!("slow/{id}"), options, None).await;
    let mut publisher = mqtt_from(server.addr, from(1), &format!("{id}-pub")).await;
    for i in 1..=n {
        let payload: &'static [u8] = Box::leak(i.to_be_bytes().to_vec().into_boxed_slice());
        publisher
            .send(&common::publish(
                &format!("slow/{id}"),
                QoS::AtLeastOnce,
                i,
                payload,
            ))
            .await;
        // The publisher is never held up by the slow subscriber.
        assert!(matches!(
            publisher.recv().await,
            bulwark_proto::Packet::PubAck(_)
        ));
    }
    let mut got = Vec::new();
    let mut other = Vec::new();
    loop {
        match sub.recv_within(Duration::from_millis(300)).await {
            Recv::Packet(bulwark_proto::Packet::Publish(p)) => {
                let bytes: [u8; 2] = p.payload.as_ref().try_into().unwrap();
                got.push(u16::from_be_bytes(bytes));
                if let Some(id) = p.packet_id.filter(|_| ack) {
                    sub.send(&bulwark_proto::PubAck::new(id)).await;
                }
            }
            Recv::Packet(packet) => other.push(packet),
            Recv::Timeout | Recv::Closed => return (got, other),
            Recv::Invalid(err) => panic!("{err}"),
        }
    }
}

#[tokio::test]
async fn a_subscriber_that_stops_reading_is_bounded_by_its_queue() {
    use bulwark_core::QueuePolicy;
    for policy in [
        QueuePolicy::DropNewest,
        QueuePolicy::DropOldest,
        QueuePolicy::Disconnect,
    ] {
        let dir = std::env::temp_dir().join(common::unique("bulwark-slow"));
        std::fs::create_dir_all(&dir).unwrap();
        let audit = dir.join("audit.jsonl");
        let server = common::start_with(|c| {
            c.broker.sessions.max_inflight_out = 10;
            c.broker.sessions.max_queued_messages = 50;
            c.broker.sessions.queue_full = policy;
            c.audit.file = Some(audit.clone());
        })
        .await;
        // Disconnected, the client has nobody to acknowledge to.
        let ack = policy != QueuePolicy::Disconnect;
        let (got, other) = stalled_subscriber_run(&server, "s", 300, ack).await;
        match policy {
            QueuePolicy::DropNewest => {
                // The window's 10, then the 50 queued: the oldest, in order.
                assert_eq!(got, (1..=60).collect::<Vec<u16>>());
            }
            QueuePolicy::DropOldest => {
                // The window's 10, then the newest 50.
                let mut expected: Vec<u16> = (1..=10).collect();
                expected.extend(251..=300);
                assert_eq!(got, expected);
            }
            QueuePolicy::Disconnect => {
                assert!(got.len() <= 10, "{got:?}");
                assert!(
                    other.iter().any(|p| matches!(p, bulwark_proto::Packet::Disconnect(d) if d.reason_code == ReasonCode::QuotaExceeded)),
                    "{other:?}"
                );
            }
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let text = std::fs::read_to_string(&audit).unwrap_or_default();
            if text.contains("\"kind\":\"slow_consumer\"") {
                break;
            }
            assert!(Instant::now() < deadline, "no slow_consumer event: {text}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server.stop().await;
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Waits until the audit file at `path` has an event of `kind`.
async fn wait_audit(path: &std::path::Path, kind: &str) -> String {
    wait_audit_line(path, &format!("\"kind\":\"{kind}\"")).await
}

/// Waits until the audit file at `path` has a line containing `needle`.
async fn wait_audit_line(path: &std::path::Path, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains(needle)) {
            return line.to_owned();
        }
        assert!(Instant::now() < deadline, "no {needle} in {text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn repeated_protocol_violations_lead_to_a_ban_that_survives_a_restart() {
    use bulwark_server::bans::BanSettings;
    let dir = std::env::temp_dir().join(common::unique("bulwark-bans"));
    std::fs::create_dir_all(&dir).unwrap();
    let audit = dir.join("audit.jsonl");
    let settings = BanSettings {
        file: Some(dir.join("bans.toml")),
        offences: 3,
        exempt: Vec::new(),
        ..BanSettings::default()
    };
    let configure = |c: &mut bulwark_server::ServerConfig| {
        c.bans = settings.clone();
        c.audit.file = Some(audit.clone());
        c.tls_watch_interval = Duration::from_millis(200);
    };
    let server = common::start_with(configure).await;
    let offender = from(7);
    for _ in 0..3 {
        let mut raw = Raw::tcp_from(server.addr, offender, ProtocolVersion::V5).await;
        // A CONNACK from a client: a protocol violation as the first packet.
        raw.send_bytes(&[0x20, 0x02, 0x00, 0x00]).await;
        assert!(matches!(
            raw.recv_within(common::WAIT).await,
            Recv::Closed | Recv::Packet(_)
        ));
    }
    let event = wait_audit(&audit, "ban").await;
    assert!(event.contains("127.0.0.7"), "{event}");
    assert!(
        refused(server.addr, offender, Duration::from_millis(500)).await,
        "banned at accept"
    );
    let _ = mqtt_from(server.addr, from(8), "innocent").await;
    server.stop().await;

    // The ban is in the file, so a restarted broker keeps it.
    let text = std::fs::read_to_string(dir.join("bans.toml")).unwrap();
    assert!(
        text.contains("127.0.0.7/32") && text.contains("by = \"auto\""),
        "{text}"
    );
    let server = common::start_with(configure).await;
    assert!(
        refused(server.addr, offender, Duration::from_millis(500)).await,
        "still banned"
    );
    let _ = mqtt_from(server.addr, from(8), "innocent-2").await;

    // A ban added to the file applies to a live connection at once.
    let mut victim = mqtt_from(server.addr, from(9), "to-be-banned").await;
    let mut list = bulwark_server::bans::load(&dir.join("bans.toml")).unwrap();
    list.add(bulwark_limits::ban::Ban {
        target: bulwark_limits::ban::BanTarget::ClientId("to-be-banned".to_owned()),
        expires: None,
        reason: "test".to_owned(),
        created: 0,
        by: "operator".to_owned(),
    })
    .unwrap();
    bulwark_server::files::write_atomic(&dir.join("bans.toml"), list.to_toml().as_bytes()).unwrap();
    victim
        .expect_disconnect(ReasonCode::AdministrativeAction)
        .await;
    let (_raw, ack) = Raw::connect(
        server.addr,
        &connect_packet(ProtocolVersion::V5, "to-be-banned"),
    )
    .await;
    assert_eq!(ack.reason_code, ReasonCode::Banned);
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn repeated_limit_hits_lead_to_a_ban() {
    use bulwark_server::bans::BanSettings;
    let dir = std::env::temp_dir().join(common::unique("bulwark-limit-bans"));
    std::fs::create_dir_all(&dir).unwrap();
    let audit = dir.join("audit.jsonl");
    let server = common::start_with(|c| {
        c.bans = BanSettings {
            offences: 3,
            exempt: Vec::new(),
            ..BanSettings::default()
        };
        c.audit.file = Some(audit.clone());
        c.broker.sessions.receive_maximum = 2;
    })
    .await;
    let flooder = from(11);
    // A QoS 2 flood past the Receive Maximum, from a 5.0 and then from 3.1.1 clients (which get
    // no DISCONNECT packet, only the close): each is an offence of the address.
    for (i, version) in [
        ProtocolVersion::V5,
        ProtocolVersion::V3_1_1,
        ProtocolVersion::V5,
    ]
    .into_iter()
    .enumerate()
    {
        let mut raw = Raw::tcp_from(server.addr, flooder, version).await;
        raw.send(&connect_packet(version, &format!("flood-{i}")))
            .await;
        assert!(
            matches!(raw.recv().await, bulwark_proto::Packet::ConnAck(a) if !a.reason_code.is_error())
        );
        // PUBREC and, for 5.0, the DISCONNECT, then the close.
        let mut packets = Vec::new();
        for id in 1..=3u16 {
            raw.send(&common::publish("q/x", QoS::ExactlyOnce, id, b"x"))
                .await;
        }
        packets.extend(raw.until_closed(common::WAIT).await);
        let disconnect = packets.iter().find_map(|p| match p {
            bulwark_proto::Packet::Disconnect(d) => Some(d.reason_code),
            _ => None,
        });
        let expected = version
            .is_v5()
            .then_some(ReasonCode::ReceiveMaximumExceeded);
        assert_eq!(disconnect, expected, "{packets:?}");
    }
    let event = wait_audit(&audit, "protocol_violation").await;
    assert!(
        event.contains("127.0.0.11") && event.contains("0x93"),
        "{event}"
    );
    let ban = wait_audit(&audit, "ban").await;
    assert!(
        ban.contains("127.0.0.11") && ban.contains("limit exceeded"),
        "{ban}"
    );
    assert!(
        refused(server.addr, flooder, Duration::from_millis(500)).await,
        "banned at accept"
    );
    // Being taken over is not an offence: the same client id connecting three times from one
    // address bans nobody.
    let other = from(12);
    let mut first = mqtt_from(server.addr, other, "same").await;
    for _ in 0..3 {
        let next = mqtt_from(server.addr, other, "same").await;
        first.expect_disconnect(ReasonCode::SessionTakenOver).await;
        first = next;
    }
    let _ = mqtt_from(server.addr, other, "still-welcome").await;
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn over_the_memory_watermark_new_connections_are_refused_and_queues_shed() {
    let dir = std::env::temp_dir().join(common::unique("bulwark-mem"));
    std::fs::create_dir_all(&dir).unwrap();
    let audit = dir.join("audit.jsonl");
    let server = common::start_with(|c| {
        // Far below any real process: over from the first reading, a second after start.
        c.memory_watermark = 1;
        c.audit.file = Some(audit.clone());
    })
    .await;
    let mut worker = mqtt_from(server.addr, from(1), "mem-worker").await;
    worker.subscribe_qos(1, "mem/#", QoS::AtMostOnce).await;
    // A stored session with queued messages, for the shedding.
    let mut parked = Raw::tcp_from(server.addr, from(1), ProtocolVersion::V5).await;
    let mut connect = connect_packet(ProtocolVersion::V5, "mem-parked");
    connect.clean_start = false;
    connect.properties.session_expiry_interval = Some(300);
    parked.send(&connect).await;
    assert!(matches!(
        parked.recv().await,
        bulwark_proto::Packet::ConnAck(_)
    ));
    parked.subscribe_qos(1, "mem/#", QoS::AtLeastOnce).await;
    parked
        .send(&bulwark_proto::Disconnect::new(ReasonCode::Success))
        .await;
    for i in 1..=20u16 {
        worker
            .send(&common::publish(
                "mem/x",
                QoS::AtLeastOnce,
                i,
                b"queued for the parked session",
            ))
            .await;
    }
    let event = wait_audit(&audit, "overload").await;
    assert!(event.contains("watermark"), "{event}");
    assert!(
        refused(server.addr, from(2), Duration::from_millis(500)).await,
        "refused when over"
    );
    // The connected client keeps working.
    worker
        .send(&common::publish(
            "mem/live",
            QoS::AtMostOnce,
            0,
            b"still here",
        ))
        .await;
    let got = worker.recv_publish().await;
    assert!(got.topic.as_str().starts_with("mem/"));
    // The stored session's queue was shed.
    let text = wait_audit_line(&audit, "\"action\":\"shed\"").await;
    assert!(text.contains("queued message"), "{text}");
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn flapping_bans_only_the_flapping_user_from_a_client_id_never_its_owner() {
    use bulwark_server::bans::BanSettings;
    let (dir, store_path) = password_store("bulwark-flaps", &["alice", "bob"]);
    let audit = dir.join("audit.jsonl");
    let server = common::start_secure_with(|c| {
        c.auth.password_file = Some(store_path.clone());
        c.audit.file = Some(audit.clone());
        c.bans = BanSettings {
            file: Some(dir.join("bans.toml")),
            flaps: 5,
            // 127.0.0.1 is exempt, 127.0.0.7 (bob's) is not.
            exempt: vec![bulwark_acl::Cidr::parse("127.0.0.1/32").unwrap()],
            ..BanSettings::default()
        };
    })
    .await;
    let login = |user: &str, id: &str| {
        let mut connect = connect_packet(ProtocolVersion::V5, id);
        connect.username = Some(common::string(user));
        connect.password = Some(bytes::Bytes::from(PASSWORD));
        connect
    };
    let code_from = |local: IpAddr, user: &'static str, id: &'static str| {
        let connect = login(user, id);
        async move {
            let mut raw = Raw::tcp_from(server.addr, local, ProtocolVersion::V5).await;
            raw.send(&connect).await;
            let code = match raw.recv().await {
                bulwark_proto::Packet::ConnAck(ack) => ack.reason_code,
                other => panic!("expected CONNACK, got {other:?}"),
            };
            if code == ReasonCode::Success {
                raw.send(&bulwark_proto::Disconnect::new(ReasonCode::Success))
                    .await;
                raw.until_closed(common::WAIT).await;
            }
            code
        }
    };
    // Bob connects over and over with a client id nobody holds, which is alice's: the fifth
    // connection within the window is refused and bans him from that id.
    for n in 0..4 {
        assert_eq!(
            code_from(from(7), "bob", "alice-device").await,
            ReasonCode::Success,
            "connection {n}"
        );
    }
    for _ in 0..2 {
        assert_eq!(
            code_from(from(7), "bob", "alice-device").await,
            ReasonCode::Banned
        );
    }
    let ban = wait_audit(&audit, "ban").await;
    assert!(ban.contains("of user \\\"bob\\\""), "{ban}");
    // Only from it.
    assert_eq!(
        code_from(from(7), "bob", "bob-device").await,
        ReasonCode::Success
    );
    // Alice, the id's owner, gets in from the exempt address and from bob's.
    assert_eq!(
        code_from(from(1), "alice", "alice-device").await,
        ReasonCode::Success
    );
    assert_eq!(
        code_from(from(7), "alice", "alice-device").await,
        ReasonCode::Success
    );
    let text = std::fs::read_to_string(dir.join("bans.toml")).unwrap();
    assert!(
        text.contains("username = \"bob\"") && text.contains("client_id = \"alice-device\""),
        "{text}"
    );
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Parks a persistent session, sends it 205 QoS 1 messages (5 are queued, 200 dropped), ends
/// the session if `end` (its client comes back with Clean Start), and waits until the audit
/// file's slow-consumer events count 200 drops, within `within`; returns the counts.
async fn overflow_counts(end: bool, within: Duration) -> Vec<u64> {
    let dir = std::env::temp_dir().join(common::unique("bulwark-dropped"));
    std::fs::create_dir_all(&dir).unwrap();
    let audit = dir.join("audit.jsonl");
    let server = common::start_with(|c| {
        c.broker.sessions.max_queued_messages = 5;
        c.audit.file = Some(audit.clone());
    })
    .await;
    let mut sub = connect_packet(ProtocolVersion::V5, "parked");
    sub.clean_start = false;
    sub.properties.session_expiry_interval = Some(300);
    let (mut raw, _) = Raw::connect(server.addr, &sub).await;
    raw.subscribe_qos(1, "drop/t", QoS::AtLeastOnce).await;
    raw.send(&bulwark_proto::Disconnect::new(ReasonCode::Success))
        .await;
    raw.until_closed(common::WAIT).await;
    let mut publisher = mqtt_from(server.addr, from(1), "dropper").await;
    for id in 1..=205u16 {
        publisher
            .send(&common::publish("drop/t", QoS::AtLeastOnce, id, b"x"))
            .await;
        puback_code(&mut publisher, id).await;
    }
    if end {
        let (mut raw, ack) =
            Raw::connect(server.addr, &connect_packet(ProtocolVersion::V5, "parked")).await;
        assert!(!ack.session_present);
        raw.send(&bulwark_proto::Disconnect::new(ReasonCode::Success))
            .await;
    }
    let deadline = Instant::now() + within;
    let counts = loop {
        let text = std::fs::read_to_string(&audit).unwrap_or_default();
        let counts: Vec<u64> = text
            .lines()
            .filter(|l| l.contains("\"kind\":\"slow_consumer\""))
            .filter_map(|l| {
                let event: serde_json::Value = serde_json::from_str(l).ok()?;
                assert_eq!(event["client_id"], "parked", "{event}");
                let reason = event["reason"].as_str()?.to_owned();
                let (_, tail) = reason.split_once("): ")?;
                tail.split_once(' ')?.0.parse().ok()
            })
            .collect();
        if counts.iter().sum::<u64>() == 200 {
            break counts;
        }
        assert!(Instant::now() < deadline, "{counts:?} in {text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    counts
}

#[tokio::test]
async fn slow_consumer_events_add_up_to_every_message_dropped() {
    // The first drop is reported at once, the other 199 when its 10 s window ends.
    let counts = overflow_counts(false, Duration::from_secs(20)).await;
    assert_eq!(counts, [1, 199]);
}

#[tokio::test]
async fn drops_not_reported_yet_are_reported_when_the_session_ends() {
    // The session ends well within the window: what it dropped is reported then.
    let counts = overflow_counts(true, Duration::from_secs(8)).await;
    assert_eq!(counts, [1, 199]);
}
