//! PUBLISH (§3.3) and its acknowledgements PUBACK, PUBREC, PUBREL, PUBCOMP (§3.4 to §3.7).

use bytes::{BufMut, Bytes, BytesMut};

use crate::properties::{self, AckProperties, PublishProperties};
use crate::wire::{Reader, put_string};
use crate::{
    DecodeError, EncodeError, PacketId, PacketType, ProtocolVersion, QoS, ReasonCode, Role,
    TopicName,
};

/// An application message, in either direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// Set on a re-delivery of a QoS 1 or 2 message.
    pub dup: bool,
    /// Delivery guarantee.
    pub qos: QoS,
    /// Whether the server keeps the message for future subscribers.
    pub retain: bool,
    /// The topic; empty only in MQTT 5.0 with a Topic Alias.
    pub topic: TopicName,
    /// Present exactly when `qos` is 1 or 2.
    pub packet_id: Option<PacketId>,
    /// MQTT 5.0 properties.
    pub properties: PublishProperties,
    /// The application payload, shared with the buffer it was read from.
    pub payload: Bytes,
}

impl Publish {
    /// A QoS 0 message without properties.
    pub fn new(topic: TopicName, payload: Bytes) -> Self {
        Self {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic,
            packet_id: None,
            properties: PublishProperties::default(),
            payload,
        }
    }

    #[inline]
    pub(crate) fn decode(
        r: &mut Reader,
        flags: u8,
        version: ProtocolVersion,
        role: Role,
    ) -> Result<Self, DecodeError> {
        let dup = flags & 0b1000 != 0;
        let retain = flags & 0b0001 != 0;
        let qos = QoS::from_u8((flags >> 1) & 0b11)
            .ok_or(DecodeError::malformed("MQTT-3.3.1-4", "PUBLISH has QoS 3"))?;
        if dup && qos == QoS::AtMostOnce {
            return Err(DecodeError::malformed(
                "MQTT-3.3.1-2",
                "DUP flag set on a QoS 0 PUBLISH",
            ));
        }
        let topic = r.string("topic name")?;
        // A client assigns the identifiers of what it sends [MQTT-2.2.1-3], a server those of
        // the PUBLISH packets it sends [MQTT-2.2.1-4].
        let id_rule = match role {
            Role::Server => "MQTT-2.2.1-3",
            Role::Client => "MQTT-2.2.1-4",
        };
        let packet_id = match qos {
            QoS::AtMostOnce => None,
            QoS::AtLeastOnce | QoS::ExactlyOnce => Some(packet_id(r, id_rule)?),
        };
        let properties: PublishProperties = if version.is_v5() {
            properties::decode(r)?
        } else {
            PublishProperties::default()
        };
        if role == Role::Server && !properties.subscription_identifiers.is_empty() {
            return Err(DecodeError::protocol(
                "MQTT-3.3.4-6",
                "PUBLISH from a client carries a Subscription Identifier",
            ));
        }
        let topic = if topic.is_empty() {
            if !version.is_v5() {
                return Err(DecodeError::malformed(
                    "MQTT-4.7.3-1",
                    "topic name is empty",
                ));
            }
            if properties.topic_alias.is_none() {
                return Err(DecodeError::protocol(
                    "MQTT-5 §3.3.2.1",
                    "PUBLISH has an empty topic name and no Topic Alias",
                ));
            }
            TopicName::empty_for_alias()
        } else {
            TopicName::from_string_allow_empty(topic)?
        };
        let payload = r.rest();
        Ok(Self {
            dup,
            qos,
            retain,
            topic,
            packet_id,
            properties,
            payload,
        })
    }

    pub(crate) fn flags(&self) -> u8 {
        publish_flags(self, self.dup)
    }

    pub(crate) fn body_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        publish_body_len(self, self.packet_id, self.dup, version)
    }

    pub(crate) fn write_body(&self, version: ProtocolVersion, buf: &mut BytesMut) {
        write_publish_body(self, self.packet_id, version, buf);
    }
}

/// A PUBLISH whose body is shared (between the subscribers of one message, say) sent with its
/// own packet identifier and DUP flag; those of `publish` itself are ignored. Encoding it is
/// the same as encoding a copy of `publish` with these two fields replaced.
#[derive(Debug, Clone, Copy)]
pub struct PublishWithId<'a> {
    /// Everything but the packet identifier and DUP.
    pub publish: &'a Publish,
    /// Present exactly when the QoS is 1 or 2.
    pub packet_id: Option<PacketId>,
    /// Set on a re-delivery.
    pub dup: bool,
}

impl PublishWithId<'_> {
    pub(crate) fn flags(&self) -> u8 {
        publish_flags(self.publish, self.dup)
    }

    pub(crate) fn body_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        publish_body_len(self.publish, self.packet_id, self.dup, version)
    }

    pub(crate) fn write_body(&self, version: ProtocolVersion, buf: &mut BytesMut) {
        write_publish_body(self.publish, self.packet_id, version, buf);
    }
}

fn publish_flags(p: &Publish, dup: bool) -> u8 {
    (u8::from(dup) << 3) | (p.qos.as_u8() << 1) | u8::from(p.retain)
}

fn publish_body_len(
    p: &Publish,
    packet_id: Option<PacketId>,
    dup: bool,
    version: ProtocolVersion,
) -> Result<usize, EncodeError> {
    if (p.qos == QoS::AtMostOnce) != packet_id.is_none() {
        return Err(EncodeError::Invalid(
            "a PUBLISH has a packet identifier exactly when its QoS is 1 or 2",
        ));
    }
    if dup && p.qos == QoS::AtMostOnce {
        return Err(EncodeError::Invalid(
            "the DUP flag is never set on QoS 0 [MQTT-3.3.1-2]",
        ));
    }
    if p.topic.is_empty() && (!version.is_v5() || p.properties.topic_alias.is_none()) {
        return Err(EncodeError::Invalid(
            "an empty topic name needs a Topic Alias",
        ));
    }
    let mut len = 2 + p.topic.as_mqtt_str().len() + p.payload.len();
    if packet_id.is_some() {
        len += 2;
    }
    if version.is_v5() {
        len += properties::encoded_len(&p.properties)?;
    }
    Ok(len)
}

fn write_publish_body(
    p: &Publish,
    packet_id: Option<PacketId>,
    version: ProtocolVersion,
    buf: &mut BytesMut,
) {
    put_string(buf, p.topic.as_mqtt_str());
    if let Some(id) = packet_id {
        buf.put_u16(id.get());
    }
    if version.is_v5() {
        properties::write(&p.properties, buf);
    }
    buf.put_slice(&p.payload);
}

/// Reads a packet identifier that must not be zero; `rule` is the statement a zero breaks for
/// this packet.
pub(crate) fn packet_id(r: &mut Reader, rule: &'static str) -> Result<PacketId, DecodeError> {
    PacketId::new(r.u16("packet identifier")?)
        .ok_or(DecodeError::protocol(rule, "packet identifier is 0"))
}

macro_rules! publish_response {
    ($(#[$doc:meta])* $name:ident, $kind:ident, $rule:literal, $length_rule_311:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $name {
            /// The identifier of the PUBLISH (or PUBREL) it answers.
            pub packet_id: PacketId,
            /// The outcome (MQTT 5.0; always Success before).
            pub reason_code: ReasonCode,
            /// MQTT 5.0 properties.
            pub properties: AckProperties,
        }

        impl $name {
            /// A successful response without properties.
            pub fn new(packet_id: PacketId) -> Self {
                Self {
                    packet_id,
                    reason_code: ReasonCode::Success,
                    properties: AckProperties::default(),
                }
            }

            pub(crate) fn decode(
                r: &mut Reader,
                version: ProtocolVersion,
            ) -> Result<Self, DecodeError> {
                let rules = ResponseRules { reason: $rule, length_311: $length_rule_311 };
                let (packet_id, reason_code, properties) =
                    decode_response(r, version, PacketType::$kind, rules)?;
                Ok(Self { packet_id, reason_code, properties })
            }

            pub(crate) fn body_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
                response_len(version, PacketType::$kind, self.reason_code, &self.properties)
            }

            pub(crate) fn write_body(&self, version: ProtocolVersion, buf: &mut BytesMut) {
                write_response(version, self.packet_id, self.reason_code, &self.properties, buf);
            }
        }
    };
}

publish_response!(
    /// Acknowledges a QoS 1 PUBLISH.
    PubAck,
    PubAck,
    "MQTT-3.4.2-1",
    "MQTT-3.1.1 §3.4.1"
);
publish_response!(
    /// First answer to a QoS 2 PUBLISH.
    PubRec,
    PubRec,
    "MQTT-3.5.2-1",
    "MQTT-3.1.1 §3.5.1"
);
publish_response!(
    /// Releases a QoS 2 message after PUBREC.
    PubRel,
    PubRel,
    "MQTT-3.6.2-1",
    "MQTT-3.1.1 §3.6.1"
);
publish_response!(
    /// Completes a QoS 2 exchange.
    PubComp,
    PubComp,
    "MQTT-3.7.2-1",
    "MQTT-3.1.1 §3.7.1"
);

/// The statements a PUBACK, PUBREC, PUBREL or PUBCOMP is checked against.
#[derive(Debug, Clone, Copy)]
struct ResponseRules {
    /// The sender uses one of the packet's reason codes (MQTT 5.0).
    reason: &'static str,
    /// The Remaining Length is exactly 2 (MQTT 3.1 and 3.1.1).
    length_311: &'static str,
}

fn decode_response(
    r: &mut Reader,
    version: ProtocolVersion,
    kind: PacketType,
    rules: ResponseRules,
) -> Result<(PacketId, ReasonCode, AckProperties), DecodeError> {
    // The identifier of the PUBLISH being answered, which is never 0.
    let packet_id = packet_id(r, "MQTT-2.2.1-5")?;
    if !version.is_v5() {
        if !r.is_empty() {
            return Err(DecodeError::malformed(
                rules.length_311,
                "acknowledgement has a Remaining Length other than 2",
            ));
        }
        return Ok((packet_id, ReasonCode::Success, AckProperties::default()));
    }
    let mut reason_code = ReasonCode::Success;
    let mut properties = AckProperties::default();
    // The short forms of §3.4.2.1 and §3.4.2.2.1: Remaining Length 2 means Success without
    // properties, 3 a reason code without properties.
    if !r.is_empty() {
        reason_code = ReasonCode::from_u8(r.u8("reason code")?)
            .filter(|code| code.is_valid_for(kind))
            .ok_or(DecodeError::protocol(
                rules.reason,
                "reason code not allowed in this packet",
            ))?;
        if !r.is_empty() {
            properties = properties::decode(r)?;
        }
    }
    r.finish(kind.name())?;
    Ok((packet_id, reason_code, properties))
}

pub(crate) fn response_len(
    version: ProtocolVersion,
    kind: PacketType,
    reason_code: ReasonCode,
    props: &AckProperties,
) -> Result<usize, EncodeError> {
    if !reason_code.is_valid_for(kind) {
        return Err(EncodeError::Invalid(
            "reason code not allowed in this packet",
        ));
    }
    if !version.is_v5() {
        return Ok(2);
    }
    // The short forms of §3.4.2.1: the reason code and the property length may be left out.
    Ok(match (reason_code, props.is_empty()) {
        (ReasonCode::Success, true) => 2,
        (_, true) => 3,
        (_, false) => 3 + properties::encoded_len(props)?,
    })
}

fn write_response(
    version: ProtocolVersion,
    packet_id: PacketId,
    reason_code: ReasonCode,
    props: &AckProperties,
    buf: &mut BytesMut,
) {
    buf.put_u16(packet_id.get());
    if !version.is_v5() {
        return;
    }
    if reason_code != ReasonCode::Success || !props.is_empty() {
        buf.put_u8(reason_code.as_u8());
    }
    if !props.is_empty() {
        properties::write(props, buf);
    }
}
