//! The codec's error types: every decode failure carries the MQTT 5.0 reason code the receiver
//! answers with and the normative statement it breaks.

use crate::reason::ReasonCode;

/// A packet (or a stream of bytes) that breaks the MQTT specification.
///
/// The connection that produced it must be closed: for MQTT 5.0 after a DISCONNECT (or, during
/// CONNECT, a CONNACK) carrying [`DecodeError::reason_code`]; for MQTT 3.1 and 3.1.1 by closing
/// the network connection, or with the CONNACK return code given by
/// [`crate::ConnectReturnCode::from_reason`] where one exists.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("[{rule}] {detail}")]
pub struct DecodeError {
    code: ReasonCode,
    rule: &'static str,
    detail: Detail,
}

/// The human part of a [`DecodeError`].
#[derive(Debug, Clone, PartialEq, Eq)]
enum Detail {
    Text(&'static str),
    TooLarge {
        size: u64,
        max: u32,
    },
    Truncated(&'static str),
    Leftover(&'static str),
    Duplicate(&'static str),
    NotAllowed {
        property: &'static str,
        packet: &'static str,
    },
}

impl std::fmt::Display for Detail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Text(text) => f.write_str(text),
            Self::TooLarge { size, max } => {
                write!(
                    f,
                    "packet of {size} bytes exceeds the maximum packet size of {max} bytes"
                )
            }
            Self::Truncated(field) => write!(f, "packet ends inside its {field}"),
            Self::Duplicate(property) => write!(f, "{property} appears more than once"),
            Self::NotAllowed { property, packet } => {
                write!(f, "{property} is not a property of {packet}")
            }
            Self::Leftover(packet) => write!(f, "bytes left over after the fields of {packet}"),
        }
    }
}

impl DecodeError {
    /// An error with an explicit reason code.
    pub(crate) const fn new(code: ReasonCode, rule: &'static str, text: &'static str) -> Self {
        Self {
            code,
            rule,
            detail: Detail::Text(text),
        }
    }

    /// A Malformed Packet (0x81): the bytes cannot be parsed as the specification says.
    pub(crate) const fn malformed(rule: &'static str, text: &'static str) -> Self {
        Self::new(ReasonCode::MalformedPacket, rule, text)
    }

    /// A Protocol Error (0x82): the packet parses but breaks a rule of the protocol.
    pub(crate) const fn protocol(rule: &'static str, text: &'static str) -> Self {
        Self::new(ReasonCode::ProtocolError, rule, text)
    }

    /// A packet larger than the receiver's maximum packet size (0x95).
    pub(crate) const fn too_large(rule: &'static str, size: u64, max: u32) -> Self {
        Self {
            code: ReasonCode::PacketTooLarge,
            rule,
            detail: Detail::TooLarge { size, max },
        }
    }

    /// A field that runs past the end of the packet (its Remaining Length, §2.1.4).
    pub(crate) const fn truncated(field: &'static str) -> Self {
        Self {
            code: ReasonCode::MalformedPacket,
            rule: "MQTT-5 §2.1.4",
            detail: Detail::Truncated(field),
        }
    }

    /// Bytes left after the last field a packet may have.
    pub(crate) const fn leftover(packet: &'static str) -> Self {
        Self {
            code: ReasonCode::MalformedPacket,
            rule: "MQTT-5 §2.1.4",
            detail: Detail::Leftover(packet),
        }
    }

    /// A property that may appear once appearing again.
    pub(crate) const fn duplicate(property: &'static str) -> Self {
        Self {
            code: ReasonCode::ProtocolError,
            rule: "MQTT-5 §2.2.2.2",
            detail: Detail::Duplicate(property),
        }
    }

    /// A property identifier that is not valid for the packet (§2.2.2.2: Malformed Packet).
    pub(crate) const fn not_allowed(property: &'static str, packet: &'static str) -> Self {
        Self {
            code: ReasonCode::MalformedPacket,
            rule: "MQTT-5 §2.2.2.2",
            detail: Detail::NotAllowed { property, packet },
        }
    }

    /// The MQTT 5.0 reason code to send in the DISCONNECT (or CONNACK) that closes the
    /// connection.
    pub fn reason_code(&self) -> ReasonCode {
        self.code
    }

    /// The normative statement (for example `MQTT-3.3.2-2`) or specification section the packet
    /// breaks.
    pub fn rule(&self) -> &'static str {
        self.rule
    }
}

/// A packet that cannot be encoded as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The encoded packet would exceed the peer's Maximum Packet Size. The caller may drop the
    /// Reason String and User Properties (see [`crate::Packet::strip_diagnostics`]) and try
    /// again, or, for a PUBLISH, drop the message ([MQTT-3.1.2-25]).
    #[error("packet of {size} bytes exceeds the peer's maximum packet size of {max} bytes")]
    PacketTooLarge {
        /// Size of the whole encoded packet in bytes.
        size: u64,
        /// The limit it had to fit in.
        max: u32,
    },
    /// The packet or one of its fields does not exist in the protocol version asked for.
    #[error("{0} cannot be sent with MQTT {1}")]
    NotInVersion(&'static str, crate::ProtocolVersion),
    /// A field's value is outside what the wire format can carry or what the packet allows.
    #[error("{0}")]
    Invalid(&'static str),
}
