//! The fifteen control packets, their decoding from a body and their encoding.

mod connect;
mod control;
mod publish;
mod subscribe;

use bytes::{BufMut, Bytes, BytesMut};

pub use connect::{ConnAck, Connect, Will};
pub use control::{Auth, Disconnect};
pub use publish::{PubAck, PubComp, PubRec, PubRel, Publish, PublishWithId};
pub use subscribe::{SubAck, Subscribe, Subscription, UnsubAck, Unsubscribe};

use crate::wire::{Reader, put_varint, varint_len};
use crate::{DecodeError, EncodeError, PacketType, ProtocolVersion, Role, VARINT_MAX};

/// The largest packet MQTT can carry: one type byte, four length bytes, 268,435,455 bytes.
pub const PROTOCOL_MAX_PACKET_SIZE: u32 = 1 + 4 + VARINT_MAX;

/// Any MQTT control packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// CONNECT (boxed: it is large and seen once per connection).
    Connect(Box<Connect>),
    /// CONNACK (boxed: it is large and seen once per connection).
    ConnAck(Box<ConnAck>),
    /// PUBLISH.
    Publish(Publish),
    /// PUBACK.
    PubAck(PubAck),
    /// PUBREC.
    PubRec(PubRec),
    /// PUBREL.
    PubRel(PubRel),
    /// PUBCOMP.
    PubComp(PubComp),
    /// SUBSCRIBE.
    Subscribe(Subscribe),
    /// SUBACK.
    SubAck(SubAck),
    /// UNSUBSCRIBE.
    Unsubscribe(Unsubscribe),
    /// UNSUBACK.
    UnsubAck(UnsubAck),
    /// PINGREQ.
    PingReq,
    /// PINGRESP.
    PingResp,
    /// DISCONNECT.
    Disconnect(Disconnect),
    /// AUTH.
    Auth(Auth),
}

impl Packet {
    /// The packet's type.
    pub fn packet_type(&self) -> PacketType {
        match self {
            Self::Connect(_) => PacketType::Connect,
            Self::ConnAck(_) => PacketType::ConnAck,
            Self::Publish(_) => PacketType::Publish,
            Self::PubAck(_) => PacketType::PubAck,
            Self::PubRec(_) => PacketType::PubRec,
            Self::PubRel(_) => PacketType::PubRel,
            Self::PubComp(_) => PacketType::PubComp,
            Self::Subscribe(_) => PacketType::Subscribe,
            Self::SubAck(_) => PacketType::SubAck,
            Self::Unsubscribe(_) => PacketType::Unsubscribe,
            Self::UnsubAck(_) => PacketType::UnsubAck,
            Self::PingReq => PacketType::PingReq,
            Self::PingResp => PacketType::PingResp,
            Self::Disconnect(_) => PacketType::Disconnect,
            Self::Auth(_) => PacketType::Auth,
        }
    }

    /// Removes the Reason String and User Properties, which a sender may leave out to fit the
    /// peer's Maximum Packet Size ([MQTT-3.2.2-19], [MQTT-3.4.2-2] and the like). PUBLISH and
    /// the request packets keep theirs: they belong to the application. Returns whether
    /// anything was removed.
    pub fn strip_diagnostics(&mut self) -> bool {
        fn strip(
            reason: &mut Option<crate::MqttString>,
            users: &mut Vec<crate::UserProperty>,
        ) -> bool {
            let changed = reason.is_some() || !users.is_empty();
            *reason = None;
            users.clear();
            changed
        }
        match self {
            Self::ConnAck(p) => strip(
                &mut p.properties.reason_string,
                &mut p.properties.user_properties,
            ),
            Self::PubAck(p) => strip(
                &mut p.properties.reason_string,
                &mut p.properties.user_properties,
            ),
            Self::PubRec(p) => strip(
                &mut p.properties.reason_string,
                &mut p.properties.user_properties,
            ),
            Self::PubRel(p) => strip(
                &mut p.properties.reason_string,
                &mut p.properties.user_properties,
            ),
            Self::PubComp(p) => strip(
                &mut p.properties.reason_string,
                &mut p.properties.user_properties,
            ),
            Self::SubAck(p) => strip(
                &mut p.properties.reason_string,
                &mut p.properties.user_properties,
            ),
            Self::UnsubAck(p) => strip(
                &mut p.properties.reason_string,
                &mut p.properties.user_properties,
            ),
            Self::Disconnect(p) => strip(
                &mut p.properties.reason_string,
                &mut p.properties.user_properties,
            ),
            Self::Auth(p) => strip(
                &mut p.properties.reason_string,
                &mut p.properties.user_properties,
            ),
            Self::Connect(_)
            | Self::Publish(_)
            | Self::Subscribe(_)
            | Self::Unsubscribe(_)
            | Self::PingReq
            | Self::PingResp => false,
        }
    }

    /// Decodes a packet body whose fixed header has already been checked.
    #[inline]
    pub(crate) fn decode_body(
        kind: PacketType,
        flags: u8,
        body: Bytes,
        version: ProtocolVersion,
        role: Role,
    ) -> Result<Self, DecodeError> {
        let r = &mut Reader::new(body);
        Ok(match kind {
            PacketType::Connect => Self::Connect(Box::new(Connect::decode(r)?)),
            PacketType::ConnAck => Self::ConnAck(Box::new(ConnAck::decode(r, version)?)),
            PacketType::Publish => Self::Publish(Publish::decode(r, flags, version, role)?),
            PacketType::PubAck => Self::PubAck(PubAck::decode(r, version)?),
            PacketType::PubRec => Self::PubRec(PubRec::decode(r, version)?),
            PacketType::PubRel => Self::PubRel(PubRel::decode(r, version)?),
            PacketType::PubComp => Self::PubComp(PubComp::decode(r, version)?),
            PacketType::Subscribe => Self::Subscribe(Subscribe::decode(r, version)?),
            PacketType::SubAck => Self::SubAck(SubAck::decode(r, version)?),
            PacketType::Unsubscribe => Self::Unsubscribe(Unsubscribe::decode(r, version)?),
            PacketType::UnsubAck => Self::UnsubAck(UnsubAck::decode(r, version)?),
            PacketType::PingReq => {
                if !r.is_empty() {
                    return Err(DecodeError::malformed(
                        "MQTT-5 §3.12.1",
                        "PINGREQ has a Remaining Length other than 0",
                    ));
                }
                Self::PingReq
            }
            PacketType::PingResp => {
                if !r.is_empty() {
                    return Err(DecodeError::malformed(
                        "MQTT-5 §3.13.1",
                        "PINGRESP has a Remaining Length other than 0",
                    ));
                }
                Self::PingResp
            }
            PacketType::Disconnect => Self::Disconnect(Disconnect::decode(r, version, role)?),
            PacketType::Auth => Self::Auth(Auth::decode(r, role)?),
        })
    }
}

/// Something the [`crate::Encoder`] can write: a [`Packet`] or one packet struct, so that a
/// PUBLISH shared between subscribers is encoded without being cloned into a `Packet`.
pub trait Encode: sealed::Sealed {
    /// The packet's type.
    fn packet_type(&self) -> PacketType;
    /// Bytes of the body (everything after the Remaining Length) in `version`.
    #[doc(hidden)]
    fn body_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError>;
    /// Low nibble of the first byte.
    #[doc(hidden)]
    fn flags(&self) -> u8 {
        self.packet_type().required_flags()
    }
    /// Writes the body; `body_len` has succeeded.
    #[doc(hidden)]
    fn write_body(&self, version: ProtocolVersion, buf: &mut BytesMut);
}

mod sealed {
    pub trait Sealed {}
}

macro_rules! encode_struct {
    ($ty:ty, $kind:ident, |$s:ident, $v:ident| $len:expr, |$ws:ident, $wv:ident, $buf:ident| $write:expr) => {
        impl sealed::Sealed for $ty {}
        impl Encode for $ty {
            fn packet_type(&self) -> PacketType {
                PacketType::$kind
            }
            fn body_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
                let ($s, $v) = (self, version);
                $len
            }
            fn write_body(&self, version: ProtocolVersion, buf: &mut BytesMut) {
                let ($ws, $wv, $buf) = (self, version, buf);
                $write
            }
        }
    };
}

encode_struct!(
    Connect,
    Connect,
    |p, v| {
        if p.protocol_version != v {
            return Err(EncodeError::Invalid(
                "CONNECT's protocol version differs from the encoder's",
            ));
        }
        p.body_len()
    },
    |p, _v, buf| p.write_body(buf)
);
encode_struct!(ConnAck, ConnAck, |p, v| p.body_len(v), |p, v, buf| p
    .write_body(v, buf));
encode_struct!(PubAck, PubAck, |p, v| p.body_len(v), |p, v, buf| p
    .write_body(v, buf));
encode_struct!(PubRec, PubRec, |p, v| p.body_len(v), |p, v, buf| p
    .write_body(v, buf));
encode_struct!(PubRel, PubRel, |p, v| p.body_len(v), |p, v, buf| p
    .write_body(v, buf));
encode_struct!(PubComp, PubComp, |p, v| p.body_len(v), |p, v, buf| p
    .write_body(v, buf));
encode_struct!(Subscribe, Subscribe, |p, v| p.body_len(v), |p, v, buf| p
    .write_body(v, buf));
encode_struct!(SubAck, SubAck, |p, v| p.body_len(v), |p, v, buf| p
    .write_body(v, buf));
encode_struct!(
    Unsubscribe,
    Unsubscribe,
    |p, v| p.body_len(v),
    |p, v, buf| p.write_body(v, buf)
);
encode_struct!(UnsubAck, UnsubAck, |p, v| p.body_len(v), |p, v, buf| p
    .write_body(v, buf));
encode_struct!(Disconnect, Disconnect, |p, v| p.body_len(v), |p, v, buf| p
    .write_body(v, buf));
encode_struct!(Auth, Auth, |p, v| p.body_len(v), |p, _v, buf| p
    .write_body(buf));

impl sealed::Sealed for Publish {}
impl Encode for Publish {
    fn packet_type(&self) -> PacketType {
        PacketType::Publish
    }
    fn body_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        Publish::body_len(self, version)
    }
    fn flags(&self) -> u8 {
        Publish::flags(self)
    }
    fn write_body(&self, version: ProtocolVersion, buf: &mut BytesMut) {
        Publish::write_body(self, version, buf);
    }
}

impl sealed::Sealed for PublishWithId<'_> {}
impl Encode for PublishWithId<'_> {
    fn packet_type(&self) -> PacketType {
        PacketType::Publish
    }
    fn body_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        PublishWithId::body_len(self, version)
    }
    fn flags(&self) -> u8 {
        PublishWithId::flags(self)
    }
    fn write_body(&self, version: ProtocolVersion, buf: &mut BytesMut) {
        PublishWithId::write_body(self, version, buf);
    }
}

impl sealed::Sealed for Packet {}
impl Encode for Packet {
    fn packet_type(&self) -> PacketType {
        Packet::packet_type(self)
    }

    fn body_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        match self {
            Self::Connect(p) => Encode::body_len(p.as_ref(), version),
            Self::ConnAck(p) => p.body_len(version),
            Self::Publish(p) => Publish::body_len(p, version),
            Self::PubAck(p) => p.body_len(version),
            Self::PubRec(p) => p.body_len(version),
            Self::PubRel(p) => p.body_len(version),
            Self::PubComp(p) => p.body_len(version),
            Self::Subscribe(p) => p.body_len(version),
            Self::SubAck(p) => p.body_len(version),
            Self::Unsubscribe(p) => p.body_len(version),
            Self::UnsubAck(p) => p.body_len(version),
            Self::PingReq | Self::PingResp => Ok(0),
            Self::Disconnect(p) => p.body_len(version),
            Self::Auth(p) => Encode::body_len(p, version),
        }
    }

    fn flags(&self) -> u8 {
        match self {
            Self::Publish(p) => p.flags(),
            other => other.packet_type().required_flags(),
        }
    }

    fn write_body(&self, version: ProtocolVersion, buf: &mut BytesMut) {
        match self {
            Self::Connect(p) => p.write_body(buf),
            Self::ConnAck(p) => p.write_body(version, buf),
            Self::Publish(p) => p.write_body(version, buf),
            Self::PubAck(p) => p.write_body(version, buf),
            Self::PubRec(p) => p.write_body(version, buf),
            Self::PubRel(p) => p.write_body(version, buf),
            Self::PubComp(p) => p.write_body(version, buf),
            Self::Subscribe(p) => p.write_body(version, buf),
            Self::SubAck(p) => p.write_body(version, buf),
            Self::Unsubscribe(p) => p.write_body(version, buf),
            Self::UnsubAck(p) => p.write_body(version, buf),
            Self::PingReq | Self::PingResp => {}
            Self::Disconnect(p) => p.write_body(version, buf),
            Self::Auth(p) => p.write_body(buf),
        }
    }
}

/// Writes the fixed header and body of `packet`, failing before writing anything if the whole
/// packet would exceed `max_packet_size`.
/// The size of `packet` on the wire in `version`, fixed header included.
pub(crate) fn encoded_len<P: Encode + ?Sized>(
    packet: &P,
    version: ProtocolVersion,
) -> Result<u64, EncodeError> {
    if packet.packet_type() == PacketType::Auth && !version.is_v5() {
        return Err(EncodeError::NotInVersion("AUTH", version));
    }
    let body = packet.body_len(version)?;
    Ok(1 + varint_len(u32::try_from(body).unwrap_or(u32::MAX)) as u64 + body as u64)
}

pub(crate) fn encode<P: Encode + ?Sized>(
    packet: &P,
    version: ProtocolVersion,
    max_packet_size: u32,
    buf: &mut BytesMut,
) -> Result<usize, EncodeError> {
    if packet.packet_type() == PacketType::Auth && !version.is_v5() {
        return Err(EncodeError::NotInVersion("AUTH", version));
    }
    let body = packet.body_len(version)?;
    let size = 1 + varint_len(u32::try_from(body).unwrap_or(u32::MAX)) as u64 + body as u64;
    let max = max_packet_size.min(PROTOCOL_MAX_PACKET_SIZE);
    if body > VARINT_MAX as usize || size > u64::from(max) {
        return Err(EncodeError::PacketTooLarge { size, max });
    }
    let start = buf.len();
    buf.reserve(usize::try_from(size).unwrap_or(usize::MAX));
    buf.put_u8(((packet.packet_type() as u8) << 4) | packet.flags());
    put_varint(buf, u32::try_from(body).unwrap_or(VARINT_MAX));
    packet.write_body(version, buf);
    debug_assert_eq!(
        (buf.len() - start) as u64,
        size,
        "{:?}",
        packet.packet_type()
    );
    Ok(buf.len() - start)
}
