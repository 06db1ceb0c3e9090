//! SUBSCRIBE (§3.8), SUBACK (§3.9), UNSUBSCRIBE (§3.10) and UNSUBACK (§3.11).

use bytes::{BufMut, BytesMut};

use super::publish::packet_id;
use crate::properties::{self, AckProperties, SubscribeProperties, UnsubscribeProperties};
use crate::wire::{Reader, put_string};
use crate::{
    DecodeError, EncodeError, PacketId, PacketType, ProtocolVersion, ReasonCode,
    SubscriptionOptions, TopicFilter,
};

/// One entry of a SUBSCRIBE: a filter and its options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// What to subscribe to.
    pub filter: TopicFilter,
    /// QoS and, for MQTT 5.0, the other subscription options.
    pub options: SubscriptionOptions,
}

/// A subscription request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    /// Identifier echoed by the SUBACK.
    pub packet_id: PacketId,
    /// MQTT 5.0 properties.
    pub properties: SubscribeProperties,
    /// At least one subscription ([MQTT-3.8.3-2]).
    pub subscriptions: Vec<Subscription>,
}

impl Subscribe {
    pub(crate) fn decode(r: &mut Reader, version: ProtocolVersion) -> Result<Self, DecodeError> {
        let packet_id = packet_id(r, "MQTT-2.2.1-3")?;
        let properties = if version.is_v5() {
            properties::decode(r)?
        } else {
            SubscribeProperties::default()
        };
        let mut subscriptions = Vec::new();
        while !r.is_empty() {
            let filter = TopicFilter::from_string(r.string("topic filter")?)?;
            let options = SubscriptionOptions::from_byte(r.u8("subscription options")?, version)?;
            if options.no_local && filter.is_shared() {
                return Err(DecodeError::protocol(
                    "MQTT-3.8.3-4",
                    "No Local is set on a shared subscription",
                ));
            }
            subscriptions.push(Subscription { filter, options });
        }
        if subscriptions.is_empty() {
            return Err(DecodeError::protocol(
                "MQTT-3.8.3-2",
                "SUBSCRIBE carries no topic filter",
            ));
        }
        Ok(Self {
            packet_id,
            properties,
            subscriptions,
        })
    }

    pub(crate) fn body_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        if self.subscriptions.is_empty() {
            return Err(EncodeError::Invalid(
                "SUBSCRIBE needs at least one topic filter",
            ));
        }
        let mut len = 2;
        if version.is_v5() {
            len += properties::encoded_len(&self.properties)?;
        }
        for sub in &self.subscriptions {
            len += 2 + sub.filter.as_mqtt_str().len() + 1;
        }
        Ok(len)
    }

    pub(crate) fn write_body(&self, version: ProtocolVersion, buf: &mut BytesMut) {
        buf.put_u16(self.packet_id.get());
        if version.is_v5() {
            properties::write(&self.properties, buf);
        }
        for sub in &self.subscriptions {
            put_string(buf, sub.filter.as_mqtt_str());
            buf.put_u8(sub.options.to_byte(version));
        }
    }
}

/// The answer to SUBSCRIBE: one reason code per requested filter, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    /// The SUBSCRIBE's identifier.
    pub packet_id: PacketId,
    /// MQTT 5.0 properties.
    pub properties: AckProperties,
    /// Granted QoS or failure per filter; before 5.0 every failure is sent as 0x80.
    pub reason_codes: Vec<ReasonCode>,
}

impl SubAck {
    pub(crate) fn decode(r: &mut Reader, version: ProtocolVersion) -> Result<Self, DecodeError> {
        // The identifier of the SUBSCRIBE being answered, which is never 0.
        let packet_id = packet_id(r, "MQTT-2.2.1-6")?;
        let properties = if version.is_v5() {
            properties::decode(r)?
        } else {
            AckProperties::default()
        };
        let mut reason_codes = Vec::with_capacity(r.remaining());
        while !r.is_empty() {
            let byte = r.u8("reason code")?;
            let code = ReasonCode::from_u8(byte).filter(|code| {
                if version.is_v5() {
                    code.is_valid_for(PacketType::SubAck)
                } else {
                    matches!(byte, 0x00 | 0x01 | 0x02 | 0x80)
                }
            });
            reason_codes.push(code.ok_or(DecodeError::protocol(
                "MQTT-3.9.3-2",
                "SUBACK carries a reason code it may not",
            ))?);
        }
        if reason_codes.is_empty() {
            return Err(DecodeError::protocol(
                "MQTT-3.8.4-6",
                "SUBACK carries no reason code",
            ));
        }
        Ok(Self {
            packet_id,
            properties,
            reason_codes,
        })
    }

    pub(crate) fn body_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        if self
            .reason_codes
            .iter()
            .any(|code| !code.is_valid_for(PacketType::SubAck))
        {
            return Err(EncodeError::Invalid("reason code not allowed in SUBACK"));
        }
        let props = if version.is_v5() {
            properties::encoded_len(&self.properties)?
        } else {
            0
        };
        Ok(2 + props + self.reason_codes.len())
    }

    pub(crate) fn write_body(&self, version: ProtocolVersion, buf: &mut BytesMut) {
        buf.put_u16(self.packet_id.get());
        if version.is_v5() {
            properties::write(&self.properties, buf);
        }
        for code in &self.reason_codes {
            let byte = if version.is_v5() || !code.is_error() {
                code.as_u8()
            } else {
                0x80
            };
            buf.put_u8(byte);
        }
    }
}

/// An unsubscribe request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    /// Identifier echoed by the UNSUBACK.
    pub packet_id: PacketId,
    /// MQTT 5.0 properties.
    pub properties: UnsubscribeProperties,
    /// At least one filter ([MQTT-3.10.3-2]).
    pub filters: Vec<TopicFilter>,
}

impl Unsubscribe {
    pub(crate) fn decode(r: &mut Reader, version: ProtocolVersion) -> Result<Self, DecodeError> {
        let packet_id = packet_id(r, "MQTT-2.2.1-3")?;
        let properties = if version.is_v5() {
            properties::decode(r)?
        } else {
            UnsubscribeProperties::default()
        };
        let mut filters = Vec::new();
        while !r.is_empty() {
            filters.push(TopicFilter::from_string(r.string("topic filter")?)?);
        }
        if filters.is_empty() {
            return Err(DecodeError::protocol(
                "MQTT-3.10.3-2",
                "UNSUBSCRIBE carries no topic filter",
            ));
        }
        Ok(Self {
            packet_id,
            properties,
            filters,
        })
    }

    pub(crate) fn body_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        if self.filters.is_empty() {
            return Err(EncodeError::Invalid(
                "UNSUBSCRIBE needs at least one topic filter",
            ));
        }
        let mut len = 2;
        if version.is_v5() {
            len += properties::encoded_len(&self.properties)?;
        }
        for filter in &self.filters {
            len += 2 + filter.as_mqtt_str().len();
        }
        Ok(len)
    }

    pub(crate) fn write_body(&self, version: ProtocolVersion, buf: &mut BytesMut) {
        buf.put_u16(self.packet_id.get());
        if version.is_v5() {
            properties::write(&self.properties, buf);
        }
        for filter in &self.filters {
            put_string(buf, filter.as_mqtt_str());
        }
    }
}

/// The answer to UNSUBSCRIBE. MQTT 5.0 carries one reason code per filter; earlier versions
/// carry none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubAck {
    /// The UNSUBSCRIBE's identifier.
    pub packet_id: PacketId,
    /// MQTT 5.0 properties.
    pub properties: AckProperties,
    /// MQTT 5.0 outcome per filter, in order; empty before 5.0.
    pub reason_codes: Vec<ReasonCode>,
}

impl UnsubAck {
    pub(crate) fn decode(r: &mut Reader, version: ProtocolVersion) -> Result<Self, DecodeError> {
        // The identifier of the UNSUBSCRIBE being answered, which is never 0.
        let packet_id = packet_id(r, "MQTT-2.2.1-6")?;
        if !version.is_v5() {
            if !r.is_empty() {
                return Err(DecodeError::malformed(
                    "MQTT-3.1.1 §3.11.1",
                    "MQTT 3.1.1 UNSUBACK has a Remaining Length other than 2",
                ));
            }
            return Ok(Self {
                packet_id,
                properties: AckProperties::default(),
                reason_codes: Vec::new(),
            });
        }
        let properties = properties::decode(r)?;
        let mut reason_codes = Vec::with_capacity(r.remaining());
        while !r.is_empty() {
            let code = ReasonCode::from_u8(r.u8("reason code")?)
                .filter(|code| code.is_valid_for(PacketType::UnsubAck))
                .ok_or(DecodeError::protocol(
                    "MQTT-3.11.3-2",
                    "UNSUBACK carries a reason code it may not",
                ))?;
            reason_codes.push(code);
        }
        // One reason code for each Topic Filter of the UNSUBSCRIBE, which has at least one.
        if reason_codes.is_empty() {
            return Err(DecodeError::protocol(
                "MQTT-3.11.3-2",
                "UNSUBACK carries no reason code",
            ));
        }
        Ok(Self {
            packet_id,
            properties,
            reason_codes,
        })
    }

    pub(crate) fn body_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        if !version.is_v5() {
            return Ok(2);
        }
        if self
            .reason_codes
            .iter()
            .any(|code| !code.is_valid_for(PacketType::UnsubAck))
        {
            return Err(EncodeError::Invalid("reason code not allowed in UNSUBACK"));
        }
        Ok(2 + properties::encoded_len(&self.properties)? + self.reason_codes.len())
    }

    pub(crate) fn write_body(&self, version: ProtocolVersion, buf: &mut BytesMut) {
        buf.put_u16(self.packet_id.get());
        if version.is_v5() {
            properties::write(&self.properties, buf);
            for code in &self.reason_codes {
                buf.put_u8(code.as_u8());
            }
        }
    }
}
