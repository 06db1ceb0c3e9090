//! End-to-end tests of a connection's first and last moments, with a raw client: a CONNACK
//! within the client's Maximum Packet Size, a DISCONNECT that is processed before the
//! takeover that follows it, wills on takeover, and a close that lets the client read the
//! broker's last packet.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests"
)]

mod common;

use std::time::Duration;

use bulwark_proto::{Disconnect, Packet, ProtocolVersion, QoS, ReasonCode, Will};
use bytes::Bytes;
use common::{Raw, Recv, WAIT, connect_packet, publish, start, start_with, topic, unique};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn connack_fits_a_small_maximum_packet_size() {
    // [MQTT-3.1.2-25]: 5.0 CONNECT, client id "p", Maximum Packet Size 20. The CONNACK
    // leaves out what its absence says (Retain Available 1, ...) and fits.
    let server = start().await;
    let mut raw = Raw::tcp(server.addr, ProtocolVersion::V5).await;
    raw.send_bytes(&hex("101300044d5154540502000a052700000014000170"))
        .await;
    let Recv::Packet(Packet::ConnAck(ack)) = raw.recv_within(WAIT).await else {
        panic!("a CONNACK");
    };
    assert_eq!(ack.reason_code, ReasonCode::Success);
    let mut buf = bytes::BytesMut::new();
    let size = bulwark_proto::Encoder::new(ProtocolVersion::V5)
        .encode(&Packet::ConnAck(ack), &mut buf)
        .unwrap();
    assert!(size <= 20, "CONNACK of {size} bytes");
    // The connection works.
    raw.send(&Packet::PingReq).await;
    assert!(matches!(raw.recv().await, Packet::PingResp));

    // Maximum Packet Size 8: no room for the accepting CONNACK; refused with 0x95 (5 bytes).
    let mut raw = Raw::tcp(server.addr, ProtocolVersion::V5).await;
    raw.send_bytes(&hex("101300044d5154540502000a052700000008000171"))
        .await;
    let packets = raw.until_closed(WAIT).await;
    assert!(
        matches!(packets.as_slice(), [Packet::ConnAck(a)] if a.reason_code == ReasonCode::PacketTooLarge),
        "{packets:?}"
    );
    server.stop().await;
}

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

fn with_will(version: ProtocolVersion, id: &str, will_topic: &str) -> bulwark_proto::Connect {
    let mut connect = connect_packet(version, id);
    connect.will = Some(Will {
        topic: topic(will_topic),
        payload: Bytes::from_static(b"will"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: bulwark_proto::WillProperties::default(),
    });
    connect
}

/// Publishes a marker to `will_topic` and reads the watcher up to it: every PUBLISH before
/// it is a will that went out.
async fn wills_before_marker(
    server: &common::TestServer,
    watcher: &mut Raw,
    will_topic: &str,
) -> usize {
    let (mut marker, _) = Raw::v5(server.addr, &unique("marker")).await;
    marker
        .send(&publish(will_topic, QoS::AtMostOnce, 0, b"marker"))
        .await;
    let mut wills = 0;
    loop {
        let got = watcher.recv_publish().await;
        if &got.payload[..] == b"marker" {
            return wills;
        }
        wills += 1;
    }
}

#[tokio::test]
async fn a_disconnect_before_a_reconnect_discards_the_will_whatever_the_scheduling() {
    // [MQTT-3.14.4-3]: DISCONNECT 0x00 discards the will. A client that disconnects and
    // reconnects with the same identifier at once must not have its will published: the old
    // connection's DISCONNECT is processed before the takeover.
    let server = start().await;
    let will_topic = unique("life/will");
    let (mut watcher, _) = Raw::v5(server.addr, &unique("watcher")).await;
    watcher.subscribe_qos(1, &will_topic, QoS::AtMostOnce).await;
    for version in [ProtocolVersion::V5, ProtocolVersion::V3_1_1] {
        let id = unique("flapper");
        for round in 0..40 {
            let (mut raw, ack) =
                Raw::connect(server.addr, &with_will(version, &id, &will_topic)).await;
            assert_eq!(ack.reason_code, ReasonCode::Success, "round {round}");
            raw.send(&Disconnect::new(ReasonCode::Success)).await;
            drop(raw);
        }
        // CONNECT and DISCONNECT in one write, then the close: the DISCONNECT read with the
        // CONNECT is handled too.
        for _ in 0..20 {
            let mut raw = Raw::tcp(server.addr, version).await;
            let mut bytes = bytes::BytesMut::new();
            let encoder = bulwark_proto::Encoder::new(version);
            encoder
                .encode(&with_will(version, &id, &will_topic), &mut bytes)
                .unwrap();
            encoder
                .encode(&Disconnect::new(ReasonCode::Success), &mut bytes)
                .unwrap();
            raw.send_bytes(&bytes).await;
            drop(raw);
        }
        // The last one leaves normally too.
        let (mut raw, _) = Raw::connect(server.addr, &with_will(version, &id, &will_topic)).await;
        raw.send(&Disconnect::new(ReasonCode::Success)).await;
        raw.until_closed(WAIT).await;
    }
    assert_eq!(
        wills_before_marker(&server, &mut watcher, &will_topic).await,
        0
    );
    server.stop().await;
}

#[tokio::test]
async fn takeover_of_a_continuing_session_publishes_the_will_unless_delayed() {
    // The decision (docs/conformance.md): [MQTT-3.1.4-3] says the will of a connection taken
    // over is published as §3.1.2.5 says; with a Will Delay Interval the new connection to
    // the session comes first and [MQTT-3.1.3-9] forbids it. A client that does not want its
    // will on a takeover sets a Will Delay Interval.
    let server = start().await;
    let will_topic = unique("life/takeover-will");
    let (mut watcher, _) = Raw::v5(server.addr, &unique("watcher")).await;
    watcher.subscribe_qos(1, &will_topic, QoS::AtMostOnce).await;
    let persistent = |id: &str, delay: Option<u32>| {
        let mut c = with_will(ProtocolVersion::V5, id, &will_topic);
        c.clean_start = false;
        c.properties.session_expiry_interval = Some(300);
        c.will.as_mut().unwrap().properties.will_delay_interval = delay;
        c
    };
    // No delay: published on the takeover, although the session continues.
    let id = unique("no-delay");
    let (mut first, _) = Raw::connect(server.addr, &persistent(&id, None)).await;
    let (_second, ack) = Raw::connect(server.addr, &persistent(&id, None)).await;
    assert!(ack.session_present);
    first.expect_disconnect(ReasonCode::SessionTakenOver).await;
    assert_eq!(&watcher.recv_publish().await.payload[..], b"will");
    // A delay: the session continued within it; never published.
    let id = unique("delayed");
    let (mut first, _) = Raw::connect(server.addr, &persistent(&id, Some(30))).await;
    let (_second, ack) = Raw::connect(server.addr, &persistent(&id, Some(30))).await;
    assert!(ack.session_present);
    first.expect_disconnect(ReasonCode::SessionTakenOver).await;
    assert_eq!(
        wills_before_marker(&server, &mut watcher, &will_topic).await,
        0
    );
    server.stop().await;
}

#[tokio::test]
async fn the_last_packet_reaches_a_client_that_is_still_writing() {
    // A client over the Receive Maximum gets DISCONNECT 0x93 while it is still sending. The
    // broker stops writing and reads what keeps coming before it closes, so the client's
    // writes do not fail on a reset and it reads the DISCONNECT, then a clean end.
    let server = start_with(|c| c.broker.sessions.receive_maximum = 2).await;
    let (mut raw, _) = Raw::v5(server.addr, &unique("flooder")).await;
    let t = unique("life/flood");
    let mut bytes = bytes::BytesMut::new();
    let encoder = bulwark_proto::Encoder::new(ProtocolVersion::V5);
    encoder
        .encode(&publish(&t, QoS::ExactlyOnce, 1, b"x"), &mut bytes)
        .unwrap();
    let one = bytes.to_vec();
    for id in 1..=3u16 {
        let mut p = one.clone();
        // The packet identifier is the last two bytes before the empty property list and
        // the payload: set it directly.
        let at = p.len() - 4;
        p[at..at + 2].copy_from_slice(&id.to_be_bytes());
        raw.send_bytes(&p).await;
    }
    // The DISCONNECT has arrived (seen without reading it) ...
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut seen = [0u8; 1024];
    loop {
        let n = raw.stream.peek(&mut seen).await.unwrap();
        if packets_of(&seen[..n])
            .iter()
            .any(|p| matches!(p, Packet::Disconnect(_)))
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no DISCONNECT in {:?}",
            &seen[..n]
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // ... and the client, not reading yet, goes on writing.
    for id in 4..=60u16 {
        let mut p = one.clone();
        let at = p.len() - 4;
        p[at..at + 2].copy_from_slice(&id.to_be_bytes());
        raw.stream
            .write_all(&p)
            .await
            .unwrap_or_else(|err| panic!("write of PUBLISH {id} failed: {err}"));
    }
    let mut received = Vec::new();
    tokio::time::timeout(WAIT, raw.stream.read_to_end(&mut received))
        .await
        .expect("the broker closes in time")
        .expect("a clean end of stream, not a reset");
    let last = packets_of(&received).pop();
    assert!(
        matches!(&last, Some(Packet::Disconnect(d)) if d.reason_code == ReasonCode::ReceiveMaximumExceeded),
        "{last:?}"
    );
    drop(raw);
    tokio::time::timeout(Duration::from_secs(5), server.stop())
        .await
        .unwrap();
}

/// The packets a 5.0 server sent in `bytes`, after the CONNACK (read already).
fn packets_of(bytes: &[u8]) -> Vec<Packet> {
    let mut decoder =
        bulwark_proto::Decoder::client(ProtocolVersion::V5, bulwark_proto::DecoderLimits::PROTOCOL);
    decoder.handle_bytes(&[0x20, 3, 0, 0, 0]);
    decoder.handle_bytes(bytes);
    let mut packets = Vec::new();
    while let Ok(Some(packet)) = decoder.poll_packet() {
        packets.push(packet);
    }
    packets.remove(0);
    packets
}
