//! Property tests of the codec: every valid packet of every version survives encode → decode
//! unchanged, however the bytes are split, and arbitrary bytes never panic the decoder.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code"
)]

use std::num::{NonZeroU16, NonZeroU32};

use bulwark_proto::{
    AckProperties, Auth, AuthProperties, ClientId, ConnAck, ConnAckProperties, Connect,
    ConnectProperties, DecodeError, Decoder, DecoderLimits, Disconnect, DisconnectProperties,
    EncodeError, Encoder, MqttString, PacketId, PacketType, PayloadFormat, ProtocolVersion, PubAck,
    PubComp, PubRec, PubRel, Publish, PublishProperties, QoS, ReasonCode, RetainHandling, Role,
    SubAck, Subscribe, SubscribeProperties, Subscription, SubscriptionId, SubscriptionOptions,
    TopicFilter, TopicName, UnsubAck, Unsubscribe, UnsubscribeProperties, UserProperty, VARINT_MAX,
    Will, WillProperties,
};
use bulwark_proto::{ConnectReturnCode, Packet};
use bytes::{Bytes, BytesMut};
use proptest::option;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::strategy::Union;

const VERSIONS: [ProtocolVersion; 3] = [
    ProtocolVersion::V3_1,
    ProtocolVersion::V3_1_1,
    ProtocolVersion::V5,
];

// ---------------------------------------------------------------------------------------------
// Leaf strategies
// ---------------------------------------------------------------------------------------------

/// Mostly readable characters, with separators, `$`, wildcards and arbitrary code points mixed
/// in (any `char` is a scalar value, so surrogates never appear).
fn any_text_char() -> impl Strategy<Value = char> {
    prop_oneof![
        8 => proptest::char::range('a', 'z'),
        1 => Just('/'),
        1 => Just('$'),
        1 => Just('+'),
        1 => Just('#'),
        1 => Just(' '),
        3 => any::<char>(),
    ]
}

/// Text of `len` characters where `bad` characters (and always U+0000) are replaced.
fn text(len: std::ops::Range<usize>, bad: &'static [char]) -> impl Strategy<Value = String> {
    prop::collection::vec(any_text_char(), len).prop_map(move |chars| {
        chars
            .into_iter()
            .map(|c| {
                if c == '\0' || bad.contains(&c) {
                    '_'
                } else {
                    c
                }
            })
            .collect()
    })
}

fn mqtt_string() -> impl Strategy<Value = MqttString> {
    prop_oneof![
        8 => text(0..12, &[]),
        1 => text(100..200, &[]),
    ]
    .prop_map(|s| MqttString::new(&s).unwrap())
}

fn topic_name() -> impl Strategy<Value = TopicName> {
    prop_oneof![
        8 => text(1..16, &['+', '#']),
        1 => text(100..200, &['+', '#']),
    ]
    .prop_map(|s| TopicName::new(&s).unwrap())
}

/// One level of a filter: `+`, or text without `/`, `+` and `#` (possibly empty).
fn filter_level() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => Just("+".to_owned()),
        4 => text(0..6, &['/', '+', '#']),
    ]
}

fn plain_filter() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(filter_level(), 0..4),
        prop_oneof![
            1 => Just("#".to_owned()),
            3 => filter_level(),
        ],
    )
        .prop_map(|(mut levels, last)| {
            levels.push(last);
            levels.join("/")
        })
}

fn topic_filter() -> impl Strategy<Value = TopicFilter> {
    prop_oneof![
        4 => plain_filter(),
        1 => (text(1..6, &['/', '+', '#']), plain_filter())
            .prop_map(|(name, filter)| format!("$share/{name}/{filter}")),
    ]
    .prop_filter_map("not a valid filter", |s| TopicFilter::new(&s).ok())
}

fn bytes(max: usize) -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

fn packet_id() -> impl Strategy<Value = PacketId> {
    (1..=u16::MAX).prop_map(|id| PacketId::new(id).unwrap())
}

fn subscription_id() -> impl Strategy<Value = SubscriptionId> {
    prop_oneof![
        1..=200u32,
        1..=VARINT_MAX,
        Just(VARINT_MAX),
        Just(127u32),
        Just(128u32),
    ]
    .prop_map(|id| SubscriptionId::new(id).unwrap())
}

fn qos() -> impl Strategy<Value = QoS> {
    select(vec![QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce])
}

fn non_zero_u16() -> impl Strategy<Value = NonZeroU16> {
    (1..=u16::MAX).prop_map(|v| NonZeroU16::new(v).unwrap())
}

fn non_zero_u32() -> impl Strategy<Value = NonZeroU32> {
    (1..=u32::MAX).prop_map(|v| NonZeroU32::new(v).unwrap())
}

fn payload_format() -> impl Strategy<Value = PayloadFormat> {
    select(vec![PayloadFormat::Unspecified, PayloadFormat::Utf8])
}

/// User properties, often with repeated names.
fn user_properties() -> impl Strategy<Value = Vec<UserProperty>> {
    let name = prop_oneof![
        2 => select(vec!["a", "b", "key"]).prop_map(|s| MqttString::new(s).unwrap()),
        1 => mqtt_string(),
    ];
    prop::collection::vec(
        (name, mqtt_string()).prop_map(|(n, v)| UserProperty::new(n, v)),
        0..4,
    )
}

fn all_reason_codes() -> Vec<ReasonCode> {
    (0..=u8::MAX).filter_map(ReasonCode::from_u8).collect()
}

/// A reason code the specification allows in `kind`, narrowed by `keep`.
fn reason_code(
    kind: PacketType,
    keep: fn(ReasonCode) -> bool,
) -> impl Strategy<Value = ReasonCode> {
    let codes: Vec<ReasonCode> = all_reason_codes()
        .into_iter()
        .filter(|c| c.is_valid_for(kind) && keep(*c))
        .collect();
    assert!(!codes.is_empty(), "{kind:?}");
    select(codes)
}

fn any_code(_: ReasonCode) -> bool {
    true
}

// ---------------------------------------------------------------------------------------------
// Properties (MQTT 5.0 only; earlier versions keep the defaults)
// ---------------------------------------------------------------------------------------------

/// Authentication Method and Data: the data only with a method.
fn auth_pair() -> impl Strategy<Value = (Option<MqttString>, Option<Bytes>)> {
    (option::of(mqtt_string()), option::of(bytes(40)))
        .prop_map(|(method, data)| (method.clone(), method.and(data)))
}

fn connect_properties() -> impl Strategy<Value = ConnectProperties> {
    (
        option::of(any::<u32>()),
        option::of(non_zero_u16()),
        option::of(non_zero_u32()),
        option::of(any::<u16>()),
        option::of(any::<bool>()),
        option::of(any::<bool>()),
        user_properties(),
        auth_pair(),
    )
        .prop_map(
            |(
                session_expiry_interval,
                receive_maximum,
                maximum_packet_size,
                topic_alias_maximum,
                request_response_information,
                request_problem_information,
                user_properties,
                (authentication_method, authentication_data),
            )| ConnectProperties {
                session_expiry_interval,
                receive_maximum,
                maximum_packet_size,
                topic_alias_maximum,
                request_response_information,
                request_problem_information,
                user_properties,
                authentication_method,
                authentication_data,
            },
        )
}

fn will_properties() -> impl Strategy<Value = WillProperties> {
    (
        option::of(any::<u32>()),
        option::of(payload_format()),
        option::of(any::<u32>()),
        option::of(mqtt_string()),
        option::of(topic_name()),
        option::of(bytes(40)),
        user_properties(),
    )
        .prop_map(
            |(
                will_delay_interval,
                payload_format_indicator,
                message_expiry_interval,
                content_type,
                response_topic,
                correlation_data,
                user_properties,
            )| WillProperties {
                will_delay_interval,
                payload_format_indicator,
                message_expiry_interval,
                content_type,
                response_topic,
                correlation_data,
                user_properties,
            },
        )
}

fn connack_properties() -> impl Strategy<Value = ConnAckProperties> {
    let first = (
        option::of(any::<u32>()),
        option::of(non_zero_u16()),
        option::of(select(vec![QoS::AtMostOnce, QoS::AtLeastOnce])),
        option::of(any::<bool>()),
        option::of(non_zero_u32()),
        option::of(mqtt_string()),
        option::of(any::<u16>()),
        option::of(mqtt_string()),
    );
    let second = (
        user_properties(),
        option::of(any::<bool>()),
        option::of(any::<bool>()),
        option::of(any::<bool>()),
        option::of(any::<u16>()),
        option::of(mqtt_string()),
        option::of(mqtt_string()),
        auth_pair(),
    );
    (first, second).prop_map(
        |(
            (
                session_expiry_interval,
                receive_maximum,
                maximum_qos,
                retain_available,
                maximum_packet_size,
                assigned_client_identifier,
                topic_alias_maximum,
                reason_string,
            ),
            (
                user_properties,
                wildcard_subscription_available,
                subscription_identifiers_available,
                shared_subscription_available,
                server_keep_alive,
                response_information,
                server_reference,
                (authentication_method, authentication_data),
            ),
        )| ConnAckProperties {
            session_expiry_interval,
            receive_maximum,
            maximum_qos,
            retain_available,
            maximum_packet_size,
            assigned_client_identifier,
            topic_alias_maximum,
            reason_string,
            user_properties,
            wildcard_subscription_available,
            subscription_identifiers_available,
            shared_subscription_available,
            server_keep_alive,
            response_information,
            server_reference,
            authentication_method,
            authentication_data,
        },
    )
}

/// PUBLISH properties; Subscription Identifiers only when the server sends it
/// ([MQTT-3.3.4-6]).
fn publish_properties(from_server: bool) -> impl Strategy<Value = PublishProperties> {
    let max_ids = if from_server { 4 } else { 0 };
    (
        option::of(payload_format()),
        option::of(any::<u32>()),
        option::of(non_zero_u16()),
        option::of(topic_name()),
        option::of(bytes(40)),
        user_properties(),
        prop::collection::vec(subscription_id(), 0..=max_ids),
        option::of(mqtt_string()),
    )
        .prop_map(
            |(
                payload_format_indicator,
                message_expiry_interval,
                topic_alias,
                response_topic,
                correlation_data,
                user_properties,
                subscription_identifiers,
                content_type,
            )| PublishProperties {
                payload_format_indicator,
                message_expiry_interval,
                topic_alias,
                response_topic,
                correlation_data,
                user_properties,
                subscription_identifiers,
                content_type,
            },
        )
}

fn ack_properties() -> impl Strategy<Value = AckProperties> {
    (option::of(mqtt_string()), user_properties()).prop_map(|(reason_string, user_properties)| {
        AckProperties {
            reason_string,
            user_properties,
        }
    })
}

/// Properties for `version`: arbitrary for 5.0, default before.
fn props<T: Default + std::fmt::Debug + Clone + 'static>(
    version: ProtocolVersion,
    strategy: impl Strategy<Value = T> + 'static,
) -> BoxedStrategy<T> {
    if version.is_v5() {
        strategy.boxed()
    } else {
        Just(T::default()).boxed()
    }
}

// ---------------------------------------------------------------------------------------------
// Packets
// ---------------------------------------------------------------------------------------------

fn will(version: ProtocolVersion) -> impl Strategy<Value = Will> {
    (
        topic_name(),
        bytes(300),
        qos(),
        any::<bool>(),
        props(version, will_properties()),
    )
        .prop_map(|(topic, payload, qos, retain, properties)| Will {
            topic,
            payload,
            qos,
            retain,
            properties,
        })
}

fn connect(version: ProtocolVersion) -> impl Strategy<Value = Connect> {
    (
        any::<bool>(),
        any::<u16>(),
        props(version, connect_properties()),
        mqtt_string(),
        option::of(will(version)),
        option::of(mqtt_string()),
        option::of(bytes(40)),
    )
        .prop_map(
            move |(clean_start, keep_alive, properties, client_id, will, username, password)| {
                // Before 5.0 a password needs a user name ([MQTT-3.1.2-22]).
                let password = if version.is_v5() || username.is_some() {
                    password
                } else {
                    None
                };
                Connect {
                    protocol_version: version,
                    clean_start,
                    keep_alive,
                    properties,
                    client_id: ClientId::from_string(client_id),
                    will,
                    username,
                    password,
                }
            },
        )
}

fn connack(version: ProtocolVersion) -> impl Strategy<Value = ConnAck> {
    let code = if version.is_v5() {
        reason_code(PacketType::ConnAck, any_code).boxed()
    } else {
        // The six codes that have a 3.1.1 return code of their own.
        reason_code(PacketType::ConnAck, |c| {
            ConnectReturnCode::from_reason(c).map(ConnectReturnCode::to_reason) == Some(c)
        })
        .boxed()
    };
    (any::<bool>(), code, props(version, connack_properties())).prop_map(
        move |(session_present, reason_code, properties)| ConnAck {
            // A refused connection never has a session ([MQTT-3.2.2-6]); 3.1 has no flag.
            session_present: session_present
                && !reason_code.is_error()
                && version != ProtocolVersion::V3_1,
            reason_code,
            properties,
        },
    )
}

fn publish(version: ProtocolVersion, from_server: bool) -> impl Strategy<Value = Publish> {
    (
        any::<bool>(),
        qos(),
        any::<bool>(),
        topic_name(),
        packet_id(),
        props(version, publish_properties(from_server)),
        bytes(300),
        any::<bool>(),
    )
        .prop_map(
            move |(dup, qos, retain, topic, id, properties, payload, aliased)| {
                let qos0 = qos == QoS::AtMostOnce;
                // An empty topic name stands for a Topic Alias (5.0 only).
                let topic = if aliased && properties.topic_alias.is_some() {
                    TopicName::empty_for_alias()
                } else {
                    topic
                };
                Publish {
                    dup: dup && !qos0,
                    qos,
                    retain,
                    topic,
                    packet_id: (!qos0).then_some(id),
                    properties,
                    payload,
                }
            },
        )
}

/// PUBACK, PUBREC, PUBREL or PUBCOMP.
fn publish_response(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let code = |kind| {
        if version.is_v5() {
            reason_code(kind, any_code).boxed()
        } else {
            Just(ReasonCode::Success).boxed()
        }
    };
    let ack = props(version, ack_properties());
    prop_oneof![
        (packet_id(), code(PacketType::PubAck), ack.clone()).prop_map(
            |(packet_id, reason_code, properties)| {
                Packet::PubAck(PubAck {
                    packet_id,
                    reason_code,
                    properties,
                })
            }
        ),
        (packet_id(), code(PacketType::PubRec), ack.clone()).prop_map(
            |(packet_id, reason_code, properties)| {
                Packet::PubRec(PubRec {
                    packet_id,
                    reason_code,
                    properties,
                })
            }
        ),
        (packet_id(), code(PacketType::PubRel), ack.clone()).prop_map(
            |(packet_id, reason_code, properties)| {
                Packet::PubRel(PubRel {
                    packet_id,
                    reason_code,
                    properties,
                })
            }
        ),
        (packet_id(), code(PacketType::PubComp), ack).prop_map(
            |(packet_id, reason_code, properties)| {
                Packet::PubComp(PubComp {
                    packet_id,
                    reason_code,
                    properties,
                })
            }
        ),
    ]
}

fn subscription(version: ProtocolVersion) -> impl Strategy<Value = Subscription> {
    (
        topic_filter(),
        qos(),
        any::<bool>(),
        any::<bool>(),
        select(vec![
            RetainHandling::SendOnSubscribe,
            RetainHandling::SendIfNew,
            RetainHandling::DoNotSend,
        ]),
    )
        .prop_map(
            move |(filter, qos, no_local, retain_as_published, retain_handling)| {
                let options = if version.is_v5() {
                    SubscriptionOptions {
                        qos,
                        // No Local is a Protocol Error on a shared subscription ([MQTT-3.8.3-4]).
                        no_local: no_local && !filter.is_shared(),
                        retain_as_published,
                        retain_handling,
                    }
                } else {
                    SubscriptionOptions::qos(qos)
                };
                Subscription { filter, options }
            },
        )
}

fn subscribe(version: ProtocolVersion) -> impl Strategy<Value = Subscribe> {
    let properties = (option::of(subscription_id()), user_properties()).prop_map(
        |(subscription_identifier, user_properties)| SubscribeProperties {
            subscription_identifier,
            user_properties,
        },
    );
    (
        packet_id(),
        props(version, properties),
        prop::collection::vec(subscription(version), 1..5),
    )
        .prop_map(|(packet_id, properties, subscriptions)| Subscribe {
            packet_id,
            properties,
            subscriptions,
        })
}

fn suback(version: ProtocolVersion) -> impl Strategy<Value = SubAck> {
    let code = if version.is_v5() {
        reason_code(PacketType::SubAck, any_code).boxed()
    } else {
        select(vec![
            ReasonCode::Success,
            ReasonCode::GrantedQoS1,
            ReasonCode::GrantedQoS2,
            ReasonCode::UnspecifiedError,
        ])
        .boxed()
    };
    (
        packet_id(),
        props(version, ack_properties()),
        prop::collection::vec(code, 1..6),
    )
        .prop_map(|(packet_id, properties, reason_codes)| SubAck {
            packet_id,
            properties,
            reason_codes,
        })
}

fn unsubscribe(version: ProtocolVersion) -> impl Strategy<Value = Unsubscribe> {
    let properties =
        user_properties().prop_map(|user_properties| UnsubscribeProperties { user_properties });
    (
        packet_id(),
        props(version, properties),
        prop::collection::vec(topic_filter(), 1..5),
    )
        .prop_map(|(packet_id, properties, filters)| Unsubscribe {
            packet_id,
            properties,
            filters,
        })
}

fn unsuback(version: ProtocolVersion) -> impl Strategy<Value = UnsubAck> {
    let codes = if version.is_v5() {
        prop::collection::vec(reason_code(PacketType::UnsubAck, any_code), 1..6).boxed()
    } else {
        Just(Vec::new()).boxed()
    };
    (packet_id(), props(version, ack_properties()), codes).prop_map(
        |(packet_id, properties, reason_codes)| UnsubAck {
            packet_id,
            properties,
            reason_codes,
        },
    )
}

fn disconnect(version: ProtocolVersion, from_server: bool) -> impl Strategy<Value = Disconnect> {
    let code = if !version.is_v5() {
        Just(ReasonCode::Success).boxed()
    } else if from_server {
        reason_code(
            PacketType::Disconnect,
            ReasonCode::server_may_disconnect_with,
        )
        .boxed()
    } else {
        reason_code(
            PacketType::Disconnect,
            ReasonCode::client_may_disconnect_with,
        )
        .boxed()
    };
    let properties = (
        option::of(any::<u32>()),
        option::of(mqtt_string()),
        user_properties(),
        option::of(mqtt_string()),
    )
        .prop_map(
            move |(session_expiry_interval, reason_string, user_properties, server_reference)| {
                DisconnectProperties {
                    // Only the client sends a Session Expiry Interval ([MQTT-3.14.2-2]).
                    session_expiry_interval: session_expiry_interval.filter(|_| !from_server),
                    reason_string,
                    user_properties,
                    server_reference,
                }
            },
        );
    (code, props(version, properties)).prop_map(|(reason_code, properties)| Disconnect {
        reason_code,
        properties,
    })
}

/// AUTH (5.0 only) in one direction: the server sends Success (also in its empty form) and
/// Continue authentication, the client Continue authentication and Re-authenticate; every
/// non-empty AUTH carries an Authentication Method.
fn auth(from_server: bool) -> impl Strategy<Value = Auth> {
    let code = if from_server {
        reason_code(PacketType::Auth, |c| c != ReasonCode::ReAuthenticate)
    } else {
        reason_code(PacketType::Auth, |c| c != ReasonCode::Success)
    };
    let full = (
        code,
        mqtt_string(),
        option::of(bytes(40)),
        option::of(mqtt_string()),
        user_properties(),
    )
        .prop_map(
            |(reason_code, method, authentication_data, reason_string, user_properties)| Auth {
                reason_code,
                properties: AuthProperties {
                    authentication_method: Some(method),
                    authentication_data,
                    reason_string,
                    user_properties,
                },
            },
        );
    let empty = Just(Auth {
        reason_code: ReasonCode::Success,
        properties: AuthProperties::default(),
    });
    if from_server {
        prop_oneof![1 => empty, 4 => full].boxed()
    } else {
        full.boxed()
    }
}

/// Any packet but CONNECT that a client may send in `version`.
fn client_packet(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    let mut choices: Vec<BoxedStrategy<Packet>> = vec![
        publish(version, false).prop_map(Packet::Publish).boxed(),
        publish_response(version).boxed(),
        subscribe(version).prop_map(Packet::Subscribe).boxed(),
        unsubscribe(version).prop_map(Packet::Unsubscribe).boxed(),
        Just(Packet::PingReq).boxed(),
        disconnect(version, false)
            .prop_map(Packet::Disconnect)
            .boxed(),
    ];
    if version.is_v5() {
        choices.push(auth(false).prop_map(Packet::Auth).boxed());
    }
    Union::new(choices).boxed()
}

/// Any packet but CONNACK that a server may send in `version`.
fn server_packet(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    let mut choices: Vec<BoxedStrategy<Packet>> = vec![
        publish(version, true).prop_map(Packet::Publish).boxed(),
        publish_response(version).boxed(),
        suback(version).prop_map(Packet::SubAck).boxed(),
        unsuback(version).prop_map(Packet::UnsubAck).boxed(),
        Just(Packet::PingResp).boxed(),
    ];
    if version.is_v5() {
        choices.push(
            disconnect(version, true)
                .prop_map(Packet::Disconnect)
                .boxed(),
        );
        choices.push(auth(true).prop_map(Packet::Auth).boxed());
    }
    Union::new(choices).boxed()
}

/// A stream of packets in one direction: what the receiving decoder needs first (CONNECT for a
/// server; an optional AUTH and CONNACK for a client), then any packets.
#[derive(Debug, Clone)]
struct Stream {
    role: Role,
    version: ProtocolVersion,
    packets: Vec<Packet>,
}

fn stream() -> impl Strategy<Value = Stream> {
    (select(VERSIONS.to_vec()), any::<bool>()).prop_flat_map(|(version, to_server)| {
        if to_server {
            (
                connect(version),
                prop::collection::vec(client_packet(version), 0..8),
            )
                .prop_map(move |(connect, rest)| {
                    let mut packets = vec![Packet::Connect(Box::new(connect))];
                    packets.extend(rest);
                    Stream {
                        role: Role::Server,
                        version,
                        packets,
                    }
                })
                .boxed()
        } else {
            let early_auth = if version.is_v5() {
                option::of(auth(true)).boxed()
            } else {
                Just(None).boxed()
            };
            (
                early_auth,
                connack(version),
                prop::collection::vec(server_packet(version), 0..8),
            )
                .prop_map(move |(early_auth, connack, rest)| {
                    let mut packets: Vec<Packet> =
                        early_auth.into_iter().map(Packet::Auth).collect();
                    packets.push(Packet::ConnAck(Box::new(connack)));
                    packets.extend(rest);
                    Stream {
                        role: Role::Client,
                        version,
                        packets,
                    }
                })
                .boxed()
        }
    })
}

/// Chunk sizes: mostly small, sometimes large.
fn chunk_sizes() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(
        prop_oneof![4 => 1..8usize, 1 => 8..200usize, 1 => Just(4096usize)],
        1..16,
    )
}

// ---------------------------------------------------------------------------------------------
// Driving the decoder
// ---------------------------------------------------------------------------------------------

fn decoder(role: Role, version: ProtocolVersion) -> Decoder {
    match role {
        Role::Server => Decoder::server(DecoderLimits::PROTOCOL),
        Role::Client => Decoder::client(version, DecoderLimits::PROTOCOL),
    }
}

fn encode_all(version: ProtocolVersion, packets: &[Packet]) -> BytesMut {
    let encoder = Encoder::new(version);
    let mut buf = BytesMut::new();
    for packet in packets {
        let before = buf.len();
        let size = encoder
            .encode(packet, &mut buf)
            .unwrap_or_else(|err| panic!("encoding {packet:?} in {version}: {err}"));
        assert_eq!(size, buf.len() - before);
    }
    buf
}

/// What a decoder made of a stream: the packets, then the error that ended it (if any).
#[derive(Debug, PartialEq)]
struct Outcome {
    packets: Vec<Packet>,
    error: Option<DecodeError>,
    buffered: usize,
}

/// Feeds `bytes` to `decoder` in chunks of the given sizes (cycled), polling after each chunk.
/// Checks that an error, once returned, is returned again on every later poll.
fn feed(mut decoder: Decoder, bytes: &[u8], sizes: &[usize]) -> Outcome {
    let mut packets = Vec::new();
    let mut rest = bytes;
    let mut sizes = sizes.iter().copied().cycle();
    let mut error = None;
    while !rest.is_empty() {
        let size = sizes.next().unwrap_or(rest.len()).clamp(1, rest.len());
        let (chunk, tail) = rest.split_at(size);
        rest = tail;
        decoder.handle_bytes(chunk);
        match poll_all(&mut decoder, &mut packets) {
            Ok(()) => {}
            Err(err) => {
                error = Some(err);
                break;
            }
        }
    }
    if let Some(err) = &error {
        // The error sticks, whatever arrives afterwards.
        assert_eq!(decoder.poll_packet().as_ref(), Err(err));
        decoder.handle_bytes(rest);
        decoder.handle_bytes(&[0xC0, 0x00, 0x30, 0x03, 0x00, 0x01, b'a']);
        assert_eq!(decoder.poll_packet().as_ref(), Err(err));
        assert_eq!(decoder.poll_packet().as_ref(), Err(err));
        return Outcome {
            packets,
            error,
            buffered: 0,
        };
    }
    Outcome {
        packets,
        error,
        buffered: decoder.buffered(),
    }
}

fn poll_all(decoder: &mut Decoder, out: &mut Vec<Packet>) -> Result<(), DecodeError> {
    while let Some(packet) = decoder.poll_packet()? {
        out.push(packet);
    }
    Ok(())
}

/// Encodes a decoded packet again in `version` and decodes it with a fresh decoder of the same
/// role, after the CONNECT or CONNACK that decoder needs: the result must be equal.
fn assert_reencodes(role: Role, version: ProtocolVersion, packet: &Packet) {
    let mut packets = Vec::new();
    match (role, packet) {
        (Role::Server, Packet::Connect(_)) | (Role::Client, Packet::ConnAck(_)) => {}
        (Role::Server, _) => packets.push(Packet::Connect(Box::new(Connect::new(
            version,
            ClientId::new("c").unwrap(),
        )))),
        (Role::Client, _) => packets.push(Packet::ConnAck(Box::new(ConnAck::new(
            false,
            ReasonCode::Success,
        )))),
    }
    packets.push(packet.clone());
    let bytes = encode_all(version, &packets);
    let outcome = feed(decoder(role, version), &bytes, &[usize::MAX]);
    assert_eq!(outcome.error, None, "{role:?} {version} {packet:?}");
    assert_eq!(outcome.packets.last(), Some(packet), "{role:?} {version}");
    assert_eq!(outcome.buffered, 0);
}

/// Decodes `bytes` whole and in chunks, checks both give the same result, and that every
/// packet decoded re-encodes to itself.
fn check_arbitrary(role: Role, version: ProtocolVersion, bytes: &[u8], sizes: &[usize]) {
    let whole = feed(decoder(role, version), bytes, &[usize::MAX]);
    let chunked = feed(decoder(role, version), bytes, sizes);
    assert_eq!(whole, chunked);
    // The server learns the version from CONNECT; before it nothing decodes.
    let version = match (role, whole.packets.first()) {
        (Role::Server, Some(Packet::Connect(connect))) => connect.protocol_version,
        (Role::Server, _) => return,
        (Role::Client, _) => version,
    };
    for packet in &whole.packets {
        assert_reencodes(role, version, packet);
    }
}

/// Overwrites, inserts or removes bytes of a valid stream.
#[derive(Debug, Clone)]
enum Mutation {
    Set(usize, u8),
    Insert(usize, u8),
    Remove(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        1 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => any::<usize>().prop_map(Mutation::Remove),
    ]
}

fn mutate(bytes: &mut Vec<u8>, mutations: &[Mutation]) {
    for mutation in mutations {
        let len = bytes.len();
        match *mutation {
            Mutation::Set(i, b) if len > 0 => bytes[i % len] = b,
            Mutation::Insert(i, b) => bytes.insert(i % (len + 1), b),
            Mutation::Remove(i) if len > 0 => {
                bytes.remove(i % len);
            }
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

proptest! {
    // 256 cases by default (proptest's default); PROPTEST_CASES overrides it.
    #![proptest_config(ProptestConfig::default())]

    /// Every valid packet survives encode → decode unchanged, in one piece or in chunks.
    #[test]
    fn valid_streams_round_trip(stream in stream(), sizes in chunk_sizes()) {
        let bytes = encode_all(stream.version, &stream.packets);
        for sizes in [&[usize::MAX][..], &sizes[..], &[1][..]] {
            let outcome = feed(decoder(stream.role, stream.version), &bytes, sizes);
            prop_assert_eq!(&outcome.error, &None);
            prop_assert_eq!(&outcome.packets, &stream.packets);
            prop_assert_eq!(outcome.buffered, 0);
        }
    }

    /// The server decoder learns the version from CONNECT, however the CONNECT is split.
    #[test]
    fn server_learns_the_version(
        connect in select(VERSIONS.to_vec()).prop_flat_map(connect),
        sizes in chunk_sizes(),
    ) {
        let version = connect.protocol_version;
        let bytes = encode_all(version, &[Packet::Connect(Box::new(connect))]);
        let mut decoder = Decoder::server(DecoderLimits::PROTOCOL);
        prop_assert_eq!(decoder.protocol_version(), None);
        let outcome = {
            let mut packets = Vec::new();
            let mut start = 0;
            for size in sizes.iter().cycle() {
                if start >= bytes.len() {
                    break;
                }
                let end = bytes.len().min(start + size);
                decoder.handle_bytes(&bytes[start..end]);
                start = end;
                poll_all(&mut decoder, &mut packets).unwrap();
            }
            packets
        };
        prop_assert_eq!(outcome.len(), 1);
        prop_assert_eq!(decoder.protocol_version(), Some(version));
    }

    /// Size limits are exact: a packet of N bytes encodes under a limit of N and not N - 1
    /// (appending nothing), and decodes under a limit of N and is refused under N - 1 as soon
    /// as its fixed header is in. `encode_fitting` drops the diagnostics to fit when it can.
    #[test]
    fn size_limits_are_exact(stream in stream(), index in any::<prop::sample::Index>()) {
        let at = index.index(stream.packets.len());
        let packet = &stream.packets[at];
        let before = encode_all(stream.version, &stream.packets[..at]);
        let size = encode_all(stream.version, std::slice::from_ref(packet)).len();
        let size32 = u32::try_from(size).unwrap();

        let mut encoder = Encoder::new(stream.version);
        encoder.set_max_packet_size(size32);
        let mut buf = BytesMut::from(&b"xy"[..]);
        prop_assert_eq!(encoder.encode(packet, &mut buf), Ok(size));
        let encoded = buf.split_off(2);
        encoder.set_max_packet_size(size32 - 1);
        let mut buf = BytesMut::from(&b"xy"[..]);
        prop_assert_eq!(
            encoder.encode(packet, &mut buf),
            Err(EncodeError::PacketTooLarge { size: size as u64, max: size32 - 1 })
        );
        prop_assert_eq!(&buf[..], b"xy");

        for (max, fits) in [(size32, true), (size32 - 1, false)] {
            let mut decoder = decoder(stream.role, stream.version);
            let mut packets = Vec::new();
            decoder.handle_bytes(&before);
            poll_all(&mut decoder, &mut packets).unwrap();
            prop_assert_eq!(&packets[..], &stream.packets[..at]);
            decoder.set_limits(DecoderLimits {
                max_packet_size: max,
                max_unauthenticated_packet_size: max,
            });
            if fits {
                decoder.handle_bytes(&encoded);
                prop_assert_eq!(decoder.poll_packet(), Ok(Some(packet.clone())));
            } else {
                // Type byte and Remaining Length only: the body is never waited for.
                let header = 1 + encoded[1..].iter().position(|b| b & 0x80 == 0).unwrap() + 1;
                decoder.handle_bytes(&encoded[..header]);
                let err = decoder.poll_packet().unwrap_err();
                prop_assert_eq!(err.reason_code(), ReasonCode::PacketTooLarge);
            }
        }

        let mut stripped = packet.clone();
        if stripped.strip_diagnostics() {
            let small = encode_all(stream.version, std::slice::from_ref(&stripped)).len();
            encoder.set_max_packet_size(u32::try_from(small).unwrap());
            let mut fitting = packet.clone();
            let mut buf = BytesMut::new();
            let result = encoder.encode_fitting(&mut fitting, &mut buf);
            prop_assert!(small < size);
            prop_assert_eq!(result, Ok(small));
            prop_assert_eq!(&fitting, &stripped);
        }
    }

    /// Arbitrary bytes never panic a decoder of any role or version; the result does not
    /// depend on how the bytes are split; an error sticks; whatever decodes re-encodes.
    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..512),
        sizes in chunk_sizes(),
    ) {
        check_arbitrary(Role::Server, ProtocolVersion::V5, &bytes, &sizes);
        for version in VERSIONS {
            check_arbitrary(Role::Client, version, &bytes, &sizes);
        }
    }

    /// The same after a valid CONNECT (server) or CONNACK (client), so that the bytes reach
    /// the decoders of every packet type.
    #[test]
    fn arbitrary_bytes_after_a_valid_start(
        version in select(VERSIONS.to_vec()),
        connect in select(VERSIONS.to_vec()).prop_flat_map(connect),
        connack_accepted in any::<bool>(),
        garbage in prop::collection::vec(any::<u8>(), 0..512),
        sizes in chunk_sizes(),
    ) {
        let connect_version = connect.protocol_version;
        let mut bytes = encode_all(connect_version, &[Packet::Connect(Box::new(connect))]).to_vec();
        bytes.extend_from_slice(&garbage);
        check_arbitrary(Role::Server, connect_version, &bytes, &sizes);

        let code = if connack_accepted { ReasonCode::Success } else { ReasonCode::NotAuthorized };
        let start = Packet::ConnAck(Box::new(ConnAck::new(false, code)));
        let mut bytes = encode_all(version, &[start]).to_vec();
        bytes.extend_from_slice(&garbage);
        check_arbitrary(Role::Client, version, &bytes, &sizes);
    }

    /// Valid streams with a few bytes changed, inserted or removed: near-valid input reaches
    /// deep into every packet decoder. Nothing panics, and what still decodes re-encodes.
    #[test]
    fn mutated_streams_never_panic(
        stream in stream(),
        mutations in prop::collection::vec(mutation(), 1..4),
        sizes in chunk_sizes(),
    ) {
        let mut bytes = encode_all(stream.version, &stream.packets).to_vec();
        mutate(&mut bytes, &mutations);
        check_arbitrary(stream.role, stream.version, &bytes, &sizes);
        if stream.role == Role::Client {
            for version in VERSIONS {
                check_arbitrary(Role::Client, version, &bytes, &sizes);
            }
        }
    }
}

/// Every reason code the strategies draw from is one the encoder accepts: a guard against the
/// strategies silently producing nothing for a packet type.
#[test]
fn every_packet_kind_has_reason_codes() {
    for kind in [
        PacketType::ConnAck,
        PacketType::PubAck,
        PacketType::PubRec,
        PacketType::PubRel,
        PacketType::PubComp,
        PacketType::SubAck,
        PacketType::UnsubAck,
        PacketType::Disconnect,
        PacketType::Auth,
    ] {
        assert!(
            all_reason_codes().iter().any(|c| c.is_valid_for(kind)),
            "{kind:?}"
        );
    }
    let pre_v5_connack: Vec<_> = all_reason_codes()
        .into_iter()
        .filter(|&c| {
            c.is_valid_for(PacketType::ConnAck)
                && ConnectReturnCode::from_reason(c).map(ConnectReturnCode::to_reason) == Some(c)
        })
        .collect();
    assert_eq!(pre_v5_connack.len(), 6, "{pre_v5_connack:?}");
}
