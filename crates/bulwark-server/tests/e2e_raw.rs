//! End-to-end tests with a raw client (packets written by hand or by `bulwark-proto` in the
//! client role) for what client libraries hide: CONNACK properties, DISCONNECT reason codes,
//! timeouts, malformed input, flow control, topic aliases, duplicates.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests"
)]

mod common;

use std::collections::BTreeSet;
use std::num::{NonZeroU16, NonZeroU32};
use std::time::{Duration, Instant};

use bulwark_proto::{
    DecoderLimits, Disconnect, MqttString, Packet, PayloadFormat, ProtocolVersion, PubRel, QoS,
    ReasonCode, SubscriptionOptions, TopicName, Will,
};
use bytes::Bytes;
use common::{
    QUIET, Raw, Recv, WAIT, connect_packet, pid, publish, start, start_with, string, topic, unique,
    user_property,
};
use tokio::io::AsyncReadExt;

/// Reads raw bytes until the server closes the connection (or `within` passes: panic).
async fn read_until_closed(raw: &mut Raw, within: Duration) -> Vec<u8> {
    let mut bytes = Vec::new();
    tokio::time::timeout(within, raw.stream.read_to_end(&mut bytes))
        .await
        .expect("the server closes the connection in time")
        .ok();
    bytes
}

// ----- CONNECT and CONNACK -------------------------------------------------------------------

#[tokio::test]
async fn connack_advertises_the_server_limits() {
    // §3.2.2.3: Receive Maximum, Topic Alias Maximum, Maximum Packet Size are sent when they
    // differ from the protocol defaults; Retain/Wildcard/Subscription Identifier/Shared
    // Subscription Available are absent or 1 when supported; Maximum QoS is absent when QoS 2
    // is supported (a value of 2 is a Protocol Error).
    let server = start_with(|c| {
        c.broker.sessions.receive_maximum = 7;
        c.broker.packets.topic_alias_maximum = 9;
        c.broker.packets.max_packet_size = 65_000;
        c.decoder = DecoderLimits {
            max_packet_size: 65_000,
            max_unauthenticated_packet_size: 65_000,
        };
        c.broker.sessions.max_session_expiry_interval = 100;
        c.broker.sessions.max_keep_alive = 10;
    })
    .await;
    let mut connect = connect_packet(ProtocolVersion::V5, &unique("caps"));
    connect.keep_alive = 60;
    connect.properties.session_expiry_interval = Some(1000);
    let (_raw, ack) = Raw::connect(server.addr, &connect).await;
    assert_eq!(ack.reason_code, ReasonCode::Success);
    assert!(!ack.session_present);
    let p = &ack.properties;
    assert_eq!(p.receive_maximum, NonZeroU16::new(7), "Receive Maximum");
    assert_eq!(p.topic_alias_maximum, Some(9), "Topic Alias Maximum");
    assert_eq!(
        p.maximum_packet_size,
        NonZeroU32::new(65_000),
        "Maximum Packet Size"
    );
    assert_ne!(p.retain_available, Some(false), "Retain Available");
    assert_ne!(p.wildcard_subscription_available, Some(false));
    assert_ne!(p.subscription_identifiers_available, Some(false));
    assert_ne!(p.shared_subscription_available, Some(false));
    assert_eq!(p.maximum_qos, None, "QoS 2 is supported");
    // §3.2.2.3.2: the server tells the client the Session Expiry Interval it uses.
    assert_eq!(p.session_expiry_interval, Some(100));
    // [MQTT-3.2.2-21]: a Server Keep Alive the client must use.
    assert_eq!(p.server_keep_alive, Some(10));
    server.stop().await;
}

#[tokio::test]
async fn v311_empty_client_id_without_clean_session_is_refused() {
    // [MQTT-3.1.3-8]: CONNACK return code 0x02 (Identifier rejected), then close.
    let server = start().await;
    let mut raw = Raw::tcp(server.addr, ProtocolVersion::V3_1_1).await;
    // CONNECT, "MQTT" level 4, flags 0 (Clean Session 0), keep alive 60, client id "".
    raw.send_bytes(b"\x10\x0c\x00\x04MQTT\x04\x00\x00\x3c\x00\x00")
        .await;
    let bytes = read_until_closed(&mut raw, WAIT).await;
    assert_eq!(bytes, b"\x20\x02\x00\x02", "CONNACK 0x02 and nothing else");
    server.stop().await;
}

#[tokio::test]
async fn v311_empty_client_id_with_clean_session_is_accepted() {
    // [MQTT-3.1.3-6], [MQTT-3.2.2-1]: accepted, Session Present 0.
    let server = start().await;
    let mut raw = Raw::tcp(server.addr, ProtocolVersion::V3_1_1).await;
    raw.send_bytes(b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00")
        .await;
    let mut ack = [0u8; 4];
    tokio::time::timeout(WAIT, raw.stream.read_exact(&mut ack))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&ack, b"\x20\x02\x00\x00");
    server.stop().await;
}

#[tokio::test]
async fn v5_empty_client_id_is_assigned_one() {
    // [MQTT-3.2.2-16]: Assigned Client Identifier in CONNACK.
    let server = start().await;
    let connect = connect_packet(ProtocolVersion::V5, "");
    let (_raw, ack) = Raw::connect(server.addr, &connect).await;
    assert_eq!(ack.reason_code, ReasonCode::Success);
    let assigned = ack
        .properties
        .assigned_client_identifier
        .expect("assigned id");
    assert!(!assigned.as_str().is_empty());
    server.stop().await;
}

#[tokio::test]
async fn first_packet_other_than_connect_closes_the_connection() {
    // [MQTT-3.1.0-1]: the first packet must be CONNECT; the server closes the connection.
    let server = start().await;
    let mut raw = Raw::tcp(server.addr, ProtocolVersion::V5).await;
    raw.send_bytes(b"\xc0\x00").await; // PINGREQ
    let bytes = read_until_closed(&mut raw, WAIT).await;
    assert!(bytes.is_empty(), "no CONNACK: {bytes:?}");
    server.stop().await;
}

#[tokio::test]
async fn second_connect_is_a_protocol_error() {
    // [MQTT-3.1.0-2]: a second CONNECT is a Protocol Error: DISCONNECT 0x82.
    let server = start().await;
    let id = unique("twice");
    let (mut raw, _) = Raw::v5(server.addr, &id).await;
    raw.send(&connect_packet(ProtocolVersion::V5, &id)).await;
    raw.expect_disconnect(ReasonCode::ProtocolError).await;
    server.stop().await;
}

#[tokio::test]
async fn connect_timeout_closes_a_silent_socket() {
    let server = start_with(|c| c.connect_timeout = Duration::from_secs(1)).await;
    let started = Instant::now();
    let mut silent = Raw::tcp(server.addr, ProtocolVersion::V5).await;
    // A socket that sends only part of a CONNECT gets no more time.
    let mut partial = Raw::tcp(server.addr, ProtocolVersion::V5).await;
    partial.send_bytes(b"\x10\x10\x00\x04MQ").await;
    let (a, b) = tokio::join!(
        read_until_closed(&mut silent, Duration::from_secs(3)),
        read_until_closed(&mut partial, Duration::from_secs(3)),
    );
    let elapsed = started.elapsed();
    assert!(a.is_empty() && b.is_empty(), "nothing is sent: {a:?} {b:?}");
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_millis(2000),
        "closed after the 1 s connect timeout, took {elapsed:?}"
    );
    server.stop().await;
}

// ----- keep alive ----------------------------------------------------------------------------

#[tokio::test]
async fn keep_alive_timeout_disconnects_a_silent_v5_client() {
    // [MQTT-3.1.2-22]: no packet within 1.5 × Keep Alive → the server closes the connection;
    // 5.0 sends DISCONNECT 0x8D (Keep Alive timeout) first.
    let server = start().await;
    let mut connect = connect_packet(ProtocolVersion::V5, &unique("silent5"));
    connect.keep_alive = 1;
    let (mut raw, _) = Raw::connect(server.addr, &connect).await;
    let started = Instant::now();
    let packets = raw.until_closed(Duration::from_secs(4)).await;
    let elapsed = started.elapsed();
    assert!(
        matches!(packets.as_slice(), [Packet::Disconnect(d)] if d.reason_code == ReasonCode::KeepAliveTimeout),
        "DISCONNECT 0x8D, got {packets:?}"
    );
    assert!(
        elapsed >= Duration::from_millis(1000) && elapsed <= Duration::from_millis(2200),
        "disconnected at ~1.5 s, took {elapsed:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn keep_alive_timeout_closes_a_silent_v311_client() {
    let server = start().await;
    let mut connect = connect_packet(ProtocolVersion::V3_1_1, &unique("silent3"));
    connect.keep_alive = 1;
    let (mut raw, ack) = Raw::connect(server.addr, &connect).await;
    assert_eq!(ack.reason_code, ReasonCode::Success);
    let started = Instant::now();
    let packets = raw.until_closed(Duration::from_secs(4)).await;
    let elapsed = started.elapsed();
    assert!(
        packets.is_empty(),
        "3.1.1 has no server DISCONNECT: {packets:?}"
    );
    assert!(
        elapsed >= Duration::from_millis(1000) && elapsed <= Duration::from_millis(2200),
        "closed at ~1.5 s, took {elapsed:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn pinging_client_stays_connected() {
    // [MQTT-3.12.4-1]: PINGREQ is answered with PINGRESP, and it counts as activity.
    let server = start().await;
    let mut connect = connect_packet(ProtocolVersion::V5, &unique("pinger"));
    connect.keep_alive = 1;
    let (mut raw, _) = Raw::connect(server.addr, &connect).await;
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        raw.send(&Packet::PingReq).await;
        match raw.recv().await {
            Packet::PingResp => {}
            other => panic!("expected PINGRESP, got {other:?}"),
        }
    }
    server.stop().await;
}

// ----- malformed and oversized packets -------------------------------------------------------

#[tokio::test]
async fn packet_over_maximum_packet_size_gets_disconnect_0x95() {
    // §3.2.2.3.6, [MQTT-3.2.2-15]: a packet over the server's Maximum Packet Size → DISCONNECT
    // 0x95 (Packet too large).
    let server = start_with(|c| {
        c.broker.packets.max_packet_size = 1024;
        c.decoder = DecoderLimits {
            max_packet_size: 1024,
            max_unauthenticated_packet_size: 1024,
        };
    })
    .await;
    let (mut raw, ack) = Raw::v5(server.addr, &unique("big")).await;
    assert_eq!(ack.properties.maximum_packet_size, NonZeroU32::new(1024));
    let mut big = publish(&unique("raw/big"), QoS::AtMostOnce, 0, b"");
    big.payload = Bytes::from(vec![b'x'; 2000]);
    raw.send(&big).await;
    raw.expect_disconnect(ReasonCode::PacketTooLarge).await;
    server.stop().await;
}

#[tokio::test]
async fn publish_to_a_wildcard_topic_is_malformed() {
    // [MQTT-3.3.2-2]: a Topic Name must not contain wildcards; DISCONNECT 0x81 then close.
    let server = start().await;
    let (mut raw, _) = Raw::v5(server.addr, &unique("wild5")).await;
    // PUBLISH QoS 0, topic "a/#", no properties.
    raw.send_bytes(b"\x30\x06\x00\x03a/#\x00").await;
    raw.expect_disconnect(ReasonCode::MalformedPacket).await;

    // 3.1.1: the connection is just closed [MQTT-4.8.0-1].
    let (mut raw, _) = Raw::connect(
        server.addr,
        &connect_packet(ProtocolVersion::V3_1_1, &unique("wild3")),
    )
    .await;
    raw.send_bytes(b"\x30\x05\x00\x03a/+").await;
    let packets = raw.until_closed(WAIT).await;
    assert!(packets.is_empty(), "{packets:?}");
    server.stop().await;
}

// ----- sessions ------------------------------------------------------------------------------

#[tokio::test]
async fn takeover_sends_session_taken_over_to_the_first_connection() {
    // [MQTT-3.1.4-3]: the existing client gets DISCONNECT 0x8E and its connection is closed.
    let server = start().await;
    let id = unique("taken");
    let (mut first, _) = Raw::v5(server.addr, &id).await;
    let (mut second, ack) = Raw::v5(server.addr, &id).await;
    assert_eq!(ack.reason_code, ReasonCode::Success);
    first.expect_disconnect(ReasonCode::SessionTakenOver).await;
    second.send(&Packet::PingReq).await;
    assert!(matches!(second.recv().await, Packet::PingResp));
    server.stop().await;
}

#[tokio::test]
async fn shutdown_sends_server_shutting_down() {
    // §3.14.2.1: 0x8B Server shutting down to 5.0 clients; 3.1.1 clients are just closed.
    let server = start().await;
    let (mut v5, _) = Raw::v5(server.addr, &unique("bye5")).await;
    let (mut v3, _) = Raw::connect(
        server.addr,
        &connect_packet(ProtocolVersion::V3_1_1, &unique("bye3")),
    )
    .await;
    let stopping = tokio::spawn(server.stop());
    v5.expect_disconnect(ReasonCode::ServerShuttingDown).await;
    let packets = v3.until_closed(WAIT).await;
    assert!(packets.is_empty(), "{packets:?}");
    tokio::time::timeout(WAIT, stopping).await.unwrap().unwrap();
}

// ----- wills ---------------------------------------------------------------------------------

fn connect_with_will(id: &str, will_topic: &str, payload: &'static [u8]) -> bulwark_proto::Connect {
    let mut connect = connect_packet(ProtocolVersion::V5, id);
    connect.will = Some(Will {
        topic: topic(will_topic),
        payload: Bytes::from_static(payload),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: bulwark_proto::WillProperties::default(),
    });
    connect
}

async fn will_watcher(server: &common::TestServer, will_topic: &str) -> Raw {
    let (mut watcher, _) = Raw::v5(server.addr, &unique("watcher")).await;
    watcher.subscribe_qos(1, will_topic, QoS::AtLeastOnce).await;
    watcher
}

#[tokio::test]
async fn will_is_published_when_the_socket_drops() {
    // [MQTT-3.1.2-8]: the will is published when the connection closes without DISCONNECT.
    let server = start().await;
    let will_topic = unique("raw/will-drop");
    let mut watcher = will_watcher(&server, &will_topic).await;
    let (raw, _) = Raw::connect(
        server.addr,
        &connect_with_will(&unique("dropper"), &will_topic, b"dropped"),
    )
    .await;
    drop(raw);
    let got = watcher.recv_publish().await;
    assert_eq!(got.topic.as_str(), will_topic);
    assert_eq!(&got.payload[..], b"dropped");
    assert_eq!(got.qos, QoS::AtLeastOnce);
    server.stop().await;
}

#[tokio::test]
async fn will_is_discarded_on_normal_disconnect() {
    // [MQTT-3.14.4-3]: DISCONNECT 0x00 discards the will.
    let server = start().await;
    let will_topic = unique("raw/will-normal");
    let mut watcher = will_watcher(&server, &will_topic).await;
    let (mut raw, _) = Raw::connect(
        server.addr,
        &connect_with_will(&unique("polite"), &will_topic, b"never"),
    )
    .await;
    raw.send(&Disconnect::new(ReasonCode::Success)).await;
    let packets = raw.until_closed(WAIT).await;
    assert!(packets.is_empty(), "{packets:?}");
    watcher.expect_no_publish(Duration::from_millis(500)).await;
    server.stop().await;
}

#[tokio::test]
async fn disconnect_with_will_message_publishes_the_will() {
    // §3.14.2.1: 0x04 Disconnect with Will Message: the server publishes the will. Its
    // properties are carried like a PUBLISH's (§3.1.3.2).
    let server = start().await;
    let will_topic = unique("raw/will-04");
    let mut watcher = will_watcher(&server, &will_topic).await;
    let mut connect = connect_with_will(&unique("asks"), &will_topic, b"as asked");
    if let Some(will) = connect.will.as_mut() {
        will.properties.content_type = Some(string("text/plain"));
        will.properties.payload_format_indicator = Some(PayloadFormat::Utf8);
        will.properties.user_properties =
            vec![user_property("why", "asked"), user_property("why", "twice")];
    }
    let (mut raw, _) = Raw::connect(server.addr, &connect).await;
    raw.send(&Disconnect::new(ReasonCode::DisconnectWithWillMessage))
        .await;
    let got = watcher.recv_publish().await;
    assert_eq!(&got.payload[..], b"as asked");
    assert_eq!(
        got.properties.content_type.as_ref().map(MqttString::as_str),
        Some("text/plain")
    );
    assert_eq!(
        got.properties.payload_format_indicator,
        Some(PayloadFormat::Utf8)
    );
    assert_eq!(
        got.properties.user_properties,
        vec![user_property("why", "asked"), user_property("why", "twice")]
    );
    server.stop().await;
}

// ----- QoS 2 and flow control ----------------------------------------------------------------

async fn qos2_duplicate_is_delivered_once(version: ProtocolVersion) {
    // [MQTT-4.3.3-10] (3.1.1: [MQTT-4.3.3-2] Method B): until PUBREL, a PUBLISH with the same
    // packet identifier is acknowledged with PUBREC again and not delivered again.
    let server = start().await;
    let t = unique("raw/exactly-once");
    let (mut sub, _) = Raw::v5(server.addr, &unique("counter")).await;
    sub.subscribe_qos(1, &t, QoS::AtMostOnce).await;

    let (mut publisher, ack) =
        Raw::connect(server.addr, &connect_packet(version, &unique("dup-pub"))).await;
    assert_eq!(ack.reason_code, ReasonCode::Success);
    let mut first = publish(&t, QoS::ExactlyOnce, 7, b"once");
    publisher.send(&first).await;
    assert!(
        matches!(publisher.recv().await, Packet::PubRec(r) if r.packet_id == pid(7)),
        "PUBREC for the first copy"
    );
    first.dup = true;
    publisher.send(&first).await;
    assert!(
        matches!(publisher.recv().await, Packet::PubRec(r) if r.packet_id == pid(7)),
        "PUBREC for the duplicate"
    );
    publisher.send(&PubRel::new(pid(7))).await;
    assert!(
        matches!(publisher.recv().await, Packet::PubComp(c) if c.packet_id == pid(7)),
        "PUBCOMP"
    );
    assert_eq!(&sub.recv_publish().await.payload[..], b"once");
    sub.expect_no_publish(QUIET).await;

    // After PUBCOMP the identifier is free: the same id is a new message [MQTT-4.3.3-12].
    publisher
        .send(&publish(&t, QoS::ExactlyOnce, 7, b"again"))
        .await;
    assert!(matches!(publisher.recv().await, Packet::PubRec(_)));
    publisher.send(&PubRel::new(pid(7))).await;
    assert!(matches!(publisher.recv().await, Packet::PubComp(_)));
    assert_eq!(&sub.recv_publish().await.payload[..], b"again");
    server.stop().await;
}

#[tokio::test]
async fn qos2_duplicate_before_pubrel_is_delivered_once_v5() {
    qos2_duplicate_is_delivered_once(ProtocolVersion::V5).await;
}

#[tokio::test]
async fn qos2_duplicate_before_pubrel_is_delivered_once_v311() {
    qos2_duplicate_is_delivered_once(ProtocolVersion::V3_1_1).await;
}

#[tokio::test]
async fn exceeding_receive_maximum_gets_disconnect_0x93() {
    // §3.3.4: more unacknowledged QoS 1/2 PUBLISHes than Receive Maximum → DISCONNECT 0x93
    // (the client broke [MQTT-3.3.4-7]).
    let server = start_with(|c| c.broker.sessions.receive_maximum = 2).await;
    let (mut raw, ack) = Raw::v5(server.addr, &unique("flood")).await;
    assert_eq!(ack.properties.receive_maximum, NonZeroU16::new(2));
    let t = unique("raw/flood");
    for id in 1..=2 {
        raw.send(&publish(&t, QoS::ExactlyOnce, id, b"held")).await;
        assert!(
            matches!(raw.recv().await, Packet::PubRec(r) if r.packet_id == pid(id)),
            "PUBREC {id}"
        );
    }
    raw.send(&publish(&t, QoS::ExactlyOnce, 3, b"one too many"))
        .await;
    raw.expect_disconnect(ReasonCode::ReceiveMaximumExceeded)
        .await;
    server.stop().await;
}

#[tokio::test]
async fn messages_over_the_subscribers_maximum_packet_size_are_not_sent() {
    // [MQTT-3.1.2-24], [MQTT-3.1.2-25]: the server must not send a packet over the client's
    // Maximum Packet Size; it discards the message as if it had been sent.
    let server = start().await;
    let t = unique("raw/small-client");
    let mut connect = connect_packet(ProtocolVersion::V5, &unique("small"));
    connect.properties.maximum_packet_size = NonZeroU32::new(128);
    let (mut sub, _) = Raw::connect(server.addr, &connect).await;
    sub.subscribe_qos(1, &t, QoS::AtLeastOnce).await;
    let (mut publisher, _) = Raw::v5(server.addr, &unique("pub")).await;
    let mut big = publish(&t, QoS::AtLeastOnce, 1, b"");
    big.payload = Bytes::from(vec![b'b'; 500]);
    publisher.send(&big).await;
    assert!(matches!(publisher.recv().await, Packet::PubAck(_)));
    publisher
        .send(&publish(&t, QoS::AtLeastOnce, 2, b"small"))
        .await;
    assert!(matches!(publisher.recv().await, Packet::PubAck(_)));
    let got = sub.recv_publish().await;
    assert_eq!(
        &got.payload[..],
        b"small",
        "only the message that fits arrives"
    );
    sub.expect_no_publish(QUIET).await;
    server.stop().await;
}

// ----- topic aliases -------------------------------------------------------------------------

#[tokio::test]
async fn topic_alias_from_the_client_is_resolved() {
    // §3.3.2.3.4: a PUBLISH with a topic and Topic Alias sets the mapping; one with an empty
    // topic and the alias uses it. Subscribers get the full topic [MQTT-3.3.2-12].
    let server = start().await;
    let t = unique("raw/alias");
    let (mut sub, _) = Raw::v5(server.addr, &unique("alias-sub")).await;
    sub.subscribe_qos(1, &t, QoS::AtLeastOnce).await;
    let (mut publisher, ack) = Raw::v5(server.addr, &unique("alias-pub")).await;
    assert!(ack.properties.topic_alias_maximum.unwrap_or(0) >= 1);

    let mut set = publish(&t, QoS::AtLeastOnce, 1, b"one");
    set.properties.topic_alias = NonZeroU16::new(1);
    publisher.send(&set).await;
    assert!(matches!(publisher.recv().await, Packet::PubAck(_)));
    let mut used = publish(&t, QoS::AtLeastOnce, 2, b"two");
    used.topic = TopicName::empty_for_alias();
    used.properties.topic_alias = NonZeroU16::new(1);
    publisher.send(&used).await;
    assert!(matches!(publisher.recv().await, Packet::PubAck(_)));

    for payload in [&b"one"[..], b"two"] {
        let got = sub.recv_publish().await;
        assert_eq!(got.topic.as_str(), t, "full topic delivered");
        assert_eq!(&got.payload[..], payload);
        assert_eq!(
            got.properties.topic_alias, None,
            "the subscriber allowed no aliases"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn topic_alias_above_the_maximum_gets_disconnect_0x94() {
    // [MQTT-3.3.2-9]: a Topic Alias above the server's Topic Alias Maximum → DISCONNECT 0x94.
    let server = start_with(|c| c.broker.packets.topic_alias_maximum = 2).await;
    let (mut raw, ack) = Raw::v5(server.addr, &unique("alias-over")).await;
    assert_eq!(ack.properties.topic_alias_maximum, Some(2));
    let mut p = publish(&unique("raw/alias-over"), QoS::AtMostOnce, 0, b"x");
    p.properties.topic_alias = NonZeroU16::new(3);
    raw.send(&p).await;
    raw.expect_disconnect(ReasonCode::TopicAliasInvalid).await;
    server.stop().await;
}

// ----- subscription identifiers --------------------------------------------------------------

#[tokio::test]
async fn overlapping_subscriptions_give_one_copy_with_both_identifiers() {
    // [MQTT-3.3.4-4]: a single copy carries the identifiers of all matching subscriptions;
    // [MQTT-3.3.4-2]: at the highest QoS of them. (Bulwark sends one copy.)
    let server = start().await;
    let base = unique("raw/overlap");
    let (mut sub, _) = Raw::v5(server.addr, &unique("overlap")).await;
    let plus = sub
        .subscribe(
            1,
            &format!("{base}/+"),
            SubscriptionOptions::qos(QoS::AtLeastOnce),
            Some(5),
        )
        .await;
    assert_eq!(plus.reason_codes, vec![ReasonCode::GrantedQoS1]);
    let hash = sub
        .subscribe(
            2,
            &format!("{base}/#"),
            SubscriptionOptions::qos(QoS::AtMostOnce),
            Some(7),
        )
        .await;
    assert_eq!(hash.reason_codes, vec![ReasonCode::Success]);

    let (mut publisher, _) = Raw::v5(server.addr, &unique("pub")).await;
    publisher
        .send(&publish(&format!("{base}/x"), QoS::AtLeastOnce, 1, b"x"))
        .await;
    let got = sub.recv_publish().await;
    let ids: BTreeSet<u32> = got
        .properties
        .subscription_identifiers
        .iter()
        .map(|id| id.get())
        .collect();
    assert_eq!(ids, BTreeSet::from([5, 7]));
    assert_eq!(got.qos, QoS::AtLeastOnce);
    sub.expect_no_publish(QUIET).await;
    server.stop().await;
}

#[tokio::test]
async fn raw_recv_reports_a_closed_socket() {
    // The harness itself: a server that is gone reads as Closed, not as a hang.
    let server = start().await;
    let (mut raw, _) = Raw::v5(server.addr, &unique("harness")).await;
    raw.send(&Disconnect::new(ReasonCode::Success)).await;
    assert!(matches!(raw.recv_within(WAIT).await, Recv::Closed));
    server.stop().await;
}

// ----- more session, will and flow-control rules --------------------------------------------

fn persistent_connect(id: &str, clean_start: bool, expiry: u32) -> bulwark_proto::Connect {
    let mut connect = connect_packet(ProtocolVersion::V5, id);
    connect.clean_start = clean_start;
    connect.properties.session_expiry_interval = Some(expiry);
    connect
}

#[tokio::test]
async fn client_receive_maximum_limits_unacknowledged_deliveries() {
    // [MQTT-3.3.4-9]: the server sends no more unacknowledged QoS 1/2 PUBLISHes than the
    // client's Receive Maximum.
    let server = start().await;
    let t = unique("raw/client-window");
    let mut connect = connect_packet(ProtocolVersion::V5, &unique("narrow"));
    connect.properties.receive_maximum = NonZeroU16::new(1);
    let (mut sub, _) = Raw::connect(server.addr, &connect).await;
    sub.subscribe_qos(1, &t, QoS::AtLeastOnce).await;
    let (mut publisher, _) = Raw::v5(server.addr, &unique("pub")).await;
    for (id, payload) in [(1, &b"1"[..]), (2, b"2"), (3, b"3")] {
        let mut p = publish(&t, QoS::AtLeastOnce, id, b"");
        p.payload = Bytes::copy_from_slice(payload);
        publisher.send(&p).await;
        assert!(matches!(publisher.recv().await, Packet::PubAck(_)));
    }
    for expected in [&b"1"[..], b"2", b"3"] {
        let got = sub.recv_publish().await;
        assert_eq!(&got.payload[..], expected, "in order");
        sub.expect_no_publish(Duration::from_millis(200)).await;
        sub.send(&bulwark_proto::PubAck::new(got.packet_id.unwrap()))
            .await;
    }
    server.stop().await;
}

#[tokio::test]
async fn unacknowledged_messages_are_resent_on_resume() {
    // [MQTT-4.4.0-1]: on resume the server resends unacknowledged PUBLISHes (DUP=1,
    // [MQTT-3.3.1-1]) and PUBRELs with their original packet identifiers.
    let server = start().await;
    let id = unique("resumer");
    let t1 = unique("raw/resend-q1");
    let t2 = unique("raw/resend-q2");
    let (mut sub, _) = Raw::connect(server.addr, &persistent_connect(&id, true, 60)).await;
    sub.subscribe_qos(1, &t1, QoS::AtLeastOnce).await;
    sub.subscribe_qos(2, &t2, QoS::ExactlyOnce).await;
    let (mut publisher, _) = Raw::v5(server.addr, &unique("pub")).await;
    publisher
        .send(&publish(&t1, QoS::AtLeastOnce, 1, b"unacked"))
        .await;
    publisher
        .send(&publish(&t2, QoS::ExactlyOnce, 2, b"half-done"))
        .await;

    let q1 = sub.recv_publish().await;
    assert_eq!(&q1.payload[..], b"unacked");
    let q2 = sub.recv_publish().await;
    assert_eq!(&q2.payload[..], b"half-done");
    let q2_id = q2.packet_id.unwrap();
    sub.send(&bulwark_proto::PubRec::new(q2_id)).await;
    assert!(matches!(sub.recv().await, Packet::PubRel(r) if r.packet_id == q2_id));
    drop(sub); // no PUBACK for q1, no PUBCOMP for q2

    let (mut sub, ack) = Raw::connect(server.addr, &persistent_connect(&id, false, 60)).await;
    assert!(ack.session_present);
    let mut resent_publish = None;
    let mut resent_pubrel = None;
    while resent_publish.is_none() || resent_pubrel.is_none() {
        match sub.recv().await {
            Packet::Publish(p) => {
                assert!(resent_publish.is_none(), "one PUBLISH resent: {p:?}");
                resent_publish = Some(p);
            }
            Packet::PubRel(r) => resent_pubrel = Some(r),
            other => panic!("unexpected {other:?}"),
        }
    }
    let p = resent_publish.unwrap();
    assert_eq!(&p.payload[..], b"unacked");
    assert!(p.dup, "DUP=1 on a redelivery");
    assert_eq!(p.packet_id, q1.packet_id, "same packet identifier");
    assert_eq!(resent_pubrel.unwrap().packet_id, q2_id);
    server.stop().await;
}

#[tokio::test]
async fn takeover_publishes_the_first_connections_will() {
    // §3.1.3.2.2: on takeover the existing connection's will is sent, unless the new one
    // uses Clean Start 0 and the will has a delay.
    let server = start().await;
    let will_topic = unique("raw/will-takeover");
    let mut watcher = will_watcher(&server, &will_topic).await;
    let id = unique("taken-with-will");
    let (mut first, _) =
        Raw::connect(server.addr, &connect_with_will(&id, &will_topic, b"taken")).await;
    let (_second, _) = Raw::v5(server.addr, &id).await;
    first.expect_disconnect(ReasonCode::SessionTakenOver).await;
    assert_eq!(&watcher.recv_publish().await.payload[..], b"taken");

    // Clean Start 0 and a will delay: the session continues, no will.
    let id = unique("resumed-with-will");
    let mut connect = connect_with_will(&id, &will_topic, b"never");
    connect.properties.session_expiry_interval = Some(60);
    if let Some(will) = connect.will.as_mut() {
        will.properties.will_delay_interval = Some(5);
    }
    let (mut first, _) = Raw::connect(server.addr, &connect).await;
    let (_second, ack) = Raw::connect(server.addr, &persistent_connect(&id, false, 60)).await;
    assert!(ack.session_present);
    first.expect_disconnect(ReasonCode::SessionTakenOver).await;
    watcher.expect_no_publish(Duration::from_millis(500)).await;
    server.stop().await;
}

#[tokio::test]
async fn will_is_published_when_the_session_ends_before_the_delay() {
    // §3.1.3.2.2: the will waits for the Will Delay Interval or the end of the session,
    // whichever comes first.
    let server = start().await;
    let will_topic = unique("raw/will-expiry");
    let mut watcher = will_watcher(&server, &will_topic).await;
    let mut connect = connect_with_will(&unique("short-session"), &will_topic, b"ended");
    connect.properties.session_expiry_interval = Some(1);
    if let Some(will) = connect.will.as_mut() {
        will.properties.will_delay_interval = Some(30);
    }
    let (raw, _) = Raw::connect(server.addr, &connect).await;
    let dropped = Instant::now();
    drop(raw);
    let got = watcher.recv_publish().await;
    assert_eq!(&got.payload[..], b"ended");
    let waited = dropped.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "sent when the session ended (~1 s), not at once: {waited:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn session_expiry_in_disconnect() {
    // [MQTT-3.14.2-2]: a non-zero Session Expiry Interval in DISCONNECT after 0 in CONNECT is
    // a Protocol Error.
    let server = start().await;
    let (mut raw, _) = Raw::connect(
        server.addr,
        &persistent_connect(&unique("zero-then-more"), true, 0),
    )
    .await;
    let mut d = Disconnect::new(ReasonCode::Success);
    d.properties.session_expiry_interval = Some(60);
    raw.send(&d).await;
    raw.expect_disconnect(ReasonCode::ProtocolError).await;

    // §3.14.2.2.2: a Session Expiry Interval of 0 in DISCONNECT ends the session now.
    let id = unique("more-then-zero");
    let (mut raw, _) = Raw::connect(server.addr, &persistent_connect(&id, true, 60)).await;
    raw.subscribe_qos(1, &unique("raw/expiry-d"), QoS::AtLeastOnce)
        .await;
    let mut d = Disconnect::new(ReasonCode::Success);
    d.properties.session_expiry_interval = Some(0);
    raw.send(&d).await;
    raw.until_closed(WAIT).await;
    let (_raw, ack) = Raw::connect(server.addr, &persistent_connect(&id, false, 60)).await;
    assert!(!ack.session_present, "the session ended at DISCONNECT");
    server.stop().await;
}

#[tokio::test]
async fn session_expires_after_its_interval() {
    // §3.1.2.11.2: the session is discarded when the interval has passed after the close.
    let server = start().await;
    let id = unique("expiring");
    let (mut raw, _) = Raw::connect(server.addr, &persistent_connect(&id, true, 1)).await;
    raw.subscribe_qos(1, &unique("raw/expiring"), QoS::AtLeastOnce)
        .await;
    raw.send(&Disconnect::new(ReasonCode::Success)).await;
    raw.until_closed(WAIT).await;
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let (_raw, ack) = Raw::connect(server.addr, &persistent_connect(&id, false, 1)).await;
    assert!(!ack.session_present, "the session expired");
    server.stop().await;
}

#[tokio::test]
async fn retained_messages_expire() {
    // [MQTT-3.3.2-5]: an expired retained message is not sent to new subscribers;
    // [MQTT-3.3.2-6]: a live one is sent with the remaining interval.
    let server = start().await;
    let base = unique("raw/retained-expiry");
    let (mut publisher, _) = Raw::v5(server.addr, &unique("pub")).await;
    let mut short = publish(&format!("{base}/short"), QoS::AtLeastOnce, 1, b"short");
    short.retain = true;
    short.properties.message_expiry_interval = Some(1);
    publisher.send(&short).await;
    let mut long = publish(&format!("{base}/long"), QoS::AtLeastOnce, 2, b"long");
    long.retain = true;
    long.properties.message_expiry_interval = Some(60);
    publisher.send(&long).await;
    for _ in 0..2 {
        assert!(matches!(publisher.recv().await, Packet::PubAck(_)));
    }
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (mut sub, _) = Raw::v5(server.addr, &unique("late")).await;
    sub.subscribe_qos(1, &format!("{base}/#"), QoS::AtLeastOnce)
        .await;
    let got = sub.recv_publish().await;
    assert_eq!(&got.payload[..], b"long");
    assert!(got.retain);
    let left = got
        .properties
        .message_expiry_interval
        .expect("interval sent");
    assert!((1..=58).contains(&left), "decreased: {left}");
    sub.expect_no_publish(QUIET).await;
    server.stop().await;
}

#[tokio::test]
async fn shared_subscription_with_no_local_is_a_protocol_error() {
    // [MQTT-3.8.3-4]: No Local on a Shared Subscription is a Protocol Error.
    let server = start().await;
    let (mut raw, _) = Raw::v5(server.addr, &unique("nolocal-share")).await;
    let mut options = SubscriptionOptions::qos(QoS::AtLeastOnce);
    options.no_local = true;
    let subscribe = bulwark_proto::Subscribe {
        packet_id: pid(1),
        properties: bulwark_proto::SubscribeProperties::default(),
        subscriptions: vec![bulwark_proto::Subscription {
            filter: common::filter("$share/g/raw/x"),
            options,
        }],
    };
    let mut buf = bytes::BytesMut::new();
    // Encoded by hand-checked bytes: the encoder may refuse what the spec forbids.
    if bulwark_proto::Encoder::new(ProtocolVersion::V5)
        .encode(&subscribe, &mut buf)
        .is_err()
    {
        buf.clear();
        // SUBSCRIBE id 1, no properties, "$share/g/raw/x", options QoS 1 + No Local.
        buf.extend_from_slice(b"\x82\x14\x00\x01\x00\x00\x0e$share/g/raw/x\x05");
    }
    raw.send_bytes(&buf).await;
    raw.expect_disconnect(ReasonCode::ProtocolError).await;
    server.stop().await;
}

#[tokio::test]
async fn unsubscribe_reports_missing_subscriptions() {
    // §3.11.3: UNSUBACK 0x00 for a removed subscription, 0x11 where none existed.
    let server = start().await;
    let t = unique("raw/unsub");
    let (mut raw, _) = Raw::v5(server.addr, &unique("unsub")).await;
    raw.subscribe_qos(1, &t, QoS::AtLeastOnce).await;
    raw.send(&bulwark_proto::Unsubscribe {
        packet_id: pid(2),
        properties: bulwark_proto::UnsubscribeProperties::default(),
        filters: vec![common::filter(&t), common::filter(&format!("{t}/none"))],
    })
    .await;
    match raw.recv().await {
        Packet::UnsubAck(ack) => {
            assert_eq!(ack.packet_id, pid(2));
            assert_eq!(
                ack.reason_codes,
                vec![ReasonCode::Success, ReasonCode::NoSubscriptionExisted]
            );
        }
        other => panic!("expected UNSUBACK, got {other:?}"),
    }
    server.stop().await;
}

#[tokio::test]
async fn retained_delivery_carries_the_subscription_identifier() {
    // [MQTT-3.3.4-3]: the identifier also goes with retained messages sent on subscribe.
    let server = start().await;
    let t = unique("raw/retained-subid");
    let (mut publisher, _) = Raw::v5(server.addr, &unique("pub")).await;
    let mut p = publish(&t, QoS::AtLeastOnce, 1, b"kept");
    p.retain = true;
    publisher.send(&p).await;
    assert!(matches!(publisher.recv().await, Packet::PubAck(_)));
    let (mut sub, _) = Raw::v5(server.addr, &unique("sub")).await;
    sub.subscribe(1, &t, SubscriptionOptions::qos(QoS::AtLeastOnce), Some(99))
        .await;
    let got = sub.recv_publish().await;
    assert!(got.retain);
    let ids: Vec<u32> = got
        .properties
        .subscription_identifiers
        .iter()
        .map(|i| i.get())
        .collect();
    assert_eq!(ids, vec![99]);
    server.stop().await;
}

#[tokio::test]
async fn clients_cannot_publish_to_sys_topics() {
    // DESIGN.md: `$SYS` is written by the broker only; a 5.0 publisher gets PUBACK 0x87.
    // [MQTT-3.1.2-29]: with Request Problem Information 0 no Reason String is sent.
    let server = start().await;
    let (mut watcher, _) = Raw::v5(server.addr, &unique("sys-watch")).await;
    watcher.subscribe_qos(1, "$SYS/#", QoS::AtLeastOnce).await;
    let mut connect = connect_packet(ProtocolVersion::V5, &unique("forger"));
    connect.properties.request_problem_information = Some(false);
    let (mut forger, _) = Raw::connect(server.addr, &connect).await;
    forger
        .send(&publish(
            "$SYS/broker/version",
            QoS::AtLeastOnce,
            1,
            b"0.0.0-fake",
        ))
        .await;
    match forger.recv().await {
        Packet::PubAck(ack) => {
            assert_eq!(ack.reason_code, ReasonCode::NotAuthorized);
            assert_eq!(ack.properties.reason_string, None);
        }
        other => panic!("expected PUBACK, got {other:?}"),
    }
    watcher.expect_no_publish(QUIET).await;
    server.stop().await;
}

#[tokio::test]
async fn server_keep_alive_is_enforced() {
    // [MQTT-3.2.2-21]: the client must use the Server Keep Alive, and the server times out by
    // it: 1.5 × 1 s.
    let server = start_with(|c| c.broker.sessions.max_keep_alive = 1).await;
    let mut connect = connect_packet(ProtocolVersion::V5, &unique("lazy"));
    connect.keep_alive = 60;
    let (mut raw, ack) = Raw::connect(server.addr, &connect).await;
    assert_eq!(ack.properties.server_keep_alive, Some(1));
    let started = Instant::now();
    raw.expect_disconnect(ReasonCode::KeepAliveTimeout).await;
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1000) && elapsed <= Duration::from_millis(2200),
        "{elapsed:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn oversized_connect_is_refused() {
    // DESIGN.md: CONNECT is held to the smaller pre-authentication limit (64 KiB). §4.13 and
    // §3.2.2.2: the server closes the connection and MAY first send CONNACK 0x95 (Packet too
    // large); it must not accept it.
    let server = start().await;
    let mut connect = connect_packet(ProtocolVersion::V5, &unique("huge"));
    connect.username = Some(string("user"));
    connect.password = Some(Bytes::from(vec![b'p'; 65_535]));
    let mut raw = Raw::tcp(server.addr, ProtocolVersion::V5).await;
    // The broker refuses it from its fixed header and may close before the rest is written.
    raw.send_to_closing(&connect).await;
    let packets = raw.until_closed(WAIT).await;
    assert!(
        matches!(packets.as_slice(), [] | [Packet::ConnAck(_)]),
        "closed, at most after a CONNACK: {packets:?}"
    );
    if let [Packet::ConnAck(ack)] = packets.as_slice() {
        assert_eq!(ack.reason_code, ReasonCode::PacketTooLarge);
    }
    server.stop().await;
}

#[tokio::test]
async fn outbound_topic_aliases_respect_the_clients_maximum() {
    // [MQTT-3.1.2-26]: no Topic Alias above the client's Topic Alias Maximum; every alias the
    // server uses must resolve to the topic the message was published to (§3.3.2.3.4).
    let server = start().await;
    let base = unique("raw/alias-out");
    let mut connect = connect_packet(ProtocolVersion::V5, &unique("alias-aware"));
    connect.properties.topic_alias_maximum = Some(2);
    let (mut sub, _) = Raw::connect(server.addr, &connect).await;
    sub.subscribe_qos(1, &format!("{base}/#"), QoS::AtMostOnce)
        .await;
    let (mut publisher, _) = Raw::v5(server.addr, &unique("pub")).await;
    let sequence = ["a", "b", "a", "c", "a", "b", "b", "c", "d", "a"];
    for (i, leaf) in sequence.iter().enumerate() {
        let mut p = publish(&format!("{base}/{leaf}"), QoS::AtMostOnce, 0, b"");
        p.payload = Bytes::from(i.to_string());
        publisher.send(&p).await;
    }
    let mut aliases: std::collections::HashMap<u16, String> = std::collections::HashMap::new();
    let mut used_alias = false;
    for (i, leaf) in sequence.iter().enumerate() {
        let got = sub.recv_publish().await;
        assert_eq!(got.payload, Bytes::from(i.to_string()), "in order");
        let resolved = match got.properties.topic_alias {
            Some(alias) => {
                used_alias = true;
                assert!(alias.get() <= 2, "alias {alias} above the maximum 2");
                if got.topic.is_empty() {
                    aliases
                        .get(&alias.get())
                        .cloned()
                        .unwrap_or_else(|| panic!("alias {alias} used before it was set"))
                } else {
                    aliases.insert(alias.get(), got.topic.as_str().to_owned());
                    got.topic.as_str().to_owned()
                }
            }
            None => {
                assert!(!got.topic.is_empty(), "empty topic without alias");
                got.topic.as_str().to_owned()
            }
        };
        assert_eq!(resolved, format!("{base}/{leaf}"), "message {i}");
    }
    assert!(used_alias, "outbound aliases are enabled by default");
    server.stop().await;
}

#[tokio::test]
async fn topic_aliases_do_not_outlive_the_connection() {
    // [MQTT-3.3.2-7]: alias mappings belong to one network connection; an empty topic with
    // an alias the new connection never set is a Protocol Error (§3.3.2.3.4).
    let server = start().await;
    let id = unique("alias-forgetter");
    let t = unique("raw/alias-gone");
    let (mut raw, _) = Raw::v5(server.addr, &id).await;
    let mut set = publish(&t, QoS::AtLeastOnce, 1, b"set");
    set.properties.topic_alias = NonZeroU16::new(1);
    raw.send(&set).await;
    assert!(matches!(raw.recv().await, Packet::PubAck(_)));
    raw.send(&Disconnect::new(ReasonCode::Success)).await;
    raw.until_closed(WAIT).await;

    let (mut raw, _) = Raw::v5(server.addr, &id).await;
    let mut used = publish(&t, QoS::AtLeastOnce, 2, b"use");
    used.topic = TopicName::empty_for_alias();
    used.properties.topic_alias = NonZeroU16::new(1);
    raw.send(&used).await;
    raw.expect_disconnect(ReasonCode::ProtocolError).await;
    server.stop().await;
}

#[tokio::test]
async fn malformed_topic_filter_is_refused() {
    // [MQTT-4.7.1-1]: `#` must be the last level. A broker answers with DISCONNECT 0x81
    // (malformed) or refuses the filter in SUBACK (0x8F); it must not grant it.
    let server = start().await;
    let (mut raw, _) = Raw::v5(server.addr, &unique("bad-filter")).await;
    // SUBSCRIBE id 1, no properties, filter "a/#/b", QoS 0.
    raw.send_bytes(b"\x82\x0b\x00\x01\x00\x00\x05a/#/b\x00")
        .await;
    match raw.recv_within(WAIT).await {
        Recv::Packet(Packet::Disconnect(d)) => {
            assert_eq!(d.reason_code, ReasonCode::MalformedPacket);
            raw.until_closed(WAIT).await;
        }
        Recv::Packet(Packet::SubAck(ack)) => {
            assert_eq!(ack.reason_codes, vec![ReasonCode::TopicFilterInvalid]);
        }
        other => panic!("expected DISCONNECT 0x81 or SUBACK 0x8F, got {other:?}"),
    }
    server.stop().await;
}

#[tokio::test]
async fn pubrel_for_an_unknown_packet_id_gets_pubcomp_0x92() {
    // §3.7.2.1: PUBCOMP 0x92 (Packet Identifier not found) answers a PUBREL the server does
    // not know; the exchange still completes ([MQTT-4.3.3-11]).
    let server = start().await;
    let (mut raw, _) = Raw::v5(server.addr, &unique("stray-pubrel")).await;
    raw.send(&PubRel::new(pid(99))).await;
    match raw.recv().await {
        Packet::PubComp(comp) => {
            assert_eq!(comp.packet_id, pid(99));
            assert_eq!(comp.reason_code, ReasonCode::PacketIdentifierNotFound);
        }
        other => panic!("expected PUBCOMP, got {other:?}"),
    }
    server.stop().await;
}
