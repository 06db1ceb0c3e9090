//! Small protocol values as types that are valid once built.

use std::num::{NonZeroU16, NonZeroU32};

use crate::DecodeError;

/// The MQTT protocol version a connection speaks, from CONNECT's protocol name and level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProtocolVersion {
    /// MQTT 3.1: protocol name `MQIsdp`, level 3.
    V3_1,
    /// MQTT 3.1.1: protocol name `MQTT`, level 4.
    V3_1_1,
    /// MQTT 5.0: protocol name `MQTT`, level 5.
    V5,
}

impl ProtocolVersion {
    /// The protocol level byte of CONNECT.
    pub const fn level(self) -> u8 {
        match self {
            Self::V3_1 => 3,
            Self::V3_1_1 => 4,
            Self::V5 => 5,
        }
    }

    /// The protocol name CONNECT carries for this version.
    pub const fn protocol_name(self) -> &'static str {
        match self {
            Self::V3_1 => "MQIsdp",
            Self::V3_1_1 | Self::V5 => "MQTT",
        }
    }

    /// True for MQTT 5.0, the only version with properties, reason codes and AUTH.
    pub const fn is_v5(self) -> bool {
        matches!(self, Self::V5)
    }
}

impl std::fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::V3_1 => "3.1",
            Self::V3_1_1 => "3.1.1",
            Self::V5 => "5.0",
        })
    }
}

/// Quality of service of a message or subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[repr(u8)]
pub enum QoS {
    /// At most once delivery.
    #[default]
    AtMostOnce = 0,
    /// At least once delivery.
    AtLeastOnce = 1,
    /// Exactly once delivery.
    ExactlyOnce = 2,
}

impl QoS {
    /// The QoS for the two bits of a fixed header or options byte; 3 is reserved.
    pub const fn from_u8(value: u8) -> Option<Self> {
        match value {
            0 => Some(Self::AtMostOnce),
            1 => Some(Self::AtLeastOnce),
            2 => Some(Self::ExactlyOnce),
            _ => None,
        }
    }

    /// The wire value.
    pub const fn as_u8(self) -> u8 {
        self as u8
    }
}

/// A packet identifier: never zero ([MQTT-2.2.1-3]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PacketId(NonZeroU16);

impl PacketId {
    /// The identifier, or `None` for zero.
    pub const fn new(value: u16) -> Option<Self> {
        match NonZeroU16::new(value) {
            Some(id) => Some(Self(id)),
            None => None,
        }
    }

    /// The wire value.
    pub const fn get(self) -> u16 {
        self.0.get()
    }
}

impl std::fmt::Display for PacketId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// The largest value of a Variable Byte Integer (§1.5.5), and of a Subscription Identifier.
pub const VARINT_MAX: u32 = 268_435_455;

/// A Subscription Identifier: 1 to 268,435,455 (§3.8.2.1.2; 0 is a Protocol Error).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubscriptionId(NonZeroU32);

impl SubscriptionId {
    /// The identifier, or `None` for 0 or a value above [`VARINT_MAX`].
    pub const fn new(value: u32) -> Option<Self> {
        if value > VARINT_MAX {
            return None;
        }
        match NonZeroU32::new(value) {
            Some(id) => Some(Self(id)),
            None => None,
        }
    }

    /// The wire value.
    pub const fn get(self) -> u32 {
        self.0.get()
    }
}

/// The control packet types (§2.1.2). 0 is reserved; 15 (AUTH) exists only in MQTT 5.0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PacketType {
    /// Connection request, client to server.
    Connect = 1,
    /// Connect acknowledgment, server to client.
    ConnAck = 2,
    /// Publish message, both directions.
    Publish = 3,
    /// Publish acknowledgment (QoS 1).
    PubAck = 4,
    /// Publish received (QoS 2 part 1).
    PubRec = 5,
    /// Publish release (QoS 2 part 2).
    PubRel = 6,
    /// Publish complete (QoS 2 part 3).
    PubComp = 7,
    /// Subscribe request, client to server.
    Subscribe = 8,
    /// Subscribe acknowledgment, server to client.
    SubAck = 9,
    /// Unsubscribe request, client to server.
    Unsubscribe = 10,
    /// Unsubscribe acknowledgment, server to client.
    UnsubAck = 11,
    /// Ping request, client to server.
    PingReq = 12,
    /// Ping response, server to client.
    PingResp = 13,
    /// Disconnect notification (client to server only before MQTT 5.0).
    Disconnect = 14,
    /// Authentication exchange (MQTT 5.0).
    Auth = 15,
}

impl PacketType {
    /// The type for the high nibble of the first byte; 0 is reserved.
    pub const fn from_nibble(value: u8) -> Option<Self> {
        Some(match value {
            1 => Self::Connect,
            2 => Self::ConnAck,
            3 => Self::Publish,
            4 => Self::PubAck,
            5 => Self::PubRec,
            6 => Self::PubRel,
            7 => Self::PubComp,
            8 => Self::Subscribe,
            9 => Self::SubAck,
            10 => Self::Unsubscribe,
            11 => Self::UnsubAck,
            12 => Self::PingReq,
            13 => Self::PingResp,
            14 => Self::Disconnect,
            15 => Self::Auth,
            _ => return None,
        })
    }

    /// The packet's name as the specification writes it.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Connect => "CONNECT",
            Self::ConnAck => "CONNACK",
            Self::Publish => "PUBLISH",
            Self::PubAck => "PUBACK",
            Self::PubRec => "PUBREC",
            Self::PubRel => "PUBREL",
            Self::PubComp => "PUBCOMP",
            Self::Subscribe => "SUBSCRIBE",
            Self::SubAck => "SUBACK",
            Self::Unsubscribe => "UNSUBSCRIBE",
            Self::UnsubAck => "UNSUBACK",
            Self::PingReq => "PINGREQ",
            Self::PingResp => "PINGRESP",
            Self::Disconnect => "DISCONNECT",
            Self::Auth => "AUTH",
        }
    }

    /// The fixed-header flags every packet but PUBLISH must carry ([MQTT-2.1.3-1], §2.1.3).
    pub(crate) const fn required_flags(self) -> u8 {
        match self {
            Self::PubRel | Self::Subscribe | Self::Unsubscribe => 0b0010,
            _ => 0,
        }
    }

    /// Whether a peer in `role` may receive this packet type in `version`.
    pub const fn may_be_received_by(self, role: Role, version: ProtocolVersion) -> bool {
        match self {
            Self::Connect | Self::Subscribe | Self::Unsubscribe | Self::PingReq => {
                matches!(role, Role::Server)
            }
            Self::ConnAck | Self::SubAck | Self::UnsubAck | Self::PingResp => {
                matches!(role, Role::Client)
            }
            Self::Publish | Self::PubAck | Self::PubRec | Self::PubRel | Self::PubComp => true,
            // Before 5.0 only the client sends DISCONNECT.
            Self::Disconnect => version.is_v5() || matches!(role, Role::Server),
            Self::Auth => version.is_v5(),
        }
    }
}

impl std::fmt::Display for PacketType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Which end of the connection a codec works for: the server decodes what clients send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The broker: receives CONNECT, SUBSCRIBE, ...; sends CONNACK, SUBACK, ...
    Server,
    /// A client (scanner, load generator): receives CONNACK, SUBACK, ...
    Client,
}

/// Retain Handling subscription option (MQTT 5.0, §3.8.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum RetainHandling {
    /// Send retained messages at the time of the subscribe.
    #[default]
    SendOnSubscribe = 0,
    /// Send retained messages only if the subscription did not already exist.
    SendIfNew = 1,
    /// Do not send retained messages.
    DoNotSend = 2,
}

/// The options byte of one SUBSCRIBE entry (§3.8.3.1). Only `qos` exists before MQTT 5.0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SubscriptionOptions {
    /// Maximum QoS the server may deliver with.
    pub qos: QoS,
    /// Do not deliver messages published by this same client.
    pub no_local: bool,
    /// Keep the RETAIN flag as published on forwarded messages.
    pub retain_as_published: bool,
    /// Whether retained messages are sent at subscribe time.
    pub retain_handling: RetainHandling,
}

impl SubscriptionOptions {
    /// Options with only a maximum QoS, as MQTT 3.1.1 has.
    pub const fn qos(qos: QoS) -> Self {
        Self {
            qos,
            no_local: false,
            retain_as_published: false,
            retain_handling: RetainHandling::SendOnSubscribe,
        }
    }

    pub(crate) fn to_byte(self, version: ProtocolVersion) -> u8 {
        let mut byte = self.qos.as_u8();
        if version.is_v5() {
            byte |= u8::from(self.no_local) << 2;
            byte |= u8::from(self.retain_as_published) << 3;
            byte |= (self.retain_handling as u8) << 4;
        }
        byte
    }

    pub(crate) fn from_byte(byte: u8, version: ProtocolVersion) -> Result<Self, DecodeError> {
        if version.is_v5() {
            if byte & 0b1100_0000 != 0 {
                return Err(DecodeError::malformed(
                    "MQTT-3.8.3-5",
                    "reserved bits of the subscription options are not zero",
                ));
            }
        } else if byte & 0b1111_1100 != 0 {
            // MQTT 3.1.1 numbers this statement "MQTT-3-8.3-4" (sic); the spelling keeps it apart
            // from MQTT 5.0's [MQTT-3.8.3-4] on No Local.
            return Err(DecodeError::malformed(
                "MQTT-3-8.3-4",
                "reserved bits of the requested QoS byte are not zero",
            ));
        }
        let qos = QoS::from_u8(byte & 0b11).ok_or(if version.is_v5() {
            DecodeError::protocol("MQTT-5 §3.8.3.1", "subscription asks for Maximum QoS 3")
        } else {
            DecodeError::malformed("MQTT-3-8.3-4", "subscription asks for QoS 3")
        })?;
        let retain_handling = match (byte >> 4) & 0b11 {
            0 => RetainHandling::SendOnSubscribe,
            1 => RetainHandling::SendIfNew,
            2 => RetainHandling::DoNotSend,
            _ => {
                return Err(DecodeError::protocol(
                    "MQTT-5 §3.8.3.1",
                    "Retain Handling is 3, a reserved value",
                ));
            }
        };
        Ok(Self {
            qos,
            no_local: byte & 0b0100 != 0,
            retain_as_published: byte & 0b1000 != 0,
            retain_handling,
        })
    }
}

/// Payload Format Indicator (§3.3.2.3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum PayloadFormat {
    /// Unspecified bytes.
    #[default]
    Unspecified = 0,
    /// UTF-8 encoded character data.
    Utf8 = 1,
}
