//! `bulwark-proto`: the MQTT 3.1, 3.1.1 and 5.0 wire protocol, sans I/O.
//!
//! Packet types for all fifteen control packets, typed properties, reason codes, and the
//! newtypes ([`TopicName`], [`TopicFilter`], [`ClientId`], [`PacketId`], ...) that are valid
//! once built. A streaming [`Decoder`] turns bytes from the network into [`Packet`]s for the
//! server or the client role, enforcing every malformed-packet and protocol-error rule of the
//! specifications it can check on one packet; an [`Encoder`] writes packets and never exceeds
//! the peer's Maximum Packet Size. Payloads and strings share the input buffer ([`bytes::Bytes`]).
//!
//! This crate must never depend on an async runtime, a socket or a clock: it is pure
//! computation on bytes, so that the broker, the scanner, the load generator and the fuzzers
//! share one codec. Bytes from the network never make it panic.
//!
//! # Example
//!
//! A server-side decoder fed a CONNECT and a PUBLISH split across two reads, then a refusal:
//!
//! ```
//! use bulwark_proto::{Decoder, DecoderLimits, Encoder, Packet, ProtocolVersion, ReasonCode};
//! use bytes::BytesMut;
//!
//! let mut decoder = Decoder::server(DecoderLimits::default());
//! // CONNECT (MQTT 5.0, client id "abc"), then half of a QoS 0 PUBLISH to "a/b".
//! decoder.handle_bytes(b"\x10\x10\x00\x04MQTT\x05\x02\x00\x3c\x00\x00\x03abc\x30\x08\x00\x03a/");
//! let Ok(Some(Packet::Connect(connect))) = decoder.poll_packet() else { panic!() };
//! assert_eq!(decoder.protocol_version(), Some(ProtocolVersion::V5));
//! assert_eq!(connect.client_id.as_str(), "abc");
//! assert_eq!(decoder.poll_packet(), Ok(None)); // the PUBLISH is not complete yet
//! decoder.set_authenticated();
//! decoder.handle_bytes(b"b\x00hi");
//! let Ok(Some(Packet::Publish(publish))) = decoder.poll_packet() else { panic!() };
//! assert_eq!((publish.topic.as_str(), &publish.payload[..]), ("a/b", &b"hi"[..]));
//!
//! // A wildcard in a topic name: refused, naming the rule and the reason code.
//! decoder.handle_bytes(b"\x30\x06\x00\x03a/#\x00");
//! let err = decoder.poll_packet().unwrap_err();
//! assert_eq!(err.to_string(), "[MQTT-3.3.2-2] topic name contains a wildcard character");
//! assert_eq!(err.reason_code(), ReasonCode::MalformedPacket);
//!
//! // Encoding for a peer whose Maximum Packet Size is 8 bytes.
//! let mut encoder = Encoder::new(ProtocolVersion::V5);
//! encoder.set_max_packet_size(8);
//! let mut out = BytesMut::new();
//! assert!(encoder.encode(&publish, &mut out).is_err());
//! assert!(out.is_empty());
//! ```
#![forbid(unsafe_code)]

mod codec;
mod error;
mod packet;
mod properties;
mod reason;
mod topic;
mod types;
mod wire;

pub use codec::{Decoder, DecoderLimits, Encoder};
pub use error::{DecodeError, EncodeError};
pub use packet::{
    Auth, ConnAck, Connect, Disconnect, Encode, PROTOCOL_MAX_PACKET_SIZE, Packet, PubAck, PubComp,
    PubRec, PubRel, Publish, PublishWithId, SubAck, Subscribe, Subscription, UnsubAck, Unsubscribe,
    Will,
};
pub use properties::{
    AckProperties, AuthProperties, ConnAckProperties, ConnectProperties, DisconnectProperties,
    PublishProperties, SubscribeProperties, UnsubscribeProperties, UserProperty, WillProperties,
};
pub use reason::{ConnectReturnCode, ReasonCode};
pub use topic::{ClientId, MqttString, TopicFilter, TopicName};
pub use types::{
    PacketId, PacketType, PayloadFormat, ProtocolVersion, QoS, RetainHandling, Role,
    SubscriptionId, SubscriptionOptions, VARINT_MAX,
};
