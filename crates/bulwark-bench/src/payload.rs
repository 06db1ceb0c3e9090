//! The benchmark payload: when a message was sent and its place in its publisher's sequence.
//!
//! Layout: 8 bytes send time (nanoseconds since the run's shared start `Instant`, big endian),
//! 8 bytes sequence number (big endian, from 0 per publisher), then filler up to the requested
//! size. All clients live in one process, so one monotonic clock serves both ends and no clock
//! synchronisation is needed.

use bytes::{BufMut, BytesMut};

/// Bytes taken by the send time and the sequence number.
pub const HEADER_LEN: usize = 16;

/// The smallest payload `--payload` accepts: the header alone.
pub const MIN_PAYLOAD: usize = HEADER_LEN;

/// What fills the payload after the header: printable, so a payload is readable in a capture.
const FILLER: u8 = b'.';

/// What a received payload says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Nanoseconds since the run's start when the publisher encoded the message.
    pub sent_ns: u64,
    /// The message's number in its publisher's sequence.
    pub seq: u64,
}

/// Appends a payload of `size` bytes (at least [`HEADER_LEN`]) carrying `stamp`.
pub fn write(buf: &mut BytesMut, size: usize, stamp: Stamp) {
    buf.reserve(size.max(HEADER_LEN));
    buf.put_u64(stamp.sent_ns);
    buf.put_u64(stamp.seq);
    buf.put_bytes(FILLER, size.saturating_sub(HEADER_LEN));
}

/// Reads the stamp of a payload, or `None` if it is too short to be one of ours.
pub fn read(payload: &[u8]) -> Option<Stamp> {
    let sent_ns = payload.get(0..8)?.try_into().ok().map(u64::from_be_bytes)?;
    let seq = payload
        .get(8..16)?
        .try_into()
        .ok()
        .map(u64::from_be_bytes)?;
    Some(Stamp { sent_ns, seq })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_size() {
        let mut buf = BytesMut::new();
        let stamp = Stamp {
            sent_ns: 0x0102_0304_0506_0708,
            seq: u64::MAX - 1,
        };
        write(&mut buf, 64, stamp);
        assert_eq!(buf.len(), 64);
        assert_eq!(&buf[..8], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert!(buf[16..].iter().all(|&b| b == FILLER));
        assert_eq!(read(&buf), Some(stamp));
    }

    #[test]
    fn minimum_size_is_the_header() {
        let mut buf = BytesMut::new();
        let stamp = Stamp { sent_ns: 7, seq: 9 };
        write(&mut buf, 3, stamp);
        assert_eq!(buf.len(), HEADER_LEN);
        assert_eq!(read(&buf), Some(stamp));
    }

    #[test]
    fn short_payloads_are_not_ours() {
        assert_eq!(read(b""), None);
        assert_eq!(read(&[0; 15]), None);
    }
}
