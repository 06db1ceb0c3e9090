//! The streaming [`Decoder`] and the [`Encoder`].

use bytes::{Buf, BytesMut};

use crate::packet::{Connect, Encode, PROTOCOL_MAX_PACKET_SIZE, Packet, encode, encoded_len};
use crate::wire::read_varint;
use crate::{DecodeError, EncodeError, PacketType, ProtocolVersion, Role};

/// Size limits a [`Decoder`] enforces, in bytes of the whole packet (fixed header included, as
/// MQTT 5.0's Maximum Packet Size counts them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecoderLimits {
    /// The largest packet accepted once the peer is authenticated. Default 1 MiB.
    pub max_packet_size: u32,
    /// The largest packet accepted before [`Decoder::set_authenticated`]: the CONNECT and any
    /// AUTH exchange. Default 64 KiB, so that an unauthenticated peer cannot make the server
    /// buffer much.
    pub max_unauthenticated_packet_size: u32,
}

impl DecoderLimits {
    /// Default [`DecoderLimits::max_packet_size`]: 1 MiB.
    pub const DEFAULT_MAX_PACKET_SIZE: u32 = 1024 * 1024;
    /// Default [`DecoderLimits::max_unauthenticated_packet_size`]: 64 KiB.
    pub const DEFAULT_MAX_UNAUTHENTICATED_PACKET_SIZE: u32 = 64 * 1024;
    /// The limits MQTT itself sets: 268,435,460 bytes for every packet.
    pub const PROTOCOL: Self = Self {
        max_packet_size: PROTOCOL_MAX_PACKET_SIZE,
        max_unauthenticated_packet_size: PROTOCOL_MAX_PACKET_SIZE,
    };
}

impl Default for DecoderLimits {
    fn default() -> Self {
        Self {
            max_packet_size: Self::DEFAULT_MAX_PACKET_SIZE,
            max_unauthenticated_packet_size: Self::DEFAULT_MAX_UNAUTHENTICATED_PACKET_SIZE,
        }
    }
}

/// A fixed header that has been read and checked; its body may still be arriving.
#[derive(Debug, Clone, Copy)]
struct Header {
    kind: PacketType,
    flags: u8,
    /// At most 5 bytes.
    header_len: u8,
    /// At most the Maximum Packet Size, a `u32`.
    total_len: u32,
}

impl Header {
    fn header_len(&self) -> usize {
        usize::from(self.header_len)
    }

    fn total_len(&self) -> usize {
        usize::try_from(self.total_len).unwrap_or(usize::MAX)
    }
}

/// Decodes packets from a byte stream as it arrives.
///
/// Call order: feed bytes with [`Decoder::handle_bytes`] (or read straight into
/// [`Decoder::buffer_mut`]), then call [`Decoder::poll_packet`] until it returns `Ok(None)`;
/// repeat. Packets split across reads and several packets in one read both work.
///
/// The decoder checks each fixed header as soon as it is complete: packet type, reserved flags,
/// direction, the rule that CONNECT comes first and only once, and the size limit. A packet
/// over the limit is refused before its body is buffered. After the first error the decoder
/// returns that error forever: the connection must be closed.
///
/// A server's decoder learns the protocol version from CONNECT; a client's is told it.
#[derive(Debug)]
pub struct Decoder {
    role: Role,
    version: Option<ProtocolVersion>,
    limits: DecoderLimits,
    authenticated: bool,
    /// Server: CONNECT received. Client: CONNACK received.
    connected: bool,
    buf: BytesMut,
    header: Option<Header>,
    /// Boxed: every connection holds a decoder, and errors are rare.
    failed: Option<Box<DecodeError>>,
}

impl Decoder {
    /// A decoder for a server: the first packet must be CONNECT, which sets the version.
    pub fn server(limits: DecoderLimits) -> Self {
        Self::new(Role::Server, None, limits)
    }

    /// A decoder for a client that sent CONNECT with `version`.
    pub fn client(version: ProtocolVersion, limits: DecoderLimits) -> Self {
        Self::new(Role::Client, Some(version), limits)
    }

    fn new(role: Role, version: Option<ProtocolVersion>, limits: DecoderLimits) -> Self {
        Self {
            role,
            version,
            limits,
            authenticated: false,
            connected: false,
            buf: BytesMut::new(),
            header: None,
            failed: None,
        }
    }

    /// The protocol version, once known. For a server this is set as soon as a CONNECT's
    /// protocol level has been read, even if the rest of the CONNECT is refused, so that the
    /// CONNACK refusing it can be sent in the client's version.
    pub fn protocol_version(&self) -> Option<ProtocolVersion> {
        self.version
    }

    /// Switches from the unauthenticated to the full packet size limit.
    pub fn set_authenticated(&mut self) {
        self.authenticated = true;
    }

    /// Changes the limits (for example after a configuration reload).
    pub fn set_limits(&mut self, limits: DecoderLimits) {
        self.limits = limits;
    }

    /// The limit that applies to the next packet.
    pub fn current_max_packet_size(&self) -> u32 {
        if self.authenticated {
            self.limits.max_packet_size
        } else {
            self.limits
                .max_packet_size
                .min(self.limits.max_unauthenticated_packet_size)
        }
    }

    /// Appends received bytes.
    pub fn handle_bytes(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The receive buffer, to read from a socket straight into it. Read in bounded chunks:
    /// the size limit is checked on the next [`Decoder::poll_packet`].
    pub fn buffer_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Bytes received but not yet returned as packets.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete packet, `Ok(None)` if more bytes are needed, or the error that ends
    /// the connection.
    #[inline]
    pub fn poll_packet(&mut self) -> Result<Option<Packet>, DecodeError> {
        if let Some(err) = &self.failed {
            return Err((**err).clone());
        }
        match self.next_packet() {
            Ok(packet) => Ok(packet),
            Err(err) => {
                self.failed = Some(Box::new(err.clone()));
                Err(err)
            }
        }
    }

    #[inline]
    fn next_packet(&mut self) -> Result<Option<Packet>, DecodeError> {
        let header = match self.header {
            Some(header) => header,
            None => match self.read_header()? {
                Some(header) => {
                    self.header = Some(header);
                    header
                }
                None => return Ok(None),
            },
        };
        if self.buf.len() < header.total_len() {
            return Ok(None);
        }
        self.header = None;
        let mut frame = self.buf.split_to(header.total_len()).freeze();
        frame.advance(header.header_len());
        let version = match (header.kind, self.version) {
            (PacketType::Connect, _) => {
                // Known before the body is decoded, so a refusal can answer in kind.
                self.version = Connect::peek_version(&frame);
                if self.version != Some(ProtocolVersion::V3_1)
                    && header.flags != PacketType::Connect.required_flags()
                {
                    return Err(DecodeError::malformed(
                        reserved_flags_rule(PacketType::Connect),
                        "reserved fixed header flags have the wrong value",
                    ));
                }
                ProtocolVersion::V5
            }
            (_, Some(version)) => version,
            (_, None) => {
                return Err(DecodeError::protocol(
                    "MQTT-3.1.0-1",
                    "first packet is not CONNECT",
                ));
            }
        };
        let packet = Packet::decode_body(header.kind, header.flags, frame, version, self.role)?;
        if matches!(packet, Packet::ConnAck(_)) {
            self.connected = true;
        }
        Ok(Some(packet))
    }

    fn read_header(&mut self) -> Result<Option<Header>, DecodeError> {
        let Some(&first) = self.buf.first() else {
            return Ok(None);
        };
        let Some((body_len, len_bytes)) = read_varint(self.buf.get(1..).unwrap_or_default())?
        else {
            return Ok(None);
        };
        let kind = PacketType::from_nibble(first >> 4).ok_or(DecodeError::malformed(
            "MQTT-5 §2.1.2",
            "packet type 0 is reserved",
        ))?;
        if kind == PacketType::Auth && self.version.is_some_and(|v| !v.is_v5()) {
            return Err(DecodeError::malformed(
                "MQTT-3.1.1 §2.2.1",
                "packet type 15 is reserved before MQTT 5.0",
            ));
        }
        let flags = first & 0x0F;
        // MQTT 3.1 gave these flags no rule (its clients set DUP on a retried PUBREL,
        // SUBSCRIBE or UNSUBSCRIBE): only 3.1.1 and 5.0 reserve them. A CONNECT's version is
        // not known yet here: its flags are checked once its protocol level is read.
        let unreserved = self.version == Some(ProtocolVersion::V3_1)
            || (kind == PacketType::Connect && self.version.is_none());
        if kind != PacketType::Publish && !unreserved && flags != kind.required_flags() {
            return Err(DecodeError::malformed(
                reserved_flags_rule(kind),
                "reserved fixed header flags have the wrong value",
            ));
        }
        self.check_sequence(kind)?;
        let header_len = 1 + len_bytes;
        let total = header_len as u64 + u64::from(body_len);
        let header_len = u8::try_from(header_len).unwrap_or(u8::MAX);
        let max = self.current_max_packet_size();
        // A client must stay within the server's Maximum Packet Size [MQTT-3.2.2-15]
        // (§3.2.2.3.6), a server within the client's [MQTT-3.1.2-24] (§3.1.2.11.4); either
        // receiver answers a larger packet with 0x95.
        let rule = match self.role {
            Role::Server => "MQTT-3.2.2-15",
            Role::Client => "MQTT-3.1.2-24",
        };
        if total > u64::from(max) {
            return Err(DecodeError::too_large(rule, total, max));
        }
        let total_len =
            u32::try_from(total).map_err(|_| DecodeError::too_large(rule, total, max))?;
        Ok(Some(Header {
            kind,
            flags,
            header_len,
            total_len,
        }))
    }

    /// The rules on which packet may come when, checked on the fixed header.
    fn check_sequence(&mut self, kind: PacketType) -> Result<(), DecodeError> {
        match self.role {
            Role::Server => {
                if !self.connected {
                    if kind != PacketType::Connect {
                        return Err(DecodeError::protocol(
                            "MQTT-3.1.0-1",
                            "first packet is not CONNECT",
                        ));
                    }
                    self.connected = true;
                    return Ok(());
                }
                if kind == PacketType::Connect {
                    return Err(DecodeError::protocol("MQTT-3.1.0-2", "second CONNECT"));
                }
            }
            Role::Client => {
                let v5 = self.version.is_some_and(ProtocolVersion::is_v5);
                if !self.connected && v5 && kind == PacketType::Disconnect {
                    return Err(DecodeError::protocol(
                        "MQTT-3.14.0-1",
                        "server sent DISCONNECT before CONNACK",
                    ));
                }
                if !self.connected
                    && kind != PacketType::ConnAck
                    && !(v5 && kind == PacketType::Auth)
                {
                    return Err(DecodeError::protocol(
                        "MQTT-3.2.0-1",
                        "first packet from the server is not CONNACK",
                    ));
                }
                if self.connected && kind == PacketType::ConnAck {
                    return Err(DecodeError::protocol("MQTT-3.2.0-2", "second CONNACK"));
                }
            }
        }
        let version = self.version.unwrap_or(ProtocolVersion::V5);
        if !kind.may_be_received_by(self.role, version) {
            return Err(match self.role {
                Role::Server => DecodeError::protocol(
                    "MQTT-5 §2.1.2",
                    "a client sent a packet only a server may send",
                ),
                // Only MQTT 5.0 lets the server send DISCONNECT.
                Role::Client if kind == PacketType::Disconnect => DecodeError::protocol(
                    "MQTT-3.1.1 §2.2.1",
                    "a server sent DISCONNECT, which only MQTT 5.0 allows",
                ),
                Role::Client => DecodeError::protocol(
                    "MQTT-5 §2.1.2",
                    "a server sent a packet only a client may send",
                ),
            });
        }
        Ok(())
    }
}

/// The statement that fixes the reserved flags of `kind`: the packet's own where it has one,
/// else the general rule of §2.1.3.
fn reserved_flags_rule(kind: PacketType) -> &'static str {
    match kind {
        PacketType::PubRel => "MQTT-3.6.1-1",
        PacketType::Subscribe => "MQTT-3.8.1-1",
        PacketType::Unsubscribe => "MQTT-3.10.1-1",
        PacketType::Disconnect => "MQTT-3.14.1-1",
        PacketType::Auth => "MQTT-3.15.1-1",
        _ => "MQTT-2.1.3-1",
    }
}

/// Encodes packets for one connection, never producing a packet larger than the peer allows.
#[derive(Debug, Clone, Copy)]
pub struct Encoder {
    version: ProtocolVersion,
    max_packet_size: u32,
}

impl Encoder {
    /// An encoder for `version` with no limit but MQTT's own.
    pub fn new(version: ProtocolVersion) -> Self {
        Self {
            version,
            max_packet_size: PROTOCOL_MAX_PACKET_SIZE,
        }
    }

    /// Limits packets to the peer's Maximum Packet Size (from its CONNECT or CONNACK).
    pub fn set_max_packet_size(&mut self, max_packet_size: u32) {
        self.max_packet_size = max_packet_size.min(PROTOCOL_MAX_PACKET_SIZE);
    }

    /// The version packets are encoded in.
    pub fn version(&self) -> ProtocolVersion {
        self.version
    }

    /// The largest packet this encoder produces.
    pub fn max_packet_size(&self) -> u32 {
        self.max_packet_size
    }

    /// Appends `packet` to `buf` and returns its size. On error nothing is appended; on
    /// [`EncodeError::PacketTooLarge`] the caller may [`Packet::strip_diagnostics`] and try
    /// again, or drop a PUBLISH.
    pub fn encode<P: Encode + ?Sized>(
        &self,
        packet: &P,
        buf: &mut BytesMut,
    ) -> Result<usize, EncodeError> {
        encode(packet, self.version, self.max_packet_size, buf)
    }

    /// The size `packet` would have on the wire, fixed header included, without writing it:
    /// lets a broker decide not to send a message a subscriber could not accept.
    pub fn encoded_len<P: Encode + ?Sized>(&self, packet: &P) -> Result<u64, EncodeError> {
        encoded_len(packet, self.version)
    }

    /// Whether `packet` fits the peer's Maximum Packet Size.
    pub fn fits<P: Encode + ?Sized>(&self, packet: &P) -> bool {
        self.encoded_len(packet)
            .is_ok_and(|size| size <= u64::from(self.max_packet_size))
    }

    /// Encodes `packet`, and if it is too large for the peer, encodes it again without its
    /// Reason String and User Properties where the specification allows that.
    pub fn encode_fitting(
        &self,
        packet: &mut Packet,
        buf: &mut BytesMut,
    ) -> Result<usize, EncodeError> {
        match self.encode(packet, buf) {
            Err(EncodeError::PacketTooLarge { .. }) if packet.strip_diagnostics() => {
                self.encode(packet, buf)
            }
            other => other,
        }
    }
}
