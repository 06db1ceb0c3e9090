//! The streaming [`Decoder`] (packet order, direction, framing across reads, size limits,
//! sticky errors) and the [`Encoder`] (the peer's Maximum Packet Size), against MQTT 5.0 and
//! 3.1.1.
//!
//! Each test is named after the normative statement it checks and asserts both the reason code
//! and the rule the decoder reports, so that it fails if the rule is broken or cited wrongly.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code"
)]

mod common;

use bulwark_proto::{
    AckProperties, Auth, AuthProperties, DecodeError, Decoder, DecoderLimits, Disconnect,
    DisconnectProperties, EncodeError, Encoder, MqttString, Packet, PacketId, PacketType,
    ProtocolVersion, PubAck, PubComp, PubRec, PubRel, Publish, QoS, ReasonCode, SubAck, TopicName,
    UnsubAck, UserProperty,
};
use bytes::{Bytes, BytesMut};
use common::{packet, string};

const V5: ProtocolVersion = ProtocolVersion::V5;
const V311: ProtocolVersion = ProtocolVersion::V3_1_1;
const VERSIONS: [ProtocolVersion; 2] = [V5, V311];

fn connect(version: ProtocolVersion) -> Vec<u8> {
    let mut body = string(b"MQTT");
    body.extend_from_slice(&[version.level(), 0x02, 0, 60]);
    if version.is_v5() {
        body.push(0);
    }
    body.extend(string(b"c"));
    packet(0x10, &body)
}

/// A server-side decoder that has accepted a CONNECT in `version`.
fn server(version: ProtocolVersion) -> Decoder {
    let mut decoder = Decoder::server(DecoderLimits::default());
    decoder.handle_bytes(&connect(version));
    assert!(matches!(
        decoder.poll_packet(),
        Ok(Some(Packet::Connect(_)))
    ));
    decoder
}

/// A client-side decoder that has received a successful CONNACK in `version`.
fn client(version: ProtocolVersion) -> Decoder {
    let mut decoder = Decoder::client(version, DecoderLimits::default());
    let connack: &[u8] = if version.is_v5() {
        &[0x20, 3, 0, 0, 0]
    } else {
        &[0x20, 2, 0, 0]
    };
    decoder.handle_bytes(connack);
    assert!(matches!(
        decoder.poll_packet(),
        Ok(Some(Packet::ConnAck(_)))
    ));
    decoder
}

fn decode(mut decoder: Decoder, bytes: &[u8]) -> Result<Packet, DecodeError> {
    decoder.handle_bytes(bytes);
    let packet = decoder.poll_packet().map(|p| p.expect("a complete packet"));
    if packet.is_ok() {
        assert_eq!(decoder.buffered(), 0, "the packet is consumed whole");
    }
    packet
}

/// What a client decodes from a server.
fn from_server(version: ProtocolVersion, bytes: &[u8]) -> Result<Packet, DecodeError> {
    decode(client(version), bytes)
}

#[track_caller]
fn assert_poll_error(decoder: &mut Decoder, code: ReasonCode, rule: &str) {
    match decoder.poll_packet() {
        Err(err) => {
            assert_eq!(err.reason_code(), code, "{err}");
            assert_eq!(err.rule(), rule, "{err}");
        }
        Ok(packet) => panic!("expected [{rule}] {code}, got {packet:?}"),
    }
}

/// Every packet `decoder` yields for `bytes`, fed in chunks of `chunk` bytes.
fn decode_all(mut decoder: Decoder, bytes: &[u8], chunk: usize) -> Vec<Packet> {
    let mut packets = Vec::new();
    for piece in bytes.chunks(chunk) {
        decoder.handle_bytes(piece);
        while let Some(packet) = decoder.poll_packet().unwrap() {
            packets.push(packet);
        }
    }
    assert_eq!(decoder.buffered(), 0);
    packets
}

/// A varied client stream: CONNECT, PUBLISH QoS 1 with properties, SUBSCRIBE, PINGREQ,
/// UNSUBSCRIBE, PUBREL, a large PUBLISH, DISCONNECT.
fn client_stream(version: ProtocolVersion) -> Vec<u8> {
    let v5 = version.is_v5();
    let mut out = connect(version);
    let mut body = string(b"a/b");
    body.extend_from_slice(&[0, 1]);
    if v5 {
        body.extend_from_slice(&[3, 0x23, 0, 4]);
    }
    body.extend_from_slice(b"hello");
    out.extend(packet(0x32, &body));
    let mut body = vec![0, 2];
    if v5 {
        body.push(0);
    }
    body.extend(string(b"x/#"));
    body.push(1);
    out.extend(packet(0x82, &body));
    out.extend_from_slice(&[0xC0, 0]);
    let mut body = vec![0, 3];
    if v5 {
        body.push(0);
    }
    body.extend(string(b"x/#"));
    out.extend(packet(0xA2, &body));
    out.extend_from_slice(&[0x62, 2, 0, 1]);
    let mut body = string(b"big");
    if v5 {
        body.push(0);
    }
    body.extend(vec![7u8; 300]);
    out.extend(packet(0x30, &body));
    out.extend_from_slice(&[0xE0, 0]);
    out
}

// ---------------------------------------------------------------------------------------------
// Packet order (§3.1, §3.2)

#[test]
fn mqtt_3_1_0_1_first_packet_must_be_connect() {
    // Refused on the fixed header alone, before any of the body has arrived.
    for header in [
        &[0x30, 0x10][..],
        &[0xC0, 0],
        &[0x82, 0x20],
        &[0xE0, 0],
        &[0xF0, 0],
        &[0x40, 2],
        &[0x62, 2],
    ] {
        let mut decoder = Decoder::server(DecoderLimits::default());
        decoder.handle_bytes(header);
        assert_poll_error(&mut decoder, ReasonCode::ProtocolError, "MQTT-3.1.0-1");
    }
}

#[test]
fn mqtt_3_1_0_2_second_connect_is_protocol_error() {
    for version in VERSIONS {
        let mut decoder = server(version);
        decoder.handle_bytes(&[0x10, 0x20]);
        assert_poll_error(&mut decoder, ReasonCode::ProtocolError, "MQTT-3.1.0-2");
    }
}

#[test]
fn mqtt_3_2_0_1_first_packet_from_the_server_must_be_connack() {
    for version in VERSIONS {
        for header in [&[0x30, 0x10][..], &[0xD0, 0], &[0x90, 3], &[0x40, 2]] {
            let mut decoder = Decoder::client(version, DecoderLimits::default());
            decoder.handle_bytes(header);
            assert_poll_error(&mut decoder, ReasonCode::ProtocolError, "MQTT-3.2.0-1");
        }
    }
    // MQTT 5.0 allows AUTH before the CONNACK (§4.12).
    let mut decoder = Decoder::client(V5, DecoderLimits::default());
    let mut body = vec![0x18, 4, 0x15];
    body.extend(string(b"M"));
    decoder.handle_bytes(&packet(0xF0, &body));
    decoder.handle_bytes(&[0x20, 3, 0, 0, 0]);
    assert!(matches!(decoder.poll_packet(), Ok(Some(Packet::Auth(_)))));
    assert!(matches!(
        decoder.poll_packet(),
        Ok(Some(Packet::ConnAck(_)))
    ));
}

#[test]
fn mqtt_3_2_0_2_second_connack_is_protocol_error() {
    for version in VERSIONS {
        let mut decoder = client(version);
        decoder.handle_bytes(&[0x20, 3]);
        assert_poll_error(&mut decoder, ReasonCode::ProtocolError, "MQTT-3.2.0-2");
    }
}

// ---------------------------------------------------------------------------------------------
// Packet type, direction and flags (§2.1)

#[test]
fn mqtt_5_2_1_2_server_refuses_packets_only_a_server_sends() {
    // CONNACK, SUBACK, UNSUBACK, PINGRESP: refused on the fixed header.
    for version in VERSIONS {
        for header in [&[0x20, 3][..], &[0x90, 3], &[0xB0, 3], &[0xD0, 0]] {
            let mut decoder = server(version);
            decoder.handle_bytes(header);
            assert_poll_error(&mut decoder, ReasonCode::ProtocolError, "MQTT-5 §2.1.2");
        }
    }
}

#[test]
fn mqtt_5_2_1_2_client_refuses_packets_only_a_client_sends() {
    // CONNECT, SUBSCRIBE, UNSUBSCRIBE, PINGREQ.
    for version in VERSIONS {
        for header in [&[0x10, 12][..], &[0x82, 6], &[0xA2, 5], &[0xC0, 0]] {
            let mut decoder = client(version);
            decoder.handle_bytes(header);
            assert_poll_error(&mut decoder, ReasonCode::ProtocolError, "MQTT-5 §2.1.2");
        }
    }
}

#[test]
fn mqtt_5_2_1_2_packet_type_0_is_malformed() {
    let mut decoder = server(V5);
    decoder.handle_bytes(&[0x00, 0]);
    assert_poll_error(&mut decoder, ReasonCode::MalformedPacket, "MQTT-5 §2.1.2");
    let mut decoder = Decoder::client(V311, DecoderLimits::default());
    decoder.handle_bytes(&[0x0F, 0]);
    assert_poll_error(&mut decoder, ReasonCode::MalformedPacket, "MQTT-5 §2.1.2");
}

#[test]
fn mqtt_2_1_3_1_reserved_flags_are_checked_on_the_fixed_header() {
    // CONNECT and CONNACK have flags 0000. A CONNECT's are checked once its protocol level
    // is known (MQTT 3.1 did not reserve them).
    let mut decoder = Decoder::server(DecoderLimits::default());
    decoder.handle_bytes(b"\x12\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00");
    assert_poll_error(&mut decoder, ReasonCode::MalformedPacket, "MQTT-2.1.3-1");
    // A CONNACK's are checked before its body arrives.
    let mut decoder = Decoder::client(V5, DecoderLimits::default());
    decoder.handle_bytes(&[0x28, 3]);
    assert_poll_error(&mut decoder, ReasonCode::MalformedPacket, "MQTT-2.1.3-1");
    // SUBSCRIBE names its own statement.
    let mut decoder = server(V5);
    decoder.handle_bytes(&[0x80, 0x20]);
    assert_poll_error(&mut decoder, ReasonCode::MalformedPacket, "MQTT-3.8.1-1");
}

// ---------------------------------------------------------------------------------------------
// Framing (§2.1.4, §1.5.5)

#[test]
fn mqtt_6_0_0_2_packets_split_across_reads_byte_by_byte() {
    for version in VERSIONS {
        let stream = client_stream(version);
        let whole = decode_all(
            Decoder::server(DecoderLimits::default()),
            &stream,
            stream.len(),
        );
        assert_eq!(whole.len(), 8);
        for chunk in [1, 2, 3, 7, 64] {
            let pieces = decode_all(Decoder::server(DecoderLimits::default()), &stream, chunk);
            assert_eq!(pieces, whole, "chunks of {chunk} bytes");
        }
        let kinds: Vec<_> = whole.iter().map(Packet::packet_type).collect();
        assert_eq!(
            kinds.iter().map(|k| k.name()).collect::<Vec<_>>(),
            [
                "CONNECT",
                "PUBLISH",
                "SUBSCRIBE",
                "PINGREQ",
                "UNSUBSCRIBE",
                "PUBREL",
                "PUBLISH",
                "DISCONNECT"
            ]
        );
    }
}

#[test]
fn mqtt_6_0_0_2_several_packets_in_one_read() {
    let mut decoder = server(V5);
    let mut bytes = vec![0xC0, 0];
    bytes.extend(packet(0x30, &[0, 1, b'a', 0, b'x']));
    bytes.extend_from_slice(&[0x62, 2, 0, 1, 0xE0, 0]);
    // And the first byte of a packet still on its way.
    bytes.push(0xC0);
    decoder.handle_bytes(&bytes);
    assert_eq!(decoder.poll_packet(), Ok(Some(Packet::PingReq)));
    assert!(matches!(
        decoder.poll_packet(),
        Ok(Some(Packet::Publish(_)))
    ));
    assert!(matches!(decoder.poll_packet(), Ok(Some(Packet::PubRel(_)))));
    assert!(matches!(
        decoder.poll_packet(),
        Ok(Some(Packet::Disconnect(_)))
    ));
    assert_eq!(decoder.poll_packet(), Ok(None));
    assert_eq!(decoder.buffered(), 1);
    decoder.handle_bytes(&[0]);
    assert_eq!(decoder.poll_packet(), Ok(Some(Packet::PingReq)));
}

#[test]
fn mqtt_6_0_0_2_incomplete_packet_waits_for_more_bytes() {
    let mut decoder = server(V5);
    let bytes = packet(0x30, &[0, 1, b'a', 0, b'x', b'y']);
    for (index, byte) in bytes.iter().enumerate() {
        assert_eq!(decoder.poll_packet(), Ok(None), "after {index} bytes");
        decoder.handle_bytes(&[*byte]);
    }
    assert!(matches!(
        decoder.poll_packet(),
        Ok(Some(Packet::Publish(_)))
    ));
    assert_eq!(decoder.poll_packet(), Ok(None));
}

#[test]
fn mqtt_1_5_5_1_remaining_length_in_its_shortest_form() {
    // 0x80 0x00 encodes 0 in two bytes.
    let mut decoder = server(V5);
    decoder.handle_bytes(&[0xC0, 0x80, 0x00]);
    assert_poll_error(&mut decoder, ReasonCode::MalformedPacket, "MQTT-1.5.5-1");
    // Five bytes of Remaining Length.
    let mut decoder = server(V5);
    decoder.handle_bytes(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F]);
    assert_poll_error(&mut decoder, ReasonCode::MalformedPacket, "MQTT-5 §1.5.5");
}

// ---------------------------------------------------------------------------------------------
// Maximum Packet Size (§3.1.2.11.4, §3.2.2.3.6)

const SMALL: DecoderLimits = DecoderLimits {
    max_packet_size: 128,
    max_unauthenticated_packet_size: 64,
};

#[test]
fn mqtt_3_2_2_15_packet_over_the_servers_maximum_is_refused_from_its_fixed_header() {
    for version in VERSIONS {
        let mut decoder = Decoder::server(SMALL);
        decoder.handle_bytes(&connect(version));
        assert!(decoder.poll_packet().unwrap().is_some());
        decoder.set_authenticated();
        assert_eq!(decoder.current_max_packet_size(), 128);
        // 2 + 126 = 128 bytes: exactly the limit.
        let mut body = string(b"t");
        if version.is_v5() {
            body.push(0);
        }
        body.resize(126, 0xAB);
        decoder.handle_bytes(&packet(0x30, &body));
        assert!(matches!(
            decoder.poll_packet(),
            Ok(Some(Packet::Publish(_)))
        ));
        // 2 + 127 = 129 bytes, refused before the body arrives.
        decoder.handle_bytes(&[0x30, 127]);
        assert_poll_error(&mut decoder, ReasonCode::PacketTooLarge, "MQTT-3.2.2-15");
        // A Remaining Length far beyond anything buffered.
        let mut decoder = Decoder::server(SMALL);
        decoder.handle_bytes(&[0x10, 0xFF, 0xFF, 0xFF, 0x7F]);
        assert_poll_error(&mut decoder, ReasonCode::PacketTooLarge, "MQTT-3.2.2-15");
    }
}

#[test]
fn mqtt_3_1_2_24_packet_over_the_clients_maximum_is_refused_from_its_fixed_header() {
    for version in VERSIONS {
        let mut decoder = Decoder::client(version, SMALL);
        decoder.handle_bytes(if version.is_v5() {
            &[0x20, 3, 0, 0, 0]
        } else {
            &[0x20, 2, 0, 0]
        });
        assert!(decoder.poll_packet().unwrap().is_some());
        decoder.set_authenticated();
        decoder.handle_bytes(&[0x30, 0x80, 0x01]);
        assert_poll_error(&mut decoder, ReasonCode::PacketTooLarge, "MQTT-3.1.2-24");
    }
}

#[test]
fn mqtt_3_2_2_15_smaller_limit_before_authentication() {
    let mut decoder = Decoder::server(SMALL);
    assert_eq!(decoder.current_max_packet_size(), 64);
    // A 65-byte CONNECT (client identifier padded) is refused before authentication.
    let mut body = string(b"MQTT");
    body.extend_from_slice(&[5, 0x02, 0, 60, 0]);
    body.extend(string(&[b'c'; 50]));
    let big_connect = packet(0x10, &body);
    assert_eq!(big_connect.len(), 65);
    decoder.handle_bytes(&big_connect[..2]);
    assert_poll_error(&mut decoder, ReasonCode::PacketTooLarge, "MQTT-3.2.2-15");
    // The same CONNECT passes a decoder whose limits allow it.
    let mut decoder = Decoder::server(DecoderLimits {
        max_unauthenticated_packet_size: 65,
        ..SMALL
    });
    decoder.handle_bytes(&big_connect);
    assert!(matches!(
        decoder.poll_packet(),
        Ok(Some(Packet::Connect(_)))
    ));
    // A 100-byte PUBLISH waits for authentication.
    let mut body = string(b"t");
    body.push(0);
    body.resize(98, 0);
    let publish = packet(0x30, &body);
    let mut early = server_with(SMALL);
    early.handle_bytes(&publish);
    assert_poll_error(&mut early, ReasonCode::PacketTooLarge, "MQTT-3.2.2-15");
    let mut late = server_with(SMALL);
    late.set_authenticated();
    late.handle_bytes(&publish);
    assert!(matches!(late.poll_packet(), Ok(Some(Packet::Publish(_)))));
    // The smaller of the two limits applies before authentication.
    let odd = DecoderLimits {
        max_packet_size: 50,
        max_unauthenticated_packet_size: 64,
    };
    assert_eq!(Decoder::server(odd).current_max_packet_size(), 50);
}

fn server_with(limits: DecoderLimits) -> Decoder {
    let mut decoder = Decoder::server(limits);
    decoder.handle_bytes(&connect(V5));
    assert!(matches!(
        decoder.poll_packet(),
        Ok(Some(Packet::Connect(_)))
    ));
    decoder
}

// ---------------------------------------------------------------------------------------------
// Errors end the connection (§4.13)

#[test]
fn mqtt_4_13_1_1_an_error_is_sticky() {
    let mut decoder = server(V5);
    decoder.handle_bytes(&[0x36, 0]);
    assert_poll_error(&mut decoder, ReasonCode::MalformedPacket, "MQTT-3.3.1-4");
    // Valid bytes afterwards change nothing: the connection must be closed.
    decoder.handle_bytes(&[0xC0, 0]);
    assert_poll_error(&mut decoder, ReasonCode::MalformedPacket, "MQTT-3.3.1-4");
    assert_poll_error(&mut decoder, ReasonCode::MalformedPacket, "MQTT-3.3.1-4");
}

#[test]
fn connect_sets_the_protocol_version_of_later_packets() {
    for version in VERSIONS {
        let mut decoder = Decoder::server(DecoderLimits::default());
        assert_eq!(decoder.protocol_version(), None);
        decoder.handle_bytes(&connect(version));
        assert!(decoder.poll_packet().unwrap().is_some());
        assert_eq!(decoder.protocol_version(), Some(version));
        // Later packets are read in that version: a 3.1.1 PUBLISH has no property length.
        decoder.handle_bytes(&packet(0x30, &[0, 1, b'a', 0, b'z']));
        let Ok(Some(Packet::Publish(p))) = decoder.poll_packet() else {
            panic!("a PUBLISH");
        };
        let expected: &[u8] = if version.is_v5() { b"z" } else { b"\0z" };
        assert_eq!(&p.payload[..], expected);
    }
}

// ---------------------------------------------------------------------------------------------
// Encoder and the peer's Maximum Packet Size

fn publish_of_size(payload: usize) -> Publish {
    Publish::new(
        TopicName::new("t").unwrap(),
        Bytes::from(vec![1u8; payload]),
    )
}

#[test]
fn mqtt_3_1_2_24_encoder_refuses_a_packet_over_the_peers_maximum() {
    for version in VERSIONS {
        let mut encoder = Encoder::new(version);
        encoder.set_max_packet_size(20);
        assert_eq!(encoder.max_packet_size(), 20);
        // 1 + 1 + (3 + property length + payload) bytes.
        let fixed = if version.is_v5() { 6 } else { 5 };
        let mut out = BytesMut::from(&b"prefix"[..]);
        assert_eq!(
            encoder.encode(&publish_of_size(20 - fixed), &mut out),
            Ok(20)
        );
        assert_eq!(out.len(), 26);
        let before = out.clone();
        assert_eq!(
            encoder.encode(&publish_of_size(21 - fixed), &mut out),
            Err(EncodeError::PacketTooLarge { size: 21, max: 20 })
        );
        assert_eq!(out, before, "nothing appended");
        // A PUBLISH has nothing that may be dropped: the caller discards it [MQTT-3.1.2-25].
        let mut packet = Packet::Publish(publish_of_size(21 - fixed));
        assert_eq!(
            encoder.encode_fitting(&mut packet, &mut out),
            Err(EncodeError::PacketTooLarge { size: 21, max: 20 })
        );
        assert_eq!(out, before);
    }
}

#[test]
fn encoder_limit_never_exceeds_the_protocols() {
    let mut encoder = Encoder::new(V5);
    encoder.set_max_packet_size(u32::MAX);
    assert_eq!(
        encoder.max_packet_size(),
        bulwark_proto::PROTOCOL_MAX_PACKET_SIZE
    );
}

fn text(value: &str) -> MqttString {
    MqttString::new(value).unwrap()
}

fn users() -> Vec<UserProperty> {
    vec![
        UserProperty::new(text("k"), text("a long diagnostic value")),
        UserProperty::new(text("k"), text("another")),
    ]
}

fn ack_properties(reason: bool, user: bool) -> AckProperties {
    AckProperties {
        reason_string: reason.then(|| text("a reason string that does not fit")),
        user_properties: if user { users() } else { Vec::new() },
    }
}

/// The packet types whose Reason String and User Properties the sender leaves out rather than
/// exceed the receiver's Maximum Packet Size, each with those properties (`reason`, `user`).
fn with_diagnostics(reason: bool, user: bool) -> Vec<Packet> {
    let id = PacketId::new(0x0102).unwrap();
    let props = || ack_properties(reason, user);
    vec![
        Packet::PubAck(PubAck {
            packet_id: id,
            reason_code: ReasonCode::NotAuthorized,
            properties: props(),
        }),
        Packet::PubRec(PubRec {
            packet_id: id,
            reason_code: ReasonCode::QuotaExceeded,
            properties: props(),
        }),
        Packet::PubRel(PubRel {
            packet_id: id,
            reason_code: ReasonCode::PacketIdentifierNotFound,
            properties: props(),
        }),
        Packet::PubComp(PubComp {
            packet_id: id,
            reason_code: ReasonCode::Success,
            properties: props(),
        }),
        Packet::SubAck(SubAck {
            packet_id: id,
            properties: props(),
            reason_codes: vec![ReasonCode::GrantedQoS1, ReasonCode::NotAuthorized],
        }),
        Packet::UnsubAck(UnsubAck {
            packet_id: id,
            properties: props(),
            reason_codes: vec![ReasonCode::NoSubscriptionExisted],
        }),
        Packet::Disconnect(Disconnect {
            reason_code: ReasonCode::ServerShuttingDown,
            properties: DisconnectProperties {
                reason_string: props().reason_string,
                user_properties: props().user_properties,
                ..DisconnectProperties::default()
            },
        }),
        Packet::Auth(Auth {
            reason_code: ReasonCode::ContinueAuthentication,
            properties: AuthProperties {
                authentication_method: Some(text("SCRAM-SHA-256")),
                authentication_data: Some(Bytes::from_static(b"r=nonce")),
                reason_string: props().reason_string,
                user_properties: props().user_properties,
            },
        }),
    ]
}

/// Encodes the packet of type `kind` for a peer whose limit is the size of the packet without
/// its diagnostics: `encode` refuses and appends nothing, `encode_fitting` drops exactly the
/// Reason String and User Properties and the peer decodes the rest unchanged. Checked with a
/// Reason String alone, User Properties alone, and both.
fn check_diagnostics_dropped_to_fit(kind: PacketType) {
    for (reason, user) in [(true, false), (false, true), (true, true)] {
        let original = with_diagnostics(reason, user)
            .into_iter()
            .find(|p| p.packet_type() == kind)
            .unwrap();
        check_dropped_to_fit(&original);
    }
}

fn check_dropped_to_fit(original: &Packet) {
    let name = original.packet_type().name();
    let mut full = BytesMut::new();
    let full_size = Encoder::new(V5).encode(original, &mut full).unwrap();
    let mut stripped = original.clone();
    assert!(stripped.strip_diagnostics(), "{name}");
    let mut expected = BytesMut::new();
    let stripped_size = Encoder::new(V5).encode(&stripped, &mut expected).unwrap();
    assert!(stripped_size < full_size, "{name}");

    let mut encoder = Encoder::new(V5);
    encoder.set_max_packet_size(u32::try_from(stripped_size).unwrap());
    let mut out = BytesMut::from(&b"queued"[..]);
    assert_eq!(
        encoder.encode(original, &mut out),
        Err(EncodeError::PacketTooLarge {
            size: full_size as u64,
            max: u32::try_from(stripped_size).unwrap(),
        }),
        "{name}"
    );
    assert_eq!(&out[..], b"queued", "{name}: nothing appended");

    let mut packet = original.clone();
    assert_eq!(
        encoder.encode_fitting(&mut packet, &mut out),
        Ok(stripped_size),
        "{name}"
    );
    assert_eq!(&out[6..], &expected[..], "{name}");
    assert_eq!(from_server(V5, &out[6..]).unwrap(), stripped, "{name}");

    // With room to spare nothing is dropped.
    encoder.set_max_packet_size(u32::try_from(full_size).unwrap());
    let mut packet = original.clone();
    let mut out = BytesMut::new();
    assert_eq!(encoder.encode_fitting(&mut packet, &mut out), Ok(full_size));
    assert_eq!(&from_server(V5, &out).unwrap(), original, "{name}");
}

#[test]
fn mqtt_3_4_2_2_and_3_4_2_3_puback_diagnostics_left_out_to_fit() {
    check_diagnostics_dropped_to_fit(PacketType::PubAck);
}

#[test]
fn mqtt_3_5_2_2_and_3_5_2_3_pubrec_diagnostics_left_out_to_fit() {
    check_diagnostics_dropped_to_fit(PacketType::PubRec);
}

#[test]
fn mqtt_3_6_2_2_and_3_6_2_3_pubrel_diagnostics_left_out_to_fit() {
    check_diagnostics_dropped_to_fit(PacketType::PubRel);
}

#[test]
fn mqtt_3_7_2_2_and_3_7_2_3_pubcomp_diagnostics_left_out_to_fit() {
    check_diagnostics_dropped_to_fit(PacketType::PubComp);
}

#[test]
fn mqtt_3_9_2_1_and_3_9_2_2_suback_diagnostics_left_out_to_fit() {
    check_diagnostics_dropped_to_fit(PacketType::SubAck);
}

#[test]
fn mqtt_3_11_2_1_and_3_11_2_2_unsuback_diagnostics_left_out_to_fit() {
    check_diagnostics_dropped_to_fit(PacketType::UnsubAck);
}

#[test]
fn mqtt_3_14_2_3_and_3_14_2_4_disconnect_diagnostics_left_out_to_fit() {
    check_diagnostics_dropped_to_fit(PacketType::Disconnect);
}

#[test]
fn mqtt_3_15_2_2_and_3_15_2_3_auth_diagnostics_left_out_to_fit() {
    check_diagnostics_dropped_to_fit(PacketType::Auth);
}

#[test]
fn mqtt_3_3_1_2_encoder_refuses_dup_on_qos_0() {
    let mut p = publish_of_size(1);
    p.dup = true;
    let mut out = BytesMut::new();
    assert!(matches!(
        Encoder::new(V5).encode(&p, &mut out),
        Err(EncodeError::Invalid(_))
    ));
    // And a packet identifier must match the QoS [MQTT-2.2.1-2].
    let mut p = publish_of_size(1);
    p.packet_id = PacketId::new(1);
    assert!(matches!(
        Encoder::new(V5).encode(&p, &mut out),
        Err(EncodeError::Invalid(_))
    ));
    p.qos = QoS::AtLeastOnce;
    p.packet_id = None;
    assert!(matches!(
        Encoder::new(V5).encode(&p, &mut out),
        Err(EncodeError::Invalid(_))
    ));
    assert!(out.is_empty());
}
