//! Conformance of SUBSCRIBE (§3.8), SUBACK (§3.9), UNSUBSCRIBE (§3.10) and UNSUBACK (§3.11)
//! with MQTT 5.0 and 3.1.1, through the public streaming API.
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
    DecodeError, Decoder, DecoderLimits, Encoder, Packet, PacketId, ProtocolVersion, QoS,
    ReasonCode, RetainHandling, SubAck, Subscribe, Subscription, SubscriptionOptions, TopicFilter,
    UnsubAck, Unsubscribe,
};
use bytes::BytesMut;
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

/// A SUBSCRIBE with identifier `id`, properties `props` (5.0 only) and `(filter, options)`
/// entries.
fn subscribe(version: ProtocolVersion, id: u16, props: &[u8], entries: &[(&[u8], u8)]) -> Vec<u8> {
    let mut body = id.to_be_bytes().to_vec();
    if version.is_v5() {
        body.extend(varint(props.len()));
        body.extend_from_slice(props);
    }
    for (filter, options) in entries {
        body.extend(string(filter));
        body.push(*options);
    }
    packet(0x82, &body)
}

fn unsubscribe(version: ProtocolVersion, id: u16, filters: &[&[u8]]) -> Vec<u8> {
    let mut body = id.to_be_bytes().to_vec();
    if version.is_v5() {
        body.push(0);
    }
    for filter in filters {
        body.extend(string(filter));
    }
    packet(0xA2, &body)
}

/// A SUBACK (`first` 0x90) or UNSUBACK (`first` 0xB0) carrying `codes`.
fn ack(version: ProtocolVersion, first: u8, id: u16, codes: &[u8]) -> Vec<u8> {
    let mut body = id.to_be_bytes().to_vec();
    if version.is_v5() {
        body.push(0);
    }
    body.extend_from_slice(codes);
    packet(first, &body)
}

#[track_caller]
fn subscribe_of(result: Result<Packet, DecodeError>) -> Subscribe {
    match result {
        Ok(Packet::Subscribe(p)) => p,
        other => panic!("expected a SUBSCRIBE, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// SUBSCRIBE (§3.8)

#[test]
fn mqtt_3_8_1_1_subscribe_flags_must_be_0010() {
    for version in VERSIONS {
        let good = subscribe(version, 1, &[], &[(b"a", 0)]);
        assert!(from_client(version, &good).is_ok());
        for flags in [0x0, 0x1, 0x3, 0x6, 0xA, 0xF] {
            let mut bytes = good.clone();
            bytes[0] = 0x80 | flags;
            assert_error(
                from_client(version, &bytes),
                ReasonCode::MalformedPacket,
                "MQTT-3.8.1-1",
            );
        }
    }
}

#[test]
fn mqtt_3_8_3_2_subscribe_without_payload_is_protocol_error() {
    for version in VERSIONS {
        let bytes = subscribe(version, 1, &[], &[]);
        assert_error(
            from_client(version, &bytes),
            ReasonCode::ProtocolError,
            "MQTT-3.8.3-2",
        );
    }
}

#[test]
fn mqtt_3_8_3_1_topic_filter_must_be_a_utf8_encoded_string() {
    for version in VERSIONS {
        let bytes = subscribe(version, 1, &[], &[(b"a/\xFF", 0)]);
        assert_error(
            from_client(version, &bytes),
            ReasonCode::MalformedPacket,
            "MQTT-1.5.4-1",
        );
        let bytes = subscribe(version, 1, &[], &[(b"a/\0", 0)]);
        assert_error(
            from_client(version, &bytes),
            ReasonCode::MalformedPacket,
            "MQTT-1.5.4-2",
        );
        // A filter without its options byte.
        let mut body = vec![0, 1];
        if version.is_v5() {
            body.push(0);
        }
        body.extend(string(b"a"));
        assert_error(
            from_client(version, &packet(0x82, &body)),
            ReasonCode::MalformedPacket,
            "MQTT-5 §2.1.4",
        );
    }
}

#[test]
fn mqtt_2_2_1_3_subscribe_packet_identifier_0_is_protocol_error() {
    for version in VERSIONS {
        let bytes = subscribe(version, 0, &[], &[(b"a", 0)]);
        assert_error(
            from_client(version, &bytes),
            ReasonCode::ProtocolError,
            "MQTT-2.2.1-3",
        );
    }
}

#[test]
fn mqtt_3_8_3_5_reserved_subscription_option_bits_are_malformed() {
    for options in [0x40, 0x80, 0xC0, 0x41] {
        let bytes = subscribe(V5, 1, &[], &[(b"a", options)]);
        assert_error(
            from_client(V5, &bytes),
            ReasonCode::MalformedPacket,
            "MQTT-3.8.3-5",
        );
    }
}

#[test]
fn mqtt_3_1_1_3_8_3_4_reserved_bits_or_qos_3_are_malformed() {
    // MQTT 3.1.1 has only the requested QoS; bits 2 to 7 are reserved.
    for options in [0x03, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80, 0x2E] {
        let bytes = subscribe(V311, 1, &[], &[(b"a", options)]);
        assert_error(
            from_client(V311, &bytes),
            ReasonCode::MalformedPacket,
            "MQTT-3-8.3-4",
        );
    }
    for qos in 0..=2u8 {
        let s = subscribe_of(from_client(V311, &subscribe(V311, 1, &[], &[(b"a", qos)])));
        assert_eq!(
            s.subscriptions[0].options,
            SubscriptionOptions::qos(QoS::from_u8(qos).unwrap())
        );
    }
}

#[test]
fn mqtt_5_3_8_3_1_maximum_qos_3_is_protocol_error() {
    let bytes = subscribe(V5, 1, &[], &[(b"a", 0x03)]);
    assert_error(
        from_client(V5, &bytes),
        ReasonCode::ProtocolError,
        "MQTT-5 §3.8.3.1",
    );
}

#[test]
fn mqtt_5_3_8_3_1_retain_handling_3_is_protocol_error() {
    let bytes = subscribe(V5, 1, &[], &[(b"a", 0x30)]);
    assert_error(
        from_client(V5, &bytes),
        ReasonCode::ProtocolError,
        "MQTT-5 §3.8.3.1",
    );
}

#[test]
fn mqtt_3_8_3_4_no_local_on_a_shared_subscription_is_protocol_error() {
    let bytes = subscribe(V5, 1, &[], &[(b"$share/group/a/b", 0x04)]);
    assert_error(
        from_client(V5, &bytes),
        ReasonCode::ProtocolError,
        "MQTT-3.8.3-4",
    );
    // No Local on an ordinary filter, and a shared filter without it, are fine.
    let s = subscribe_of(from_client(
        V5,
        &subscribe(V5, 1, &[], &[(b"a/b", 0x04), (b"$share/group/a/b", 0x01)]),
    ));
    assert!(s.subscriptions[0].options.no_local);
    assert!(s.subscriptions[1].filter.is_shared());
    assert_eq!(s.subscriptions[1].filter.share_name(), Some("group"));
}

#[test]
fn mqtt_5_3_8_3_1_subscription_options_decode() {
    // QoS 2, No Local, Retain As Published, Retain Handling 2; then QoS 1, Retain Handling 1.
    let bytes = subscribe(
        V5,
        0x0102,
        &[],
        &[(b"a/+", 0x2E), (b"b/#", 0x11), (b"c", 0)],
    );
    let s = subscribe_of(from_client(V5, &bytes));
    assert_eq!(s.packet_id.get(), 0x0102);
    let expected = [
        (
            "a/+",
            SubscriptionOptions {
                qos: QoS::ExactlyOnce,
                no_local: true,
                retain_as_published: true,
                retain_handling: RetainHandling::DoNotSend,
            },
        ),
        (
            "b/#",
            SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                no_local: false,
                retain_as_published: false,
                retain_handling: RetainHandling::SendIfNew,
            },
        ),
        ("c", SubscriptionOptions::default()),
    ];
    assert_eq!(s.subscriptions.len(), expected.len());
    for (sub, (filter, options)) in s.subscriptions.iter().zip(expected) {
        assert_eq!(sub.filter.as_str(), filter);
        assert_eq!(sub.options, options);
    }
    // And back to the same bytes.
    let mut out = BytesMut::new();
    Encoder::new(V5).encode(&s, &mut out).unwrap();
    assert_eq!(&out[..], &bytes[..]);
}

#[test]
fn mqtt_5_3_8_2_1_2_subscription_identifier_0_is_protocol_error() {
    let bytes = subscribe(V5, 1, &[0x0B, 0], &[(b"a", 0)]);
    assert_error(
        from_client(V5, &bytes),
        ReasonCode::ProtocolError,
        "MQTT-5 §3.8.2.1.2",
    );
}

#[test]
fn mqtt_5_3_8_2_1_2_subscription_identifier_twice_is_protocol_error() {
    // Every property that may appear once is refused twice with the rule of §2.2.2.
    let bytes = subscribe(V5, 1, &[0x0B, 1, 0x0B, 2], &[(b"a", 0)]);
    assert_error(
        from_client(V5, &bytes),
        ReasonCode::ProtocolError,
        "MQTT-5 §2.2.2.2",
    );
    // One identifier, up to the largest Variable Byte Integer, is fine.
    let bytes = subscribe(V5, 1, &[0x0B, 0xFF, 0xFF, 0xFF, 0x7F], &[(b"a", 0)]);
    let s = subscribe_of(from_client(V5, &bytes));
    assert_eq!(
        s.properties.subscription_identifier.map(|id| id.get()),
        Some(268_435_455)
    );
}

#[test]
fn mqtt_5_2_2_2_2_property_not_allowed_in_subscribe_is_malformed() {
    // Topic Alias (0x23) is a PUBLISH property.
    let bytes = subscribe(V5, 1, &[0x23, 0, 1], &[(b"a", 0)]);
    assert_error(
        from_client(V5, &bytes),
        ReasonCode::MalformedPacket,
        "MQTT-5 §2.2.2.2",
    );
}

#[test]
fn mqtt_4_7_1_1_multi_level_wildcard_must_be_last_and_alone() {
    for version in VERSIONS {
        for filter in [&b"a/#/b"[..], b"a#", b"#/a", b"a/b#"] {
            let bytes = subscribe(version, 1, &[], &[(filter, 0)]);
            assert_error(
                from_client(version, &bytes),
                ReasonCode::MalformedPacket,
                "MQTT-4.7.1-1",
            );
        }
    }
}

#[test]
fn mqtt_4_7_1_2_single_level_wildcard_must_occupy_a_whole_level() {
    for version in VERSIONS {
        for filter in [&b"a/b+"[..], b"+a", b"a/+b/c", b"++"] {
            let bytes = subscribe(version, 1, &[], &[(filter, 0)]);
            assert_error(
                from_client(version, &bytes),
                ReasonCode::MalformedPacket,
                "MQTT-4.7.1-2",
            );
        }
        let good: [&[u8]; 5] = [b"+", b"+/+", b"a/+/c", b"#", b"a/#"];
        let entries: Vec<(&[u8], u8)> = good.iter().map(|f| (*f, 0)).collect();
        let s = subscribe_of(from_client(version, &subscribe(version, 1, &[], &entries)));
        assert_eq!(s.subscriptions.len(), good.len());
    }
}

#[test]
fn mqtt_4_7_3_1_empty_topic_filter_is_malformed() {
    for version in VERSIONS {
        let bytes = subscribe(version, 1, &[], &[(b"", 0)]);
        assert_error(
            from_client(version, &bytes),
            ReasonCode::MalformedPacket,
            "MQTT-4.7.3-1",
        );
        let bytes = unsubscribe(version, 1, &[b""]);
        assert_error(
            from_client(version, &bytes),
            ReasonCode::MalformedPacket,
            "MQTT-4.7.3-1",
        );
    }
}

#[test]
fn mqtt_4_8_2_1_shared_subscription_needs_a_share_name() {
    let bytes = subscribe(V5, 1, &[], &[(b"$share//a", 0)]);
    assert_error(
        from_client(V5, &bytes),
        ReasonCode::MalformedPacket,
        "MQTT-4.8.2-1",
    );
}

#[test]
fn mqtt_4_8_2_2_share_name_has_no_wildcard_and_is_followed_by_a_filter() {
    for filter in [
        &b"$share/g+/a"[..],
        b"$share/g#/a",
        b"$share/g",
        b"$share/g/",
    ] {
        let bytes = subscribe(V5, 1, &[], &[(filter, 0)]);
        assert_error(
            from_client(V5, &bytes),
            ReasonCode::MalformedPacket,
            "MQTT-4.8.2-2",
        );
    }
}

// ---------------------------------------------------------------------------------------------
// SUBACK (§3.9), client role

const SUBACK_CODES_V5: [u8; 12] = [
    0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2,
];

#[test]
fn mqtt_3_9_3_2_suback_reason_codes_in_5_0() {
    for byte in 0..=255u8 {
        let result = from_server(V5, &ack(V5, 0x90, 1, &[0x00, byte]));
        if SUBACK_CODES_V5.contains(&byte) {
            match result {
                Ok(Packet::SubAck(p)) => {
                    let codes: Vec<u8> = p.reason_codes.iter().map(|c| c.as_u8()).collect();
                    assert_eq!(codes, [0x00, byte]);
                }
                other => panic!("{other:?}"),
            }
        } else {
            assert_error(result, ReasonCode::ProtocolError, "MQTT-3.9.3-2");
        }
    }
}

#[test]
fn mqtt_3_9_3_2_suback_return_codes_in_3_1_1() {
    for byte in 0..=255u8 {
        let result = from_server(V311, &ack(V311, 0x90, 1, &[byte]));
        match byte {
            0x00..=0x02 | 0x80 => match result {
                Ok(Packet::SubAck(p)) => assert_eq!(p.reason_codes[0].as_u8(), byte),
                other => panic!("{other:?}"),
            },
            _ => assert_error(result, ReasonCode::ProtocolError, "MQTT-3.9.3-2"),
        }
    }
    // A 5.0 failure code is sent to a 3.1.1 client as 0x80.
    let suback = SubAck {
        packet_id: PacketId::new(1).unwrap(),
        properties: Default::default(),
        reason_codes: vec![
            ReasonCode::GrantedQoS1,
            ReasonCode::NotAuthorized,
            ReasonCode::TopicFilterInvalid,
        ],
    };
    let mut out = BytesMut::new();
    Encoder::new(V311).encode(&suback, &mut out).unwrap();
    assert_eq!(&out[..], &[0x90, 5, 0, 1, 0x01, 0x80, 0x80]);
}

#[test]
fn mqtt_3_8_4_6_suback_without_reason_codes_is_protocol_error() {
    for version in VERSIONS {
        assert_error(
            from_server(version, &ack(version, 0x90, 1, &[])),
            ReasonCode::ProtocolError,
            "MQTT-3.8.4-6",
        );
    }
}

#[test]
fn mqtt_2_2_1_6_suback_and_unsuback_packet_identifier_0_is_protocol_error() {
    for version in VERSIONS {
        assert_error(
            from_server(version, &ack(version, 0x90, 0, &[0])),
            ReasonCode::ProtocolError,
            "MQTT-2.2.1-6",
        );
        let codes: &[u8] = if version.is_v5() { &[0] } else { &[] };
        assert_error(
            from_server(version, &ack(version, 0xB0, 0, codes)),
            ReasonCode::ProtocolError,
            "MQTT-2.2.1-6",
        );
    }
}

#[test]
fn mqtt_2_1_3_1_suback_and_unsuback_flags_must_be_0000() {
    for version in VERSIONS {
        for first in [0x92, 0x91, 0xB2, 0xB8] {
            let mut bytes = ack(version, first & 0xF0, 1, &[0]);
            bytes[0] = first;
            assert_error(
                from_server(version, &bytes),
                ReasonCode::MalformedPacket,
                "MQTT-2.1.3-1",
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// UNSUBSCRIBE (§3.10)

#[test]
fn mqtt_3_10_1_1_unsubscribe_flags_must_be_0010() {
    for version in VERSIONS {
        let good = unsubscribe(version, 1, &[b"a"]);
        assert!(from_client(version, &good).is_ok());
        for flags in [0x0, 0x1, 0x3, 0x8, 0xF] {
            let mut bytes = good.clone();
            bytes[0] = 0xA0 | flags;
            assert_error(
                from_client(version, &bytes),
                ReasonCode::MalformedPacket,
                "MQTT-3.10.1-1",
            );
        }
    }
}

#[test]
fn mqtt_3_10_3_2_unsubscribe_without_payload_is_protocol_error() {
    for version in VERSIONS {
        assert_error(
            from_client(version, &unsubscribe(version, 1, &[])),
            ReasonCode::ProtocolError,
            "MQTT-3.10.3-2",
        );
    }
}

#[test]
fn mqtt_3_10_3_1_unsubscribe_filters_are_utf8_encoded_strings() {
    for version in VERSIONS {
        assert_error(
            from_client(version, &unsubscribe(version, 1, &[b"a", b"\xC3"])),
            ReasonCode::MalformedPacket,
            "MQTT-1.5.4-1",
        );
        match from_client(
            version,
            &unsubscribe(version, 7, &[b"a/+", b"$share/g/b", b"#"]),
        ) {
            Ok(Packet::Unsubscribe(u)) => {
                assert_eq!(u.packet_id.get(), 7);
                let filters: Vec<&str> = u.filters.iter().map(TopicFilter::as_str).collect();
                assert_eq!(filters, ["a/+", "$share/g/b", "#"]);
            }
            other => panic!("{other:?}"),
        }
        assert_error(
            from_client(version, &unsubscribe(version, 0, &[b"a"])),
            ReasonCode::ProtocolError,
            "MQTT-2.2.1-3",
        );
    }
}

// ---------------------------------------------------------------------------------------------
// UNSUBACK (§3.11), client role

const UNSUBACK_CODES_V5: [u8; 7] = [0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91];

#[test]
fn mqtt_3_11_3_2_unsuback_reason_codes_in_5_0() {
    for byte in 0..=255u8 {
        let result = from_server(V5, &ack(V5, 0xB0, 1, &[byte, 0x00]));
        if UNSUBACK_CODES_V5.contains(&byte) {
            match result {
                Ok(Packet::UnsubAck(p)) => {
                    let codes: Vec<u8> = p.reason_codes.iter().map(|c| c.as_u8()).collect();
                    assert_eq!(codes, [byte, 0x00]);
                }
                other => panic!("{other:?}"),
            }
        } else {
            assert_error(result, ReasonCode::ProtocolError, "MQTT-3.11.3-2");
        }
    }
    // One reason code per Topic Filter, and an UNSUBSCRIBE has at least one.
    assert_error(
        from_server(V5, &ack(V5, 0xB0, 1, &[])),
        ReasonCode::ProtocolError,
        "MQTT-3.11.3-2",
    );
}

#[test]
fn mqtt_3_1_1_3_11_1_unsuback_has_no_payload() {
    match from_server(V311, &[0xB0, 2, 0, 9]) {
        Ok(Packet::UnsubAck(p)) => {
            assert_eq!(p.packet_id.get(), 9);
            assert!(p.reason_codes.is_empty());
        }
        other => panic!("{other:?}"),
    }
    for bytes in [&[0xB0, 3, 0, 9, 0x00][..], &[0xB0, 4, 0, 9, 0, 0]] {
        assert_error(
            from_server(V311, bytes),
            ReasonCode::MalformedPacket,
            "MQTT-3.1.1 §3.11.1",
        );
    }
    // The encoder leaves 5.0's reason codes out.
    let unsuback = UnsubAck {
        packet_id: PacketId::new(9).unwrap(),
        properties: Default::default(),
        reason_codes: vec![ReasonCode::NoSubscriptionExisted],
    };
    let mut out = BytesMut::new();
    Encoder::new(V311).encode(&unsuback, &mut out).unwrap();
    assert_eq!(&out[..], &[0xB0, 2, 0, 9]);
}

#[test]
fn subscribe_and_unsubscribe_round_trip_through_the_encoder() {
    for version in VERSIONS {
        let subscribe = Subscribe {
            packet_id: PacketId::new(3).unwrap(),
            properties: Default::default(),
            subscriptions: vec![Subscription {
                filter: TopicFilter::new("a/+/c").unwrap(),
                options: SubscriptionOptions::qos(QoS::AtLeastOnce),
            }],
        };
        let mut out = BytesMut::new();
        Encoder::new(version).encode(&subscribe, &mut out).unwrap();
        assert_eq!(subscribe_of(from_client(version, &out)), subscribe);
        let unsubscribe = Unsubscribe {
            packet_id: PacketId::new(4).unwrap(),
            properties: Default::default(),
            filters: vec![TopicFilter::new("a/#").unwrap()],
        };
        out.clear();
        Encoder::new(version)
            .encode(&unsubscribe, &mut out)
            .unwrap();
        assert_eq!(
            from_client(version, &out).unwrap(),
            Packet::Unsubscribe(unsubscribe)
        );
    }
}
