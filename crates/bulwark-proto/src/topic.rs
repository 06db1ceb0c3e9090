//! UTF-8 strings, topic names, topic filters (plain and shared) and client identifiers.
//!
//! All are backed by [`Bytes`], so decoding them from a packet copies nothing.

use bytes::Bytes;

use crate::DecodeError;

/// An MQTT UTF-8 Encoded String (§1.5.4): well-formed UTF-8 (no surrogates, no overlong forms),
/// no U+0000, at most 65,535 bytes.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MqttString(Bytes);

impl MqttString {
    /// Validates `bytes` as an MQTT string.
    pub fn from_bytes(bytes: Bytes) -> Result<Self, DecodeError> {
        if bytes.len() > usize::from(u16::MAX) {
            return Err(DecodeError::malformed(
                "MQTT-5 §1.5.4",
                "string longer than 65,535 bytes",
            ));
        }
        // One branch-free pass over the bytes (strings on the hot path are topic names, mostly
        // ASCII); full UTF-8 validation only where a byte is not ASCII.
        let (ascii, nul) = bytes.iter().fold((true, false), |(ascii, nul), &b| {
            (ascii & (b < 0x80), nul | (b == 0))
        });
        if !ascii && std::str::from_utf8(&bytes).is_err() {
            return Err(DecodeError::malformed(
                "MQTT-1.5.4-1",
                "string is not well-formed UTF-8 (or encodes a surrogate)",
            ));
        }
        // In well-formed UTF-8 a zero byte can only be U+0000.
        if nul {
            return Err(DecodeError::malformed(
                "MQTT-1.5.4-2",
                "string contains U+0000",
            ));
        }
        Ok(Self(bytes))
    }

    /// Validates a `&str` as an MQTT string.
    pub fn new(text: &str) -> Result<Self, DecodeError> {
        Self::from_bytes(Bytes::copy_from_slice(text.as_bytes()))
    }

    /// Wraps a static string; fails like [`MqttString::new`].
    pub fn from_static(text: &'static str) -> Result<Self, DecodeError> {
        Self::from_bytes(Bytes::from_static(text.as_bytes()))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        // Validated at construction; the fallback is never taken.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The UTF-8 bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The shared buffer holding the text.
    pub fn as_shared(&self) -> &Bytes {
        &self.0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True for the empty string.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for MqttString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl std::fmt::Display for MqttString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<str> for MqttString {
    fn eq(&self, other: &str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl PartialEq<&str> for MqttString {
    fn eq(&self, other: &&str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

/// A Topic Name (§4.7): a non-empty MQTT string without the wildcards `+` and `#`.
///
/// The one exception is the empty name of an MQTT 5.0 PUBLISH that carries a Topic Alias
/// (§3.3.2.3.4): only the decoder and [`TopicName::empty_for_alias`] make it.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicName(MqttString);

impl TopicName {
    /// Validates an MQTT string as a topic name.
    pub fn from_string(text: MqttString) -> Result<Self, DecodeError> {
        if text.is_empty() {
            return Err(DecodeError::malformed(
                "MQTT-4.7.3-1",
                "topic name is empty",
            ));
        }
        Self::check_no_wildcards(&text)?;
        Ok(Self(text))
    }

    /// Validates bytes as a topic name.
    pub fn from_bytes(bytes: Bytes) -> Result<Self, DecodeError> {
        Self::from_string(topic_string(bytes)?)
    }

    /// Validates a `&str` as a topic name.
    pub fn new(text: &str) -> Result<Self, DecodeError> {
        Self::from_bytes(Bytes::copy_from_slice(text.as_bytes()))
    }

    /// The empty topic name of a PUBLISH whose topic is given by a Topic Alias.
    pub fn empty_for_alias() -> Self {
        Self(MqttString::default())
    }

    pub(crate) fn from_string_allow_empty(text: MqttString) -> Result<Self, DecodeError> {
        Self::check_no_wildcards(&text)?;
        Ok(Self(text))
    }

    fn check_no_wildcards(text: &MqttString) -> Result<(), DecodeError> {
        let wildcard = text
            .as_bytes()
            .iter()
            .fold(false, |found, &b| found | (b == b'+') | (b == b'#'));
        if wildcard {
            return Err(DecodeError::malformed(
                "MQTT-3.3.2-2",
                "topic name contains a wildcard character",
            ));
        }
        Ok(())
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The MQTT string.
    pub fn as_mqtt_str(&self) -> &MqttString {
        &self.0
    }

    /// True only for the empty name of an aliased PUBLISH.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// True for names starting with `$`, which leading wildcards do not match ([MQTT-4.7.2-1]).
    pub fn is_system(&self) -> bool {
        self.0.as_bytes().first() == Some(&b'$')
    }
}

impl std::fmt::Debug for TopicName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&self.0, f)
    }
}

impl std::fmt::Display for TopicName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The MQTT string under a topic name or filter, whose length has a rule of its own
/// ([MQTT-4.7.3-3]); off the wire the two-byte length prefix already guarantees it.
fn topic_string(bytes: Bytes) -> Result<MqttString, DecodeError> {
    if bytes.len() > usize::from(u16::MAX) {
        return Err(DecodeError::malformed(
            "MQTT-4.7.3-3",
            "topic longer than 65,535 bytes",
        ));
    }
    MqttString::from_bytes(bytes)
}

const SHARE_PREFIX: &[u8] = b"$share/";

/// A Topic Filter (§4.7): a non-empty MQTT string in which `#` may only be a whole last level
/// and `+` only a whole level. A filter beginning `$share/` is a shared subscription (§4.8.2):
/// `$share/{ShareName}/{filter}` with a non-empty share name free of `/`, `+` and `#`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicFilter {
    text: MqttString,
    /// For a shared filter, the byte offset where the share name ends (the `/` after it).
    share_end: Option<usize>,
}

impl TopicFilter {
    /// Validates an MQTT string as a topic filter.
    pub fn from_string(text: MqttString) -> Result<Self, DecodeError> {
        let bytes = text.as_bytes();
        let (share_end, filter) = match bytes.strip_prefix(SHARE_PREFIX) {
            Some(rest) => {
                let name_len = rest.iter().position(|&b| b == b'/').unwrap_or(rest.len());
                let (name, filter) = rest.split_at(name_len);
                if name.is_empty() {
                    return Err(DecodeError::malformed(
                        "MQTT-4.8.2-1",
                        "shared subscription has an empty share name",
                    ));
                }
                if name.iter().any(|&b| b == b'+' || b == b'#') {
                    return Err(DecodeError::malformed(
                        "MQTT-4.8.2-2",
                        "share name contains a wildcard character",
                    ));
                }
                if filter.is_empty() {
                    return Err(DecodeError::malformed(
                        "MQTT-4.8.2-2",
                        "shared subscription has no '/' and topic filter after the share name",
                    ));
                }
                let filter = filter.get(1..).unwrap_or_default();
                if filter.is_empty() {
                    return Err(DecodeError::malformed(
                        "MQTT-4.8.2-2",
                        "shared subscription has no topic filter after the share name",
                    ));
                }
                (Some(SHARE_PREFIX.len() + name_len), filter)
            }
            None => (None, bytes),
        };
        check_filter(filter)?;
        Ok(Self { text, share_end })
    }

    /// Validates bytes as a topic filter.
    pub fn from_bytes(bytes: Bytes) -> Result<Self, DecodeError> {
        Self::from_string(topic_string(bytes)?)
    }

    /// Validates a `&str` as a topic filter.
    pub fn new(text: &str) -> Result<Self, DecodeError> {
        Self::from_bytes(Bytes::copy_from_slice(text.as_bytes()))
    }

    /// The whole filter as received, `$share/` prefix included.
    pub fn as_str(&self) -> &str {
        self.text.as_str()
    }

    /// The MQTT string.
    pub fn as_mqtt_str(&self) -> &MqttString {
        &self.text
    }

    /// The share name of a shared subscription.
    pub fn share_name(&self) -> Option<&str> {
        let end = self.share_end?;
        self.as_str().get(SHARE_PREFIX.len()..end)
    }

    /// True for `$share/...` filters.
    pub fn is_shared(&self) -> bool {
        self.share_end.is_some()
    }

    /// The filter that topic names are matched against: without the `$share/{name}/` prefix.
    pub fn match_filter(&self) -> &str {
        match self.share_end {
            Some(end) => self.as_str().get(end + 1..).unwrap_or_default(),
            None => self.as_str(),
        }
    }

    /// True if the matching part contains `+` or `#`.
    pub fn has_wildcards(&self) -> bool {
        self.match_filter().bytes().any(|b| b == b'+' || b == b'#')
    }

    /// Whether `topic` matches this filter (§4.7), including the rule that a leading wildcard
    /// does not match a name starting with `$` ([MQTT-4.7.2-1]).
    pub fn matches(&self, topic: &TopicName) -> bool {
        let filter = self.match_filter();
        let name = topic.as_str();
        if name.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
            return false;
        }
        let mut filter_levels = filter.split('/');
        let mut name_levels = name.split('/');
        loop {
            match (filter_levels.next(), name_levels.next()) {
                (Some("#"), _) => return true,
                (Some("+"), Some(_)) => {}
                (Some(f), Some(n)) if f == n => {}
                (None, None) => return true,
                _ => return false,
            }
        }
    }
}

/// The wildcard rules of §4.7.1 for the part of a filter that is matched.
fn check_filter(filter: &[u8]) -> Result<(), DecodeError> {
    if filter.is_empty() {
        return Err(DecodeError::malformed(
            "MQTT-4.7.3-1",
            "topic filter is empty",
        ));
    }
    let mut levels = filter.split(|&b| b == b'/').peekable();
    while let Some(level) = levels.next() {
        if level.contains(&b'#') {
            if level != b"#" {
                return Err(DecodeError::malformed(
                    "MQTT-4.7.1-1",
                    "'#' in a topic filter is not a whole level",
                ));
            }
            if levels.peek().is_some() {
                return Err(DecodeError::malformed(
                    "MQTT-4.7.1-1",
                    "'#' in a topic filter is not the last level",
                ));
            }
        }
        if level.contains(&b'+') && level != b"+" {
            return Err(DecodeError::malformed(
                "MQTT-4.7.1-2",
                "'+' in a topic filter is not a whole level",
            ));
        }
    }
    Ok(())
}

impl std::fmt::Debug for TopicFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&self.text, f)
    }
}

impl std::fmt::Display for TopicFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A Client Identifier (§3.1.3.1): any MQTT string, possibly empty. Which identifiers a server
/// accepts (length, characters, empty) is the server's policy, not the codec's.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ClientId(MqttString);

impl ClientId {
    /// Wraps a validated MQTT string.
    pub fn from_string(text: MqttString) -> Self {
        Self(text)
    }

    /// Validates a `&str` as a client identifier.
    pub fn new(text: &str) -> Result<Self, DecodeError> {
        Ok(Self(MqttString::new(text)?))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The MQTT string.
    pub fn as_mqtt_str(&self) -> &MqttString {
        &self.0
    }

    /// True for the zero-length identifier (the server assigns one).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// True if every server must accept it ([MQTT-3.1.3-5]): 1 to 23 characters from
    /// `0-9a-zA-Z`.
    pub fn is_always_allowed(&self) -> bool {
        (1..=23).contains(&self.0.len()) && self.0.as_bytes().iter().all(u8::is_ascii_alphanumeric)
    }
}

impl std::fmt::Debug for ClientId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&self.0, f)
    }
}

impl std::fmt::Display for ClientId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
