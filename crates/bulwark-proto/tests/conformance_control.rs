//! Conformance of PINGREQ and PINGRESP (§3.12, §3.13), DISCONNECT (§3.14) and AUTH (§3.15)
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
    Auth, AuthProperties, DecodeError, Decoder, DecoderLimits, Disconnect, EncodeError, Encoder,
    MqttString, Packet, ProtocolVersion, ReasonCode,
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
fn disconnect_of(result: Result<Packet, DecodeError>) -> Disconnect {
    match result {
        Ok(Packet::Disconnect(p)) => p,
        other => panic!("expected a DISCONNECT, got {other:?}"),
    }
}

#[track_caller]
fn auth_of(result: Result<Packet, DecodeError>) -> Auth {
    match result {
        Ok(Packet::Auth(p)) => p,
        other => panic!("expected an AUTH, got {other:?}"),
    }
}

/// An AUTH with a reason code and properties (the Authentication Method first).
fn auth(code: u8, props: &[u8]) -> Vec<u8> {
    let mut body = vec![code];
    body.extend(varint(props.len()));
    body.extend_from_slice(props);
    packet(0xF0, &body)
}

fn method(name: &[u8]) -> Vec<u8> {
    let mut out = vec![0x15];
    out.extend(string(name));
    out
}

/// Disconnect reason codes by sender (MQTT 5.0 Table 3-10).
const DISCONNECT_BOTH: [u8; 13] = [
    0x00, 0x80, 0x81, 0x82, 0x83, 0x90, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99,
];
const DISCONNECT_CLIENT_ONLY: [u8; 1] = [0x04];
const DISCONNECT_SERVER_ONLY: [u8; 15] = [
    0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2,
];

// ---------------------------------------------------------------------------------------------
// PINGREQ and PINGRESP (§3.12, §3.13)

#[test]
fn mqtt_5_3_12_1_pingreq_remaining_length_is_0() {
    for version in VERSIONS {
        assert_eq!(from_client(version, &[0xC0, 0]).unwrap(), Packet::PingReq);
        for bytes in [&[0xC0, 1, 0][..], &[0xC0, 2, 0, 0]] {
            assert_error(
                from_client(version, bytes),
                ReasonCode::MalformedPacket,
                "MQTT-5 §3.12.1",
            );
        }
        assert_error(
            from_client(version, &[0xC1, 0]),
            ReasonCode::MalformedPacket,
            "MQTT-2.1.3-1",
        );
    }
}

#[test]
fn mqtt_5_3_13_1_pingresp_remaining_length_is_0() {
    for version in VERSIONS {
        assert_eq!(from_server(version, &[0xD0, 0]).unwrap(), Packet::PingResp);
        assert_error(
            from_server(version, &[0xD0, 1, 0]),
            ReasonCode::MalformedPacket,
            "MQTT-5 §3.13.1",
        );
        assert_error(
            from_server(version, &[0xD8, 0]),
            ReasonCode::MalformedPacket,
            "MQTT-2.1.3-1",
        );
    }
}

#[test]
fn mqtt_5_2_1_2_pingreq_goes_to_the_server_and_pingresp_to_the_client() {
    for version in VERSIONS {
        assert_error(
            from_server(version, &[0xC0, 0]),
            ReasonCode::ProtocolError,
            "MQTT-5 §2.1.2",
        );
        assert_error(
            from_client(version, &[0xD0, 0]),
            ReasonCode::ProtocolError,
            "MQTT-5 §2.1.2",
        );
    }
    let mut out = BytesMut::new();
    Encoder::new(V5).encode(&Packet::PingReq, &mut out).unwrap();
    Encoder::new(V5)
        .encode(&Packet::PingResp, &mut out)
        .unwrap();
    assert_eq!(&out[..], &[0xC0, 0, 0xD0, 0]);
}

// ---------------------------------------------------------------------------------------------
// DISCONNECT (§3.14)

#[test]
fn mqtt_3_14_1_1_disconnect_reserved_flags_are_malformed() {
    for version in VERSIONS {
        for first in [0xE1, 0xE2, 0xE8] {
            assert_error(
                from_client(version, &[first, 0]),
                ReasonCode::MalformedPacket,
                "MQTT-3.14.1-1",
            );
        }
    }
    assert_error(
        from_server(V5, &[0xE4, 0]),
        ReasonCode::MalformedPacket,
        "MQTT-3.14.1-1",
    );
}

#[test]
fn mqtt_3_1_1_2_2_1_disconnect_is_sent_only_by_the_client() {
    assert_error(
        from_server(V311, &[0xE0, 0]),
        ReasonCode::ProtocolError,
        "MQTT-3.1.1 §2.2.1",
    );
    assert_eq!(
        disconnect_of(from_client(V311, &[0xE0, 0])),
        Disconnect::new(ReasonCode::Success)
    );
    // MQTT 5.0 lets the server send it too.
    assert_eq!(
        disconnect_of(from_server(V5, &[0xE0, 1, 0x8B])).reason_code,
        ReasonCode::ServerShuttingDown
    );
}

#[test]
fn mqtt_3_1_1_3_14_1_disconnect_remaining_length_is_0() {
    for bytes in [&[0xE0, 1, 0x00][..], &[0xE0, 2, 0x00, 0]] {
        assert_error(
            from_client(V311, bytes),
            ReasonCode::MalformedPacket,
            "MQTT-3.1.1 §3.14.1",
        );
    }
    // The encoder writes nothing after the fixed header in 3.1.1.
    let mut out = BytesMut::new();
    Encoder::new(V311)
        .encode(&Disconnect::new(ReasonCode::Success), &mut out)
        .unwrap();
    assert_eq!(&out[..], &[0xE0, 0]);
}

#[test]
fn mqtt_5_3_14_2_1_short_forms() {
    // Remaining Length 0: Normal disconnection.
    let d = disconnect_of(from_client(V5, &[0xE0, 0]));
    assert_eq!(d, Disconnect::new(ReasonCode::Success));
    // Remaining Length 1: a reason code and no Property Length (§3.14.2.2.1).
    let d = disconnect_of(from_client(V5, &[0xE0, 1, 0x04]));
    assert_eq!(d.reason_code, ReasonCode::DisconnectWithWillMessage);
    // The long form.
    let mut body = vec![0x80, 6, 0x1F];
    body.extend(string(b"bye"));
    let d = disconnect_of(from_client(V5, &packet(0xE0, &body)));
    assert_eq!(d.reason_code, ReasonCode::UnspecifiedError);
    assert_eq!(
        d.properties.reason_string.as_ref().map(MqttString::as_str),
        Some("bye")
    );
    // The encoder uses the shortest form.
    let mut out = BytesMut::new();
    let encoder = Encoder::new(V5);
    encoder
        .encode(&Disconnect::new(ReasonCode::Success), &mut out)
        .unwrap();
    encoder
        .encode(&Disconnect::new(ReasonCode::ServerBusy), &mut out)
        .unwrap();
    assert_eq!(&out[..], &[0xE0, 0, 0xE0, 1, 0x89]);
}

#[test]
fn mqtt_3_14_2_1_disconnect_reason_codes_allowed_per_sender() {
    for byte in 0..=255u8 {
        let bytes = [0xE0, 1, byte];
        let both = DISCONNECT_BOTH.contains(&byte);
        // From a client, at the server.
        let result = from_client(V5, &bytes);
        if both || DISCONNECT_CLIENT_ONLY.contains(&byte) {
            assert_eq!(disconnect_of(result).reason_code.as_u8(), byte);
        } else {
            assert_error(result, ReasonCode::ProtocolError, "MQTT-3.14.2-1");
        }
        // From the server, at a client.
        let result = from_server(V5, &bytes);
        if both || DISCONNECT_SERVER_ONLY.contains(&byte) {
            assert_eq!(disconnect_of(result).reason_code.as_u8(), byte);
        } else {
            assert_error(result, ReasonCode::ProtocolError, "MQTT-3.14.2-1");
        }
    }
}

#[test]
fn mqtt_3_14_2_2_session_expiry_interval_from_the_server_is_protocol_error() {
    let bytes = [0xE0, 7, 0x00, 5, 0x11, 0, 0, 0, 10];
    assert_error(
        from_server(V5, &bytes),
        ReasonCode::ProtocolError,
        "MQTT-3.14.2-2",
    );
    let d = disconnect_of(from_client(V5, &bytes));
    assert_eq!(d.properties.session_expiry_interval, Some(10));
    // A Server Reference is the server's to send.
    let mut body = vec![0x9C, 6, 0x1C];
    body.extend(string(b"b:1"));
    let d = disconnect_of(from_server(V5, &packet(0xE0, &body)));
    assert_eq!(
        d.properties
            .server_reference
            .as_ref()
            .map(MqttString::as_str),
        Some("b:1")
    );
}

#[test]
fn mqtt_5_2_1_4_disconnect_leftover_or_missing_bytes_are_malformed() {
    assert_error(
        from_client(V5, &[0xE0, 3, 0x00, 0, 0xAA]),
        ReasonCode::MalformedPacket,
        "MQTT-5 §2.1.4",
    );
    assert_error(
        from_client(V5, &[0xE0, 3, 0x00, 5, 0x11]),
        ReasonCode::MalformedPacket,
        "MQTT-5 §2.1.4",
    );
    // Topic Alias (0x23) is not a DISCONNECT property.
    assert_error(
        from_client(V5, &[0xE0, 5, 0x00, 3, 0x23, 0, 1]),
        ReasonCode::MalformedPacket,
        "MQTT-5 §2.2.2.2",
    );
}

#[test]
fn mqtt_3_14_0_1_disconnect_before_connack_is_protocol_error() {
    let mut decoder = Decoder::client(V5, DecoderLimits::default());
    decoder.handle_bytes(&[0xE0, 1, 0x8B]);
    match decoder.poll_packet() {
        Err(err) => {
            assert_eq!(err.reason_code(), ReasonCode::ProtocolError);
            assert_eq!(err.rule(), "MQTT-3.14.0-1");
        }
        other => panic!("{other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// AUTH (§3.15)

#[test]
fn mqtt_3_15_1_1_auth_reserved_flags_are_malformed() {
    let good = auth(0x18, &method(b"SCRAM-SHA-256"));
    assert!(from_client(V5, &good).is_ok());
    for flags in [0x1, 0x2, 0x4, 0x8] {
        let mut bytes = good.clone();
        bytes[0] = 0xF0 | flags;
        assert_error(
            from_client(V5, &bytes),
            ReasonCode::MalformedPacket,
            "MQTT-3.15.1-1",
        );
        assert_error(
            from_server(V5, &bytes),
            ReasonCode::MalformedPacket,
            "MQTT-3.15.1-1",
        );
    }
}

#[test]
fn mqtt_3_1_1_2_2_1_auth_does_not_exist_before_5_0() {
    let bytes = auth(0x18, &method(b"SCRAM-SHA-256"));
    assert_error(
        from_client(V311, &bytes),
        ReasonCode::MalformedPacket,
        "MQTT-3.1.1 §2.2.1",
    );
    assert_error(
        from_server(V311, &bytes),
        ReasonCode::MalformedPacket,
        "MQTT-3.1.1 §2.2.1",
    );
    let auth = Auth {
        reason_code: ReasonCode::ContinueAuthentication,
        properties: AuthProperties::default(),
    };
    let mut out = BytesMut::from(&b"kept"[..]);
    assert_eq!(
        Encoder::new(V311).encode(&auth, &mut out),
        Err(EncodeError::NotInVersion("AUTH", V311))
    );
    assert_eq!(&out[..], b"kept");
}

#[test]
fn mqtt_3_15_2_1_auth_reason_codes() {
    // §3.15.2.1: Success (sent by the server), Continue authentication (either side),
    // Re-authenticate (sent by the client).
    for byte in 0..=255u8 {
        let bytes = auth(byte, &method(b"M"));
        for (result, allowed) in [
            (from_client(V5, &bytes), [0x18, 0x19]),
            (from_server(V5, &bytes), [0x00, 0x18]),
        ] {
            if allowed.contains(&byte) {
                assert_eq!(auth_of(result).reason_code.as_u8(), byte);
            } else {
                assert_error(result, ReasonCode::ProtocolError, "MQTT-3.15.2-1");
            }
        }
    }
}

#[test]
fn mqtt_5_3_15_2_1_remaining_length_0_means_success() {
    let a = auth_of(from_server(V5, &[0xF0, 0]));
    assert_eq!(a.reason_code, ReasonCode::Success);
    assert_eq!(a.properties, AuthProperties::default());
    // Success is the server's to send, in its short form too.
    assert_error(
        from_client(V5, &[0xF0, 0]),
        ReasonCode::ProtocolError,
        "MQTT-3.15.2-1",
    );
    // The encoder writes Success without properties in the short form.
    let mut out = BytesMut::new();
    let success = Auth {
        reason_code: ReasonCode::Success,
        properties: AuthProperties::default(),
    };
    Encoder::new(V5).encode(&success, &mut out).unwrap();
    assert_eq!(&out[..], &[0xF0, 0]);
}

#[test]
fn mqtt_5_3_15_2_2_2_authentication_method_is_required_once() {
    // A reason code without properties, an empty property block, Authentication Data alone.
    let mut data_only = vec![0x16];
    data_only.extend(string(b"\x01\x02"));
    for bytes in [vec![0xF0, 1, 0x18], auth(0x18, &[]), auth(0x18, &data_only)] {
        assert_error(
            from_client(V5, &bytes),
            ReasonCode::ProtocolError,
            "MQTT-5 §3.15.2.2.2",
        );
        assert_error(
            from_server(V5, &bytes),
            ReasonCode::ProtocolError,
            "MQTT-5 §3.15.2.2.2",
        );
    }
    // The method twice, like every property that may appear once, breaks the rule of §2.2.2.
    let mut twice = method(b"A");
    twice.extend(method(b"B"));
    assert_error(
        from_client(V5, &auth(0x18, &twice)),
        ReasonCode::ProtocolError,
        "MQTT-5 §2.2.2.2",
    );
}

#[test]
fn mqtt_5_3_15_2_2_auth_properties_decode() {
    let mut props = method(b"SCRAM-SHA-256");
    props.push(0x16);
    props.extend(string(b"r=abc"));
    props.push(0x1F);
    props.extend(string(b"step"));
    props.push(0x26);
    props.extend(string(b"k"));
    props.extend(string(b"v"));
    let bytes = auth(0x18, &props);
    let a = auth_of(from_server(V5, &bytes));
    assert_eq!(a.reason_code, ReasonCode::ContinueAuthentication);
    assert_eq!(
        a.properties
            .authentication_method
            .as_ref()
            .map(MqttString::as_str),
        Some("SCRAM-SHA-256")
    );
    assert_eq!(
        a.properties.authentication_data,
        Some(Bytes::from_static(b"r=abc"))
    );
    assert_eq!(a.properties.user_properties.len(), 1);
    let mut out = BytesMut::new();
    Encoder::new(V5).encode(&a, &mut out).unwrap();
    assert_eq!(&out[..], &bytes[..]);
    // Leftover bytes and foreign properties.
    let mut leftover = bytes.clone();
    leftover[1] += 1;
    leftover.push(0);
    assert_error(
        from_server(V5, &leftover),
        ReasonCode::MalformedPacket,
        "MQTT-5 §2.1.4",
    );
    let mut foreign = method(b"M");
    foreign.extend_from_slice(&[0x23, 0, 1]);
    assert_error(
        from_server(V5, &auth(0x18, &foreign)),
        ReasonCode::MalformedPacket,
        "MQTT-5 §2.2.2.2",
    );
}
