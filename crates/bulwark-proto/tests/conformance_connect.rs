//! Conformance tests for CONNECT (§3.1) and CONNACK (§3.2), as decoded by the server and the
//! client role, and for the encoder rules that hang on their properties. MQTT 5.0 and 3.1.1.
//!
//! Every packet is written by hand, byte by byte, from the specification; each test is named
//! after the statement it checks and asserts both the reason code and the rule the codec
//! reports, so that it fails if the rule is broken or cited wrongly.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code"
)]

mod common;

use bulwark_proto::{
    ClientId, ConnAck, ConnAckProperties, Connect, ConnectReturnCode, DecodeError, Decoder,
    DecoderLimits, EncodeError, Encoder, MqttString, Packet, PacketType, PayloadFormat,
    ProtocolVersion, Publish, QoS, ReasonCode, TopicName, UserProperty, Will,
};
use bytes::{Bytes, BytesMut};
use common::{packet, string as s, varint};

// ---------------------------------------------------------------------------------------------
// Byte builders
// ---------------------------------------------------------------------------------------------

/// A property block: its Property Length and the properties.
fn props(content: &[u8]) -> Vec<u8> {
    let mut out = varint(content.len());
    out.extend_from_slice(content);
    out
}

/// A CONNECT packet with the given protocol name, level, flags, keep alive 60, and the rest of
/// the body (the properties for 5.0, then the payload) as given.
fn connect_raw(name: &[u8], level: u8, flags: u8, rest: &[u8]) -> Vec<u8> {
    let body = [&s(name)[..], &[level, flags, 0, 60], rest].concat();
    packet(0x10, &body)
}

/// An MQTT 5.0 CONNECT: flags, CONNECT properties, payload.
fn connect_v5(flags: u8, properties: &[u8], payload: &[u8]) -> Vec<u8> {
    connect_raw(
        b"MQTT",
        5,
        flags,
        &[&props(properties)[..], payload].concat(),
    )
}

/// An MQTT 3.1.1 CONNECT: flags and payload.
fn connect_v311(flags: u8, payload: &[u8]) -> Vec<u8> {
    connect_raw(b"MQTT", 4, flags, payload)
}

/// An MQTT 5.0 CONNACK: flags, reason code, properties.
fn connack_v5(flags: u8, code: u8, properties: &[u8]) -> Vec<u8> {
    packet(0x20, &[&[flags, code][..], &props(properties)].concat())
}

const CLEAN: u8 = 0b0000_0010;
const WILL: u8 = 0b0000_0100;
const WILL_RETAIN: u8 = 0b0010_0000;
const PASSWORD: u8 = 0b0100_0000;
const USER_NAME: u8 = 0b1000_0000;

const fn will_qos(qos: u8) -> u8 {
    qos << 3
}

// ---------------------------------------------------------------------------------------------
// Decoding helpers
// ---------------------------------------------------------------------------------------------

/// Feeds `bytes` to a server decoder; every packet, or the first error.
fn server(bytes: &[u8]) -> Result<Vec<Packet>, DecodeError> {
    let mut decoder = Decoder::server(DecoderLimits::PROTOCOL);
    decoder.handle_bytes(bytes);
    drain(&mut decoder)
}

/// Feeds `bytes` to the decoder of a client that connected with `version`.
fn client(version: ProtocolVersion, bytes: &[u8]) -> Result<Vec<Packet>, DecodeError> {
    let mut decoder = Decoder::client(version, DecoderLimits::PROTOCOL);
    decoder.handle_bytes(bytes);
    drain(&mut decoder)
}

fn drain(decoder: &mut Decoder) -> Result<Vec<Packet>, DecodeError> {
    let mut packets = Vec::new();
    while let Some(packet) = decoder.poll_packet()? {
        packets.push(packet);
    }
    assert_eq!(decoder.buffered(), 0, "bytes left undecoded");
    Ok(packets)
}

/// The one CONNECT in `bytes`.
fn decode_connect(bytes: &[u8]) -> Connect {
    match server(bytes).unwrap().as_slice() {
        [Packet::Connect(connect)] => (**connect).clone(),
        other => panic!("expected one CONNECT, got {other:?}"),
    }
}

/// The one CONNACK in `bytes`, decoded by a client of `version`.
fn decode_connack(version: ProtocolVersion, bytes: &[u8]) -> ConnAck {
    match client(version, bytes).unwrap().as_slice() {
        [Packet::ConnAck(connack)] => (**connack).clone(),
        other => panic!("expected one CONNACK, got {other:?}"),
    }
}

#[track_caller]
fn assert_error(result: Result<Vec<Packet>, DecodeError>, code: ReasonCode, rule: &str) {
    let err = match result {
        Ok(packets) => panic!("expected [{rule}], decoded {packets:?}"),
        Err(err) => err,
    };
    assert_eq!(err.rule(), rule, "{err}");
    assert_eq!(err.reason_code(), code, "{err}");
}

#[track_caller]
fn assert_malformed(result: Result<Vec<Packet>, DecodeError>, rule: &str) {
    assert_error(result, ReasonCode::MalformedPacket, rule);
}

#[track_caller]
fn assert_protocol_error(result: Result<Vec<Packet>, DecodeError>, rule: &str) {
    assert_error(result, ReasonCode::ProtocolError, rule);
}

fn text(value: &str) -> MqttString {
    MqttString::new(value).unwrap()
}

const TRUNCATED: &str = "MQTT-5 §2.1.4";

// ---------------------------------------------------------------------------------------------
// §3.1.0: CONNECT first, and once
// ---------------------------------------------------------------------------------------------

#[test]
fn mqtt_3_1_0_1_first_packet_from_the_client_must_be_connect() {
    let publish = packet(0x30, &[&s(b"a/b")[..], &[0], b"hi"].concat());
    for first in [vec![0xC0, 0x00], packet(0xE0, &[]), publish] {
        assert_protocol_error(server(&first), "MQTT-3.1.0-1");
    }
    // The same packets are fine once CONNECT has come first.
    let ok = [connect_v311(CLEAN, &s(b"c")), vec![0xC0, 0x00]].concat();
    assert_eq!(server(&ok).unwrap()[1], Packet::PingReq);
}

#[test]
fn mqtt_3_1_0_2_second_connect_is_a_protocol_error() {
    for connect in [
        connect_v311(CLEAN, &s(b"c")),
        connect_v5(CLEAN, &[], &s(b"c")),
    ] {
        let twice = [connect.clone(), connect].concat();
        assert_protocol_error(server(&twice), "MQTT-3.1.0-2");
    }
}

// ---------------------------------------------------------------------------------------------
// §3.1.2.1, §3.1.2.2: protocol name and level
// ---------------------------------------------------------------------------------------------

#[test]
fn protocol_name_and_level_select_the_version() {
    for (name, level, version) in [
        (&b"MQIsdp"[..], 3, ProtocolVersion::V3_1),
        (b"MQTT", 4, ProtocolVersion::V3_1_1),
        (b"MQTT", 5, ProtocolVersion::V5),
    ] {
        let rest = if level == 5 {
            [&props(&[])[..], &s(b"c")].concat()
        } else {
            s(b"c")
        };
        let connect = decode_connect(&connect_raw(name, level, CLEAN, &rest));
        assert_eq!(connect.protocol_version, version);
        assert_eq!(connect.client_id.as_str(), "c");
    }
}

#[test]
fn mqtt_3_1_2_1_protocol_name_other_than_mqtt_is_unsupported_protocol_version() {
    for name in [&b"mqtt"[..], b"MQTX", b"MQ", b"", b"MQTT\0", b"HTTP"] {
        let bytes = connect_raw(name, 5, CLEAN, &[&props(&[])[..], &s(b"c")].concat());
        let err = server(&bytes).unwrap_err();
        assert_eq!(err.rule(), "MQTT-3.1.2-1", "{name:?}: {err}");
        assert_eq!(err.reason_code(), ReasonCode::UnsupportedProtocolVersion);
    }
}

#[test]
fn mqtt_3_1_2_2_unsupported_protocol_level_is_0x84_and_311_return_code_1() {
    for (name, level) in [
        (&b"MQTT"[..], 0),
        (b"MQTT", 3),
        (b"MQTT", 6),
        (b"MQTT", 0xFF),
        (b"MQIsdp", 4),
        (b"MQIsdp", 5),
    ] {
        let err = server(&connect_raw(name, level, CLEAN, &s(b"c"))).unwrap_err();
        assert_eq!(err.rule(), "MQTT-3.1.2-2", "{name:?} level {level}: {err}");
        assert_eq!(err.reason_code(), ReasonCode::UnsupportedProtocolVersion);
        // MQTT 3.1.1 answers with return code 0x01 (unacceptable protocol version).
        let code = ConnectReturnCode::from_reason(err.reason_code()).unwrap();
        assert_eq!(code as u8, 0x01);
    }
}

// ---------------------------------------------------------------------------------------------
// §3.1.2.3: Connect Flags
// ---------------------------------------------------------------------------------------------

#[test]
fn mqtt_3_1_2_3_reserved_connect_flag_is_malformed() {
    for flags in [0b0000_0001, 0b0000_0011, 0b1100_0011] {
        let v5 = connect_v5(flags, &[], &[&s(b"c")[..], &s(b"u"), &s(b"p")].concat());
        let v311 = connect_v311(flags, &[&s(b"c")[..], &s(b"u"), &s(b"p")].concat());
        for (bytes, version) in [(v5, ProtocolVersion::V5), (v311, ProtocolVersion::V3_1_1)] {
            let mut decoder = Decoder::server(DecoderLimits::PROTOCOL);
            decoder.handle_bytes(&bytes);
            assert_malformed(drain(&mut decoder), "MQTT-3.1.2-3");
            // The version is known even so, to answer with a CONNACK of the client's version.
            assert_eq!(decoder.protocol_version(), Some(version));
        }
    }
}

/// A 3.1 CONNECT ("MQIsdp", level 3) with client id `c`, connect flags `flags`, and the
/// fixed header's first byte `first`.
fn connect_v31(first: u8, flags: u8) -> Vec<u8> {
    packet(first, &connect_raw(b"MQIsdp", 3, flags, &s(b"c"))[2..])
}

#[test]
fn mqtt_3_1_did_not_reserve_connect_flag_bit_0_nor_the_fixed_header_flags() {
    // MQTT 3.1 (§3.1 "Connect flags", §2.1 "Fixed header") gives bit 0 of the connect flags
    // and the CONNECT's fixed-header flags no rule: a 3.1 broker accepts them.
    for (first, flags) in [(0x10, CLEAN | 1), (0x14, CLEAN), (0x1f, CLEAN | 1)] {
        let packets = server(&connect_v31(first, flags)).unwrap();
        let [Packet::Connect(connect)] = packets.as_slice() else {
            panic!("one CONNECT: {packets:?}");
        };
        assert_eq!(connect.protocol_version, ProtocolVersion::V3_1);
        assert!(connect.clean_start);
    }
    // 3.1.1 and 5.0 do reserve the fixed header's flags [MQTT-2.1.3-1].
    let mut v311 = connect_v311(CLEAN, &s(b"c"));
    v311[0] = 0x14;
    assert_malformed(server(&v311), "MQTT-2.1.3-1");
}

#[test]
fn mqtt_3_1_retries_may_set_dup_on_pubrel_subscribe_and_unsubscribe() {
    // 3.1 clients set DUP (and QoS 1) when they send PUBREL, SUBSCRIBE or UNSUBSCRIBE again.
    let mut bytes = connect_v31(0x10, CLEAN);
    bytes.extend_from_slice(b"\x6a\x02\x00\x01");
    bytes.extend(packet(0x8a, &[&[0, 2][..], &s(b"t"), &[1]].concat()));
    bytes.extend(packet(0xaa, &[&[0, 3][..], &s(b"t")].concat()));
    let packets = server(&bytes).unwrap();
    assert!(
        matches!(
            packets.as_slice(),
            [
                Packet::Connect(_),
                Packet::PubRel(_),
                Packet::Subscribe(_),
                Packet::Unsubscribe(_)
            ]
        ),
        "{packets:?}"
    );
    // The same PUBREL from a 3.1.1 client is malformed [MQTT-3.6.1-1].
    let mut bytes = connect_v311(CLEAN, &s(b"c"));
    bytes.extend_from_slice(b"\x6a\x02\x00\x01");
    assert!(server(&bytes).is_err());
}

#[test]
fn clean_start_flag_decodes() {
    assert!(decode_connect(&connect_v5(CLEAN, &[], &s(b"c"))).clean_start);
    assert!(!decode_connect(&connect_v5(0, &[], &s(b"c"))).clean_start);
    assert!(!decode_connect(&connect_v311(0, &s(b"c"))).clean_start);
}

// ---------------------------------------------------------------------------------------------
// §3.1.2.5 to §3.1.2.7: Will Flag, Will QoS, Will Retain
// ---------------------------------------------------------------------------------------------

/// Will Properties (5.0), Will Topic `w` and Will Payload `bye`.
fn will_fields(v5: bool) -> Vec<u8> {
    let mut out = if v5 { props(&[]) } else { Vec::new() };
    out.extend(s(b"w"));
    out.extend(s(b"bye"));
    out
}

#[test]
fn will_flag_qos_and_retain_decode() {
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        for retain in [false, true] {
            let flags = CLEAN | WILL | will_qos(qos.as_u8()) | if retain { WILL_RETAIN } else { 0 };
            for v5 in [true, false] {
                let payload = [&s(b"c")[..], &will_fields(v5)].concat();
                let bytes = if v5 {
                    connect_v5(flags, &[], &payload)
                } else {
                    connect_v311(flags, &payload)
                };
                let will = decode_connect(&bytes).will.unwrap();
                assert_eq!(will.qos, qos);
                assert_eq!(will.retain, retain);
                assert_eq!(will.topic.as_str(), "w");
                assert_eq!(&will.payload[..], b"bye");
            }
        }
    }
}

#[test]
fn mqtt_3_1_2_9_will_flag_requires_will_properties_topic_and_payload() {
    // 5.0: the Will Properties, then the Will Topic, then the Will Payload must follow.
    let v5_cases: [Vec<u8>; 3] = [vec![], props(&[]), [&props(&[])[..], &s(b"w")].concat()];
    for will in v5_cases {
        let bytes = connect_v5(CLEAN | WILL, &[], &[&s(b"c")[..], &will].concat());
        assert_malformed(server(&bytes), TRUNCATED);
    }
    for will in [vec![], s(b"w")] {
        let bytes = connect_v311(CLEAN | WILL, &[&s(b"c")[..], &will].concat());
        assert_malformed(server(&bytes), TRUNCATED);
    }
}

#[test]
fn mqtt_3_1_2_11_will_qos_must_be_0_without_will_flag() {
    for qos in [1, 2, 3] {
        let v5 = connect_v5(CLEAN | will_qos(qos), &[], &s(b"c"));
        assert_malformed(server(&v5), "MQTT-3.1.2-11");
        let v311 = connect_v311(CLEAN | will_qos(qos), &s(b"c"));
        assert_malformed(server(&v311), "MQTT-3.1.2-11");
    }
}

#[test]
fn mqtt_3_1_2_12_will_qos_3_is_malformed() {
    let flags = CLEAN | WILL | will_qos(3);
    let v5 = connect_v5(flags, &[], &[&s(b"c")[..], &will_fields(true)].concat());
    assert_malformed(server(&v5), "MQTT-3.1.2-12");
    let v311 = connect_v311(flags, &[&s(b"c")[..], &will_fields(false)].concat());
    assert_malformed(server(&v311), "MQTT-3.1.2-12");
}

#[test]
fn mqtt_3_1_2_13_will_retain_must_be_0_without_will_flag() {
    let v5 = connect_v5(CLEAN | WILL_RETAIN, &[], &s(b"c"));
    assert_malformed(server(&v5), "MQTT-3.1.2-13");
    let v311 = connect_v311(CLEAN | WILL_RETAIN, &s(b"c"));
    assert_malformed(server(&v311), "MQTT-3.1.2-13");
}

// ---------------------------------------------------------------------------------------------
// §3.1.2.8, §3.1.2.9: User Name and Password Flags
// ---------------------------------------------------------------------------------------------

#[test]
fn mqtt_3_1_2_16_no_user_name_without_user_name_flag() {
    // Without the flag, a user name after the client identifier is bytes left over.
    let v5 = connect_v5(CLEAN, &[], &[&s(b"c")[..], &s(b"user")].concat());
    assert_malformed(server(&v5), TRUNCATED);
    let v311 = connect_v311(CLEAN, &[&s(b"c")[..], &s(b"user")].concat());
    assert_malformed(server(&v311), TRUNCATED);
}

#[test]
fn mqtt_3_1_2_17_user_name_flag_requires_a_user_name() {
    let v5 = connect_v5(CLEAN | USER_NAME, &[], &s(b"c"));
    assert_malformed(server(&v5), TRUNCATED);
    let v311 = connect_v311(CLEAN | USER_NAME, &s(b"c"));
    assert_malformed(server(&v311), TRUNCATED);
    let ok = decode_connect(&connect_v311(
        CLEAN | USER_NAME,
        &[&s(b"c")[..], &s(b"user")].concat(),
    ));
    assert_eq!(ok.username, Some(text("user")));
    assert_eq!(ok.password, None);
}

#[test]
fn mqtt_3_1_2_18_no_password_without_password_flag() {
    let payload = [&s(b"c")[..], &s(b"user"), &s(b"secret")].concat();
    assert_malformed(
        server(&connect_v5(CLEAN | USER_NAME, &[], &payload)),
        TRUNCATED,
    );
    assert_malformed(
        server(&connect_v311(CLEAN | USER_NAME, &payload)),
        TRUNCATED,
    );
}

#[test]
fn mqtt_3_1_2_19_password_flag_requires_a_password() {
    let payload = [&s(b"c")[..], &s(b"user")].concat();
    let flags = CLEAN | USER_NAME | PASSWORD;
    assert_malformed(server(&connect_v5(flags, &[], &payload)), TRUNCATED);
    assert_malformed(server(&connect_v311(flags, &payload)), TRUNCATED);
}

#[test]
fn mqtt_3_1_2_22_v311_password_flag_requires_user_name_flag() {
    let bytes = connect_v311(CLEAN | PASSWORD, &[&s(b"c")[..], &s(b"secret")].concat());
    assert_malformed(server(&bytes), "MQTT-3.1.2-22");
    // The encoder refuses to write such a CONNECT before 5.0.
    let mut connect = Connect::new(ProtocolVersion::V3_1_1, ClientId::new("c").unwrap());
    connect.password = Some(Bytes::from_static(b"secret"));
    let mut buf = BytesMut::new();
    let err = Encoder::new(ProtocolVersion::V3_1_1)
        .encode(&connect, &mut buf)
        .unwrap_err();
    assert!(matches!(err, EncodeError::Invalid(_)), "{err:?}");
    assert!(buf.is_empty());
}

#[test]
fn v5_3_1_2_9_password_without_user_name_is_allowed() {
    let bytes = connect_v5(
        CLEAN | PASSWORD,
        &[],
        &[&s(b"c")[..], &s(b"token")].concat(),
    );
    let connect = decode_connect(&bytes);
    assert_eq!(connect.username, None);
    assert_eq!(connect.password.as_deref(), Some(&b"token"[..]));
    // And the encoder writes exactly those bytes.
    let mut buf = BytesMut::new();
    Encoder::new(ProtocolVersion::V5)
        .encode(&connect, &mut buf)
        .unwrap();
    assert_eq!(&buf[..], &bytes[..]);
}

// ---------------------------------------------------------------------------------------------
// §2.2.2 and §3.1.2.11: CONNECT properties
// ---------------------------------------------------------------------------------------------

fn connect_with_properties(properties: &[u8]) -> Vec<u8> {
    connect_v5(CLEAN, properties, &s(b"c"))
}

#[test]
fn connect_properties_decode_to_their_fields() {
    let properties = [
        &[0x11, 0, 0, 0x0E, 0x10][..],   // Session Expiry Interval 3600
        &[0x21, 0, 20],                  // Receive Maximum 20
        &[0x27, 0, 0, 0x10, 0],          // Maximum Packet Size 4096
        &[0x22, 0, 5],                   // Topic Alias Maximum 5
        &[0x19, 1],                      // Request Response Information
        &[0x17, 0],                      // Request Problem Information
        &[0x26, 0, 1, b'k', 0, 1, b'1'], // User Property k=1
        &[0x26, 0, 1, b'k', 0, 1, b'2'], // User Property k=2 (same name again)
        &[0x15, 0, 5, b'S', b'C', b'R', b'A', b'M'], // Authentication Method
        &[0x16, 0, 2, 0xAB, 0xCD],       // Authentication Data
    ]
    .concat();
    let p = decode_connect(&connect_with_properties(&properties)).properties;
    assert_eq!(p.session_expiry_interval, Some(3600));
    assert_eq!(p.receive_maximum.map(|v| v.get()), Some(20));
    assert_eq!(p.maximum_packet_size.map(|v| v.get()), Some(4096));
    assert_eq!(p.topic_alias_maximum, Some(5));
    assert_eq!(p.request_response_information, Some(true));
    assert_eq!(p.request_problem_information, Some(false));
    assert_eq!(
        p.user_properties,
        [
            UserProperty::new(text("k"), text("1")),
            UserProperty::new(text("k"), text("2")),
        ]
    );
    assert_eq!(p.authentication_method, Some(text("SCRAM")));
    assert_eq!(p.authentication_data.as_deref(), Some(&[0xAB, 0xCD][..]));
}

#[test]
fn mqtt_2_2_2_1_property_length_must_be_present_even_when_zero() {
    // A 5.0 CONNECT written without its Property Length: the client identifier's length is
    // read as the Property Length and the packet no longer parses.
    let bytes = connect_raw(b"MQTT", 5, CLEAN, &s(b"abc"));
    assert_malformed(server(&bytes), TRUNCATED);
    // With the zero Property Length it decodes.
    assert_eq!(
        decode_connect(&connect_v5(CLEAN, &[], &s(b"abc")))
            .client_id
            .as_str(),
        "abc"
    );
}

#[test]
fn v5_2_2_2_1_property_length_running_past_the_packet_is_malformed() {
    // Property Length 10, but only the 3-byte client identifier follows.
    let bytes = connect_raw(b"MQTT", 5, CLEAN, &[&[10][..], &s(b"c")].concat());
    assert_malformed(server(&bytes), TRUNCATED);
    // A property whose value runs past the Property Length.
    let bytes = connect_raw(
        b"MQTT",
        5,
        CLEAN,
        &[&[3, 0x11, 0, 0][..], &[0, 0], &s(b"c")].concat(),
    );
    assert_malformed(server(&bytes), TRUNCATED);
}

#[test]
fn v5_2_2_2_unknown_property_identifier_is_malformed() {
    for property in [
        &[0x00, 0][..],
        &[0x04, 0],
        &[0x7F, 0],
        &[0x80, 0x01, 0], // identifier 128, a two-byte Variable Byte Integer
    ] {
        assert_malformed(
            server(&connect_with_properties(property)),
            "MQTT-5 §2.2.2.2",
        );
    }
}

#[test]
fn v5_2_2_2_property_not_valid_for_connect_is_malformed() {
    for property in [
        &[0x01, 1][..],      // Payload Format Indicator
        &[0x0B, 1],          // Subscription Identifier
        &[0x13, 0, 10],      // Server Keep Alive
        &[0x18, 0, 0, 0, 5], // Will Delay Interval: a Will Property, not a CONNECT property
        &[0x1F, 0, 1, b'r'], // Reason String
        &[0x23, 0, 1],       // Topic Alias
        &[0x24, 1],          // Maximum QoS
        &[0x25, 1],          // Retain Available
        &[0x12, 0, 1, b'a'], // Assigned Client Identifier
    ] {
        assert_malformed(
            server(&connect_with_properties(property)),
            "MQTT-5 §2.2.2.2",
        );
    }
}

#[test]
fn v5_3_1_2_11_properties_given_twice_are_a_protocol_error() {
    for property in [
        &[0x11, 0, 0, 0, 1][..],
        &[0x21, 0, 1],
        &[0x27, 0, 0, 1, 0],
        &[0x22, 0, 1],
        &[0x19, 1],
        &[0x17, 1],
        &[0x15, 0, 1, b'm'],
    ] {
        let twice = [property, property].concat();
        assert_protocol_error(server(&connect_with_properties(&twice)), "MQTT-5 §2.2.2.2");
    }
    // User Property may repeat, names included (§3.1.2.11.8).
    let pair = [0x26, 0, 1, b'k', 0, 1, b'v'];
    let p = decode_connect(&connect_with_properties(&[pair, pair].concat())).properties;
    assert_eq!(p.user_properties.len(), 2);
}

#[test]
fn v5_3_1_2_11_3_receive_maximum_0_is_a_protocol_error() {
    assert_protocol_error(
        server(&connect_with_properties(&[0x21, 0, 0])),
        "MQTT-5 §3.1.2.11.3",
    );
    let p = decode_connect(&connect_with_properties(&[0x21, 0xFF, 0xFF])).properties;
    assert_eq!(p.receive_maximum.map(|v| v.get()), Some(65_535));
}

#[test]
fn v5_3_1_2_11_4_maximum_packet_size_0_is_a_protocol_error() {
    assert_protocol_error(
        server(&connect_with_properties(&[0x27, 0, 0, 0, 0])),
        "MQTT-5 §3.1.2.11.4",
    );
    let p = decode_connect(&connect_with_properties(&[0x27, 0, 0, 0, 1])).properties;
    assert_eq!(p.maximum_packet_size.map(|v| v.get()), Some(1));
}

#[test]
fn v5_3_1_2_11_6_request_response_information_is_0_or_1() {
    for value in [2, 0x80, 0xFF] {
        assert_protocol_error(
            server(&connect_with_properties(&[0x19, value])),
            "MQTT-5 §3.1.2.11.6",
        );
    }
}

#[test]
fn v5_3_1_2_11_7_request_problem_information_is_0_or_1() {
    for value in [2, 0x80, 0xFF] {
        assert_protocol_error(
            server(&connect_with_properties(&[0x17, value])),
            "MQTT-5 §3.1.2.11.7",
        );
    }
}

#[test]
fn v5_3_1_2_11_10_authentication_data_without_method_is_a_protocol_error() {
    assert_protocol_error(
        server(&connect_with_properties(&[0x16, 0, 1, 0xAA])),
        "MQTT-5 §3.1.2.11.10",
    );
    // The order of properties does not matter: data before method is fine.
    let properties = [&[0x16, 0, 1, 0xAA][..], &[0x15, 0, 1, b'm']].concat();
    let p = decode_connect(&connect_with_properties(&properties)).properties;
    assert_eq!(p.authentication_method, Some(text("m")));
}

#[test]
fn mqtt_1_5_7_1_user_property_strings_must_be_valid_utf8() {
    for (pair, rule) in [
        (&[0x26, 0, 1, 0xFF, 0, 1, b'v'][..], "MQTT-1.5.4-1"),
        (&[0x26, 0, 1, b'k', 0, 2, 0xED, 0xA0], "MQTT-1.5.4-1"),
        (&[0x26, 0, 1, 0x00, 0, 1, b'v'], "MQTT-1.5.4-2"),
        (&[0x26, 0, 1, b'k', 0, 1, 0x00], "MQTT-1.5.4-2"),
    ] {
        assert_malformed(server(&connect_with_properties(pair)), rule);
    }
}

// ---------------------------------------------------------------------------------------------
// §3.1.3.2: Will Properties
// ---------------------------------------------------------------------------------------------

/// A 5.0 CONNECT with a will whose properties are `will_properties` and topic `topic`.
fn connect_with_will(will_properties: &[u8], topic: &[u8]) -> Vec<u8> {
    let payload = [&s(b"c")[..], &props(will_properties), &s(topic), &s(b"bye")].concat();
    connect_v5(CLEAN | WILL, &[], &payload)
}

#[test]
fn will_properties_decode_to_their_fields() {
    let properties = [
        &[0x18, 0, 0, 0, 30][..],              // Will Delay Interval 30
        &[0x01, 1],                            // Payload Format Indicator: UTF-8
        &[0x02, 0, 0, 0, 60],                  // Message Expiry Interval 60
        &[0x03, 0, 4, b't', b'e', b'x', b't'], // Content Type
        &[0x08, 0, 3, b'r', b'/', b't'],       // Response Topic
        &[0x09, 0, 2, 1, 2],                   // Correlation Data
        &[0x26, 0, 1, b'a', 0, 1, b'1'],       // User Property
        &[0x26, 0, 1, b'a', 0, 1, b'2'],       // User Property, same name
    ]
    .concat();
    let will = decode_connect(&connect_with_will(&properties, b"w"))
        .will
        .unwrap();
    let p = will.properties;
    assert_eq!(p.will_delay_interval, Some(30));
    assert_eq!(p.payload_format_indicator, Some(PayloadFormat::Utf8));
    assert_eq!(p.message_expiry_interval, Some(60));
    assert_eq!(p.content_type, Some(text("text")));
    assert_eq!(p.response_topic, Some(TopicName::new("r/t").unwrap()));
    assert_eq!(p.correlation_data.as_deref(), Some(&[1, 2][..]));
    assert_eq!(
        p.user_properties,
        [
            UserProperty::new(text("a"), text("1")),
            UserProperty::new(text("a"), text("2")),
        ]
    );
}

#[test]
fn v5_2_2_2_property_not_valid_for_will_properties_is_malformed() {
    for property in [
        &[0x11, 0, 0, 0, 1][..], // Session Expiry Interval: a CONNECT property
        &[0x21, 0, 1],           // Receive Maximum
        &[0x23, 0, 1],           // Topic Alias
        &[0x0B, 1],              // Subscription Identifier
        &[0x15, 0, 1, b'm'],     // Authentication Method
        &[0x17, 1],              // Request Problem Information
        &[0x1F, 0, 1, b'r'],     // Reason String
    ] {
        assert_malformed(
            server(&connect_with_will(property, b"w")),
            "MQTT-5 §2.2.2.2",
        );
    }
}

#[test]
fn v5_3_1_3_2_will_properties_given_twice_are_a_protocol_error() {
    for property in [
        &[0x18, 0, 0, 0, 1][..],
        &[0x01, 0],
        &[0x02, 0, 0, 0, 1],
        &[0x03, 0, 1, b't'],
        &[0x08, 0, 1, b'r'],
        &[0x09, 0, 1, 1],
    ] {
        let twice = [property, property].concat();
        assert_protocol_error(server(&connect_with_will(&twice, b"w")), "MQTT-5 §2.2.2.2");
    }
}

#[test]
fn v5_3_1_3_2_3_will_payload_format_indicator_is_0_or_1() {
    assert_protocol_error(
        server(&connect_with_will(&[0x01, 2], b"w")),
        "MQTT-5 §3.1.3.2.3",
    );
    let will = decode_connect(&connect_with_will(&[0x01, 0], b"w"))
        .will
        .unwrap();
    assert_eq!(
        will.properties.payload_format_indicator,
        Some(PayloadFormat::Unspecified)
    );
}

#[test]
fn mqtt_3_3_2_14_will_response_topic_must_not_contain_wildcards() {
    for topic in [&b"r/+"[..], b"r/#", b"#"] {
        let property = [&[0x08][..], &s(topic)].concat();
        assert_malformed(server(&connect_with_will(&property, b"w")), "MQTT-3.3.2-14");
    }
    // An empty Response Topic breaks the topic name rule of §4.7.3.
    assert_malformed(
        server(&connect_with_will(&[0x08, 0, 0], b"w")),
        "MQTT-4.7.3-1",
    );
}

// ---------------------------------------------------------------------------------------------
// §3.1.3: CONNECT Payload
// ---------------------------------------------------------------------------------------------

#[test]
fn mqtt_3_1_3_1_payload_fields_in_order_client_id_will_user_name_password() {
    let flags = USER_NAME | PASSWORD | WILL_RETAIN | will_qos(1) | WILL | CLEAN;
    let payload = [
        &s(b"client-1")[..],
        &props(&[0x18, 0, 0, 0, 5]),
        &s(b"will/topic"),
        &s(&[0, 1, 2, 0xFF]),
        &s(b"alice"),
        &s(&[0xDE, 0xAD]),
    ]
    .concat();
    let bytes = connect_v5(flags, &[0x11, 0, 0, 0, 9], &payload);
    let connect = decode_connect(&bytes);
    let mut expected = Connect::new(ProtocolVersion::V5, ClientId::new("client-1").unwrap());
    expected.properties.session_expiry_interval = Some(9);
    expected.will = Some(Will {
        topic: TopicName::new("will/topic").unwrap(),
        payload: Bytes::from_static(&[0, 1, 2, 0xFF]),
        qos: QoS::AtLeastOnce,
        retain: true,
        properties: Default::default(),
    });
    if let Some(will) = &mut expected.will {
        will.properties.will_delay_interval = Some(5);
    }
    expected.username = Some(text("alice"));
    expected.password = Some(Bytes::from_static(&[0xDE, 0xAD]));
    assert_eq!(connect, expected);
    // The encoder writes the fields in the same order: the very same bytes.
    let mut buf = BytesMut::new();
    Encoder::new(ProtocolVersion::V5)
        .encode(&expected, &mut buf)
        .unwrap();
    assert_eq!(&buf[..], &bytes[..]);

    // 3.1.1: Client Identifier, Will Topic, Will Message, User Name, Password.
    let payload = [
        &s(b"client-1")[..],
        &s(b"will/topic"),
        &s(&[0, 1, 2, 0xFF]),
        &s(b"alice"),
        &s(&[0xDE, 0xAD]),
    ]
    .concat();
    let bytes = connect_v311(flags, &payload);
    let mut expected = expected;
    expected.protocol_version = ProtocolVersion::V3_1_1;
    expected.properties = Default::default();
    if let Some(will) = &mut expected.will {
        will.properties = Default::default();
    }
    assert_eq!(decode_connect(&bytes), expected);
    let mut buf = BytesMut::new();
    Encoder::new(ProtocolVersion::V3_1_1)
        .encode(&expected, &mut buf)
        .unwrap();
    assert_eq!(&buf[..], &bytes[..]);
}

#[test]
fn mqtt_3_1_3_3_client_identifier_must_be_present() {
    assert_malformed(server(&connect_v5(CLEAN, &[], &[])), TRUNCATED);
    assert_malformed(server(&connect_v311(CLEAN, &[])), TRUNCATED);
    assert_malformed(server(&connect_v311(CLEAN, &[0])), TRUNCATED);
    // A zero-length identifier is present (the server may assign one, [MQTT-3.1.3-6]).
    assert!(
        decode_connect(&connect_v5(CLEAN, &[], &s(b"")))
            .client_id
            .is_empty()
    );
}

#[test]
fn mqtt_3_1_3_4_client_identifier_must_be_utf8() {
    for (id, rule) in [
        (&[0xC0, 0x80][..], "MQTT-1.5.4-1"),   // overlong U+0000
        (&[0xED, 0xA0, 0x80], "MQTT-1.5.4-1"), // U+D800
        (&[b'a', 0xFF], "MQTT-1.5.4-1"),
        (&[b'a', 0x00, b'b'], "MQTT-1.5.4-2"),
    ] {
        assert_malformed(server(&connect_v5(CLEAN, &[], &s(id))), rule);
        assert_malformed(server(&connect_v311(CLEAN, &s(id))), rule);
    }
}

#[test]
fn mqtt_3_1_3_5_short_alphanumeric_client_identifiers_are_always_allowed() {
    let id = "0123456789abcdefghijKLM";
    let connect = decode_connect(&connect_v311(CLEAN, &s(id.as_bytes())));
    assert!(connect.client_id.is_always_allowed());
    for other in ["", "0123456789abcdefghijKLMN", "a-b", "é"] {
        assert!(
            !ClientId::new(other).unwrap().is_always_allowed(),
            "{other:?}"
        );
    }
    // Other identifiers are the server's choice: the codec decodes them all.
    let long = "x".repeat(1000);
    let connect = decode_connect(&connect_v5(CLEAN, &[], &s(long.as_bytes())));
    assert_eq!(connect.client_id.as_str(), long);
}

#[test]
fn mqtt_3_1_3_11_will_topic_must_be_a_valid_topic_name() {
    assert_malformed(
        server(&connect_with_will(&[], &[0xED, 0xBF, 0xBF])),
        "MQTT-1.5.4-1",
    );
    assert_malformed(server(&connect_with_will(&[], b"w\0")), "MQTT-1.5.4-2");
    assert_malformed(server(&connect_with_will(&[], b"")), "MQTT-4.7.3-1");
    let v311 = connect_v311(
        CLEAN | WILL,
        &[&s(b"c")[..], &s(&[0xFE]), &s(b"x")].concat(),
    );
    assert_malformed(server(&v311), "MQTT-1.5.4-1");
}

#[test]
fn mqtt_4_7_0_1_will_topic_must_not_contain_wildcards() {
    for topic in [&b"+"[..], b"#", b"a/+/b", b"a/#", b"sport+"] {
        assert_malformed(server(&connect_with_will(&[], topic)), "MQTT-4.7.0-1");
        let v311 = connect_v311(CLEAN | WILL, &[&s(b"c")[..], &s(topic), &s(b"x")].concat());
        assert_malformed(server(&v311), "MQTT-4.7.0-1");
    }
}

#[test]
fn mqtt_3_1_3_12_user_name_must_be_utf8() {
    for (name, rule) in [
        (&[0xE0, 0x80, 0xAF][..], "MQTT-1.5.4-1"),   // overlong '/'
        (&[0xF4, 0x90, 0x80, 0x80], "MQTT-1.5.4-1"), // above U+10FFFF
        (&[b'u', 0x00], "MQTT-1.5.4-2"),
    ] {
        let payload = [&s(b"c")[..], &s(name)].concat();
        assert_malformed(server(&connect_v5(CLEAN | USER_NAME, &[], &payload)), rule);
        assert_malformed(server(&connect_v311(CLEAN | USER_NAME, &payload)), rule);
    }
}

#[test]
fn password_is_binary_data() {
    // Binary Data (§1.5.6): any bytes, invalid UTF-8 and zeros included.
    let password = [0x00, 0xFF, 0xC0, 0x80, 0xED, 0xA0, 0x80];
    let payload = [&s(b"c")[..], &s(b"u"), &s(&password)].concat();
    let connect = decode_connect(&connect_v311(CLEAN | USER_NAME | PASSWORD, &payload));
    assert_eq!(connect.password.as_deref(), Some(&password[..]));
}

#[test]
fn mqtt_3_1_4_1_bytes_left_over_after_connect_are_malformed() {
    let v5 = connect_v5(CLEAN, &[], &[&s(b"c")[..], &[0]].concat());
    assert_malformed(server(&v5), TRUNCATED);
    let v311 = connect_v311(CLEAN, &[&s(b"c")[..], &[0, 0]].concat());
    assert_malformed(server(&v311), TRUNCATED);
}

// ---------------------------------------------------------------------------------------------
// §3.2: CONNACK, decoded by the client
// ---------------------------------------------------------------------------------------------

#[test]
fn mqtt_3_2_0_1_first_packet_from_the_server_must_be_connack() {
    let publish = packet(0x30, &[&s(b"a")[..], &[0]].concat());
    for first in [vec![0xD0, 0x00], publish.clone()] {
        assert_protocol_error(client(ProtocolVersion::V5, &first), "MQTT-3.2.0-1");
        assert_protocol_error(client(ProtocolVersion::V3_1_1, &first), "MQTT-3.2.0-1");
    }
    // In 5.0 AUTH may come before CONNACK (extended authentication).
    let auth = packet(0xF0, &[&[0x18][..], &props(&[0x15, 0, 1, b'm'])].concat());
    let packets = client(ProtocolVersion::V5, &[auth, connack_v5(0, 0, &[])].concat()).unwrap();
    assert_eq!(packets[0].packet_type(), PacketType::Auth);
    assert_eq!(packets[1].packet_type(), PacketType::ConnAck);
}

#[test]
fn mqtt_3_2_0_2_second_connack_is_a_protocol_error() {
    let twice = [connack_v5(0, 0, &[]), connack_v5(0, 0, &[])].concat();
    assert_protocol_error(client(ProtocolVersion::V5, &twice), "MQTT-3.2.0-2");
    let twice = [packet(0x20, &[0, 0]), packet(0x20, &[0, 0])].concat();
    assert_protocol_error(client(ProtocolVersion::V3_1_1, &twice), "MQTT-3.2.0-2");
}

#[test]
fn mqtt_3_2_2_1_reserved_connack_flags_are_malformed() {
    for flags in [0x02, 0x80, 0xFE, 0x03] {
        assert_malformed(
            client(ProtocolVersion::V5, &connack_v5(flags, 0, &[])),
            "MQTT-3.2.2-1",
        );
        assert_malformed(
            client(ProtocolVersion::V3_1_1, &packet(0x20, &[flags, 0])),
            "MQTT-3.2.2-1",
        );
    }
}

#[test]
fn session_present_decodes_on_success() {
    assert!(decode_connack(ProtocolVersion::V5, &connack_v5(1, 0, &[])).session_present);
    assert!(!decode_connack(ProtocolVersion::V5, &connack_v5(0, 0, &[])).session_present);
    assert!(decode_connack(ProtocolVersion::V3_1_1, &packet(0x20, &[1, 0])).session_present);
}

#[test]
fn mqtt_3_1_connack_has_no_session_present_flag() {
    // In MQTT 3.1 the first byte of CONNACK's variable header is unused: ignored on decode,
    // written as 0 whatever the session.
    for byte in [0x00, 0x01, 0xFF] {
        let connack = decode_connack(ProtocolVersion::V3_1, &packet(0x20, &[byte, 0]));
        assert!(!connack.session_present);
    }
    let mut buf = BytesMut::new();
    let resumed = ConnAck::new(true, ReasonCode::Success);
    Encoder::new(ProtocolVersion::V3_1)
        .encode(&resumed, &mut buf)
        .unwrap();
    assert_eq!(&buf[..], &[0x20, 2, 0, 0]);
    buf.clear();
    Encoder::new(ProtocolVersion::V3_1_1)
        .encode(&resumed, &mut buf)
        .unwrap();
    assert_eq!(&buf[..], &[0x20, 2, 1, 0]);
}

#[test]
fn mqtt_3_2_2_6_session_present_must_be_0_with_an_error_code() {
    for code in [0x80, 0x84, 0x87, 0x9F] {
        assert_protocol_error(
            client(ProtocolVersion::V5, &connack_v5(1, code, &[])),
            "MQTT-3.2.2-6",
        );
    }
    for code in 1..=5 {
        assert_protocol_error(
            client(ProtocolVersion::V3_1_1, &packet(0x20, &[1, code])),
            "MQTT-3.2.2-6",
        );
    }
    // The encoder never sets it on a refusal.
    let mut buf = BytesMut::new();
    Encoder::new(ProtocolVersion::V5)
        .encode(&ConnAck::new(true, ReasonCode::NotAuthorized), &mut buf)
        .unwrap();
    assert_eq!(&buf[..], &[0x20, 3, 0, 0x87, 0]);
}

#[test]
fn mqtt_3_2_2_8_connack_reason_code_must_be_a_connect_reason_code() {
    let allowed: [u8; 22] = [
        0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90, 0x95,
        0x97, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F,
    ];
    for code in 0..=255u8 {
        let result = client(ProtocolVersion::V5, &connack_v5(0, code, &[]));
        if allowed.contains(&code) {
            let packets = result.unwrap();
            let Packet::ConnAck(connack) = &packets[0] else {
                panic!("expected a CONNACK");
            };
            assert_eq!(connack.reason_code.as_u8(), code);
        } else {
            assert_protocol_error(result, "MQTT-3.2.2-8");
        }
    }
    // The encoder refuses a code that is not a CONNACK code.
    let mut buf = BytesMut::new();
    let err = Encoder::new(ProtocolVersion::V5)
        .encode(&ConnAck::new(false, ReasonCode::GrantedQoS1), &mut buf)
        .unwrap_err();
    assert!(matches!(err, EncodeError::Invalid(_)), "{err:?}");
}

#[test]
fn v311_3_2_2_3_return_codes_6_to_255_are_reserved() {
    for code in 0..=255u8 {
        let result = client(ProtocolVersion::V3_1_1, &packet(0x20, &[0, code]));
        match ConnectReturnCode::from_u8(code) {
            Some(expected) => {
                let packets = result.unwrap();
                let Packet::ConnAck(connack) = &packets[0] else {
                    panic!("expected a CONNACK");
                };
                assert_eq!(connack.reason_code, expected.to_reason());
                assert_eq!(expected as u8, code);
            }
            None => {
                assert!(code >= 6);
                assert_protocol_error(result, "MQTT-3.1.1 §3.2.2.3");
            }
        }
    }
}

#[test]
fn v5_3_2_2_3_4_maximum_qos_2_is_a_protocol_error() {
    for value in [2, 3, 0xFF] {
        assert_protocol_error(
            client(ProtocolVersion::V5, &connack_v5(0, 0, &[0x24, value])),
            "MQTT-5 §3.2.2.3.4",
        );
    }
    for (value, qos) in [(0, QoS::AtMostOnce), (1, QoS::AtLeastOnce)] {
        let connack = decode_connack(ProtocolVersion::V5, &connack_v5(0, 0, &[0x24, value]));
        assert_eq!(connack.properties.maximum_qos, Some(qos));
    }
}

#[test]
fn v5_3_2_2_3_3_connack_receive_maximum_0_is_a_protocol_error() {
    assert_protocol_error(
        client(ProtocolVersion::V5, &connack_v5(0, 0, &[0x21, 0, 0])),
        "MQTT-5 §3.2.2.3.3",
    );
}

#[test]
fn v5_3_2_2_3_6_connack_maximum_packet_size_0_is_a_protocol_error() {
    assert_protocol_error(
        client(ProtocolVersion::V5, &connack_v5(0, 0, &[0x27, 0, 0, 0, 0])),
        "MQTT-5 §3.2.2.3.6",
    );
}

#[test]
fn v5_3_2_2_3_connack_availability_flags_are_0_or_1() {
    for (id, rule) in [
        (0x25, "MQTT-5 §3.2.2.3.5"),
        (0x28, "MQTT-5 §3.2.2.3.11"),
        (0x29, "MQTT-5 §3.2.2.3.12"),
        (0x2A, "MQTT-5 §3.2.2.3.13"),
    ] {
        assert_protocol_error(
            client(ProtocolVersion::V5, &connack_v5(0, 0, &[id, 2])),
            rule,
        );
        for value in [0, 1] {
            client(ProtocolVersion::V5, &connack_v5(0, 0, &[id, value])).unwrap();
        }
    }
}

#[test]
fn connack_properties_decode_to_their_fields() {
    let properties = [
        &[0x11, 0, 0, 0, 10][..],
        &[0x21, 0, 7],
        &[0x24, 1],
        &[0x25, 0],
        &[0x27, 0, 1, 0, 0],
        &[0x12, 0, 2, b'i', b'd'],
        &[0x22, 0, 3],
        &[0x1F, 0, 2, b'o', b'k'],
        &[0x28, 0],
        &[0x29, 1],
        &[0x2A, 0],
        &[0x13, 0, 30],
        &[0x1A, 0, 1, b'r'],
        &[0x1C, 0, 1, b's'],
        &[0x15, 0, 1, b'm'],
        &[0x16, 0, 1, 9],
    ]
    .concat();
    let p = decode_connack(ProtocolVersion::V5, &connack_v5(0, 0, &properties)).properties;
    let mut expected = ConnAckProperties {
        session_expiry_interval: Some(10),
        maximum_qos: Some(QoS::AtLeastOnce),
        retain_available: Some(false),
        assigned_client_identifier: Some(text("id")),
        topic_alias_maximum: Some(3),
        reason_string: Some(text("ok")),
        wildcard_subscription_available: Some(false),
        subscription_identifiers_available: Some(true),
        shared_subscription_available: Some(false),
        server_keep_alive: Some(30),
        response_information: Some(text("r")),
        server_reference: Some(text("s")),
        authentication_method: Some(text("m")),
        authentication_data: Some(Bytes::from_static(&[9])),
        ..Default::default()
    };
    expected.receive_maximum = std::num::NonZeroU16::new(7);
    expected.maximum_packet_size = std::num::NonZeroU32::new(65_536);
    assert_eq!(p, expected);
}

#[test]
fn v5_3_2_2_3_18_connack_authentication_data_needs_no_method() {
    // Unlike CONNECT (§3.1.2.11.10), CONNACK has no rule tying its Authentication Data to an
    // Authentication Method; refusing it would refuse a conforming server.
    let connack = decode_connack(ProtocolVersion::V5, &connack_v5(0, 0, &[0x16, 0, 1, 7]));
    assert_eq!(
        connack.properties.authentication_data.as_deref(),
        Some(&[7][..])
    );
}

#[test]
fn v5_2_2_2_property_not_valid_for_connack_is_malformed() {
    for property in [
        &[0x17, 1][..],      // Request Problem Information
        &[0x19, 1],          // Request Response Information
        &[0x18, 0, 0, 0, 1], // Will Delay Interval
        &[0x23, 0, 1],       // Topic Alias
        &[0x01, 1],          // Payload Format Indicator
        &[0x0B, 1],          // Subscription Identifier
    ] {
        assert_malformed(
            client(ProtocolVersion::V5, &connack_v5(0, 0, property)),
            "MQTT-5 §2.2.2.2",
        );
    }
}

#[test]
fn connack_bytes_left_over_are_malformed() {
    let v5 = packet(0x20, &[0, 0, 0, 0]);
    assert_malformed(client(ProtocolVersion::V5, &v5), TRUNCATED);
    let v311 = packet(0x20, &[0, 0, 0]);
    assert_malformed(client(ProtocolVersion::V3_1_1, &v311), TRUNCATED);
}

// ---------------------------------------------------------------------------------------------
// Maximum Packet Size, honoured by the encoder
// ---------------------------------------------------------------------------------------------

fn big_publish() -> Publish {
    Publish::new(TopicName::new("a/b").unwrap(), Bytes::from(vec![7; 100]))
}

#[test]
fn mqtt_3_1_2_24_server_never_sends_more_than_the_clients_maximum_packet_size() {
    let connect = decode_connect(&connect_with_properties(&[0x27, 0, 0, 0, 64]));
    let max = connect.properties.maximum_packet_size.unwrap().get();
    let mut encoder = Encoder::new(ProtocolVersion::V5);
    encoder.set_max_packet_size(max);
    let mut buf = BytesMut::new();
    let err = encoder.encode(&big_publish(), &mut buf).unwrap_err();
    assert!(
        matches!(err, EncodeError::PacketTooLarge { max: 64, .. }),
        "{err:?}"
    );
    assert!(buf.is_empty(), "nothing is written");
    let small = Publish::new(TopicName::new("a/b").unwrap(), Bytes::from(vec![7; 50]));
    let size = encoder.encode(&small, &mut buf).unwrap();
    assert!(size <= 64 && size == buf.len());
}

#[test]
fn mqtt_3_2_2_15_client_never_sends_more_than_the_servers_maximum_packet_size() {
    let connack = decode_connack(ProtocolVersion::V5, &connack_v5(0, 0, &[0x27, 0, 0, 0, 40]));
    let mut encoder = Encoder::new(ProtocolVersion::V5);
    encoder.set_max_packet_size(connack.properties.maximum_packet_size.unwrap().get());
    let mut buf = BytesMut::new();
    let err = encoder.encode(&big_publish(), &mut buf).unwrap_err();
    assert!(
        matches!(err, EncodeError::PacketTooLarge { max: 40, .. }),
        "{err:?}"
    );
    assert!(buf.is_empty());
}

#[test]
fn mqtt_3_2_2_19_and_20_connack_diagnostics_are_dropped_to_fit_the_clients_maximum() {
    let mut connack = ConnAck::new(false, ReasonCode::NotAuthorized);
    connack.properties.reason_string = Some(text(&"r".repeat(100)));
    connack.properties.user_properties = vec![UserProperty::new(text("k"), text("v"))];
    let mut packet = Packet::ConnAck(Box::new(connack));
    let mut encoder = Encoder::new(ProtocolVersion::V5);
    encoder.set_max_packet_size(32);
    let mut buf = BytesMut::new();
    let size = encoder.encode_fitting(&mut packet, &mut buf).unwrap();
    assert!(size <= 32);
    let decoded = decode_connack(ProtocolVersion::V5, &buf);
    assert_eq!(decoded.reason_code, ReasonCode::NotAuthorized);
    assert_eq!(decoded.properties.reason_string, None);
    assert!(decoded.properties.user_properties.is_empty());
}
