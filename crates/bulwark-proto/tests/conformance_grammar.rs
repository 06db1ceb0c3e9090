//! Table tests of the MQTT grammars (MQTT 5.0 and 3.1.1): UTF-8 strings (§1.5.4), Variable
//! Byte Integers (§1.5.5), Binary Data (§1.5.6), the fixed header (§2.1), topic names and topic
//! filters (§4.7), shared subscription filters (§4.8.2) and topic matching (§4.7.1, §4.7.2).
//!
//! Each table lists inputs and the verdict the specification gives them: accepted, or refused
//! with a reason code and the statement the codec must cite. The verdicts are written from the
//! specification; every table runs through the public constructors and, where the grammar
//! appears on the wire, through the decoder with hand-written packets.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code"
)]

mod common;

use bulwark_proto::{
    ClientId, Connect, DecodeError, Decoder, DecoderLimits, EncodeError, Encoder, MqttString,
    Packet, ProtocolVersion, Publish, ReasonCode, TopicFilter, TopicName,
};
use bytes::{Bytes, BytesMut};
use common::{packet, string as s, varint};

/// What the specification says about one input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Accept,
    Reject(ReasonCode, &'static str),
}

use Verdict::Accept;

const fn malformed(rule: &'static str) -> Verdict {
    Verdict::Reject(ReasonCode::MalformedPacket, rule)
}

fn verdict<T>(result: &Result<T, DecodeError>) -> Verdict {
    match result {
        Ok(_) => Accept,
        Err(err) => Verdict::Reject(err.reason_code(), err.rule()),
    }
}

// ---------------------------------------------------------------------------------------------
// Byte builders and decoding helpers
// ---------------------------------------------------------------------------------------------

/// An MQTT 3.1.1 CONNECT with clean session, flags added, and the payload given.
fn connect_v311(flags: u8, payload: &[u8]) -> Vec<u8> {
    packet(
        0x10,
        &[&s(b"MQTT")[..], &[4, 0x02 | flags, 0, 60], payload].concat(),
    )
}

/// An MQTT 5.0 CONNECT with the CONNECT properties given and client identifier `c`.
fn connect_v5_with_properties(properties: &[u8]) -> Vec<u8> {
    let mut body = [&s(b"MQTT")[..], &[5, 0x02, 0, 60]].concat();
    body.extend(varint(properties.len()));
    body.extend_from_slice(properties);
    body.extend(s(b"c"));
    packet(0x10, &body)
}

/// Every packet a server decodes from `bytes`, or the first error.
fn server(bytes: &[u8]) -> Result<Vec<Packet>, DecodeError> {
    let mut decoder = Decoder::server(DecoderLimits::PROTOCOL);
    decoder.handle_bytes(bytes);
    let mut packets = Vec::new();
    while let Some(packet) = decoder.poll_packet()? {
        packets.push(packet);
    }
    Ok(packets)
}

/// The packet a server decodes after a 3.1.1 (or 5.0) CONNECT, or the error it stops at.
fn after_connect(v5: bool, bytes: &[u8]) -> Result<Option<Packet>, DecodeError> {
    let connect = if v5 {
        connect_v5_with_properties(&[])
    } else {
        connect_v311(0, &s(b"c"))
    };
    let packets = server(&[&connect[..], bytes].concat())?;
    Ok(packets.into_iter().nth(1))
}

// ---------------------------------------------------------------------------------------------
// §1.5.4 UTF-8 Encoded Strings
// ---------------------------------------------------------------------------------------------

/// UTF-8 strings: label, bytes, verdict ([MQTT-1.5.4-1], [MQTT-1.5.4-2], [MQTT-1.5.4-3]; in
/// 3.1.1 [MQTT-1.5.3-1] to [MQTT-1.5.3-3]).
const UTF8_STRINGS: &[(&str, &[u8], Verdict)] = &[
    ("empty", b"", Accept),
    ("ASCII", b"hello world", Accept),
    ("two-byte", "é".as_bytes(), Accept),
    ("three-byte", "€".as_bytes(), Accept),
    ("four-byte U+2A6D4", &[b'A', 0xF0, 0xAA, 0x9B, 0x94], Accept),
    ("U+10FFFF", &[0xF4, 0x8F, 0xBF, 0xBF], Accept),
    ("U+FEFF BOM, kept", &[0xEF, 0xBB, 0xBF, b'a'], Accept),
    // Control characters and non-characters SHOULD NOT be sent but MAY be accepted.
    ("U+0001 control", &[0x01], Accept),
    ("U+007F control", &[0x7F], Accept),
    ("U+FFFF non-character", &[0xEF, 0xBF, 0xBF], Accept),
    (
        "U+D800 surrogate",
        &[0xED, 0xA0, 0x80],
        malformed("MQTT-1.5.4-1"),
    ),
    (
        "U+DFFF surrogate",
        &[0xED, 0xBF, 0xBF],
        malformed("MQTT-1.5.4-1"),
    ),
    (
        "surrogate pair as CESU-8",
        &[0xED, 0xA0, 0xBD, 0xED, 0xB8, 0x80],
        malformed("MQTT-1.5.4-1"),
    ),
    ("overlong U+0000", &[0xC0, 0x80], malformed("MQTT-1.5.4-1")),
    (
        "overlong '/'",
        &[0xE0, 0x80, 0xAF],
        malformed("MQTT-1.5.4-1"),
    ),
    (
        "overlong four-byte",
        &[0xF0, 0x80, 0x80, 0xAF],
        malformed("MQTT-1.5.4-1"),
    ),
    (
        "above U+10FFFF",
        &[0xF4, 0x90, 0x80, 0x80],
        malformed("MQTT-1.5.4-1"),
    ),
    ("lone continuation byte", &[0x80], malformed("MQTT-1.5.4-1")),
    (
        "truncated sequence",
        &[0xE2, 0x82],
        malformed("MQTT-1.5.4-1"),
    ),
    ("0xFF", &[b'a', 0xFF], malformed("MQTT-1.5.4-1")),
    ("0xFE", &[0xFE], malformed("MQTT-1.5.4-1")),
    ("U+0000", &[0x00], malformed("MQTT-1.5.4-2")),
    ("U+0000 inside", b"a\0b", malformed("MQTT-1.5.4-2")),
];

#[test]
fn mqtt_1_5_4_utf8_string_table() {
    for &(label, bytes, expected) in UTF8_STRINGS {
        let result = MqttString::from_bytes(Bytes::copy_from_slice(bytes));
        assert_eq!(verdict(&result), expected, "{label}");
        if let Ok(text) = result {
            // [MQTT-1.5.4-3]: nothing is stripped, the BOM included.
            assert_eq!(text.as_bytes(), bytes, "{label}");
        }
    }
}

#[test]
fn mqtt_1_5_4_utf8_string_table_on_the_wire() {
    for &(label, bytes, expected) in UTF8_STRINGS {
        // As a 3.1.1 client identifier ([MQTT-3.1.3-4]) ...
        let result = server(&connect_v311(0, &s(bytes)));
        assert_eq!(verdict(&result), expected, "client identifier {label}");
        if let Ok(packets) = &result {
            let Packet::Connect(connect) = &packets[0] else {
                panic!("expected CONNECT");
            };
            assert_eq!(connect.client_id.as_mqtt_str().as_bytes(), bytes, "{label}");
        }
        // ... as a 3.1.1 user name ([MQTT-3.1.3-12]) ...
        let result = server(&connect_v311(0x80, &[&s(b"c")[..], &s(bytes)].concat()));
        assert_eq!(verdict(&result), expected, "user name {label}");
        // ... and as either string of a User Property pair ([MQTT-1.5.7-1]).
        for pair in [
            [&s(bytes)[..], &s(b"v")].concat(),
            [&s(b"k")[..], &s(bytes)].concat(),
        ] {
            let property = [&[0x26][..], &pair].concat();
            let result = server(&connect_v5_with_properties(&property));
            assert_eq!(verdict(&result), expected, "user property {label}");
        }
    }
}

#[test]
fn mqtt_1_5_4_string_longer_than_65535_bytes_cannot_be_built() {
    assert_eq!(
        verdict(&MqttString::new(&"a".repeat(65_536))),
        malformed("MQTT-5 §1.5.4")
    );
    assert_eq!(MqttString::new(&"a".repeat(65_535)).unwrap().len(), 65_535);
}

// ---------------------------------------------------------------------------------------------
// §1.5.5 Variable Byte Integers
// ---------------------------------------------------------------------------------------------

/// What a Remaining Length encoding should decode to.
#[derive(Debug, Clone, Copy)]
enum Length {
    Value(usize),
    NeedsMore,
    Refused(&'static str),
}

/// Variable Byte Integers as a Remaining Length: the boundaries of Table 1-1, non-minimal
/// encodings ([MQTT-1.5.5-1]) and encodings longer than four bytes (§1.5.5).
const VARIABLE_BYTE_INTEGERS: &[(&[u8], Length)] = &[
    (&[0x00], Length::Value(0)),
    (&[0x7F], Length::Value(127)),
    (&[0x80, 0x01], Length::Value(128)),
    (&[0xFF, 0x7F], Length::Value(16_383)),
    (&[0x80, 0x80, 0x01], Length::Value(16_384)),
    (&[0xFF, 0xFF, 0x7F], Length::Value(2_097_151)),
    (&[0x80, 0x80, 0x80, 0x01], Length::Value(2_097_152)),
    (&[0x80], Length::NeedsMore),
    (&[0xFF, 0xFF], Length::NeedsMore),
    (&[0x80, 0x80, 0x80], Length::NeedsMore),
    (&[0x80, 0x00], Length::Refused("MQTT-1.5.5-1")),
    (&[0xFF, 0x00], Length::Refused("MQTT-1.5.5-1")),
    (&[0x80, 0x80, 0x00], Length::Refused("MQTT-1.5.5-1")),
    (&[0xFF, 0xFF, 0x80, 0x00], Length::Refused("MQTT-1.5.5-1")),
    (&[0x81, 0x80, 0x80, 0x00], Length::Refused("MQTT-1.5.5-1")),
    (&[0x80, 0x80, 0x80, 0x80], Length::Refused("MQTT-5 §1.5.5")),
    (
        &[0xFF, 0xFF, 0xFF, 0xFF, 0x7F],
        Length::Refused("MQTT-5 §1.5.5"),
    ),
    (
        &[0x80, 0x80, 0x80, 0x80, 0x01],
        Length::Refused("MQTT-5 §1.5.5"),
    ),
];

#[test]
fn mqtt_1_5_5_variable_byte_integer_table() {
    for &(encoded, expected) in VARIABLE_BYTE_INTEGERS {
        for v5 in [false, true] {
            // A PINGREQ (for 0) or a QoS 0 PUBLISH with topic `t` and the rest as payload.
            let first = if matches!(expected, Length::Value(0)) {
                0xC0
            } else {
                0x30
            };
            let mut bytes = [&[first][..], encoded].concat();
            if let Length::Value(len) = expected
                && len > 0
            {
                bytes.extend(s(b"t"));
                let props = usize::from(v5);
                bytes.resize(bytes.len() + props, 0);
                bytes.resize(bytes.len() + len - 3 - props, 0xA5);
            }
            let result = after_connect(v5, &bytes);
            match expected {
                Length::Value(0) => assert_eq!(result.unwrap(), Some(Packet::PingReq)),
                Length::Value(len) => {
                    let Some(Packet::Publish(publish)) = result.unwrap() else {
                        panic!("{encoded:02X?}: expected a PUBLISH");
                    };
                    let payload = len - 3 - usize::from(v5);
                    assert_eq!(publish.payload.len(), payload, "{encoded:02X?}");
                    // The encoder writes the same Remaining Length.
                    let version = if v5 {
                        ProtocolVersion::V5
                    } else {
                        ProtocolVersion::V3_1_1
                    };
                    let mut buf = BytesMut::new();
                    Encoder::new(version).encode(&publish, &mut buf).unwrap();
                    assert_eq!(&buf[1..=encoded.len()], encoded);
                }
                Length::NeedsMore => assert_eq!(result.unwrap(), None, "{encoded:02X?}"),
                Length::Refused(rule) => {
                    let err = result.unwrap_err();
                    assert_eq!(err.rule(), rule, "{encoded:02X?}");
                    assert_eq!(err.reason_code(), ReasonCode::MalformedPacket);
                }
            }
        }
    }
}

#[test]
fn mqtt_1_5_5_1_every_variable_byte_integer_is_minimal() {
    // A Property Length of 0 written in two bytes.
    let mut bytes = [&s(b"MQTT")[..], &[5, 0x02, 0, 60, 0x80, 0x00]].concat();
    bytes.extend(s(b"c"));
    let err = server(&packet(0x10, &bytes)).unwrap_err();
    assert_eq!(
        (err.reason_code(), err.rule()),
        (ReasonCode::MalformedPacket, "MQTT-1.5.5-1")
    );
    // A property identifier (Session Expiry Interval, 0x11) written in two bytes.
    let err = server(&connect_v5_with_properties(&[0x91, 0x00, 0, 0, 0, 1])).unwrap_err();
    assert_eq!(
        (err.reason_code(), err.rule()),
        (ReasonCode::MalformedPacket, "MQTT-1.5.5-1")
    );
}

// ---------------------------------------------------------------------------------------------
// §1.5.6 Binary Data
// ---------------------------------------------------------------------------------------------

/// The bytes a Binary Data field decodes to, or the rule it breaks.
type Binary = Result<&'static [u8], &'static str>;

/// Binary Data as a 3.1.1 password: encoded field, and what it decodes to.
const BINARY_DATA: &[(&[u8], Binary)] = &[
    (&[0, 0], Ok(b"")),
    (&[0, 3, 1, 2, 3], Ok(&[1, 2, 3])),
    (
        &[0, 4, 0x00, 0xFF, 0xC0, 0x80],
        Ok(&[0x00, 0xFF, 0xC0, 0x80]),
    ),
    (&[0, 5, 1, 2], Err("MQTT-5 §2.1.4")),
    (&[0], Err("MQTT-5 §2.1.4")),
    (&[0xFF, 0xFF], Err("MQTT-5 §2.1.4")),
];

#[test]
fn mqtt_1_5_6_binary_data_table() {
    for &(field, expected) in BINARY_DATA {
        let payload = [&s(b"c")[..], &s(b"u"), field].concat();
        let result = server(&connect_v311(0xC0, &payload));
        match expected {
            Ok(data) => {
                let packets = result.unwrap();
                let Packet::Connect(connect) = &packets[0] else {
                    panic!("expected CONNECT");
                };
                assert_eq!(connect.password.as_deref(), Some(data), "{field:02X?}");
            }
            Err(rule) => {
                let err = result.unwrap_err();
                assert_eq!(err.rule(), rule, "{field:02X?}");
                assert_eq!(err.reason_code(), ReasonCode::MalformedPacket);
            }
        }
    }
    // Binary Data holds at most 65,535 bytes: the encoder refuses more.
    let mut connect = Connect::new(ProtocolVersion::V5, ClientId::new("c").unwrap());
    connect.password = Some(Bytes::from(vec![0; 65_536]));
    let mut buf = BytesMut::new();
    let err = Encoder::new(ProtocolVersion::V5)
        .encode(&connect, &mut buf)
        .unwrap_err();
    assert!(matches!(err, EncodeError::Invalid(_)), "{err:?}");
}

// ---------------------------------------------------------------------------------------------
// §2.1 Fixed header
// ---------------------------------------------------------------------------------------------

/// Table 2-2: the flags every packet type but PUBLISH must carry, from the specification, and
/// the statement that fixes them: the packet's own where it has one, else [MQTT-2.1.3-1] (in
/// 3.1.1 [MQTT-2.2.2-1] and [MQTT-2.2.2-2]).
const REQUIRED_FLAGS: &[(u8, &str, u8, &str)] = &[
    (1, "CONNECT", 0b0000, "MQTT-2.1.3-1"),
    (2, "CONNACK", 0b0000, "MQTT-2.1.3-1"),
    (4, "PUBACK", 0b0000, "MQTT-2.1.3-1"),
    (5, "PUBREC", 0b0000, "MQTT-2.1.3-1"),
    (6, "PUBREL", 0b0010, "MQTT-3.6.1-1"),
    (7, "PUBCOMP", 0b0000, "MQTT-2.1.3-1"),
    (8, "SUBSCRIBE", 0b0010, "MQTT-3.8.1-1"),
    (9, "SUBACK", 0b0000, "MQTT-2.1.3-1"),
    (10, "UNSUBSCRIBE", 0b0010, "MQTT-3.10.1-1"),
    (11, "UNSUBACK", 0b0000, "MQTT-2.1.3-1"),
    (12, "PINGREQ", 0b0000, "MQTT-2.1.3-1"),
    (13, "PINGRESP", 0b0000, "MQTT-2.1.3-1"),
    (14, "DISCONNECT", 0b0000, "MQTT-3.14.1-1"),
    (15, "AUTH", 0b0000, "MQTT-3.15.1-1"),
];

#[test]
fn v5_2_1_2_packet_type_0_is_reserved() {
    for flags in 0..16u8 {
        for v5 in [false, true] {
            let err = after_connect(v5, &[flags, 0]).unwrap_err();
            assert_eq!(err.rule(), "MQTT-5 §2.1.2", "0x{flags:02X}");
            assert_eq!(err.reason_code(), ReasonCode::MalformedPacket);
        }
        // Even as the very first packet, for the server and for the client.
        let err = server(&[flags, 0]).unwrap_err();
        assert_eq!(err.rule(), "MQTT-5 §2.1.2");
        let mut client = Decoder::client(ProtocolVersion::V5, DecoderLimits::PROTOCOL);
        client.handle_bytes(&[flags, 0]);
        assert_eq!(client.poll_packet().unwrap_err().rule(), "MQTT-5 §2.1.2");
    }
}

#[test]
fn mqtt_2_1_3_1_reserved_fixed_header_flags_table() {
    for &(kind, name, required, rule) in REQUIRED_FLAGS {
        for flags in 0..16u8 {
            let first = (kind << 4) | flags;
            for v5 in [false, true] {
                let result = after_connect(v5, &[first, 0]);
                let got = result
                    .as_ref()
                    .err()
                    .map(|err| (err.reason_code(), err.rule()));
                if kind == 15 && !v5 {
                    // Before 5.0 the type itself is reserved, whatever its flags.
                    assert_eq!(
                        got,
                        Some((ReasonCode::MalformedPacket, "MQTT-3.1.1 §2.2.1")),
                        "type 15 flags {flags:04b}"
                    );
                } else if flags == required {
                    assert_ne!(
                        got.map(|(_, rule)| rule),
                        Some(rule),
                        "{name} with its flags"
                    );
                } else {
                    assert_eq!(
                        got,
                        Some((ReasonCode::MalformedPacket, rule)),
                        "{name} flags {flags:04b} v5={v5}"
                    );
                }
            }
        }
    }
}

#[test]
fn v311_2_2_1_packet_type_15_is_reserved() {
    let err = after_connect(false, &[0xF0, 0]).unwrap_err();
    assert_eq!(
        (err.reason_code(), err.rule()),
        (ReasonCode::MalformedPacket, "MQTT-3.1.1 §2.2.1")
    );
    let mut client = Decoder::client(ProtocolVersion::V3_1_1, DecoderLimits::PROTOCOL);
    client.handle_bytes(&[0x20, 2, 0, 0, 0xF0, 0]);
    assert!(matches!(client.poll_packet(), Ok(Some(Packet::ConnAck(_)))));
    assert_eq!(
        client.poll_packet().unwrap_err().rule(),
        "MQTT-3.1.1 §2.2.1"
    );
    // In 5.0 it is AUTH.
    let auth = packet(0xF0, &[0x18, 4, 0x15, 0, 1, b'm']);
    assert!(matches!(
        after_connect(true, &auth),
        Ok(Some(Packet::Auth(_)))
    ));
}

// ---------------------------------------------------------------------------------------------
// §4.7 Topic Names
// ---------------------------------------------------------------------------------------------

/// Topic names ([MQTT-3.3.2-2], [MQTT-4.7.3-1], [MQTT-4.7.3-2]).
const TOPIC_NAMES: &[(&str, Verdict)] = &[
    ("sport/tennis/player1", Accept),
    ("sport", Accept),
    ("/", Accept),
    ("//", Accept),
    ("/finance", Accept),
    ("finance/", Accept),
    ("Accounts payable", Accept),
    ("ACCOUNTS", Accept),
    ("$SYS/broker/load", Accept),
    ("$share/g/t", Accept),
    ("é/ü/🙂", Accept),
    ("a b/c\td", Accept),
    ("", malformed("MQTT-4.7.3-1")),
    ("+", malformed("MQTT-3.3.2-2")),
    ("#", malformed("MQTT-3.3.2-2")),
    ("sport/+/player1", malformed("MQTT-3.3.2-2")),
    ("sport/tennis/#", malformed("MQTT-3.3.2-2")),
    ("sport+", malformed("MQTT-3.3.2-2")),
    ("a#b", malformed("MQTT-3.3.2-2")),
    ("$SYS/#", malformed("MQTT-3.3.2-2")),
    ("a\0b", malformed("MQTT-1.5.4-2")),
    ("\0", malformed("MQTT-1.5.4-2")),
];

#[test]
fn mqtt_4_7_topic_name_table() {
    for &(name, expected) in TOPIC_NAMES {
        let result = TopicName::new(name);
        assert_eq!(verdict(&result), expected, "{name:?}");
        if let Ok(topic) = result {
            assert_eq!(topic.as_str(), name);
            assert_eq!(topic.is_system(), name.starts_with('$'), "{name:?}");
        }
    }
}

#[test]
fn mqtt_4_7_topic_name_table_on_the_wire() {
    for &(name, expected) in TOPIC_NAMES {
        // As the topic of a 3.1.1 PUBLISH ([MQTT-3.3.2-1], [MQTT-3.3.2-2]).
        let publish = packet(0x30, &[&s(name.as_bytes())[..], b"x"].concat());
        let result = after_connect(false, &publish);
        assert_eq!(verdict(&result), expected, "PUBLISH {name:?}");
        if let Ok(Some(Packet::Publish(publish))) = result {
            assert_eq!(publish.topic.as_str(), name);
        }
        // As a Will Topic, where the wildcard rule is the general [MQTT-4.7.0-1].
        let will = match expected {
            Verdict::Reject(code, "MQTT-3.3.2-2") => Verdict::Reject(code, "MQTT-4.7.0-1"),
            other => other,
        };
        let payload = [&s(b"c")[..], &s(name.as_bytes()), &s(b"bye")].concat();
        let result = server(&connect_v311(0x04, &payload));
        assert_eq!(verdict(&result), will, "Will Topic {name:?}");
    }
}

#[test]
fn mqtt_4_7_3_3_topics_encode_to_at_most_65535_bytes() {
    let longest = "a".repeat(65_535);
    let too_long = "a".repeat(65_536);
    assert_eq!(TopicName::new(&longest).unwrap().as_str().len(), 65_535);
    assert_eq!(TopicFilter::new(&longest).unwrap().as_str().len(), 65_535);
    assert_eq!(
        verdict(&TopicName::new(&too_long)),
        malformed("MQTT-4.7.3-3")
    );
    assert_eq!(
        verdict(&TopicFilter::new(&too_long)),
        malformed("MQTT-4.7.3-3")
    );
    assert_eq!(
        verdict(&TopicName::from_bytes(Bytes::from(too_long.into_bytes()))),
        malformed("MQTT-4.7.3-3")
    );
}

// ---------------------------------------------------------------------------------------------
// §4.7 Topic Filters
// ---------------------------------------------------------------------------------------------

/// Topic filters ([MQTT-4.7.1-1], [MQTT-4.7.1-2], [MQTT-4.7.3-1], [MQTT-4.7.3-2]), with the
/// examples of §4.7.1.2 and §4.7.1.3.
const TOPIC_FILTERS: &[(&str, Verdict)] = &[
    ("#", Accept),
    ("+", Accept),
    ("sport/tennis/player1/#", Accept),
    ("sport/#", Accept),
    ("sport/tennis/#", Accept),
    ("+/tennis/#", Accept),
    ("sport/+/player1", Accept),
    ("sport/tennis/+", Accept),
    ("+/+", Accept),
    ("/+", Accept),
    ("+/", Accept),
    ("/#", Accept),
    ("/", Accept),
    ("//", Accept),
    ("a//b", Accept),
    ("Accounts payable", Accept),
    ("$SYS/#", Accept),
    ("$SYS/monitor/+", Accept),
    ("+/+/#", Accept),
    ("é/+/🙂", Accept),
    ("sport/tennis#", malformed("MQTT-4.7.1-1")),
    ("sport/tennis/#/ranking", malformed("MQTT-4.7.1-1")),
    ("#/", malformed("MQTT-4.7.1-1")),
    ("#/#", malformed("MQTT-4.7.1-1")),
    ("##", malformed("MQTT-4.7.1-1")),
    ("a/#b", malformed("MQTT-4.7.1-1")),
    ("#a", malformed("MQTT-4.7.1-1")),
    ("+#", malformed("MQTT-4.7.1-1")),
    ("sport+", malformed("MQTT-4.7.1-2")),
    ("+a", malformed("MQTT-4.7.1-2")),
    ("a/+b/c", malformed("MQTT-4.7.1-2")),
    ("a/b+", malformed("MQTT-4.7.1-2")),
    ("++", malformed("MQTT-4.7.1-2")),
    ("a/++/b", malformed("MQTT-4.7.1-2")),
    ("", malformed("MQTT-4.7.3-1")),
    ("a/\0", malformed("MQTT-1.5.4-2")),
];

#[test]
fn mqtt_4_7_topic_filter_table() {
    for &(filter, expected) in TOPIC_FILTERS {
        let result = TopicFilter::new(filter);
        assert_eq!(verdict(&result), expected, "{filter:?}");
        if let Ok(parsed) = result {
            assert_eq!(parsed.as_str(), filter);
            assert!(!parsed.is_shared());
            assert_eq!(parsed.match_filter(), filter);
            assert_eq!(
                parsed.has_wildcards(),
                filter.contains(['+', '#']),
                "{filter:?}"
            );
        }
    }
}

#[test]
fn mqtt_4_7_topic_filter_table_on_the_wire() {
    for &(filter, expected) in TOPIC_FILTERS {
        // In a 5.0 SUBSCRIBE ([MQTT-3.8.3-1]) ...
        let subscribe = packet(
            0x82,
            &[&[0, 1, 0][..], &s(filter.as_bytes()), &[0x01]].concat(),
        );
        let result = after_connect(true, &subscribe);
        assert_eq!(verdict(&result), expected, "SUBSCRIBE {filter:?}");
        if let Ok(Some(Packet::Subscribe(subscribe))) = result {
            assert_eq!(subscribe.subscriptions[0].filter.as_str(), filter);
        }
        // ... and in a 3.1.1 UNSUBSCRIBE ([MQTT-3.10.3-1]).
        let unsubscribe = packet(0xA2, &[&[0, 1][..], &s(filter.as_bytes())].concat());
        let result = after_connect(false, &unsubscribe);
        assert_eq!(verdict(&result), expected, "UNSUBSCRIBE {filter:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// §4.8.2 Shared Subscriptions
// ---------------------------------------------------------------------------------------------

/// What a filter starting with `$share` is.
#[derive(Debug, Clone, Copy)]
enum Shared {
    /// A shared subscription: share name and the filter matched against topic names.
    Share(&'static str, &'static str),
    /// An ordinary filter that only looks like one.
    Plain,
    Refused(&'static str),
}

/// Shared subscription filters `$share/{ShareName}/{filter}` ([MQTT-4.8.2-1], [MQTT-4.8.2-2]),
/// with the examples of §4.8.2.
const SHARED_FILTERS: &[(&str, Shared)] = &[
    ("$share/g/a/b", Shared::Share("g", "a/b")),
    (
        "$share/consumer1/sport/tennis/+",
        Shared::Share("consumer1", "sport/tennis/+"),
    ),
    (
        "$share/consumer1//finance",
        Shared::Share("consumer1", "/finance"),
    ),
    ("$share/g/#", Shared::Share("g", "#")),
    ("$share/g/+", Shared::Share("g", "+")),
    ("$share/g//", Shared::Share("g", "/")),
    ("$share/group-1.a_b/x", Shared::Share("group-1.a_b", "x")),
    ("$share/é/x", Shared::Share("é", "x")),
    ("$share/$share/x", Shared::Share("$share", "x")),
    ("$share", Shared::Plain),
    ("$SHARE/g/a", Shared::Plain),
    ("$shared/g/a", Shared::Plain),
    ("share/g/a", Shared::Plain),
    ("$share/", Shared::Refused("MQTT-4.8.2-1")),
    ("$share//a", Shared::Refused("MQTT-4.8.2-1")),
    ("$share//", Shared::Refused("MQTT-4.8.2-1")),
    ("$share/g", Shared::Refused("MQTT-4.8.2-2")),
    ("$share/g/", Shared::Refused("MQTT-4.8.2-2")),
    ("$share/g+/a", Shared::Refused("MQTT-4.8.2-2")),
    ("$share/+/a", Shared::Refused("MQTT-4.8.2-2")),
    ("$share/#/a", Shared::Refused("MQTT-4.8.2-2")),
    ("$share/g#/a", Shared::Refused("MQTT-4.8.2-2")),
    ("$share/#", Shared::Refused("MQTT-4.8.2-2")),
    ("$share/+", Shared::Refused("MQTT-4.8.2-2")),
    ("$share/g/a#", Shared::Refused("MQTT-4.7.1-1")),
    ("$share/g/#/a", Shared::Refused("MQTT-4.7.1-1")),
    ("$share/g/a+", Shared::Refused("MQTT-4.7.1-2")),
];

#[test]
fn mqtt_4_8_2_shared_subscription_filter_table() {
    for &(filter, expected) in SHARED_FILTERS {
        let result = TopicFilter::new(filter);
        match expected {
            Shared::Share(name, matched) => {
                let parsed = result.unwrap();
                assert!(parsed.is_shared(), "{filter:?}");
                assert_eq!(parsed.share_name(), Some(name), "{filter:?}");
                assert_eq!(parsed.match_filter(), matched, "{filter:?}");
                assert_eq!(parsed.as_str(), filter);
            }
            Shared::Plain => {
                let parsed = result.unwrap();
                assert!(!parsed.is_shared(), "{filter:?}");
                assert_eq!(parsed.share_name(), None);
                assert_eq!(parsed.match_filter(), filter);
            }
            Shared::Refused(rule) => {
                assert_eq!(verdict(&result), malformed(rule), "{filter:?}");
            }
        }
    }
}

#[test]
fn mqtt_4_8_2_shared_subscription_filter_table_on_the_wire() {
    for &(filter, expected) in SHARED_FILTERS {
        let subscribe = packet(
            0x82,
            &[&[0, 1, 0][..], &s(filter.as_bytes()), &[0x01]].concat(),
        );
        let result = after_connect(true, &subscribe);
        match expected {
            Shared::Share(name, _) => {
                let Ok(Some(Packet::Subscribe(subscribe))) = result else {
                    panic!("{filter:?}: {result:?}");
                };
                assert_eq!(subscribe.subscriptions[0].filter.share_name(), Some(name));
            }
            Shared::Plain => assert!(result.is_ok(), "{filter:?}: {result:?}"),
            Shared::Refused(rule) => {
                assert_eq!(verdict(&result), malformed(rule), "{filter:?}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// §4.7.1, §4.7.2, §4.7.3: matching
// ---------------------------------------------------------------------------------------------

/// Filter, topic name, whether they match: the examples of §4.7.1 to §4.7.3 and §4.8.2.
const MATCHES: &[(&str, &str, bool)] = &[
    ("sport/tennis/player1/#", "sport/tennis/player1", true),
    (
        "sport/tennis/player1/#",
        "sport/tennis/player1/ranking",
        true,
    ),
    (
        "sport/tennis/player1/#",
        "sport/tennis/player1/score/wimbledon",
        true,
    ),
    ("sport/tennis/player1/#", "sport/tennis/player2", false),
    ("sport/#", "sport", true),
    ("sport/#", "sports", false),
    ("#", "sport/tennis", true),
    ("#", "/", true),
    ("sport/tennis/+", "sport/tennis/player1", true),
    ("sport/tennis/+", "sport/tennis/player2", true),
    ("sport/tennis/+", "sport/tennis/player1/ranking", false),
    ("sport/+", "sport", false),
    ("sport/+", "sport/", true),
    ("+/+", "/finance", true),
    ("/+", "/finance", true),
    ("+", "/finance", false),
    ("+", "finance", true),
    ("+/tennis/#", "sport/tennis/player1", true),
    ("sport/+/player1", "sport/tennis/player1", true),
    ("sport/+/player1", "sport/tennis/player2", false),
    ("a/b", "a/b", true),
    ("a/b", "a/b/", false),
    ("/finance", "finance", false),
    // [MQTT-4.7.2-1]: wildcards at the start do not match names starting with `$`.
    ("#", "$SYS/broker/load", false),
    ("+/monitor/Clients", "$SYS/monitor/Clients", false),
    ("+", "$SYS", false),
    ("$SYS/#", "$SYS/broker/load", true),
    ("$SYS/monitor/+", "$SYS/monitor/Clients", true),
    ("$SYS", "$SYS", true),
    ("#", "a/$SYS", true),
    ("a/+", "a/$b", true),
    ("$share/g/#", "$SYS/x", false),
    ("$share/g/#", "x/y", true),
    ("$share/consumer1//finance", "/finance", true),
    ("$share/g/$SYS/#", "$SYS/x", true),
    // [MQTT-4.7.3-4]: no case folding, no normalization.
    ("ACCOUNTS", "Accounts", false),
    ("Accounts payable", "Accounts payable", true),
    ("caf\u{e9}", "cafe\u{301}", false),
    ("caf\u{e9}/+", "caf\u{e9}/x", true),
];

#[test]
fn mqtt_4_7_topic_matching_table() {
    for &(filter, name, expected) in MATCHES {
        let parsed = TopicFilter::new(filter).unwrap();
        let topic = TopicName::new(name).unwrap();
        assert_eq!(
            parsed.matches(&topic),
            expected,
            "{filter:?} against {name:?}"
        );
    }
}

#[test]
fn mqtt_4_7_2_1_leading_wildcards_never_match_dollar_topics() {
    for filter in [
        "#",
        "+",
        "+/#",
        "+/+",
        "+/monitor/#",
        "$share/g/#",
        "$share/g/+/#",
    ] {
        let filter = TopicFilter::new(filter).unwrap();
        for name in ["$SYS", "$SYS/x", "$", "$/x", "$share/g/x"] {
            let name = TopicName::new(name).unwrap();
            assert!(!filter.matches(&name), "{filter:?} matched {name:?}");
        }
    }
}

#[test]
fn published_names_match_with_the_decoded_filter() {
    // The same filter, decoded from a SUBSCRIBE, matches a topic decoded from a PUBLISH.
    let subscribe = packet(
        0x82,
        &[&[0, 1, 0][..], &s(b"$share/g/a/+/c"), &[0]].concat(),
    );
    let Ok(Some(Packet::Subscribe(subscribe))) = after_connect(true, &subscribe) else {
        panic!("SUBSCRIBE refused");
    };
    let publish = Publish::new(TopicName::new("a/b/c").unwrap(), Bytes::new());
    assert!(subscribe.subscriptions[0].filter.matches(&publish.topic));
}
