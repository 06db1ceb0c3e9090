//! Reading and writing the data representations of §1.5: integers, Variable Byte Integers,
//! strings and binary data. The reader never panics: every read is bounds-checked and a short
//! packet becomes a Malformed Packet error.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::{DecodeError, MqttString, VARINT_MAX};

/// Decodes a Variable Byte Integer from the front of `buf`: `Ok(None)` if more bytes are
/// needed, else the value and the number of bytes it took.
pub(crate) fn read_varint(buf: &[u8]) -> Result<Option<(u32, usize)>, DecodeError> {
    let mut value = 0u32;
    for (index, &byte) in buf.iter().take(4).enumerate() {
        value |= u32::from(byte & 0x7F) << (7 * index);
        if byte & 0x80 == 0 {
            if index > 0 && byte == 0 {
                return Err(DecodeError::malformed(
                    "MQTT-1.5.5-1",
                    "variable byte integer is not in its shortest form",
                ));
            }
            return Ok(Some((value, index + 1)));
        }
    }
    if buf.len() >= 4 {
        return Err(DecodeError::malformed(
            "MQTT-5 §1.5.5",
            "variable byte integer is longer than four bytes",
        ));
    }
    Ok(None)
}

/// Bytes a Variable Byte Integer takes. Values above [`VARINT_MAX`] are never written.
pub(crate) const fn varint_len(value: u32) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Writes a Variable Byte Integer; the caller keeps `value <= VARINT_MAX`.
pub(crate) fn put_varint(buf: &mut BytesMut, value: u32) {
    debug_assert!(value <= VARINT_MAX);
    let mut value = value;
    loop {
        let mut byte = (value & 0x7F) as u8;
        value >>= 7;
        if value > 0 {
            byte |= 0x80;
        }
        buf.put_u8(byte);
        if value == 0 {
            break;
        }
    }
}

/// Writes a two-byte length and the bytes; the caller keeps `data.len() <= 65,535`.
pub(crate) fn put_binary(buf: &mut BytesMut, data: &[u8]) {
    debug_assert!(data.len() <= usize::from(u16::MAX));
    buf.put_u16(u16::try_from(data.len()).unwrap_or(u16::MAX));
    buf.put_slice(data);
}

/// Writes an MQTT UTF-8 string (valid and short enough by construction).
pub(crate) fn put_string(buf: &mut BytesMut, text: &MqttString) {
    put_binary(buf, text.as_bytes());
}

/// A cursor over one packet's body.
#[derive(Debug)]
pub(crate) struct Reader {
    buf: Bytes,
}

impl Reader {
    pub(crate) fn new(buf: Bytes) -> Self {
        Self { buf }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        if self.buf.is_empty() {
            return Err(DecodeError::truncated(field));
        }
        Ok(self.buf.get_u8())
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        if self.buf.len() < 2 {
            return Err(DecodeError::truncated(field));
        }
        Ok(self.buf.get_u16())
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        if self.buf.len() < 4 {
            return Err(DecodeError::truncated(field));
        }
        Ok(self.buf.get_u32())
    }

    pub(crate) fn varint(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        match read_varint(&self.buf)? {
            Some((value, len)) => {
                self.buf.advance(len);
                Ok(value)
            }
            None => Err(DecodeError::truncated(field)),
        }
    }

    /// The next `len` bytes, shared with the input buffer.
    pub(crate) fn take(&mut self, len: usize, field: &'static str) -> Result<Bytes, DecodeError> {
        if self.buf.len() < len {
            return Err(DecodeError::truncated(field));
        }
        Ok(self.buf.split_to(len))
    }

    /// Binary Data (§1.5.6): a two-byte length and that many bytes.
    pub(crate) fn binary(&mut self, field: &'static str) -> Result<Bytes, DecodeError> {
        let len = self.u16(field)?;
        self.take(usize::from(len), field)
    }

    /// A UTF-8 Encoded String (§1.5.4).
    pub(crate) fn string(&mut self, field: &'static str) -> Result<MqttString, DecodeError> {
        MqttString::from_bytes(self.binary(field)?)
    }

    /// Everything left (a PUBLISH payload).
    pub(crate) fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }

    /// Fails if any bytes are left after the packet's last field.
    pub(crate) fn finish(&self, packet: &'static str) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::leftover(packet))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_table() {
        // (bytes, expected): the boundaries of §1.5.5 Table 1-1 and the failures around them.
        let ok: &[(&[u8], u32)] = &[
            (&[0x00], 0),
            (&[0x7F], 127),
            (&[0x80, 0x01], 128),
            (&[0xFF, 0x7F], 16_383),
            (&[0x80, 0x80, 0x01], 16_384),
            (&[0xFF, 0xFF, 0x7F], 2_097_151),
            (&[0x80, 0x80, 0x80, 0x01], 2_097_152),
            (&[0xFF, 0xFF, 0xFF, 0x7F], 268_435_455),
        ];
        for &(bytes, value) in ok {
            assert_eq!(
                read_varint(bytes),
                Ok(Some((value, bytes.len()))),
                "{bytes:02X?}"
            );
            let mut out = BytesMut::new();
            put_varint(&mut out, value);
            assert_eq!(&out[..], bytes);
            assert_eq!(varint_len(value), bytes.len());
        }
        let incomplete: &[&[u8]] = &[&[], &[0x80], &[0xFF, 0xFF], &[0x80, 0x80, 0x80]];
        for &bytes in incomplete {
            assert_eq!(read_varint(bytes), Ok(None), "{bytes:02X?}");
        }
        let too_long: &[&[u8]] = &[&[0xFF, 0xFF, 0xFF, 0xFF, 0x7F], &[0x80, 0x80, 0x80, 0x80]];
        for &bytes in too_long {
            let err = read_varint(bytes).err().map(|e| e.rule());
            assert_eq!(err, Some("MQTT-5 §1.5.5"), "{bytes:02X?}");
        }
        let not_minimal: &[&[u8]] = &[
            &[0x80, 0x00],
            &[0xFF, 0x80, 0x00],
            &[0x81, 0x80, 0x80, 0x00],
        ];
        for &bytes in not_minimal {
            let err = read_varint(bytes).err().map(|e| e.rule());
            assert_eq!(err, Some("MQTT-1.5.5-1"), "{bytes:02X?}");
        }
    }

    #[test]
    fn reader_reports_truncation_instead_of_panicking() {
        let mut reader = Reader::new(Bytes::from_static(&[0x00, 0x05, b'a', b'b']));
        let err = reader.string("client identifier").err();
        assert_eq!(
            err.map(|e| e.to_string()),
            Some("[MQTT-5 §2.1.4] packet ends inside its client identifier".to_owned())
        );
        let mut reader = Reader::new(Bytes::from_static(&[0x01]));
        assert!(reader.u16("packet identifier").is_err());
        assert!(reader.u32("property").is_err());
        assert_eq!(reader.u8("flags"), Ok(1));
        assert!(reader.u8("flags").is_err());
    }
}
