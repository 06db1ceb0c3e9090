//! DISCONNECT (§3.14) and AUTH (§3.15).

use bytes::{BufMut, BytesMut};

use crate::properties::{self, AuthProperties, DisconnectProperties};
use crate::wire::Reader;
use crate::{DecodeError, EncodeError, PacketType, ProtocolVersion, ReasonCode, Role};

/// The last packet of a connection. Before MQTT 5.0 only clients send it, without content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnect {
    /// Why the connection ends (MQTT 5.0).
    pub reason_code: ReasonCode,
    /// MQTT 5.0 properties.
    pub properties: DisconnectProperties,
}

impl Disconnect {
    /// A DISCONNECT with a reason code and no properties.
    pub fn new(reason_code: ReasonCode) -> Self {
        Self {
            reason_code,
            properties: DisconnectProperties::default(),
        }
    }

    pub(crate) fn decode(
        r: &mut Reader,
        version: ProtocolVersion,
        role: Role,
    ) -> Result<Self, DecodeError> {
        let mut packet = Self::new(ReasonCode::Success);
        if version.is_v5() && !r.is_empty() {
            let code = ReasonCode::from_u8(r.u8("reason code")?)
                .filter(|code| code.is_valid_for(PacketType::Disconnect))
                .ok_or(DecodeError::protocol(
                    "MQTT-3.14.2-1",
                    "reason code not allowed in DISCONNECT",
                ))?;
            let sender_may = match role {
                Role::Server => code.client_may_disconnect_with(),
                Role::Client => code.server_may_disconnect_with(),
            };
            if !sender_may {
                return Err(DecodeError::protocol(
                    "MQTT-3.14.2-1",
                    "DISCONNECT reason code the sender may not use",
                ));
            }
            packet.reason_code = code;
            if !r.is_empty() {
                packet.properties = properties::decode(r)?;
            }
            if role == Role::Client && packet.properties.session_expiry_interval.is_some() {
                return Err(DecodeError::protocol(
                    "MQTT-3.14.2-2",
                    "server sent a Session Expiry Interval in DISCONNECT",
                ));
            }
        }
        if !version.is_v5() && !r.is_empty() {
            return Err(DecodeError::malformed(
                "MQTT-3.1.1 §3.14.1",
                "MQTT 3.1.1 DISCONNECT has a Remaining Length other than 0",
            ));
        }
        r.finish("DISCONNECT")?;
        Ok(packet)
    }

    pub(crate) fn body_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        if !self.reason_code.is_valid_for(PacketType::Disconnect) {
            return Err(EncodeError::Invalid(
                "reason code not allowed in DISCONNECT",
            ));
        }
        if !version.is_v5() {
            return Ok(0);
        }
        Ok(match (self.reason_code, self.properties.is_empty()) {
            (ReasonCode::Success, true) => 0,
            (_, true) => 1,
            (_, false) => 1 + properties::encoded_len(&self.properties)?,
        })
    }

    pub(crate) fn write_body(&self, version: ProtocolVersion, buf: &mut BytesMut) {
        if !version.is_v5() {
            return;
        }
        if self.reason_code != ReasonCode::Success || !self.properties.is_empty() {
            buf.put_u8(self.reason_code.as_u8());
        }
        if !self.properties.is_empty() {
            properties::write(&self.properties, buf);
        }
    }
}

/// An extended authentication exchange step (MQTT 5.0 only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auth {
    /// Success, Continue authentication or Re-authenticate.
    pub reason_code: ReasonCode,
    /// The method, data and diagnostics.
    pub properties: AuthProperties,
}

impl Auth {
    pub(crate) fn decode(r: &mut Reader, role: Role) -> Result<Self, DecodeError> {
        // Remaining Length 0 is the short form of Success without properties (§3.15.2.1).
        let reason_code = if r.is_empty() {
            ReasonCode::Success
        } else {
            ReasonCode::from_u8(r.u8("reason code")?)
                .filter(|code| code.is_valid_for(PacketType::Auth))
                .ok_or(DecodeError::protocol(
                    "MQTT-3.15.2-1",
                    "reason code not allowed in AUTH",
                ))?
        };
        // §3.15.2.1: only the server sends Success, only the client Re-authenticate.
        let sender_may = !matches!(
            (role, reason_code),
            (Role::Server, ReasonCode::Success) | (Role::Client, ReasonCode::ReAuthenticate)
        );
        if !sender_may {
            return Err(DecodeError::protocol(
                "MQTT-3.15.2-1",
                "AUTH reason code the sender may not use",
            ));
        }
        if r.is_empty() && reason_code == ReasonCode::Success {
            return Ok(Self {
                reason_code,
                properties: AuthProperties::default(),
            });
        }
        let properties: AuthProperties = if r.is_empty() {
            AuthProperties::default()
        } else {
            properties::decode(r)?
        };
        if properties.authentication_method.is_none() {
            return Err(DecodeError::protocol(
                "MQTT-5 §3.15.2.2.2",
                "AUTH carries no Authentication Method",
            ));
        }
        r.finish("AUTH")?;
        Ok(Self {
            reason_code,
            properties,
        })
    }

    pub(crate) fn body_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        if !version.is_v5() {
            return Err(EncodeError::NotInVersion("AUTH", version));
        }
        if !self.reason_code.is_valid_for(PacketType::Auth) {
            return Err(EncodeError::Invalid("reason code not allowed in AUTH"));
        }
        if self.reason_code == ReasonCode::Success && self.properties.is_empty() {
            return Ok(0);
        }
        Ok(1 + properties::encoded_len(&self.properties)?)
    }

    pub(crate) fn write_body(&self, buf: &mut BytesMut) {
        if self.reason_code == ReasonCode::Success && self.properties.is_empty() {
            return;
        }
        buf.put_u8(self.reason_code.as_u8());
        properties::write(&self.properties, buf);
    }
}
