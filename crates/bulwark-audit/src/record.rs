//! The record format and the hash chain.
//!
//! A record is one line: a JSON object without whitespace outside strings, ended by LF, whose
//! first two members are `"seq"` (1 for the first record of a trail, then one more for each
//! record) and `"prev"` (the SHA-256 of the previous record's line, LF excluded, in lowercase
//! hex; 64 zeros for the first record). The hash of a record is the SHA-256 of its bytes as
//! written: a verifier needs no canonical re-encoding, only the bytes.
//!
//! A checkpoint is a record of kind `checkpoint` whose `sig` is an Ed25519 signature (base64)
//! over [`checkpoint_message`]: its sequence number, its `prev` (which commits to every record
//! before it) and its time; `key` names the public key (base64 of its 32 bytes).

use std::fmt;

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// The kind of a checkpoint record.
pub const CHECKPOINT: &str = "checkpoint";
/// The kind of the record the broker writes first each time it starts.
pub const TRAIL_START: &str = "trail_start";
/// The kind of the record the broker writes last when it stops (before its final checkpoint).
pub const TRAIL_STOP: &str = "trail_stop";
/// The kind of the record that says how many events the queue had no room for.
pub const EVENTS_DROPPED: &str = "events_dropped";

/// A SHA-256 hash.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    /// The `prev` of a trail's first record.
    pub const ZERO: Self = Self([0; 32]);

    /// The hash of a record: SHA-256 over its line, LF excluded.
    pub fn of(line: &[u8]) -> Self {
        Self(Sha256::digest(line).into())
    }

    /// Lowercase hex, as records carry it.
    pub fn hex(&self) -> String {
        let mut out = String::with_capacity(64);
        for b in self.0 {
            for nibble in [b >> 4, b & 0xf] {
                // A nibble is below 16: `get` always finds it.
                out.push(char::from(
                    HEX.get(usize::from(nibble)).copied().unwrap_or(b'0'),
                ));
            }
        }
        out
    }

    /// Parses 64 lowercase hex digits (uppercase is refused: the writer never writes it, and
    /// one spelling per value keeps records comparable).
    pub fn parse(text: &str) -> Option<Self> {
        let bytes = text.as_bytes();
        if bytes.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (slot, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
            let [hi, lo] = pair else { return None };
            *slot = (nibble(*hi)? << 4) | nibble(*lo)?;
        }
        Some(Self(out))
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

/// What a verifier reads from a record: the chain fields, and what checkpoints and filters
/// need. Members it does not name are left alone (they are covered by the hash all the same).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Head {
    /// The sequence number.
    pub seq: u64,
    /// The previous record's hash, as written (checked by [`Head::prev_hash`]).
    pub prev: String,
    /// When, RFC 3339 UTC.
    #[serde(default)]
    pub time: Option<String>,
    /// What: a security event kind, or one of the trail's own kinds.
    #[serde(default)]
    pub kind: Option<String>,
    /// A checkpoint's public key (base64).
    #[serde(default)]
    pub key: Option<String>,
    /// A checkpoint's signature (base64).
    #[serde(default)]
    pub sig: Option<String>,
}

/// Why a line is not a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotARecord {
    /// Not UTF-8, or not a JSON object, or a member of the wrong type; serde's words.
    Json(String),
    /// Whitespace outside strings, or `seq` and `prev` not the first two members: the writer
    /// never writes such a line.
    Layout,
    /// `prev` is not 64 lowercase hex digits.
    Prev,
    /// `seq` is 0.
    Seq,
}

impl fmt::Display for NotARecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Json(why) => write!(f, "not a JSON record ({why})"),
            Self::Layout => f.write_str(
                "not in the written layout (`{\"seq\":N,\"prev\":\"...\",` first, no spaces)",
            ),
            Self::Prev => f.write_str("its prev is not 64 lowercase hex digits"),
            Self::Seq => f.write_str("its seq is 0"),
        }
    }
}

impl Head {
    /// Reads a record's line (LF excluded). Duplicate members are refused (serde), so one line
    /// cannot say two things to two readers.
    pub fn parse(line: &[u8]) -> Result<Self, NotARecord> {
        let head: Self =
            serde_json::from_slice(line).map_err(|err| NotARecord::Json(err.to_string()))?;
        if head.seq == 0 {
            return Err(NotARecord::Seq);
        }
        if Hash::parse(&head.prev).is_none() {
            return Err(NotARecord::Prev);
        }
        let start = format!("{{\"seq\":{},\"prev\":\"{}\"", head.seq, head.prev);
        if !line.starts_with(start.as_bytes()) || !compact(line) {
            return Err(NotARecord::Layout);
        }
        Ok(head)
    }

    /// `prev` as a hash ([`Head::parse`] checked it).
    pub fn prev_hash(&self) -> Hash {
        Hash::parse(&self.prev).unwrap_or(Hash::ZERO)
    }

    /// Whether this is a checkpoint.
    pub fn is_checkpoint(&self) -> bool {
        self.kind.as_deref() == Some(CHECKPOINT)
    }
}

/// Whether a JSON text has no whitespace outside its strings.
fn compact(line: &[u8]) -> bool {
    let mut in_string = false;
    let mut escaped = false;
    for &b in line {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if b == b'"' {
            in_string = true;
        } else if matches!(b, b' ' | b'\t' | b'\r' | b'\n') {
            return false;
        }
    }
    true
}

/// What a checkpoint signs: `bulwark-audit-v1 checkpoint SEQ PREV TIME` in ASCII, with single
/// spaces, PREV in lowercase hex.
pub fn checkpoint_message(seq: u64, prev: &Hash, time: &str) -> Vec<u8> {
    format!("bulwark-audit-v1 checkpoint {seq} {prev} {time}").into_bytes()
}

/// The writer's end of the chain: the next sequence number and the hash of the last record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    next: u64,
    head: Hash,
    since_checkpoint: u64,
}

impl Default for Chain {
    fn default() -> Self {
        Self::new()
    }
}

impl Chain {
    /// A new trail: the first record gets seq 1 and a zero `prev`.
    pub const fn new() -> Self {
        Self {
            next: 1,
            head: Hash::ZERO,
            since_checkpoint: 0,
        }
    }

    /// Goes on after `last`, the last line written (LF excluded), whatever it holds: its hash
    /// becomes the next `prev`, so even a damaged last line stays visible to a verifier.
    /// `last_seq` is the highest sequence number found before it (the writer scans back when
    /// `last` itself is damaged).
    pub fn resume(last: &[u8], last_seq: u64) -> Self {
        let seq = Head::parse(last).map_or(last_seq, |head| head.seq);
        Self {
            next: seq.saturating_add(1),
            head: Hash::of(last),
            since_checkpoint: 1,
        }
    }

    /// The sequence number the next record gets.
    pub const fn next_seq(&self) -> u64 {
        self.next
    }

    /// The hash of the last record.
    pub const fn head(&self) -> Hash {
        self.head
    }

    /// Records since the last checkpoint (a resumed chain counts its last line as one).
    pub const fn since_checkpoint(&self) -> u64 {
        self.since_checkpoint
    }

    /// Makes `body` (a JSON object, as `{"time":...}`) the next record and returns its line,
    /// LF excluded: `{"seq":N,"prev":"...",` then the members of `body`.
    pub fn append(&mut self, body: &str) -> String {
        let members = body
            .trim()
            .strip_prefix('{')
            .and_then(|rest| rest.strip_suffix('}'))
            .unwrap_or("");
        let mut line = String::with_capacity(body.len() + 96);
        line.push_str("{\"seq\":");
        line.push_str(&self.next.to_string());
        line.push_str(",\"prev\":\"");
        line.push_str(&self.head.hex());
        line.push('"');
        if !members.trim().is_empty() {
            line.push(',');
            line.push_str(members);
        }
        line.push('}');
        self.advance(&line);
        self.since_checkpoint += 1;
        line
    }

    /// A signed checkpoint at `time` (RFC 3339) over everything written so far, as the next
    /// record; returns its line, LF excluded.
    pub fn checkpoint(&mut self, time: &str, key: &crate::AuditKey) -> String {
        let message = checkpoint_message(self.next, &self.head, time);
        let sig = key.sign(&message);
        let line = format!(
            "{{\"seq\":{},\"prev\":\"{}\",\"time\":{},\"kind\":\"{CHECKPOINT}\",\"key\":\"{}\",\"sig\":\"{sig}\"}}",
            self.next,
            self.head.hex(),
            serde_json::Value::String(time.to_owned()),
            key.public().base64(),
        );
        self.advance(&line);
        self.since_checkpoint = 0;
        line
    }

    fn advance(&mut self, line: &str) {
        self.head = Hash::of(line.as_bytes());
        self.next = self.next.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use super::*;

    #[test]
    fn records_link_and_parse() {
        let mut chain = Chain::new();
        let a = chain.append(r#"{"time":"2026-12-08T00:00:00.000Z","kind":"auth_success"}"#);
        assert_eq!(
            a,
            format!(
                "{{\"seq\":1,\"prev\":\"{}\",\"time\":\"2026-12-08T00:00:00.000Z\",\"kind\":\"auth_success\"}}",
                "0".repeat(64)
            )
        );
        let b = chain.append("{}");
        let head = Head::parse(b.as_bytes()).unwrap();
        assert_eq!(head.seq, 2);
        assert_eq!(head.prev_hash(), Hash::of(a.as_bytes()));
        assert_eq!(chain.head(), Hash::of(b.as_bytes()));
        assert_eq!(chain.next_seq(), 3);
    }

    #[test]
    fn refuses_other_layouts() {
        let zero = "0".repeat(64);
        let ok = format!("{{\"seq\":1,\"prev\":\"{zero}\",\"kind\":\"a b\"}}");
        assert!(Head::parse(ok.as_bytes()).is_ok());
        for bad in [
            format!("{{\"prev\":\"{zero}\",\"seq\":1}}"),
            format!("{{\"seq\":1, \"prev\":\"{zero}\"}}"),
            format!("{{\"seq\":01,\"prev\":\"{zero}\"}}"),
            format!("{{\"seq\":0,\"prev\":\"{zero}\"}}"),
            format!("{{\"seq\":1,\"prev\":\"{}\"}}", "A".repeat(64)),
            format!("{{\"seq\":1,\"prev\":\"{zero}\",\"kind\":\"a\",\"kind\":\"b\"}}"),
            "[1]".to_owned(),
            String::new(),
        ] {
            assert!(Head::parse(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn hex_round_trips() {
        let h = Hash::of(b"x");
        assert_eq!(Hash::parse(&h.hex()), Some(h));
        assert_eq!(Hash::parse("zz"), None);
    }
}
