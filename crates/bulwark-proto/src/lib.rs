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
    PubRec, PubRel, Publish, SubAck, Subscribe, Subscription, UnsubAck, Unsubscribe, Will,
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
