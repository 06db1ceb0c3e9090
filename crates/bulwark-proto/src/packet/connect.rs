//! CONNECT (§3.1) and CONNACK (§3.2).

use bytes::{BufMut, Bytes, BytesMut};

use crate::properties::{self, ConnAckProperties, ConnectProperties, WillProperties};
use crate::wire::{Reader, put_binary, put_string};
use crate::{
    ClientId, ConnectReturnCode, DecodeError, EncodeError, MqttString, PacketType, ProtocolVersion,
    QoS, ReasonCode, TopicName,
};

/// A connection request, the first packet a client sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// The protocol the client speaks.
    pub protocol_version: ProtocolVersion,
    /// Clean Session (3.1, 3.1.1) or Clean Start (5.0).
    pub clean_start: bool,
    /// Keep alive in seconds; 0 turns it off.
    pub keep_alive: u16,
    /// MQTT 5.0 properties (ignored for earlier versions).
    pub properties: ConnectProperties,
    /// The client identifier; may be empty.
    pub client_id: ClientId,
    /// The will message, if the client set one.
    pub will: Option<Will>,
    /// The user name.
    pub username: Option<MqttString>,
    /// The password (binary data).
    pub password: Option<Bytes>,
}

/// A will message carried in CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    /// Where the will is published.
    pub topic: TopicName,
    /// The will payload.
    pub payload: Bytes,
    /// QoS of the will publication.
    pub qos: QoS,
    /// Whether the will is published retained.
    pub retain: bool,
    /// MQTT 5.0 will properties.
    pub properties: WillProperties,
}

impl Connect {
    /// A CONNECT with only a client identifier set: clean start, keep alive 60 s.
    pub fn new(protocol_version: ProtocolVersion, client_id: ClientId) -> Self {
        Self {
            protocol_version,
            clean_start: true,
            keep_alive: 60,
            properties: ConnectProperties::default(),
            client_id,
            will: None,
            username: None,
            password: None,
        }
    }

    /// The protocol version of a CONNECT body, read as far as its protocol level, so that the
    /// server can answer a CONNECT that fails later in the right version.
    pub(crate) fn peek_version(body: &[u8]) -> Option<ProtocolVersion> {
        let mut reader = Reader::new(Bytes::copy_from_slice(body.get(..10).unwrap_or(body)));
        let name = reader.binary("protocol name").ok()?;
        let level = reader.u8("protocol level").ok()?;
        protocol_version(&name, level).ok()
    }

    pub(crate) fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let name = r.binary("protocol name")?;
        let level = r.u8("protocol level")?;
        let version = protocol_version(&name, level)?;
        let flags = r.u8("connect flags")?;
        // MQTT 3.1 did not reserve bit 0.
        if flags & 0b0000_0001 != 0 && version != ProtocolVersion::V3_1 {
            return Err(DecodeError::malformed(
                "MQTT-3.1.2-3",
                "reserved connect flag is not 0",
            ));
        }
        let clean_start = flags & 0b0000_0010 != 0;
        let will_flag = flags & 0b0000_0100 != 0;
        let will_qos_bits = (flags >> 3) & 0b11;
        let will_retain = flags & 0b0010_0000 != 0;
        let password_flag = flags & 0b0100_0000 != 0;
        let username_flag = flags & 0b1000_0000 != 0;
        if !will_flag && will_qos_bits != 0 {
            return Err(DecodeError::malformed(
                "MQTT-3.1.2-11",
                "Will QoS is not 0 although the Will Flag is 0",
            ));
        }
        if !will_flag && will_retain {
            return Err(DecodeError::malformed(
                "MQTT-3.1.2-13",
                "Will Retain is set although the Will Flag is 0",
            ));
        }
        let will_qos = QoS::from_u8(will_qos_bits)
            .ok_or(DecodeError::malformed("MQTT-3.1.2-12", "Will QoS is 3"))?;
        if password_flag && !username_flag && !version.is_v5() {
            return Err(DecodeError::malformed(
                "MQTT-3.1.2-22",
                "password flag set without the user name flag",
            ));
        }
        let keep_alive = r.u16("keep alive")?;
        let properties = if version.is_v5() {
            properties::decode(r)?
        } else {
            ConnectProperties::default()
        };
        let client_id = ClientId::from_string(r.string("client identifier")?);
        let will = if will_flag {
            let properties = if version.is_v5() {
                properties::decode(r)?
            } else {
                WillProperties::default()
            };
            let topic = will_topic(r.string("will topic")?)?;
            let payload = r.binary("will payload")?;
            Some(Will {
                topic,
                payload,
                qos: will_qos,
                retain: will_retain,
                properties,
            })
        } else {
            None
        };
        let username = if username_flag {
            Some(r.string("user name")?)
        } else {
            None
        };
        let password = if password_flag {
            Some(r.binary("password")?)
        } else {
            None
        };
        r.finish("CONNECT")?;
        Ok(Self {
            protocol_version: version,
            clean_start,
            keep_alive,
            properties,
            client_id,
            will,
            username,
            password,
        })
    }

    pub(crate) fn body_len(&self) -> Result<usize, EncodeError> {
        if !self.protocol_version.is_v5() && self.password.is_some() && self.username.is_none() {
            return Err(EncodeError::Invalid(
                "a password without a user name needs MQTT 5.0",
            ));
        }
        let v5 = self.protocol_version.is_v5();
        let mut len = 2 + self.protocol_version.protocol_name().len() + 1 + 1 + 2;
        if v5 {
            len += properties::encoded_len(&self.properties)?;
        }
        len += 2 + self.client_id.as_mqtt_str().len();
        if let Some(will) = &self.will {
            if v5 {
                len += properties::encoded_len(&will.properties)?;
            }
            len += 2 + will.topic.as_mqtt_str().len();
            len += 2 + checked_binary_len(&will.payload, "will payload")?;
        }
        if let Some(username) = &self.username {
            len += 2 + username.len();
        }
        if let Some(password) = &self.password {
            len += 2 + checked_binary_len(password, "password")?;
        }
        Ok(len)
    }

    pub(crate) fn write_body(&self, buf: &mut BytesMut) {
        let v5 = self.protocol_version.is_v5();
        put_binary(buf, self.protocol_version.protocol_name().as_bytes());
        buf.put_u8(self.protocol_version.level());
        let mut flags = u8::from(self.clean_start) << 1;
        if let Some(will) = &self.will {
            flags |= 0b100 | (will.qos.as_u8() << 3) | (u8::from(will.retain) << 5);
        }
        flags |= u8::from(self.password.is_some()) << 6;
        flags |= u8::from(self.username.is_some()) << 7;
        buf.put_u8(flags);
        buf.put_u16(self.keep_alive);
        if v5 {
            properties::write(&self.properties, buf);
        }
        put_string(buf, self.client_id.as_mqtt_str());
        if let Some(will) = &self.will {
            if v5 {
                properties::write(&will.properties, buf);
            }
            put_string(buf, will.topic.as_mqtt_str());
            put_binary(buf, &will.payload);
        }
        if let Some(username) = &self.username {
            put_string(buf, username);
        }
        if let Some(password) = &self.password {
            put_binary(buf, password);
        }
    }
}

pub(crate) fn checked_binary_len(data: &[u8], what: &'static str) -> Result<usize, EncodeError> {
    if data.len() > usize::from(u16::MAX) {
        return Err(EncodeError::Invalid(what));
    }
    Ok(data.len())
}

/// The Will Topic is a topic name like any other; its wildcard rule is the general one of
/// §4.7 rather than PUBLISH's [MQTT-3.3.2-2].
fn will_topic(text: MqttString) -> Result<TopicName, DecodeError> {
    if text.as_bytes().iter().any(|&b| b == b'+' || b == b'#') {
        return Err(DecodeError::malformed(
            "MQTT-4.7.0-1",
            "Will Topic contains a wildcard character",
        ));
    }
    TopicName::from_string(text)
}

fn protocol_version(name: &[u8], level: u8) -> Result<ProtocolVersion, DecodeError> {
    match (name, level) {
        (b"MQTT", 4) => Ok(ProtocolVersion::V3_1_1),
        (b"MQTT", 5) => Ok(ProtocolVersion::V5),
        (b"MQIsdp", 3) => Ok(ProtocolVersion::V3_1),
        (b"MQTT" | b"MQIsdp", _) => Err(DecodeError::new(
            ReasonCode::UnsupportedProtocolVersion,
            "MQTT-3.1.2-2",
            "unsupported protocol level",
        )),
        _ => Err(DecodeError::new(
            ReasonCode::UnsupportedProtocolVersion,
            "MQTT-3.1.2-1",
            "protocol name is neither MQTT nor MQIsdp",
        )),
    }
}

/// The server's answer to CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnAck {
    /// Whether the server resumed a stored session (not carried by MQTT 3.1, which has no
    /// such flag: always `false` there).
    pub session_present: bool,
    /// The outcome; before 5.0 it travels as the nearest [`ConnectReturnCode`].
    pub reason_code: ReasonCode,
    /// MQTT 5.0 properties.
    pub properties: ConnAckProperties,
}

impl ConnAck {
    /// A CONNACK with a reason code and no properties.
    pub fn new(session_present: bool, reason_code: ReasonCode) -> Self {
        Self {
            session_present,
            reason_code,
            properties: ConnAckProperties::default(),
        }
    }

    pub(crate) fn decode(r: &mut Reader, version: ProtocolVersion) -> Result<Self, DecodeError> {
        let flags = r.u8("connect acknowledge flags")?;
        // MQTT 3.1 has no Session Present: its first CONNACK byte is unused.
        let flags = if version == ProtocolVersion::V3_1 {
            0
        } else {
            flags
        };
        if flags & 0b1111_1110 != 0 {
            return Err(DecodeError::malformed(
                "MQTT-3.2.2-1",
                "reserved connect acknowledge flags are not 0",
            ));
        }
        let session_present = flags & 1 != 0;
        let code = r.u8("connect reason code")?;
        let reason_code = if version.is_v5() {
            ReasonCode::from_u8(code)
                .filter(|c| c.is_valid_for(PacketType::ConnAck))
                .ok_or(DecodeError::protocol(
                    "MQTT-3.2.2-8",
                    "invalid CONNACK reason code",
                ))?
        } else {
            ConnectReturnCode::from_u8(code)
                .map(ConnectReturnCode::to_reason)
                .ok_or(DecodeError::protocol(
                    "MQTT-3.1.1 §3.2.2.3",
                    "reserved CONNACK return code",
                ))?
        };
        if session_present && reason_code.is_error() {
            return Err(DecodeError::protocol(
                "MQTT-3.2.2-6",
                "Session Present is set on a refused connection",
            ));
        }
        let properties = if version.is_v5() {
            properties::decode(r)?
        } else {
            ConnAckProperties::default()
        };
        r.finish("CONNACK")?;
        Ok(Self {
            session_present,
            reason_code,
            properties,
        })
    }

    pub(crate) fn body_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        if !self.reason_code.is_valid_for(PacketType::ConnAck) {
            return Err(EncodeError::Invalid("reason code not allowed in CONNACK"));
        }
        Ok(2 + if version.is_v5() {
            properties::encoded_len(&self.properties)?
        } else {
            0
        })
    }

    pub(crate) fn write_body(&self, version: ProtocolVersion, buf: &mut BytesMut) {
        let accepted = !self.reason_code.is_error();
        let has_flag = version != ProtocolVersion::V3_1;
        buf.put_u8(u8::from(self.session_present && accepted && has_flag));
        if version.is_v5() {
            buf.put_u8(self.reason_code.as_u8());
            properties::write(&self.properties, buf);
        } else {
            let code = ConnectReturnCode::from_reason(self.reason_code)
                .unwrap_or(ConnectReturnCode::ServerUnavailable);
            buf.put_u8(code as u8);
        }
    }
}
