//! Helpers shared by the fuzz targets: drive a [`Decoder`] over bytes split into chunks, and
//! check that a decoded packet encodes and decodes back to itself.
//!
//! Every check panics on failure, which libFuzzer reports as a crash.

use bulwark_proto::{
    ClientId, ConnAck, Connect, DecodeError, Decoder, DecoderLimits, Encoder, Packet,
    ProtocolVersion, ReasonCode, Role,
};
use bytes::BytesMut;

/// The version a selector byte picks.
pub fn version_for(byte: u8) -> ProtocolVersion {
    match byte % 3 {
        0 => ProtocolVersion::V3_1,
        1 => ProtocolVersion::V3_1_1,
        _ => ProtocolVersion::V5,
    }
}

/// A fresh decoder for `role`; `version` only matters for a client.
pub fn decoder(role: Role, version: ProtocolVersion) -> Decoder {
    match role {
        Role::Server => Decoder::server(DecoderLimits::default()),
        Role::Client => Decoder::client(version, DecoderLimits::default()),
    }
}

/// What a decoder made of a stream.
#[derive(Debug, PartialEq)]
pub struct Outcome {
    /// The packets, in order.
    pub packets: Vec<Packet>,
    /// The error that ended the stream, if any.
    pub error: Option<DecodeError>,
    /// The protocol version the decoder ended with.
    pub version: Option<ProtocolVersion>,
}

/// Feeds `data` in chunks of `chunk` bytes (0: all at once), polling after each, and checks
/// that an error, once returned, is returned again whatever arrives afterwards.
pub fn feed(mut decoder: Decoder, data: &[u8], chunk: usize) -> Outcome {
    let chunk = if chunk == 0 { data.len().max(1) } else { chunk };
    let mut packets = Vec::new();
    let mut error = None;
    'chunks: for piece in data.chunks(chunk) {
        decoder.handle_bytes(piece);
        loop {
            match decoder.poll_packet() {
                Ok(Some(packet)) => packets.push(packet),
                Ok(None) => break,
                Err(err) => {
                    error = Some(err);
                    break 'chunks;
                }
            }
        }
    }
    if let Some(err) = &error {
        assert_eq!(
            decoder.poll_packet().as_ref(),
            Err(err),
            "error did not stick"
        );
        decoder.handle_bytes(&[0xC0, 0x00, 0xD0, 0x00]);
        assert_eq!(
            decoder.poll_packet().as_ref(),
            Err(err),
            "error did not stick"
        );
    }
    Outcome {
        packets,
        error,
        version: decoder.protocol_version(),
    }
}

/// Decodes `data` all at once and in chunks of `chunk` bytes, and checks that the split makes
/// no difference.
pub fn decode_both_ways(
    role: Role,
    version: ProtocolVersion,
    data: &[u8],
    chunk: usize,
) -> Outcome {
    let whole = feed(decoder(role, version), data, 0);
    if chunk != 0 {
        let chunked = feed(decoder(role, version), data, chunk);
        assert_eq!(
            whole, chunked,
            "the result depends on how the bytes are split"
        );
    }
    whole
}

/// The packet a decoder for `role` needs first: a CONNECT for a server, an accepting CONNACK
/// for a client.
pub fn first_packet(role: Role, version: ProtocolVersion) -> Packet {
    match role {
        Role::Server => {
            let client_id = ClientId::new("fuzz").expect("a valid client identifier");
            Packet::Connect(Box::new(Connect::new(version, client_id)))
        }
        Role::Client => Packet::ConnAck(Box::new(ConnAck::new(false, ReasonCode::Success))),
    }
}

/// [`first_packet`], encoded.
pub fn opening(role: Role, version: ProtocolVersion) -> Vec<u8> {
    let mut buf = BytesMut::new();
    if let Err(err) = Encoder::new(version).encode(&first_packet(role, version), &mut buf) {
        panic!("the opening packet does not encode: {err}");
    }
    buf.to_vec()
}

/// Encodes `packet` in `version`, decodes it with a fresh decoder for `role` after the
/// CONNECT (server) or CONNACK (client) that decoder needs first, and checks it comes back
/// equal.
pub fn assert_reencodes(role: Role, version: ProtocolVersion, packet: &Packet) {
    let mut stream = Vec::with_capacity(2);
    match (role, packet) {
        (Role::Server, Packet::Connect(_)) | (Role::Client, Packet::ConnAck(_)) => {}
        _ => stream.push(first_packet(role, version)),
    }
    stream.push(packet.clone());
    let encoder = Encoder::new(version);
    let mut buf = BytesMut::new();
    for p in &stream {
        if let Err(err) = encoder.encode(p, &mut buf) {
            panic!("a decoded packet does not encode in {version}: {err}\n{p:?}");
        }
    }
    let again = feed(decoder(role, version), &buf, 0);
    if let Some(err) = &again.error {
        panic!(
            "a re-encoded packet does not decode ({role:?}, {version}): {err}\n{packet:?}\n{buf:02X?}"
        );
    }
    assert_eq!(
        again.packets.len(),
        stream.len(),
        "{role:?} {version} {packet:?}"
    );
    assert_eq!(
        again.packets.last(),
        Some(packet),
        "{role:?} {version}: decode(encode(p)) != p"
    );
}
