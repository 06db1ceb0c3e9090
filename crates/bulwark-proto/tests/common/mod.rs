//! Byte builders shared by the codec's tests: a Variable Byte Integer, a packet from its first
//! byte and body, a length-prefixed string.
#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    reason = "test helpers; each test file uses a different subset"
)]

/// `value` as a Variable Byte Integer (§1.5.5).
pub fn varint(mut value: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let mut byte = (value % 128) as u8;
        value /= 128;
        if value > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if value == 0 {
            return out;
        }
    }
}

/// A packet: its first byte, the Remaining Length, the body.
pub fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    out.extend(varint(body.len()));
    out.extend_from_slice(body);
    out
}

/// A two-byte length, then `text` (a UTF-8 string or binary data on the wire).
pub fn string(text: &[u8]) -> Vec<u8> {
    let mut out = u16::try_from(text.len()).unwrap().to_be_bytes().to_vec();
    out.extend_from_slice(text);
    out
}
