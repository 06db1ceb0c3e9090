//! Conformance of PUBLISH (§3.3) and its acknowledgements PUBACK, PUBREC, PUBREL and PUBCOMP
//! (§3.4 to §3.7) with MQTT 5.0 and 3.1.1, through the public streaming API.
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
    DecodeError, Decoder, DecoderLimits, Encoder, Packet, PacketId, PayloadFormat, ProtocolVersion,
    Publish, PublishWithId, QoS, ReasonCode, TopicName,
};
use bytes::{Bytes, BytesMut};
use common::{packet, string, varint};

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

/// What a server decodes from a client.
fn from_client(version: ProtocolVersion, bytes: &[u8]) -> Result<Packet, DecodeError> {
    decode(server(version), bytes)
}

/// What a client decodes from a server.
fn from_server(version: ProtocolVersion, bytes: &[u8]) -> Result<Packet, DecodeError> {
    decode(client(version), bytes)
}

#[track_caller]
fn assert_error(result: Result<Packet, DecodeError>, code: ReasonCode, rule: &str) {
    match result {
        Ok(packet) => panic!("expected [{rule}] {code}, decoded {packet:?}"),
        Err(err) => {
            assert_eq!(err.reason_code(), code, "{err}");
            assert_eq!(err.rule(), rule, "{err}");
        }
    }
}

#[track_caller]
fn publish_of(result: Result<Packet, DecodeError>) -> Publish {
    match result {
        Ok(Packet::Publish(publish)) => publish,
        other => panic!("expected a PUBLISH, got {other:?}"),
    }
}

/// A PUBLISH with the given fixed-header flags; `props` is only written for MQTT 5.0.
fn publish(
    version: ProtocolVersion,
    flags: u8,
    topic: &[u8],
    id: Option<u16>,
    props: &[u8],
    payload: &[u8],
) -> Vec<u8> {
    let mut body = string(topic);
    if let Some(id) = id {
        body.extend_from_slice(&id.to_be_bytes());
    }
    if version.is_v5() {
        body.extend(varint(props.len()));
        body.extend_from_slice(props);
    }
    body.extend_from_slice(payload);
    packet(0x30 | flags, &body)
}

fn user_property(name: &[u8], value: &[u8]) -> Vec<u8> {
    let mut out = vec![0x26];
    out.extend(string(name));
    out.extend(string(value));
    out
}

// ---------------------------------------------------------------------------------------------
// PUBLISH fixed header (§3.3.1)

#[test]
fn mqtt_3_3_1_4_qos_3_is_malformed() {
    for version in VERSIONS {
        let bytes = publish(version, 0b0110, b"a/b", Some(1), &[], b"x");
        assert_error(
            from_client(version, &bytes),
            ReasonCode::MalformedPacket,
            "MQTT-3.3.1-4",
        );
        assert_error(
            from_server(version, &bytes),
            ReasonCode::MalformedPacket,
            "MQTT-3.3.1-4",
        );
    }
}

#[test]
fn mqtt_3_3_1_2_dup_on_qos_0_is_malformed() {
    for version in VERSIONS {
        let bytes = publish(version, 0b1000, b"a/b", None, &[], b"x");
        assert_error(
            from_client(version, &bytes),
            ReasonCode::MalformedPacket,
            "MQTT-3.3.1-2",
        );
        assert_error(
            from_server(version, &bytes),
            ReasonCode::MalformedPacket,
            "MQTT-3.3.1-2",
        );
    }
}

#[test]
fn mqtt_5_3_3_1_dup_qos_and_retain_flags_decode() {
    for version in VERSIONS {
        let bytes = publish(version, 0b1101, b"a/b", Some(7), &[], b"x");
        let p = publish_of(from_client(version, &bytes));
        assert!(p.dup);
        assert_eq!(p.qos, QoS::ExactlyOnce);
        assert!(p.retain);
        assert_eq!(p.packet_id, PacketId::new(7));
        let p = publish_of(from_client(
            version,
            &publish(version, 0b0010, b"a", Some(1), &[], b""),
        ));
        assert!(!p.dup && !p.retain);
        assert_eq!(p.qos, QoS::AtLeastOnce);
    }
}

// ---------------------------------------------------------------------------------------------
// Topic Name (§3.3.2.1)

#[test]
fn mqtt_3_3_2_2_wildcard_in_topic_name_is_malformed() {
    for version in VERSIONS {
        for topic in [&b"a/+"[..], b"a/#", b"+", b"#", b"a+b", b"sport/#/x"] {
            let bytes = publish(version, 0, topic, None, &[], b"x");
            assert_error(
                from_client(version, &bytes),
                ReasonCode::MalformedPacket,
                "MQTT-3.3.2-2",
            );
            assert_error(
                from_server(version, &bytes),
                ReasonCode::MalformedPacket,
                "MQTT-3.3.2-2",
            );
        }
    }
}

#[test]
fn mqtt_3_3_2_1_topic_name_must_be_a_utf8_encoded_string() {
    for version in VERSIONS {
        // 0xC3 0x28 is an invalid two-byte sequence; 0xED 0xA0 0x80 encodes a surrogate.
        for topic in [&b"a\xC3\x28"[..], b"\xED\xA0\x80"] {
            let bytes = publish(version, 0, topic, None, &[], b"");
            assert_error(
                from_client(version, &bytes),
                ReasonCode::MalformedPacket,
                "MQTT-1.5.4-1",
            );
        }
        let bytes = publish(version, 0, b"a\0b", None, &[], b"");
        assert_error(
            from_client(version, &bytes),
            ReasonCode::MalformedPacket,
            "MQTT-1.5.4-2",
        );
        // A topic length running past the end of the packet.
        assert_error(
            from_client(version, &packet(0x30, &[0, 9, b'a'])),
            ReasonCode::MalformedPacket,
            "MQTT-5 §2.1.4",
        );
    }
}

#[test]
fn mqtt_5_3_3_2_1_empty_topic_without_topic_alias_is_protocol_error() {
    let bytes = publish(V5, 0, b"", None, &[], b"x");
    assert_error(
        from_client(V5, &bytes),
        ReasonCode::ProtocolError,
        "MQTT-5 §3.3.2.1",
    );
    assert_error(
        from_server(V5, &bytes),
        ReasonCode::ProtocolError,
        "MQTT-5 §3.3.2.1",
    );
}

#[test]
fn mqtt_5_3_3_2_3_4_empty_topic_with_topic_alias_decodes() {
    let bytes = publish(V5, 0, b"", None, &[0x23, 0, 5], b"x");
    let p = publish_of(from_client(V5, &bytes));
    assert!(p.topic.is_empty());
    assert_eq!(p.properties.topic_alias.map(|a| a.get()), Some(5));
    // A topic name and an alias together set the mapping.
    let p = publish_of(from_client(
        V5,
        &publish(V5, 0, b"a/b", None, &[0x23, 0, 5], b""),
    ));
    assert_eq!(p.topic.as_str(), "a/b");
}

#[test]
fn mqtt_4_7_3_1_empty_topic_is_malformed_in_3_1_1() {
    let bytes = publish(V311, 0, b"", None, &[], b"x");
    assert_error(
        from_client(V311, &bytes),
        ReasonCode::MalformedPacket,
        "MQTT-4.7.3-1",
    );
    assert_error(
        from_server(V311, &bytes),
        ReasonCode::MalformedPacket,
        "MQTT-4.7.3-1",
    );
}

// ---------------------------------------------------------------------------------------------
// Packet Identifier (§2.2.1, §3.3.2.2)

#[test]
fn mqtt_2_2_1_2_qos_0_publish_has_no_packet_identifier() {
    // The two bytes after the topic (and, in 5.0, the property length) are payload.
    for version in VERSIONS {
        let bytes = publish(version, 0, b"t", None, &[], &[0x00, 0x07]);
        let p = publish_of(from_client(version, &bytes));
        assert_eq!(p.packet_id, None);
        assert_eq!(&p.payload[..], &[0x00, 0x07]);
    }
}

#[test]
fn mqtt_2_2_1_3_packet_identifier_0_from_a_client_is_protocol_error() {
    for version in VERSIONS {
        for flags in [0b0010, 0b0100] {
            let bytes = publish(version, flags, b"t", Some(0), &[], b"x");
            assert_error(
                from_client(version, &bytes),
                ReasonCode::ProtocolError,
                "MQTT-2.2.1-3",
            );
        }
    }
}

#[test]
fn mqtt_2_2_1_4_packet_identifier_0_from_a_server_is_protocol_error() {
    for version in VERSIONS {
        for flags in [0b0010, 0b0100] {
            let bytes = publish(version, flags, b"t", Some(0), &[], b"x");
            assert_error(
                from_server(version, &bytes),
                ReasonCode::ProtocolError,
                "MQTT-2.2.1-4",
            );
        }
    }
}

#[test]
fn mqtt_2_2_1_3_qos_1_publish_without_packet_identifier_is_malformed() {
    // QoS 1 and a Remaining Length that ends inside the packet identifier.
    for version in VERSIONS {
        let mut body = string(b"t");
        body.push(0);
        assert_error(
            from_client(version, &packet(0x32, &body)),
            ReasonCode::MalformedPacket,
            "MQTT-5 §2.1.4",
        );
    }
}

#[test]
fn mqtt_5_3_3_2_2_packet_identifier_present_for_qos_1_and_2() {
    for version in VERSIONS {
        for (flags, qos) in [(0b0010, QoS::AtLeastOnce), (0b0100, QoS::ExactlyOnce)] {
            let bytes = publish(version, flags, b"t", Some(0xBEEF), &[], b"hi");
            let p = publish_of(from_server(version, &bytes));
            assert_eq!(p.qos, qos);
            assert_eq!(p.packet_id.map(PacketId::get), Some(0xBEEF));
            assert_eq!(&p.payload[..], b"hi");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// PUBLISH properties (§3.3.2.3)

#[test]
fn mqtt_3_3_2_8_topic_alias_0_is_topic_alias_invalid() {
    let bytes = publish(V5, 0, b"a", None, &[0x23, 0, 0], b"x");
    assert_error(
        from_client(V5, &bytes),
        ReasonCode::TopicAliasInvalid,
        "MQTT-3.3.2-8",
    );
    assert_error(
        from_server(V5, &bytes),
        ReasonCode::TopicAliasInvalid,
        "MQTT-3.3.2-8",
    );
}

#[test]
fn mqtt_3_3_4_6_subscription_identifier_from_a_client_is_protocol_error() {
    let bytes = publish(V5, 0, b"a", None, &[0x0B, 5], b"x");
    assert_error(
        from_client(V5, &bytes),
        ReasonCode::ProtocolError,
        "MQTT-3.3.4-6",
    );
    // From the server it is how the client learns which subscriptions matched, several
    // identifiers included (§3.3.4).
    let bytes = publish(V5, 0, b"a", None, &[0x0B, 5, 0x0B, 0x80, 0x01], b"x");
    let p = publish_of(from_server(V5, &bytes));
    let ids: Vec<u32> = p
        .properties
        .subscription_identifiers
        .iter()
        .map(|id| id.get())
        .collect();
    assert_eq!(ids, [5, 128]);
}

#[test]
fn mqtt_5_3_3_2_3_8_subscription_identifier_0_is_protocol_error() {
    let bytes = publish(V5, 0, b"a", None, &[0x0B, 0], b"x");
    assert_error(
        from_server(V5, &bytes),
        ReasonCode::ProtocolError,
        "MQTT-5 §3.3.2.3.8",
    );
}

#[test]
fn mqtt_3_3_2_14_response_topic_with_wildcards_is_malformed() {
    for topic in [&b"reply/+"[..], b"reply/#", b"#"] {
        let mut props = vec![0x08];
        props.extend(string(topic));
        let bytes = publish(V5, 0, b"a", None, &props, b"x");
        assert_error(
            from_client(V5, &bytes),
            ReasonCode::MalformedPacket,
            "MQTT-3.3.2-14",
        );
    }
    let mut props = vec![0x08];
    props.extend(string(b"reply/1"));
    let p = publish_of(from_client(V5, &publish(V5, 0, b"a", None, &props, b"")));
    assert_eq!(
        p.properties.response_topic.as_ref().map(TopicName::as_str),
        Some("reply/1")
    );
}

#[test]
fn mqtt_3_3_2_13_response_topic_must_be_a_utf8_encoded_string() {
    let mut props = vec![0x08];
    props.extend(string(b"r\xFF"));
    let bytes = publish(V5, 0, b"a", None, &props, b"x");
    assert_error(
        from_client(V5, &bytes),
        ReasonCode::MalformedPacket,
        "MQTT-1.5.4-1",
    );
}

#[test]
fn mqtt_3_3_2_19_content_type_must_be_a_utf8_encoded_string() {
    let mut props = vec![0x03];
    props.extend(string(b"text/\xC0\xAF"));
    let bytes = publish(V5, 0, b"a", None, &props, b"x");
    assert_error(
        from_client(V5, &bytes),
        ReasonCode::MalformedPacket,
        "MQTT-1.5.4-1",
    );
}

#[test]
fn mqtt_5_3_3_2_3_2_payload_format_indicator_is_0_or_1() {
    for (value, format) in [(0, PayloadFormat::Unspecified), (1, PayloadFormat::Utf8)] {
        let bytes = publish(V5, 0, b"a", None, &[0x01, value], b"x");
        let p = publish_of(from_client(V5, &bytes));
        assert_eq!(p.properties.payload_format_indicator, Some(format));
    }
    for value in [2, 0x80, 0xFF] {
        let bytes = publish(V5, 0, b"a", None, &[0x01, value], b"x");
        assert_error(
            from_client(V5, &bytes),
            ReasonCode::ProtocolError,
            "MQTT-5 §3.3.2.3.2",
        );
    }
}

#[test]
fn mqtt_5_2_2_2_2_property_not_allowed_in_publish_is_malformed() {
    // Session Expiry Interval (0x11) belongs to CONNECT, CONNACK and DISCONNECT.
    let bytes = publish(V5, 0, b"a", None, &[0x11, 0, 0, 0, 1], b"x");
    assert_error(
        from_client(V5, &bytes),
        ReasonCode::MalformedPacket,
        "MQTT-5 §2.2.2.2",
    );
}

#[test]
fn mqtt_3_3_2_18_user_properties_keep_order_and_duplicates() {
    let mut props = user_property(b"k", b"1");
    props.extend(user_property(b"other", b"2"));
    props.extend(user_property(b"k", b"3"));
    props.extend(user_property(b"k", b"1"));
    let bytes = publish(V5, 0b0010, b"a", Some(1), &props, b"x");
    let p = publish_of(from_client(V5, &bytes));
    let pairs: Vec<(&str, &str)> = p
        .properties
        .user_properties
        .iter()
        .map(|u| (u.name.as_str(), u.value.as_str()))
        .collect();
    let expected = [("k", "1"), ("other", "2"), ("k", "3"), ("k", "1")];
    assert_eq!(pairs, expected);
    // Forwarded unaltered [MQTT-3.3.2-17]: re-encoding gives back the same bytes.
    let mut out = BytesMut::new();
    Encoder::new(V5).encode(&p, &mut out).unwrap();
    assert_eq!(&out[..], &bytes[..]);
}

#[test]
fn mqtt_5_3_3_2_3_all_publish_properties_decode() {
    let mut props = vec![0x01, 1, 0x02, 0, 0, 0, 60, 0x03];
    props.extend(string(b"text/plain"));
    props.push(0x08);
    props.extend(string(b"reply"));
    props.push(0x09);
    props.extend(string(b"\x00\x01"));
    props.extend_from_slice(&[0x23, 0, 9]);
    props.extend(user_property(b"n", b"v"));
    let bytes = publish(V5, 0b0011, b"a/b", Some(3), &props, b"payload");
    let p = publish_of(from_client(V5, &bytes));
    let pr = &p.properties;
    assert_eq!(pr.payload_format_indicator, Some(PayloadFormat::Utf8));
    assert_eq!(pr.message_expiry_interval, Some(60));
    assert_eq!(
        pr.content_type.as_ref().map(|c| c.as_str()),
        Some("text/plain")
    );
    assert_eq!(pr.correlation_data.as_deref(), Some(&b"\x00\x01"[..]));
    assert_eq!(pr.topic_alias.map(|a| a.get()), Some(9));
    assert_eq!(pr.user_properties.len(), 1);
    assert!(p.retain);
    assert_eq!(&p.payload[..], b"payload");
    let mut out = BytesMut::new();
    Encoder::new(V5).encode(&p, &mut out).unwrap();
    assert_eq!(&out[..], &bytes[..]);
}

// ---------------------------------------------------------------------------------------------
// Payload (§3.3.3)

#[test]
fn mqtt_5_3_3_3_zero_length_payload_is_valid() {
    for version in VERSIONS {
        let p = publish_of(from_client(
            version,
            &publish(version, 0b0001, b"a", None, &[], b""),
        ));
        assert!(p.payload.is_empty());
        assert!(p.retain);
    }
}

#[test]
fn mqtt_5_3_3_3_payload_shares_the_receive_buffer() {
    let mut decoder = server(V5);
    let payload = vec![0xA5; 4096];
    decoder.handle_bytes(&publish(V5, 0, b"a/b", None, &[], &payload));
    let start = decoder.buffer_mut().as_ptr() as usize;
    let end = start + decoder.buffered();
    let p = match decoder.poll_packet() {
        Ok(Some(Packet::Publish(p))) => p,
        other => panic!("{other:?}"),
    };
    assert_eq!(&p.payload[..], &payload[..]);
    let at = p.payload.as_ptr() as usize;
    assert!(
        start <= at && at + p.payload.len() <= end,
        "the payload is a view of the receive buffer, not a copy"
    );
}

// ---------------------------------------------------------------------------------------------
// PUBACK, PUBREC, PUBREL, PUBCOMP (§3.4 to §3.7)

/// First byte, the reason codes the packet allows (MQTT 5.0 Tables 3-4 to 3-7), the statement
/// on them, and the MQTT 3.1.1 section that fixes the Remaining Length at 2.
const RESPONSES: [(u8, &[u8], &str, &str); 4] = [
    (
        0x40,
        &[0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99],
        "MQTT-3.4.2-1",
        "MQTT-3.1.1 §3.4.1",
    ),
    (
        0x50,
        &[0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99],
        "MQTT-3.5.2-1",
        "MQTT-3.1.1 §3.5.1",
    ),
    (0x62, &[0x00, 0x92], "MQTT-3.6.2-1", "MQTT-3.1.1 §3.6.1"),
    (0x70, &[0x00, 0x92], "MQTT-3.7.2-1", "MQTT-3.1.1 §3.7.1"),
];

/// The packet identifier, reason code and reason string of a decoded response.
fn response_of(packet: Packet) -> (u16, ReasonCode, Option<String>) {
    match packet {
        Packet::PubAck(p) => (
            p.packet_id.get(),
            p.reason_code,
            p.properties.reason_string.map(|s| s.to_string()),
        ),
        Packet::PubRec(p) => (
            p.packet_id.get(),
            p.reason_code,
            p.properties.reason_string.map(|s| s.to_string()),
        ),
        Packet::PubRel(p) => (
            p.packet_id.get(),
            p.reason_code,
            p.properties.reason_string.map(|s| s.to_string()),
        ),
        Packet::PubComp(p) => (
            p.packet_id.get(),
            p.reason_code,
            p.properties.reason_string.map(|s| s.to_string()),
        ),
        other => panic!("not a publish response: {other:?}"),
    }
}

#[test]
fn mqtt_3_6_1_1_pubrel_flags_must_be_0010() {
    for version in VERSIONS {
        for first in [0x60, 0x61, 0x63, 0x66, 0x6A, 0x6F] {
            let bytes = [first, 2, 0, 1];
            assert_error(
                from_client(version, &bytes),
                ReasonCode::MalformedPacket,
                "MQTT-3.6.1-1",
            );
            assert_error(
                from_server(version, &bytes),
                ReasonCode::MalformedPacket,
                "MQTT-3.6.1-1",
            );
        }
        let (id, code, _) = response_of(from_client(version, &[0x62, 2, 0, 1]).unwrap());
        assert_eq!((id, code), (1, ReasonCode::Success));
    }
}

#[test]
fn mqtt_2_1_3_1_puback_pubrec_pubcomp_flags_must_be_0000() {
    for version in VERSIONS {
        for kind in [0x40, 0x50, 0x70] {
            for flags in [0x01, 0x02, 0x08] {
                let bytes = [kind | flags, 2, 0, 1];
                assert_error(
                    from_client(version, &bytes),
                    ReasonCode::MalformedPacket,
                    "MQTT-2.1.3-1",
                );
            }
        }
    }
}

#[test]
fn mqtt_3_4_2_1_puback_reason_codes() {
    check_response_reason_codes(0x40);
}

#[test]
fn mqtt_3_5_2_1_pubrec_reason_codes() {
    check_response_reason_codes(0x50);
}

#[test]
fn mqtt_3_6_2_1_pubrel_reason_codes() {
    check_response_reason_codes(0x62);
}

#[test]
fn mqtt_3_7_2_1_pubcomp_reason_codes() {
    check_response_reason_codes(0x70);
}

/// Every byte as the reason code of a response, in both directions: exactly the table's codes
/// decode, in the short form without properties and in the long form with them.
fn check_response_reason_codes(first: u8) {
    let (_, allowed, rule, _) = *RESPONSES.iter().find(|r| r.0 == first).unwrap();
    for byte in 0..=255u8 {
        for bytes in [vec![first, 3, 0, 9, byte], vec![first, 4, 0, 9, byte, 0]] {
            for result in [from_server(V5, &bytes), from_client(V5, &bytes)] {
                if allowed.contains(&byte) {
                    let (id, code, _) = response_of(result.unwrap());
                    assert_eq!((id, code.as_u8()), (9, byte));
                } else {
                    assert_error(result, ReasonCode::ProtocolError, rule);
                }
            }
        }
    }
}

#[test]
fn mqtt_5_3_4_2_1_short_forms_with_remaining_length_2_and_3() {
    for (first, ..) in RESPONSES {
        // Remaining Length 2: Success, no properties.
        let (id, code, reason) = response_of(from_client(V5, &[first, 2, 0x12, 0x34]).unwrap());
        assert_eq!((id, code, reason), (0x1234, ReasonCode::Success, None));
        // Remaining Length 3: a reason code, no Property Length (§3.4.2.2.1).
        let (_, code, reason) = response_of(from_server(V5, &[first, 3, 0, 1, 0x00]).unwrap());
        assert_eq!((code, reason), (ReasonCode::Success, None));
        // Remaining Length 4: an empty property block.
        let (_, code, _) = response_of(from_server(V5, &[first, 4, 0, 1, 0x00, 0]).unwrap());
        assert_eq!(code, ReasonCode::Success);
        // The long form with a Reason String.
        let mut body = vec![0, 1, 0x00, 6, 0x1F];
        body.extend(string(b"why"));
        let (_, _, reason) = response_of(from_server(V5, &packet(first, &body)).unwrap());
        assert_eq!(reason.as_deref(), Some("why"));
    }
}

#[test]
fn mqtt_5_3_4_2_2_short_form_encodes_with_remaining_length_2() {
    let id = PacketId::new(5).unwrap();
    let mut out = BytesMut::new();
    let encoder = Encoder::new(V5);
    encoder
        .encode(&bulwark_proto::PubAck::new(id), &mut out)
        .unwrap();
    assert_eq!(&out[..], &[0x40, 2, 0, 5]);
    out.clear();
    let mut rec = bulwark_proto::PubRec::new(id);
    rec.reason_code = ReasonCode::QuotaExceeded;
    encoder.encode(&rec, &mut out).unwrap();
    assert_eq!(&out[..], &[0x50, 3, 0, 5, 0x97]);
    out.clear();
    encoder
        .encode(&bulwark_proto::PubRel::new(id), &mut out)
        .unwrap();
    assert_eq!(&out[..], &[0x62, 2, 0, 5]);
}

#[test]
fn mqtt_2_2_1_5_response_packet_identifier_0_is_protocol_error() {
    for version in VERSIONS {
        for (first, ..) in RESPONSES {
            let bytes = [first, 2, 0, 0];
            assert_error(
                from_client(version, &bytes),
                ReasonCode::ProtocolError,
                "MQTT-2.2.1-5",
            );
            assert_error(
                from_server(version, &bytes),
                ReasonCode::ProtocolError,
                "MQTT-2.2.1-5",
            );
        }
    }
}

#[test]
fn mqtt_5_2_1_4_response_leftover_or_missing_bytes_are_malformed() {
    for (first, ..) in RESPONSES {
        // A byte after an empty property block.
        assert_error(
            from_server(V5, &[first, 5, 0, 1, 0x00, 0, 0xAA]),
            ReasonCode::MalformedPacket,
            "MQTT-5 §2.1.4",
        );
        // A property block longer than the packet.
        assert_error(
            from_server(V5, &[first, 5, 0, 1, 0x00, 9, 0x1F]),
            ReasonCode::MalformedPacket,
            "MQTT-5 §2.1.4",
        );
        // Remaining Length 1 ends inside the packet identifier.
        assert_error(
            from_server(V5, &[first, 1, 0]),
            ReasonCode::MalformedPacket,
            "MQTT-5 §2.1.4",
        );
    }
}

#[test]
fn mqtt_5_2_2_2_2_property_not_allowed_in_a_response_is_malformed() {
    for (first, ..) in RESPONSES {
        // Topic Alias (0x23) is a PUBLISH property.
        assert_error(
            from_server(V5, &[first, 7, 0, 1, 0x00, 3, 0x23, 0, 1]),
            ReasonCode::MalformedPacket,
            "MQTT-5 §2.2.2.2",
        );
    }
}

#[test]
fn mqtt_3_1_1_3_4_1_response_remaining_length_is_exactly_2() {
    for (first, _, _, rule) in RESPONSES {
        let (id, code, _) = response_of(from_server(V311, &[first, 2, 0, 3]).unwrap());
        assert_eq!((id, code), (3, ReasonCode::Success));
        // A 5.0-style reason code is a Malformed Packet in 3.1.1.
        for bytes in [vec![first, 3, 0, 3, 0x00], vec![first, 4, 0, 3, 0x00, 0]] {
            assert_error(from_server(V311, &bytes), ReasonCode::MalformedPacket, rule);
            assert_error(from_client(V311, &bytes), ReasonCode::MalformedPacket, rule);
        }
        assert_error(
            from_server(V311, &[first, 1, 0]),
            ReasonCode::MalformedPacket,
            "MQTT-5 §2.1.4",
        );
    }
    // The encoder writes only the identifier in 3.1.1, whatever the reason code.
    let mut ack = bulwark_proto::PubAck::new(PacketId::new(3).unwrap());
    ack.reason_code = ReasonCode::NotAuthorized;
    let mut out = BytesMut::new();
    Encoder::new(V311).encode(&ack, &mut out).unwrap();
    assert_eq!(&out[..], &[0x40, 2, 0, 3]);
}

#[test]
fn publish_round_trips_through_the_encoder() {
    for version in VERSIONS {
        let mut p = Publish::new(TopicName::new("a/b").unwrap(), Bytes::from_static(b"x"));
        p.qos = QoS::AtLeastOnce;
        p.packet_id = PacketId::new(10);
        let mut out = BytesMut::new();
        Encoder::new(version).encode(&p, &mut out).unwrap();
        assert_eq!(publish_of(from_client(version, &out)), p);
    }
}

/// A shared PUBLISH body sent with its own packet identifier and DUP flag encodes exactly as a
/// copy with those fields replaced, in both versions, and is held to the same rules.
#[test]
fn publish_with_id_encodes_like_the_replaced_copy() {
    let mut shared = Publish::new(TopicName::new("a/b").unwrap(), Bytes::from_static(b"hello"));
    shared.qos = QoS::AtLeastOnce;
    shared.retain = true;
    shared.properties.message_expiry_interval = Some(30);
    for version in VERSIONS {
        let encoder = Encoder::new(version);
        for (id, dup) in [(7, false), (9, true)] {
            let mut copy = shared.clone();
            copy.packet_id = PacketId::new(id);
            copy.dup = dup;
            let mut want = BytesMut::new();
            encoder.encode(&copy, &mut want).unwrap();
            let with = PublishWithId {
                publish: &shared,
                packet_id: PacketId::new(id),
                dup,
            };
            let mut got = BytesMut::new();
            assert_eq!(encoder.encode(&with, &mut got).unwrap(), want.len());
            assert_eq!(got, want);
            assert_eq!(encoder.encoded_len(&with).unwrap(), want.len() as u64);
        }
        // QoS 1 without an identifier, or DUP on QoS 0, is refused as for a Publish.
        let missing = PublishWithId {
            publish: &shared,
            packet_id: None,
            dup: false,
        };
        assert!(encoder.encode(&missing, &mut BytesMut::new()).is_err());
        let mut qos0 = shared.clone();
        qos0.qos = QoS::AtMostOnce;
        let dup0 = PublishWithId {
            publish: &qos0,
            packet_id: None,
            dup: true,
        };
        assert!(encoder.encode(&dup0, &mut BytesMut::new()).is_err());
    }
}
