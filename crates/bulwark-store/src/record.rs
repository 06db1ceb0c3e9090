//! How the disk store writes its records: a compact binary layout of its own, versioned and
//! checksummed, so that a damaged record is named rather than read wrong.
//!
//! Every value is `[format][kind][body][crc32]`: the format version (1), the kind of record
//! (session, message, retained message), the body, and a CRC-32 of everything before it,
//! little-endian. Integers are big-endian, strings and byte strings are length-prefixed (u32),
//! optional fields start with a 0/1 byte. Times are wall-clock milliseconds since the Unix
//! epoch: the engine's `Instant`s mean nothing to another process, and time spent down must
//! count ([`Clock`]).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bulwark_acl::Principal;
use bulwark_core::{Delivery, Message, OutState, SessionRecord, SubscriptionRecord, WillRecord};
use bulwark_proto::{
    MqttString, PacketId, PayloadFormat, PublishProperties, QoS, RetainHandling, SubscriptionId,
    SubscriptionOptions, TopicFilter, TopicName, UserProperty, Will, WillProperties,
};
use bytes::Bytes;

use crate::Sent;

/// The record layout this build writes and reads.
pub(crate) const FORMAT: u8 = 1;

const KIND_SESSION: u8 = 1;
const KIND_MESSAGE: u8 = 2;
const KIND_RETAINED: u8 = 3;

/// The engine's clock tied to the wall clock at one moment: converts `Instant`s to Unix
/// milliseconds when writing and back when reading (in another process, after a reboot).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    instant: Instant,
    unix_ms: u64,
}

impl Clock {
    /// The clocks as they read now.
    pub(crate) fn now() -> Self {
        let unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Self {
            instant: Instant::now(),
            unix_ms,
        }
    }

    /// `at` as Unix milliseconds.
    pub(crate) fn to_unix(self, at: Instant) -> u64 {
        if at >= self.instant {
            let ahead = u64::try_from(at.duration_since(self.instant).as_millis()).unwrap_or(0);
            self.unix_ms.saturating_add(ahead)
        } else {
            let behind = u64::try_from(self.instant.duration_since(at).as_millis()).unwrap_or(0);
            self.unix_ms.saturating_sub(behind)
        }
    }

    /// Unix milliseconds as an `Instant`; `Err(how long ago)` for a time further back than
    /// this process's clock reaches (before the machine booted, typically).
    pub(crate) fn instant_of(self, ms: u64) -> Result<Instant, Duration> {
        if ms >= self.unix_ms {
            let ahead = Duration::from_millis(ms - self.unix_ms);
            // Centuries ahead: as far as the clock goes, which is "never" in practice.
            Ok(self.instant.checked_add(ahead).unwrap_or_else(|| {
                self.instant
                    .checked_add(Duration::from_secs(100 * 365 * 86_400))
                    .unwrap_or(self.instant)
            }))
        } else {
            let ago = Duration::from_millis(self.unix_ms - ms);
            self.instant.checked_sub(ago).ok_or(ago)
        }
    }

    /// Unix milliseconds as an `Instant`, or now for a time too far back to represent: for
    /// deadlines (message expiry, a will's time), which are then simply due.
    fn deadline(self, ms: u64) -> Instant {
        self.instant_of(ms).unwrap_or(self.instant)
    }
}

/// Writes a record body.
struct Writer(Vec<u8>);

impl Writer {
    fn new(kind: u8) -> Self {
        let mut buf = Vec::with_capacity(128);
        buf.push(FORMAT);
        buf.push(kind);
        Self(buf)
    }

    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }

    fn bool(&mut self, v: bool) {
        self.0.push(u8::from(v));
    }

    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }

    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }

    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }

    fn len(&mut self, n: usize) {
        // Nothing the engine holds comes near 4 GiB (MQTT packets stop at 256 MiB).
        self.u32(u32::try_from(n).unwrap_or(u32::MAX));
    }

    fn bytes(&mut self, v: &[u8]) {
        self.len(v.len());
        self.0.extend_from_slice(v);
    }

    fn str(&mut self, v: &str) {
        self.bytes(v.as_bytes());
    }

    fn opt<T>(&mut self, v: Option<T>, mut f: impl FnMut(&mut Self, T)) {
        match v {
            None => self.u8(0),
            Some(v) => {
                self.u8(1);
                f(self, v);
            }
        }
    }

    fn finish(mut self) -> Vec<u8> {
        let crc = crc32fast::hash(&self.0);
        self.0.extend_from_slice(&crc.to_le_bytes());
        self.0
    }
}

/// Reads a record body; every error says what did not read.
struct Reader<'a> {
    buf: &'a [u8],
}

type Read<T> = Result<T, String>;

impl<'a> Reader<'a> {
    /// Checks the checksum, format and kind of `record`.
    fn open(record: &'a [u8], kind: u8) -> Read<Self> {
        let Some(split) = record.len().checked_sub(4) else {
            return Err(format!("{} bytes: too short to be a record", record.len()));
        };
        let (body, crc) = record.split_at(split);
        let stored = u32::from_le_bytes(crc.try_into().map_err(|_| "no checksum".to_owned())?);
        let actual = crc32fast::hash(body);
        if stored != actual {
            return Err(format!(
                "checksum mismatch (stored {stored:08x}, computed {actual:08x})"
            ));
        }
        let mut r = Self { buf: body };
        let format = r.u8()?;
        if format != FORMAT {
            return Err(format!(
                "record format {format}, this build reads format {FORMAT}"
            ));
        }
        let found = r.u8()?;
        if found != kind {
            return Err(format!(
                "a record of kind {found} where kind {kind} belongs"
            ));
        }
        Ok(r)
    }

    fn take(&mut self, n: usize) -> Read<&'a [u8]> {
        if n > self.buf.len() {
            return Err(format!(
                "cut short: {n} bytes expected, {} left",
                self.buf.len()
            ));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Read<[u8; N]> {
        self.take(N)?.try_into().map_err(|_| "cut short".to_owned())
    }

    fn u8(&mut self) -> Read<u8> {
        Ok(self.array::<1>()?[0])
    }

    fn bool(&mut self) -> Read<bool> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(format!("{other} where a flag (0 or 1) belongs")),
        }
    }

    fn u16(&mut self) -> Read<u16> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Read<u32> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Read<u64> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn bytes(&mut self) -> Read<&'a [u8]> {
        let n = usize::try_from(self.u32()?).map_err(|_| "length too large".to_owned())?;
        self.take(n)
    }

    fn str(&mut self) -> Read<&'a str> {
        std::str::from_utf8(self.bytes()?).map_err(|e| format!("a string that is not UTF-8: {e}"))
    }

    fn arc_str(&mut self) -> Read<Arc<str>> {
        Ok(Arc::from(self.str()?))
    }

    fn opt<T>(&mut self, mut f: impl FnMut(&mut Self) -> Read<T>) -> Read<Option<T>> {
        match self.u8()? {
            0 => Ok(None),
            1 => f(self).map(Some),
            other => Err(format!(
                "{other} where an optional field's tag (0 or 1) belongs"
            )),
        }
    }

    fn done(&self) -> Read<()> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(format!("{} bytes left over at the end", self.buf.len()))
        }
    }

    fn mqtt_string(&mut self) -> Read<MqttString> {
        MqttString::new(self.str()?).map_err(|e| e.to_string())
    }

    fn topic(&mut self) -> Read<TopicName> {
        let text = self.str()?;
        TopicName::new(text).map_err(|e| format!("topic {text:?}: {e}"))
    }

    fn qos(&mut self) -> Read<QoS> {
        let v = self.u8()?;
        QoS::from_u8(v).ok_or_else(|| format!("QoS {v}"))
    }
}

/// The parts of a message common to messages, retained messages and wills.
struct Common {
    topic: TopicName,
    payload: Bytes,
    qos: QoS,
    retain: bool,
    properties: PublishProperties,
}

fn write_common(w: &mut Writer, topic: &TopicName, payload: &[u8], qos: QoS, retain: bool) {
    w.str(topic.as_str());
    w.bytes(payload);
    w.u8(qos.as_u8());
    w.bool(retain);
}

fn write_properties(w: &mut Writer, p: &PublishProperties) {
    w.opt(p.payload_format_indicator, |w, f| {
        w.u8(match f {
            PayloadFormat::Unspecified => 0,
            PayloadFormat::Utf8 => 1,
        });
    });
    w.opt(p.message_expiry_interval, Writer::u32);
    w.opt(p.response_topic.as_ref(), |w, t| w.str(t.as_str()));
    w.opt(p.correlation_data.as_ref(), |w, d| w.bytes(d));
    w.len(p.user_properties.len());
    for u in &p.user_properties {
        w.str(u.name.as_str());
        w.str(u.value.as_str());
    }
    w.opt(p.content_type.as_ref(), |w, c| w.str(c.as_str()));
}

fn read_common(r: &mut Reader<'_>) -> Read<Common> {
    let topic = r.topic()?;
    let payload = Bytes::copy_from_slice(r.bytes()?);
    let qos = r.qos()?;
    let retain = r.bool()?;
    let payload_format_indicator = r.opt(|r| match r.u8()? {
        0 => Ok(PayloadFormat::Unspecified),
        1 => Ok(PayloadFormat::Utf8),
        other => Err(format!("payload format {other}")),
    })?;
    let message_expiry_interval = r.opt(Reader::u32)?;
    let response_topic = r.opt(Reader::topic)?;
    let correlation_data = r.opt(|r| Ok(Bytes::copy_from_slice(r.bytes()?)))?;
    let n = r.u32()?;
    let mut user_properties = Vec::new();
    for _ in 0..n {
        let name = r.mqtt_string()?;
        let value = r.mqtt_string()?;
        user_properties.push(UserProperty::new(name, value));
    }
    let content_type = r.opt(Reader::mqtt_string)?;
    Ok(Common {
        topic,
        payload,
        qos,
        retain,
        properties: PublishProperties {
            payload_format_indicator,
            message_expiry_interval,
            response_topic,
            correlation_data,
            user_properties,
            content_type,
            ..PublishProperties::default()
        },
    })
}

fn write_message(w: &mut Writer, m: &Message, clock: Clock) {
    write_common(w, &m.topic, &m.payload, m.qos, m.retain);
    write_properties(w, &m.properties);
    w.opt(m.expires_at, |w, at| w.u64(clock.to_unix(at)));
}

fn read_message(r: &mut Reader<'_>, clock: Clock) -> Read<Message> {
    let c = read_common(r)?;
    let expires_at = r.opt(Reader::u64)?.map(|ms| clock.deadline(ms));
    Ok(Message {
        topic: c.topic,
        payload: c.payload,
        qos: c.qos,
        retain: c.retain,
        properties: c.properties,
        expires_at,
        // No Local was applied when the message was routed; a stored message is past that.
        publisher: None,
    })
}

/// A QoS 1/2 message held for a session.
pub(crate) fn encode_message(delivery: &Delivery, sent: Sent, clock: Clock) -> Vec<u8> {
    let mut w = Writer::new(KIND_MESSAGE);
    w.u8(delivery.qos.as_u8());
    w.bool(delivery.retain);
    w.len(delivery.subscription_ids.len());
    for id in &delivery.subscription_ids {
        w.u32(id.get());
    }
    w.opt(sent, |w, (id, state)| {
        w.u16(id.get());
        w.u8(match state {
            OutState::AwaitPubAck => 1,
            OutState::AwaitPubRec => 2,
            OutState::AwaitPubComp => 3,
        });
    });
    write_message(&mut w, &delivery.message, clock);
    w.finish()
}

/// Reads what [`encode_message`] wrote; `seq` is the record's key.
pub(crate) fn decode_message(record: &[u8], seq: u64, clock: Clock) -> Read<(Delivery, Sent)> {
    let mut r = Reader::open(record, KIND_MESSAGE)?;
    let qos = r.qos()?;
    let retain = r.bool()?;
    let n = r.u32()?;
    let mut subscription_ids = Vec::new();
    for _ in 0..n {
        let v = r.u32()?;
        subscription_ids.push(SubscriptionId::new(v).ok_or(format!("subscription id {v}"))?);
    }
    let sent = r.opt(|r| {
        let id = r.u16()?;
        let id = PacketId::new(id).ok_or("packet identifier 0")?;
        let state = match r.u8()? {
            1 => OutState::AwaitPubAck,
            2 => OutState::AwaitPubRec,
            3 => OutState::AwaitPubComp,
            other => return Err(format!("exchange state {other}")),
        };
        Ok((id, state))
    })?;
    let message = read_message(&mut r, clock)?;
    r.done()?;
    if qos == QoS::AtMostOnce {
        return Err("a QoS 0 delivery (only QoS 1 and 2 are stored)".to_owned());
    }
    Ok((
        Delivery {
            message: Arc::new(message),
            qos,
            retain,
            subscription_ids,
            group: None,
            seq,
        },
        sent,
    ))
}

/// A retained message and the user it counts against.
pub(crate) fn encode_retained(message: &Message, owner: Option<&str>, clock: Clock) -> Vec<u8> {
    let mut w = Writer::new(KIND_RETAINED);
    w.opt(owner, Writer::str);
    write_message(&mut w, message, clock);
    w.finish()
}

/// Reads what [`encode_retained`] wrote.
pub(crate) fn decode_retained(
    record: &[u8],
    clock: Clock,
) -> Read<(Arc<Message>, Option<Arc<str>>)> {
    let mut r = Reader::open(record, KIND_RETAINED)?;
    let owner = r.opt(Reader::arc_str)?;
    let message = read_message(&mut r, clock)?;
    r.done()?;
    Ok((Arc::new(message), owner))
}

fn options_byte(o: SubscriptionOptions) -> u8 {
    let rh = match o.retain_handling {
        RetainHandling::SendOnSubscribe => 0,
        RetainHandling::SendIfNew => 1,
        RetainHandling::DoNotSend => 2,
    };
    o.qos.as_u8() | u8::from(o.no_local) << 2 | u8::from(o.retain_as_published) << 3 | rh << 4
}

fn options_from(byte: u8) -> Read<SubscriptionOptions> {
    let qos = QoS::from_u8(byte & 0b11).ok_or_else(|| format!("subscription options {byte:#x}"))?;
    let retain_handling = match (byte >> 4) & 0b11 {
        0 => RetainHandling::SendOnSubscribe,
        1 => RetainHandling::SendIfNew,
        2 => RetainHandling::DoNotSend,
        _ => return Err(format!("subscription options {byte:#x}")),
    };
    if byte & 0b1100_0000 != 0 {
        return Err(format!("subscription options {byte:#x}"));
    }
    Ok(SubscriptionOptions {
        qos,
        no_local: byte & 0b100 != 0,
        retain_as_published: byte & 0b1000 != 0,
        retain_handling,
    })
}

fn write_principal(w: &mut Writer, p: &Principal) {
    w.opt(p.username.as_deref(), Writer::str);
    w.len(p.groups.len());
    for g in &p.groups {
        w.str(g);
    }
    w.opt(p.cert_cn.as_deref(), Writer::str);
    w.opt(p.listener.as_deref(), Writer::str);
    w.opt(p.address.map(|a| a.to_string()), |w, a| w.str(&a));
    w.bool(p.authenticated);
    w.bool(p.claim.is_some());
}

/// A principal, and whether it had a token's ACL claim (whose rules are not stored).
fn read_principal(r: &mut Reader<'_>) -> Read<(Principal, bool)> {
    let username = r.opt(Reader::arc_str)?;
    let n = r.u32()?;
    let mut groups = Vec::new();
    for _ in 0..n {
        groups.push(r.arc_str()?);
    }
    let cert_cn = r.opt(Reader::arc_str)?;
    let listener = r.opt(Reader::arc_str)?;
    let address = r.opt(|r| {
        let text = r.str()?;
        text.parse::<IpAddr>()
            .map_err(|_| format!("address {text:?}"))
    })?;
    let authenticated = r.bool()?;
    let had_claim = r.bool()?;
    Ok((
        Principal {
            username,
            groups,
            cert_cn,
            listener,
            address,
            authenticated,
            claim: None,
            quarantine: None,
        },
        had_claim,
    ))
}

/// A persistent session's own state.
pub(crate) fn encode_session(s: &SessionRecord, clock: Clock) -> Vec<u8> {
    let mut w = Writer::new(KIND_SESSION);
    w.str(&s.client_id);
    w.opt(s.owner.as_deref(), Writer::str);
    w.u32(s.expiry_interval);
    w.opt(s.disconnected_at, |w, at| w.u64(clock.to_unix(at)));
    w.len(s.subscriptions.len());
    for sub in &s.subscriptions {
        w.str(sub.filter.as_str());
        w.u8(options_byte(sub.options));
        w.opt(sub.id, |w, id| w.u32(id.get()));
    }
    w.opt(s.will.as_ref(), |w, will| {
        w.opt(will.at, |w, at| w.u64(clock.to_unix(at)));
        w.u32(will.delay);
        let m = &will.will;
        write_common(w, &m.topic, &m.payload, m.qos, m.retain);
        let p = &m.properties;
        write_properties(
            w,
            &PublishProperties {
                payload_format_indicator: p.payload_format_indicator,
                message_expiry_interval: p.message_expiry_interval,
                response_topic: p.response_topic.clone(),
                correlation_data: p.correlation_data.clone(),
                user_properties: p.user_properties.clone(),
                content_type: p.content_type.clone(),
                ..PublishProperties::default()
            },
        );
        w.opt(p.will_delay_interval, Writer::u32);
        write_principal(w, &will.principal);
    });
    w.finish()
}

/// What [`decode_session`] read, with what it could not bring back.
#[derive(Debug)]
pub(crate) struct DecodedSession {
    pub(crate) record: SessionRecord,
    /// The session had a will published as a client whose token carried ACL rules; those
    /// rules are not stored, so the will is not restored (it could not be checked as its
    /// client would have been).
    pub(crate) will_dropped: bool,
}

/// Reads what [`encode_session`] wrote.
pub(crate) fn decode_session(record: &[u8], clock: Clock) -> Read<DecodedSession> {
    let mut r = Reader::open(record, KIND_SESSION)?;
    let client_id = r.arc_str()?;
    let owner = r.opt(Reader::arc_str)?;
    let mut expiry_interval = r.u32()?;
    let mut disconnected_at = None;
    if let Some(ms) = r.opt(Reader::u64)? {
        match clock.instant_of(ms) {
            Ok(at) => disconnected_at = Some(at),
            Err(ago) => {
                // Left before this machine's clock began (a reboot since): count the time
                // already gone off the expiry instead, from now.
                disconnected_at = Some(clock.instant);
                if expiry_interval != u32::MAX {
                    let gone = u32::try_from(ago.as_secs()).unwrap_or(u32::MAX);
                    expiry_interval = expiry_interval.saturating_sub(gone);
                }
            }
        }
    }
    let n = r.u32()?;
    let mut subscriptions = Vec::new();
    for _ in 0..n {
        let text = r.str()?;
        let filter = TopicFilter::new(text).map_err(|e| format!("filter {text:?}: {e}"))?;
        let options = options_from(r.u8()?)?;
        let id = r.opt(|r| {
            let v = r.u32()?;
            SubscriptionId::new(v).ok_or(format!("subscription id {v}"))
        })?;
        subscriptions.push(SubscriptionRecord {
            filter,
            options,
            id,
        });
    }
    let mut will_dropped = false;
    let will = r.opt(|r| {
        let at = r.opt(Reader::u64)?.map(|ms| clock.deadline(ms));
        let delay = r.u32()?;
        let c = read_common(r)?;
        let will_delay_interval = r.opt(Reader::u32)?;
        let (principal, had_claim) = read_principal(r)?;
        will_dropped = had_claim;
        let p = c.properties;
        Ok(WillRecord {
            at,
            delay,
            will: Will {
                topic: c.topic,
                payload: c.payload,
                qos: c.qos,
                retain: c.retain,
                properties: WillProperties {
                    will_delay_interval,
                    payload_format_indicator: p.payload_format_indicator,
                    message_expiry_interval: p.message_expiry_interval,
                    content_type: p.content_type,
                    response_topic: p.response_topic,
                    correlation_data: p.correlation_data,
                    user_properties: p.user_properties,
                },
            },
            principal: Arc::new(principal),
        })
    })?;
    r.done()?;
    Ok(DecodedSession {
        record: SessionRecord {
            client_id,
            owner,
            expiry_interval,
            subscriptions,
            disconnected_at,
            will: if will_dropped { None } else { will },
        },
        will_dropped,
    })
}

/// For the fuzzer ([`crate::check_record_bytes`]): `body` with its checksum appended, read as
/// every kind of record; whatever reads back must write out and read back the same.
pub(crate) fn fuzz(body: &[u8]) {
    let mut record = body.to_vec();
    record.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
    let clock = Clock::now();
    for bytes in [body, &record[..]] {
        if let Ok((delivery, sent)) = decode_message(bytes, 7, clock) {
            let again = encode_message(&delivery, sent, clock);
            assert!(decode_message(&again, 7, clock) == Ok((delivery, sent)));
        }
        if let Ok((message, owner)) = decode_retained(bytes, clock) {
            let again = encode_retained(&message, owner.as_deref(), clock);
            assert!(decode_retained(&again, clock) == Ok((message, owner)));
        }
        if let Ok(session) = decode_session(bytes, clock) {
            let again = encode_session(&session.record, clock);
            assert!(decode_session(&again, clock).map(|s| s.record) == Ok(session.record));
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "tests")]
mod tests {
    use super::*;

    fn message(expiry: Option<Instant>) -> Message {
        Message {
            topic: TopicName::new("a/b").unwrap(),
            payload: Bytes::from_static(b"\x00\x01payload"),
            qos: QoS::ExactlyOnce,
            retain: true,
            properties: PublishProperties {
                payload_format_indicator: Some(PayloadFormat::Utf8),
                message_expiry_interval: Some(60),
                response_topic: Some(TopicName::new("r/t").unwrap()),
                correlation_data: Some(Bytes::from_static(b"cd")),
                user_properties: vec![UserProperty::new(
                    MqttString::new("k").unwrap(),
                    MqttString::new("v").unwrap(),
                )],
                content_type: Some(MqttString::new("text/plain").unwrap()),
                ..PublishProperties::default()
            },
            expires_at: expiry,
            publisher: None,
        }
    }

    #[test]
    fn a_message_reads_back_as_written_with_its_times() {
        let clock = Clock::now();
        let at = clock.instant + Duration::from_secs(30);
        let delivery = Delivery {
            message: Arc::new(message(Some(at))),
            qos: QoS::AtLeastOnce,
            retain: false,
            subscription_ids: vec![SubscriptionId::new(7).unwrap()],
            group: None,
            seq: 9,
        };
        let sent = Some((PacketId::new(3).unwrap(), OutState::AwaitPubAck));
        let bytes = encode_message(&delivery, sent, clock);
        // Another process, later: the same wall-clock time, another Instant base.
        let later = Clock {
            instant: clock.instant + Duration::from_secs(5),
            unix_ms: clock.unix_ms + 5_000,
        };
        let (back, sent_back) = decode_message(&bytes, 9, later).unwrap();
        assert_eq!(sent_back, sent);
        assert_eq!(back.message.expires_at, Some(at));
        assert_eq!(back, delivery);
    }

    /// The fuzzer's check holds for real records; with `BULWARK_STORE_SEEDS=DIR` their bodies
    /// are written there (the fuzzer's seeds, `fuzz/seeds/store_records`).
    #[test]
    fn real_records_pass_the_fuzzers_check() {
        let clock = Clock::now();
        let delivery = Delivery {
            message: Arc::new(message(Some(clock.instant + Duration::from_secs(9)))),
            qos: QoS::ExactlyOnce,
            retain: true,
            subscription_ids: vec![SubscriptionId::new(3).unwrap()],
            group: None,
            seq: 1,
        };
        let records = [
            encode_message(
                &delivery,
                Some((PacketId::new(9).unwrap(), OutState::AwaitPubComp)),
                clock,
            ),
            encode_retained(&message(None), Some("u"), clock),
            encode_session(
                &SessionRecord {
                    client_id: Arc::from("c"),
                    owner: None,
                    expiry_interval: 60,
                    subscriptions: Vec::new(),
                    disconnected_at: Some(clock.instant),
                    will: Some(WillRecord {
                        at: None,
                        delay: 5,
                        will: Will {
                            topic: TopicName::new("w").unwrap(),
                            payload: Bytes::from_static(b"gone"),
                            qos: QoS::AtLeastOnce,
                            retain: false,
                            properties: WillProperties::default(),
                        },
                        principal: Arc::new(Principal::default()),
                    }),
                },
                clock,
            ),
        ];
        let dir = std::env::var_os("BULWARK_STORE_SEEDS");
        for (i, record) in records.iter().enumerate() {
            let body = &record[..record.len() - 4];
            fuzz(body);
            if let Some(dir) = &dir {
                std::fs::write(std::path::Path::new(dir).join(format!("record-{i}")), body)
                    .unwrap();
            }
        }
    }

    #[test]
    fn every_damaged_byte_is_caught() {
        let clock = Clock::now();
        let bytes = encode_retained(&message(None), Some("alice"), clock);
        assert!(decode_retained(&bytes, clock).is_ok());
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x20;
            assert!(decode_retained(&bad, clock).is_err(), "byte {i}");
        }
        for n in 0..bytes.len() {
            let err = decode_retained(&bytes[..n], clock).unwrap_err();
            assert!(!err.is_empty());
        }
        // A record of another kind is refused by its kind.
        let err = decode_message(&bytes, 1, clock).unwrap_err();
        assert!(err.contains("kind"), "{err}");
    }

    #[test]
    fn a_session_keeps_the_wall_clock_time_its_client_left() {
        let clock = Clock::now();
        let record = SessionRecord {
            client_id: Arc::from("c1"),
            owner: Some(Arc::from("alice")),
            expiry_interval: 3_600,
            subscriptions: vec![SubscriptionRecord {
                filter: TopicFilter::new("$share/g/a/+").unwrap(),
                options: SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    no_local: true,
                    retain_as_published: true,
                    retain_handling: RetainHandling::DoNotSend,
                },
                id: SubscriptionId::new(5),
            }],
            disconnected_at: Some(clock.instant),
            will: None,
        };
        let bytes = encode_session(&record, clock);
        assert_eq!(decode_session(&bytes, clock).unwrap().record, record);
        // Read back a century later: the client left that long before the new clock's now
        // (where the platform's clock reaches that far back), or the time gone comes off the
        // expiry (here: all of it).
        let century = Duration::from_secs(100 * 365 * 86_400);
        let later = Clock {
            instant: Instant::now(),
            unix_ms: clock.unix_ms + 100 * 365 * 86_400_000,
        };
        let back = decode_session(&bytes, later).unwrap().record;
        match later.instant.checked_sub(century) {
            Some(at) => {
                assert_eq!(back.disconnected_at, Some(at));
                assert_eq!(back.expiry_interval, 3_600);
            }
            None => {
                assert_eq!(back.disconnected_at, Some(later.instant));
                assert_eq!(back.expiry_interval, 0);
            }
        }
        let never = SessionRecord {
            expiry_interval: u32::MAX,
            ..record.clone()
        };
        let back = decode_session(&encode_session(&never, clock), later)
            .unwrap()
            .record;
        assert_eq!(back.expiry_interval, u32::MAX);
    }
}
