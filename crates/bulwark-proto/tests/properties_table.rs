//! Table test of the MQTT 5.0 property grammar (§2.2.2.2, Table 2-4): every property identifier
//! in every packet that carries properties. The expected verdicts are written from the
//! specification's table, independently of the codec's own per-packet property sets.
//!
//! A property that is not valid for its packet is a Malformed Packet (§2.2.2.2); a property that
//! may appear once appearing twice is a Protocol Error.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code"
)]

mod common;

use bulwark_proto::{DecodeError, Decoder, DecoderLimits, Packet, ProtocolVersion, ReasonCode};
use common::varint;

/// Where a property block can stand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Connect,
    Will,
    ConnAck,
    Publish,
    PubAck,
    PubRec,
    PubRel,
    PubComp,
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    Disconnect,
    Auth,
}

const PLACES: [Place; 14] = [
    Place::Connect,
    Place::Will,
    Place::ConnAck,
    Place::Publish,
    Place::PubAck,
    Place::PubRec,
    Place::PubRel,
    Place::PubComp,
    Place::Subscribe,
    Place::SubAck,
    Place::Unsubscribe,
    Place::UnsubAck,
    Place::Disconnect,
    Place::Auth,
];

use Place as P;

/// Table 2-4: identifier, name, one valid encoded property (identifier included), and the
/// packets it may appear in.
const TABLE: &[(u8, &str, &[u8], &[Place])] = &[
    (
        0x01,
        "Payload Format Indicator",
        &[0x01, 0x01],
        &[P::Publish, P::Will],
    ),
    (
        0x02,
        "Message Expiry Interval",
        &[0x02, 0, 0, 0, 10],
        &[P::Publish, P::Will],
    ),
    (
        0x03,
        "Content Type",
        &[0x03, 0, 4, b't', b'e', b'x', b't'],
        &[P::Publish, P::Will],
    ),
    (
        0x08,
        "Response Topic",
        &[0x08, 0, 3, b'r', b'/', b't'],
        &[P::Publish, P::Will],
    ),
    (
        0x09,
        "Correlation Data",
        &[0x09, 0, 2, 1, 2],
        &[P::Publish, P::Will],
    ),
    (
        0x0B,
        "Subscription Identifier",
        &[0x0B, 0x05],
        &[P::Publish, P::Subscribe],
    ),
    (
        0x11,
        "Session Expiry Interval",
        &[0x11, 0, 0, 0, 60],
        &[P::Connect, P::ConnAck, P::Disconnect],
    ),
    (
        0x12,
        "Assigned Client Identifier",
        &[0x12, 0, 2, b'i', b'd'],
        &[P::ConnAck],
    ),
    (0x13, "Server Keep Alive", &[0x13, 0, 30], &[P::ConnAck]),
    (
        0x15,
        "Authentication Method",
        &[0x15, 0, 5, b'S', b'C', b'R', b'A', b'M'],
        &[P::Connect, P::ConnAck, P::Auth],
    ),
    (
        0x16,
        "Authentication Data",
        &[0x16, 0, 2, 1, 2],
        &[P::Connect, P::ConnAck, P::Auth],
    ),
    (
        0x17,
        "Request Problem Information",
        &[0x17, 1],
        &[P::Connect],
    ),
    (0x18, "Will Delay Interval", &[0x18, 0, 0, 0, 5], &[P::Will]),
    (
        0x19,
        "Request Response Information",
        &[0x19, 1],
        &[P::Connect],
    ),
    (
        0x1A,
        "Response Information",
        &[0x1A, 0, 2, b'r', b'i'],
        &[P::ConnAck],
    ),
    (
        0x1C,
        "Server Reference",
        &[0x1C, 0, 2, b's', b'r'],
        &[P::ConnAck, P::Disconnect],
    ),
    (
        0x1F,
        "Reason String",
        &[0x1F, 0, 2, b'o', b'k'],
        &[
            P::ConnAck,
            P::PubAck,
            P::PubRec,
            P::PubRel,
            P::PubComp,
            P::SubAck,
            P::UnsubAck,
            P::Disconnect,
            P::Auth,
        ],
    ),
    (
        0x21,
        "Receive Maximum",
        &[0x21, 0, 10],
        &[P::Connect, P::ConnAck],
    ),
    (
        0x22,
        "Topic Alias Maximum",
        &[0x22, 0, 10],
        &[P::Connect, P::ConnAck],
    ),
    (0x23, "Topic Alias", &[0x23, 0, 1], &[P::Publish]),
    (0x24, "Maximum QoS", &[0x24, 1], &[P::ConnAck]),
    (0x25, "Retain Available", &[0x25, 1], &[P::ConnAck]),
    (
        0x26,
        "User Property",
        &[0x26, 0, 1, b'k', 0, 1, b'v'],
        &PLACES,
    ),
    (
        0x27,
        "Maximum Packet Size",
        &[0x27, 0, 0, 4, 0],
        &[P::Connect, P::ConnAck],
    ),
    (
        0x28,
        "Wildcard Subscription Available",
        &[0x28, 1],
        &[P::ConnAck],
    ),
    (
        0x29,
        "Subscription Identifier Available",
        &[0x29, 1],
        &[P::ConnAck],
    ),
    (
        0x2A,
        "Shared Subscription Available",
        &[0x2A, 1],
        &[P::ConnAck],
    ),
];

const AUTH_METHOD: &[u8] = &[0x15, 0, 5, b'S', b'C', b'R', b'A', b'M'];

fn with_len(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    out.extend(varint(body.len()));
    out.extend_from_slice(body);
    out
}

fn block(props: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend(varint(props.len()));
    out.extend_from_slice(props);
    out
}

const CONNECT_V5: &[u8] = &[
    0x10, 0x0E, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 60, 0, 0, 1, b'c',
];
const CONNACK_V5: &[u8] = &[0x20, 0x03, 0x00, 0x00, 0x00];

/// The whole byte stream carrying `props` at `place`, and whether a server decodes it.
fn stream(place: Place, props: &[u8]) -> (Vec<u8>, bool) {
    let b = block(props);
    let mut body = Vec::new();
    let (first, server) = match place {
        Place::Connect | Place::Will => {
            let will = place == Place::Will;
            body.extend_from_slice(&[0, 4, b'M', b'Q', b'T', b'T', 5]);
            body.push(if will { 0x06 } else { 0x02 });
            body.extend_from_slice(&[0, 60]);
            body.extend_from_slice(if will { &[0] } else { &b[..] });
            body.extend_from_slice(&[0, 1, b'c']);
            if will {
                body.extend_from_slice(&b);
                body.extend_from_slice(&[0, 1, b't', 0, 0]);
            }
            return (with_len(0x10, &body), true);
        }
        Place::ConnAck => {
            body.extend_from_slice(&[0, 0]);
            body.extend_from_slice(&b);
            return (with_len(0x20, &body), false);
        }
        Place::Publish => {
            body.extend_from_slice(&[0, 1, b't']);
            body.extend_from_slice(&b);
            body.extend_from_slice(b"payload");
            (0x30, false)
        }
        Place::PubAck | Place::PubRec | Place::PubRel | Place::PubComp => {
            body.extend_from_slice(&[0, 1, 0]);
            body.extend_from_slice(&b);
            let first = match place {
                Place::PubAck => 0x40,
                Place::PubRec => 0x50,
                Place::PubRel => 0x62,
                _ => 0x70,
            };
            (first, true)
        }
        Place::Subscribe => {
            body.extend_from_slice(&[0, 1]);
            body.extend_from_slice(&b);
            body.extend_from_slice(&[0, 1, b't', 0]);
            (0x82, true)
        }
        Place::SubAck => {
            body.extend_from_slice(&[0, 1]);
            body.extend_from_slice(&b);
            body.push(0);
            (0x90, false)
        }
        Place::Unsubscribe => {
            body.extend_from_slice(&[0, 1]);
            body.extend_from_slice(&b);
            body.extend_from_slice(&[0, 1, b't']);
            (0xA2, true)
        }
        Place::UnsubAck => {
            body.extend_from_slice(&[0, 1]);
            body.extend_from_slice(&b);
            body.push(0);
            (0xB0, false)
        }
        Place::Disconnect => {
            body.push(0);
            body.extend_from_slice(&b);
            (0xE0, true)
        }
        Place::Auth => {
            body.push(0x18);
            body.extend_from_slice(&b);
            (0xF0, true)
        }
    };
    let mut out = if server {
        CONNECT_V5.to_vec()
    } else {
        CONNACK_V5.to_vec()
    };
    out.extend_from_slice(&with_len(first, &body));
    (out, server)
}

/// Decodes the stream; returns the last packet or the error.
fn decode(place: Place, props: &[u8]) -> Result<Packet, DecodeError> {
    let (bytes, server) = stream(place, props);
    let mut decoder = if server {
        Decoder::server(DecoderLimits::PROTOCOL)
    } else {
        Decoder::client(ProtocolVersion::V5, DecoderLimits::PROTOCOL)
    };
    decoder.set_authenticated();
    decoder.handle_bytes(&bytes);
    let mut last = None;
    while let Some(packet) = decoder.poll_packet()? {
        last = Some(packet);
    }
    assert_eq!(decoder.buffered(), 0, "{place:?}: bytes left undecoded");
    Ok(last.unwrap())
}

/// The property under test, preceded by what the packet needs besides it: AUTH always needs an
/// Authentication Method, and Authentication Data needs one wherever it is allowed.
fn props_for(place: Place, id: u8, encoded: &[u8], allowed: bool) -> Vec<u8> {
    let mut props = Vec::new();
    let needs_method = place == Place::Auth || (id == 0x16 && allowed);
    if needs_method && id != 0x15 {
        props.extend_from_slice(AUTH_METHOD);
    }
    props.extend_from_slice(encoded);
    props
}

#[test]
fn every_property_is_accepted_exactly_where_table_2_4_allows_it() {
    let mut checked = 0;
    for &(id, name, encoded, allowed_in) in TABLE {
        for place in PLACES {
            let allowed = allowed_in.contains(&place);
            let result = decode(place, &props_for(place, id, encoded, allowed));
            match (allowed, result) {
                (true, Ok(_)) => {}
                (true, Err(err)) => panic!("{name} (0x{id:02X}) refused in {place:?}: {err}"),
                (false, Ok(packet)) => {
                    panic!("{name} (0x{id:02X}) accepted in {place:?}: {packet:?}")
                }
                (false, Err(err)) => {
                    assert_eq!(
                        err.reason_code(),
                        ReasonCode::MalformedPacket,
                        "{name} {place:?}"
                    );
                    assert_eq!(err.rule(), "MQTT-5 §2.2.2.2", "{name} in {place:?}: {err}");
                }
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 27 * 14);
}

#[test]
fn unknown_property_identifiers_are_malformed_everywhere() {
    for id in [0x00u8, 0x04, 0x0A, 0x14, 0x1B, 0x20, 0x2B, 0x7F] {
        for place in PLACES {
            let err = decode(place, &props_for(place, id, &[id, 0], false)).unwrap_err();
            assert_eq!(
                err.reason_code(),
                ReasonCode::MalformedPacket,
                "0x{id:02X} {place:?}"
            );
            assert_eq!(err.rule(), "MQTT-5 §2.2.2.2");
        }
    }
}

#[test]
fn properties_that_may_appear_once_are_a_protocol_error_twice() {
    for &(id, name, encoded, allowed_in) in TABLE {
        for &place in allowed_in {
            let mut twice = encoded.to_vec();
            twice.extend_from_slice(encoded);
            let result = decode(place, &props_for(place, id, &twice, true));
            let repeatable = id == 0x26 || (id == 0x0B && place == Place::Publish);
            if repeatable {
                assert!(result.is_ok(), "{name} twice in {place:?}: {result:?}");
            } else {
                let err = result.unwrap_err();
                assert_eq!(
                    err.reason_code(),
                    ReasonCode::ProtocolError,
                    "{name} in {place:?}"
                );
                assert_eq!(
                    err.to_string(),
                    format!("[MQTT-5 §2.2.2.2] {name} appears more than once")
                );
            }
        }
    }
}

#[test]
fn user_properties_keep_their_order_and_duplicates() {
    let props = [
        &[0x26, 0, 1, b'a', 0, 1, b'1'][..],
        &[0x26, 0, 1, b'b', 0, 1, b'2'],
        &[0x26, 0, 1, b'a', 0, 1, b'3'],
    ]
    .concat();
    let Packet::Publish(publish) = decode(Place::Publish, &props).unwrap() else {
        panic!("expected a PUBLISH");
    };
    let pairs: Vec<(&str, &str)> = publish
        .properties
        .user_properties
        .iter()
        .map(|pair| (pair.name.as_str(), pair.value.as_str()))
        .collect();
    assert_eq!(pairs, [("a", "1"), ("b", "2"), ("a", "3")]);
}

#[test]
fn a_property_length_running_past_the_packet_is_malformed() {
    for place in PLACES {
        let (mut bytes, server) = stream(
            place,
            &props_for(place, 0x26, &[0x26, 0, 1, b'k', 0, 1, b'v'], true),
        );
        // Find the last packet and make its declared property length larger than the packet.
        let prefix = if server {
            CONNECT_V5.len()
        } else {
            CONNACK_V5.len()
        };
        let start = if matches!(place, Place::Connect | Place::Will | Place::ConnAck) {
            0
        } else {
            prefix
        };
        let marker = bytes[start..]
            .windows(7)
            .position(|w| w == [0x26, 0, 1, b'k', 0, 1, b'v'])
            .unwrap();
        let len_at = start + marker - 1 - usize::from(place == Place::Auth) * AUTH_METHOD.len();
        bytes[len_at] += 20;
        let mut decoder = if server {
            Decoder::server(DecoderLimits::PROTOCOL)
        } else {
            Decoder::client(ProtocolVersion::V5, DecoderLimits::PROTOCOL)
        };
        decoder.handle_bytes(&bytes);
        let err = loop {
            match decoder.poll_packet() {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("{place:?}: no error"),
                Err(err) => break err,
            }
        };
        assert_eq!(
            err.reason_code(),
            ReasonCode::MalformedPacket,
            "{place:?}: {err}"
        );
        assert_eq!(err.rule(), "MQTT-5 §2.1.4", "{place:?}: {err}");
    }
}
